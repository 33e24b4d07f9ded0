import Collectives

/// This rank's share of rows sorted across every rank: rank r holds a contiguous stretch of the
/// global order, and every row of rank r sorts before every row of rank r + 1.
public struct SortedShare: Sendable {
    /// Row-major, `width` values a row, in ascending key order.
    public let rows: [Double]
    public let width: Int
    /// Global position of this rank's first row.
    public let offset: Int
    /// Rows on every rank, in rank order.
    public let rankCounts: [Int]

    public var count: Int { rows.count / max(width, 1) }
    public var total: Int { rankCounts.reduce(0, +) }

    @inline(__always) public func value(_ row: Int, _ column: Int) -> Double { rows[row * width + column] }
}

/// A sample sort over the ranks: each rank sorts its rows, the ranks agree on splitters drawn
/// from every rank's sorted rows, and one all-to-all sends each row to the rank whose key range
/// holds it. Memory per rank is its own rows twice, whatever the number of ranks.
///
/// Rows compare lexicographically by `keyColumns`. For an even split the last key column should
/// be unique (a customer's dataset row): equal keys always go to one rank, so a key shared by
/// many rows would land them all in one place.
public enum DistributedSort {
    public static func sort(
        _ rows: [Double], width: Int, keyColumns: [Int], world: any Communicator, samplesPerRank: Int = 64
    ) throws -> SortedShare {
        precondition(width > 0 && rows.count % width == 0, "rows must be whole rows of width \(width)")
        precondition(!keyColumns.isEmpty && keyColumns.allSatisfy { (0..<width).contains($0) }, "key columns must be inside the row")
        let local = sortedLocally(rows, width: width, keyColumns: keyColumns)
        let count = rows.count / width
        guard world.size > 1 else {
            return SortedShare(rows: local, width: width, offset: 0, rankCounts: [count])
        }
        let splitters = try agreedSplitters(local, width: width, keyColumns: keyColumns, world: world, samplesPerRank: samplesPerRank)

        // The rows are sorted, so each destination's rows are one contiguous stretch.
        var sendCounts = [Int](repeating: 0, count: world.size)
        let splitterCount = splitters.count / keyColumns.count
        var destination = 0
        for row in 0..<count {
            while destination < splitterCount,
                  compare(local, row * width, splitters, destination * keyColumns.count, keyColumns) >= 0 {
                destination += 1
            }
            sendCounts[destination] += width
        }
        let everyCount = try world.allgather(sendCounts.map(Int64.init)).map { Int($0) }
        let receiveCounts = (0..<world.size).map { everyCount[$0 * world.size + world.rank] }
        var received = [Double](repeating: 0, count: receiveCounts.reduce(0, +))
        try local.withUnsafeBufferPointer { source in
            try received.withUnsafeMutableBufferPointer { target in
                try world.alltoallv(source, sendCounts: sendCounts, into: target, receiveCounts: receiveCounts)
            }
        }
        let mine = received.count / width
        let rankCounts = try world.allgather([Int64(mine)]).map { Int($0) }
        return SortedShare(rows: sortedLocally(received, width: width, keyColumns: keyColumns), width: width,
                           offset: rankCounts[..<world.rank].reduce(0, +), rankCounts: rankCounts)
    }

    /// The size − 1 keys that cut the pooled samples of every rank into equal parts; the same
    /// on every rank, as every rank sorts the same pool.
    private static func agreedSplitters(
        _ sorted: [Double], width: Int, keyColumns: [Int], world: any Communicator, samplesPerRank: Int
    ) throws -> [Double] {
        let count = sorted.count / width
        let keyWidth = keyColumns.count
        let taken = min(count, samplesPerRank)
        var samples = [Double]()
        samples.reserveCapacity(taken * keyWidth)
        for index in 0..<taken {
            let row = (2 * index + 1) * count / (2 * taken)
            for column in keyColumns { samples.append(sorted[row * width + column]) }
        }
        let counts = try world.allgather([Int64(samples.count)]).map { Int($0) }
        var pool = [Double](repeating: 0, count: counts.reduce(0, +))
        try samples.withUnsafeBufferPointer { source in
            try pool.withUnsafeMutableBufferPointer { try world.allgatherv(source, into: $0, counts: counts) }
        }
        let pooled = sortedLocally(pool, width: keyWidth, keyColumns: Array(0..<keyWidth))
        let pooledCount = pooled.count / keyWidth
        guard pooledCount > 0 else { return [] }
        var splitters = [Double]()
        splitters.reserveCapacity((world.size - 1) * keyWidth)
        for cut in 1..<world.size {
            let row = cut * pooledCount / world.size
            splitters += pooled[(row * keyWidth)..<((row + 1) * keyWidth)]
        }
        return splitters
    }

    /// Row-major rows reordered by their keys.
    static func sortedLocally(_ rows: [Double], width: Int, keyColumns: [Int]) -> [Double] {
        let count = rows.count / width
        var order = Array(0..<count)
        rows.withUnsafeBufferPointer { values in
            order.sort { left, right in
                for column in keyColumns {
                    let a = values[left * width + column], b = values[right * width + column]
                    if a != b { return a < b }
                }
                return false
            }
        }
        var result = [Double](repeating: 0, count: rows.count)
        rows.withUnsafeBufferPointer { source in
            result.withUnsafeMutableBufferPointer { target in
                for (position, row) in order.enumerated() {
                    (target.baseAddress! + position * width).update(from: source.baseAddress! + row * width, count: width)
                }
            }
        }
        return result
    }

    /// Compares the row at `rowStart` of `rows` with the splitter at `splitterStart` (its key
    /// columns only, packed): negative, zero or positive.
    private static func compare(_ rows: [Double], _ rowStart: Int, _ splitters: [Double], _ splitterStart: Int,
                                _ keyColumns: [Int]) -> Int {
        for (index, column) in keyColumns.enumerated() {
            let a = rows[rowStart + column], b = splitters[splitterStart + index]
            if a < b { return -1 }
            if a > b { return 1 }
        }
        return 0
    }
}

/// A stretch of rows that share one value of a column, possibly continuing on other ranks.
public struct TieGroup: Sendable, Equatable {
    /// This rank's part: local rows `localRows`.
    public var localRows: Range<Int>
    /// The whole group in the global order (0-based positions).
    public var globalStart: Int
    public var globalCount: Int
    /// Ranks holding the group's first and last rows.
    public var firstRank: Int
    public var lastRank: Int

    /// The mean of the 1-based positions the group spans: every member's tie-averaged rank.
    public var averageRank: Double { Double(globalStart) + Double(globalCount + 1) / 2 }
}

extension SortedShare {
    /// The groups of equal values of `column` among this rank's rows, each with its global
    /// extent. `column` must be the first key column of the sort, so equal values are adjacent
    /// in the global order; a group can span several ranks.
    public func tieGroups(column: Int, world: any Communicator) throws -> [TieGroup] {
        var groups: [TieGroup] = []
        var start = 0
        while start < count {
            var end = start + 1
            while end < count, value(end, column) == value(start, column) { end += 1 }
            groups.append(TieGroup(localRows: start..<end, globalStart: offset + start, globalCount: end - start,
                                   firstRank: world.rank, lastRank: world.rank))
            start = end
        }
        guard world.size > 1 else { return groups }
        // Each rank's first and last value and the lengths of its first and last groups.
        let summary: [Double] = groups.isEmpty
            ? [0, 0, 0, 0]
            : [value(0, column), Double(groups[0].globalCount), value(count - 1, column), Double(groups[groups.count - 1].globalCount)]
        var every = [Double](repeating: 0, count: 4 * world.size)
        try summary.withUnsafeBufferPointer { source in
            try every.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
        }
        guard !groups.isEmpty else { return groups }
        // Backwards from the first group: whole ranks of the same value, then the last group of
        // the rank where the value starts.
        let first = value(0, column)
        var rank = world.rank - 1
        while rank >= 0 {
            let rows = rankCounts[rank]
            if rows == 0 { rank -= 1; continue }
            guard every[4 * rank + 2] == first else { break }
            let part = Int(every[4 * rank + 3])
            groups[0].globalStart -= part
            groups[0].globalCount += part
            groups[0].firstRank = rank
            if part < rows { break }
            rank -= 1
        }
        let last = value(count - 1, column)
        // When the rank holds one group, it is both the first and the last and extends both ways.
        let lastIndex = groups.count - 1
        rank = world.rank + 1
        while rank < world.size {
            let rows = rankCounts[rank]
            if rows == 0 { rank += 1; continue }
            guard every[4 * rank] == last else { break }
            let part = Int(every[4 * rank + 1])
            groups[lastIndex].globalCount += part
            groups[lastIndex].lastRank = rank
            if part < rows { break }
            rank += 1
        }
        return groups
    }
}
