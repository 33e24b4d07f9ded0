/// Exact area under the ROC curve of `scores` against binary `labels`, or `nil` when undefined.
///
/// The value is the Mann–Whitney statistic: the fraction of (positive, negative) pairs in which
/// the positive has the higher score, a tie counting one half. It equals the trapezoidal area
/// under the ROC curve with tied scores grouped into one threshold, as in scikit-learn's
/// `roc_auc_score`.
///
/// The inputs are sorted once (O(n log n) time, one array of n score–label pairs); tied scores
/// are then walked as groups.
///
/// - Parameters:
///   - scores: any real scores (probabilities, logits, ranks); a higher score means "more
///     positive". Infinities are allowed; NaN is a precondition failure because it has no rank.
///   - labels: `true` for a positive, one per score (a count mismatch is a precondition failure).
/// - Returns: the AUC in [0, 1], or `nil` when the input is empty or holds only one class, where
///   no positive–negative pair exists and the AUC is undefined.
public func rocAUC(scores: [Double], labels: [Bool]) -> Double? {
    guard let sorted = sortedForRanking(scores: scores, labels: labels, function: "rocAUC") else {
        return nil
    }
    // Walking upwards, every positive in a group beats all negatives below the group and ties
    // with the negatives inside it.
    var correctlyOrderedPairs = 0.0
    var negativesBelow = 0
    var positives = 0
    var index = 0
    while index < sorted.count {
        let score = sorted[index].score
        var groupPositives = 0
        var groupNegatives = 0
        while index < sorted.count, sorted[index].score == score {
            if sorted[index].isPositive { groupPositives += 1 } else { groupNegatives += 1 }
            index += 1
        }
        correctlyOrderedPairs += Double(groupPositives) * (Double(negativesBelow) + 0.5 * Double(groupNegatives))
        negativesBelow += groupNegatives
        positives += groupPositives
    }
    return correctlyOrderedPairs / (Double(positives) * Double(negativesBelow))
}

/// Area under the precision–recall curve as average precision, or `nil` when undefined.
///
/// Average precision is the step-wise sum Σₖ (Rₖ − Rₖ₋₁) · Pₖ over the distinct score
/// thresholds taken from the highest down, where Pₖ and Rₖ are the precision and recall when
/// every score at or above the k-th threshold is predicted positive; tied scores form one
/// threshold. This is scikit-learn's `average_precision_score` (no interpolation, no
/// trapezoids). Equivalently, it is the mean over positives of the precision at that positive's
/// score.
///
/// The inputs are sorted once (O(n log n) time, one array of n score–label pairs).
///
/// - Parameters:
///   - scores: any real scores; a higher score means "more positive". NaN is a precondition
///     failure.
///   - labels: `true` for a positive, one per score (a count mismatch is a precondition failure).
/// - Returns: the average precision in [0, 1], or `nil` when the input is empty or holds only
///   one class. Without positives recall is undefined. Without negatives every ranking scores
///   1.0 (scikit-learn returns 1.0 there); it is reported as `nil` as well, because such a value
///   says nothing about the scores, and so that both AUCs are undefined on the same inputs.
public func prAUC(scores: [Double], labels: [Bool]) -> Double? {
    guard let sorted = sortedForRanking(scores: scores, labels: labels, function: "prAUC") else {
        return nil
    }
    var truePositives = 0
    var falsePositives = 0
    // Σ over thresholds of (new positives) · precision; dividing by the number of positives at
    // the end turns the new positives into the recall step.
    var weightedPrecision = 0.0
    var index = sorted.count - 1
    while index >= 0 {
        let score = sorted[index].score
        var groupPositives = 0
        while index >= 0, sorted[index].score == score {
            if sorted[index].isPositive { groupPositives += 1 } else { falsePositives += 1 }
            index -= 1
        }
        truePositives += groupPositives
        if groupPositives > 0 {
            weightedPrecision += Double(groupPositives) * Double(truePositives) / Double(truePositives + falsePositives)
        }
    }
    return weightedPrecision / Double(truePositives)
}

/// A score with its label, the unit the ranking metrics sort.
struct ScoredLabel {
    var score: Double
    var isPositive: Bool
}

/// The pairs sorted by ascending score, or `nil` when the input is empty or holds only one class.
///
/// The class check comes first so undefined inputs are rejected without sorting.
func sortedForRanking(scores: [Double], labels: [Bool], function: StaticString) -> [ScoredLabel]? {
    precondition(
        scores.count == labels.count,
        "\(function): \(scores.count) scores but \(labels.count) labels"
    )
    var positives = 0
    for label in labels where label { positives += 1 }
    guard positives > 0, positives < labels.count else { return nil }

    var pairs = [ScoredLabel]()
    pairs.reserveCapacity(scores.count)
    for index in scores.indices {
        let score = scores[index]
        precondition(!score.isNaN, "\(function): score at index \(index) is NaN")
        pairs.append(ScoredLabel(score: score, isPositive: labels[index]))
    }
    pairs.sort { $0.score < $1.score }
    return pairs
}
