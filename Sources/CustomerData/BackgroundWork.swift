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
