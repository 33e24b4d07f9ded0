import BitMixing
import Foundation
import ModelMetrics

/// A point of a ROC curve: false- and true-positive rate when every score ≥ `threshold` is called positive.
public struct ROCPoint: Sendable, Equatable {
    public var falsePositiveRate: Double
    public var truePositiveRate: Double
    public var threshold: Double
}

/// The ROC curve from (0, 0) to (1, 1), one point per distinct score: tied scores move the
/// curve diagonally, which is what makes its trapezoid area equal the tie-aware AUC.
public func rocCurve(scores: [Double], labels: [Bool]) -> [ROCPoint] {
    let positives = labels.filter { $0 }.count
    let negatives = labels.count - positives
    guard positives > 0, negatives > 0 else { return [] }
    let order = scores.indices.sorted { scores[$0] > scores[$1] }
    var points = [ROCPoint(falsePositiveRate: 0, truePositiveRate: 0, threshold: .infinity)]
    var truePositives = 0, falsePositives = 0
    var index = 0
    while index < order.count {
        let score = scores[order[index]]
        while index < order.count, scores[order[index]] == score {
            if labels[order[index]] { truePositives += 1 } else { falsePositives += 1 }
            index += 1
        }
        points.append(ROCPoint(falsePositiveRate: Double(falsePositives) / Double(negatives),
                               truePositiveRate: Double(truePositives) / Double(positives), threshold: score))
    }
    return points
}

/// Trapezoid area under a ROC curve.
public func area(under curve: [ROCPoint]) -> Double {
    zip(curve, curve.dropFirst()).reduce(0) {
        $0 + ($1.1.falsePositiveRate - $1.0.falsePositiveRate) * ($1.1.truePositiveRate + $1.0.truePositiveRate) / 2
    }
}

/// One bin of a reliability diagram.
public struct CalibrationBin: Sendable, Equatable {
    public var lower: Double
    public var upper: Double
    public var count: Int
    /// Mean predicted probability and observed churn rate of the bin; nil when it is empty.
    public var meanPredicted: Double?
    public var observedRate: Double?
}

/// Equal-width probability bins; 1.0 falls in the last bin.
public func calibrationBins(probabilities: [Double], labels: [Bool], binCount: Int = 10) -> [CalibrationBin] {
    var counts = [Int](repeating: 0, count: binCount)
    var sums = [Double](repeating: 0, count: binCount)
    var hits = [Int](repeating: 0, count: binCount)
    for (probability, label) in zip(probabilities, labels) {
        let bin = min(max(Int(probability * Double(binCount)), 0), binCount - 1)
        counts[bin] += 1
        sums[bin] += probability
        if label { hits[bin] += 1 }
    }
    return (0..<binCount).map { bin in
        CalibrationBin(lower: Double(bin) / Double(binCount), upper: Double(bin + 1) / Double(binCount), count: counts[bin],
                       meanPredicted: counts[bin] > 0 ? sums[bin] / Double(counts[bin]) : nil,
                       observedRate: counts[bin] > 0 ? Double(hits[bin]) / Double(counts[bin]) : nil)
    }
}

/// At most `limit` of `rows`, chosen by a hash of each customer's dataset row: the same run
/// always shows the same customers, whatever order the ranks wrote them in.
public func deterministicSample(_ rows: [ChurnPrediction], limit: Int) -> [ChurnPrediction] {
    guard rows.count > limit else { return rows }
    // SplitMix64's first draw from the row: neighbouring rows get unrelated keys.
    func mix(_ value: Int) -> UInt64 {
        var draw = SplitMix64(seed: UInt64(bitPattern: Int64(value)))
        return draw.next()
    }
    let keyed = rows.map { (mix($0.datasetRow), $0) }
    return keyed.sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1.datasetRow < $1.1.datasetRow }
        .prefix(limit).map(\.1).sorted { $0.datasetRow < $1.datasetRow }
}

/// Counts by [true stage][predicted stage].
public func confusionMatrix(_ rows: [StagePrediction], classCount: Int) -> [[Int]] {
    var matrix = [[Int]](repeating: [Int](repeating: 0, count: classCount), count: classCount)
    for row in rows { matrix[row.stage][row.predicted] += 1 }
    return matrix
}

/// The churn figures the report derives from the test predictions.
public struct ChurnAnalysis: Sendable {
    public var roc: [ROCPoint]
    /// Exact, tie-aware AUC of the predictions (the Metrics module's rank statistic).
    public var auc: Double?
    public var calibration: [CalibrationBin]
    public var positives: Int
    public var count: Int

    public init(_ rows: [ChurnPrediction]) {
        let scores = rows.map(\.probability), labels = rows.map(\.churned)
        roc = rocCurve(scores: scores, labels: labels)
        auc = rocAUC(scores: scores, labels: labels)
        calibration = calibrationBins(probabilities: scores, labels: labels)
        positives = labels.filter { $0 }.count
        count = rows.count
    }
}

/// One tenth of the customers by predicted spend: their mean prediction against their mean
/// actual spend. A model whose expected values are right puts every decile on the diagonal.
public struct SpendDecile: Sendable, Equatable {
    /// 1 = the lowest predicted spend.
    public var decile: Int
    public var customers: Int
    public var meanPredicted: Double
    public var meanActual: Double
}

/// Customers sorted by predicted spend (ties by dataset row) and cut into ten groups as equal
/// as the count allows.
public func spendDeciles(_ rows: [ChurnPrediction]) -> [SpendDecile] {
    let sorted = rows.sorted { $0.expectedSpend != $1.expectedSpend ? $0.expectedSpend < $1.expectedSpend : $0.datasetRow < $1.datasetRow }
    guard !sorted.isEmpty else { return [] }
    return (0..<10).compactMap { decile in
        let group = sorted[decile * sorted.count / 10 ..< (decile + 1) * sorted.count / 10]
        guard !group.isEmpty else { return nil }
        let count = Double(group.count)
        return SpendDecile(decile: decile + 1, customers: group.count,
                           meanPredicted: group.reduce(0) { $0 + $1.expectedSpend } / count,
                           meanActual: group.reduce(0) { $0 + $1.spend } / count)
    }
}

/// Cumulative gain of churn: targeting customers from the highest predicted probability down,
/// the share of all churners reached against the share of customers targeted; (0, 0) first.
public func cumulativeGain(scores: [Double], labels: [Bool]) -> [(targeted: Double, reached: Double)] {
    let positives = labels.filter { $0 }.count
    guard positives > 0 else { return [] }
    let order = scores.indices.sorted { scores[$0] > scores[$1] }
    var points: [(targeted: Double, reached: Double)] = [(0, 0)]
    var reached = 0
    for (position, index) in order.enumerated() {
        if labels[index] { reached += 1 }
        points.append((Double(position + 1) / Double(order.count), Double(reached) / Double(positives)))
    }
    return points
}
