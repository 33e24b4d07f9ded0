import Collectives
import CollectivesMPI
import RankTesting
import Foundation
import Models
import Tensors
import Training

// Multi-rank checks of the training loop, run by scripts/test.sh under mpirun:
//   clm-training-tests                        one distributed step equals one big-batch step
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
    let width = LocalShard.rowWidth(steps: steps, featureCount: features)
    var packed = [Float](repeating: 0, count: globalRows.count * width)
    for (slot, global) in globalRows.enumerated() {
        var random = SeededRandom(seed: UInt64(global), purpose: .synthesis)
        let base = slot * width
        for index in 0..<steps * features { packed[base + index] = random.nextFloat(in: -1, 1) }
        packed[base + steps * features] = Float(1 + random.nextIndex(below: steps))
        packed[base + steps * features + 1] = Float(random.nextIndex(below: 2))
        packed[base + steps * features + 2] = random.nextFloat(in: 0, 50)
        packed[base + steps * features + 3] = Float(random.nextIndex(below: 4))
        packed[base + steps * features + 4] = Float(global)
    }
    let shard = LocalShard(steps: steps, featureCount: features, capacity: globalRows.count)
    packed.withUnsafeBufferPointer { shard.append(packed: $0.baseAddress!, rows: globalRows.count) }
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
                                         clvWeight: configuration.lstm.clvWeight),
        seed: configuration.seed)
    let task = LSTMTask(model: model, batchCapacity: configuration.batchSize, steps: shard.steps)
    let empty = LocalShard(steps: shard.steps, featureCount: shard.featureCount, capacity: 0)
    let trainer = DataParallelTrainer(
        configuration: configuration, world: world, task: task, trainShard: shard, validationShard: empty,
        testShard: empty, classCount: 4, reporter: try ProgressReporter(enabled: false, metricsLog: nil),
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
        let initial = LSTMModel(configuration: LSTMConfiguration(inputSize: features, hiddenSize: 6, layers: 2), seed: 42)
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
    checks.check("balanced shards give every rank the same number of steps") {
        let counts = ShardPlan.balancedCounts(total: 10 * world.size + 1, ranks: world.size)
        checks.expect(Set(counts).count == 1, "counts \(counts)")
        let plan = ShardPlan.balanced((0..<Int32(10 * world.size + 1)).map { $0 }, ranks: world.size, seed: 3)
        checks.expectEqual(plan.counts, counts, "plan counts")
        let covered = Set(plan.rows.flatMap { $0 })
        checks.expectEqual(covered.count, 10 * world.size + 1, "every customer is in some shard")
    }
    checks.check("chunked scatterv delivers every rank its rows") {
        let (steps, features) = (4, 2)
        let total = 23 * world.size + 3
        let table = syntheticShard(globalRows: 0..<total, steps: steps, features: features)
        let splits = [UInt8](repeating: 0, count: total)
        let plan = ShardPlan.balanced((0..<Int32(total)).map { $0 }, ranks: world.size, seed: 9)
        let pointer = UnsafePointer(table.features.pointer)
        let shard = try table.lengths.withUnsafeBufferPointer { ls in
                try table.churn.withUnsafeBufferPointer { cs in
                    try table.spend.withUnsafeBufferPointer { ss in
                        try table.stages.withUnsafeBufferPointer { gs in
                            try splits.withUnsafeBufferPointer { ps in
                                let view = CustomerTable(customerCount: total, steps: steps, featureCount: features,
                                                         features: pointer, lengths: ls.baseAddress!, churn: cs.baseAddress!,
                                                         spend: ss.baseAddress!, stages: gs.baseAddress!, splits: ps.baseAddress!)
                                return try distributeShards(counts: plan.counts, plan: world.rank == 0 ? plan : nil,
                                                            table: world.rank == 0 ? view : nil, steps: steps,
                                                            featureCount: features, world: world, chunkRows: 4)
                            }
                        }
                    }
                }
        }
        checks.expectEqual(shard.count, plan.counts[world.rank], "rows received")
        checks.expectElementsEqual(shard.datasetRows, plan.rows[world.rank], "dataset rows in plan order")
        let sequence = steps * features
        var wrong = 0
        for (slot, row) in shard.datasetRows.enumerated() {
            for index in 0..<sequence where shard.features[slot * sequence + index] != table.features[Int(row) * sequence + index] {
                wrong += 1
            }
            if shard.lengths[slot] != table.lengths[Int(row)] || shard.spend[slot] != table.spend[Int(row)] { wrong += 1 }
        }
        checks.expectEqual(wrong, 0, "values that differ from the table")
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
