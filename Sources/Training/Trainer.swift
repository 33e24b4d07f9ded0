import Collectives
import Foundation
import Models
import RunFiles
import Tensors

/// Where training stands: everything a checkpoint must hold for a resumed run to continue
/// bit for bit (random streams are keyed by seed, epoch, step and rank, so no generator state
/// beyond these counters is needed).
public struct TrainingProgress: Codable, Sendable, Equatable {
    /// Epoch to run next and the step within it (non-zero when saved mid-epoch).
    public var epoch = 0
    public var stepInEpoch = 0
    /// Optimizer steps taken so far.
    public var globalStep = 0
    /// Best value of the early-stopping metric so far, and epochs since it improved.
    public var bestMetric: Double? = nil
    public var epochsWithoutImprovement = 0
    /// World size the state was saved with (resuming on another size is allowed, not bit-identical).
    public var worldSize = 1
    /// Step and epoch (1-based) of the best validation so far: the model the test split and
    /// scoring use. Nil before the first validation.
    public var bestStep: Int? = nil
    public var bestEpoch: Int? = nil

    public init() {}
}

/// The parts of a checkpoint the loop restores.
public struct RestoredState: Sendable {
    public var progress: TrainingProgress
    public var parameters: [Float]
    public var firstMoment: [Float]
    public var secondMoment: [Float]
    public var optimizerStep: Int

    public init(progress: TrainingProgress, parameters: [Float], firstMoment: [Float], secondMoment: [Float], optimizerStep: Int) {
        self.progress = progress
        self.parameters = parameters
        self.firstMoment = firstMoment
        self.secondMoment = secondMoment
        self.optimizerStep = optimizerStep
    }
}

/// What rank 0 hands to the checkpoint writer.
public struct CheckpointRequest {
    public let progress: TrainingProgress
    public let parameters: ParameterStore
    public let optimizer: AdamOptimizer
    public let metrics: [String: Double]
    public let isBest: Bool
}

public struct TrainingSummary: Sendable {
    /// The checkpoint the test split was scored with: the best validation's, or the last
    /// model's when no validation ran.
    public var evaluatedStep = 0
    public var evaluatedEpoch = 0
    public var evaluatedBest = false
    public var epochsRun = 0
    public var steps = 0
    public var stoppedEarly = false
    public var lastValidation: [String: Double] = [:]
    public var test: [String: Double] = [:]
    public var samplesPerSecond = 0.0
    public var allreduceShare = 0.0
    public var parameterChecksum: UInt64 = 0
    /// The baselines fitted at the end on the same customers, when the model has any.
    public var baselines: BaselineReport? = nil
    /// What the summary must warn about: comparisons the model lost, baselines that could not be fitted.
    public var warnings: [String] = []
}

/// The data-parallel loop every rank runs: same steps, fused gradient all-reduce, same update.
public final class DataParallelTrainer {
    let configuration: TrainingConfiguration
    let world: any Communicator
    /// The same ranks without the per-call agreement check, for the gradient all-reduce.
    let gradientWorld: any Communicator
    let task: any TrainingTask
    let trainShard: LocalShard
    let validationShard: LocalShard
    let testShard: LocalShard
    let optimizer: AdamOptimizer
    let reporter: ProgressReporter
    let saveCheckpoint: ((CheckpointRequest) throws -> Void)?
    /// Stops after this many optimizer steps in total (tests of kill-and-resume); nil = run to the end.
    let stopAfterSteps: Int?
    /// Where rank 0 writes the test predictions; nil writes none.
    public var runDirectory: URL?
    /// The training split's most frequent stage: the majority baseline of stage metrics.
    var majorityStage = 0
    /// Rank 0: reads the parameters of a saved step, for a best model saved before a resume.
    var loadParameters: ((Int) throws -> [Float])?

    public init(configuration: TrainingConfiguration, world: any Communicator, task: any TrainingTask,
         trainShard: LocalShard, validationShard: LocalShard, testShard: LocalShard,
         reporter: ProgressReporter, saveCheckpoint: ((CheckpointRequest) throws -> Void)?,
         stopAfterSteps: Int? = nil) {
        self.configuration = configuration
        self.world = world
        gradientWorld = world.withoutAgreementCheck()
        self.task = task
        self.trainShard = trainShard
        self.validationShard = validationShard
        self.testShard = testShard
        self.reporter = reporter
        self.saveCheckpoint = saveCheckpoint
        self.stopAfterSteps = stopAfterSteps
        optimizer = AdamOptimizer(
            parameterCount: task.parameters.layout.totalCount,
            configuration: AdamConfiguration(weightDecay: configuration.weightDecay,
                                             decoupledWeightDecay: configuration.weightDecay > 0))
    }

    var stepsPerEpoch: Int { (trainShard.count + configuration.batchSize - 1) / configuration.batchSize }

    /// The configured epochs, raised until the run takes at least `min_steps` optimizer steps:
    /// on a few hundred customers an epoch is a handful of steps, far too few to learn from.
    var epochs: Int { max(configuration.epochs, (configuration.minSteps + stepsPerEpoch - 1) / max(stepsPerEpoch, 1)) }

    /// The learning rate grows with the global batch: linearly (Goyal et al.) or with its square root.
    var scaledLearningRate: Float {
        switch configuration.learningRateScaling {
        case .none: return configuration.learningRate
        case .linear: return configuration.learningRate * Float(world.size)
        case .sqrt: return configuration.learningRate * Float(world.size).squareRoot()
        }
    }

    public func run(resumingFrom restored: RestoredState?) throws -> TrainingSummary {
        var progress = TrainingProgress()
        progress.worldSize = world.size
        let parameters = task.parameters
        if let restored {
            restored.parameters.withUnsafeBufferPointer {
                parameters.values.pointer.update(from: $0.baseAddress!, count: $0.count)
            }
            optimizer.restore(step: restored.optimizerStep, firstMoment: restored.firstMoment,
                              secondMoment: restored.secondMoment)
            progress = restored.progress
            if restored.progress.worldSize != world.size {
                // Step indices name different customers on another world size: start the
                // saved epoch's remainder over from its first step.
                reporter.line("resuming on \(world.size) ranks from a checkpoint saved on \(restored.progress.worldSize): epoch \(restored.progress.epoch + 1) starts over from its first step (step indices name other customers on another world size)")
                progress.stepInEpoch = 0
                progress.worldSize = world.size
            }
        }
        let schedule = LearningRateSchedule(
            baseRate: scaledLearningRate, warmupSteps: configuration.warmupSteps,
            totalSteps: epochs * stepsPerEpoch,
            decay: configuration.decay)
        let gradients = parameters.gradients.buffer
        var summary = TrainingSummary()
        var totalSamples = 0
        var totalSeconds = 0.0
        var totalAllreduce = 0.0

        if epochs > configuration.epochs && progress.globalStep == 0 {
            reporter.line("\(configuration.epochs) epochs of \(stepsPerEpoch) steps are fewer than min_steps \(configuration.minSteps): training \(epochs) epochs")
        }
        var bestParameters: [Float]? = nil
        epochs: while progress.epoch < epochs {
            let epoch = progress.epoch
            let order = epochOrder(count: trainShard.count, seed: configuration.seed, epoch: epoch, rank: world.rank)
            let epochStart = Date()
            var lossSum = 0.0
            var lossCount = 0
            var allreduceSeconds = 0.0
            var samples = 0
            let firstStep = progress.stepInEpoch
            for step in firstStep..<stepsPerEpoch {
                let start = step * configuration.batchSize
                let customers = order[start..<min(start + configuration.batchSize, order.count)]
                var random = SeededRandom(seed: configuration.seed, purpose: .dropout, epoch: epoch, step: step, rank: world.rank)
                parameters.zeroGradients()
                let loss: Float
                if configuration.overlapAllreduce {
                    loss = try overlappedStep(customers, random: &random, seconds: &allreduceSeconds)
                } else {
                    loss = try task.trainStep(trainShard, customers: customers, random: &random, gradientsReady: nil)
                    let reduceStart = DispatchTime.now().uptimeNanoseconds
                    try gradientWorld.allreduceAverage(gradients)
                    allreduceSeconds += Double(DispatchTime.now().uptimeNanoseconds - reduceStart) * 1e-9
                }
                if configuration.clipNorm > 0 { clipGlobalNorm(parameters.gradients, maxNorm: configuration.clipNorm) }
                optimizer.update(parameters.values, gradients: parameters.gradients,
                                 learningRate: schedule.rate(at: progress.globalStep))
                progress.globalStep += 1
                progress.stepInEpoch = step + 1
                lossSum += Double(loss)
                lossCount += 1
                samples += customers.count * world.size

                if configuration.checksumEverySteps > 0 && progress.globalStep % configuration.checksumEverySteps == 0 {
                    try checkParametersAgree(UnsafeBufferPointer(parameters.values.buffer), step: progress.globalStep, world: world)
                }
                let elapsed = Date().timeIntervalSince(epochStart)
                let rate = Double(samples) / max(elapsed, 1e-9)
                let remainingSteps = (epochs - epoch) * stepsPerEpoch - (step + 1)
                reporter.step(epoch: epoch, epochs: epochs, step: step + 1, steps: stepsPerEpoch,
                              loss: lossSum / Double(lossCount), samplesPerSecond: rate,
                              etaSeconds: Double(remainingSteps * configuration.batchSize * world.size) / max(rate, 1e-9))
                if configuration.checkpointEverySteps > 0 && progress.globalStep % configuration.checkpointEverySteps == 0
                    && step + 1 < stepsPerEpoch {
                    try checkpoint(progress, metrics: [:], isBest: false)
                }
                if let stopAfterSteps, progress.globalStep >= stopAfterSteps {
                    summary.steps = progress.globalStep
                    summary.parameterChecksum = parameterChecksum(UnsafeBufferPointer(parameters.values.buffer))
                    return summary
                }
            }
            progress.epoch += 1
            progress.stepInEpoch = 0
            let epochSeconds = Date().timeIntervalSince(epochStart)
            totalSamples += samples
            totalSeconds += epochSeconds
            totalAllreduce += allreduceSeconds

            // Mean training loss over all ranks' steps of this epoch.
            var lossTotals = [lossSum, Double(lossCount)]
            try world.allreduce(&lossTotals, op: .sum)
            var metrics: [String: Double] = [
                "epoch": Double(epoch + 1), "step": Double(progress.globalStep),
                "train_loss": lossTotals[0] / max(lossTotals[1], 1),
                // A resumed epoch's loss covers only the steps run since the resume; the count says so.
                "train_loss_steps": Double(lossCount),
                "samples_per_second": Double(samples) / max(epochSeconds, 1e-9),
                "allreduce_share": allreduceSeconds / max(epochSeconds, 1e-9),
                "learning_rate": Double(schedule.rate(at: max(progress.globalStep - 1, 0))),
            ]
            var improved = false
            var stopLine: String?
            if (epoch + 1) % configuration.validateEveryEpochs == 0 || progress.epoch == epochs {
                let validation = try validationMetrics(task)
                metrics.merge(validation) { $1 }
                summary.lastValidation = validation
                (improved, stopLine) = updateEarlyStopping(&progress, metrics: validation)
                if improved {
                    progress.bestStep = progress.globalStep
                    progress.bestEpoch = progress.epoch
                    bestParameters = Array(UnsafeBufferPointer(parameters.values.buffer))
                }
            }
            reporter.line(describeEpoch(metrics))
            reporter.record(metrics, event: "epoch")
            summary.epochsRun += 1
            // A new best is always saved, so `best` names a checkpoint that holds exactly it.
            if progress.epoch % configuration.checkpointEveryEpochs == 0 || progress.epoch == epochs || stopLine != nil || improved {
                try checkpoint(progress, metrics: metrics, isBest: improved)
            }
            if let stopLine {
                reporter.line(stopLine)
                summary.stoppedEarly = true
                break epochs
            }
        }

        summary.steps = progress.globalStep
        summary.samplesPerSecond = Double(totalSamples) / max(totalSeconds, 1e-9)
        summary.allreduceShare = totalAllreduce / max(totalSeconds, 1e-9)
        summary.parameterChecksum = parameterChecksum(UnsafeBufferPointer(parameters.values.buffer))

        // The model a user gets is the best validation's, so that is the one the test split
        // measures; the last model stays in the `latest` checkpoint, the resume point.
        try restoreBest(progress, inMemory: bestParameters)
        summary.evaluatedStep = progress.bestStep ?? progress.globalStep
        summary.evaluatedEpoch = progress.bestEpoch ?? progress.epoch
        summary.evaluatedBest = progress.bestStep != nil
        try evaluateAndFinish(task, summary: &summary)
        var record = summary.test
        for (key, value) in summary.lastValidation { record[key] = value }
        for (key, value) in summary.baselines?.parameters ?? [:] { record[key] = value }
        reporter.record(record, event: "test", warnings: summary.warnings)
        return summary
    }

    /// Each epoch's validation metrics (generic so that the task's rows keep their type).
    private func validationMetrics<Task: TrainingTask>(_ task: Task) throws -> [String: Double] {
        try task.evaluate(validationShard, majorityStage: majorityStage, prefix: "val_", spendTail: false, world: world).metrics
    }

    /// The chosen model's validation and test metrics, then what the task does with them: the
    /// predictions file and the comparisons with other models.
    private func evaluateAndFinish<Task: TrainingTask>(_ task: Task, summary: inout TrainingSummary) throws {
        let validation = try task.evaluate(validationShard, majorityStage: majorityStage, prefix: "val_", spendTail: true, world: world)
        summary.lastValidation = validation.metrics
        let test = try task.evaluate(testShard, majorityStage: majorityStage, prefix: "test_", spendTail: true, world: world)
        summary.test = test.metrics
        summary.test["test_evaluated_step"] = Double(summary.evaluatedStep)
        summary.test["test_evaluated_epoch"] = Double(summary.evaluatedEpoch)
        try task.finish(validation: validation, test: test, summary: &summary,
                        predictionsFile: runDirectory?.appendingPathComponent(TestPredictions.fileName), world: world)
    }

    /// Puts the best validation's parameters in place, on every rank: from memory when this
    /// process saw that epoch, else read by rank 0 from its checkpoint and broadcast.
    private func restoreBest(_ progress: TrainingProgress, inMemory: [Float]?) throws {
        guard let bestStep = progress.bestStep, bestStep != progress.globalStep else { return }
        let values = task.parameters.values
        if let inMemory {
            inMemory.withUnsafeBufferPointer { values.pointer.update(from: $0.baseAddress!, count: $0.count) }
            return
        }
        var loaded = [Float](repeating: 0, count: task.parameters.layout.totalCount)
        var status = [Int32(0)]
        var failure: Error? = nil
        if world.rank == 0 {
            do {
                guard let loadParameters else { throw AgreementError(message: "no checkpoint reader to load the best step \(bestStep)") }
                let read = try loadParameters(bestStep)
                guard read.count == loaded.count else {
                    throw AgreementError(message: "best checkpoint step \(bestStep) has \(read.count) parameters, the model \(loaded.count)")
                }
                loaded = read
            } catch {
                failure = error
                status[0] = 1
            }
        }
        try world.broadcast(&status, root: 0)
        if let failure { throw failure }
        guard status[0] == 0 else {
            throw AgreementError(message: "the coordinator could not read the best checkpoint (step \(bestStep)); rank \(world.rank) stops")
        }
        try world.broadcast(&loaded, root: 0)
        loaded.withUnsafeBufferPointer { values.pointer.update(from: $0.baseAddress!, count: $0.count) }
    }

    /// One step whose gradient all-reduce overlaps the backward pass: each part of the buffer
    /// the model reports as final is all-reduced without blocking while backward goes on below
    /// it; the rest (reported last, or never) is all-reduced at the end. `seconds` grows by the
    /// time spent blocked in MPI (starting the reductions, the final part and the waits).
    private func overlappedStep(_ customers: ArraySlice<Int32>, random: inout SeededRandom, seconds: inout Double) throws -> Float {
        let gradients = task.parameters.gradients.buffer
        var pending: [CollectiveRequest] = []
        var reducedFrom = gradients.count
        var failure: Error? = nil
        var blocked: UInt64 = 0
        let loss = try task.trainStep(trainShard, customers: customers, random: &random) { range in
            guard failure == nil else { return }
            let start = DispatchTime.now().uptimeNanoseconds
            do {
                pending.append(try self.gradientWorld.startAllreduce(
                    UnsafeMutableBufferPointer(rebasing: gradients[range]), op: .sum))
                reducedFrom = min(reducedFrom, range.lowerBound)
            } catch {
                failure = error
            }
            blocked += DispatchTime.now().uptimeNanoseconds - start
        }
        if let failure { throw failure }
        let start = DispatchTime.now().uptimeNanoseconds
        if reducedFrom > 0 {
            try gradientWorld.allreduce(UnsafeMutableBufferPointer(rebasing: gradients[0..<reducedFrom]), op: .sum)
        }
        for request in pending { try request.wait() }
        scale(gradients, by: 1 / Float(world.size))
        blocked += DispatchTime.now().uptimeNanoseconds - start
        seconds += Double(blocked) * 1e-9
        return loss
    }

    private func checkpoint(_ progress: TrainingProgress, metrics: [String: Double], isBest: Bool) throws {
        guard world.rank == 0, let saveCheckpoint else { return }
        try saveCheckpoint(CheckpointRequest(
            progress: progress, parameters: task.parameters, optimizer: optimizer, metrics: metrics, isBest: isBest))
    }

    /// Returns whether the metric improved and, to stop, the line that says why. Every rank
    /// holds the same merged metrics, so every rank reaches the same decision without another
    /// collective.
    private func updateEarlyStopping(_ progress: inout TrainingProgress, metrics: [String: Double]) -> (Bool, String?) {
        let rule = configuration.earlyStopping
        guard let value = metrics[rule.metric] else { return (false, nil) }
        let lowerIsBetter = rule.metric.hasSuffix("loss") || rule.metric.contains("rmse") || rule.metric.contains("brier")
            || rule.metric.contains("mae")
        let improved: Bool
        if let best = progress.bestMetric {
            improved = lowerIsBetter ? value < best - rule.minDelta : value > best + rule.minDelta
        } else {
            improved = true
        }
        if improved {
            progress.bestMetric = value
            progress.epochsWithoutImprovement = 0
        } else {
            progress.epochsWithoutImprovement += 1
        }
        let stop = Self.earlyStop(
            progress, metric: rule.metric, patience: rule.patience, minSteps: configuration.minSteps,
            firstValidatedEpoch: min(configuration.validateEveryEpochs, epochs))
        return (improved, stop)
    }

    /// Whether patience ends the run after this validation, as the line the log prints; nil to
    /// go on. `min_steps` holds a run only while its metric has not improved since the first
    /// validation (`firstValidatedEpoch`, 1-based): on a small data set an epoch is a handful of
    /// steps, and a model that has learnt nothing yet deserves those steps. A metric that improved
    /// and then stalled stops on patience as usual, so `min_steps` never runs a model dozens of
    /// epochs past its best.
    static func earlyStop(_ progress: TrainingProgress, metric: String, patience: Int, minSteps: Int,
                          firstValidatedEpoch: Int) -> String? {
        guard patience > 0, progress.epochsWithoutImprovement >= patience, let best = progress.bestEpoch else { return nil }
        let learnt = best > firstValidatedEpoch
        guard learnt || progress.globalStep >= minSteps else { return nil }
        let line = "early stopping at epoch \(progress.epoch), step \(progress.globalStep): \(metric) has not improved for "
            + "\(progress.epochsWithoutImprovement) epochs since epoch \(best)"
        if !learnt {
            return line + ", its first validation; min_steps \(minSteps) kept the run going until now"
        }
        return progress.globalStep < minSteps
            ? line + " (before min_steps \(minSteps): that minimum holds only a run whose metric has not improved since its first validation)"
            : line
    }

    private func describeEpoch(_ metrics: [String: Double]) -> String {
        let keys = ["train_loss", "val_loss", "val_auc", "val_f1", "val_brier", "val_clv_rmse", "val_spend_spearman",
                    "val_stage_macro_f1", "val_accuracy", "val_macro_f1"]
        var parts = keys.compactMap { key in metrics[key].map { String(format: "%@ %.4f", key, $0) } }
        if let steps = metrics["train_loss_steps"], Int(steps) < stepsPerEpoch, !parts.isEmpty {
            parts[0] += " (the \(Int(steps)) of \(stepsPerEpoch) steps run since the resume)"
        }
        return "epoch \(Int(metrics["epoch"] ?? 0)): " + parts.joined(separator: "  ")
            + String(format: "  %.0f samples/s, all-reduce %.1f%% of the time",
                     metrics["samples_per_second"] ?? 0, 100 * (metrics["allreduce_share"] ?? 0))
    }
}
