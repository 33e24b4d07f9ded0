/// Mergeable sums for regression metrics: RMSE and MAE (e.g. for predicted spend, CLV).
///
/// Every metric is `nil` before the first observation.
///
/// Packed layout (3 values): count, sum of squared error, sum of absolute error.
public struct RegressionState: MergeableMetricState {
    public private(set) var count = 0
    /// Σ (prediction − target)².
    public private(set) var sumSquaredError = 0.0
    /// Σ |prediction − target|.
    public private(set) var sumAbsoluteError = 0.0

    /// Number of values in `packed`.
    public static let packedCount = 3

    /// An empty state.
    public init() {}

    /// Rebuilds a state from `packed` (e.g. after a sum all-reduce), or `nil` when `packed` does
    /// not have 3 values, the count is not a non-negative integer, or a sum is negative or not finite.
    public init?(packed: [Double]) {
        guard packed.count == Self.packedCount,
              let count = countFromPacked(packed[0]),
              let sumSquaredError = sumFromPacked(packed[1]),
              let sumAbsoluteError = sumFromPacked(packed[2])
        else { return nil }
        self.count = count
        self.sumSquaredError = sumSquaredError
        self.sumAbsoluteError = sumAbsoluteError
    }

    /// Records one prediction; both values must be finite (a precondition), so a diverged model
    /// is reported where its output is scored rather than as a NaN metric later.
    public mutating func add(prediction: Double, target: Double) {
        precondition(
            prediction.isFinite && target.isFinite,
            "RegressionState: prediction \(prediction) or target \(target) is not finite"
        )
        let error = prediction - target
        count += 1
        sumSquaredError += error * error
        sumAbsoluteError += abs(error)
    }

    /// Records one prediction per target; the counts must match.
    public mutating func add(predictions: [Double], targets: [Double]) {
        precondition(
            predictions.count == targets.count,
            "RegressionState: \(predictions.count) predictions but \(targets.count) targets"
        )
        for index in predictions.indices {
            add(prediction: predictions[index], target: targets[index])
        }
    }

    /// Adds `other`'s observations.
    public mutating func merge(_ other: RegressionState) {
        count += other.count
        sumSquaredError += other.sumSquaredError
        sumAbsoluteError += other.sumAbsoluteError
    }

    public var packed: [Double] { [Double(count), sumSquaredError, sumAbsoluteError] }

    public func rebuilt(fromPacked packed: [Double]) -> RegressionState? {
        RegressionState(packed: packed)
    }

    /// Mean squared error; `nil` without observations.
    public var meanSquaredError: Double? {
        count == 0 ? nil : sumSquaredError / Double(count)
    }

    /// Root mean squared error; `nil` without observations.
    public var rmse: Double? { meanSquaredError?.squareRoot() }

    /// Mean absolute error; `nil` without observations.
    public var mae: Double? {
        count == 0 ? nil : sumAbsoluteError / Double(count)
    }
}
