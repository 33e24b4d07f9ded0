import CMemoryHints
import Foundation

/// Runs `background` on a thread of its own while `body` runs on the calling thread (which
/// may be the only one allowed to call MPI), and returns both results once both are done.
/// An error of either is thrown only after both have finished (`body`'s first), so nothing
/// is still writing when the caller cleans up.
///
/// A local join, not a wait across ranks: `background` only does local work (files, memory).
func runAlongside<Background, Foreground>(
    _ background: @escaping () throws -> Background, _ body: () throws -> Foreground
) throws -> (Background, Foreground) {
    let work = BackgroundWork(background)
    let thread = Thread { work.run() }
    thread.name = "clm-background"
    thread.start()
    let foreground = Result { try body() }
    work.done.wait()
    let value = try foreground.get()
    return (try work.result!.get(), value)
}

/// The closure and result of `runAlongside`'s thread. Only that thread writes `result`, and
/// only before signalling `done`; the caller reads it only after waiting on `done`.
private final class BackgroundWork<Value>: @unchecked Sendable {
    private let work: () throws -> Value
    var result: Result<Value, Error>?
    let done = DispatchSemaphore(value: 0)

    init(_ work: @escaping () throws -> Value) { self.work = work }

    func run() {
        result = Result { try work() }
        done.signal()
    }
}

/// A thread that runs one job at a time for its owner: a round of aggregation while the owner
/// parses the next. Only the owner calls `submit`, `waitUntilIdle` and `stop`; a job's
/// effects are visible to the owner once `waitUntilIdle` returns.
final class RoundWorker: @unchecked Sendable {
    private let started = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private var job: (() -> Void)?
    /// Owner's side only: a job was submitted and not yet waited for.
    private var busy = false
    private var running = true

    init() {
        let thread = Thread { [self] in loop() }
        thread.name = "clm-round-worker"
        thread.start()
    }

    private func loop() {
        while true {
            started.wait()
            guard let job else {
                finished.signal()
                return
            }
            job()
            self.job = nil
            finished.signal()
        }
    }

    func submit(_ job: @escaping () -> Void) {
        precondition(running, "a job submitted to a stopped round worker")
        waitUntilIdle()
        self.job = job
        busy = true
        started.signal()
    }

    func waitUntilIdle() {
        guard busy else { return }
        finished.wait()
        busy = false
    }

    /// Waits for the job in flight, if any, and ends the thread; calling it again does nothing.
    func stop() {
        guard running else { return }
        waitUntilIdle()
        running = false
        job = nil
        started.signal()
        finished.wait()
    }
}

/// The CPUs this process may run on, which `ProcessInfo.activeProcessorCount` does not
/// consult on Linux: under `taskset -c 0` a second thread would only take turns with the first.
package func usableProcessorCount() -> Int {
    let allowed = Int(clm_usable_cpus())
    return allowed > 0 ? allowed : ProcessInfo.processInfo.activeProcessorCount
}
