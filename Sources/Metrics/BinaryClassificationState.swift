#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Mergeable sums for binary classification metrics: counts at a threshold, log loss and Brier score.
///
/// A probability at or above `threshold` is a positive prediction (`p >= threshold`), so with
/// the default 0.5 a probability of exactly 0.5 predicts positive.
///
/// Undefined values are `nil`, never NaN:
/// - every metric is `nil` before the first observation;
/// - `precision` is `nil` when nothing was predicted positive (TP + FP = 0);
/// - `recall` is `nil` when there are no actual positives (TP + FN = 0);
/// - `f1` is computed as 2·TP / (2·TP + FP + FN), the harmonic mean of precision and recall
///   where both exist, and is `nil` only when TP + FP + FN = 0 (no positive in the truth and none
///   predicted). So F1 can exist while precision or recall does not: predicting nothing positive
///   when positives exist gives F1 = 0, the penalty such a model deserves. `MulticlassState`
///   uses the same rule per class, which is what lets macro-F1 exclude exactly the classes absent
///   from both truth and prediction.
///
/// Packed layout (6 values): TP, FP, TN, FN, sum of log loss, sum of squared error.
public struct BinaryClassificationState: MergeableMetricState {
    /// Probabilities at or above this value are positive predictions.
    public let threshold: Double
    public private(set) var truePositives = 0
    public private(set) var falsePositives = 0
    public private(set) var trueNegatives = 0
    public private(set) var falseNegatives = 0
    /// Σ −[y·ln p + (1−y)·ln(1−p)] with p clipped to [`BinaryClassificationState.logLossClip`, 1 − clip].
    public private(set) var sumLogLoss = 0.0
    /// Σ (p − y)², on the unclipped probabilities.
    public private(set) var sumSquaredError = 0.0

    /// Probabilities are clipped to [clip, 1 − clip] before the logarithm, so one confident
    /// mistake costs about 34.5 instead of infinity.
    public static let logLossClip = 1e-15
    /// Number of values in `packed`.
    public static let packedCount = 6

    /// An empty state; `threshold` must not be NaN.
    public init(threshold: Double = 0.5) {
        precondition(!threshold.isNaN, "BinaryClassificationState: threshold is NaN")
        self.threshold = threshold
    }

    /// Rebuilds a state from `packed` (e.g. after a sum all-reduce), or `nil` when `packed` does
    /// not have 6 values, a count is not a non-negative integer, or a sum is negative or not finite.
    public init?(packed: [Double], threshold: Double = 0.5) {
        guard packed.count == Self.packedCount,
              let truePositives = countFromPacked(packed[0]),
              let falsePositives = countFromPacked(packed[1]),
              let trueNegatives = countFromPacked(packed[2]),
              let falseNegatives = countFromPacked(packed[3]),
              let sumLogLoss = sumFromPacked(packed[4]),
              let sumSquaredError = sumFromPacked(packed[5])
        else { return nil }
        self.init(threshold: threshold)
        self.truePositives = truePositives
        self.falsePositives = falsePositives
        self.trueNegatives = trueNegatives
        self.falseNegatives = falseNegatives
        self.sumLogLoss = sumLogLoss
        self.sumSquaredError = sumSquaredError
    }

    /// Records one prediction; `probability` must be in [0, 1] (NaN is a precondition failure).
    public mutating func add(probability: Double, label: Bool) {
        precondition(
            (0.0...1.0).contains(probability),
            "BinaryClassificationState: probability \(probability) is outside [0, 1]"
        )
        if probability >= threshold {
            if label { truePositives += 1 } else { falsePositives += 1 }
        } else {
            if label { falseNegatives += 1 } else { trueNegatives += 1 }
        }
        let clipped = min(max(probability, Self.logLossClip), 1 - Self.logLossClip)
        sumLogLoss -= label ? log(clipped) : log(1 - clipped)
        let error = probability - (label ? 1.0 : 0.0)
        sumSquaredError += error * error
    }

    /// Records one prediction per label; the counts must match.
    public mutating func add(probabilities: [Double], labels: [Bool]) {
        precondition(
            probabilities.count == labels.count,
            "BinaryClassificationState: \(probabilities.count) probabilities but \(labels.count) labels"
        )
        for index in probabilities.indices {
            add(probability: probabilities[index], label: labels[index])
        }
    }

    /// Adds `other`'s observations; the thresholds must be equal.
    public mutating func merge(_ other: BinaryClassificationState) {
        precondition(
            threshold == other.threshold,
            "BinaryClassificationState: cannot merge threshold \(other.threshold) into \(threshold)"
        )
        truePositives += other.truePositives
        falsePositives += other.falsePositives
        trueNegatives += other.trueNegatives
        falseNegatives += other.falseNegatives
        sumLogLoss += other.sumLogLoss
        sumSquaredError += other.sumSquaredError
    }

    public var packed: [Double] {
        [
            Double(truePositives), Double(falsePositives), Double(trueNegatives), Double(falseNegatives),
            sumLogLoss, sumSquaredError,
        ]
    }

    public func rebuilt(fromPacked packed: [Double]) -> BinaryClassificationState? {
        BinaryClassificationState(packed: packed, threshold: threshold)
    }

    /// Number of observations.
    public var count: Int { truePositives + falsePositives + trueNegatives + falseNegatives }

    /// Fraction of predictions on the right side of the threshold; `nil` without observations.
    public var accuracy: Double? {
        ratio(truePositives + trueNegatives, count)
    }

    /// TP / (TP + FP); `nil` when nothing was predicted positive.
    public var precision: Double? {
        ratio(truePositives, truePositives + falsePositives)
    }

    /// TP / (TP + FN); `nil` when there are no actual positives.
    public var recall: Double? {
        ratio(truePositives, truePositives + falseNegatives)
    }

    /// 2·TP / (2·TP + FP + FN); `nil` only when there is no positive in truth or prediction.
    ///
    /// See the type's documentation for why F1 can exist while precision or recall is `nil`.
    public var f1: Double? {
        ratio(2 * truePositives, 2 * truePositives + falsePositives + falseNegatives)
    }

    /// Mean binary cross-entropy (natural log) on clipped probabilities; `nil` without observations.
    public var logLoss: Double? {
        count == 0 ? nil : sumLogLoss / Double(count)
    }

    /// Mean squared difference between probability and label; `nil` without observations.
    public var brierScore: Double? {
        count == 0 ? nil : sumSquaredError / Double(count)
    }
}

/// `numerator / denominator`, or `nil` when the denominator is zero.
@inline(__always)
func ratio(_ numerator: Int, _ denominator: Int) -> Double? {
    denominator == 0 ? nil : Double(numerator) / Double(denominator)
}
