import Collectives

/// A minimal check runner for code that must run inside every rank of an `mpirun` job.
///
/// Each rank counts its own passes and failures and prints one summary line that
/// scripts/test.sh looks for; a missing line means a rank never ran or died.
public final class RankChecks {
    public let rank: Int
    public let size: Int
    public private(set) var passed = 0
    public private(set) var failed = 0
    /// Checks that could not run at this world size (a one-rank job cannot disagree with
    /// itself): counted apart, so that they never pass for free.
    public private(set) var skipped = 0
    private var currentCheck = ""
    private var currentSkipped = false

    public init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
    }

    /// Runs one named check; a thrown error counts as a failure of that check.
    public func check(_ name: String, _ body: () throws -> Void) {
        currentCheck = name
        currentSkipped = false
        let failuresBefore = failed
        do {
            try body()
        } catch {
            fail("threw \(error)")
        }
        if currentSkipped {
            skipped += 1
        } else if failed == failuresBefore {
            passed += 1
        }
    }

    /// Marks the running check as skipped; the caller returns from its body right after.
    public func skip(_ reason: String) {
        currentSkipped = true
        print("SKIP rank \(rank)/\(size) [\(currentCheck)]: \(reason)")
    }

    public func expect(_ condition: Bool, _ message: @autoclosure () -> String, line: Int = #line) {
        if !condition { fail("\(message()) (line \(line))") }
    }

    public func expectEqual<T: Equatable>(_ actual: T, _ expected: T, _ what: String, line: Int = #line) {
        if actual != expected { fail("\(what): got \(actual), expected \(expected) (line \(line))") }
    }

    /// Compares arrays and reports the first differing index rather than two huge dumps.
    public func expectElementsEqual<T: Equatable>(_ actual: [T], _ expected: [T], _ what: String, line: Int = #line) {
        guard actual.count == expected.count else {
            fail("\(what): \(actual.count) elements, expected \(expected.count) (line \(line))")
            return
        }
        if let index = actual.indices.first(where: { actual[$0] != expected[$0] }) {
            fail("\(what): element \(index) is \(actual[index]), expected \(expected[index]) (line \(line))")
        }
    }

    public func expectThrows(_ what: String, line: Int = #line, _ body: () throws -> Void) -> CollectiveError? {
        do {
            try body()
            fail("\(what): expected an error, none was thrown (line \(line))")
            return nil
        } catch let error as CollectiveError {
            return error
        } catch {
            fail("\(what): expected a CollectiveError, got \(error) (line \(line))")
            return nil
        }
    }

    private func fail(_ message: String) {
        failed += 1
        print("FAIL rank \(rank)/\(size) [\(currentCheck)]: \(message)")
    }

    public var summaryLine: String {
        "multirank rank=\(rank) size=\(size): \(passed) passed, \(failed) failed, \(skipped) skipped"
    }
}
