import Foundation
import TestSupport
import Testing
@testable import CustomerData

/// What a failed, killed or fed-garbage import leaves behind.
@Suite("Import safety")
struct ImportSafetyTests {
    static let events = "customer_id,timestamp,amount\na,1,5\nb,2,7\na,9,3\nc,12,4\n"

    /// A process id that was alive and is not any more.
    func deadPid() throws -> pid_t { try deadProcessID() }

    @Test("when the second rename of a swap fails, the old dataset is put back at its path")
    func failedSwapRestoresTheOldDataset() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("events.csv", Self.events)
        let (first, _) = try importFile(input, into: scratch, dayOptions(cutoff: 10))
        let output = first.outputPath
        let fingerprint = first.manifest.fingerprint
        let temporary = output + ".tmp-new"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        var calls = 0
        #expect(throws: DataError.self) {
            try swapIntoPlace(temporary, output) { from, to in
                calls += 1
                if calls == 2 { throw DataError.io(path: to, operation: "rename from \(from)", message: "injected EIO") }
                try renameItem(from, to)
            }
        }
        #expect(calls == 3, "moved aside, failed, moved back")
        let kept = try CustomerDataset.open(at: URL(fileURLWithPath: output))
        #expect(kept.manifest.fingerprint == fingerprint)
        #expect(!FileManager.default.fileExists(atPath: output + ".old-\(getpid())"))
    }

    @Test("leftovers of killed imports are removed at the next import; a live process's are kept")
    func staleLeftoversAreRemoved() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("events.csv", Self.events)
        let output = scratch.path + "/dataset"
        let dead = try deadPid()
        let staleTemporary = output + ".tmp-\(dead)", staleOld = output + ".old-\(dead)"
        let liveTemporary = output + ".tmp-1"   // pid 1 is always alive
        for directory in [staleTemporary, staleOld, liveTemporary] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            FileManager.default.createFile(atPath: directory + "/features.f32", contents: Data(count: 4096))
        }
        _ = try importFile(input, into: scratch, dayOptions(cutoff: 10))
        #expect(!FileManager.default.fileExists(atPath: staleTemporary))
        #expect(!FileManager.default.fileExists(atPath: staleOld))
        #expect(FileManager.default.fileExists(atPath: liveTemporary))
    }

    @Test("a crash between the two renames is repaired: the old dataset moves back when the path is empty")
    func interruptedSwapIsRepaired() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("events.csv", Self.events)
        let (first, _) = try importFile(input, into: scratch, dayOptions(cutoff: 10))
        let output = first.outputPath
        let old = output + ".old-\(try deadPid())"
        try FileManager.default.moveItem(atPath: output, toPath: old)
        removeStaleLeftovers(of: output)
        #expect(try CustomerDataset.open(at: URL(fileURLWithPath: output)).manifest.fingerprint == first.manifest.fingerprint)
    }

    @Test("a file without line breaks is refused at the line cap, naming the line, without holding the file in memory")
    func endlessLineIsRefused() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("zeros.csv", bytes: [UInt8](repeating: 0, count: maximumLineBytes + 4096))
        do {
            _ = try Importer.run(input: input, output: scratch.path + "/dataset", options: dayOptions(cutoff: 10))
            Issue.record("a line of \(maximumLineBytes + 4096) bytes was accepted")
        } catch let error as DataError {
            #expect(error == .lineTooLong(path: input, line: 1, limit: maximumLineBytes), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/dataset"))
    }

    @Test("ids longer than 256 bytes or holding control characters are rejected rows, as the service refuses them")
    func identifiersFollowTheServiceRules() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let long = String(repeating: "x", count: 300)
        let input = scratch.file("events.csv", "customer_id,timestamp,amount\na,1,5\n\(long),2,7\n\"b\u{1B}[31m\",3,2\nc,12,4\n")
        let (summary, data) = try importFile(input, into: scratch, dayOptions(cutoff: 10, maxReject: 0.6))
        #expect(summary.stats.rejected == 2)
        #expect(try data.customerIDs() == ["a"], "c buys only after the cut-off")
        let reasons = readRejects(summary.rejectsPath).map(\.reason)
        #expect(reasons.contains { $0.contains("300 bytes long") })
        #expect(reasons.contains { $0.contains("control character 0x1b") })
    }
}
