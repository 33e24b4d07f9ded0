import Checkpoints
import Collectives
import CustomerData
import Foundation
import Models
import Tensors

/// Everything about a training job that depends on which model it trains: the data it reads,
/// the architecture and its parameter layout, the task that trains and evaluates it, what it is
/// compared with and the lines the run ends with. `TrainingJob` and the checkpoint code call it
/// and never ask which model they run; a third model is one more conformer and one more case
/// in `ModelRecipes.recipe(for:)`.
protocol ModelRecipe {
    associatedtype Task: TrainingTask
    var kind: ModelKind { get }
    /// Why `dataset` (at `path`) cannot train this model, or nil.
    func refusal(of dataset: CustomerDataset, path: String) -> (any Error)?
    /// Whether the training shards add the examples of the dataset's earlier cut-offs.
    var trainsOnEarlierCutoffs: Bool { get }
    /// Whether every rank holds its share of the customer–product graph.
    var readsGraph: Bool { get }
    /// Whether the shards carry the customers' sequences.
    var readsSequences: Bool { get }
    /// Whether the stage classes are weighted by their inverse frequency in the training split.
    var balancesClasses: Bool { get }
    /// Whether the spend head starts from the training split's spend (`SpendPrior`).
    var fitsSpendPrior: Bool { get }
    /// The model every rank builds, as the checkpoint manifest records it.
    func architecture(_ spec: JobSpec) -> ModelArchitecture
    /// The parameter layout of the model `spec` describes, without keeping the model.
    func parameterLayout(_ spec: JobSpec) -> ParameterLayout
    func makeTask(_ spec: JobSpec, graph: LocalGraph?, world: any Communicator) throws -> Task
    /// Sets on `task` what it is compared with at the end of the run; may train first what the
    /// comparison needs. Every rank calls it.
    func prepareComparisons(for task: Task, job: JobContext) throws
    /// Scores of the training customers stored beside each checkpoint for drift at scoring; nil
    /// stores none.
    func driftScorer(_ spec: JobSpec) -> DriftScorer?
    /// The metrics the final summary prints for validation and test, without their prefix.
    var summaryKeys: [String] { get }
    /// The final summary's lines after the test metrics: intervals and comparisons.
    func comparisonLines(_ summary: TrainingSummary) -> String
}

/// The one place that reads which model a configuration trains.
enum ModelRecipes {
    static func recipe(for configuration: TrainingConfiguration) -> any ModelRecipe {
        switch configuration.model {
        case .lstm: return LSTMRecipe(configuration: configuration)
        case .gnn: return GNNRecipe(configuration: configuration)
        }
    }
}

/// What a recipe sets its comparisons up from, once every rank has read its shards.
struct JobContext {
    let configuration: TrainingConfiguration
    let spec: JobSpec
    let plan: ShardPlan
    let earlierPlans: [ShardPlan]
    let trainShard: LocalShard
    let validationShard: LocalShard
    let testShard: LocalShard
    let graphShare: LocalGraph?
    let world: any Communicator
    let reporter: ProgressReporter
    let runDirectory: URL
}

/// Scores a batch of training customers with a checkpoint's weights: churn probability and
/// expected spend per customer, for the drift reference.
final class DriftScorer {
    private let model: LSTMModel
    private let steps: Int
    private var random = SeededRandom(seed: 0, purpose: .dropout)

    init(architecture: ModelArchitecture, steps: Int) {
        // An instance of its own: the training model's workspace belongs to the training step.
        model = LSTMModel(configuration: architecture.lstmConfiguration, seed: 0)
        self.steps = steps
    }

    /// Takes the weights of `parameters`; the scores that follow are theirs.
    func load(_ parameters: ParameterStore) {
        model.parameters.values.pointer.update(from: parameters.values.pointer, count: parameters.layout.totalCount)
        random = SeededRandom(seed: 0, purpose: .dropout)
    }

    func score(features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, count: Int,
               churn: UnsafeMutablePointer<Float>, spend: UnsafeMutablePointer<Float>) {
        model.forward(SequenceBatch(features: features, lengths: lengths, batchSize: count, steps: steps),
                      training: false, random: &random)
        let heads = model.heads, rows = model.headOutputs.baseAddress!
        for k in 0..<count {
            churn[k] = heads.churnProbability(rows + k * heads.width)
            spend[k] = heads.expectedSpend(rows + k * heads.width)
        }
    }
}

/// The sequence model: churn, spend and (optionally) stage heads over each customer's periods.
struct LSTMRecipe: ModelRecipe {
    let configuration: TrainingConfiguration
    var settings: TrainingConfiguration.LSTMSettings { configuration.lstm }

    var kind: ModelKind { .lstm }

    func refusal(of dataset: CustomerDataset, path: String) -> (any Error)? {
        dataset.manifest.constantChurnProblem.map { UnlearnableDataset(dataset: path, model: kind, reason: $0) }
    }

    // Every training customer again at each earlier cut-off: more examples of the same behaviour.
    var trainsOnEarlierCutoffs: Bool { true }
    var readsGraph: Bool { false }
    var readsSequences: Bool { true }
    var balancesClasses: Bool { settings.stageHead }
    var fitsSpendPrior: Bool { settings.clvLoss == .ziln }

    func architecture(_ spec: JobSpec) -> ModelArchitecture {
        ModelArchitecture(
            kind: .lstm, inputSize: spec.featureCount, hiddenSize: settings.hidden, layers: settings.layers,
            historyLength: spec.historyLength, classCount: spec.classCount, clvLoss: settings.clvLoss,
            stageCount: settings.stageHead ? spec.classCount : 0, customerHidden: settings.customerUnits,
            positiveWeight: spec.positiveWeight,
            classWeights: spec.classWeights)
    }

    func parameterLayout(_ spec: JobSpec) -> ParameterLayout {
        LSTMModel(configuration: architecture(spec).lstmConfiguration, seed: 0).parameters.layout
    }

    func makeTask(_ spec: JobSpec, graph: LocalGraph?, world: any Communicator) throws -> LSTMTask {
        var lstm = architecture(spec).lstmConfiguration
        lstm.dropout = settings.dropout
        lstm.positiveWeight = spec.positiveWeight
        lstm.clvWeight = settings.clvWeight
        lstm.stageWeight = settings.stageWeight
        lstm.stageClassWeights = lstm.stageCount > 0 ? spec.classWeights : nil
        lstm.spendPrior = spec.spendPrior
        let model = LSTMModel(configuration: lstm, seed: configuration.seed)
        return LSTMTask(model: model, batchCapacity: configuration.batchSize, steps: spec.historyLength)
    }

    /// BG/NBD + Gamma-Gamma, the logistic floor and XGBoost, on the same customers; they read
    /// histories back from the shards, so only from the importer's standard features.
    func prepareComparisons(for task: LSTMTask, job: JobContext) throws {
        guard job.spec.standardFeatures else { return }
        // The earlier cut-offs' examples follow the main ones in the shard, each block padded.
        var earlierBlocks: [Range<Int>] = []
        var blockStart = job.plan.train.count
        for earlierPlan in job.earlierPlans {
            earlierBlocks.append(blockStart..<blockStart + earlierPlan.trainDistinct)
            blockStart += earlierPlan.train.count
        }
        task.baselines = LSTMBaselines(
            train: BaselineEvaluation.Split(shard: job.trainShard, distinct: job.plan.trainDistinct, earlierCutoffs: earlierBlocks),
            validationShard: job.validationShard, testShard: job.testShard, normalisation: job.spec.normalisation,
            horizonPeriods: job.spec.horizonPeriods, summaryFile: job.runDirectory.appendingPathComponent("baseline_summary.csv"))
    }

    func driftScorer(_ spec: JobSpec) -> DriftScorer? {
        DriftScorer(architecture: architecture(spec), steps: spec.historyLength)
    }

    var summaryKeys: [String] {
        ["auc", "log_loss", "f1", "brier", "clv_rmse", "clv_rmse_without_top_0_1pct", "spend_spearman", "spend_gini", "stage_accuracy",
         "stage_macro_f1", "stage_majority_accuracy", "stage_majority_macro_f1"]
    }

    func comparisonLines(_ summary: TrainingSummary) -> String {
        var text = ""
        if let low = summary.test["test_auc_ci_low"], let high = summary.test["test_auc_ci_high"] {
            text += String(format: "  (AUC 95%% CI %.4f–%.4f)", low, high)
        }
        if summary.baselines != nil {
            let baselineKeys = ["auc", "log_loss", "clv_rmse", "clv_rmse_without_top_0_1pct", "spend_spearman", "spend_gini"]
            for (name, label) in [("bgnbd", "BG/NBD+GG"), ("logistic", "logistic floor"), ("xgboost", "XGBoost")]
            where summary.test["test_\(name)_auc"] != nil {
                text += "\n  \(label) (same customers): validation "
                    + formatMetrics(summary.lastValidation, "val_\(name)_", baselineKeys, named: false)
                    + " | test " + formatMetrics(summary.test, "test_\(name)_", baselineKeys, named: false)
                if let low = summary.test["test_auc_minus_\(name)_ci_low"], let high = summary.test["test_auc_minus_\(name)_ci_high"] {
                    text += String(format: "  (LSTM AUC minus it, 95%% CI %+.4f to %+.4f", low, high)
                    if let low = summary.test["test_clv_rmse_minus_\(name)_ci_low"], let high = summary.test["test_clv_rmse_minus_\(name)_ci_high"] {
                        text += String(format: "; spend RMSE minus it %+.1f to %+.1f", low, high)
                    }
                    text += ")"
                }
            }
        }
        let deciles = (1...10).compactMap { decile in
            summary.test["test_spend_decile_\(decile)_predicted"].flatMap { predicted in
                summary.test["test_spend_decile_\(decile)_actual"].map { String(format: "%.0f/%.0f", predicted, $0) }
            }
        }
        if deciles.count == 10 {
            text += "\n  test spend by decile of predicted spend (mean predicted/actual): " + deciles.joined(separator: " ")
        }
        return text
    }
}

/// The graph model: GraphSAGE over the customer–product graph, predicting each customer's stage.
struct GNNRecipe: ModelRecipe {
    let configuration: TrainingConfiguration
    var settings: TrainingConfiguration.GNNSettings { configuration.gnn }

    var kind: ModelKind { .gnn }

    func refusal(of dataset: CustomerDataset, path: String) -> (any Error)? {
        if dataset.manifest.graph == nil {
            return AgreementError(message: "the gnn model needs a customer–product graph, and dataset \(path) has none (no product ids)")
        }
        return dataset.manifest.constantStageProblem.map { UnlearnableDataset(dataset: path, model: kind, reason: $0) }
    }

    // Its customers are the graph's nodes, at the main cut-off only.
    var trainsOnEarlierCutoffs: Bool { false }
    var readsGraph: Bool { true }
    // Node features come from the graph share; the sequences would only cost memory.
    var readsSequences: Bool { false }
    var balancesClasses: Bool { settings.balanceClasses }
    var fitsSpendPrior: Bool { false }

    func architecture(_ spec: JobSpec) -> ModelArchitecture {
        ModelArchitecture(
            kind: .gnn, inputSize: spec.nodeFeatureWidth, hiddenSize: settings.hidden, layers: settings.layers,
            historyLength: spec.historyLength, classCount: spec.classCount, clvLoss: nil, stageCount: spec.classCount,
            positiveWeight: spec.positiveWeight, classWeights: spec.classWeights)
    }

    func parameterLayout(_ spec: JobSpec) -> ParameterLayout {
        let architecture = architecture(spec)
        return GraphSAGEModel(configuration: GraphSAGEConfiguration(
            inputSize: architecture.inputSize, hiddenSize: architecture.hiddenSize, classes: architecture.classCount,
            layers: architecture.layers), seed: 0).parameters.layout
    }

    func makeTask(_ spec: JobSpec, graph: LocalGraph?, world: any Communicator) throws -> GNNTask {
        try makeTask(spec, graph: graph, world: world, withoutEdges: false)
    }

    /// With `withoutEdges`, the GraphSAGE sees no neighbours (every aggregate is zero): the
    /// no-graph ablation.
    private func makeTask(_ spec: JobSpec, graph: LocalGraph?, world: any Communicator, withoutEdges: Bool) throws -> GNNTask {
        guard let graph else {
            throw AgreementError(message: "the gnn model needs the dataset's graph")
        }
        let model = GraphSAGEModel(
            configuration: GraphSAGEConfiguration(
                inputSize: spec.nodeFeatureWidth, hiddenSize: settings.hidden, classes: spec.classCount,
                layers: settings.layers, dropout: settings.dropout, classWeights: spec.classWeights),
            seed: configuration.seed)
        return GNNTask(model: model, graph: graph, fanouts: settings.fanouts, withoutEdges: withoutEdges,
                       world: world, batchCapacity: configuration.batchSize, seed: configuration.seed)
    }

    /// The graph model is judged against itself without the graph: the same network, data, seed
    /// and training budget with every neighbour input zero, trained first, so the model's test
    /// record can carry both on the same customers.
    func prepareComparisons(for task: GNNTask, job: JobContext) throws {
        guard settings.ablation && job.spec.stopAfterSteps == nil else { return }
        if job.world.rank == 0 {
            job.reporter.line("training the no-graph ablation first (the same network and budget, every neighbour input zero)")
        }
        let ablation = try makeTask(job.spec, graph: job.graphShare, world: job.world, withoutEdges: true)
        let ablationTrainer = DataParallelTrainer(
            configuration: configuration, world: job.world, task: ablation,
            trainShard: job.trainShard, validationShard: job.validationShard, testShard: job.testShard,
            reporter: try ProgressReporter(enabled: false, metricsLog: nil), saveCheckpoint: nil)
        ablationTrainer.majorityStage = job.spec.majorityStage
        _ = try ablationTrainer.run(resumingFrom: nil)
        guard let ablationRows = ablation.finalRows, let graph = job.graphShare else { return }
        task.comparison = StageComparisonPlan(
            ablationValidation: ablationRows.validation, ablationTest: ablationRows.test, graph: graph,
            train: job.trainShard, trainDistinct: job.plan.trainDistinct, validationShard: job.validationShard,
            testShard: job.testShard, classCount: job.spec.classCount, majorityStage: job.spec.majorityStage,
            seed: configuration.seed, runDirectory: job.runDirectory)
    }

    func driftScorer(_ spec: JobSpec) -> DriftScorer? { nil }

    var summaryKeys: [String] {
        ["accuracy", "macro_f1", "loss", "nograph_accuracy", "nograph_macro_f1", "xgboost_accuracy", "xgboost_macro_f1",
         "majority_accuracy", "majority_macro_f1"]
    }

    func comparisonLines(_ summary: TrainingSummary) -> String {
        var text = ""
        for (name, label) in [("macro_f1", "macro-F1"), ("nograph_macro_f1", "no-graph macro-F1"),
                              ("xgboost_macro_f1", "XGBoost macro-F1"), ("majority_macro_f1", "majority macro-F1"),
                              ("macro_f1_minus_nograph", "macro-F1 minus no-graph"), ("macro_f1_minus_xgboost", "macro-F1 minus XGBoost"),
                              ("macro_f1_minus_majority", "macro-F1 minus majority")] {
            guard let low = summary.test["test_\(name)_ci_low"], let high = summary.test["test_\(name)_ci_high"] else { continue }
            let format = name.contains("minus") ? "\n  %@ 95%% CI %+.4f to %+.4f" : "\n  %@ 95%% CI %.4f–%.4f"
            text += String(format: format, "test " + label, low, high)
        }
        return text
    }
}

/// `metrics[prefix + key]` for each of `keys` that is present, as the summary prints them: full
/// metric names, as scripts grep them, or the bare keys (`named: false`) where a line's label
/// already says whose they are.
func formatMetrics(_ metrics: [String: Double], _ prefix: String, _ keys: [String], named: Bool = true) -> String {
    keys.compactMap { key in metrics[prefix + key].map { String(format: "%@ %.4f", named ? prefix + key : key, $0) } }
        .joined(separator: "  ")
}
