import CMPI
import Collectives
import Synchronization

/// Process-wide MPI start-up and shut-down, each done at most once.
///
/// MPI may be initialised only once per process and never again after finalisation; both
/// calls check MPI's own `MPI_Initialized` / `MPI_Finalized` so that a library, a test runner
/// and an executable can each ask for MPI without knowing about one another.
public enum MPIEnvironment {
    private static let lock = Mutex<Void>(())
    /// Watchdogs still running; each must stop before MPI_Finalize, or its thread would call
    /// into a finalised MPI.
    private static let liveWatchdogs = Mutex<[CollectiveWatchdog]>([])

    static func register(_ watchdog: CollectiveWatchdog) {
        liveWatchdogs.withLock { $0.append(watchdog) }
    }

    /// The thread support level MPI granted.
    public enum ThreadSupport: Int32, Sendable, Comparable {
        case single, funneled, serialized, multiple
        public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// Initialises MPI if nobody has yet and returns the thread level in force.
    ///
    /// Asks for `MPI_THREAD_MULTIPLE` because the collective watchdog talks to its peers from a
    /// thread of its own while the main thread may be blocked inside a collective.
    @discardableResult
    public static func initialize() throws -> ThreadSupport {
        try lock.withLock { _ in
            var finalized: Int32 = 0
            MPI_Finalized(&finalized)
            if finalized != 0 {
                throw CollectiveError(
                    operation: "MPI_Init_thread", rank: -1, kind: .invalidArgument,
                    message: "MPI has already been finalised in this process and cannot start again")
            }
            var initialized: Int32 = 0
            MPI_Initialized(&initialized)
            var provided: Int32 = 0
            if initialized == 0 {
                let rc = MPI_Init_thread(nil, nil, cmpi_thread_multiple(), &provided)
                guard rc == MPI_SUCCESS else {
                    throw CollectiveError(
                        operation: "MPI_Init_thread", rank: -1, kind: .mpi(code: rc), message: mpiErrorString(rc))
                }
            } else {
                MPI_Query_thread(&provided)
            }
            // Failures must come back as codes so they become Swift errors; the default handler
            // aborts the whole job without saying which call failed.
            MPI_Comm_set_errhandler(cmpi_comm_world(), cmpi_errors_return())
            return threadSupport(provided)
        }
    }

    /// Stops every collective watchdog and finalises MPI once; later calls do nothing.
    public static func finalize() {
        let watchdogs = liveWatchdogs.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for watchdog in watchdogs { watchdog.stop() }
        lock.withLock { _ in
            var initialized: Int32 = 0
            var finalized: Int32 = 0
            MPI_Initialized(&initialized)
            MPI_Finalized(&finalized)
            if initialized != 0 && finalized == 0 { MPI_Finalize() }
        }
    }

    /// Ends every process of the job at once with `code`, after printing `message` on stderr.
    public static func abort(message: String, code: Int32) -> Never {
        writeToStandardError(message)
        MPI_Abort(cmpi_comm_world(), code)
        // MPI_Abort does not return on a working runtime; if it does, do not carry on.
        exit(code)
    }

    private static func threadSupport(_ level: Int32) -> ThreadSupport {
        switch level {
        case cmpi_thread_multiple(): return .multiple
        case cmpi_thread_serialized(): return .serialized
        case cmpi_thread_funneled(): return .funneled
        default: return .single
        }
    }
}

/// MPI's own text for an error code.
func mpiErrorString(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
    var length: Int32 = 0
    MPI_Error_string(code, &buffer, &length)
    let bytes = buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

#if canImport(Glibc)
import Glibc
#endif

/// Writes a line straight to file descriptor 2, unbuffered, so it survives an abort that follows.
func writeToStandardError(_ message: String) {
    let line = message.hasSuffix("\n") ? message : message + "\n"
    var bytes = Array(line.utf8)
    var written = 0
    while written < bytes.count {
        let result = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + written, $0.count - written) }
        if result <= 0 { return }
        written += result
    }
}
