import CustomerData
import Foundation
import Models
import Synchronization
import Tensors

/// One customer's scores and the decisions drawn from them.
public struct CustomerScore: Sendable, Equatable {
    public var customerID: String
    public var churnProbability: Double
    /// Predicted spend over the training horizon: max(expm1(CLV head), 0).
    public var expectedSpend: Double
    /// Periods from the first purchase in the window to the as-of day (the sequence length).
    public var historyPeriods: Int
    public var stage: String
    /// In the model's `stageNames` order.
    public var stageProbabilities: [Double]
    public var action: String
    /// `rule` when the stage comes from `ScoringRules`, `gnn` when a graph model gave it.
    public var stageSource: String
}

/// Scores customers with one loaded model; safe to call from many threads at once.
///
/// The inference weights are built once and shared read-only; each concurrent call checks a
/// workspace (its forward buffers) out of a pool and returns it afterwards, so the pool grows
/// only to the number of callers that were ever concurrent.
public final class LSTMScorer: Sendable {
    public let model: ScoringModel
    let network: InferenceLSTM
    private let idle: Mutex<[InferenceWorkspace]>

    public init(model: ScoringModel) {
        self.model = model
        network = InferenceLSTM(configuration: model.configuration, weights: model.weights)
        idle = Mutex([InferenceWorkspace()])
    }

    /// Churn probabilities and expected spends of `count` customers: `features` is
    /// [count, T, F] normalised, `lengths` [count] each in 1...T.
    public func score(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, count: Int,
        churn: UnsafeMutablePointer<Float>, spend: UnsafeMutablePointer<Float>
    ) {
        guard count > 0 else { return }
        let workspace = idle.withLock { $0.popLast() } ?? InferenceWorkspace()
        defer { idle.withLock { $0.append(workspace) } }
        // Logits land in the output buffers first and are transformed in place.
        network.forward(features: features, lengths: lengths, batch: count, steps: model.historyLength,
                        workspace: workspace, churnLogits: churn, clv: spend)
        for index in 0..<count {
            churn[index] = Kernels.sigmoid(churn[index])
            spend[index] = max(expm1f(spend[index]), 0)
        }
    }

    /// Applies the action rules to one customer's scores, and the stage rule unless a graph
    /// model gave `graphStage` (its stage probabilities, in `stageNames` order).
    public func decide(customerID: String, churn: Float, spend: Float, historyPeriods: Int, rules: ScoringRules,
                       highValueLine: Double, graphStage: ArraySlice<Float>? = nil) -> CustomerScore {
        let p = Double(churn), s = Double(spend)
        let names = model.dataset.stageNames
        let stage: (index: Int, probabilities: [Double])
        if let graphStage {
            let probabilities = graphStage.map(Double.init)
            stage = (probabilities.indices.max { probabilities[$0] < probabilities[$1] } ?? 0, probabilities)
        } else {
            stage = rules.ruleStage(churnProbability: p, expectedSpend: s, highValueLine: highValueLine)
        }
        return CustomerScore(
            customerID: customerID, churnProbability: p, expectedSpend: s, historyPeriods: historyPeriods,
            stage: stage.index < names.count ? names[stage.index] : "stage\(stage.index)",
            stageProbabilities: stage.probabilities,
            action: rules.action(churnProbability: p, expectedSpend: s, historyPeriods: historyPeriods, highValueLine: highValueLine),
            stageSource: graphStage == nil ? "rule" : "gnn")
    }

    /// The high-value line the service uses when the rules give no amount: the training
    /// dataset's mean horizon spend (a single request has no population to rank against).
    public func serviceHighValueLine(_ rules: ScoringRules) -> Double {
        rules.highValueAmount ?? model.dataset.labels.meanHorizonSpend
    }
}
