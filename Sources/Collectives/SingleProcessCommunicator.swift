/// A world of one rank, for unit tests and for running without `mpirun` and without MPI.
///
/// Each collective does what MPI would do with one rank: reductions and broadcasts leave the
/// data unchanged, gathers and scatters copy. Argument checks are the same as the MPI ones.
public final class SingleProcessCommunicator: Communicator, @unchecked Sendable {
    public let rank = 0
    public let size = 1

    public init() {}

    /// Nothing waits on other ranks here, so there is nothing to time out.
    public var watchdogTimeout: Duration? {
        get { nil }
        set {}
    }

    public func withoutAgreementCheck() -> any Communicator { self }

    public func allreduce<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation) throws {}

    public func allreduce<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws {
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: source.count, what: "destination", operation: "allreduce", rank: rank)
        copy(source, to: destination, at: 0)
    }

    public func startAllreduce<T: CollectiveScalar>(
        _ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws -> CollectiveRequest {
        CompletedRequest()
    }

    public func broadcast<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        try CollectiveArguments.validateRoot(root, size: size, operation: "broadcast", rank: rank)
    }

    public func scatterv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>?, counts: [Int], into destination: UnsafeMutableBufferPointer<T>, root: Int
    ) throws {
        let total = try CollectiveArguments.validateScatterv(
            sourceCount: source?.count, counts: counts, destinationCount: destination.count, root: root, size: size,
            operation: "scatterv", rank: rank)
        if let source { copy(UnsafeBufferPointer(rebasing: source[0..<total]), to: destination, at: 0) }
    }

    public func gatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>?, counts: [Int], root: Int
    ) throws {
        try CollectiveArguments.validateRoot(root, size: size, operation: "gatherv", rank: rank)
        try gatherAll(source, into: destination, counts: counts, operation: "gatherv")
    }

    public func allgather<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>
    ) throws {
        try gatherAll(source, into: destination, counts: [source.count], operation: "allgather")
    }

    public func allgatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, counts: [Int]
    ) throws {
        try gatherAll(source, into: destination, counts: counts, operation: "allgatherv")
    }

    public func alltoallv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, sendCounts: [Int], into destination: UnsafeMutableBufferPointer<T>,
        receiveCounts: [Int]
    ) throws {
        _ = try CollectiveArguments.validateCounts(receiveCounts, size: size, operation: "alltoallv", rank: rank)
        guard receiveCounts[0] == sendCounts.first else {
            throw CollectiveError(
                operation: "alltoallv", rank: rank, kind: .invalidArgument,
                message: "this rank sends \(sendCounts.first ?? -1) elements to itself but expects \(receiveCounts[0])")
        }
        try gatherAll(UnsafeBufferPointer(rebasing: source.prefix(receiveCounts[0])), into: destination,
                      counts: receiveCounts, operation: "alltoallv")
    }

    public func barrier() throws {}

    private func gatherAll<T>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>?, counts: [Int],
        operation: String
    ) throws {
        let total = try CollectiveArguments.validateCounts(counts, size: size, operation: operation, rank: rank)
        guard counts[0] == source.count else {
            throw CollectiveError(
                operation: operation, rank: rank, kind: .invalidArgument,
                message: "this rank sends \(source.count) elements but counts[0] is \(counts[0])")
        }
        try CollectiveArguments.requireCapacity(
            destination?.count ?? 0, atLeast: total, what: "destination", operation: operation, rank: rank)
        if let destination { copy(source, to: destination, at: 0) }
    }

    private func copy<T>(_ source: UnsafeBufferPointer<T>, to destination: UnsafeMutableBufferPointer<T>, at offset: Int) {
        guard let from = source.baseAddress, let to = destination.baseAddress, source.count > 0 else { return }
        (to + offset).update(from: from, count: source.count)
    }
}

package final class CompletedRequest: CollectiveRequest {
    package init() {}
    package func wait() throws {}
    package func test() throws -> Bool { true }
}
