/// The collectives a multi-rank import or batch scoring needs, on bytes, with rank 0 as the
/// root. CustomerData states them here so that it does not link MPI; `RankExchangeMPI` adapts
/// a `Communicator`. Every rank must make the same calls in the same order; counts are in bytes.
package protocol RankExchange: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Every rank's `values` (the same count on each), concatenated in rank order.
    func allgather(_ values: [Int64]) throws -> [Int64]
    func allreduceSum(_ values: [Int64]) throws -> [Int64]
    func allreduceMax(_ values: [Int64]) throws -> [Int64]
    func broadcast(_ values: inout [Int64]) throws
    func allgatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws
    func alltoallv(_ bytes: UnsafeRawBufferPointer, sendCounts: [Int], into destination: UnsafeMutableRawBufferPointer,
                   receiveCounts: [Int]) throws
    /// `destination` is written on rank 0 only.
    func gatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer?) throws
    /// `source` is read on rank 0 only.
    func scatterv(_ source: UnsafeRawBufferPointer?, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws
}

/// Why a multi-rank step (an import, a batch scoring) stopped on this rank because another
/// rank failed (or failed beside rank 0, which reports for the job).
package struct PeerRankFailure: Error, CustomStringConvertible {
    package var ranks: [Int]
    package var step: String
    package init(ranks: [Int], step: String) {
        self.ranks = ranks
        self.step = step
    }
    package var description: String {
        "rank\(ranks.count == 1 ? "" : "s") \(ranks.map(String.init).joined(separator: ", ")) failed while \(step) (see \(ranks.count == 1 ? "its" : "their") message); nothing was written"
    }
}

extension RankExchange {
    /// Runs `body` on every rank and has the ranks agree on the outcome, so that all of them
    /// stop together: the rank that failed rethrows its error, the others name it.
    package func agreeing<T>(_ step: String, _ body: () throws -> T) throws -> T {
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
    package func onEveryRank<T>(_ step: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let failure as PeerRankFailure {
            // A step inside that the ranks agreed on already names who failed.
            throw failure
        } catch where rank != 0 {
            throw PeerRankFailure(ranks: [0], step: step)
        }
    }

    /// Gathers variable-length byte strings onto rank 0 (empty elsewhere) with each rank's count.
    package func gatherBytes(_ bytes: UnsafeRawBufferPointer) throws -> (bytes: [UInt8], counts: [Int]) {
        let counts = try allgather([Int64(bytes.count)]).map { Int($0) }
        var gathered = [UInt8](repeating: 0, count: rank == 0 ? counts.reduce(0, +) : 0)
        try gathered.withUnsafeMutableBytes { destination in
            try gatherv(bytes, counts: counts, into: rank == 0 ? destination : nil)
        }
        return (gathered, counts)
    }
}
