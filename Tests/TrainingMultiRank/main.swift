import Collectives
import CollectivesMPI
import CustomerData
import RankTesting
import Foundation
import Models
import Tensors
import Training

// Multi-rank checks of the training loop, run by scripts/test.sh under mpirun:
//   clm-training-tests                        one distributed step equals one big-batch step; shards
//                                             and a whole LSTM job with earlier cut-offs
//   clm-training-tests --scenario NAME        agreement, divergence (see below)

let world: MPICommunicator
do {
    world = try MPICommunicator(watchdogTimeout: .seconds(60))
} catch {
    print("FAIL: could not join the MPI world: \(error)")
    exit(2)
}
let checks = RankChecks(rank: world.rank, size: world.size)
let arguments = CommandLine.arguments
let scenario: String? = arguments.firstIndex(of: "--scenario").map { flag in
    guard flag + 1 < arguments.count else {
        print("FAIL rank \(world.rank): --scenario needs a scenario name")
        exit(2)
    }
    return arguments[flag + 1]
}

/// Deterministic synthetic customers: the same global index gives the same customer on any rank.
func syntheticShard(globalRows: Range<Int>, steps: Int, features: Int) -> LocalShard {
    let shard = LocalShard(steps: steps, featureCount: features, capacity: globalRows.count)
    for global in globalRows {
        var random = SeededRandom(seed: UInt64(global), purpose: .synthesis)
        let sequence = shard.nextSequence
        for index in 0..<steps * features { sequence[index] = random.nextFloat(in: -1, 1) }
        let length = Int32(1 + random.nextIndex(below: steps))
        let churn = Float(random.nextIndex(below: 2))
        let spend = random.nextFloat(in: 0, 50)
        shard.append(length: length, churn: churn, spend: spend, stage: Int32(random.nextIndex(below: 4)), datasetRow: Int32(global))
    }
    return shard
}

func configuration(batch: Int) -> TrainingConfiguration {
    var configuration = TrainingConfiguration()
    configuration.data = "synthetic"
    configuration.batchSize = batch
    configuration.learningRate = 0.01
    configuration.learningRateScaling = .none
    configuration.lstm = .init(hidden: 6, layers: 2, dropout: 0, positiveWeight: 1.3, clvWeight: 0.5)
    configuration.epochs = 1
    configuration.checksumEverySteps = 1
    return configuration
}

func oneStep(_ configuration: TrainingConfiguration, shard: LocalShard, world: any Communicator) throws -> [Float] {
    let model = LSTMModel(
        configuration: LSTMConfiguration(inputSize: shard.featureCount, hiddenSize: configuration.lstm.hidden,
                                         layers: configuration.lstm.layers, dropout: 0,
                                         positiveWeight: configuration.lstm.positiveWeight ?? 1,
                                         clvWeight: configuration.lstm.clvWeight, clvLoss: .logMSE),
        seed: configuration.seed)
    let task = LSTMTask(model: model, batchCapacity: configuration.batchSize, steps: shard.steps)
    let empty = LocalShard(steps: shard.steps, featureCount: shard.featureCount, capacity: 0)
    let trainer = DataParallelTrainer(
        configuration: configuration, world: world, task: task, trainShard: shard, validationShard: empty,
        testShard: empty, reporter: try ProgressReporter(enabled: false, metricsLog: nil),
        saveCheckpoint: nil, stopAfterSteps: 1)
    _ = try trainer.run(resumingFrom: nil)
    return model.parameters.values.array
}

switch scenario {
case nil:
    let (steps, features, perRank) = (7, 3, 5)
    checks.check("one step on \(world.size) ranks equals one step on the concatenated batch") {
        let mine = syntheticShard(globalRows: world.rank * perRank..<(world.rank + 1) * perRank, steps: steps, features: features)
        let distributed = try oneStep(configuration(batch: perRank), shard: mine, world: world)
        let everything = syntheticShard(globalRows: 0..<perRank * world.size, steps: steps, features: features)
        let single = try oneStep(configuration(batch: perRank * world.size), shard: everything,
                                 world: SingleProcessCommunicator())
        var worst: Float = 0
        var moved = false
        let initial = LSTMModel(configuration: LSTMConfiguration(inputSize: features, hiddenSize: 6, layers: 2, clvLoss: .logMSE), seed: 42)
            .parameters.values.array
        for index in distributed.indices {
            worst = max(worst, abs(distributed[index] - single[index]) / max(abs(single[index]), 1e-3))
            if distributed[index] != initial[index] { moved = true }
        }
        checks.expect(moved, "the step changed the parameters")
        checks.expect(worst < 1e-5, "worst relative difference \(worst)")
    }
    checks.check("all-reducing finished layers during backward gives the same step as one fused all-reduce") {
        let mine = syntheticShard(globalRows: world.rank * perRank..<(world.rank + 1) * perRank, steps: steps, features: features)
        let fused = try oneStep(configuration(batch: perRank), shard: mine, world: world)
        var overlapped = configuration(batch: perRank)
        overlapped.overlapAllreduce = true
        let bucketed = try oneStep(overlapped, shard: mine, world: world)
        var worst: Float = 0
        for index in fused.indices {
            worst = max(worst, abs(fused[index] - bucketed[index]) / max(abs(fused[index]), 1e-3))
        }
        checks.expect(worst < 1e-6, "worst relative difference \(worst)")
    }
    checks.check("every rank finds its own customers: equal training steps, each customer in one rank's distinct rows") {
        var random = SeededRandom(seed: 21, purpose: .synthesis)
        let splits = (0..<(37 * world.size + 5)).map { _ in UInt8(random.nextIndex(below: 3)) }
        let plan = splits.withUnsafeBufferPointer { ShardPlan.own(splits: $0, ranks: world.size, rank: world.rank) }
        let counts = try world.allgather([Int64(plan.train.count)])
        checks.expect(Set(counts).count == 1, "training shard sizes \(counts)")
        for (part, rows) in [plan.train.prefix(plan.trainDistinct).map { $0 }, plan.validation, plan.test].enumerated() {
            checks.expect(rows.allSatisfy { splits[Int($0)] == UInt8(part) }, "rows of another split in part \(part)")
            let seen = try world.allreduce(value: Int64(rows.count), op: .sum)
            checks.expectEqual(Int(seen), splits.filter { $0 == UInt8(part) }.count, "customers of split \(part) over the ranks")
            let lowest = try world.allgather([Int64(rows.first ?? -1)])
            checks.expect(zip(lowest, lowest.dropFirst()).allSatisfy { $0 < $1 || $1 < 0 }, "blocks out of dataset order: \(lowest)")
        }
    }
    // Every rank pads its block of each earlier cut-off's examples as it pads the main training
    // block, so the ranks take the same steps; validation and test stay the main customers.
    checks.check("an LSTM job on a dataset with earlier cut-offs: equal steps on every rank over all examples, the main test customers") {
        let directory = try world.broadcast(
            string: world.rank == 0 ? NSTemporaryDirectory() + "clm-training-snapshots-\(UUID().uuidString)" : "", root: 0)
        defer {
            try? world.barrier()
            if world.rank == 0 { try? FileManager.default.removeItem(atPath: directory) }
        }
        let data = directory + "/data", configurationPath = directory + "/lstm.yaml"
        try world.agreeing("importing the dataset") {
            guard world.rank == 0 else { return }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // An odd number of customers, so that blocks differ by one and padding is needed.
            _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 301, products: 20, seed: 23), to: directory + "/events.csv")
            var options = ImportOptions()
            options.snapshots = 3
            options.snapshotEveryPeriods = 3
            _ = try Importer.run(input: directory + "/events.csv", output: data, options: options)
            try """
                model: lstm
                data: \(data)
                checkpoints: \(directory)/checkpoints
                run: snapshots
                epochs: 1
                min_steps: 0
                batch_size: 16
                lstm:
                  hidden: 8
                  layers: 1
                """.write(toFile: configurationPath, atomically: true, encoding: .utf8)
        }
        guard world.rank == 0 else {
            try TrainingJob.work(world: world)
            return
        }
        let summary = try TrainingJob.coordinate(JobRequest(configurationPath: configurationPath), world: world)
        let dataset = try CustomerDataset.open(at: URL(fileURLWithPath: data))
        let blocks = [dataset.indices(in: .train).count] + (try dataset.snapshotDatasets().map(\.customerCount))
        checks.expect(blocks.count == 3 && blocks.allSatisfy { $0 > 0 }, "training examples per cut-off \(blocks)")
        let perRank = blocks.map { ShardPlan.balancedCounts(total: $0, ranks: world.size)[0] }.reduce(0, +)
        checks.expectEqual(summary.steps, (perRank + 15) / 16, "steps of one epoch")
        checks.expectEqual(summary.test["test_customers"].map { Int($0) }, dataset.indices(in: .test).count, "test customers")
    }

case "fingerprint-mismatch":
    // scripts/test.sh starts the last rank with CLM_VERSION_SUFFIX set: a different build.
    let fingerprint = JobFingerprint(configuration: Data("same".utf8), parameterLayout: 1, dataset: "d", program: programVersion)
    do {
        try checkAgreement(fingerprint, world: world)
        print("scenario fingerprint-mismatch: rank \(world.rank) saw no disagreement")
    } catch {
        print("scenario fingerprint-mismatch: rank \(world.rank): \(error)")
    }
    try? world.shutdown()
    exit(0)

case "divergence":
    var values: [Float] = [1, 2, 3]
    if world.rank == world.size - 1 { values[1] = 2.0000002 }
    do {
        try values.withUnsafeBufferPointer { try checkParametersAgree($0, step: 7, world: world) }
        print("scenario divergence: rank \(world.rank) saw no divergence")
    } catch {
        print("scenario divergence: rank \(world.rank): \(error)")
    }
    try? world.shutdown()
    exit(0)

default:
    print("unknown scenario \(scenario!)")
    exit(64)
}

print(checks.summaryLine.replacingOccurrences(of: "multirank", with: "training"))
do {
    try world.shutdown()
} catch {
    print("FAIL rank \(world.rank): shutdown threw \(error)")
    exit(1)
}
exit(checks.failed == 0 ? 0 : 1)
