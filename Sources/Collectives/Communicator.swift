/// A group of ranks that run collectives together.
///
/// Buffers are passed as pointers and are neither copied nor retained: a collective reads and
/// writes the caller's memory directly. Every rank of the group must call the same collectives
/// in the same order with matching counts; a violation surfaces as a thrown `CollectiveError`
/// or, when MPI cannot detect it, as a watchdog abort that names the ranks (never a hang).
public protocol Communicator: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }

    /// How long a collective may stay outstanding before the job is aborted naming the ranks
    /// that did not arrive; nil when nothing watches (a single process has no one to wait for).
    /// Every rank should set the same value.
    var watchdogTimeout: Duration? { get set }

    /// The same ranks without the per-call agreement check, for collectives whose arguments agree
    /// by construction (the gradient all-reduce, checked once by fingerprint).
    func withoutAgreementCheck() -> any Communicator

    /// Reduces `buffer` across all ranks in place; every rank receives the result.
    func allreduce<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation) throws
    /// Reduces `source` across all ranks into `destination` (same count on every rank).
    func allreduce<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws
    /// Starts an in-place all-reduce and returns at once; `buffer` must stay valid and untouched
    /// until the returned request has been waited on.
    func startAllreduce<T: CollectiveScalar>(
        _ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws -> CollectiveRequest
    /// Copies `buffer` from `root` to every other rank.
    func broadcast<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws
    /// Sends `counts[r]` consecutive elements of `source` (read on `root` only) to rank `r`.
    /// `counts` must be the same on every rank; `destination` holds at least `counts[rank]`.
    func scatterv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>?, counts: [Int], into destination: UnsafeMutableBufferPointer<T>, root: Int
    ) throws
    /// Collects `counts[r]` elements from each rank `r` into `destination` (written on `root` only),
    /// in rank order. `source.count` must equal `counts[rank]`.
    func gatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>?, counts: [Int], root: Int
    ) throws
    /// Every rank contributes `source.count` elements (equal everywhere); `destination` holds `size` times that.
    func allgather<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>
    ) throws
    /// Every rank `r` contributes `counts[r]` elements; every rank receives all of them in rank order.
    func allgatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, counts: [Int]
    ) throws
    /// Sends `sendCounts[r]` consecutive elements of `source` to rank `r` and receives
    /// `receiveCounts[r]` from each rank `r` into `destination`, in rank order. The tables differ
    /// per rank: `receiveCounts[r]` here must equal rank `r`'s `sendCounts[rank]` (exchange them
    /// with `allgather` first).
    func alltoallv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, sendCounts: [Int], into destination: UnsafeMutableBufferPointer<T>,
        receiveCounts: [Int]
    ) throws
    func barrier() throws
}

/// A non-blocking collective in flight.
public protocol CollectiveRequest: AnyObject {
    /// Blocks until the collective has completed on this rank.
    func wait() throws
    /// Returns whether the collective has completed, without blocking.
    func test() throws -> Bool
}

// MARK: - Array conveniences (no copies: they lend the array's storage to the pointer forms)

extension Communicator {
    public func allreduce<T: CollectiveScalar>(_ array: inout [T], op: ReduceOperation) throws {
        try array.withUnsafeMutableBufferPointer { try allreduce($0, op: op) }
    }

    /// In-place sum across ranks divided by the number of ranks: the gradient average.
    public func allreduceAverage(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try allreduce(buffer, op: .sum)
        scale(buffer, by: 1 / Float(size))
    }

    public func broadcast<T: CollectiveScalar>(_ array: inout [T], root: Int) throws {
        try array.withUnsafeMutableBufferPointer { try broadcast($0, root: root) }
    }

    /// Broadcasts a byte string of any length from `root` (length first, then the bytes).
    public func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] {
        var length = [Int64(rank == root ? bytes.count : 0)]
        try broadcast(&length, root: root)
        var payload = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        try broadcast(&payload, root: root)
        return payload
    }

    public func broadcast(string: String, root: Int) throws -> String {
        String(decoding: try broadcast(bytes: Array(string.utf8), root: root), as: UTF8.self)
    }

    /// Gathers one value from every rank onto every rank.
    public func allgather<T: CollectiveScalar>(value: T) throws -> [T] {
        var result = [T](repeating: value, count: size)
        try withUnsafePointer(to: value) { pointer in
            try result.withUnsafeMutableBufferPointer {
                try allgather(UnsafeBufferPointer(start: pointer, count: 1), into: $0)
            }
        }
        return result
    }

    /// All-reduces one value.
    public func allreduce<T: CollectiveScalar>(value: T, op: ReduceOperation) throws -> T {
        var buffer = [value]
        try allreduce(&buffer, op: op)
        return buffer[0]
    }
}

/// Multiplies every element by `factor`; written on raw pointers so it vectorises.
@inlinable
public func scale(_ buffer: UnsafeMutableBufferPointer<Float>, by factor: Float) {
    guard let base = buffer.baseAddress else { return }
    for index in 0..<buffer.count { base[index] *= factor }
}

// MARK: - Argument checks shared by every implementation

package enum CollectiveArguments {
    package static func validateRoot(_ root: Int, size: Int, operation: String, rank: Int) throws {
        guard (0..<size).contains(root) else {
            throw CollectiveError(
                operation: operation, rank: rank, kind: .invalidArgument,
                message: "root \(root) is outside the communicator (size \(size))")
        }
    }

    /// Checks a per-rank count table and returns its total.
    package static func validateCounts(_ counts: [Int], size: Int, operation: String, rank: Int) throws -> Int {
        guard counts.count == size else {
            throw CollectiveError(
                operation: operation, rank: rank, kind: .invalidArgument,
                message: "counts has \(counts.count) entries for \(size) ranks")
        }
        var total = 0
        for (peer, count) in counts.enumerated() {
            guard count >= 0 else {
                throw CollectiveError(
                    operation: operation, rank: rank, kind: .invalidArgument,
                    message: "counts[\(peer)] is negative (\(count))")
            }
            total += count
        }
        return total
    }

    /// Checks a scatterv's root, count table and buffers (the source on the root only); returns
    /// the total count.
    package static func validateScatterv(
        sourceCount: Int?, counts: [Int], destinationCount: Int, root: Int, size: Int, operation: String, rank: Int
    ) throws -> Int {
        try validateRoot(root, size: size, operation: operation, rank: rank)
        let total = try validateCounts(counts, size: size, operation: operation, rank: rank)
        try requireCapacity(destinationCount, atLeast: counts[rank], what: "destination", operation: operation, rank: rank)
        if rank == root {
            try requireCapacity(sourceCount ?? 0, atLeast: total, what: "source", operation: operation, rank: rank)
        }
        return total
    }

    /// Checks both count tables of an alltoallv against the buffers; returns their totals.
    package static func validateAlltoallv(
        sourceCount: Int, sendCounts: [Int], destinationCount: Int, receiveCounts: [Int], size: Int, operation: String, rank: Int
    ) throws -> (send: Int, receive: Int) {
        let sendTotal = try validateCounts(sendCounts, size: size, operation: operation, rank: rank)
        let receiveTotal = try validateCounts(receiveCounts, size: size, operation: operation, rank: rank)
        try requireCapacity(sourceCount, atLeast: sendTotal, what: "source", operation: operation, rank: rank)
        try requireCapacity(destinationCount, atLeast: receiveTotal, what: "destination", operation: operation, rank: rank)
        return (sendTotal, receiveTotal)
    }

    package static func requireCapacity(
        _ available: Int, atLeast needed: Int, what: String, operation: String, rank: Int
    ) throws {
        guard available >= needed else {
            throw CollectiveError(
                operation: operation, rank: rank, kind: .invalidArgument,
                message: "\(what) holds \(available) elements but \(needed) are needed")
        }
    }
}
