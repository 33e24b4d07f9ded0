import Collectives
import CustomerData
import Foundation
import GradientBoosting
import Tensors

/// The graph run's gradient boosting baseline, what a practitioner would fit instead of a graph
/// network: XGBoost's stage classifier on the customer's own node features and the mean node
/// features of the products they bought (their popularity, repeat rate, tenure...).
///
/// The products come from the graph shares through the GraphSAGE sampler (one hop, up to
/// `productsPerCustomer` of them, all for nearly every customer), so each rank describes its own
/// customers and reads no other rank's share whole. The fit follows `BoostingBaseline`.
enum StageBoostingBaseline {
    static let productsPerCustomer = 128
    static let batch = 4_096

    /// The customer's node features (without the node-type flag), the means of its sampled
    /// products' features, and how many were sampled.
    static var featureNames: [String] {
        let described = nodeFeatureNames.filter { $0 != "is_product" }
        return described.map { "customer_" + $0 } + described.map { "products_mean_" + $0 } + ["products_sampled"]
    }

    /// The predicted stage of every customer of `validation` and `test`, in shard order.
    static func predict(graph: LocalGraph, train: LocalShard, trainDistinct: Int, validation: LocalShard, test: LocalShard,
                        classCount: Int, seed: UInt64, world: any Communicator,
                        runDirectory: URL?) throws -> (validation: [Int], test: [Int]) {
        let sampler = NeighbourSampler(graph: graph, fanouts: [productsPerCustomer], world: world)
        var random = SeededRandom(seed: seed, purpose: .neighbourSampling, epoch: -2)
        let splits = try [(train, trainDistinct), (validation, validation.count), (test, test.count)].map { shard, count in
            try rows(of: shard, count: count, sampler: sampler, random: &random, world: world)
        }
        var settings = BoostingBaseline.settings(objective: "multi:softprob", evalMetric: "mlogloss",
                                                 extra: ["num_class": "\(classCount)"])
        settings.maxRounds = 500
        let fitted = try BoostingBaseline.fit(
            train: splits[0], validation: splits[1], heads: [.init(name: "stage", settings: settings, target: 0)],
            featureNames: featureNames, filePrefix: "xgboost_stage", world: world, runDirectory: runDirectory)
        func classes(_ rows: BoostingBaseline.Rows) throws -> [Int] {
            let probabilities = try fitted.predict(rows, head: 0)
            return (0..<rows.count).map { row in
                let slice = probabilities[row * classCount..<(row + 1) * classCount]
                return slice.indices.max { slice[$0] < slice[$1] }! - row * classCount
            }
        }
        return (try classes(splits[1]), try classes(splits[2]))
    }

    /// The first `count` customers of `shard`, described. Collective: every rank samples as many
    /// batches as the rank with the most customers, answering the others' requests meanwhile.
    private static func rows(of shard: LocalShard, count: Int, sampler: NeighbourSampler, random: inout SeededRandom,
                             world: any Communicator) throws -> BoostingBaseline.Rows {
        let width = sampler.graph.featureWidth
        let described = width - 1  // the node-type flag is last and constant per type
        var rows = BoostingBaseline.Rows(width: 2 * described + 1, targets: 1)
        let batches = try world.allreduce(value: Int64((count + batch - 1) / batch), op: .max)
        var input: [Float] = []
        var start = 0
        for _ in 0..<batches {
            let end = min(start + batch, count)
            let seeds = (start..<end).map { shard.datasetRows[$0] }
            let sample = try sampler.sample(seeds: seeds, random: &random)
            if input.count < sample.inputNodes.count * width {
                input = [Float](repeating: 0, count: sample.inputNodes.count * width)
            }
            try input.withUnsafeMutableBufferPointer { try sampler.gatherFeatures(of: sample.inputNodes, into: $0.baseAddress!) }
            let block = sample.blocks[0]
            for (offset, customer) in (start..<end).enumerated() {
                // Destinations are the first sources, in seed order.
                var row = Array(input[offset * width..<offset * width + described])
                var means = [Float](repeating: 0, count: described)
                let first = Int(block.offsets[offset]), last = Int(block.offsets[offset + 1])
                for edge in first..<last {
                    let source = Int(block.neighbours[edge])
                    for feature in 0..<described { means[feature] += input[source * width + feature] }
                }
                let sampled = last - first
                row += sampled > 0 ? means.map { $0 / Float(sampled) } : [Float](repeating: .nan, count: described)
                row.append(Float(sampled))
                rows.append(features: row, labels: [Float(shard.stages[customer])], datasetRow: Int64(shard.datasetRows[customer]))
            }
            start = end
        }
        return rows
    }
}
