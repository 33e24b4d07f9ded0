/// Why a multi-rank step (an import, a batch scoring) stopped on this rank because another
/// rank failed (or failed beside rank 0, which reports for the job).
public struct PeerRankFailure: Error, CustomStringConvertible {
    public var ranks: [Int]
    public var step: String
    public init(ranks: [Int], step: String) {
        self.ranks = ranks
        self.step = step
    }
    public var description: String {
        "rank\(ranks.count == 1 ? "" : "s") \(ranks.map(String.init).joined(separator: ", ")) failed while \(step) (see \(ranks.count == 1 ? "its" : "their") message); nothing was written"
    }
}

// MARK: - Steps that every rank takes together

extension Communicator {
    /// Runs `body` on every rank and has the ranks agree on the outcome, so that all of them
    /// stop together: the rank that failed rethrows its error, the others name it.
    public func agreeing<T>(_ step: String, _ body: () throws -> T) throws -> T {
        var result: Result<T, Error>
        do { result = .success(try body()) } catch { result = .failure(error) }
        let failed: Int64
        if case .failure = result { failed = 1 } else { failed = 0 }
        let flags = try allgather([failed])
        let failedRanks = flags.indices.filter { flags[$0] != 0 }
        switch result {
        case .failure(let error):
            // Rank 0 reports for the job; a rank that failed beside it stays quiet.
            if rank != 0 && failedRanks.contains(0) { throw PeerRankFailure(ranks: failedRanks, step: step) }
            throw error
        case .success(let value):
            guard failedRanks.isEmpty else { throw PeerRankFailure(ranks: failedRanks, step: step) }
            return value
        }
    }

    /// Runs a check that every rank makes on the same values, so that all fail together; only
    /// rank 0 reports it, the others stop quietly.
    public func onEveryRank<T>(_ step: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let failure as PeerRankFailure {
            // A step inside that the ranks agreed on already names who failed.
            throw failure
        } catch where rank != 0 {
            throw PeerRankFailure(ranks: [0], step: step)
        }
    }
}

// MARK: - Arrays of counters and raw bytes, rank 0 as the root

extension Communicator {
    /// Every rank's `values` (the same count on each), concatenated in rank order.
    public func allgather(_ values: [Int64]) throws -> [Int64] {
        var result = [Int64](repeating: 0, count: values.count * size)
        try values.withUnsafeBufferPointer { source in
            try result.withUnsafeMutableBufferPointer { try allgather(source, into: $0) }
        }
        return result
    }

    public func allreduceSum(_ values: [Int64]) throws -> [Int64] {
        var result = values
        try allreduce(&result, op: .sum)
        return result
    }

    public func allreduceMax(_ values: [Int64]) throws -> [Int64] {
        var result = values
        try allreduce(&result, op: .max)
        return result
    }

    /// Every rank `r` contributes `counts[r]` bytes; every rank receives all of them in rank order.
    public func allgatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws {
        try allgatherv(bytes.bindMemory(to: UInt8.self), into: destination.bindMemory(to: UInt8.self), counts: counts)
    }

    /// `alltoallv` on bytes; counts are in bytes.
    public func alltoallv(_ bytes: UnsafeRawBufferPointer, sendCounts: [Int], into destination: UnsafeMutableRawBufferPointer,
                          receiveCounts: [Int]) throws {
        try alltoallv(bytes.bindMemory(to: UInt8.self), sendCounts: sendCounts,
                      into: destination.bindMemory(to: UInt8.self), receiveCounts: receiveCounts)
    }

    /// Gathers bytes onto rank 0; `destination` is written on rank 0 only.
    public func gatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer?) throws {
        try gatherv(bytes.bindMemory(to: UInt8.self), into: destination?.bindMemory(to: UInt8.self), counts: counts, root: 0)
    }

    /// Scatters bytes from rank 0; `source` is read on rank 0 only.
    public func scatterv(_ source: UnsafeRawBufferPointer?, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws {
        try scatterv(source?.bindMemory(to: UInt8.self), counts: counts, into: destination.bindMemory(to: UInt8.self), root: 0)
    }

    /// Every rank's bytes (any count on each), concatenated in rank order, on every rank.
    public func allgatherBytes(_ bytes: UnsafeRawBufferPointer) throws -> [UInt8] {
        let counts = try allgather([Int64(bytes.count)]).map { Int($0) }
        var gathered = [UInt8](repeating: 0, count: counts.reduce(0, +))
        try gathered.withUnsafeMutableBytes { try allgatherv(bytes, counts: counts, into: $0) }
        return gathered
    }

    /// Gathers variable-length byte strings onto rank 0 (empty elsewhere) with each rank's count.
    public func gatherBytes(_ bytes: UnsafeRawBufferPointer) throws -> (bytes: [UInt8], counts: [Int]) {
        let counts = try allgather([Int64(bytes.count)]).map { Int($0) }
        var gathered = [UInt8](repeating: 0, count: rank == 0 ? counts.reduce(0, +) : 0)
        try gathered.withUnsafeMutableBytes { destination in
            try gatherv(bytes, counts: counts, into: rank == 0 ? destination : nil)
        }
        return (gathered, counts)
    }
}
