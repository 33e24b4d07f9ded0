import Testing
import TestSupport


/// Random probabilities with labels drawn as Bernoulli(score), so the AUC is well above 0.5.
///
/// With `levels` set, scores are rounded to multiples of 1/levels, which produces many ties.
func randomScoredLabels(count: Int, levels: Int? = nil, rng: inout SplitMix64) -> (scores: [Double], labels: [Bool]) {
    var scores = [Double]()
    var labels = [Bool]()
    for _ in 0..<count {
        var score = Double.random(in: 0...1, using: &rng)
        if let levels { score = (score * Double(levels)).rounded() / Double(levels) }
        scores.append(score)
        labels.append(Double.random(in: 0..<1, using: &rng) < score)
    }
    return (scores, labels)
}

/// Element-wise sum of packed states, i.e. what a sum all-reduce across ranks delivers.
func allreduceSum(_ packedStates: [[Double]]) -> [Double] {
    var total = [Double](repeating: 0, count: packedStates[0].count)
    for packed in packedStates {
        precondition(packed.count == total.count, "ranks disagree on the packed length")
        for index in packed.indices { total[index] += packed[index] }
    }
    return total
}

/// Splits `0..<count` into `parts` uneven contiguous ranges (some may be empty), like shards.
func unevenShards(count: Int, parts: Int, rng: inout SplitMix64) -> [Range<Int>] {
    var cuts = (0..<(parts - 1)).map { _ in Int.random(in: 0...count, using: &rng) }
    cuts.sort()
    let bounds = [0] + cuts + [count]
    return (0..<parts).map { bounds[$0]..<bounds[$0 + 1] }
}

/// AUC by comparing every positive with every negative: the definition, independent of sorting.
func pairwiseAUC(scores: [Double], labels: [Bool]) -> Double? {
    var credit = 0.0
    var pairs = 0.0
    for positive in scores.indices where labels[positive] {
        for negative in scores.indices where !labels[negative] {
            pairs += 1
            if scores[positive] > scores[negative] {
                credit += 1
            } else if scores[positive] == scores[negative] {
                credit += 0.5
            }
        }
    }
    return pairs == 0 ? nil : credit / pairs
}

/// Average precision as the mean, over positives, of the precision among scores at or above it.
///
/// A second formulation of the step-wise sum, so the two implementations cannot share a mistake.
func averagePrecisionByPositives(scores: [Double], labels: [Bool]) -> Double? {
    let positives = labels.filter { $0 }.count
    guard positives > 0, positives < labels.count else { return nil }
    var sum = 0.0
    for anchor in scores.indices where labels[anchor] {
        var selected = 0
        var selectedPositives = 0
        for other in scores.indices where scores[other] >= scores[anchor] {
            selected += 1
            if labels[other] { selectedPositives += 1 }
        }
        sum += Double(selectedPositives) / Double(selected)
    }
    return sum / Double(positives)
}

/// Expects `actual` to be present and within `tolerance` of `expected`.
func expectClose(
    _ actual: Double?, _ expected: Double, tolerance: Double = 1e-12,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    guard let actual else {
        Issue.record("expected \(expected), got nil", sourceLocation: sourceLocation)
        return
    }
    #expect(abs(actual - expected) <= tolerance, "got \(actual), expected \(expected)", sourceLocation: sourceLocation)
}
