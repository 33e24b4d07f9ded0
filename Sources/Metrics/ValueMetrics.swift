import BitMixing
import Foundation

/// Ranks 1...n of `values`, ties sharing the mean of the ranks they span (as scipy's `rankdata`).
public func averageRanks(_ values: [Double]) -> [Double] {
    let order = values.indices.sorted { values[$0] < values[$1] }
    var ranks = [Double](repeating: 0, count: values.count)
    var start = 0
    while start < order.count {
        var end = start
        while end + 1 < order.count, values[order[end + 1]] == values[order[start]] { end += 1 }
        let shared = Double(start + end) / 2 + 1
        for position in start...end { ranks[order[position]] = shared }
        start = end + 1
    }
    return ranks
}

/// Pearson correlation of two equally long series; nil when either is constant or empty.
public func pearsonCorrelation(_ x: [Double], _ y: [Double]) -> Double? {
    precondition(x.count == y.count, "pearsonCorrelation needs series of one length")
    guard x.count > 1 else { return nil }
    let n = Double(x.count)
    let meanX = x.reduce(0, +) / n, meanY = y.reduce(0, +) / n
    var covariance = 0.0, varianceX = 0.0, varianceY = 0.0
    for index in x.indices {
        let dx = x[index] - meanX, dy = y[index] - meanY
        covariance += dx * dy
        varianceX += dx * dx
        varianceY += dy * dy
    }
    guard varianceX > 0, varianceY > 0 else { return nil }
    return covariance / (varianceX * varianceY).squareRoot()
}

/// Spearman's rank correlation (Pearson on average ranks, so ties are handled as scipy does).
public func spearmanCorrelation(_ x: [Double], _ y: [Double]) -> Double? {
    pearsonCorrelation(averageRanks(x), averageRanks(y))
}

/// Normalized Gini of predicted value against actual value, as in the ZILN paper (Wang, Liu &
/// Miao 2019): the Gini of the actual values ordered by prediction, divided by the Gini of the
/// actual values ordered by themselves. 1 ranks customers perfectly by value, 0 is random.
/// Ties in the prediction are broken against the model (lower actual value first), so a
/// constant prediction scores no better than chance. Nil when every actual value is zero.
public func normalizedGini(predicted: [Double], actual: [Double]) -> Double? {
    precondition(predicted.count == actual.count, "normalizedGini needs one prediction per actual value")
    func gini(_ order: [Int]) -> Double? {
        let total = actual.reduce(0, +)
        guard total > 0 else { return nil }
        let n = Double(order.count)
        var cumulative = 0.0, area = 0.0
        for index in order {
            cumulative += actual[index]
            area += cumulative / total
        }
        // Lorenz curve from the highest-ranked customer down, against the diagonal.
        return area / n - (n + 1) / (2 * n)
    }
    let byPrediction = actual.indices.sorted {
        predicted[$0] != predicted[$1] ? predicted[$0] > predicted[$1] : actual[$0] < actual[$1]
    }
    let byActual = actual.indices.sorted { actual[$0] > actual[$1] }
    guard let model = gini(byPrediction), let best = gini(byActual), best > 0 else { return nil }
    return model / best
}

/// A percentile bootstrap interval of a statistic over customers.
public struct BootstrapInterval: Sendable, Equatable, Codable {
    public var lower: Double
    public var upper: Double
}

/// The 95% percentile interval of `statistic` over `resamples` resamples of `count` customers
/// drawn with replacement from a seeded generator (so intervals repeat run to run). The
/// statistic receives the resampled indices; resamples where it is undefined are skipped.
public func bootstrapInterval(
    count: Int, resamples: Int = 1000, seed: UInt64 = 0x5EED, level: Double = 0.95,
    _ statistic: ([Int]) -> Double?
) -> BootstrapInterval? {
    guard count > 1, resamples > 1 else { return nil }
    var random = SplitMix64(seed: seed)
    var values: [Double] = []
    values.reserveCapacity(resamples)
    var indices = [Int](repeating: 0, count: count)
    for _ in 0..<resamples {
        for slot in 0..<count { indices[slot] = Int(random.next() % UInt64(count)) }
        if let value = statistic(indices), value.isFinite { values.append(value) }
    }
    return percentileInterval(values, level: level)
}

/// The percentile interval at `level` of a statistic's values over resamples; nil with fewer
/// than two values.
public func percentileInterval(_ values: [Double], level: Double = 0.95) -> BootstrapInterval? {
    guard values.count > 1 else { return nil }
    let values = values.sorted()
    let tail = (1 - level) / 2
    func quantile(_ q: Double) -> Double {
        let position = q * Double(values.count - 1)
        let below = Int(position.rounded(.down)), above = min(below + 1, values.count - 1)
        return values[below] + (values[above] - values[below]) * (position - Double(below))
    }
    return BootstrapInterval(lower: quantile(tail), upper: quantile(1 - tail))
}
