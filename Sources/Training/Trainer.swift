import Collectives
import Foundation
import Models
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
    public var epochsRun = 0
    public var steps = 0
    public var stoppedEarly = false
    public var lastValidation: [String: Double] = [:]
    public var test: [String: Double] = [:]
    public var samplesPerSecond = 0.0
    public var allreduceShare = 0.0
    public var parameterChecksum: UInt64 = 0
}

/// The data-parallel loop every rank runs: same steps, fused gradient all-reduce, same update.
public final class DataParallelTrainer {
    let configuration: TrainingConfiguration
    let world: any Communicator
    /// The same ranks without the per-call agreement check, for the gradient all-reduce.
    let gradientWorld: any Communicator
    let task: TrainingTask
    let trainShard: LocalShard
    let validationShard: LocalShard
    let testShard: LocalShard
    let classCount: Int
    let optimizer: AdamOptimizer
    let reporter: ProgressReporter
    let saveCheckpoint: ((CheckpointRequest) throws -> Void)?
    /// Stops after this many optimizer steps in total (tests of kill-and-resume); nil = run to the end.
    let stopAfterSteps: Int?
    /// Where rank 0 writes the test predictions; nil writes none.
    public var runDirectory: URL?

    public init(configuration: TrainingConfiguration, world: any Communicator, task: TrainingTask,
         trainShard: LocalShard, validationShard: LocalShard, testShard: LocalShard, classCount: Int,
         reporter: ProgressReporter, saveCheckpoint: ((CheckpointRequest) throws -> Void)?,
         stopAfterSteps: Int? = nil) {
        self.configuration = configuration
        self.world = world
        gradientWorld = (world as? MPICommunicator)?.withoutAgreementCheck() ?? world
        self.task = task
        self.trainShard = trainShard
        self.validationShard = validationShard
        self.testShard = testShard
        self.classCount = classCount
        self.reporter = reporter
        self.saveCheckpoint = saveCheckpoint
        self.stopAfterSteps = stopAfterSteps
        optimizer = AdamOptimizer(
            parameterCount: task.parameters.layout.totalCount,
            configuration: AdamConfiguration(weightDecay: configuration.weightDecay,
                                             decoupledWeightDecay: configuration.weightDecay > 0))
    }

    var stepsPerEpoch: Int { (trainShard.count + configuration.batchSize - 1) / configuration.batchSize }

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
                progress.stepInEpoch = 0
                progress.worldSize = world.size
            }
        }
        let schedule = LearningRateSchedule(
            baseRate: scaledLearningRate, warmupSteps: configuration.warmupSteps,
            totalSteps: configuration.epochs * stepsPerEpoch,
            decay: LearningRateSchedule.Decay(rawValue: configuration.decay) ?? .cosine)
        let gradients = parameters.gradients.buffer
        var summary = TrainingSummary()
        var totalSamples = 0
        var totalSeconds = 0.0
        var totalAllreduce = 0.0

        epochs: while progress.epoch < configuration.epochs {
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
                    loss = task.trainStep(trainShard, customers: customers, random: &random, gradientsReady: nil)
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
                let remainingSteps = (configuration.epochs - epoch) * stepsPerEpoch - (step + 1)
                reporter.step(epoch: epoch, epochs: configuration.epochs, step: step + 1, steps: stepsPerEpoch,
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
                "samples_per_second": Double(samples) / max(epochSeconds, 1e-9),
                "allreduce_share": allreduceSeconds / max(epochSeconds, 1e-9),
                "learning_rate": Double(schedule.rate(at: max(progress.globalStep - 1, 0))),
            ]
            var improved = false
            var stop = false
            if (epoch + 1) % configuration.validateEveryEpochs == 0 || progress.epoch == configuration.epochs {
                let validation = try evaluate(
                    task.predict(validationShard), shard: validationShard, model: configuration.model,
                    classCount: classCount, clvWeight: configuration.lstm.clvWeight, prefix: "val_", world: world)
                metrics.merge(validation) { $1 }
                summary.lastValidation = validation
                (improved, stop) = updateEarlyStopping(&progress, metrics: validation)
            }
            reporter.line(describeEpoch(metrics))
            reporter.record(metrics, event: "epoch")
            summary.epochsRun += 1
            if progress.epoch % configuration.checkpointEveryEpochs == 0 || progress.epoch == configuration.epochs || stop {
                try checkpoint(progress, metrics: metrics, isBest: improved)
            }
            if stop {
                reporter.line("early stopping: \(configuration.earlyStopping.metric) has not improved for \(progress.epochsWithoutImprovement) epochs")
                summary.stoppedEarly = true
                break epochs
            }
        }

        summary.steps = progress.globalStep
        summary.samplesPerSecond = Double(totalSamples) / max(totalSeconds, 1e-9)
        summary.allreduceShare = totalAllreduce / max(totalSeconds, 1e-9)
        let testPredictions = task.predict(testShard)
        summary.test = try evaluate(
            testPredictions, shard: testShard, model: configuration.model, classCount: classCount,
            clvWeight: configuration.lstm.clvWeight, prefix: "test_", world: world)
        try writePredictions(
            testPredictions, shard: testShard, model: configuration.model, classCount: classCount,
            to: runDirectory?.appendingPathComponent("test_predictions.csv"), world: world)
        reporter.record(summary.test, event: "test")
        summary.parameterChecksum = parameterChecksum(UnsafeBufferPointer(parameters.values.buffer))
        return summary
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
        let loss = task.trainStep(trainShard, customers: customers, random: &random) { range in
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

    /// Returns whether the metric improved and whether to stop. Every rank holds the same merged
    /// metrics, so every rank reaches the same decision without another collective.
    private func updateEarlyStopping(_ progress: inout TrainingProgress, metrics: [String: Double]) -> (Bool, Bool) {
        let rule = configuration.earlyStopping
        guard let value = metrics[rule.metric] else { return (false, false) }
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
        return (improved, rule.patience > 0 && progress.epochsWithoutImprovement >= rule.patience)
    }

    private func describeEpoch(_ metrics: [String: Double]) -> String {
        let keys = ["train_loss", "val_loss", "val_auc", "val_f1", "val_brier", "val_clv_rmse", "val_accuracy", "val_macro_f1"]
        let parts = keys.compactMap { key in metrics[key].map { String(format: "%@ %.4f", key, $0) } }
        return "epoch \(Int(metrics["epoch"] ?? 0)): " + parts.joined(separator: "  ")
            + String(format: "  %.0f samples/s, all-reduce %.1f%% of the time",
                     metrics["samples_per_second"] ?? 0, 100 * (metrics["allreduce_share"] ?? 0))
    }
}
