import Foundation
import Testing
@testable import CustomerData

/// What a first import of one's own export needs: a look at the file before importing it, a
/// refusal of a horizon the data does not cover, warnings about labels nothing can be learnt
/// from, and the reasons of a failed import on screen.
@Suite("A first import")
struct FirstImportTests {
    /// Whether customer `customer` buys on day `day` of the export: three days in four, and a
    /// third of the customers stop after day 60 (they churn).
    static func buys(_ customer: Int, _ day: Int) -> Bool {
        (customer + day) % 4 != 0 && (customer % 3 != 0 || day < 60)
    }

    /// A tab-separated export in another layout: `user`, `item`, `rating`, `ts` (Unix seconds),
    /// 30 customers buying every 3 days from 1998-01-01 for 120 days (`buys`).
    static func export(badRows: [String] = []) -> String {
        let start = ByteParsing.daysFromCivil(year: 1998, month: 1, day: 1)
        var rows = ["user\titem\trating\tts"]
        for day in stride(from: 0, to: 120, by: 3) {
            for customer in 0..<30 where buys(customer, day) {
                rows.append("u\(customer)\tm\((customer * 7 + day) % 11)\t\(1 + (customer + day) % 5)\t\((start + day) * 86_400 + 3_600)")
            }
        }
        return (rows + badRows).joined(separator: "\n") + "\n"
    }

    static var exportOptions: ImportOptions {
        var options = ImportOptions()
        options.format = CSVFormat(delimiter: 9, mapping: ColumnMapping(
            customer: .name("user"), time: .name("ts"), amount: .name("rating"), product: .name("item")))
        return options
    }

    static func names(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    // MARK: inspect

    @Test("inspect reports the rows, customers, dates, time format, amounts and rejects by reason, and writes nothing")
    func inspectReportsTheFile() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let bad = ["u1\tm1\t3\t1998-02-01", "u2\tm1\tfive\t883699200", "u3\tm2\t4\tyesterday", "u4\tm2\t4\tnever",
                   "u5\tm3\t4\t-"]
        let input = scratch.file("export.tsv", Self.export(badRows: bad))
        let before = Self.names(in: scratch.path)
        let report = try EventFileInspection.run(input: input, options: Self.exportOptions)
        #expect(Self.names(in: scratch.path) == before, "inspect wrote nothing")

        let start = ByteParsing.daysFromCivil(year: 1998, month: 1, day: 1)
        var goodRows = 0
        for day in stride(from: 0, to: 120, by: 3) { goodRows += (0..<30).filter { Self.buys($0, day) }.count }
        #expect(report.stats.rows == goodRows + bad.count)
        #expect(report.stats.imported == goodRows && report.stats.rejected == bad.count)
        #expect(report.customers == 30 && report.products == 11)
        #expect(report.stats.timeFormat == .unix && report.timeFormatSource == .detected)
        #expect(report.firstEventDay == start && report.lastEventDay == start + 117)
        #expect(report.describe(day: report.lastEventDay!) == "1998-04-28")
        #expect(report.smallestAmount == 1 && report.largestAmount == 5)

        // Four unparsable timestamps count as one reason with its first rows; the amount is another.
        let reasons = report.rejects.reasons
        #expect(reasons.map(\.kind) == ["unparsable ts (format unix)", "unparsable rating"])
        #expect(reasons.map(\.count) == [4, 1])
        let firstBadLine = goodRows + 2 // after the header and the good rows
        #expect(reasons[0].examples.map(\.line) == [firstBadLine, firstBadLine + 2, firstBadLine + 3],
                "the first three offending lines, in file order")
        #expect(reasons[0].examples[0].content == "u1\tm1\t3\t1998-02-01")
        #expect(reasons[0].examples[0].reason == "unparsable ts '1998-02-01' (format unix)")
    }

    @Test("the suggested window fits inside the data, and an import with it passes the horizon check")
    func suggestedWindowImports() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("export.tsv", Self.export())
        let report = try EventFileInspection.run(input: input, options: Self.exportOptions)
        // 117 days of events: the default 273-day horizon does not fit, a third of it in weeks does.
        let suggestion = try #require(report.suggestion)
        #expect(suggestion.shortened && suggestion.horizonDays == 35)
        #expect(suggestion.cutoffDay + suggestion.horizonDays == report.lastEventDay!)
        #expect(suggestion.cutoffDay - report.firstEventDay! >= suggestion.horizonDays)

        var options = Self.exportOptions
        options.cutoffDay = suggestion.cutoffDay
        options.horizonDays = suggestion.horizonDays
        let summary = try Importer.run(input: input, output: scratch.path + "/data", options: options)
        #expect(summary.manifest.labels.churnRate > 0 && summary.manifest.labels.churnRate < 1)
    }

    @Test("a suggestion keeps the horizon asked for when as much history comes before it, and needs two periods")
    func suggestionRules() {
        #expect(EventFileInspection.suggestWindow(firstDay: 0, lastDay: 600, horizon: 273, periodDays: 7)
                == WindowSuggestion(cutoffDay: 327, horizonDays: 273, shortened: false))
        #expect(EventFileInspection.suggestWindow(firstDay: 0, lastDay: 545, horizon: 273, periodDays: 7)
                == WindowSuggestion(cutoffDay: 545 - 175, horizonDays: 175, shortened: true))
        #expect(EventFileInspection.suggestWindow(firstDay: 0, lastDay: 16, horizon: 91, periodDays: 7)
                == WindowSuggestion(cutoffDay: 9, horizonDays: 7, shortened: true))
        #expect(EventFileInspection.suggestWindow(firstDay: 0, lastDay: 13, horizon: 91, periodDays: 7) == nil)
    }

    // MARK: the horizon

    @Test("a cut-off whose horizon runs past the last event is refused naming both dates, and nothing is written",
          arguments: ["1998-04-01", "1998-06-01"])
    func horizonPastTheDataIsRefused(cutoff: String) throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("export.tsv", Self.export())
        var options = Self.exportOptions
        options.cutoffDay = try parseDay(cutoff)
        options.horizonDays = 91
        let before = Self.names(in: scratch.path)
        #expect {
            _ = try Importer.run(input: input, output: scratch.path + "/new/data", options: options)
        } throws: { error in
            guard let error = error as? DataError, case let .horizonPastData(c, days, end, last, latest) = error else { return false }
            let expectedEnd = ByteParsing.isoDate(try! parseDay(cutoff) + 91)
            return c == cutoff && days == 91 && end == expectedEnd && last == "1998-04-28" && latest == "1998-01-27"
                && error.description.contains("ends on \(expectedEnd), after the last event (1998-04-28)")
                && error.description.contains("--allow-partial-horizon")
        }
        #expect(Self.names(in: scratch.path) == before, "nothing written: no temporary directory, not even the new folder")

        options.allowPartialHorizon = true
        let summary = try Importer.run(input: input, output: scratch.path + "/data", options: options)
        #expect(summary.manifest.counts.customers == 30)
    }

    @Test("a horizon that ends exactly on the last event is accepted")
    func horizonEndingOnTheLastEvent() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("export.tsv", Self.export())
        var options = Self.exportOptions
        options.horizonDays = 28
        options.cutoffDay = try parseDay("1998-04-28") - 28
        _ = try Importer.run(input: input, output: scratch.path + "/given", options: options)
        options.cutoffDay = nil
        let derived = try Importer.run(input: input, output: scratch.path + "/derived", options: options)
        #expect(derived.manifest.horizonEndDate == "1998-04-28")
    }

    // MARK: labels

    @Test("labels all the same, or a stage with few customers, are warned about")
    func labelWarnings() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("export.tsv", Self.export())
        var options = Self.exportOptions
        // After the last event: nobody buys in the horizon, so everybody churned.
        options.cutoffDay = try parseDay("1998-06-01")
        options.horizonDays = 28
        options.allowPartialHorizon = true
        let everyone = try Importer.run(input: input, output: scratch.path + "/after", options: options).manifest
        #expect(everyone.labels.churnRate == 1)
        #expect(everyone.constantChurnProblem?.contains("every one of the 30 customers churned") == true)
        #expect(everyone.constantStageProblem?.contains("every one of the 30 customers is in stage") == true)
        #expect(everyone.labelWarnings.count == 2)

        // A horizon inside the data: people buy in it, but 30 customers make every stage small.
        options.cutoffDay = nil
        options.allowPartialHorizon = false
        let small = try Importer.run(input: input, output: scratch.path + "/inside", options: options).manifest
        #expect(small.constantChurnProblem == nil)
        let smallStages = zip(small.stageNames, small.labels.stageCounts).filter { $0.1 < DatasetManifest.smallStageCustomers }
        #expect(!smallStages.isEmpty)
        #expect(small.labelWarnings == smallStages.map { name, count in
            "stage '\(name)' has \(count) customer\(count == 1 ? "" : "s"), fewer than 20: its test split holds too few to measure it by; consider other --stage-thresholds"
        })
    }

    @Test("a dataset of 600 customers with a horizon inside the data gets no warning")
    func noWarningForHealthyLabels() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let events = scratch.path + "/events.csv"
        _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 600, products: 40, seed: 5), to: events)
        let manifest = try Importer.run(input: events, output: scratch.path + "/data", options: ImportOptions()).manifest
        #expect(manifest.labelWarnings.isEmpty, "\(manifest.labelWarnings)")
    }

    // MARK: a failed import

    @Test("an import that rejects too much says the reasons with counts and the first offending line")
    func failedImportShowsReasons() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("export.tsv", Self.export())
        var options = Self.exportOptions
        options.format.timeFormat = .iso // the times are Unix seconds
        options.cutoffDay = try parseDay("1998-03-01")
        options.horizonDays = 28
        do {
            _ = try Importer.run(input: input, output: scratch.path + "/data", options: options)
            Issue.record("an import of unparsable times succeeded")
        } catch let error as DataError {
            guard case let .tooManyRejects(rejected, rows, _, _, reasons) = error else {
                Issue.record("expected tooManyRejects, got \(error)")
                return
            }
            #expect(rejected == rows && reasons.rejectedRows == rows)
            #expect(reasons.reasons.map(\.kind) == ["unparsable ts (format iso)"])
            let text = error.description
            #expect(text.contains("\(rows) rows: unparsable ts (format iso)"), "\(text)")
            #expect(text.contains("line 2: u1\tm7\t2\t883616400"), "\(text)")
            #expect(text.contains("rejects.csv"))
        }
    }

    @Test("with no cut-off and no importable row, the import says the reasons instead of pointing to another run")
    func noCutoffShowsReasons() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let input = scratch.file("export.tsv", Self.export())
        var options = Self.exportOptions
        options.format.timeFormat = .yyyymmdd
        #expect {
            _ = try Importer.run(input: input, output: scratch.path + "/data", options: options)
        } throws: { error in
            guard let error = error as? DataError, case let .noEventForCutoff(_, reasons) = error else { return false }
            return reasons.reasons.count == 1 && reasons.reasons[0].kind == "unparsable ts (format yyyymmdd)"
                && error.description.contains("no cut-off can be derived")
                && error.description.contains("line 2: u1\tm7\t2\t883616400")
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/data"))
    }

    @Test("a reason's kind leaves out the quoted values, and the summary lists the rest in one line")
    func reasonKinds() {
        #expect(RejectSummary.kind(of: "unparsable timestamp '2024-13-01' (format iso)") == "unparsable timestamp (format iso)")
        #expect(RejectSummary.kind(of: "expected 3 fields, found 2") == "expected 3 fields, found 2")
        // An odd number of apostrophes (one inside a value): the reason stays whole.
        #expect(RejectSummary.kind(of: "unparsable amount 'o'brien'") == "unparsable amount 'o'brien'")
        let summary = RejectSummary(reasons: (1...7).reversed().map {
            .init(kind: "reason \($0)", count: $0, examples: [.init(line: $0, reason: "reason \($0)", content: "row \($0)")])
        })
        let lines = summary.lines(reasons: 5, examples: 1, indent: "")
        #expect(lines.first == "7 rows: reason 7")
        #expect(lines[1] == "    line 7: row 7    (reason 7)")
        #expect(lines.last == "3 more rows for 2 other reasons")
    }
}

/// `clm-data` itself, run as a newcomer would: what it prints and how it exits.
@Suite("clm-data on a first export")
struct FirstImportCommandTests {
    struct Outcome {
        var status: Int32
        var output: String
        var errors: String
    }

    /// Runs the `clm-data` that `swift build --build-tests` puts beside the test bundle.
    static func clmData(_ arguments: [String], in directory: String) throws -> Outcome {
        let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let tool = [products, Bundle.main.bundleURL.deletingLastPathComponent()].map { $0.appendingPathComponent("clm-data").path }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        let binary = try #require(tool, "clm-data is not built next to the tests (\(products.path)); run swift build --build-tests")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        // Small outputs: reading both to the end, then waiting, cannot fill a pipe.
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, output: String(decoding: out, as: UTF8.self),
                       errors: String(decoding: err, as: UTF8.self))
    }

    static let layout = ["--delimiter", "tab", "--customer-col", "user", "--time-col", "ts", "--amount-col", "rating", "--product-col", "item"]

    @Test("inspect, then an import past the data refused, then one with the suggested window that warns about small stages")
    func newcomersPath() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        _ = scratch.file("export.tsv", FirstImportTests.export(badRows: ["u1\tm1\t3\t1998-02-01"]))

        let inspect = try Self.clmData(["inspect", "export.tsv"] + Self.layout, in: scratch.path)
        #expect(inspect.status == 0, "\(inspect.errors)")
        #expect(inspect.output.hasPrefix("export.tsv: "), "paths as given: \(inspect.output)")
        #expect(inspect.output.contains("nothing was written"))
        #expect(inspect.output.contains("first event 1998-01-01, last event 1998-04-28 (117 days); time format unix (detected from the rows)"))
        #expect(inspect.output.contains("1 row: unparsable ts (format unix)"))
        #expect(inspect.output.contains("suggested window --cutoff 1998-03-24 --horizon 35"), "\(inspect.output)")
        #expect(FirstImportTests.names(in: scratch.path) == ["export.tsv"])

        let refused = try Self.clmData(["import", "--input", "export.tsv", "--out", "data/ml", "--cutoff", "1998-06-01"] + Self.layout,
                                       in: scratch.path)
        #expect(refused.status == 1)
        #expect(refused.errors.hasPrefix("clm-data: error: the cut-off 1998-06-01 plus the horizon of 273 days ends on 1999-03-01, after the last event (1998-04-28)"),
                "\(refused.errors)")
        #expect(FirstImportTests.names(in: scratch.path) == ["export.tsv"], "nothing written")

        let imported = try Self.clmData(["import", "--input", "export.tsv", "--out", "data/ml", "--cutoff", "1998-03-24", "--horizon", "35",
                                         "--max-reject-fraction", "0.1"] + Self.layout, in: scratch.path)
        #expect(imported.status == 0, "\(imported.errors)")
        let warnings = imported.errors.split(separator: "\n").filter { $0.hasPrefix("WARNING: stage '") }
        #expect(!warnings.isEmpty, "30 customers make small stages: \(imported.errors)")
        #expect(imported.errors.split(separator: "\n").allSatisfy { $0.hasPrefix("WARNING: ") }, "\(imported.errors)")
    }
}
