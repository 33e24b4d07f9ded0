import Collectives
import CustomerData
import Foundation
import Models
import Tensors

/// What the training loop needs from a model: a training step on some of the local shard's
/// customers, and predictions for evaluation.
public protocol TrainingTask: AnyObject {
    var parameters: ParameterStore { get }
    /// Adds the gradients of the mean loss over `customers` (indices into `shard`) and returns it.
    /// Models that can tell which part of the gradient buffer is final before backward ends
    /// report it through `gradientsReady`; others never call it.
    func trainStep(
        _ shard: LocalShard, customers: ArraySlice<Int32>, random: inout SeededRandom,
        gradientsReady: ((Range<Int>) -> Void)?
    ) throws -> Float
    /// Scores every customer of `shard` without dropout. Collective for models whose data is
    /// spread over the ranks: every rank calls it, with its own shard.
    func predict(_ shard: LocalShard) throws -> Predictions
}

/// Model outputs for a shard, in shard order.
public struct Predictions {
    /// LSTM: churn probability and expected horizon spend per customer.
    public var churnProbability: [Float] = []
    public var expectedSpend: [Float] = []
    /// LSTM with a ZILN head: its probability of any purchase in the horizon (1 − it is the
    /// ZILN's own churn estimate, evaluated beside the churn head's).
    public var purchaseProbability: [Float] = []
    /// LSTM: each customer's CLV loss term (squared log error or ZILN NLL), for the split's loss.
    public var clvLoss: [Float] = []
    /// GNN, or an LSTM with a stage head: class probabilities, row-major [count, classes].
    public var stageProbabilities: [Float] = []
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

    public func predict(_ shard: LocalShard) -> Predictions {
        var result = Predictions()
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

    public func predict(_ shard: LocalShard) throws -> Predictions {
        var result = Predictions()
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
                result.stageProbabilities.append(contentsOf: model.probabilities())
            }
            start += count
        }
        return result
    }
}
