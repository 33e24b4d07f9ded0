import Checkpoints
import Collectives
import CustomerData
import Foundation
import GradientBoosting
import Models
import RunFiles
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
        let recipe = self.recipe
        if recipe.balancesClasses {
            // Inverse frequency, scaled so the weights average 1 over the training customers.
            spec.classWeights = counts.map { $0 > 0 ? Float(spec.trainCount) / Float(classCount * $0) : 0 }
        }
        if recipe.fitsSpendPrior {
            spec.spendPrior = SpendPrior.fit(moments: Array(sums[classCount...]))
        }
        return spec
    }

    /// Everything about the job that depends on the model it trains.
    var recipe: any ModelRecipe { ModelRecipes.recipe(for: configuration) }

    /// The model every rank builds, as the checkpoint manifest records it.
    var architecture: ModelArchitecture { recipe.architecture(self) }
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
        // A constant label trains to a perfect score that means nothing (val_f1 1.0 on a
        // dataset where everybody churned): refuse it before anything trains.
        if let refusal = ModelRecipes.recipe(for: configuration).refusal(of: dataset, path: configuration.data) {
            throw refusal
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
        try run(announced, recipe: announced.recipe, dataset: dataset, world: world, signingKey: signingKey)
    }

    private static func run<Recipe: ModelRecipe>(_ announced: JobSpec, recipe: Recipe, dataset: CustomerDataset?,
                                                 world: any Communicator, signingKey: CheckpointSigningKey?) throws -> TrainingSummary {
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
        let earlier = recipe.trainsOnEarlierCutoffs
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
        // A graph model's ranks each hold the nodes they own (`GraphPartition`): customers in
        // contiguous blocks, products in contiguous blocks, no rank the whole graph.
        let partition = recipe.readsGraph ? dataset.graphPartition(ranks: ranks) : nil
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
        // Without sequences, the shards carry labels and dataset rows only.
        let sequenceFeatures = recipe.readsSequences ? announced.featureCount : 0
        let (trainShard, validationShard, testShard) = try world.agreeing("reading this rank's customers") {
            (try LocalShard.read([(plan.train, dataset)] + zip(earlierPlans, earlier).map { ($0.train, $1) }, featureCount: sequenceFeatures),
             try LocalShard.read(plan.validation, from: dataset, featureCount: sequenceFeatures),
             try LocalShard.read(plan.test, from: dataset, featureCount: sequenceFeatures))
        }
        var spec = try announced.completed(with: plan, trainShard: trainShard, world: world)
        spec.earlierCutoffExamples = earlierPlans.reduce(0) { $0 + $1.totals[0] }
        let task = try recipe.makeTask(spec, graph: graphShare, world: world)
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
                .appendingPathComponent(MetricsLog.fileName))
        if world.rank == 0 {
            reporter.line("training \(recipe.kind.rawValue) on \(ranks) rank\(ranks > 1 ? "s" : ""): "
                + "\(spec.trainCount) training customers"
                + (earlier.isEmpty ? "" : " and \(spec.earlierCutoffExamples) examples of theirs at \(earlier.count) earlier cut-offs")
                + " (\(trainShard.count) per rank, \(trainShard.count * ranks - spec.trainCount - spec.earlierCutoffExamples) repeated to balance), "
                + "\(spec.validationCount) validation, \(spec.testCount) test; \(task.parameters.layout.totalCount) parameters"
                + (restored.map { ", resuming at epoch \($0.progress.epoch + 1) step \($0.progress.stepInEpoch)" } ?? ""))
        }
        let runDirectory = URL(fileURLWithPath: configuration.checkpoints).appendingPathComponent(configuration.run)
        try recipe.prepareComparisons(for: task, job: JobContext(
            configuration: configuration, spec: spec, plan: plan, earlierPlans: earlierPlans, trainShard: trainShard,
            validationShard: validationShard, testShard: testShard, graphShare: graphShare, world: world, reporter: reporter,
            runDirectory: runDirectory))
        let trainer = DataParallelTrainer(
            configuration: configuration, world: world, task: task, trainShard: trainShard,
            validationShard: validationShard, testShard: testShard, reporter: reporter,
            saveCheckpoint: world.rank == 0 ? { try store.save($0) } : nil, stopAfterSteps: spec.stopAfterSteps)
        trainer.runDirectory = runDirectory
        trainer.majorityStage = spec.majorityStage
        if world.rank == 0 { trainer.loadParameters = { try store.parameters(step: $0) } }
        let summary = try trainer.run(resumingFrom: restored)
        if world.rank == 0 { reporter.line(describe(summary, recipe: recipe)) }
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

    static func describe(_ summary: TrainingSummary, recipe: some ModelRecipe) -> String {
        let keys = recipe.summaryKeys
        let evaluated = summary.evaluatedBest
            ? "best checkpoint, epoch \(summary.evaluatedEpoch) step \(summary.evaluatedStep)"
            : "last model, step \(summary.evaluatedStep) (no validation chose a best)"
        var text = "done: \(summary.epochsRun) epochs, \(summary.steps) steps"
            + (summary.stoppedEarly ? " (stopped early)" : "")
            + String(format: ", %.0f samples/s, all-reduce %.1f%% of step time", summary.samplesPerSecond, 100 * summary.allreduceShare)
            + "\n  evaluated:  \(evaluated)"
            + "\n  validation: " + formatMetrics(summary.lastValidation, "val_", keys)
            + "\n  test:       " + formatMetrics(summary.test, "test_", keys)
            + recipe.comparisonLines(summary)
        for warning in summary.warnings { text += "\n  WARNING: " + warning }
        return text
    }
}
