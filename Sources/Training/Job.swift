import Checkpoints
import Collectives
import CustomerData
import Foundation
import GradientBoosting
import Models
import Tensors

/// What the coordinator tells every rank before training: the configuration and the facts about
/// the dataset every rank needs alike. The split sizes and the training split's statistics
/// (class weights, spend prior, majority stage) are filled in by every rank together from its
/// own shard (`completed(with:)`).
struct JobSpec: Codable {
    var configuration: TrainingConfiguration
    /// "latest", a step number or a checkpoint directory; nil starts fresh.
    var resume: String?
    var stopAfterSteps: Int?
    var datasetFingerprint: String
    var datasetPath: String
    var historyLength: Int
    var featureCount: Int
    var classCount: Int
    var trainCount: Int
    /// LSTM on a dataset with earlier cut-offs: their training examples, which follow the main
    /// cut-off's training customers in every rank's training shard. Everything summarising
    /// training customers (class weights, spend prior, baselines, drift) reads the main
    /// cut-off's only, so a customer counts once there.
    var earlierCutoffExamples = 0
    var validationCount: Int
    var testCount: Int
    var positiveWeight: Float
    var classWeights: [Float]?
    var nodeFeatureWidth: Int
    /// LSTM with a ZILN head: the training split's spend, for the head's starting biases.
    var spendPrior: SpendPrior?
    /// The training split's most frequent stage.
    var majorityStage: Int
    /// What the baselines need to read histories back from the shards: the features'
    /// normalisation, whether they are the importer's standard per-period features, and the
    /// label horizon in periods.
    var normalisation: FeatureNormalisation
    var standardFeatures: Bool
    var horizonPeriods: Double

    /// This spec with the split sizes and the training split's statistics, from every rank's
    /// own shard: stage counts (for the majority stage and the class weights) and the spend
    /// prior's moments are sums over customers, all-reduced, so every rank gets the same spec.
    func completed(with plan: ShardPlan, trainShard: LocalShard, world: any Communicator) throws -> JobSpec {
        var spec = self
        (spec.trainCount, spec.validationCount, spec.testCount) = (plan.totals[0], plan.totals[1], plan.totals[2])
        guard spec.trainCount > 0 else {
            throw AgreementError(message: "dataset \(datasetPath) has no training customers")
        }
        let distinct = 0..<plan.trainDistinct
        var sums = [Double](repeating: 0, count: classCount) + SpendPrior.moments(of: distinct.lazy.map { trainShard.spend[$0] })
        for index in distinct { sums[Int(trainShard.stages[index])] += 1 }
        try world.allreduce(&sums, op: .sum)
        let counts = sums[..<classCount].map { Int($0) }
        spec.majorityStage = counts.indices.max { counts[$0] < counts[$1] } ?? 0
        let balance = configuration.model == .gnn ? configuration.gnn.balanceClasses : configuration.lstm.stageHead
        if balance {
            // Inverse frequency, scaled so the weights average 1 over the training customers.
            spec.classWeights = counts.map { $0 > 0 ? Float(spec.trainCount) / Float(classCount * $0) : 0 }
        }
        if configuration.model == .lstm && configuration.lstm.clvLoss == .ziln {
            spec.spendPrior = SpendPrior.fit(moments: Array(sums[classCount...]))
        }
        return spec
    }

    /// The model every rank builds, as the checkpoint manifest records it.
    var architecture: ModelArchitecture {
        switch configuration.model {
        case .lstm:
            return ModelArchitecture(
                kind: .lstm, inputSize: featureCount, hiddenSize: configuration.lstm.hidden, layers: configuration.lstm.layers,
                historyLength: historyLength, classCount: classCount, clvLoss: configuration.lstm.clvLoss,
                stageCount: configuration.lstm.stageHead ? classCount : 0, customerHidden: configuration.lstm.customerUnits,
                positiveWeight: positiveWeight,
                classWeights: classWeights)
        case .gnn:
            return ModelArchitecture(
                kind: .gnn, inputSize: nodeFeatureWidth, hiddenSize: configuration.gnn.hidden, layers: configuration.gnn.layers,
                historyLength: historyLength, classCount: classCount, clvLoss: nil, stageCount: classCount,
                positiveWeight: positiveWeight, classWeights: classWeights)
        }
    }
}

/// The dataset's labels are all the same for what the model predicts (churn for the LSTM, the
/// stage for the graph model), so there is nothing to learn; nothing was trained.
public struct UnlearnableDataset: Error, CustomStringConvertible {
    public let dataset: String
    public let model: ModelKind
    public let reason: String
    public var description: String {
        "dataset \(dataset) cannot train the \(model.rawValue) model: \(reason)"
    }
}

/// How `clm-coordinator` was asked to run.
public struct JobRequest: Sendable {
    public var configurationPath: String
    public var overrides: [String]
    public var resume: String?
    /// Stop after this many optimizer steps (for kill-and-resume tests); nil runs to the end.
    public var stopAfterSteps: Int?
    /// A key file: every checkpoint the run writes is signed with it (`CheckpointSigningKey`).
    public var signingKeyPath: String?

    public init(configurationPath: String, overrides: [String] = [], resume: String? = nil, stopAfterSteps: Int? = nil,
                signingKeyPath: String? = nil) {
        self.configurationPath = configurationPath
        self.overrides = overrides
        self.resume = resume
        self.stopAfterSteps = stopAfterSteps
        self.signingKeyPath = signingKeyPath
    }
}

/// The job ended before any rank trained: the coordinator could not read its configuration,
/// key or dataset (`reason`, on rank 0), and told the workers (`reason` nil there).
///
/// Nothing is outstanding between the ranks then, so every rank can leave through
/// `MPI_Finalize` with a failure status instead of `MPI_Abort`: when several ranks aborted at
/// once, mpirun received their abort messages from processes it was already killing and
/// printed `ORTE_ERROR_LOG: Data unpack would read past end of buffer` and "N more processes
/// have sent help message" after the coordinator's own line.
public struct JobDidNotStart: Error, CustomStringConvertible {
    public let reason: (any Error)?
    public var description: String { reason.map { "\($0)" } ?? "the coordinator could not start the job" }
}

/// The training job, as run by the coordinator (rank 0) and the workers (every other rank).
public enum TrainingJob {
    /// Rank 0: reads the configuration and the dataset, tells the workers, trains its own shard,
    /// validates and writes checkpoints.
    public static func coordinate(_ request: JobRequest, world: any Communicator) throws -> TrainingSummary {
        precondition(world.rank == 0, "the coordinator must be rank 0; start it first on the mpirun line")
        let spec: JobSpec
        let dataset: CustomerDataset
        let signingKey: CheckpointSigningKey?
        do {
            // The key is read before anything trains: a wrong path fails at once, not at the first checkpoint.
            signingKey = try request.signingKeyPath.map(CheckpointSigningKey.load(path:))
            let configuration = try TrainingConfiguration.load(yamlFile: request.configurationPath, overrides: request.overrides)
            // Every rank verifies its own customers' parts once the shards are planned (`run`).
            dataset = try CustomerDataset.open(at: URL(fileURLWithPath: configuration.data), verifyContents: false, loadGraph: false)
            spec = try makeSpec(configuration, dataset: dataset, request: request)
        } catch {
            // Tell the workers there is no job (an empty spec) so they exit instead of waiting.
            _ = try? world.broadcast(string: "", root: 0)
            throw JobDidNotStart(reason: error)
        }
        let encoded = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        _ = try world.broadcast(string: encoded, root: 0)
        return try run(spec, dataset: dataset, world: world, signingKey: signingKey)
    }

    /// Every other rank: receives the job from the coordinator and trains its shard.
    public static func work(world: any Communicator) throws {
        let encoded = try world.broadcast(string: "", root: 0)
        guard !encoded.isEmpty else { throw JobDidNotStart(reason: nil) }
        let spec = try JSONDecoder().decode(JobSpec.self, from: Data(encoded.utf8))
        _ = try run(spec, dataset: nil, world: world)
    }

    static func makeSpec(_ configuration: TrainingConfiguration, dataset: CustomerDataset, request: JobRequest) throws -> JobSpec {
        if configuration.model == .gnn && dataset.manifest.graph == nil {
            throw AgreementError(message: "the gnn model needs a customer–product graph, and dataset \(configuration.data) has none (no product ids)")
        }
        // A constant label trains to a perfect score that means nothing (val_f1 1.0 on a
        // dataset where everybody churned): refuse it before anything trains.
        let labelProblem = configuration.model == .lstm ? dataset.manifest.constantChurnProblem : dataset.manifest.constantStageProblem
        if let labelProblem {
            throw UnlearnableDataset(dataset: configuration.data, model: configuration.model, reason: labelProblem)
        }
        return JobSpec(
            configuration: configuration, resume: request.resume, stopAfterSteps: request.stopAfterSteps,
            datasetFingerprint: dataset.manifest.fingerprint, datasetPath: configuration.data,
            historyLength: dataset.historyLength, featureCount: dataset.featureCount,
            classCount: dataset.manifest.stageNames.count, trainCount: 0, validationCount: 0, testCount: 0,
            // Unweighted by default: a weighted BCE shifts every probability, and scoring relies on
            // calibrated churn probabilities for its actions.
            positiveWeight: configuration.lstm.positiveWeight ?? 1, classWeights: nil,
            nodeFeatureWidth: dataset.nodeFeatureWidth, spendPrior: nil,
            majorityStage: 0, normalisation: dataset.manifest.normalisation,
            standardFeatures: dataset.manifest.featureNames == customerFeatureNames,
            horizonPeriods: Double(dataset.manifest.spec.horizonDays) / Double(dataset.manifest.spec.periodDays))
    }

    static func run(_ announced: JobSpec, dataset: CustomerDataset?, world: any Communicator,
                    signingKey: CheckpointSigningKey? = nil) throws -> TrainingSummary {
        let configuration = announced.configuration
        BLAS.setThreadCount(1)
        world.watchdogTimeout = .milliseconds(Int64(configuration.watchdogSeconds * 1000))
        // Every rank reads and verifies its own customers from shared storage; the fingerprint
        // check below proves every rank opened the same dataset.
        let dataset: CustomerDataset = try world.agreeing("opening the dataset \(announced.datasetPath)") {
            try dataset ?? CustomerDataset.open(at: URL(fileURLWithPath: announced.datasetPath), verifyContents: false, loadGraph: false)
        }
        let ranks = world.size
        let plan = try world.agreeing("finding this rank's customers in \(announced.datasetPath)") {
            try ownPlan(dataset, ranks: ranks, rank: world.rank)
        }
        // The LSTM learns from the examples of the earlier cut-offs too (all training customers);
        // the graph model's customers are the graph's nodes, at the main cut-off only.
        let earlier = configuration.model == .lstm
            ? try world.agreeing("opening the earlier cut-offs of \(announced.datasetPath)") { try dataset.snapshotDatasets(verifyContents: false) }
            : []
        let earlierPlans = try world.agreeing("finding this rank's examples of the earlier cut-offs") {
            try earlier.map { try ownPlan($0, ranks: ranks, rank: world.rank) }
        }
        try world.agreeing("verifying this rank's examples of the earlier cut-offs") {
            for (earlierDataset, earlierPlan) in zip(earlier, earlierPlans) {
                if earlierDataset.manifest.partLayout != nil {
                    try earlierDataset.verify(customers: earlierPlan.rowSpans, graphNodes: [])
                } else if world.rank == 0 {
                    try earlierDataset.verify(customers: [0..<earlierDataset.customerCount], graphNodes: [])
                }
            }
        }
        // The graph model's ranks each hold the nodes they own (`GraphPartition`): customers in
        // contiguous blocks, products in contiguous blocks, no rank the whole graph.
        let partition = configuration.model == .gnn ? dataset.graphPartition(ranks: ranks) : nil
        // The parts that hold this rank's customers and its share of the graph.
        try world.agreeing("verifying this rank's customers in \(announced.datasetPath)") {
            if dataset.manifest.partLayout != nil {
                try dataset.verify(customers: plan.rowSpans,
                                   graphNodes: partition.map { [$0.customerBlock(of: world.rank), $0.productBlock(of: world.rank)] } ?? [])
            } else if world.rank == 0 {
                // Format 1 has whole-file hashes only: one rank reads it all.
                try dataset.verify(customers: [0..<dataset.customerCount], graphNodes: [])
            }
        }
        let graphShare = try world.agreeing("reading this rank's share of the graph") {
            try partition.map { try dataset.graphShare(of: $0, rank: world.rank) }
        }
        // The graph model reads node features from its share of the graph, never the sequences: its
        // shards carry labels and dataset rows only (at 894k customers on 2 ranks, leaving out the
        // sequences it used to receive took a worker's peak RSS from 919 to 386 MiB).
        let sequenceFeatures = configuration.model == .gnn ? 0 : announced.featureCount
        let (trainShard, validationShard, testShard) = try world.agreeing("reading this rank's customers") {
            (try LocalShard.read([(plan.train, dataset)] + zip(earlierPlans, earlier).map { ($0.train, $1) }, featureCount: sequenceFeatures),
             try LocalShard.read(plan.validation, from: dataset, featureCount: sequenceFeatures),
             try LocalShard.read(plan.test, from: dataset, featureCount: sequenceFeatures))
        }
        var spec = try announced.completed(with: plan, trainShard: trainShard, world: world)
        spec.earlierCutoffExamples = earlierPlans.reduce(0) { $0 + $1.totals[0] }
        let task = try makeTask(spec, graph: graphShare, world: world)
        try checkAgreement(
            JobFingerprint(configuration: try configuration.canonicalJSON(),
                           parameterLayout: task.parameters.layout.fingerprint,
                           dataset: dataset.manifest.fingerprint,
                           program: programVersion),
            world: world)
        try SharedStorageCheck.run(checkpointRoot: configuration.checkpoints, datasetPath: spec.datasetPath, world: world) {
            print($0)
            fflush(nil)
        }


        let store = CheckpointIO(configuration: configuration, spec: spec, dataset: dataset, signingKey: signingKey)
        if spec.resume == nil {
            try onCoordinator(world, what: "prepare the checkpoint directory") { try store.prepare(resumedStep: nil) }
        }
        let restored = try restoreState(spec, store: world.rank == 0 ? store : nil, parameterCount: task.parameters.layout.totalCount, world: world)
        let reporter = try ProgressReporter(
            enabled: world.rank == 0,
            metricsLog: URL(fileURLWithPath: configuration.checkpoints).appendingPathComponent(configuration.run)
                .appendingPathComponent("metrics.jsonl"))
        if world.rank == 0 {
            reporter.line("training \(configuration.model.rawValue) on \(ranks) rank\(ranks > 1 ? "s" : ""): "
                + "\(spec.trainCount) training customers"
                + (earlier.isEmpty ? "" : " and \(spec.earlierCutoffExamples) examples of theirs at \(earlier.count) earlier cut-offs")
                + " (\(trainShard.count) per rank, \(trainShard.count * ranks - spec.trainCount - spec.earlierCutoffExamples) repeated to balance), "
                + "\(spec.validationCount) validation, \(spec.testCount) test; \(task.parameters.layout.totalCount) parameters"
                + (restored.map { ", resuming at epoch \($0.progress.epoch + 1) step \($0.progress.stepInEpoch)" } ?? ""))
        }
        // The graph model is judged against itself without the graph: the same network, data,
        // seed and training budget with every neighbour input zero, trained first, so the
        // model's test record can carry both on the same customers.
        var ablation: TrainingSummary? = nil
        if configuration.model == .gnn && configuration.gnn.ablation && spec.stopAfterSteps == nil {
            if world.rank == 0 { reporter.line("training the no-graph ablation first (the same network and budget, every neighbour input zero)") }
            let ablationTrainer = DataParallelTrainer(
                configuration: configuration, world: world, task: try makeTask(spec, graph: graphShare, world: world, emptyGraph: true),
                trainShard: trainShard, validationShard: validationShard, testShard: testShard, classCount: spec.classCount,
                reporter: try ProgressReporter(enabled: false, metricsLog: nil), saveCheckpoint: nil)
            ablationTrainer.majorityStage = spec.majorityStage
            ablation = try ablationTrainer.run(resumingFrom: nil)
        }
        let trainer = DataParallelTrainer(
            configuration: configuration, world: world, task: task, trainShard: trainShard,
            validationShard: validationShard, testShard: testShard, classCount: spec.classCount, reporter: reporter,
            saveCheckpoint: world.rank == 0 ? { try store.save($0) } : nil, stopAfterSteps: spec.stopAfterSteps)
        trainer.runDirectory = URL(fileURLWithPath: configuration.checkpoints).appendingPathComponent(configuration.run)
        trainer.majorityStage = spec.majorityStage
        if world.rank == 0 { trainer.loadParameters = { try store.parameters(step: $0) } }
        if let ablation, let ablationValidation = ablation.validationStageRows, let ablationTest = ablation.testStageRows {
            let runDirectory = trainer.runDirectory
            trainer.stageComparison = { validation, test in
                var failures: [String] = []
                var boosting: (validation: [Int], test: [Int])? = nil
                if let graphShare {
                    do {
                        boosting = try StageBoostingBaseline.predict(
                            graph: graphShare, train: trainShard, trainDistinct: plan.trainDistinct, validation: validationShard,
                            test: testShard, classCount: spec.classCount, seed: configuration.seed, world: world,
                            runDirectory: runDirectory)
                    } catch let error as BoostingError {
                        failures.append("XGBoost could not be fitted as the stage baseline: \(error)")
                    }
                }
                let metrics = try StageComparison.metrics(
                    validation: validation, test: test, ablationValidation: ablationValidation, ablationTest: ablationTest,
                    boosting: boosting, majorityStage: spec.majorityStage, classCount: spec.classCount, world: world)
                return (metrics, failures)
            }
        }
        if configuration.model == .lstm && spec.standardFeatures {
            let summaryFile = trainer.runDirectory?.appendingPathComponent("baseline_summary.csv")
            // The earlier cut-offs' examples follow the main ones in the shard, each block padded.
            var earlierBlocks: [Range<Int>] = []
            var blockStart = plan.train.count
            for earlierPlan in earlierPlans {
                earlierBlocks.append(blockStart..<blockStart + earlierPlan.trainDistinct)
                blockStart += earlierPlan.train.count
            }
            let train = BaselineEvaluation.Split(
                shard: trainShard,
                distinct: plan.trainDistinct,
                earlierCutoffs: earlierBlocks)
            trainer.baselines = {
                try BaselineEvaluation.run(
                    train: train, validationShard: validationShard, validation: $0, testShard: testShard, test: $1,
                    normalisation: spec.normalisation, horizonPeriods: spec.horizonPeriods, summaryFile: summaryFile, world: world)
            }
        }
        let summary = try trainer.run(resumingFrom: restored)
        if world.rank == 0 { reporter.line(describe(summary, configuration: configuration)) }
        return summary
    }

    /// This rank's customers of `dataset` (`ShardPlan`), from the manifest's split counts per
    /// part when it has them.
    static func ownPlan(_ dataset: CustomerDataset, ranks: Int, rank: Int) throws -> ShardPlan {
        if let sizes = dataset.manifest.splitPartSizes {
            return try ShardPlan.own(splits: dataset.split, partSizes: sizes, ranks: ranks, rank: rank,
                                     path: dataset.directory.appendingPathComponent("split.u8").path)
        }
        return ShardPlan.own(splits: dataset.split, ranks: ranks, rank: rank)
    }

    /// The model `spec` describes; with `emptyGraph`, the GraphSAGE sees no neighbours (every
    /// aggregate is zero), which is the no-graph ablation.
    static func makeTask(_ spec: JobSpec, graph: LocalGraph?, world: any Communicator, emptyGraph: Bool = false) throws -> TrainingTask {
        let configuration = spec.configuration
        switch configuration.model {
        case .lstm:
            var lstm = spec.architecture.lstmConfiguration
            lstm.dropout = configuration.lstm.dropout
            lstm.positiveWeight = spec.positiveWeight
            lstm.clvWeight = configuration.lstm.clvWeight
            lstm.stageWeight = configuration.lstm.stageWeight
            lstm.stageClassWeights = lstm.stageCount > 0 ? spec.classWeights : nil
            lstm.spendPrior = spec.spendPrior
            let model = LSTMModel(configuration: lstm, seed: configuration.seed)
            return LSTMTask(model: model, batchCapacity: configuration.batchSize, steps: spec.historyLength)
        case .gnn:
            guard let graph else {
                throw AgreementError(message: "the gnn model needs the dataset's graph")
            }
            let model = GraphSAGEModel(
                configuration: GraphSAGEConfiguration(
                    inputSize: spec.nodeFeatureWidth, hiddenSize: configuration.gnn.hidden, classes: spec.classCount,
                    layers: configuration.gnn.layers, dropout: configuration.gnn.dropout, classWeights: spec.classWeights),
                seed: configuration.seed)
            return GNNTask(model: model, graph: graph, fanouts: configuration.gnn.fanouts, withoutEdges: emptyGraph,
                           world: world, batchCapacity: configuration.batchSize, seed: configuration.seed)
        }
    }

    /// Rank 0 reads the checkpoint; every rank receives its state by broadcast (workers read no files).
    static func restoreState(_ spec: JobSpec, store: CheckpointIO?, parameterCount: Int, world: any Communicator) throws -> RestoredState? {
        guard let resume = spec.resume else { return nil }
        var header = ""
        var state: RestoredState? = nil
        if let store {
            do {
                let loaded = try store.load(resume, parameterCount: parameterCount)
                state = loaded
                header = String(decoding: try JSONEncoder().encode(loaded.progress), as: UTF8.self)
                    + "\n\(loaded.optimizerStep)"
            } catch {
                _ = try? world.broadcast(string: "", root: 0)
                throw error
            }
        }
        header = try world.broadcast(string: header, root: 0)
        guard !header.isEmpty else {
            throw AgreementError(message: "the coordinator could not load checkpoint '\(resume)' (its error is above)")
        }
        let parts = header.split(separator: "\n", maxSplits: 1)
        let progress = try JSONDecoder().decode(TrainingProgress.self, from: Data(parts[0].utf8))
        var parameters = state?.parameters ?? [Float](repeating: 0, count: parameterCount)
        var first = state?.firstMoment ?? [Float](repeating: 0, count: parameterCount)
        var second = state?.secondMoment ?? [Float](repeating: 0, count: parameterCount)
        try world.broadcast(&parameters, root: 0)
        try world.broadcast(&first, root: 0)
        try world.broadcast(&second, root: 0)
        return RestoredState(progress: progress, parameters: parameters, firstMoment: first, secondMoment: second,
                             optimizerStep: Int(parts[1]) ?? 0)
    }

    /// Runs `body` on rank 0 only and tells every rank whether it worked, so that a failure there
    /// ends the workers with a message instead of leaving them in the next collective.
    static func onCoordinator(_ world: any Communicator, what: String, _ body: () throws -> Void) throws {
        var failure: Error? = nil
        var status = [Int32(0)]
        if world.rank == 0 {
            do { try body() } catch {
                failure = error
                status[0] = 1
            }
        }
        try world.broadcast(&status, root: 0)
        if let failure { throw failure }
        if status[0] != 0 {
            throw AgreementError(message: "the coordinator could not \(what) (its error is above); rank \(world.rank) stops")
        }
    }

    static func describe(_ summary: TrainingSummary, configuration: TrainingConfiguration) -> String {
        // Full metric names, as scripts grep them; the baselines' lines drop their long prefixes.
        func format(_ metrics: [String: Double], _ prefix: String, _ keys: [String], named: Bool = true) -> String {
            keys.compactMap { key in metrics[prefix + key].map { String(format: "%@ %.4f", named ? prefix + key : key, $0) } }
                .joined(separator: "  ")
        }
        let keys = configuration.model == .lstm
            ? ["auc", "log_loss", "f1", "brier", "clv_rmse", "clv_rmse_without_top_0_1pct", "spend_spearman", "spend_gini", "stage_accuracy", "stage_macro_f1",
               "stage_majority_accuracy", "stage_majority_macro_f1"]
            : ["accuracy", "macro_f1", "loss", "nograph_accuracy", "nograph_macro_f1", "xgboost_accuracy", "xgboost_macro_f1",
               "majority_accuracy", "majority_macro_f1"]
        let evaluated = summary.evaluatedBest
            ? "best checkpoint, epoch \(summary.evaluatedEpoch) step \(summary.evaluatedStep)"
            : "last model, step \(summary.evaluatedStep) (no validation chose a best)"
        var text = "done: \(summary.epochsRun) epochs, \(summary.steps) steps"
            + (summary.stoppedEarly ? " (stopped early)" : "")
            + String(format: ", %.0f samples/s, all-reduce %.1f%% of step time", summary.samplesPerSecond, 100 * summary.allreduceShare)
            + "\n  evaluated:  \(evaluated)"
            + "\n  validation: " + format(summary.lastValidation, "val_", keys)
            + "\n  test:       " + format(summary.test, "test_", keys)
        if let low = summary.test["test_auc_ci_low"], let high = summary.test["test_auc_ci_high"] {
            text += String(format: "  (AUC 95%% CI %.4f–%.4f)", low, high)
        }
        for (name, label) in [("macro_f1", "macro-F1"), ("nograph_macro_f1", "no-graph macro-F1"),
                              ("xgboost_macro_f1", "XGBoost macro-F1"), ("majority_macro_f1", "majority macro-F1"),
                              ("macro_f1_minus_nograph", "macro-F1 minus no-graph"), ("macro_f1_minus_xgboost", "macro-F1 minus XGBoost"),
                              ("macro_f1_minus_majority", "macro-F1 minus majority")] {
            guard let low = summary.test["test_\(name)_ci_low"], let high = summary.test["test_\(name)_ci_high"] else { continue }
            let format = name.contains("minus") ? "\n  %@ 95%% CI %+.4f to %+.4f" : "\n  %@ 95%% CI %.4f–%.4f"
            text += String(format: format, "test " + label, low, high)
        }
        if summary.baselines != nil {
            let baselineKeys = ["auc", "log_loss", "clv_rmse", "clv_rmse_without_top_0_1pct", "spend_spearman", "spend_gini"]
            for (name, label) in [("bgnbd", "BG/NBD+GG"), ("logistic", "logistic floor"), ("xgboost", "XGBoost")]
            where summary.test["test_\(name)_auc"] != nil {
                text += "\n  \(label) (same customers): validation " + format(summary.lastValidation, "val_\(name)_", baselineKeys, named: false)
                    + " | test " + format(summary.test, "test_\(name)_", baselineKeys, named: false)
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
        for warning in summary.warnings { text += "\n  WARNING: " + warning }
        return text
    }
}
