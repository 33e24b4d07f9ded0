import CMPI
import Collectives
import Foundation

/// The MPI world as a `Communicator`, with a collective watchdog.
///
/// Every call hands the caller's buffer straight to MPI (no staging copies). Element counts
/// above `maxElementsPerCall` (MPI counts are 32-bit) are split into several calls for the
/// reductions and broadcast, and rejected with a clear error for the vector collectives, whose
/// displacements are 32-bit too.
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let threadSupport: MPIEnvironment.ThreadSupport
    /// Largest element count passed to one MPI call.
    public let maxElementsPerCall: Int
    /// Whether every collective first checks that all ranks called the same collective with the
    /// same count, element type and root (one 96-byte all-reduce). MPI does not check this
    /// itself: a rank with a shorter buffer gets memory overwritten. Off only where the
    /// arguments agree by construction (the gradient buffer, whose layout is fingerprinted
    /// before the first step) and the extra latency matters.
    public let verifiesAgreement: Bool
    let comm: MPI_Comm
    /// The underlying communicator, for calling MPI directly (benchmarks against raw MPI).
    public var mpiHandle: MPI_Comm { comm }
    private let watchdog: CollectiveWatchdog?
    /// Shared with the sibling that skips the agreement check, so one account covers the rank.
    private let times: CollectiveTimes

    /// Joins the MPI world, initialising MPI if needed.
    ///
    /// - Parameters:
    ///   - watchdogTimeout: a collective outstanding longer than this aborts the job with a
    ///     report naming the ranks that did not arrive; `nil` turns the watchdog off.
    ///   - verifyAgreement: check before each collective that all ranks agree on its arguments.
    ///   - maxElementsPerCall: split point for large buffers; lowered only by tests of the split.
    public init(
        watchdogTimeout: Duration? = .seconds(300), verifyAgreement: Bool = true,
        maxElementsPerCall: Int = Int(Int32.max)
    ) throws {
        precondition(maxElementsPerCall > 0 && maxElementsPerCall <= Int(Int32.max))
        threadSupport = try MPIEnvironment.initialize()
        comm = cmpi_comm_world()
        var rank: Int32 = 0
        var size: Int32 = 0
        MPI_Comm_rank(comm, &rank)
        MPI_Comm_size(comm, &size)
        self.rank = Int(rank)
        self.size = Int(size)
        self.maxElementsPerCall = maxElementsPerCall
        self.verifiesAgreement = verifyAgreement
        times = CollectiveTimes()
        if let watchdogTimeout {
            // The watchdog thread makes MPI calls beside the main thread; without full thread
            // support that would be undefined behaviour, so it is refused rather than risked.
            guard threadSupport == .multiple else {
                throw CollectiveError(
                    operation: "watchdog start", rank: Int(rank), kind: .invalidArgument,
                    message: "MPI granted thread level \(threadSupport), the watchdog needs MPI_THREAD_MULTIPLE")
            }
            let watchdog = try CollectiveWatchdog(
                world: comm, rank: Int(rank), size: Int(size), timeout: watchdogTimeout)
            MPIEnvironment.register(watchdog)
            self.watchdog = watchdog
        } else {
            watchdog = nil
        }
    }

    /// The watchdog's limit (nil when the watchdog is off); every rank should set the same value.
    public var watchdogTimeout: Duration? {
        get { watchdog?.timeout }
        set { if let newValue { watchdog?.timeout = newValue } }
    }

    /// A communicator for the same ranks and watchdog that skips the agreement check: for the
    /// gradient all-reduce, whose arguments agree by construction (checked once by fingerprint).
    public func withoutAgreementCheck() -> any Communicator {
        MPICommunicator(sibling: self)
    }

    private init(sibling: MPICommunicator) {
        rank = sibling.rank
        size = sibling.size
        threadSupport = sibling.threadSupport
        maxElementsPerCall = sibling.maxElementsPerCall
        verifiesAgreement = false
        comm = sibling.comm
        watchdog = sibling.watchdog
        times = sibling.times
    }

    /// Waits for every rank, then stops all watchdogs and finalises MPI.
    public func shutdown() throws {
        // After this barrier no rank is inside a collective, so no watchdog can still need an
        // answer from a peer whose watchdog has stopped.
        try barrier()
        if let report = times.report(rank: rank, size: size) { print(report) }
        MPIEnvironment.finalize()
    }

    /// Ends the whole job now (all ranks), printing `message` first.
    public func abort(_ message: String, code: Int32 = 1) -> Never {
        MPIEnvironment.abort(message: "rank \(rank): \(message)", code: code)
    }

    // MARK: - Collectives

    public func allreduce<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation) throws {
        try guarded(.allreduce, "MPI_Allreduce", CallSignature(T.self, count: buffer.count, op: op)) {
            var offset = 0
            while offset < buffer.count {
                let chunk = min(maxElementsPerCall, buffer.count - offset)
                let rc = MPI_Allreduce(
                    cmpi_in_place(), buffer.baseAddress! + offset, Int32(chunk), T.mpiDatatype, op.mpiOp, comm)
                if rc != MPI_SUCCESS { return rc }
                offset += chunk
            }
            return MPI_SUCCESS
        }
    }

    public func allreduce<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws {
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: source.count, what: "destination", operation: "MPI_Allreduce", rank: rank)
        try guarded(.allreduce, "MPI_Allreduce", CallSignature(T.self, count: source.count, op: op)) {
            var offset = 0
            while offset < source.count {
                let chunk = min(maxElementsPerCall, source.count - offset)
                let rc = MPI_Allreduce(
                    source.baseAddress! + offset, destination.baseAddress! + offset, Int32(chunk),
                    T.mpiDatatype, op.mpiOp, comm)
                if rc != MPI_SUCCESS { return rc }
                offset += chunk
            }
            return MPI_SUCCESS
        }
    }

    public func startAllreduce<T: CollectiveScalar>(
        _ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws -> CollectiveRequest {
        let count = try mpiCount(buffer.count, "MPI_Iallreduce")
        if verifiesAgreement {
            try verifyAgreement(.allreduce, "MPI_Iallreduce", CallSignature(T.self, count: buffer.count, op: op))
        }
        let sequence = watchdog?.arrive() ?? 0
        var handle: MPI_Request? = cmpi_request_null()
        let rc = MPI_Iallreduce(
            cmpi_in_place(), buffer.baseAddress, count, T.mpiDatatype, op.mpiOp, comm, &handle)
        try check(rc, "MPI_Iallreduce")
        return MPIRequest(handle: handle, sequence: sequence, owner: self)
    }

    public func broadcast<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        try CollectiveArguments.validateRoot(root, size: size, operation: "MPI_Bcast", rank: rank)
        try guarded(.broadcast, "MPI_Bcast", CallSignature(T.self, count: buffer.count, root: root)) {
            var offset = 0
            while offset < buffer.count {
                let chunk = min(maxElementsPerCall, buffer.count - offset)
                let rc = MPI_Bcast(buffer.baseAddress! + offset, Int32(chunk), T.mpiDatatype, Int32(root), comm)
                if rc != MPI_SUCCESS { return rc }
                offset += chunk
            }
            return MPI_SUCCESS
        }
    }

    public func scatterv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>?, counts: [Int], into destination: UnsafeMutableBufferPointer<T>, root: Int
    ) throws {
        let name = "MPI_Scatterv"
        let total = try CollectiveArguments.validateScatterv(
            sourceCount: source?.count, counts: counts, destinationCount: destination.count, root: root, size: size,
            operation: name, rank: rank)
        let (counts32, displacements) = try vectorLayout(counts, total: total, name)
        let receiveCount = Int32(counts[rank])
        try guarded(.scatterv, name, CallSignature(T.self, counts: counts, root: root)) {
            counts32.withUnsafeBufferPointer { countsPointer in
                displacements.withUnsafeBufferPointer { displacementsPointer in
                    MPI_Scatterv(
                        source?.baseAddress, countsPointer.baseAddress, displacementsPointer.baseAddress,
                        T.mpiDatatype, destination.baseAddress, receiveCount, T.mpiDatatype, Int32(root), comm)
                }
            }
        }
    }

    public func gatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>?, counts: [Int], root: Int
    ) throws {
        let name = "MPI_Gatherv"
        try CollectiveArguments.validateRoot(root, size: size, operation: name, rank: rank)
        let total = try CollectiveArguments.validateCounts(counts, size: size, operation: name, rank: rank)
        try requireOwnCount(source.count, counts, name)
        if rank == root {
            try CollectiveArguments.requireCapacity(
                destination?.count ?? 0, atLeast: total, what: "destination", operation: name, rank: rank)
        }
        let (counts32, displacements) = try vectorLayout(counts, total: total, name)
        let sendCount = Int32(source.count)
        try guarded(.gatherv, name, CallSignature(T.self, counts: counts, root: root)) {
            counts32.withUnsafeBufferPointer { countsPointer in
                displacements.withUnsafeBufferPointer { displacementsPointer in
                    MPI_Gatherv(
                        source.baseAddress, sendCount, T.mpiDatatype, destination?.baseAddress,
                        countsPointer.baseAddress, displacementsPointer.baseAddress, T.mpiDatatype, Int32(root), comm)
                }
            }
        }
    }

    public func allgather<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>
    ) throws {
        let name = "MPI_Allgather"
        let count = try mpiCount(source.count, name)
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: source.count * size, what: "destination", operation: name, rank: rank)
        _ = try mpiCount(source.count * size, name)
        try guarded(.allgather, name, CallSignature(T.self, count: source.count)) {
            MPI_Allgather(
                source.baseAddress, count, T.mpiDatatype, destination.baseAddress, count, T.mpiDatatype, comm)
        }
    }

    public func allgatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, counts: [Int]
    ) throws {
        let name = "MPI_Allgatherv"
        let total = try CollectiveArguments.validateCounts(counts, size: size, operation: name, rank: rank)
        try requireOwnCount(source.count, counts, name)
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: total, what: "destination", operation: name, rank: rank)
        let (counts32, displacements) = try vectorLayout(counts, total: total, name)
        let sendCount = Int32(source.count)
        try guarded(.allgatherv, name, CallSignature(T.self, counts: counts)) {
            counts32.withUnsafeBufferPointer { countsPointer in
                displacements.withUnsafeBufferPointer { displacementsPointer in
                    MPI_Allgatherv(
                        source.baseAddress, sendCount, T.mpiDatatype, destination.baseAddress,
                        countsPointer.baseAddress, displacementsPointer.baseAddress, T.mpiDatatype, comm)
                }
            }
        }
    }

    public func alltoallv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, sendCounts: [Int], into destination: UnsafeMutableBufferPointer<T>,
        receiveCounts: [Int]
    ) throws {
        let name = "MPI_Alltoallv"
        let (sendTotal, receiveTotal) = try CollectiveArguments.validateAlltoallv(
            sourceCount: source.count, sendCounts: sendCounts, destinationCount: destination.count,
            receiveCounts: receiveCounts, size: size, operation: name, rank: rank)
        let (sendCounts32, sendDisplacements) = try vectorLayout(sendCounts, total: sendTotal, name)
        let (receiveCounts32, receiveDisplacements) = try vectorLayout(receiveCounts, total: receiveTotal, name)
        // The count tables legitimately differ between ranks; only the element type must agree.
        try guarded(.alltoallv, name, CallSignature(T.self, count: 0)) {
            MPI_Alltoallv(
                source.baseAddress, sendCounts32, sendDisplacements, T.mpiDatatype,
                destination.baseAddress, receiveCounts32, receiveDisplacements, T.mpiDatatype, comm)
        }
    }

    public func barrier() throws {
        try guarded(.barrier, "MPI_Barrier", CallSignature()) { MPI_Barrier(comm) }
    }

    // MARK: - Plumbing

    /// Runs one blocking collective under the watchdog and turns its return code into a throw.
    @inline(__always)
    private func guarded(
        _ kind: CollectiveKind, _ name: String, _ signature: CallSignature, _ body: () -> Int32
    ) throws {
        if verifiesAgreement { try verifyAgreement(kind, name, signature) }
        try underWatchdog(kind, name, body)
    }

    @inline(__always)
    private func underWatchdog(_ kind: CollectiveKind, _ name: String, _ body: () -> Int32) throws {
        let started = CollectiveTimes.now()
        defer { times.add(since: started) }
        if let watchdog {
            watchdog.block(watchdog.arrive(), kind)
            let rc = body()
            watchdog.unblock()
            try check(rc, name)
        } else {
            try check(body(), name)
        }
    }

    /// Throws on every rank, naming the ranks, when the ranks called different collectives or the
    /// same one with different arguments. One all-reduce (MAX over the values and their
    /// negations gives maximum and minimum together); the per-rank table is fetched only when
    /// they differ.
    private func verifyAgreement(_ kind: CollectiveKind, _ name: String, _ signature: CallSignature) throws {
        let mine = signature.fields(kind: kind)
        var extremes = mine + mine.map { 0 &- $0 }
        let fieldCount = Int32(mine.count)
        try underWatchdog(kind, name + " (agreement check)") {
            MPI_Allreduce(cmpi_in_place(), &extremes, 2 * fieldCount, cmpi_int64(), cmpi_op_max(), comm)
        }
        let agree = (0..<mine.count).allSatisfy { extremes[$0] == 0 &- extremes[mine.count + $0] }
        if agree { return }
        var table = [Int64](repeating: 0, count: mine.count * size)
        try underWatchdog(kind, name + " (agreement report)") {
            MPI_Allgather(mine, fieldCount, cmpi_int64(), &table, fieldCount, cmpi_int64(), comm)
        }
        let perRank = (0..<size).map { Array(table[$0 * mine.count..<($0 + 1) * mine.count]) }
        throw CollectiveError(
            operation: name, rank: rank, kind: .invalidArgument,
            message: "ranks disagree on the collective: " + CallSignature.describe(perRank))
    }
    fileprivate func waitForRequest(_ handle: inout MPI_Request?, sequence: Int) throws {
        watchdog?.block(sequence, .allreduceWait)
        let started = CollectiveTimes.now()
        let rc = MPI_Wait(&handle, cmpi_status_ignore())
        times.add(since: started)
        watchdog?.unblock()
        try check(rc, "MPI_Wait (allreduce)")
    }

    @inline(__always)
    func check(_ rc: Int32, _ name: String) throws {
        guard rc == MPI_SUCCESS else {
            throw CollectiveError(operation: name, rank: rank, kind: .mpi(code: rc), message: mpiErrorString(rc))
        }
    }

    private func mpiCount(_ count: Int, _ name: String) throws -> Int32 {
        guard count <= maxElementsPerCall else {
            throw CollectiveError(
                operation: name, rank: rank, kind: .invalidArgument,
                message: "\(count) elements exceed the \(maxElementsPerCall) one MPI call can carry")
        }
        return Int32(count)
    }

    private func requireOwnCount(_ count: Int, _ counts: [Int], _ name: String) throws {
        guard counts[rank] == count else {
            throw CollectiveError(
                operation: name, rank: rank, kind: .invalidArgument,
                message: "this rank sends \(count) elements but counts[\(rank)] is \(counts[rank])")
        }
    }

    /// 32-bit counts and displacements for a vector collective; rejects totals MPI cannot address.
    private func vectorLayout(_ counts: [Int], total: Int, _ name: String) throws -> ([Int32], [Int32]) {
        _ = try mpiCount(total, name)
        var displacements = [Int32](repeating: 0, count: counts.count)
        var running: Int32 = 0
        for index in counts.indices {
            displacements[index] = running
            running += Int32(counts[index])
        }
        return (counts.map { Int32($0) }, displacements)
    }
}

/// A non-blocking all-reduce started by `MPICommunicator.startAllreduce`.
final class MPIRequest: CollectiveRequest {
    private var handle: MPI_Request?
    private let sequence: Int
    private let owner: MPICommunicator
    private var completed = false

    init(handle: MPI_Request?, sequence: Int, owner: MPICommunicator) {
        self.handle = handle
        self.sequence = sequence
        self.owner = owner
    }

    func wait() throws {
        guard !completed else { return }
        completed = true
        try owner.waitForRequest(&handle, sequence: sequence)
    }

    func test() throws -> Bool {
        guard !completed else { return true }
        var flag: Int32 = 0
        try owner.check(MPI_Test(&handle, &flag, cmpi_status_ignore()), "MPI_Test (allreduce)")
        if flag != 0 { completed = true }
        return completed
    }

    deinit {
        // Dropping a request unwaited would leave MPI writing into a buffer the caller may have
        // freed; wait here rather than risk it.
        if !completed { try? wait() }
    }
}

/// How long this rank spent inside blocking collectives, reported at shutdown when
/// `CLM_COLLECTIVE_TIMES` is set. While one rank works alone (writing a manifest, verifying
/// files) the others sit in a collective, so a rank's long waits bound from above the wall time
/// in which another rank alone was busy: the measure of a job's serial share.
final class CollectiveTimes: @unchecked Sendable {
    /// A wait this long is a stretch of another rank working alone (or a large transfer), not
    /// the small imbalance of a balanced step.
    static let longWait: UInt64 = 100_000_000
    private let started = CollectiveTimes.now()
    // Only the thread that calls collectives touches these.
    private var inside: UInt64 = 0
    private var inLongWaits: UInt64 = 0
    private var calls = 0
    private var longCalls = 0

    @inline(__always)
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    @inline(__always)
    func add(since start: UInt64) {
        let elapsed = Self.now() &- start
        inside &+= elapsed
        calls &+= 1
        if elapsed >= Self.longWait {
            inLongWaits &+= elapsed
            longCalls &+= 1
        }
    }

    func report(rank: Int, size: Int) -> String? {
        guard let flag = getenv("CLM_COLLECTIVE_TIMES"), String(cString: flag) != "0" else { return nil }
        func seconds(_ nanoseconds: UInt64) -> String { String(format: "%.2f s", Double(nanoseconds) / 1e9) }
        return "collective times: rank \(rank) of \(size): \(seconds(inside)) inside \(calls) collectives, "
            + "\(seconds(inLongWaits)) of it in \(longCalls) waits of 0.1 s or more, \(seconds(Self.now() &- started)) since joining"
    }
}
