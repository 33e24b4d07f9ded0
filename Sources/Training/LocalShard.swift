import CustomerData
import Tensors

/// The customers one rank trains or evaluates on: their sequences, labels and dataset rows.
public final class LocalShard: @unchecked Sendable {
    public let steps: Int
    public let featureCount: Int
    public private(set) var count = 0
    public let features: Tensor       // [count, steps, featureCount]
    public private(set) var lengths: [Int32] = []
    public private(set) var churn: [Float] = []
    public private(set) var spend: [Float] = []
    public private(set) var stages: [Int32] = []
    /// Dataset row of each customer (its node id in the customer–product graph).
    public private(set) var datasetRows: [Int32] = []

    public init(steps: Int, featureCount: Int, capacity: Int) {
        self.steps = steps
        self.featureCount = featureCount
        features = Tensor(shape: [max(capacity, 1), steps, featureCount])
        lengths.reserveCapacity(capacity)
    }

    /// Where the next customer's [T, F] sequence goes; fill it, then `append` the rest.
    public var nextSequence: UnsafeMutablePointer<Float> { features.pointer + count * steps * featureCount }

    /// Adds a customer whose sequence is already at `nextSequence`.
    public func append(length: Int32, churn: Float, spend: Float, stage: Int32, datasetRow: Int32) {
        precondition((count + 1) * steps * featureCount <= features.count, "the shard holds at most its capacity")
        lengths.append(length)
        self.churn.append(churn)
        self.spend.append(spend)
        stages.append(stage)
        datasetRows.append(datasetRow)
        count += 1
    }
}

extension LocalShard {
    /// The customers at dataset rows `rows`, read by this rank from the dataset's files: the
    /// sequences with `pread` (when `featureCount` is not 0), the labels from the mapped arrays,
    /// whose pages are released again so the rank keeps what it holds, not what it read.
    public static func read(_ rows: [Int32], from dataset: CustomerDataset, featureCount: Int) throws -> LocalShard {
        try read([(rows, dataset)], featureCount: featureCount)
    }

    /// The rows of several datasets of one window layout in one shard, in the order given: a
    /// training shard holds the main cut-off's customers first, then the examples of earlier
    /// cut-offs (`CustomerDataset.snapshotDatasets`). `datasetRows` are rows of the dataset each
    /// came from.
    public static func read(_ sources: [(rows: [Int32], dataset: CustomerDataset)], featureCount: Int) throws -> LocalShard {
        let steps = sources.first?.dataset.historyLength ?? 0
        precondition(sources.allSatisfy { $0.dataset.historyLength == steps }, "one shard holds sequences of one length")
        let shard = LocalShard(steps: steps, featureCount: featureCount, capacity: sources.reduce(0) { $0 + $1.rows.count })
        for (rows, dataset) in sources {
            for row in rows {
                let index = Int(row)
                if featureCount > 0 { try dataset.readFeatures(of: index, into: shard.nextSequence) }
                shard.append(length: dataset.lengths[index], churn: dataset.churn[index], spend: dataset.spend[index],
                             stage: dataset.stage[index], datasetRow: row)
            }
            dataset.releaseResidentPages()
        }
        return shard
    }
}
