import Collectives
import Tensors

/// The customers one rank trains or evaluates on, received from the coordinator.
///
/// A row travels as floats: the sequence features [T·F], then length, churn label, spend,
/// stage and the dataset row index (for the graph model). Lengths, stages and indices are
/// integers below 2²⁴, so they are exact in a float.
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

    public var rowWidth: Int { Self.rowWidth(steps: steps, featureCount: featureCount) }

    public static func rowWidth(steps: Int, featureCount: Int) -> Int { steps * featureCount + 5 }

    public init(steps: Int, featureCount: Int, capacity: Int) {
        self.steps = steps
        self.featureCount = featureCount
        features = Tensor(shape: [max(capacity, 1), steps, featureCount])
        lengths.reserveCapacity(capacity)
    }

    /// Appends packed rows received from the coordinator.
    public func append(packed: UnsafePointer<Float>, rows: Int) {
        let width = rowWidth
        let sequence = steps * featureCount
        for row in 0..<rows {
            let source = packed + row * width
            (features.pointer + count * sequence).update(from: source, count: sequence)
            lengths.append(Int32(source[sequence]))
            churn.append(source[sequence + 1])
            spend.append(source[sequence + 2])
            stages.append(Int32(source[sequence + 3]))
            datasetRows.append(Int32(source[sequence + 4]))
            count += 1
        }
    }
}

/// Read access to a dataset's per-customer arrays (rank 0 only).
public struct CustomerTable {
    public let customerCount: Int
    public let steps: Int
    public let featureCount: Int
    public let features: UnsafePointer<Float>
    public let lengths: UnsafePointer<Int32>
    public let churn: UnsafePointer<Float>
    public let spend: UnsafePointer<Float>
    public let stages: UnsafePointer<Int32>
    public let splits: UnsafePointer<UInt8>
    /// Copies a customer's [T, F] rows into a buffer when set, instead of reading `features`:
    /// the coordinator reads them from the file, so that sending every customer's row once does
    /// not leave the whole features file in its resident set.
    public let readFeatures: ((_ row: Int, _ into: UnsafeMutablePointer<Float>) throws -> Void)?

    public init(customerCount: Int, steps: Int, featureCount: Int, features: UnsafePointer<Float>,
                lengths: UnsafePointer<Int32>, churn: UnsafePointer<Float>, spend: UnsafePointer<Float>,
                stages: UnsafePointer<Int32>, splits: UnsafePointer<UInt8>,
                readFeatures: ((_ row: Int, _ into: UnsafeMutablePointer<Float>) throws -> Void)? = nil) {
        self.readFeatures = readFeatures
        self.customerCount = customerCount
        self.steps = steps
        self.featureCount = featureCount
        self.features = features
        self.lengths = lengths
        self.churn = churn
        self.spend = spend
        self.stages = stages
        self.splits = splits
    }

    /// Dataset rows whose split is `split` (0 train, 1 validation, 2 test), in dataset order.
    public func rows(inSplit split: UInt8) -> [Int32] {
        (0..<customerCount).filter { splits[$0] == split }.map { Int32($0) }
    }

    func pack(row: Int32, into destination: UnsafeMutablePointer<Float>) throws {
        let sequence = steps * featureCount
        if let readFeatures, sequence > 0 {
            try readFeatures(Int(row), destination)
        } else {
            destination.update(from: features + Int(row) * sequence, count: sequence)
        }
        destination[sequence] = Float(lengths[Int(row)])
        destination[sequence + 1] = churn[Int(row)]
        destination[sequence + 2] = spend[Int(row)]
        destination[sequence + 3] = Float(stages[Int(row)])
        destination[sequence + 4] = Float(row)
    }
}

/// Sends each rank its shard with `MPI_Scatterv`, at most `chunkRows` customers per rank per
/// call, so rank 0 holds one chunk of packed rows at a time whatever the dataset's size.
///
/// Every rank calls this with the same `counts`; `plan` and `table` are read on the root only.
public func distributeShards(
    counts: [Int], plan: ShardPlan?, table: CustomerTable?, steps: Int, featureCount: Int,
    world: any Communicator, chunkRows: Int = 2048
) throws -> LocalShard {
    let width = LocalShard.rowWidth(steps: steps, featureCount: featureCount)
    let shard = LocalShard(steps: steps, featureCount: featureCount, capacity: counts[world.rank])
    let largest = counts.max() ?? 0
    let totalRounds = (largest + chunkRows - 1) / chunkRows
    let receive = UnsafeMutableBufferPointer<Float>.allocate(capacity: chunkRows * width)
    defer { receive.deallocate() }
    var send: UnsafeMutableBufferPointer<Float>? = nil
    if world.rank == 0 {
        send = UnsafeMutableBufferPointer<Float>.allocate(capacity: chunkRows * width * world.size)
    }
    defer { send?.deallocate() }
    for round in 0..<totalRounds {
        let start = round * chunkRows
        let chunkCounts = counts.map { max(0, min(chunkRows, $0 - start)) }
        if let send, let table, let plan {
            var offset = 0
            for rank in 0..<world.size {
                for index in 0..<chunkCounts[rank] {
                    try table.pack(row: plan.rows[rank][start + index], into: send.baseAddress! + offset)
                    offset += width
                }
            }
        }
        let elementCounts = chunkCounts.map { $0 * width }
        let destination = UnsafeMutableBufferPointer(rebasing: receive[0..<elementCounts[world.rank]])
        try world.scatterv(send.map { UnsafeBufferPointer($0) }, counts: elementCounts, into: destination, root: 0)
        shard.append(packed: receive.baseAddress!, rows: chunkCounts[world.rank])
    }
    return shard
}
