import CustomerData
import Tensors

/// The customers one rank holds, found by the rank itself from the split column alone, so no
/// rank reads or sends another rank's customers.
///
/// Each split is cut into contiguous blocks in dataset order: rank r takes the r-th block, the
/// first `N mod P` ranks one customer more (`exactCounts`). Blocks keep every rank's reads
/// within its own stretch of the files. Validation and test blocks are exact, so no customer
/// counts twice in a metric. Training blocks are padded, as PyTorch's DistributedSampler pads:
/// a rank with one customer fewer repeats its first, so every rank runs the same number of
/// steps per epoch; at most P − 1 customers are seen twice per epoch. Which customers a rank
/// visits in which step is shuffled per epoch (`epochOrder`), from the seed alone.
public struct ShardPlan: Sendable, Equatable {
    /// Dataset rows of this rank's training shard: its distinct customers, then the repeats.
    public var train: [Int32]
    public var trainDistinct: Int
    public var validation: [Int32]
    public var test: [Int32]
    /// Customers in each split over every rank: train, validation, test.
    public var totals: [Int]

    /// The stretches of dataset rows this rank reads: one per split, from its first to its last
    /// customer there (the other splits' customers in between belong to the same stretch of
    /// another rank's blocks, so the ranks' stretches barely overlap).
    public var rowSpans: [Range<Int>] {
        [train, validation, test].compactMap { rows in
            guard let first = rows.min(), let last = rows.max() else { return nil }
            return Int(first) ..< Int(last) + 1
        }
    }

    /// This rank's plan: two passes over the split column, holding only this rank's rows.
    public static func own(splits: UnsafeBufferPointer<UInt8>, ranks: Int, rank: Int) -> ShardPlan {
        precondition(ranks >= 1 && (0..<ranks).contains(rank))
        var totals = [0, 0, 0]
        for part in splits where part < 3 { totals[Int(part)] += 1 }
        var blocks: [Range<Int>] = []
        for total in totals {
            let counts = exactCounts(total: total, ranks: ranks)
            let start = counts[..<rank].reduce(0, +)
            blocks.append(start..<start + counts[rank])
        }
        var own: [[Int32]] = blocks.map { _ in [] }
        for index in own.indices { own[index].reserveCapacity(blocks[index].count) }
        var positions = [0, 0, 0]
        for (row, part) in splits.enumerated() where part < 3 {
            let part = Int(part)
            if blocks[part].contains(positions[part]) { own[part].append(Int32(row)) }
            positions[part] += 1
        }
        var train = own[0]
        let perRank = balancedCounts(total: totals[0], ranks: ranks)[rank]
        if train.count < perRank {
            // Fewer training customers than ranks leaves a rank none of its own: it repeats
            // the first training customers of the dataset instead.
            let repeated = train.isEmpty
                ? Array(splits.indices.lazy.filter { splits[$0] == 0 }.prefix(perRank).map { Int32($0) })
                : train
            for index in 0..<(perRank - train.count) { train.append(repeated[index % repeated.count]) }
        }
        return ShardPlan(train: train, trainDistinct: own[0].count, validation: own[1], test: own[2], totals: totals)
    }

    /// Training shard sizes: every rank `ceil(N / P)`.
    public static func balancedCounts(total: Int, ranks: Int) -> [Int] {
        [Int](repeating: (total + ranks - 1) / ranks, count: ranks)
    }

    /// Sizes of the exact blocks: the first `N mod P` ranks get one more.
    public static func exactCounts(total: Int, ranks: Int) -> [Int] {
        (0..<ranks).map { total / ranks + ($0 < total % ranks ? 1 : 0) }
    }
}

/// The order in which a rank visits its shard in `epoch`: a permutation that depends only on
/// (seed, epoch, rank), so a resumed run recomputes it instead of storing it.
public func epochOrder(count: Int, seed: UInt64, epoch: Int, rank: Int) -> [Int32] {
    var order = (0..<count).map { Int32($0) }
    var random = SeededRandom(seed: seed, purpose: .shuffle, epoch: epoch, rank: rank)
    random.shuffle(&order)
    return order
}
