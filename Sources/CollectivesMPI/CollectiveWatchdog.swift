import CMPI
import Collectives
import Foundation
import Synchronization

/// Ends the job when a collective has not completed within a time limit, naming the operation
/// and the ranks that did not arrive.
///
/// The main thread only bumps two atomics per collective, so the normal path pays nothing
/// measurable. A background thread samples them every `pollInterval`; when one collective has
/// been outstanding for longer than `timeout`, it asks every peer's watchdog, over a duplicate
/// communicator, how many collectives that peer has entered and where it is blocked. Peers
/// behind this rank's sequence number did not arrive; peers that do not answer are dead or
/// wedged. The verdict is printed and the job is aborted, so no rank hangs silently.
final class CollectiveWatchdog: @unchecked Sendable {
    private let timeoutNanoseconds: Atomic<Int64>
    /// The limit; may be changed while running (workers learn the job's limit after start-up).
    var timeout: Duration {
        get { .nanoseconds(timeoutNanoseconds.load(ordering: .relaxed)) }
        set {
            let parts = newValue.components
            timeoutNanoseconds.store(parts.seconds * 1_000_000_000 + parts.attoseconds / 1_000_000_000, ordering: .relaxed)
        }
    }
    let pollInterval: Duration
    private let rank: Int
    private let size: Int
    // A private communicator keeps watchdog messages from ever matching application traffic.
    private let channel: MPI_Comm

    /// Collectives this rank has entered (its own sequence numbers start at 1).
    private let entered = Atomic<Int>(0)
    /// Sequence number of the collective the main thread is blocked in; 0 when it is not.
    private let blockedIn = Atomic<Int>(0)
    private let blockedKind = Atomic<Int>(0)
    private let running = Atomic<Bool>(true)
    private let stopped = DispatchSemaphore(value: 0)

    private static let queryTag: Int32 = 7101
    private static let replyTag: Int32 = 7102

    init(world: MPI_Comm, rank: Int, size: Int, timeout: Duration, pollInterval: Duration = .milliseconds(50)) throws {
        let parts = timeout.components
        timeoutNanoseconds = Atomic(parts.seconds * 1_000_000_000 + parts.attoseconds / 1_000_000_000)
        self.pollInterval = pollInterval
        self.rank = rank
        self.size = size
        var duplicate: MPI_Comm? = cmpi_comm_null()
        let rc = MPI_Comm_dup(world, &duplicate)
        guard rc == MPI_SUCCESS, let duplicate else {
            throw CollectiveError(
                operation: "MPI_Comm_dup (watchdog)", rank: rank, kind: .mpi(code: rc), message: mpiErrorString(rc))
        }
        MPI_Comm_set_errhandler(duplicate, cmpi_errors_return())
        channel = duplicate
        let thread = Thread { [self] in self.run() }
        thread.name = "collective-watchdog"
        thread.start()
    }

    /// Records that this rank entered a collective; returns its sequence number.
    @inline(__always)
    func arrive() -> Int {
        entered.wrappingAdd(1, ordering: .relaxed).newValue
    }

    /// Marks the main thread as blocked until collective `sequence` completes.
    @inline(__always)
    func block(_ sequence: Int, _ kind: CollectiveKind) {
        blockedKind.store(kind.rawValue, ordering: .relaxed)
        blockedIn.store(sequence, ordering: .releasing)
    }

    @inline(__always)
    func unblock() {
        blockedIn.store(0, ordering: .releasing)
    }

    /// Stops the background thread and releases the private communicator. Call only after a
    /// final barrier, so no peer can still be waiting for this rank's answers.
    func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        stopped.wait()
        var channel: MPI_Comm? = self.channel
        MPI_Comm_free(&channel)
    }

    // MARK: - Background thread

    private func run() {
        var watchedSequence = 0
        var watchedSince = ContinuousClock.now
        while running.load(ordering: .acquiring) {
            answerQueries()
            let sequence = blockedIn.load(ordering: .acquiring)
            let now = ContinuousClock.now
            if sequence == 0 {
                watchedSequence = 0
            } else if sequence != watchedSequence {
                watchedSequence = sequence
                watchedSince = now
            } else if now - watchedSince > timeout {
                let kind = CollectiveKind(rawValue: blockedKind.load(ordering: .relaxed)) ?? .none
                reportAndAbort(sequence: sequence, kind: kind, waited: now - watchedSince)
            }
            Thread.sleep(forTimeInterval: pollInterval.seconds)
        }
        stopped.signal()
    }

    private func snapshot() -> [Int64] {
        [Int64(entered.load(ordering: .relaxed)),
         Int64(blockedIn.load(ordering: .acquiring)),
         Int64(blockedKind.load(ordering: .relaxed))]
    }

    private func answerQueries() {
        while true {
            var flag: Int32 = 0
            var status = MPI_Status()
            guard MPI_Iprobe(cmpi_any_source(), Self.queryTag, channel, &flag, &status) == MPI_SUCCESS,
                  flag != 0 else { return }
            var question: Int64 = 0
            MPI_Recv(&question, 1, cmpi_int64(), status.MPI_SOURCE, Self.queryTag, channel, cmpi_status_ignore())
            var answer = snapshot()
            MPI_Send(&answer, 3, cmpi_int64(), status.MPI_SOURCE, Self.replyTag, channel)
        }
    }

    private func reportAndAbort(sequence: Int, kind: CollectiveKind, waited: Duration) -> Never {
        let peers = (0..<size).filter { $0 != rank }
        var answers = [[Int64]](repeating: [0, 0, 0], count: size)
        var requests = [MPI_Request?](repeating: cmpi_request_null(), count: peers.count)
        // Non-blocking sends and receives need memory that outlives this call's `&` temporaries;
        // the process is about to abort, so it is never freed.
        let question = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
        question.initialize(to: Int64(sequence))
        let answerStorage = UnsafeMutablePointer<Int64>.allocate(capacity: 3 * size)
        answerStorage.initialize(repeating: -1, count: 3 * size)
        for (index, peer) in peers.enumerated() {
            var sendRequest: MPI_Request? = cmpi_request_null()
            MPI_Isend(question, 1, cmpi_int64(), Int32(peer), Self.queryTag, channel, &sendRequest)
            MPI_Request_free(&sendRequest)
            MPI_Irecv(answerStorage + 3 * peer, 3, cmpi_int64(), Int32(peer), Self.replyTag, channel, &requests[index])
        }
        // Peers answer from their own watchdog thread within one poll interval; allow generous slack.
        let grace = Duration.seconds(2) + pollInterval * 4
        let deadline = ContinuousClock.now + grace
        var answered = [Bool](repeating: false, count: size)
        while ContinuousClock.now < deadline && answered.enumerated().contains(where: { $0.offset != rank && !$0.element }) {
            answerQueries()
            for (index, peer) in peers.enumerated() where !answered[peer] {
                var done: Int32 = 0
                MPI_Test(&requests[index], &done, cmpi_status_ignore())
                if done != 0 { answered[peer] = true }
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
        for peer in peers where answered[peer] {
            answers[peer] = Array(UnsafeBufferPointer(start: answerStorage + 3 * peer, count: 3))
        }
        let verdict = Self.verdict(
            rank: rank, sequence: sequence, kind: kind, waited: waited, limit: timeout, peers: peers,
            answered: answered, answers: answers)
        MPIEnvironment.abort(message: verdict, code: 75)
    }

    /// Builds the abort message from the peers' answers.
    static func verdict(
        rank: Int, sequence: Int, kind: CollectiveKind, waited: Duration, limit: Duration, peers: [Int],
        answered: [Bool], answers: [[Int64]]
    ) -> String {
        var missing: [String] = []
        var silent: [Int] = []
        var elsewhere: [String] = []
        for peer in peers {
            guard answered[peer] else { silent.append(peer); continue }
            let peerEntered = Int(answers[peer][0])
            let peerBlocked = Int(answers[peer][1])
            let peerKind = CollectiveKind(rawValue: Int(answers[peer][2])) ?? .none
            if peerEntered < sequence {
                let whereNow = peerBlocked == 0 ? "busy outside any collective" : "blocked in \(peerKind) #\(peerBlocked)"
                missing.append("\(peer) (entered \(peerEntered) collectives, \(whereNow))")
            } else if peerBlocked == sequence && peerKind != kind {
                elsewhere.append("\(peer) (in \(peerKind) #\(sequence))")
            }
        }
        var lines = ["collective watchdog: rank \(rank): \(kind) #\(sequence) has not completed after "
            + String(format: "%.1f s (limit %.1f s)", waited.seconds, limit.seconds)]
        if !missing.isEmpty { lines.append("  ranks that did not arrive: " + missing.joined(separator: ", ")) }
        if !silent.isEmpty {
            lines.append("  ranks that did not answer (dead or wedged): " + silent.map(String.init).joined(separator: ", "))
        }
        if !elsewhere.isEmpty {
            lines.append("  ranks in a different collective at the same point: " + elsewhere.joined(separator: ", "))
        }
        if missing.isEmpty && silent.isEmpty && elsewhere.isEmpty {
            lines.append("  every rank arrived; the collective itself is stuck (mismatched counts or datatypes?)")
        }
        lines.append("  aborting the job")
        return lines.joined(separator: "\n")
    }
}

extension Duration {
    var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) * 1e-18
    }
}
