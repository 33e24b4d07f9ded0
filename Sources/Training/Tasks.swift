import Collectives
import CustomerData
import Foundation
import Models
import Tensors

/// What the training loop needs from a model: a training step on some of the local shard's
/// customers, the evaluation of a split, and what the run does with the evaluated test split.
/// Everything that depends on the model's outputs lives behind it, so the loop never asks which
/// model it trains.
public protocol TrainingTask: AnyObject {
    /// This rank's rows of an evaluated split: what the predictions file and the comparisons
    /// with other models read.
    associatedtype Rows
    var parameters: ParameterStore { get }
    /// Adds the gradients of the mean loss over `customers` (indices into `shard`) and returns it.
    /// Models that can tell which part of the gradient buffer is final before backward ends
    /// report it through `gradientsReady`; others never call it.
    func trainStep(
        _ shard: LocalShard, customers: ArraySlice<Int32>, random: inout SeededRandom,
        gradientsReady: ((Range<Int>) -> Void)?
    ) throws -> Float
    /// Scores every customer of `shard` without dropout and merges the split's metrics over every
    /// rank. Collective: every rank calls it, with its own shard. `majorityStage` is the training
    /// split's most frequent stage, what the stage metrics are compared with; `spendTail` adds the
    /// metrics that cost two more sorts across ranks.
    func evaluate(_ shard: LocalShard, majorityStage: Int, prefix: String, spendTail: Bool,
                  world: any Communicator) throws -> EvaluatedSplit<Rows>
    /// After the test split is scored with the chosen model: writes this rank's rows of the
    /// predictions file (nil writes none) and adds what the model is compared with to `summary`.
    /// Collective.
    func finish(validation: EvaluatedSplit<Rows>, test: EvaluatedSplit<Rows>, summary: inout TrainingSummary,
                predictionsFile: URL?, world: any Communicator) throws
}

/// A split's metrics, merged over every rank, and this rank's rows of its customers.
public struct EvaluatedSplit<Rows> {
    public var metrics: [String: Double]
    var rows: Rows
}

/// The LSTM's outputs for a shard, in shard order.
struct LSTMPredictions {
    /// Churn probability and expected horizon spend per customer.
    var churnProbability: [Float] = []
    var expectedSpend: [Float] = []
    /// With a ZILN head: its probability of any purchase in the horizon (1 − it is the ZILN's
    /// own churn estimate, evaluated beside the churn head's).
    var purchaseProbability: [Float] = []
    /// Each customer's CLV loss term (squared log error or ZILN NLL), for the split's loss.
    var clvLoss: [Float] = []
    /// With a stage head: class probabilities, row-major [count, stages].
    var stageProbabilities: [Float] = []
}

public final class LSTMTask: TrainingTask {
    let model: LSTMModel
    let batchCapacity: Int
    private let features: Tensor
    private var lengths: [Int32]
    private var churn: [Float]
    private var spend: [Float]
    private var stages: [Int32]
    private var stageRow: [Float]
    /// The baselines fitted at the end of the run on the same customers; nil fits none.
    var baselines: LSTMBaselines?

    public var parameters: ParameterStore { model.parameters }

    public init(model: LSTMModel, batchCapacity: Int, steps: Int) {
        self.model = model
        self.batchCapacity = batchCapacity
        features = Tensor(shape: [batchCapacity, steps, model.configuration.inputSize])
        lengths = [Int32](repeating: 1, count: batchCapacity)
        churn = [Float](repeating: 0, count: batchCapacity)
        spend = [Float](repeating: 0, count: batchCapacity)
        stages = [Int32](repeating: 0, count: batchCapacity)
        stageRow = [Float](repeating: 0, count: max(model.heads.stageCount, 1))
    }

    /// Copies the chosen customers into the batch buffers (allocated once, at the largest size).
    private func gather(_ shard: LocalShard, _ customers: ArraySlice<Int32>) {
        let sequence = shard.steps * shard.featureCount
        for (slot, customer) in customers.enumerated() {
            let row = Int(customer)
            (features.pointer + slot * sequence).update(from: shard.features.pointer + row * sequence, count: sequence)
            lengths[slot] = shard.lengths[row]
            churn[slot] = shard.churn[row]
            spend[slot] = shard.spend[row]
            stages[slot] = shard.stages[row]
        }
    }

    private func withBatch<R>(_ count: Int, steps: Int, _ body: (SequenceBatch) -> R) -> R {
        lengths.withUnsafeBufferPointer { ls in
            churn.withUnsafeBufferPointer { ys in
                spend.withUnsafeBufferPointer { ss in
                    stages.withUnsafeBufferPointer { zs in
                        body(SequenceBatch(
                            features: features.pointer, lengths: ls.baseAddress!, batchSize: count, steps: steps,
                            churnLabels: ys.baseAddress!, spend: ss.baseAddress!, stages: zs.baseAddress!))
                    }
                }
            }
        }
    }

    public func trainStep(
        _ shard: LocalShard, customers: ArraySlice<Int32>, random: inout SeededRandom,
        gradientsReady: ((Range<Int>) -> Void)?
    ) -> Float {
        gather(shard, customers)
        return withBatch(customers.count, steps: shard.steps) { batch in
            model.trainingStep(batch, random: &random, gradientsReady: gradientsReady).total
        }
    }

    /// The outputs of every customer of `shard`, without dropout.
    func predict(_ shard: LocalShard) -> LSTMPredictions {
        var result = LSTMPredictions()
        let heads = model.heads
        result.churnProbability.reserveCapacity(shard.count)
        result.expectedSpend.reserveCapacity(shard.count)
        var unused = SeededRandom(seed: 0, purpose: .dropout)
        var start = 0
        while start < shard.count {
            let count = min(batchCapacity, shard.count - start)
            gather(shard, Array(Int32(start)..<Int32(start + count))[...])
            withBatch(count, steps: shard.steps) { batch in
                model.forward(batch, training: false, random: &unused)
            }
            let outputs = model.headOutputs.baseAddress!
            for b in 0..<count {
                let row = outputs + b * heads.width
                result.churnProbability.append(heads.churnProbability(row))
                result.expectedSpend.append(heads.expectedSpend(row))
                let spend = shard.spend[start + b]
                let clv = row + heads.clvColumn
                switch heads.clvLoss {
                case .logMSE:
                    let error = clv[0] - log1pf(spend)
                    result.clvLoss.append(error * error)
                case .ziln:
                    result.clvLoss.append(LSTMModel.zilnLoss(spend: spend, purchaseLogit: clv[0], mu: clv[1], sigmaRaw: clv[2]).value)
                }
                if let purchase = heads.purchaseProbability(row) { result.purchaseProbability.append(purchase) }
                if heads.stageCount > 0 {
                    stageRow.withUnsafeMutableBufferPointer { heads.stageProbabilities(row, into: $0.baseAddress!) }
                    result.stageProbabilities.append(contentsOf: stageRow)
                }
            }
            start += count
        }
        return result
    }

    public func evaluate(_ shard: LocalShard, majorityStage: Int, prefix: String, spendTail: Bool,
                         world: any Communicator) throws -> EvaluatedSplit<LSTMEvaluationRows> {
        let settings = model.configuration
        let rows = LSTMEvaluationRows(
            values: LSTMEvaluationRows.pack(predict(shard), shard: shard, stageCount: settings.stageCount),
            stageCount: settings.stageCount, hasPurchaseProbability: settings.clvLoss == .ziln)
        let metrics = try rows.metrics(
            prefix: prefix, clvWeight: Double(settings.clvWeight), stageWeight: Double(settings.stageWeight),
            majorityStage: majorityStage, spendTail: spendTail, world: world)
        return EvaluatedSplit(metrics: metrics, rows: rows)
    }

    public func finish(validation: EvaluatedSplit<LSTMEvaluationRows>, test: EvaluatedSplit<LSTMEvaluationRows>,
                       summary: inout TrainingSummary, predictionsFile: URL?, world: any Communicator) throws {
        if let predictionsFile { try writeLSTMPredictions(test.rows, to: predictionsFile, world: world) }
        guard let baselines else { return }
        let report = try baselines.run(validation: validation.rows, test: test.rows, world: world)
        summary.baselines = report
        summary.test.merge(report.test) { current, _ in current }
        summary.lastValidation.merge(report.validation) { current, _ in current }
        summary.warnings += report.warnings(modelValidation: summary.lastValidation, modelTest: summary.test)
    }
}

public final class GNNTask: TrainingTask {
    let model: GraphSAGEModel
    let sampler: NeighbourSampler
    let featureWidth: Int
    let batchCapacity: Int
    let seed: UInt64
    private let world: any Communicator
    private let input = Tensor(shape: [1])
    private var labels: [Int32]
    private var seeds: [Int32] = []
    /// The comparisons of the end of the run (the no-graph ablation, XGBoost, the majority
    /// class); nil makes none.
    var comparison: StageComparisonPlan?
    /// This rank's rows of the validation and test splits the run ended with, for a model
    /// that others are compared with.
    private(set) var finalRows: (validation: StageEvaluationRows, test: StageEvaluationRows)?

    public var parameters: ParameterStore { model.parameters }

    /// `graph` is this rank's share; sampling and feature rows reach the other ranks' shares
    /// through `world`, so every rank must run the same steps and predictions.
    public init(model: GraphSAGEModel, graph: LocalGraph, fanouts: [Int], withoutEdges: Bool = false,
                world: any Communicator, batchCapacity: Int, seed: UInt64) {
        self.model = model
        sampler = NeighbourSampler(graph: graph, fanouts: fanouts, world: world, withoutEdges: withoutEdges)
        self.world = world
        featureWidth = graph.featureWidth
        self.batchCapacity = batchCapacity
        self.seed = seed
        labels = [Int32](repeating: 0, count: batchCapacity)
    }

    private func prepare(_ shard: LocalShard, _ customers: ArraySlice<Int32>, random: inout SeededRandom) throws -> [SampledBlock] {
        // Refilled in place, as the sampler's buffers are: the step allocates nothing.
        seeds.removeAll(keepingCapacity: true)
        var slot = 0
        for customer in customers {
            seeds.append(shard.datasetRows[Int(customer)])
            labels[slot] = shard.stages[Int(customer)]
            slot += 1
        }
        let sample = try sampler.sample(seeds: seeds, random: &random)
        input.reshape(max(sample.inputNodes.count, 1), featureWidth)
        try sampler.gatherFeatures(of: sample.inputNodes, into: input.pointer)
        return sample.blocks
    }

    public func trainStep(
        _ shard: LocalShard, customers: ArraySlice<Int32>, random: inout SeededRandom,
        gradientsReady: ((Range<Int>) -> Void)?
    ) throws -> Float {
        // One stream for sampling and one for dropout, both derived from the step's stream.
        var sampling = random.split(1)
        var dropout = random.split(2)
        let blocks = try prepare(shard, customers, random: &sampling)
        return labels.withUnsafeBufferPointer {
            model.trainingStep(features: input.pointer, blocks: blocks, labels: $0.baseAddress!, random: &dropout)
        }
    }

    /// Class probabilities of every customer of `shard`, row-major [count, classes]. Collective:
    /// sampling reaches the other ranks' shares of the graph.
    func predict(_ shard: LocalShard) throws -> [Float] {
        var result: [Float] = []
        // Evaluation samples neighbours too; a fixed stream makes it repeatable.
        var sampling = SeededRandom(seed: seed, purpose: .neighbourSampling, epoch: -1)
        var unused = SeededRandom(seed: 0, purpose: .dropout)
        // Every rank samples as many batches as the rank with the most customers: a rank that
        // has run out still answers the others' requests, with no seeds of its own.
        let batches = try world.allreduce(value: Int64((shard.count + batchCapacity - 1) / batchCapacity), op: .max)
        var start = 0
        for _ in 0..<batches {
            let count = min(batchCapacity, shard.count - start)
            let blocks = try prepare(shard, Array(Int32(start)..<Int32(start + count))[...], random: &sampling)
            if count > 0 {
                model.forward(features: input.pointer, blocks: blocks, training: false, random: &unused)
                result.append(contentsOf: model.probabilities())
            }
            start += count
        }
        return result
    }

    public func evaluate(_ shard: LocalShard, majorityStage: Int, prefix: String, spendTail: Bool,
                         world: any Communicator) throws -> EvaluatedSplit<StageEvaluationRows> {
        let classCount = model.configuration.classes
        let probabilities = try predict(shard)
        let metrics = try evaluateStages(probabilities, shard: shard, classCount: classCount, majorityStage: majorityStage,
                                         prefix: prefix, world: world)
        return EvaluatedSplit(
            metrics: metrics,
            rows: StageEvaluationRows(values: StageEvaluationRows.pack(probabilities, shard: shard, classCount: classCount),
                                      classCount: classCount))
    }

    public func finish(validation: EvaluatedSplit<StageEvaluationRows>, test: EvaluatedSplit<StageEvaluationRows>,
                       summary: inout TrainingSummary, predictionsFile: URL?, world: any Communicator) throws {
        if let predictionsFile { try writeStagePredictions(test.rows, to: predictionsFile, world: world) }
        finalRows = (validation.rows, test.rows)
        guard let comparison else { return }
        let compared = try comparison.run(validation: validation.rows, test: test.rows, world: world)
        summary.warnings += compared.failures
        for (key, value) in compared.metrics {
            if key.hasPrefix("val_") { summary.lastValidation[key] = value } else { summary.test[key] = value }
        }
        summary.warnings += StageComparison.warnings(test: summary.test)
    }
}
