import CustomerData
import Foundation
import Models
import Tensors

/// Where integrated gradients start from: the input that stands for "nothing in particular".
public enum ExplanationBaseline: String, CaseIterable, Sendable {
    /// Every feature at its training mean (zero once normalised).
    case zeros
    /// The mean normalised sequence of the scored customers with the same history length: what an
    /// average customer of the same tenure looks like in this population.
    case tenureMean = "tenure-mean"
}

/// One readable reason: a group of inputs, its signed contribution and the customer's own value.
public struct ReasonCode: Sendable, Equatable {
    /// `feature:last4` or `feature:earlier`.
    public var group: String
    /// The customer's value and the direction, e.g. `recency_weeks=14 (+)`: (+) pushes the score up.
    public var code: String
    /// The group's share of the score minus the baseline's score (churn logit or expected spend).
    public var contribution: Double
}

/// Why a customer got its scores: integrated-gradients attributions of the churn logit and of
/// the expected spend, summed into groups, and the three largest of each as reason codes.
public struct Explanation: Sendable, Equatable {
    public var churn: [ReasonCode]
    public var spend: [ReasonCode]
    /// Attribution per group (`Explainer.groupNames` order).
    public var churnGroups: [Double]
    public var spendGroups: [Double]
    /// Score at the input minus score at the baseline: what the attributions must add up to.
    public var churnLogitChange: Double
    public var spendChange: Double
}

/// Integrated gradients for the LSTM's churn logit and expected spend.
///
/// For each customer, the attribution of input x_i is (x_i − x0_i) times the mean of
/// ∂f/∂x_i along the straight path from the baseline x0 to x; the attributions add up to
/// f(x) − f(x0) (completeness), up to the error of the quadrature. The mean is taken with
/// Gauss–Legendre nodes and weights rather than the usual evenly spaced points: along the path
/// the outputs are smooth (sigmoids, tanh, an exponential for the spend), where Gauss–Legendre's
/// error falls off much faster with the number of points; with 16 evenly spaced midpoints the
/// spend's attributions missed its change by up to 220% on CDNOW. With Gauss–Legendre, the worst
/// CDNOW customer (scored 9 months after the cut-off, far from the training distribution) was
/// 25% off at 16 points and 0.25% at 32, hence 32 by default. Each point is one forward and
/// two backward passes of the whole batch (the model's own backward, without a loss or weight
/// gradients), so explaining costs about 3 × `steps` forwards.
///
/// Inputs are grouped by feature, over the customer's last 4 periods and over the ones before,
/// because a reason has to be something a retention agent can say: "no purchase for 14 weeks",
/// not "feature 5 at step 31". One instance per thread (it owns a model workspace).
public final class Explainer {
    public static let recentPeriods = 4
    public let steps: Int
    /// Points on [0, 1] and their weights (summing to 1).
    let quadrature: [(node: Double, weight: Double)]
    let model: LSTMModel
    let heads: LSTMHeadLayout
    let historyLength: Int
    let featureCount: Int
    let mean: [Double]
    let std: [Double]
    let periodUnit: String

    /// Group names: every feature over the last 4 periods, then every feature before them.
    public static var groupNames: [String] {
        featureLabels.map { "\($0):last4" } + featureLabels.map { "\($0):earlier" }
    }
    static let featureLabels = [
        "transactions", "items", "spend", "active", "tenure", "recency", "cumulative_transactions", "mean_order_value",
    ]

    public convenience init(model: ScoringModel, steps: Int = 32) {
        self.init(lstm: model.makeInstance(), normalisation: model.dataset.normalisation,
                  periodDays: model.dataset.spec.periodDays, historyLength: model.historyLength, steps: steps)
    }

    init(lstm: LSTMModel, normalisation: FeatureNormalisation, periodDays: Int, historyLength: Int, steps: Int) {
        precondition(steps >= 1, "integrated gradients need at least one step")
        precondition(lstm.configuration.inputSize == customerFeatureNames.count, "reason codes name the importer's features")
        model = lstm
        heads = lstm.heads
        self.historyLength = historyLength
        featureCount = lstm.configuration.inputSize
        mean = normalisation.mean
        std = normalisation.std
        self.steps = steps
        quadrature = gaussLegendre(points: steps)
        switch periodDays {
        case 1: periodUnit = "days"
        case 7: periodUnit = "weeks"
        case 28...31: periodUnit = "months"
        default: periodUnit = "periods"
        }
    }

    /// Explains `count` customers: `features` [count, T, F] normalised, `lengths` [count];
    /// `baselines` [count, T, F] (nil: zeros).
    public func explain(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, count: Int, baselines: UnsafePointer<Float>? = nil
    ) -> [Explanation] {
        guard count > 0 else { return [] }
        let size = count * historyLength * featureCount
        let zeros = baselines == nil ? UnsafeMutablePointer<Float>.allocate(capacity: size) : nil
        zeros?.update(repeating: 0, count: size)
        defer { zeros?.deallocate() }
        let baseline = baselines ?? UnsafePointer(zeros!)
        let point = UnsafeMutablePointer<Float>.allocate(capacity: size)
        let gradient = UnsafeMutablePointer<Float>.allocate(capacity: size)
        let churnSum = UnsafeMutablePointer<Float>.allocate(capacity: size)
        let spendSum = UnsafeMutablePointer<Float>.allocate(capacity: size)
        defer { point.deallocate(); gradient.deallocate(); churnSum.deallocate(); spendSum.deallocate() }
        churnSum.update(repeating: 0, count: size)
        spendSum.update(repeating: 0, count: size)
        var random = SeededRandom(seed: 0, purpose: .dropout)
        let batch = SequenceBatch(features: UnsafePointer(point), lengths: lengths, batchSize: count, steps: historyLength)
        let heads = self.heads

        // Scores at the baseline and at the input, for completeness.
        var atBaseline = [(logit: Double, spend: Double)](), atInput = atBaseline
        for (alpha, into) in [(Float(0), 0), (1, 1)] {
            for i in 0..<size { point[i] = baseline[i] + alpha * (features[i] - baseline[i]) }
            model.forward(batch, training: false, random: &random)
            let rows = model.headOutputs.baseAddress!
            let scores = (0..<count).map { b in
                (Double(rows[b * heads.width]), Double(heads.expectedSpend(rows + b * heads.width)))
            }
            if into == 0 { atBaseline = scores } else { atInput = scores }
        }

        for (node, weight) in quadrature {
            let alpha = Float(node)
            for i in 0..<size { point[i] = baseline[i] + alpha * (features[i] - baseline[i]) }
            model.forward(batch, training: false, random: &random)
            let w = Float(weight)
            model.featureGradients(batch, into: gradient) { _, _, out in out[0] = 1 }
            for i in 0..<size { churnSum[i] += w * gradient[i] }
            model.featureGradients(batch, into: gradient) { _, outputs, out in heads.expectedSpendGradient(outputs, into: out) }
            for i in 0..<size { spendSum[i] += w * gradient[i] }
        }

        let groups = 2 * featureCount
        var explanations: [Explanation] = []
        explanations.reserveCapacity(count)
        for b in 0..<count {
            let length = Int(lengths[b])
            let recentStart = max(0, length - Self.recentPeriods)
            var churnGroups = [Double](repeating: 0, count: groups)
            var spendGroups = [Double](repeating: 0, count: groups)
            for t in 0..<length {
                let group = t >= recentStart ? 0 : featureCount
                for f in 0..<featureCount {
                    let i = (b * historyLength + t) * featureCount + f
                    let difference = Double(features[i] - baseline[i])
                    churnGroups[group + f] += difference * Double(churnSum[i])
                    spendGroups[group + f] += difference * Double(spendSum[i])
                }
            }
            let row = features + b * historyLength * featureCount
            explanations.append(Explanation(
                churn: reasons(churnGroups, row: row, length: length),
                spend: reasons(spendGroups, row: row, length: length),
                churnGroups: churnGroups, spendGroups: spendGroups,
                churnLogitChange: atInput[b].logit - atBaseline[b].logit,
                spendChange: atInput[b].spend - atBaseline[b].spend))
        }
        return explanations
    }

    /// The three groups of largest attribution by magnitude, as codes with the customer's values.
    func reasons(_ attributions: [Double], row: UnsafePointer<Float>, length: Int, top: Int = 3) -> [ReasonCode] {
        let names = Self.groupNames
        let ranked = attributions.indices.filter { attributions[$0] != 0 }
            .sorted { abs(attributions[$0]) != abs(attributions[$1]) ? abs(attributions[$0]) > abs(attributions[$1]) : $0 < $1 }
        return ranked.prefix(top).map { group in
            let sign = attributions[group] > 0 ? "(+)" : "(-)"
            return ReasonCode(group: names[group], code: "\(valueCode(group, row: row, length: length)) \(sign)",
                              contribution: attributions[group])
        }
    }

    /// `name=value` for a group, from the customer's own (unnormalised) inputs: sums over the
    /// periods for per-period counts and spend, the value at the group's last period for states.
    func valueCode(_ group: Int, row: UnsafePointer<Float>, length: Int) -> String {
        let feature = group % featureCount
        let recent = group < featureCount
        let recentStart = max(0, length - Self.recentPeriods)
        let periods = recent ? recentStart..<length : 0..<recentStart
        let suffix = recent ? "_last4" : "_before_last4"
        func raw(_ t: Int) -> Double { Double(row[t * featureCount + feature]) * std[feature] + mean[feature] }
        let last = periods.isEmpty ? 0 : raw(periods.upperBound - 1)
        switch feature {
        case 0: return "transactions\(suffix)=\(whole(periods.reduce(0) { $0 + raw($1) }))"
        case 1: return "items\(suffix)=\(whole(periods.reduce(0) { $0 + raw($1) }))"
        case 2: return "spend\(suffix)=\(money(periods.reduce(0) { $0 + max(0, expm1(raw($1))) }))"
        case 3: return "active_\(periodUnit)\(suffix)=\(whole(periods.reduce(0) { $0 + (raw($1) > 0.5 ? 1 : 0) }))"
        case 4: return "tenure_\(periodUnit)\(recent ? "" : suffix)=\(whole(last))"
        case 5: return "recency_\(periodUnit)\(recent ? "" : suffix)=\(whole(last))"
        case 6: return "cumulative_transactions\(recent ? "" : suffix)=\(whole(max(0, expm1(last))))"
        default: return "mean_order_value\(recent ? "" : suffix)=\(money(max(0, expm1(last))))"
        }
    }

    private func whole(_ value: Double) -> String { String(Int(value.rounded())) }
    private func money(_ value: Double) -> String { String(format: "%.2f", value) }

    /// Per history length, the mean normalised sequence of the customers of that length:
    /// [historyLength + 1, T, F], row L for length L (the `tenureMean` baseline).
    public static func tenureMeans(
        count: Int, historyLength: Int, featureCount: Int,
        fill: (_ range: Range<Int>, _ features: UnsafeMutablePointer<Float>, _ lengths: UnsafeMutablePointer<Int32>) -> Void
    ) -> [Float] {
        let rowSize = historyLength * featureCount
        var sums = [Double](repeating: 0, count: (historyLength + 1) * rowSize)
        var counts = [Int](repeating: 0, count: historyLength + 1)
        let block = 1024
        let features = UnsafeMutablePointer<Float>.allocate(capacity: block * rowSize)
        let lengths = UnsafeMutablePointer<Int32>.allocate(capacity: block)
        defer { features.deallocate(); lengths.deallocate() }
        var start = 0
        while start < count {
            let n = min(block, count - start)
            fill(start..<start + n, features, lengths)
            for b in 0..<n {
                let length = Int(lengths[b])
                counts[length] += 1
                for i in 0..<rowSize { sums[length * rowSize + i] += Double(features[b * rowSize + i]) }
            }
            start += n
        }
        var means = [Float](repeating: 0, count: sums.count)
        for length in 0...historyLength where counts[length] > 0 {
            for i in 0..<rowSize { means[length * rowSize + i] = Float(sums[length * rowSize + i] / Double(counts[length])) }
        }
        return means
    }
}

/// Gauss–Legendre nodes and weights on [0, 1]: the roots of the Legendre polynomial P_n by
/// Newton's method from the usual cosine guesses, weights 2 / ((1 − x²) P_n'(x)²), halved and
/// shifted from [−1, 1].
func gaussLegendre(points n: Int) -> [(node: Double, weight: Double)] {
    var result: [(Double, Double)] = []
    for i in 0..<n {
        var x = cos(Double.pi * (Double(i) + 0.75) / (Double(n) + 0.5))
        var derivative = 0.0
        for _ in 0..<100 {
            // P_n(x) and P_n'(x) by the three-term recurrence.
            var previous = 1.0, current = x
            for k in stride(from: 2, through: n, by: 1) {
                let next = ((2 * Double(k) - 1) * x * current - (Double(k) - 1) * previous) / Double(k)
                previous = current
                current = next
            }
            let value = n == 1 ? x : current
            let below = n == 1 ? 1.0 : previous
            derivative = Double(n) * (x * value - below) / (x * x - 1)
            let step = value / derivative
            x -= step
            if abs(step) < 1e-15 { break }
        }
        let weight = 2 / ((1 - x * x) * derivative * derivative)
        result.append(((x + 1) / 2, weight / 2))
    }
    return result.sorted { $0.0 < $1.0 }
}
