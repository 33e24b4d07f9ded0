import CustomerData
import Foundation
import Models
@testable import Scoring
import Tensors
import Testing

/// Reason codes come from integrated gradients through the model's own backward pass. These check
/// the gradient against finite differences, the quadrature, completeness for every customer, and
/// that an input which alone decides the output is named first.
@Suite("Explanations: integrated gradients and reason codes")
struct ExplanationTests {
    static let steps = 6
    static let width = customerFeatureNames.count
    static let normalisation = FeatureNormalisation(
        mean: [0.5, 0.6, 2.0, 0.3, 10, 4, 1.5, 2.5], std: [0.8, 1.1, 1.4, 0.45, 6, 3, 0.9, 0.7])

    /// `count` customers with lengths 1...steps and features in [−2, 2] on their valid steps.
    static func customers(_ count: Int, seed: UInt64) -> (features: [Float], lengths: [Int32]) {
        var random = SeededRandom(seed: seed, purpose: .synthesis)
        var features = [Float](repeating: 0, count: count * steps * width)
        var lengths = [Int32](repeating: 0, count: count)
        for b in 0..<count {
            lengths[b] = Int32(1 + random.nextIndex(below: steps))
            for i in 0..<Int(lengths[b]) * width { features[b * steps * width + i] = random.nextFloat(in: -2, 2) }
        }
        return (features, lengths)
    }

    static func randomModel(customerHidden: Int = 0) -> LSTMModel {
        LSTMModel(configuration: LSTMConfiguration(inputSize: width, hiddenSize: 5, layers: 2, dropout: 0,
                                                   clvLoss: .ziln, customerHidden: customerHidden), seed: 21)
    }

    /// Churn logit and expected spend of each customer.
    static func scores(_ model: LSTMModel, _ features: [Float], _ lengths: [Int32]) -> [(logit: Float, spend: Float)] {
        var random = SeededRandom(seed: 0, purpose: .dropout)
        return features.withUnsafeBufferPointer { f in
            lengths.withUnsafeBufferPointer { l in
                model.forward(SequenceBatch(features: f.baseAddress!, lengths: l.baseAddress!, batchSize: lengths.count, steps: steps),
                              training: false, random: &random)
                let rows = model.headOutputs.baseAddress!
                return (0..<lengths.count).map { (rows[$0 * model.heads.width], model.heads.expectedSpend(rows + $0 * model.heads.width)) }
            }
        }
    }

    @Test("Gauss-Legendre points integrate polynomials up to degree 2n-1 exactly on [0, 1]")
    func quadrature() {
        for n in [1, 2, 5, 16] {
            let rule = gaussLegendre(points: n)
            #expect(abs(rule.reduce(0) { $0 + $1.weight } - 1) < 1e-12)
            for degree in 0..<(2 * n) {
                let integral = rule.reduce(0) { $0 + $1.weight * pow($1.node, Double(degree)) }
                #expect(abs(integral - 1 / Double(degree + 1)) < 1e-11, "n \(n), degree \(degree): \(integral)")
            }
        }
    }

    @Test("feature gradients of the churn logit and the expected spend agree with finite differences",
          arguments: [0, 3])
    func gradientsMatchFiniteDifferences(customerHidden: Int) {
        let model = Self.randomModel(customerHidden: customerHidden)
        var (features, lengths) = Self.customers(4, seed: 5)
        let size = features.count
        var churnGradient = [Float](repeating: 0, count: size), spendGradient = churnGradient
        var random = SeededRandom(seed: 0, purpose: .dropout)
        features.withUnsafeBufferPointer { f in
            lengths.withUnsafeBufferPointer { l in
                let batch = SequenceBatch(features: f.baseAddress!, lengths: l.baseAddress!, batchSize: 4, steps: Self.steps)
                model.forward(batch, training: false, random: &random)
                churnGradient.withUnsafeMutableBufferPointer { g in
                    model.featureGradients(batch, into: g.baseAddress!) { _, _, out in out[0] = 1 }
                }
                spendGradient.withUnsafeMutableBufferPointer { g in
                    model.featureGradients(batch, into: g.baseAddress!) { _, outputs, out in model.heads.expectedSpendGradient(outputs, into: out) }
                }
            }
        }
        let h: Float = 1e-2
        var checked = 0
        for b in 0..<4 {
            for t in 0..<Int(lengths[b]) {
                for f in 0..<Self.width {
                    let i = (b * Self.steps + t) * Self.width + f
                    let saved = features[i]
                    features[i] = saved + h
                    let up = Self.scores(model, features, lengths)[b]
                    features[i] = saved - h
                    let down = Self.scores(model, features, lengths)[b]
                    features[i] = saved
                    let churnDifference = (up.logit - down.logit) / (2 * h)
                    let spendDifference = (up.spend - down.spend) / (2 * h)
                    #expect(abs(churnDifference - churnGradient[i]) <= 2e-3 + 0.02 * abs(churnGradient[i]),
                            "churn, customer \(b) step \(t) feature \(f): finite difference \(churnDifference), gradient \(churnGradient[i])")
                    #expect(abs(spendDifference - spendGradient[i]) <= 2e-3 * max(1, abs(up.spend)) + 0.02 * abs(spendGradient[i]),
                            "spend, customer \(b) step \(t) feature \(f): finite difference \(spendDifference), gradient \(spendGradient[i])")
                    checked += 1
                }
            }
        }
        #expect(checked > 40)
        // Past a customer's length nothing reaches the output.
        for b in 0..<4 where Int(lengths[b]) < Self.steps {
            let padding = (b * Self.steps + Int(lengths[b])) * Self.width..<((b + 1) * Self.steps) * Self.width
            #expect(padding.allSatisfy { churnGradient[$0] == 0 && spendGradient[$0] == 0 })
        }
    }

    /// The default architecture: along the path every output is smooth, and 16 Gauss–Legendre
    /// points make the sum exact to float precision. (With `lstm.customer_units` the dense path's
    /// ReLU puts kinks on the path and the sum converges slowly: 20% off on changes of 0.005 with
    /// 128 points on this model, measured; the gradient itself is checked above.)
    @Test("attributions add up to the change of each score, for every customer, within 0.1% (16 points)",
          arguments: [ExplanationBaseline.zeros, .tenureMean])
    func completeness(baseline kind: ExplanationBaseline) {
        let model = Self.randomModel()
        let count = 60
        let (features, lengths) = Self.customers(count, seed: 9)
        let explainer = Explainer(lstm: model, normalisation: Self.normalisation, periodDays: 7, historyLength: Self.steps, steps: 16)
        let rowSize = Self.steps * Self.width
        var baselines = [Float](repeating: 0, count: features.count)
        if kind == .tenureMean {
            let means = Explainer.tenureMeans(count: count, historyLength: Self.steps, featureCount: Self.width) { range, f, l in
                for (k, b) in range.enumerated() {
                    l[k] = lengths[b]
                    for i in 0..<rowSize { f[k * rowSize + i] = features[b * rowSize + i] }
                }
            }
            for b in 0..<count { for i in 0..<rowSize { baselines[b * rowSize + i] = means[Int(lengths[b]) * rowSize + i] } }
        }
        let explanations = features.withUnsafeBufferPointer { f in
            lengths.withUnsafeBufferPointer { l in
                baselines.withUnsafeBufferPointer { base in
                    explainer.explain(features: f.baseAddress!, lengths: l.baseAddress!, count: count, baselines: base.baseAddress!)
                }
            }
        }
        #expect(explanations.count == count)
        let atInput = Self.scores(model, features, lengths), atBaseline = Self.scores(model, baselines, lengths)
        for (b, explanation) in explanations.enumerated() {
            // The change the explainer reports is the model's own.
            #expect(abs(explanation.churnLogitChange - Double(atInput[b].logit - atBaseline[b].logit)) < 1e-4)
            let churnError = CompletenessError.of(attributions: explanation.churnGroups, change: explanation.churnLogitChange)
            let spendError = CompletenessError.of(attributions: explanation.spendGroups, change: explanation.spendChange)
            #expect(churnError < 1e-3, "customer \(b): churn attributions \(explanation.churnGroups.reduce(0, +)) for a change of \(explanation.churnLogitChange)")
            #expect(spendError < 1e-3, "customer \(b): spend attributions \(explanation.spendGroups.reduce(0, +)) for a change of \(explanation.spendChange)")
            #expect(explanation.churn.count == min(3, explanation.churnGroups.filter { $0 != 0 }.count))
        }
    }

    @Test("an input that alone decides the churn logit is the first reason, with the customer's own value")
    func decisiveInput() throws {
        // One unit that copies tanh(recency at the step) into its cell and forgets the past, so
        // the churn logit is 3·tanh(tanh(x)) of the last step's recency alone.
        let hidden = 2, width = Self.width
        let model = LSTMModel(configuration: LSTMConfiguration(inputSize: width, hiddenSize: hidden, layers: 1, dropout: 0, clvLoss: .ziln), seed: 1)
        var weights: [String: [Float]] = [:]
        for slice in model.parameters.layout.slices { weights[slice.name] = [Float](repeating: 0, count: slice.shape.reduce(1, *)) }
        let recency = customerFeatureNames.firstIndex(of: "periods_since_last_purchase")!
        // Gate rows: input [0, H), forget [H, 2H), candidate [2H, 3H), output [3H, 4H).
        weights["lstm.bias_ih_l0"]![0] = 12
        weights["lstm.bias_ih_l0"]![hidden] = -12
        weights["lstm.bias_ih_l0"]![3 * hidden] = 12
        weights["lstm.weight_ih_l0"]![(2 * hidden) * width + recency] = 1
        weights["churn_head.weight"]![0] = 3
        try model.parameters.load(weights)
        let explainer = Explainer(lstm: model, normalisation: Self.normalisation, periodDays: 7, historyLength: Self.steps, steps: 16)
        var (features, lengths) = Self.customers(8, seed: 13)
        for b in 0..<8 {
            lengths[b] = Int32(Self.steps)
            for i in 0..<Self.steps * width where features[b * Self.steps * width + i] == 0 { features[b * Self.steps * width + i] = 0.7 }
            // Far from the baseline, so the attribution is large.
            features[(b * Self.steps + Self.steps - 1) * width + recency] = 1.5
        }
        let explanations = features.withUnsafeBufferPointer { f in
            lengths.withUnsafeBufferPointer { explainer.explain(features: f.baseAddress!, lengths: $0.baseAddress!, count: 8) }
        }
        for explanation in explanations {
            let first = try #require(explanation.churn.first)
            #expect(first.group == "recency:last4", "first reason \(first)")
            // 1.5 standard deviations (3 weeks) above the mean of 4 weeks: 8.5, rounded to 8 or 9.
            #expect(first.code == "recency_weeks=9 (+)" || first.code == "recency_weeks=8 (+)", "code \(first.code)")
            // The forget gate (bias −12) lets through a trace of the earlier periods, nothing else.
            #expect(explanation.churn.dropFirst().allSatisfy { abs($0.contribution) < 1e-3 * abs(first.contribution) },
                    "nothing else reaches the logit: \(explanation.churn)")
        }
    }
}
