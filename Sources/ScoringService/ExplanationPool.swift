import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Runs explained requests on threads of their own, at most `workers` at once, and refuses the
/// next one with 503 rather than queueing it.
///
/// An explanation costs hundreds of forward passes per customer (integrated gradients). Run where
/// plain requests run, on the cooperative pool (one thread per core), two of them took every
/// thread and a one-customer request waited seconds behind them. Here they run on threads at a
/// lower scheduling priority, so plain scoring gets the cores first.
public final class ExplanationPool: Sendable {
    public let workers: Int
    /// What a refused client is told to wait before trying again.
    public let retryAfterSeconds: Int
    private let running = Mutex(0)
    private let metrics: ServiceMetrics?

    public init(workers: Int, retryAfterSeconds: Int = 1, metrics: ServiceMetrics? = nil) {
        precondition(workers >= 1)
        self.workers = workers
        self.retryAfterSeconds = retryAfterSeconds
        self.metrics = metrics
    }

    func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let admitted = running.withLock { running in
            guard running < workers else { return false }
            running += 1
            return true
        }
        guard admitted else {
            metrics?.recordBusyExplanation()
            throw ClientError(503, "all \(workers) explanation workers are busy; retry later, or send the request without \"explain\"",
                              retryAfterSeconds: retryAfterSeconds)
        }
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                // Nice 10: a plain request's thread runs first when both want a core. On Linux
                // "process 0" is the calling thread alone, and a new thread starts at nice 0 again.
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 10)
                let result = Result { try work() }
                self.running.withLock { $0 -= 1 }
                continuation.resume(with: result)
            }
        }
    }
}
