import Foundation
import Testing
@testable import CustomerData
import Tensors

// MARK: Presets on the hand-written samples

@Test func cdnowPresetImportsTheSample() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var options = ImportOptions()
    options.preset = .cdnow
    let (summary, data) = try importFile(samplePath("cdnow_sample.txt"), into: scratch, options)
    let m = summary.manifest
    // The sample mimics the real file: CRLF, a header line, leading spaces.
    #expect(summary.stats.headerLines == 1 && summary.stats.rows == 29 && summary.stats.rejected == 0)
    #expect(m.cutoffDate == "1997-09-30" && m.historyStartDate == "1997-01-01" && m.horizonEndDate == "1998-06-30")
    #expect(m.source.timeFormat == "yyyymmdd" && m.graph == nil && data.graph == nil)
    // 00006 and 00009 only buy after the cut-off; 00007's 1998-07-01 purchase is past the horizon.
    let ids = try data.customerIDs()
    #expect(ids == ["00001", "00002", "00003", "00004", "00005", "00007", "00008", "00010"])
    #expect(m.counts.customersWithoutHistory == 2 && m.counts.eventsAfterHorizon == 1)
    let byID = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
    func labels(_ id: String) -> (Float, Int32, Float) {
        let i = byID[id]!
        return (data.churn[i], data.stage[i], data.spend[i])
    }
    #expect(labels("00001") == (1, 0, 0))
    #expect(labels("00003").0 == 0 && labels("00003").1 == 2 && abs(labels("00003").2 - 95.40) < 1e-3)
    #expect(labels("00004") == (0, 1, 26.48))
    #expect(labels("00005").1 == 3)
    #expect(labels("00007") == (1, 0, 0))
    // 1997-09-30 is history, 1997-10-01 is the first horizon day.
    #expect(labels("00008") == (0, 1, 5))
    // 00002: two rows on the same day are two transactions of 1 and 5 CDs in period 1.
    let c2 = byID["00002"]!
    #expect(data.lengths[c2] == 38)
    #expect(abs(rawFeature(data, customer: c2, step: 0, feature: 0) - 2) < 1e-4)
    #expect(abs(rawFeature(data, customer: c2, step: 0, feature: 1) - 6) < 1e-4)
    #expect(abs(rawFeature(data, customer: c2, step: 0, feature: 2) - Foundation.log1p(89)) < 1e-4)
}

@Test func instacartPresetBuildsDayOffsetsFromGaps() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var options = ImportOptions()
    options.preset = .instacart
    options.cutoffDay = 30
    options.horizonDays = 30
    options.historyPeriods = 5
    let (summary, data) = try importFile(samplePath("instacart_sample.csv"), into: scratch, options)
    // Offsets: user 1 orders at days 0, 15, 36, 65; user 2 (lines out of order) 0, 8, 15, 45;
    // user 3 0, 3, 7; user 4 0, 30, 36, 38.
    #expect(try data.customerIDs() == ["1", "2", "3", "4"])
    #expect(summary.stats.rows == 26 && summary.stats.rejected == 0)
    #expect(summary.manifest.counts.eventsAfterHorizon == 1)
    #expect(Array(data.churn) == [0, 0, 1, 0])
    #expect(Array(data.stage) == [1, 1, 0, 2])
    // Items stand in for spend: user 1's horizon order has 3 lines.
    #expect(Array(data.spend) == [3, 3, 0, 3])
    #expect(summary.manifest.source.calendarDays == false && summary.manifest.cutoffDate == nil)
    // User 2: orders on days 0 (2 lines), 8 (2 lines), 15 (1 line) → periods 0, 1, 2.
    // Window starts at 30 - 35 + 1 = -4: period 0 is days -4..2, period 1 days 3..9, period 2 days 10..16.
    #expect(data.lengths[1] == 5)
    #expect([0, 1, 2].map { rawFeature(data, customer: 1, step: $0, feature: 1).rounded() } == [2, 2, 1])
    // Graph: products bought up to day 30 only; 20574 (user 2, day 45) and 46667 (user 3, day 7) …
    let g = try #require(data.graph)
    let products = summary.manifest.counts.products
    #expect(g.nodeCount == 4 + products)
    // user 3 bought 17668 (twice) and 196 and 46667: three distinct products.
    #expect(g.degree(of: 2) == 3)
}

// MARK: Bad input

private func importCanonical(_ csv: String, _ scratch: Scratch, maxReject: Double = 1, name: String = "d") throws -> (ImportSummary, CustomerDataset) {
    try importFile(scratch.file(name + ".csv", csv), into: scratch, dayOptions(cutoff: 27, maxReject: maxReject), name: name)
}

private func importCanonical(bytes: [UInt8], _ scratch: Scratch, maxReject: Double = 1, name: String = "d") throws -> (ImportSummary, CustomerDataset) {
    try importFile(scratch.file(name + ".csv", bytes: bytes), into: scratch, dayOptions(cutoff: 27, maxReject: maxReject), name: name)
}

@Test func everyBadRowIsRejectedWithLineAndReason() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let csv = #"""
    customer_id,timestamp,amount
    a,1,10
    b,2
    c,yesterday,5
    d,3,ten
    ,4,5
    e,5,nan
    f,6,1e999
    g,7,-3
    h,8,4,extra
    "i,with comma",9,2.5
    "j ""quoted""",10,1
    "k,unterminated,11,1
    "l"x,12,1
    m,,1
    n,13,

    o,14,inf
    p,15,7
    """#
    let (summary, data) = try importCanonical(csv, scratch)
    #expect(summary.stats.rows == 17)
    #expect(summary.stats.blankLines == 1)
    #expect(summary.stats.imported + summary.stats.rejected == summary.stats.rows)
    let rejects = readRejects(summary.rejectsPath)
    #expect(rejects.count == summary.stats.rejected)
    let expected: [Int: String] = [
        3: "expected 3 fields, found 2", 4: "unparsable timestamp", 5: "unparsable amount", 6: "empty customer_id",
        7: "non-finite amount", 8: "non-finite amount", 9: "negative amount", 10: "expected 3 fields, found 4",
        13: "unterminated quoted field", 14: "unexpected text after the closing quote", 15: "empty timestamp",
        16: "empty amount", 18: "non-finite amount",
    ]
    #expect(Set(rejects.map(\.line)) == Set(expected.keys))
    for reject in rejects {
        #expect(reject.reason.hasPrefix(expected[reject.line] ?? "?"), "line \(reject.line): \(reject.reason)")
    }
    // Quoted fields keep their delimiter and collapse doubled quotes.
    #expect(try data.customerIDs() == ["a", "p", "j \"quoted\"", "i,with comma"])
}

@Test("calendar dates outside 1970-2100 are rejected with the row and the field named; the bounds themselves are kept")
func implausibleDatesAreRejected() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let csv = "customer_id,timestamp,amount\na,2020-05-01,10\nb,0001-01-01,2\nc,9999-12-31,3\nd,2101-01-01,4\ne,1969-12-31T23:00:00Z,5\nf,1970-01-01,6\ng,2100-12-31,7\n"
    var options = dayOptions(cutoff: 18_400, maxReject: 1)
    options.format.timeFormat = .iso
    let (summary, _) = try importFile(scratch.file("d.csv", csv), into: scratch, options, name: "d")
    let rejects = readRejects(summary.rejectsPath)
    #expect(Set(rejects.map(\.line)) == [3, 4, 5, 6], "\(rejects)")
    #expect(summary.stats.imported == 3)
    for reject in rejects {
        #expect(reject.reason.hasPrefix("timestamp '") && reject.reason.hasSuffix("' is outside the plausible dates 1970-01-01 to 2100-12-31"),
                "line \(reject.line): \(reject.reason)")
    }
    #expect(rejects.first { $0.line == 3 }?.reason.contains("'0001-01-01'") == true)
}

@Test("day numbers beyond the span of the plausible dates are rejected, either side of zero; the bounds are kept")
func implausibleDayNumbersAreRejected() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let csv = "customer_id,timestamp,amount\na,10,1\nb,100000,2\nc,-47847,3\nd,47846,4\ne,-47846,5\nf,47847,6\n"
    var options = dayOptions(cutoff: 20, maxReject: 1)
    options.format.timeFormat = .days
    let (summary, _) = try importFile(scratch.file("d.csv", csv), into: scratch, options, name: "d")
    let rejects = readRejects(summary.rejectsPath)
    #expect(Set(rejects.map(\.line)) == [3, 4, 7], "\(rejects)")
    for reject in rejects {
        #expect(reject.reason.hasSuffix("is outside the plausible day numbers -47846 to 47846"), "line \(reject.line): \(reject.reason)")
    }
    #expect(rejects.first { $0.line == 3 }?.reason.contains("'100000'") == true)
}

@Test func quotedIdsCarryTheirDelimiter() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (_, data) = try importCanonical("customer_id,timestamp,amount\n\"x,y\",1,2\n\"say \"\"hi\"\"\" ,2,3\n", scratch)
    #expect(Set(try data.customerIDs()) == ["x,y", "say \"hi\""])
}

@Test func bomCRLFAndInvalidUTF8() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var bytes: [UInt8] = [0xEF, 0xBB, 0xBF]
    bytes += Array("customer_id,timestamp,amount\r\na,1,2\r\n".utf8)
    bytes += Array("b".utf8) + [0xFF, 0xFE] + Array(",2,3\r\n".utf8)
    bytes += Array("c\u{00E9},3,4\r\nd,4,5".utf8) // valid UTF-8 id; no final line break
    let (summary, data) = try importCanonical(bytes: bytes, scratch)
    #expect(summary.stats.headerLines == 1)
    #expect(summary.stats.rows == 4 && summary.stats.imported == 3 && summary.stats.rejected == 1)
    #expect(readRejects(summary.rejectsPath).map(\.line) == [3])
    #expect(readRejects(summary.rejectsPath).first?.reason.hasPrefix("invalid UTF-8 in customer_id") == true)
    #expect(try data.customerIDs() == ["a", "d", "c\u{00E9}"])
}

@Test func emptyFileAndMissingColumnAreClearErrors() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let options = dayOptions(cutoff: 27)
    #expect(throws: DataError.emptyFile(path: scratch.path + "/empty.csv")) {
        try Importer.run(input: scratch.file("empty.csv", ""), output: scratch.path + "/o1", options: options)
    }
    #expect(throws: DataError.emptyFile(path: scratch.path + "/blank.csv")) {
        try Importer.run(input: scratch.file("blank.csv", "\n  \n"), output: scratch.path + "/o2", options: options)
    }
    do {
        _ = try Importer.run(input: scratch.file("nocol.csv", "customer_id,time,amount\na,1,2\n"), output: scratch.path + "/o3", options: options)
        Issue.record("expected a missing-column error")
    } catch let error as DataError {
        #expect(error.description.contains("no column 'timestamp'") && error.description.contains("'time'"))
    }
    #expect(throws: DataError.self) {
        try Importer.run(input: scratch.file("header.csv", "customer_id,timestamp,amount\n"), output: scratch.path + "/o4", options: options)
    }
    for name in ["o1", "o2", "o3", "o4"] { #expect(!FileManager.default.fileExists(atPath: scratch.path + "/" + name)) }
}

@Test func tooManyRejectsWritesNoDataset() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let rows = (0..<99).map { "c\($0),\($0 % 20),1.5" } + ["bad,row"]
    let input = scratch.file("e.csv", "customer_id,timestamp,amount\n" + rows.joined(separator: "\n"))
    // 1 of 100 is exactly the default limit: accepted.
    var options = dayOptions(cutoff: 27, maxReject: 0.01)
    let ok = try Importer.run(input: input, output: scratch.path + "/ok", options: options)
    #expect(ok.stats.rejected == 1)
    options.maxRejectFraction = 0.005
    let out = scratch.path + "/strict"
    do {
        _ = try Importer.run(input: input, output: out, options: options)
        Issue.record("expected too many rejects")
    } catch let error as DataError {
        let reason = "expected 3 fields, found 2"
        #expect(error == .tooManyRejects(
            rejected: 1, rows: 100, limit: 0.005, rejectsPath: out + ".rejects.csv",
            reasons: RejectSummary(reasons: [.init(kind: reason, count: 1, examples: [.init(line: 101, reason: reason, content: "bad,row")])])))
        #expect(error.description.contains("no dataset was written"))
    }
    #expect(!FileManager.default.fileExists(atPath: out))
    #expect(readRejects(out + ".rejects.csv").map(\.line) == [101])
    // No temporary directory is left behind.
    let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.contains(".tmp-") }
    #expect(leftovers.isEmpty)
}

@Test func nonPurchaseEventsAreCountedNotDropped() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let csv = "customer_id,timestamp,amount,event_type\na,1,2,purchase\na,2,3,view\nb,3,4,\nb,4,5,Order\n"
    let (summary, data) = try importCanonical(csv, scratch)
    #expect(summary.stats.rows == 4 && summary.stats.imported == 3 && summary.stats.skippedNonPurchase == 1)
    #expect(data.customerCount == 2)
}

@Test func unsortedInputGivesTheSameDataset() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let summary = try generateSyntheticEvents(options: SyntheticOptions(customers: 300, products: 40, seed: 5), to: scratch.path + "/sorted.csv")
    #expect(summary.rows > 300)
    let text = try String(contentsOfFile: scratch.path + "/sorted.csv", encoding: .utf8)
    var lines = text.split(separator: "\n").map(String.init)
    let header = lines.removeFirst()
    var random = SeededRandom(seed: 9, purpose: .shuffle)
    // Keep each order's lines together (they count as one transaction only when adjacent).
    var orders: [String: [String]] = [:]
    for line in lines { orders[String(line.split(separator: ",").last!), default: []].append(line) }
    var keys = orders.keys.sorted()
    random.shuffle(&keys)
    let shuffled = keys.flatMap { orders[$0]! }
    _ = scratch.file("shuffled.csv", ([header] + shuffled).joined(separator: "\n") + "\n")
    var options = ImportOptions()
    options.maxRejectFraction = 0
    let a = try Importer.run(input: scratch.path + "/sorted.csv", output: scratch.path + "/a", options: options)
    let b = try Importer.run(input: scratch.path + "/shuffled.csv", output: scratch.path + "/b", options: options)
    // Derived cut-off: last day minus the horizon, found by a first pass.
    #expect(a.passes == 2 && a.manifest.spec.cutoffDay == b.manifest.spec.cutoffDay)
    let aFiles = a.manifest.files.map { [$0.name, $0.contentHash] }
    let bFiles = b.manifest.files.map { [$0.name, $0.contentHash] }
    #expect(aFiles == bFiles)
    #expect(a.manifest.fingerprint == b.manifest.fingerprint)
}

@Test("any number of partitions and rounds, aggregated on the parsing thread or beside it, gives the one-pass dataset, byte for byte",
      arguments: [(2, 47, false), (2, 47, true), (16, 999, false), (16, 999, true), (256, 333, true), (1, 1 << 20, true)])
func partitionedAggregationGivesTheSameDataset(partitions: Int, chunkEvents: Int, whileParsing: Bool) throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    // A date-ordered export (customers interleaved, orders of up to 3 lines, quantities of 2).
    let input = scratch.path + "/dated.csv"
    _ = try generateDateOrderedEvents(rows: 6_000, customers: 700, products: 90, seed: 3, maxLinesPerOrder: 3, to: input)
    var options = ImportOptions()
    options.maxRejectFraction = 0
    options.cutoffDay = try parseDay("2021-06-30")
    // The last rows fall in the horizon, so that the last round's rows reach the labels; the
    // horizon ends after them.
    options.horizonDays = 200
    options.allowPartialHorizon = true
    options.partitions = 1
    options.aggregatesWhileParsing = false
    let reference = try Importer.run(input: input, output: scratch.path + "/reference", options: options)
    #expect(reference.manifest.graph != nil && reference.manifest.counts.customers > 600)
    options.partitions = partitions
    options.aggregationChunkEvents = chunkEvents
    options.aggregatesWhileParsing = whileParsing
    let partitioned = try Importer.run(input: input, output: scratch.path + "/partitioned", options: options)
    #expect(partitioned.manifest.files.map { [$0.name, $0.contentHash] } == reference.manifest.files.map { [$0.name, $0.contentHash] })
    #expect(partitioned.manifest.fingerprint == reference.manifest.fingerprint)
    #expect(partitioned.manifest.counts == reference.manifest.counts)
}

@Test("customers are in dataset order, shorter ids first and then bytewise, across the 7- and 8-byte boundary",
      arguments: [1, 8])
func datasetOrderIsByLengthThenBytes(partitions: Int) throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let ids = ["9", "10", "a", "Zz", "1234567", "1234568", "12345678", "12345670", "abcdefgh", "abcdefghij", "é", "ü1",
               "0000000", "00000000", "999999999999"]
    var random = SeededRandom(seed: 5, purpose: .shuffle)
    var rows = ids.flatMap { id in (1...3).map { day in "\(id),\(day),1.5" } }
    random.shuffle(&rows)
    var options = dayOptions(cutoff: 10)
    options.partitions = partitions
    options.aggregationChunkEvents = 7
    let (_, data) = try importFile(scratch.file("ids.csv", "customer_id,timestamp,amount\n" + rows.joined(separator: "\n") + "\n"),
                                   into: scratch, options)
    let expected = ids.sorted { a, b in
        a.utf8.count != b.utf8.count ? a.utf8.count < b.utf8.count : Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8))
    }
    #expect(try data.customerIDs() == expected)
}

@Test func columnMappingReadsOtherLayouts() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let tsv = "when\tvalue\twho\tsku\n1997-01-05T10:00:00Z\t3.5\tx\tp9\n19970106\t1\ty\tp9\n"
    var options = ImportOptions()
    options.format = CSVFormat(delimiter: 9, timeFormat: .iso,
                               mapping: ColumnMapping(customer: .name("who"), time: .name("WHEN"), amount: .name("value"), product: .name("sku")))
    options.cutoffDay = try parseDay("1997-01-31")
    options.maxRejectFraction = 1
    options.allowPartialHorizon = true
    let (summary, data) = try importFile(scratch.file("e.tsv", tsv), into: scratch, options)
    // The YYYYMMDD value is not ISO: rejected with the format named.
    #expect(summary.stats.imported == 1 && summary.stats.rejected == 1)
    #expect(readRejects(summary.rejectsPath).first?.reason.contains("format iso") == true)
    #expect(try data.customerIDs() == ["x"])
    #expect(data.graph?.nodeCount == 2)

    // Headerless, by position, whitespace-separated, Unix seconds.
    let ws = "  u1   852076800  4\n\tu2 852163200\t6.25\n"
    var headerless = ImportOptions()
    headerless.format = CSVFormat(whitespace: true, header: .absent, timeFormat: .unix,
                                  mapping: ColumnMapping(customer: .index(0), time: .index(1), amount: .index(2)))
    headerless.cutoffDay = try parseDay("19970110")
    headerless.maxRejectFraction = 0
    headerless.allowPartialHorizon = true
    let (s2, d2) = try importFile(scratch.file("e.txt", ws), into: scratch, headerless, name: "ws")
    #expect(s2.stats.imported == 2 && s2.manifest.source.timeFormat == "unix")
    #expect(try d2.customerIDs() == ["u1", "u2"])
    // Periods end on the cut-off (Friday 1997-01-10): both purchases fall in 1996-12-28..1997-01-03.
    #expect(Array(d2.lengths) == [2, 2])
}

@Test func compactAggregatesStayExactAndOrderFree() throws {
    // Per-period and per-customer sums are stored narrow with carries, period entries in runs
    // with links, and items only once a quantity other than 1 appears: the same events grouped
    // or interleaved by customer, with sums far past 32 bits and more than 2¹⁶ transactions in
    // one period, must give the same bytes and the exact values.
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var rows: [(String, String)] = [] // (customer, "day,amount,quantity")
    for k in 0..<70_000 { rows.append(("H", "\(21 + k % 7),0.5,")) } // H: 70,000 transactions in period 3
    for day in [1, 9, 15, 22, 23] { rows.append(("A", "\(day),900000,")) } // 9e9 in fixed point per row
    for day in [2, 10, 16, 24] { rows.append(("B", "\(day),1.25,2.5")) } // quantities only for B
    for day in [28, 30, 35] { rows.append(("A", "\(day),900000,")) }
    let header = "customer_id,timestamp,amount,quantity\n"
    let grouped = header + rows.map { "\($0.0),\($0.1)\n" }.joined()
    // Interleaved: B and A alternate (so their period entries need links), H's rows come last and reversed.
    let a = rows.filter { $0.0 == "A" }, b = rows.filter { $0.0 == "B" }, h = rows.filter { $0.0 == "H" }
    var mixed: [(String, String)] = []
    for k in 0..<max(a.count, b.count) {
        if k < b.count { mixed.append(b[k]) }
        if k < a.count { mixed.append(a[k]) }
    }
    mixed += h.reversed()
    let interleaved = header + mixed.map { "\($0.0),\($0.1)\n" }.joined()
    var options = dayOptions(cutoff: 27)
    options.split = SplitOptions(seed: 7, trainFraction: 1, validationFraction: 0)
    let (s1, d1) = try importFile(scratch.file("grouped.csv", grouped), into: scratch, options, name: "g")
    let (s2, _) = try importFile(scratch.file("interleaved.csv", interleaved), into: scratch, options, name: "i")
    #expect(s1.manifest.files.map { [$0.name, $0.contentHash] } == s2.manifest.files.map { [$0.name, $0.contentHash] })
    // Partitioned, in rounds of 1,000 events: carries and links cross round boundaries.
    options.partitions = 4
    options.aggregationChunkEvents = 1_000
    let (s3, _) = try importFile(scratch.path + "/interleaved.csv", into: scratch, options, name: "p")
    #expect(s1.manifest.files.map { [$0.name, $0.contentHash] } == s3.manifest.files.map { [$0.name, $0.contentHash] })

    #expect(try d1.customerIDs() == ["A", "B", "H"])
    // A: one row per period 0..3 plus two in period 3; horizon 28, 30, 35 (three purchases).
    #expect(d1.spend[0] == 2_700_000 && d1.stage[0] == 2)
    // (H's 70,000 make the scale of transactions and items large: compare rounded.)
    #expect(rawFeature(d1, customer: 0, step: 3, feature: 0).rounded() == 2)
    #expect(abs(rawFeature(d1, customer: 0, step: 3, feature: 2) - Foundation.log1p(1_800_000)) < 1e-3)
    #expect(rawFeature(d1, customer: 0, step: 3, feature: 1).rounded() == 2)
    // B: 2.5 items per period.
    #expect(abs(rawFeature(d1, customer: 1, step: 2, feature: 1) - 2.5) < 0.05)
    // H: 70,000 transactions and items in its one period.
    #expect(d1.lengths[2] == 1)
    #expect(rawFeature(d1, customer: 2, step: 0, feature: 0).rounded() == 70_000)
    #expect(rawFeature(d1, customer: 2, step: 0, feature: 1).rounded() == 70_000)
}
