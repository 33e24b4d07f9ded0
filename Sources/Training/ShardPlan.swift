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
        let blocks = ownBlocks(totals: totals, ranks: ranks, rank: rank)
        var own: [[Int32]] = blocks.map { block in
            var rows: [Int32] = []
            rows.reserveCapacity(block.count)
            return rows
        }
        var positions = [0, 0, 0]
        for (row, part) in splits.enumerated() where part < 3 {
            let part = Int(part)
            if blocks[part].contains(positions[part]) { own[part].append(Int32(row)) }
            positions[part] += 1
        }
        return padded(own, totals: totals, ranks: ranks, rank: rank) {
            Array(splits.indices.lazy.filter { splits[$0] == 0 }.prefix($0).map { Int32($0) })
        }
    }

    /// The same plan, reading only the parts of the split column that hold this rank's
    /// customers: the manifest's count of each split's customers per part says where every
    /// rank's block begins, so no rank reads a byte per customer of the whole dataset. A part
    /// whose bytes do not hold the counts the manifest gives is refused.
    public static func own(splits: UnsafeBufferPointer<UInt8>, partSizes: SplitPartSizes, ranks: Int, rank: Int,
                           path: String = "split.u8") throws(DataError) -> ShardPlan {
        precondition(ranks >= 1 && (0..<ranks).contains(rank))
        let sizes = partSizes.sizes, rowsPerPart = partSizes.rowsPerPart
        // before[s][p]: customers of split s in the parts before part p.
        var before: [[Int]] = [[0], [0], [0]]
        for part in sizes { for s in 0..<3 { before[s].append(before[s].last! + part[s]) } }
        let totals = before.map { $0.last! }
        guard totals.reduce(0, +) == splits.count else {
            throw .damagedDataset(file: path, reason: "the manifest's split counts per part add up to \(totals.reduce(0, +)) customers, the file holds \(splits.count)")
        }
        let blocks = ownBlocks(totals: totals, ranks: ranks, rank: rank)
        var own: [[Int32]] = blocks.map { block in
            var rows: [Int32] = []
            rows.reserveCapacity(block.count)
            return rows
        }
        // Reads part `index`, appending the rows at `wanted` positions of each split.
        func read(part index: Int, wanted: [Range<Int>], into own: inout [[Int32]]) throws(DataError) {
            var positions = (0..<3).map { before[$0][index] }
            let rows = index * rowsPerPart ..< min((index + 1) * rowsPerPart, splits.count)
            for row in rows {
                let part = Int(splits[row])
                guard part < 3 else { throw .damagedDataset(file: path, reason: "customer \(row) has split \(part), outside 0...2") }
                if wanted[part].contains(positions[part]) { own[part].append(Int32(row)) }
                positions[part] += 1
            }
            let found = (0..<3).map { positions[$0] - before[$0][index] }
            guard found == sizes[index] else {
                throw .damagedDataset(file: path, reason: "part \(index) holds \(found) training, validation and test customers; the manifest says \(sizes[index])")
            }
        }
        func parts(holding wanted: [Range<Int>]) -> [Int] {
            sizes.indices.filter { index in
                (0..<3).contains { s in
                    sizes[index][s] > 0 && before[s][index] < wanted[s].upperBound && before[s][index + 1] > wanted[s].lowerBound
                }
            }
        }
        for index in parts(holding: blocks) { try read(part: index, wanted: blocks, into: &own) }
        var repeats: [Int32] = []
        let perRank = balancedCounts(total: totals[0], ranks: ranks)[rank]
        if own[0].isEmpty && perRank > 0 {
            var first: [[Int32]] = [[], [], []]
            let wanted = [0..<perRank, 0..<0, 0..<0]
            for index in parts(holding: wanted) { try read(part: index, wanted: wanted, into: &first) }
            repeats = first[0]
        }
        return padded(own, totals: totals, ranks: ranks, rank: rank) { _ in repeats }
    }

    /// Rank `rank`'s block of positions in each split's order.
    private static func ownBlocks(totals: [Int], ranks: Int, rank: Int) -> [Range<Int>] {
        totals.map { total in
            let counts = exactCounts(total: total, ranks: ranks)
            let start = counts[..<rank].reduce(0, +)
            return start..<start + counts[rank]
        }
    }

    /// The plan from a rank's own rows, its training rows padded to the common count.
    /// `firstTraining(n)` gives the dataset's first n training rows, read only when needed.
    private static func padded(_ own: [[Int32]], totals: [Int], ranks: Int, rank: Int,
                               firstTraining: (Int) -> [Int32]) -> ShardPlan {
        var train = own[0]
        let perRank = balancedCounts(total: totals[0], ranks: ranks)[rank]
        if train.count < perRank {
            // Fewer training customers than ranks leaves a rank none of its own: it repeats
            // the first training customers of the dataset instead.
            let repeated = train.isEmpty ? firstTraining(perRank) : train
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
