import CustomerData
import Foundation
import Models
import Synchronization
import Tensors

/// One customer's scores and the decisions drawn from them.
public struct CustomerScore: Sendable, Equatable {
    public var customerID: String
    public var churnProbability: Double
    /// Expected spend over the training horizon (see `LSTMHeadLayout.expectedSpend`).
    public var expectedSpend: Double
    /// Periods from the first purchase in the window to the as-of day (the sequence length).
    public var historyPeriods: Int
    public var stage: String
    /// In the model's `stageNames` order.
    public var stageProbabilities: [Double]
    public var action: String
    /// Where the stage came from: `gnn` (the graph model), `lstm` (the LSTM's stage head) or
    /// `rule` (`ScoringRules`, when no model gives one or the rules ask for it).
    public var stageSource: String
}

extension CustomerScore {
    /// What is not finite in this score, or nil. Numbers are printed with six decimals and a
    /// NaN would print as 0: a score that is not a number must be an error, never a value.
    public var nonFiniteScore: String? {
        guard churnProbability.isFinite, expectedSpend.isFinite, stageProbabilities.allSatisfy(\.isFinite) else {
            return "the model gave a score that is not a finite number (churn \(churnProbability), expected spend \(expectedSpend), stage probabilities \(stageProbabilities))"
        }
        return nil
    }
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

    /// Stage probabilities a model gave one customer, in `stageNames` order, and which model.
    public struct ModelStage {
        public var probabilities: ArraySlice<Float>
        public var source: String

        public init(probabilities: ArraySlice<Float>, source: String) {
            self.probabilities = probabilities
            self.source = source
        }
    }

    /// Stages per customer of the LSTM's stage head; 0 when the checkpoint has none.
    public var stageCount: Int { network.heads.stageCount }

    /// Churn probabilities, expected spends and (with a stage head, when `stages` is given)
    /// stage probabilities [count, stageCount] of `count` customers: `features` is [count, T, F]
    /// normalised, `lengths` [count] each in 1...T.
    public func score(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, count: Int,
        churn: UnsafeMutablePointer<Float>, spend: UnsafeMutablePointer<Float>,
        stages: UnsafeMutablePointer<Float>? = nil
    ) {
        guard count > 0 else { return }
        let workspace = idle.withLock { $0.popLast() } ?? InferenceWorkspace()
        defer { idle.withLock { $0.append(workspace) } }
        let heads = network.heads
        let outputs = workspace.outputs(count: count * heads.width)
        network.forward(features: features, lengths: lengths, batch: count, steps: model.historyLength,
                        workspace: workspace, outputs: outputs)
        for index in 0..<count {
            let row = UnsafePointer(outputs + index &* heads.width)
            churn[index] = heads.churnProbability(row)
            spend[index] = heads.expectedSpend(row)
            if let stages { heads.stageProbabilities(row, into: stages + index &* heads.stageCount) }
        }
    }

    /// Applies the action rules to one customer's scores; the stage is the model's (`modelStage`)
    /// unless the rules ask for the stage rule or no model gave one.
    public func decide(customerID: String, churn: Float, spend: Float, historyPeriods: Int, rules: ScoringRules,
                       highValueLine: Double, modelStage: ModelStage? = nil) -> CustomerScore {
        let p = Double(churn), s = Double(spend)
        let names = model.dataset.stageNames
        let stage: (index: Int, probabilities: [Double])
        let source: String
        if let modelStage, !rules.stageRule {
            let probabilities = modelStage.probabilities.map(Double.init)
            stage = (probabilities.indices.max { probabilities[$0] < probabilities[$1] } ?? 0, probabilities)
            source = modelStage.source
        } else {
            stage = rules.ruleStage(churnProbability: p, expectedSpend: s, highValueLine: highValueLine)
            source = "rule"
        }
        return CustomerScore(
            customerID: customerID, churnProbability: p, expectedSpend: s, historyPeriods: historyPeriods,
            stage: stage.index < names.count ? names[stage.index] : "stage\(stage.index)",
            stageProbabilities: stage.probabilities,
            action: rules.action(churnProbability: p, expectedSpend: s, historyPeriods: historyPeriods, highValueLine: highValueLine),
            stageSource: source)
    }

    /// Customer `index`'s score from the forward's outputs, as batch scoring and the service
    /// both give it: the stage from the graph model where it covers the customer
    /// (`graphStage`), else from the LSTM's stage head (row `index` of `headStages`), else from
    /// the stage rule; then the action.
    public func customerScore(
        _ customerID: String, index: Int, churn: [Float], spend: [Float], lengths: [Int32], headStages: [Float],
        graphStage: ArraySlice<Float>?, rules: ScoringRules, highValueLine: Double
    ) -> CustomerScore {
        var modelStage = graphStage.map { ModelStage(probabilities: $0, source: "gnn") }
        let width = stageCount
        if modelStage == nil && width > 0 {
            modelStage = ModelStage(probabilities: headStages[index * width ..< (index + 1) * width], source: "lstm")
        }
        return decide(customerID: customerID, churn: churn[index], spend: spend[index], historyPeriods: Int(lengths[index]),
                      rules: rules, highValueLine: highValueLine, modelStage: modelStage)
    }
}
