import Collectives
import CustomerData
import Foundation
import RankTesting

// `clm-data import` across ranks, where every rank writes its parts of every file, must write
// at any rank count the dataset one process writes: every file byte for byte and the same
// fingerprint (which so does not depend on the number of ranks). The inputs are made to hit what a split
// of the file can get wrong: orders of several lines (transactions are counted by comparing
// consecutive order ids), rejected rows whose line numbers must be those of the whole file,
// blank lines, a byte order mark and a header, and rounds so small (4 KiB per rank) that
// customers, orders and products cross many round and rank boundaries.

public func runImportChecks(_ world: any Communicator, _ checks: RankChecks) {
    let rank = world.rank
    let directory: String
    do {
        directory = try world.broadcast(string: rank == 0 ? makeScratchDirectory() : "", root: 0)
    } catch {
        checks.check("import scratch directory") { throw error }
        return
    }
    defer {
        try? world.barrier()
        if rank == 0 { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// The orders file of `name` and import options that read it in 4 KiB rounds.
    func ordersWithFlaws(_ name: String) throws -> (input: String, options: ImportOptions) {
        let input = directory + "/\(name).csv"
        if rank == 0 { try writeOrdersWithFlaws(to: input) }
        try world.barrier()
        var options = ImportOptions()
        options.cutoffDay = try parseDay("2021-06-30")
        // Ends before the file's last order (2021-08-22), as the import requires.
        options.horizonDays = 45
        options.maxRejectFraction = 0.05
        options.roundBytesPerRank = 4096
        return (input, options)
    }

    checks.check("parallel import equals one process: date-ordered multi-line orders, rejects, BOM") {
        var (input, options) = try ordersWithFlaws("orders")
        // Small parts and windows: every rank writes several parts, over many rounds.
        options.pairsPerGather = 7
        options.customersPerRound = 5
        options.rowsPerPart = 7
        try compareWithOneProcess(input: input, name: "orders", options: options, world: world, checks: checks)
    }

    // Routed events go to their owner already sorted by its aggregation partition.
    checks.check("parallel import equals one process: 8 aggregation partitions") {
        var (input, options) = try ordersWithFlaws("orders8")
        options.partitions = 8
        // Fewer parts than ranks at 4 ranks: ranks with nothing to write.
        options.rowsPerPart = 1_000
        try compareWithOneProcess(input: input, name: "orders8", options: options, world: world, checks: checks)
    }

    // Each earlier cut-off is a dataset of the main training customers, written by every rank.
    checks.check("parallel import equals one process: 4 cut-offs 2 periods apart") {
        var (input, options) = try ordersWithFlaws("snapshots")
        options.snapshots = 4
        options.snapshotEveryPeriods = 2
        options.customersPerRound = 5
        options.rowsPerPart = 7
        try compareWithOneProcess(input: input, name: "snapshots", options: options, world: world, checks: checks)
    }

    checks.check("an earlier cut-off before every purchase stops every rank, rank 0 saying which") {
        var (input, options) = try ordersWithFlaws("early")
        options.snapshots = 2
        options.snapshotEveryPeriods = 200
        try expectRefusal("its earlier cut-off precedes every purchase", input: input, output: directory + "/early", options: options,
                          world: world, checks: checks) { error in
            guard case let .noCustomers(_, reason) = error else { return false }
            return reason.contains("earlier cut-off") && reason.contains("200 periods before")
        }
    }

    checks.check("a horizon past the last event stops every rank, rank 0 naming the dates") {
        var (input, options) = try ordersWithFlaws("late")
        options.horizonDays = 91
        try expectRefusal("its horizon ends after the last event", input: input, output: directory + "/late", options: options,
                          world: world, checks: checks) { error in
            guard case let .horizonPastData(cutoff, _, end, last, _) = error else { return false }
            return cutoff == "2021-06-30" && end == "2021-09-29" && last == "2021-08-22"
        }
    }

    checks.check("with no cut-off and no readable row, rank 0 names the reasons gathered from every rank") {
        var (input, options) = try ordersWithFlaws("unreadable")
        options.cutoffDay = nil
        options.format.timeFormat = .unix
        try expectRefusal("no row is readable", input: input, output: directory + "/unreadable", options: options,
                          world: world, checks: checks) { error in
            guard case let .noEventForCutoff(_, reasons) = error else { return false }
            // Every row's date is unparsable in Unix seconds; the first row is line 3, after the
            // header and a blank line.
            return reasons.reasons.map(\.kind) == ["unparsable timestamp (format unix)"] && reasons.rejectedRows > 20_000
                && reasons.reasons[0].examples.map(\.line) == [3, 4, 5]
        }
    }

    checks.check("parallel import equals one process: CDNOW layout, cut-off derived from the data") {
        let input = directory + "/cdnow.txt"
        if rank == 0 { try writeCDNOWStyle(to: input) }
        try world.barrier()
        // The cdnow preset has a fixed cut-off; its layout as a custom format derives one.
        var options = ImportOptions()
        options.format = Preset.cdnowFormat
        options.horizonDays = 120
        options.historyPeriods = 20
        options.roundBytesPerRank = 2048
        options.rowsPerPart = 3
        try compareWithOneProcess(input: input, name: "cdnow", options: options, world: world, checks: checks)
    }

    checks.check("too many rejects stop every rank: no dataset, the rejects kept beside it") {
        let input = directory + "/bad.csv"
        if rank == 0 { try writeOrdersWithFlaws(to: input, badEvery: 7) }
        try world.barrier()
        var options = ImportOptions()
        options.cutoffDay = try parseDay("2021-06-30")
        options.horizonDays = 91
        options.roundBytesPerRank = 4096
        let output = directory + "/bad-parallel"
        do {
            _ = try Importer.run(input: input, output: output, options: options, exchange: world)
            checks.expect(false, "the import succeeded with a seventh of its rows rejected")
        } catch let error as DataError {
            guard case .tooManyRejects(let rejected, let rows, _, _, let reasons) = error else {
                checks.expect(false, "rank 0 expected tooManyRejects, got \(error)")
                return
            }
            checks.expect(rank == 0, "only rank 0 reports the rejects (rank \(rank) threw \(error))")
            checks.expect(rejected > 0 && rejected < rows, "rejected \(rejected) of \(rows)")
            // The reasons gathered from every rank count every rejected row, each with its first line.
            checks.expect(reasons.rejectedRows == rejected, "the reasons count \(reasons.rejectedRows) of \(rejected) rejected rows")
            checks.expect(reasons.reasons.allSatisfy { !$0.examples.isEmpty }, "every reason shows its first row")
            checks.expect(error.description.contains("line \(reasons.reasons.first?.examples.first?.line ?? -1): "),
                          "the message shows the first offending line: \(error.description)")
        } catch is PeerRankFailure {
            checks.expect(rank != 0, "rank 0 must report the reason itself")
        }
        try world.barrier()
        if rank == 0 {
            checks.expect(!FileManager.default.fileExists(atPath: output), "no dataset was written")
            let kept = (try? String(contentsOfFile: output + ".rejects.csv", encoding: .utf8)) ?? ""
            checks.expect(kept.hasPrefix("line,reason,content\n") && kept.split(separator: "\n").count > 100,
                          "the rejects file is kept beside the output")
        }
    }
}

/// Runs a multi-rank import that must fail: rank 0 must throw the `DataError` `accept` takes
/// (and `accept` says whether it is the right one), every other rank a `PeerRankFailure`, and
/// nothing may be written at `output`.
private func expectRefusal(_ what: String, input: String, output: String, options: ImportOptions, world: any Communicator,
                           checks: RankChecks, accept: (DataError) -> Bool) throws {
    do {
        _ = try Importer.run(input: input, output: output, options: options, exchange: world)
        checks.expect(false, "the import succeeded although \(what)")
    } catch let error as DataError {
        checks.expect(world.rank == 0 && accept(error), "rank \(world.rank) threw \(error)")
    } catch is PeerRankFailure {
        checks.expect(world.rank != 0, "rank 0 must report the reason itself")
    }
    try world.barrier()
    if world.rank == 0 { checks.expect(!FileManager.default.fileExists(atPath: output), "no dataset was written") }
}

/// Imports `input` in one process (rank 0) and across the world, and compares every file.
private func compareWithOneProcess(input: String, name: String, options: ImportOptions, world: any Communicator, checks: RankChecks) throws {
    let directory = (input as NSString).deletingLastPathComponent
    let single = directory + "/\(name)-single", parallel = directory + "/\(name)-parallel"
    let reference = world.rank == 0 ? try Importer.run(input: input, output: single, options: options) : nil
    let summary = try Importer.run(input: input, output: parallel, options: options, exchange: world)
    guard world.rank == 0 else {
        checks.expect(summary == nil, "only rank 0 returns a summary")
        return
    }
    guard let reference, let summary else {
        checks.expect(false, "rank 0 returned no summary")
        return
    }
    checks.expectEqual(summary.manifest.fingerprint, reference.manifest.fingerprint, "fingerprint")
    checks.expectEqual(summary.stats.rows, reference.stats.rows, "rows")
    checks.expect(reference.stats.rejected > 0 || name == "cdnow", "the input has rejected rows (\(reference.stats.rejected))")
    checks.expectEqual(summary.rankPeakResidentBytes.count, world.size, "peak memory reported per rank")
    let files = try FileManager.default.contentsOfDirectory(atPath: single).sorted()
    checks.expectEqual(try FileManager.default.contentsOfDirectory(atPath: parallel).sorted(), files, "file names")
    // CDNOW has no products, so no graph.
    checks.expect(files.contains("rejects.csv") && (name == "cdnow") != files.contains("graph_neighbours.i32"),
                  "rejects and (with products) the graph written: \(files)")
    let earlier = summary.manifest.snapshots?.datasets.map(\.directory) ?? []
    checks.expectEqual(earlier.count, options.snapshots - 1, "earlier cut-offs in the manifest")
    for file in files {
        guard !earlier.contains(file) else {
            let inside = try FileManager.default.contentsOfDirectory(atPath: single + "/" + file).sorted()
            checks.expectEqual(try FileManager.default.contentsOfDirectory(atPath: parallel + "/" + file).sorted(), inside, "\(file)/ names")
            checks.expect(inside.contains("features.f32") && !inside.contains("graph_neighbours.i32"), "\(file)/ holds customer files, no graph")
            for name in inside { try compareFile(file + "/" + name, single, parallel, checks) }
            continue
        }
        try compareFile(file, single, parallel, checks)
    }
}

private func compareFile(_ file: String, _ single: String, _ parallel: String, _ checks: RankChecks) throws {
    let a = try Data(contentsOf: URL(fileURLWithPath: single + "/" + file))
    let b = try Data(contentsOf: URL(fileURLWithPath: parallel + "/" + file))
    checks.expect(a == b, "\(file) differs (\(a.count) vs \(b.count) bytes)")
}

private func makeScratchDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "clm-import-checks-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A date-ordered export of 20,000 lines in orders of up to 4 lines, with a BOM, blank lines
/// and, every `badEvery` lines, a row that must be rejected.
private func writeOrdersWithFlaws(to path: String, badEvery: Int = 997) throws {
    let clean = path + ".clean"
    _ = try generateDateOrderedEvents(rows: 20_000, customers: 900, products: 250, seed: 11, maxLinesPerOrder: 4, to: clean,
                                      startDay: ByteParsing.daysFromCivil(year: 2020, month: 1, day: 1), spanDays: 600)
    let lines = try String(contentsOfFile: clean, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
    var out = "\u{FEFF}"
    for (k, line) in lines.enumerated() {
        out += line + "\n"
        if k > 0 && k % badEvery == 0 { out += k % 2 == 0 ? "c\(k),not-a-date,1.0,1,P1,X\(k)\n" : "c\(k),2020-05-01,-3,1,P1,Y\(k)\n" }
        if k % 1500 == 0 { out += "\n" }
    }
    try out.write(toFile: path, atomically: true, encoding: .utf8)
    try FileManager.default.removeItem(atPath: clean)
}

/// CDNOW's layout (id, YYYYMMDD, CDs, dollars; whitespace-separated, no header), customers
/// interleaved in date order, a few unparsable lines.
private func writeCDNOWStyle(to path: String) throws {
    var state: UInt64 = 0x9E37_79B9
    func next(_ bound: Int) -> Int {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Int((state >> 33) % UInt64(bound))
    }
    var out = ""
    let start = ByteParsing.daysFromCivil(year: 1997, month: 1, day: 1)
    for k in 0..<12_000 {
        let day = ByteParsing.isoDate(start + k * 540 / 12_000).replacingOccurrences(of: "-", with: "")
        out += "  \(next(700) + 1) \(day) \(next(3) + 1) \(Double(next(9000)) / 100)\n"
        if k % 2000 == 1999 { out += "garbage line here\n" }
    }
    try out.write(toFile: path, atomically: true, encoding: .utf8)
}
