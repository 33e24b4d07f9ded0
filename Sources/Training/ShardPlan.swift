import Tensors

/// Which customers each rank holds.
///
/// Training shards are balanced by padding, as PyTorch's DistributedSampler does: the training
/// customers are shuffled once with the run's seed, the first few are repeated so the total is a
/// multiple of the number of ranks, and rank r takes every r-th customer of that order. Every
/// rank therefore has exactly `ceil(N / P)` customers and runs the same number of steps per
/// epoch; at most P − 1 customers are seen twice per epoch. Validation and test customers are
/// split exactly (no padding, so no customer counts twice in a metric); they need no lock-step.
public struct ShardPlan: Sendable, Equatable {
    /// Dataset rows of every rank's shard, rank-major: rank r owns `rows[r]`.
    public let rows: [[Int32]]

    public var counts: [Int] { rows.map(\.count) }

    /// Balanced (padded) shards of `candidates` over `ranks`, shuffled with `seed`.
    public static func balanced(_ candidates: [Int32], ranks: Int, seed: UInt64) -> ShardPlan {
        precondition(ranks >= 1)
        var order = candidates
        var random = SeededRandom(seed: seed, purpose: .shuffle, epoch: -1)
        random.shuffle(&order)
        guard !order.isEmpty else { return ShardPlan(rows: Array(repeating: [], count: ranks)) }
        let perRank = (order.count + ranks - 1) / ranks
        let padding = perRank * ranks - order.count
        order += order.prefix(padding)
        let shards = (0..<ranks).map { rank in
            stride(from: rank, to: order.count, by: ranks).map { order[$0] }
        }
        return ShardPlan(rows: shards)
    }

    /// Shard sizes of `balanced` without the rows, which is all a worker needs to know.
    public static func balancedCounts(total: Int, ranks: Int) -> [Int] {
        [Int](repeating: (total + ranks - 1) / ranks, count: ranks)
    }

    /// How many of rank `rank`'s first rows in a `balanced` plan are distinct customers: rank r
    /// takes positions r, r + P, … of the padded order, whose positions from `total` on repeat
    /// the first customers.
    public static func distinctCount(total: Int, ranks: Int, rank: Int) -> Int {
        total > rank ? (total - rank + ranks - 1) / ranks : 0
    }

    /// Shard sizes of `exact`.
    public static func exactCounts(total: Int, ranks: Int) -> [Int] {
        (0..<ranks).map { total / ranks + ($0 < total % ranks ? 1 : 0) }
    }

    /// Exact contiguous split of `candidates` (in dataset order) over `ranks`; the first
    /// `N mod P` ranks get one more.
    public static func exact(_ candidates: [Int32], ranks: Int) -> ShardPlan {
        let base = candidates.count / ranks
        let extra = candidates.count % ranks
        var start = 0
        var shards: [[Int32]] = []
        for rank in 0..<ranks {
            let count = base + (rank < extra ? 1 : 0)
            shards.append(Array(candidates[start..<start + count]))
            start += count
        }
        return ShardPlan(rows: shards)
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
