/// The windowing that turns events into per-period feature sequences and labels.
///
/// Days are integers: calendar days since 1970-01-01, or relative day numbers for sources
/// without dates. History is the `historyPeriods * periodDays` days ending at `cutoffDay`
/// (inclusive); the outcome window is the `horizonDays` days after it.
public struct FeatureSpec: Codable, Sendable, Equatable {
    public var periodDays: Int
    public var historyPeriods: Int
    /// Last day of history, inclusive.
    public var cutoffDay: Int
    public var horizonDays: Int
    /// Minimum purchases in the horizon for stages 1, 2, 3 (occasional, regular, loyal);
    /// fewer than the first is stage 0 (churned).
    public var stageThresholds: [Int]

    public static let stageNames = ["churned", "occasional", "regular", "loyal"]
    public static let defaultStageThresholds = [1, 2, 4]

    public init(periodDays: Int = 7, historyPeriods: Int = 39, cutoffDay: Int, horizonDays: Int = 273,
                stageThresholds: [Int] = FeatureSpec.defaultStageThresholds) {
        self.periodDays = periodDays
        self.historyPeriods = historyPeriods
        self.cutoffDay = cutoffDay
        self.horizonDays = horizonDays
        self.stageThresholds = stageThresholds
    }

    /// First day of the history window.
    public var windowStartDay: Int { cutoffDay - historyPeriods * periodDays + 1 }

    /// Checks the values a user can get wrong.
    public func validate() throws {
        guard periodDays >= 1 else { throw DataError.invalidOption("--period must be at least 1 day, got \(periodDays)") }
        guard historyPeriods >= 1 && historyPeriods <= 10_000 else {
            throw DataError.invalidOption("--history must be between 1 and 10000 periods, got \(historyPeriods)")
        }
        guard horizonDays >= 0 else { throw DataError.invalidOption("--horizon must not be negative, got \(horizonDays)") }
        guard stageThresholds.count == 3, stageThresholds[0] >= 1,
              stageThresholds[0] < stageThresholds[1], stageThresholds[1] < stageThresholds[2] else {
            throw DataError.invalidOption("stage thresholds must be three increasing counts starting at 1 or more, got \(stageThresholds)")
        }
    }

    /// Lifecycle stage for a number of purchases in the horizon.
    @inline(__always)
    public func stage(forPurchases purchases: Int) -> Int32 {
        var stage: Int32 = 0
        for threshold in stageThresholds where purchases >= threshold { stage += 1 }
        return stage
    }
}

/// Names of the per-period features, in storage order.
public let customerFeatureNames = [
    "transactions", "items", "log1p_spend", "active",
    "periods_since_first_purchase", "periods_since_last_purchase",
    "log1p_cumulative_transactions", "log1p_mean_spend_per_transaction",
]

/// Per-feature mean and standard deviation, fitted on the valid steps of training customers.
public struct FeatureNormalisation: Codable, Sendable, Equatable {
    public var mean: [Double]
    public var std: [Double]

    public init(mean: [Double], std: [Double]) {
        self.mean = mean
        self.std = std
    }

    /// Identity: leaves features unchanged.
    public static func identity(width: Int) -> FeatureNormalisation {
        FeatureNormalisation(mean: .init(repeating: 0, count: width), std: .init(repeating: 1, count: width))
    }

    /// Normalises the first `length` steps of a [T, F] sequence in place; padding stays zero.
    @inline(__always)
    func apply(_ row: UnsafeMutablePointer<Float>, length: Int, width: Int) {
        if width == 8 {
            // One lane per feature: the same double-precision arithmetic, so the same floats.
            var m = SIMD8<Double>(), s = SIMD8<Double>()
            for f in 0..<8 { m[f] = mean[f]; s[f] = std[f] }
            let rows = UnsafeMutableRawPointer(row)
            for step in 0..<length {
                let v = SIMD8<Double>(rows.loadUnaligned(fromByteOffset: step * 32, as: SIMD8<Float>.self))
                rows.storeBytes(of: SIMD8<Float>((v - m) / s), toByteOffset: step * 32, as: SIMD8<Float>.self)
            }
            return
        }
        for step in 0..<length {
            let p = row + step * width
            for f in 0..<width {
                p[f] = Float((Double(p[f]) - mean[f]) / std[f])
            }
        }
    }
}

/// Accumulates feature sums over valid steps to fit a `FeatureNormalisation`.
struct NormalisationFitter {
    /// One per feature, over the valid steps added.
    private(set) var moments: [ExactMoments]

    init(width: Int) {
        moments = .init(repeating: ExactMoments(), count: width)
    }

    init(moments: [ExactMoments]) {
        self.moments = moments
    }

    var steps: Int { moments.first?.count ?? 0 }

    /// Adds one customer's sequence. Its sums are taken in float64 in step order, the same
    /// on any rank, and only then rounded into the exact moments, so the fit does not depend
    /// on which rank holds the customer nor on the order customers arrive in.
    mutating func add(_ row: UnsafePointer<Float>, length: Int, width: Int) {
        if width == 8 {
            var sums = SIMD8<Double>(), squares = SIMD8<Double>()
            let rows = UnsafeRawPointer(row)
            for step in 0..<length {
                let v = SIMD8<Double>(rows.loadUnaligned(fromByteOffset: step * 32, as: SIMD8<Float>.self))
                sums += v
                squares += v * v
            }
            for f in 0..<8 { moments[f].add(count: length, sum: sums[f], squares: squares[f]) }
            return
        }
        for f in 0..<width {
            var sum = 0.0, squares = 0.0
            for step in 0..<length {
                let v = Double(row[step * width + f])
                sum += v
                squares += v * v
            }
            moments[f].add(count: length, sum: sum, squares: squares)
        }
    }

    /// Mean and population standard deviation; a constant feature (or no steps) gets std 1 so
    /// that normalising never divides by zero.
    func result() -> FeatureNormalisation {
        var mean = [Double](repeating: 0, count: moments.count)
        var std = [Double](repeating: 1, count: moments.count)
        for f in 0..<moments.count where steps > 0 {
            mean[f] = moments[f].mean
            let s = moments[f].variance.squareRoot()
            std[f] = s > 1e-6 * max(1, abs(mean[f])) ? s : 1
        }
        return FeatureNormalisation(mean: mean, std: std)
    }
}
