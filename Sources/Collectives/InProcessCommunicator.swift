import Foundation

/// Several ranks as threads of one process: the multi-rank import, scoring and training run
/// in unit tests with the collectives they use under `mpirun`, without MPI.
///
/// Each collective is two meetings of all ranks. At the first, every rank posts where its
/// buffers are and what it called; once all have posted, each rank checks that all called the
/// same collective with the same arguments (the same check, and the same message, as
/// `MPICommunicator`'s) and copies what it receives straight out of the other ranks' buffers.
/// At the second, every rank has finished reading, so each may return and reuse its buffers.
/// A rank that does not arrive within the time limit, or whose thread ends first, fails the
/// collective on every rank with a message naming it, and every later collective of the group.
public enum InProcessRanks {
    /// Runs `body` on `ranks` threads, each with its own communicator of one group, and
    /// returns every rank's outcome in rank order once all threads have ended. `timeout` bounds
    /// each collective; `limit` bounds the whole run, past which the process stops naming the
    /// ranks still running (a thread cannot be cancelled, and a test must not hang).
    public static func run<T>(
        ranks: Int, timeout: Duration = .seconds(60), limit: Duration = .seconds(900),
        _ body: @escaping @Sendable (any Communicator) throws -> T
    ) -> [Result<T, any Error>] {
        precondition(ranks >= 1, "a group needs at least one rank")
        let group = RankGroup(size: ranks, timeout: timeout)
        let outcomes = OutcomeSlots<T>(count: ranks)
        let finished = DispatchGroup()
        for rank in 0..<ranks {
            finished.enter()
            let thread = Thread {
                let communicator = InProcessCommunicator(rank: rank, group: group)
                let outcome = Result { try body(communicator) }
                group.depart(rank: rank)
                outcomes.set(rank, outcome)
                finished.leave()
            }
            // Import and scoring code keeps sizeable frames; match a main thread's stack.
            thread.stackSize = 8 << 20
            thread.name = "rank \(rank)"
            thread.start()
        }
        let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) * 1e-18
        if finished.wait(timeout: .now() + seconds) == .timedOut {
            fatalError("InProcessRanks: ranks \(outcomes.unfinished()) still running after \(limit)")
        }
        return outcomes.values()
    }
}

/// One rank of an `InProcessRanks` group.
public final class InProcessCommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public var size: Int { group.size }
    fileprivate let group: RankGroup

    fileprivate init(rank: Int, group: RankGroup) {
        self.rank = rank
        self.group = group
    }

    public var watchdogTimeout: Duration? {
        get { group.timeout }
        set { if let newValue { group.timeout = newValue } }
    }

    /// Every call is checked here; the check costs a comparison, not a message.
    public func withoutAgreementCheck() -> any Communicator { self }

    public func allreduce<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation) throws {
        // The result waits aside until every rank has read this rank's contribution.
        let reduced = UnsafeMutableBufferPointer<T>.allocate(capacity: buffer.count)
        defer { reduced.deallocate() }
        try meet(.allreduce, "allreduce", CallSignature(T.self, count: buffer.count, op: op),
                 Post(source: UnsafeRawPointer(buffer.baseAddress))) { posts in
            reduce(posts, into: reduced, op: op)
        } afterEveryoneRead: {
            if let from = reduced.baseAddress, let to = buffer.baseAddress { to.update(from: from, count: buffer.count) }
        }
    }

    public func allreduce<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws {
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: source.count, what: "destination", operation: "allreduce", rank: rank)
        try meet(.allreduce, "allreduce", CallSignature(T.self, count: source.count, op: op),
                 Post(source: UnsafeRawPointer(source.baseAddress))) { posts in
            reduce(posts, into: UnsafeMutableBufferPointer(rebasing: destination[..<source.count]), op: op)
        }
    }

    /// Completes before returning: nothing in a test needs the overlap, and the request keeps
    /// the same contract (the buffer holds the result once `wait` returns).
    public func startAllreduce<T: CollectiveScalar>(
        _ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOperation
    ) throws -> CollectiveRequest {
        try allreduce(buffer, op: op)
        return CompletedRequest()
    }

    public func broadcast<T: CollectiveScalar>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        try CollectiveArguments.validateRoot(root, size: size, operation: "broadcast", rank: rank)
        try meet(.broadcast, "broadcast", CallSignature(T.self, count: buffer.count, root: root),
                 Post(source: UnsafeRawPointer(buffer.baseAddress))) { posts in
            guard rank != root else { return }
            copy(from: posts[root], offset: 0, count: buffer.count, to: buffer, at: 0)
        }
    }

    public func scatterv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>?, counts: [Int], into destination: UnsafeMutableBufferPointer<T>, root: Int
    ) throws {
        _ = try CollectiveArguments.validateScatterv(
            sourceCount: source?.count, counts: counts, destinationCount: destination.count, root: root, size: size,
            operation: "scatterv", rank: rank)
        try meet(.scatterv, "scatterv", CallSignature(T.self, counts: counts, root: root),
                 Post(source: UnsafeRawPointer(source?.baseAddress))) { posts in
            copy(from: posts[root], offset: counts[..<rank].reduce(0, +), count: counts[rank], to: destination, at: 0)
        }
    }

    public func gatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>?, counts: [Int], root: Int
    ) throws {
        try CollectiveArguments.validateRoot(root, size: size, operation: "gatherv", rank: rank)
        let total = try CollectiveArguments.validateCounts(counts, size: size, operation: "gatherv", rank: rank)
        try requireOwnCount(source.count, counts, "gatherv")
        if rank == root {
            try CollectiveArguments.requireCapacity(
                destination?.count ?? 0, atLeast: total, what: "destination", operation: "gatherv", rank: rank)
        }
        try meet(.gatherv, "gatherv", CallSignature(T.self, counts: counts, root: root),
                 Post(source: UnsafeRawPointer(source.baseAddress))) { posts in
            guard rank == root, let destination else { return }
            concatenate(posts, counts: counts, into: destination)
        }
    }

    public func allgather<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>
    ) throws {
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: source.count * size, what: "destination", operation: "allgather", rank: rank)
        try meet(.allgather, "allgather", CallSignature(T.self, count: source.count),
                 Post(source: UnsafeRawPointer(source.baseAddress))) { posts in
            concatenate(posts, counts: [Int](repeating: source.count, count: size), into: destination)
        }
    }

    public func allgatherv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, into destination: UnsafeMutableBufferPointer<T>, counts: [Int]
    ) throws {
        let total = try CollectiveArguments.validateCounts(counts, size: size, operation: "allgatherv", rank: rank)
        try requireOwnCount(source.count, counts, "allgatherv")
        try CollectiveArguments.requireCapacity(
            destination.count, atLeast: total, what: "destination", operation: "allgatherv", rank: rank)
        try meet(.allgatherv, "allgatherv", CallSignature(T.self, counts: counts),
                 Post(source: UnsafeRawPointer(source.baseAddress))) { posts in
            concatenate(posts, counts: counts, into: destination)
        }
    }

    public func alltoallv<T: CollectiveScalar>(
        _ source: UnsafeBufferPointer<T>, sendCounts: [Int], into destination: UnsafeMutableBufferPointer<T>,
        receiveCounts: [Int]
    ) throws {
        let name = "alltoallv"
        _ = try CollectiveArguments.validateAlltoallv(
            sourceCount: source.count, sendCounts: sendCounts, destinationCount: destination.count,
            receiveCounts: receiveCounts, size: size, operation: name, rank: rank)
        var post = Post(source: UnsafeRawPointer(source.baseAddress))
        post.sendCounts = sendCounts
        post.receiveCounts = receiveCounts
        try meet(.alltoallv, name, CallSignature(T.self, count: 0), post, check: { posts in
            // MPI leaves a mismatched table undefined; here every rank sees every table, so all
            // refuse it together, naming the pair.
            for receiver in 0..<posts.count {
                for sender in 0..<posts.count where posts[sender].sendCounts[receiver] != posts[receiver].receiveCounts[sender] {
                    return "rank \(sender) sends \(posts[sender].sendCounts[receiver]) elements to rank \(receiver), which expects \(posts[receiver].receiveCounts[sender])"
                }
            }
            return nil
        }) { posts in
            var at = 0
            for sender in 0..<posts.count {
                let offset = posts[sender].sendCounts[..<rank].reduce(0, +)
                copy(from: posts[sender], offset: offset, count: receiveCounts[sender], to: destination, at: at)
                at += receiveCounts[sender]
            }
        }
    }

    public func barrier() throws {
        try meet(.barrier, "barrier", CallSignature(), Post(source: nil)) { _ in }
    }

    // MARK: - Plumbing

    private func meet(
        _ kind: CollectiveKind, _ name: String, _ signature: CallSignature, _ post: Post,
        check: ([Post]) -> String? = { _ in nil },
        _ readOthers: ([Post]) -> Void, afterEveryoneRead: () -> Void = {}
    ) throws {
        var post = post
        post.fields = signature.fields(kind: kind)
        let posts = try group.arrive(rank: rank, posting: post, step: name)
        var problem: String?
        if posts.contains(where: { $0.fields != post.fields }) {
            problem = "ranks disagree on the collective: " + CallSignature.describe(posts.map(\.fields))
        } else {
            problem = check(posts)
            if problem == nil { readOthers(posts) }
        }
        _ = try group.arrive(rank: rank, posting: nil, step: name + " (leaving)")
        if let problem { throw CollectiveError(operation: name, rank: rank, kind: .invalidArgument, message: problem) }
        afterEveryoneRead()
    }

    private func requireOwnCount(_ count: Int, _ counts: [Int], _ name: String) throws {
        guard counts[rank] == count else {
            throw CollectiveError(
                operation: name, rank: rank, kind: .invalidArgument,
                message: "this rank sends \(count) elements but counts[\(rank)] is \(counts[rank])")
        }
    }
}

/// What one rank brought to a collective: its send buffer and, for alltoallv, its tables.
struct Post {
    var source: UnsafeRawPointer?
    var sendCounts: [Int] = []
    var receiveCounts: [Int] = []
    var fields: [Int64] = []
}

private func reduce<T: CollectiveScalar>(_ posts: [Post], into destination: UnsafeMutableBufferPointer<T>, op: ReduceOperation) {
    guard let target = destination.baseAddress, let first = posts[0].source?.assumingMemoryBound(to: T.self) else { return }
    // Collective scalars are trivial types, so initialising over earlier contents is an assignment.
    target.initialize(from: first, count: destination.count)
    for post in posts.dropFirst() {
        guard let values = post.source?.assumingMemoryBound(to: T.self) else { continue }
        for index in 0..<destination.count { target[index] = T.combine(target[index], values[index], op) }
    }
}

private func concatenate<T>(_ posts: [Post], counts: [Int], into destination: UnsafeMutableBufferPointer<T>) {
    var at = 0
    for (sender, post) in posts.enumerated() {
        copy(from: post, offset: 0, count: counts[sender], to: destination, at: at)
        at += counts[sender]
    }
}

private func copy<T>(from post: Post, offset: Int, count: Int, to destination: UnsafeMutableBufferPointer<T>, at: Int) {
    guard count > 0, let source = post.source?.assumingMemoryBound(to: T.self), let target = destination.baseAddress else { return }
    (target + at).update(from: source + offset, count: count)
}

/// The meeting point of one group's ranks.
private final class RankGroup: @unchecked Sendable {
    let size: Int
    private let condition = NSCondition()
    private var limit: Duration
    private var generation = 0
    private var arrived: [Bool]
    private var arrivedCount = 0
    private var ended: [Bool]
    /// Posts of the meeting in progress; read only between its two meetings, so never
    /// overwritten while a rank reads them.
    private var posts: [Post?]
    /// Set once a meeting failed; every later meeting fails with it, so no rank waits in vain.
    private var failure: String?

    init(size: Int, timeout: Duration) {
        self.size = size
        limit = timeout
        arrived = [Bool](repeating: false, count: size)
        ended = [Bool](repeating: false, count: size)
        posts = [Post?](repeating: nil, count: size)
    }

    var timeout: Duration {
        get { condition.withLock { limit } }
        set { condition.withLock { limit = newValue } }
    }

    /// Waits until every rank has arrived, then returns everyone's posts (when `post` is
    /// given); throws, naming the missing ranks, when one does not come in time or has ended.
    func arrive(rank: Int, posting post: Post?, step: String) throws -> [Post] {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failed(step, rank, failure) }
        if let post { posts[rank] = post }
        let meeting = generation
        arrived[rank] = true
        arrivedCount += 1
        if arrivedCount == size {
            arrivedCount = 0
            arrived = [Bool](repeating: false, count: size)
            generation += 1
            condition.broadcast()
            return post == nil ? [] : posts.map { $0! }
        }
        let deadline = Date() + TimeInterval(Double(limit.components.seconds) + Double(limit.components.attoseconds) * 1e-18)
        while generation == meeting {
            if let failure { throw failed(step, rank, failure) }
            let gone = (0..<size).filter { ended[$0] && !arrived[$0] }
            if !gone.isEmpty {
                failure = "rank\(gone.count == 1 ? "" : "s") \(gone.map(String.init).joined(separator: ", ")) ended without reaching \(step)"
                condition.broadcast()
                throw failed(step, rank, failure!)
            }
            if !condition.wait(until: deadline) && generation == meeting {
                let missing = (0..<size).filter { !arrived[$0] }
                failure = "\(step) did not complete within \(limit): ranks that did not arrive: \(missing.map(String.init).joined(separator: ", "))"
                condition.broadcast()
                throw failed(step, rank, failure!)
            }
        }
        return post == nil ? [] : posts.map { $0! }
    }

    /// Marks a rank's thread as ended, so ranks waiting for it stop waiting.
    func depart(rank: Int) {
        condition.withLock {
            ended[rank] = true
            condition.broadcast()
        }
    }

    private func failed(_ step: String, _ rank: Int, _ reason: String) -> CollectiveError {
        CollectiveError(operation: step, rank: rank, kind: .invalidArgument, message: reason)
    }
}

/// Each rank's outcome, written by its own thread.
private final class OutcomeSlots<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<T, any Error>?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ rank: Int, _ outcome: Result<T, any Error>) { lock.withLock { slots[rank] = outcome } }
    func values() -> [Result<T, any Error>] { lock.withLock { slots.map { $0! } } }
    func unfinished() -> [Int] { lock.withLock { slots.indices.filter { slots[$0] == nil } } }
}
