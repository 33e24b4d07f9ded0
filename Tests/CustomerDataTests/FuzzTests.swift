import Foundation
import Testing
import Tensors
@testable import CustomerData

/// Every row must end up imported, rejected (and listed) or skipped, whatever the bytes.
@discardableResult
private func checkAccounting(_ path: String, _ scratch: Scratch, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) -> ReadStats? {
    var options = ImportOptions()
    options.cutoffDay = 100
    options.periodDays = 7
    options.historyPeriods = 5
    options.horizonDays = 30
    options.format.timeFormat = .days
    options.maxRejectFraction = 1
    // Random days end anywhere; the horizon check is not what these files test.
    options.allowPartialHorizon = true
    let out = scratch.path + "/" + name
    do {
        let summary = try Importer.run(input: path, output: out, options: options)
        let s = summary.stats
        #expect(s.imported + s.rejected + s.skippedNonPurchase == s.rows, sourceLocation: sourceLocation)
        #expect(readRejectsCount(summary.rejectsPath) == s.rejected, sourceLocation: sourceLocation)
        let data = try CustomerDataset.open(at: URL(fileURLWithPath: out))
        #expect(data.customerCount == summary.manifest.counts.customers, sourceLocation: sourceLocation)
        for length in data.lengths { #expect(length >= 1 && length <= 5, sourceLocation: sourceLocation) }
        for value in data.features { #expect(value.isFinite, sourceLocation: sourceLocation) }
        return s
    } catch let error as DataError {
        // Clean refusals are fine; what matters is that they are errors, not crashes.
        switch error {
        case .emptyFile, .missingColumn, .noCustomers, .tooManyRejects: break
        default: Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Counts rows of a rejects file by parsing its quoting (reasons and contents may hold commas,
/// quotes and, after lossy decoding, anything else except a raw line break).
private func readRejectsCount(_ path: String) -> Int {
    guard let data = FileManager.default.contents(atPath: path) else { return -1 }
    var rows = 0
    var inQuotes = false
    for byte in data {
        if byte == 34 { inQuotes.toggle() } else if byte == 10 && !inQuotes { rows += 1 }
    }
    return rows - 1 // header
}

@Test func randomBytesNeverCrashTheImporter() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var random = SeededRandom(seed: 2024, purpose: .synthesis)
    let alphabet = Array("customer_id,timestamp,amount\n\r\"0123456789.-e ,\t".utf8) + [0, 0xFF, 0xC3, 0xEF, 0xBB, 0xBF]
    var imported = 0
    for trial in 0..<60 {
        var bytes: [UInt8] = trial % 2 == 0 ? Array("customer_id,timestamp,amount\n".utf8) : []
        let length = random.nextIndex(below: 2000)
        while bytes.count < length {
            if random.nextUnitFloat() < 0.3 {
                // A plausible row now and then, so that garbage and good rows interleave.
                bytes += Array("c\(random.nextIndex(below: 9)),\(random.nextIndex(below: 130)),\(random.nextIndex(below: 99)).5\n".utf8)
            }
            // Mostly bytes that look like CSV, some fully random.
            bytes.append(random.nextUnitFloat() < 0.8 ? alphabet[random.nextIndex(below: alphabet.count)] : UInt8(random.nextIndex(below: 256)))
        }
        let path = scratch.file("random\(trial).csv", bytes: bytes)
        if let stats = checkAccounting(path, scratch, "r\(trial)") { imported += stats.imported }
    }
    // The generator is not so hostile that nothing ever parses.
    #expect(imported > 0)
}

@Test func mutatedValidRowsAreImportedOrRejected() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var random = SeededRandom(seed: 77, purpose: .synthesis)
    let valid = (0..<300).map { "c\($0 % 37),\($0 % 120),\(Double($0 % 50) + 0.25),\($0 % 3 + 1),p\($0 % 11),o\($0)" }
    let replacements: [String] = ["", ",", "\"", "\"\"", "nan", "-1", "1e400", "\u{FEFF}", "x", " ", "\r", "9999999999999", "1e20"]
    for trial in 0..<20 {
        var lines = ["customer_id,timestamp,amount,quantity,product_id,order_id"]
        var mutated = 0
        for line in valid {
            var bytes = Array(line.utf8)
            if random.nextUnitFloat() < 0.3 {
                mutated += 1
                switch random.nextIndex(below: 4) {
                case 0: bytes.remove(at: random.nextIndex(below: bytes.count))
                case 1: bytes.insert(UInt8(random.nextIndex(below: 256)), at: random.nextIndex(below: bytes.count + 1))
                case 2:
                    let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                    var changed = fields
                    changed[random.nextIndex(below: fields.count)] = replacements[random.nextIndex(below: replacements.count)]
                    bytes = Array(changed.joined(separator: ",").utf8)
                default: bytes[random.nextIndex(below: bytes.count)] ^= UInt8(1 << random.nextIndex(below: 8))
                }
            }
            lines.append(String(decoding: bytes, as: UTF8.self))
        }
        #expect(mutated > 0)
        let path = scratch.file("mutated\(trial).csv", lines.joined(separator: "\n"))
        let stats = checkAccounting(path, scratch, "m\(trial)")
        // Most mutations break a row; some (a flipped digit) leave a valid one.
        #expect(stats.map { $0.rejected > 0 && $0.rejected <= mutated && $0.imported >= 300 - mutated } == true)
    }
}
