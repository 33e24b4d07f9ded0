import Foundation
import Synchronization
import Testing
@testable import CustomerData

/// `runAlongside` lets an import finish its customer files while it writes the graph.
@Suite("Work alongside")
struct BackgroundWorkTests {
    private struct Failure: Error, Equatable { let side: String }

    @Test("the background work runs while the body does, and both results come back")
    func bothRunAtOnce() throws {
        let bodyStarted = DispatchSemaphore(value: 0)
        // Run one after the other, the background would give up after 20 s and say so.
        let (sawBody, answer) = try runAlongside({ bodyStarted.wait(timeout: .now() + 20) == .success }) { () -> Int in
            bodyStarted.signal()
            return 42
        }
        #expect(sawBody)
        #expect(answer == 42)
    }

    @Test("a failure of the background work is thrown once the body has finished")
    func backgroundFailureWaitsForTheBody() {
        var bodyFinished = false
        #expect(throws: Failure(side: "background")) {
            _ = try runAlongside({ () throws -> Int in throw Failure(side: "background") }) { bodyFinished = true }
        }
        #expect(bodyFinished)
    }

    @Test("when both fail, the body's error is the one thrown, after the background has finished")
    func bodyFailureComesFirst() {
        let backgroundFinished = Mutex(false)
        #expect(throws: Failure(side: "body")) {
            _ = try runAlongside({ () throws -> Int in
                backgroundFinished.withLock { $0 = true }
                throw Failure(side: "background")
            }) { () throws -> Int in throw Failure(side: "body") }
        }
        #expect(backgroundFinished.withLock { $0 })
    }
}
