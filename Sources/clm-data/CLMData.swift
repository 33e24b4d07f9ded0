import ArgumentParser
import Collectives
import CustomerData
import CollectivesMPI
import EventFileArguments
import TextFormatting
import ToolSupport
import Foundation

@main
struct CLMData: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-data",
        abstract: "Inspect an event file, import it into a training dataset, verify datasets, generate synthetic events.",
        subcommands: [Import.self, Inspect.self, Synth.self])
}

extension DataError: UserFacingError {}

func runReporting(_ body: () throws -> Void) throws {
    try reportingUserErrors(tool: "clm-data", body)
}

func formatFixed(_ value: Double, _ decimals: Int) -> String { String(format: "%.\(decimals)f", value) }

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Import an event file into a dataset directory.")

    @Option(help: "The event file.") var input: String
    @Option(help: "The dataset directory to write (replaced atomically if it is a dataset).") var out: String
    @OptionGroup var eventFile: EventFileArguments
    @Option(help: "Last day of history: YYYY-MM-DD, YYYYMMDD or a day number. Default: preset's, else last event day minus the horizon.") var cutoff: String?
    @Option(help: "Outcome window in days after the cut-off (default 273; instacart 91).") var horizon: Int?
    @Option(help: "Days per period (default 7).") var period: Int?
    @Option(help: "History periods per sequence (default 39; instacart 26).") var history: Int?
    @Option(help: "Minimum horizon purchases for occasional, regular, loyal.") var stageThresholds: String = "1,2,4"
    @Option(help: "Seed of the customer split.") var seed: UInt64 = 42
    @Option(help: "Train fraction.") var trainFraction: Double = 0.70
    @Option(help: "Validation fraction (test is the rest).") var validationFraction: Double = 0.15
    @Option(help: "Fail when more than this fraction of rows is rejected.") var maxRejectFraction: Double = 0.01
    @Flag(help: "Import even when the cut-off plus the horizon ends after the last event (customers whose horizon the data does not cover then look churned).")
    var allowPartialHorizon = false
    @Flag(help: "Skip the customer-product graph.") var noGraph = false
    @Option(help: "Customers (and graph nodes) per hashed part of every file: the unit a rank writes and a training rank verifies.")
    var rowsPerPart: Int = DatasetPartLayout.defaultRowsPerPart
    @Option(help: "Cut-offs whose training customers give examples, the main one included (1: the main cut-off only). Validation and test customers stay at the main cut-off.")
    var snapshots: Int = 1
    @Option(help: "Periods between consecutive cut-offs with --snapshots K: training customers also give examples at the cut-offs P, 2P, ..., (K-1)P periods earlier.")
    var snapshotEvery: Int?

    func run() throws {
        try runReporting {
            let parsed = try eventFile.options()
            var options = ImportOptions()
            options.preset = parsed.preset
            options.format = parsed.format
            options.cutoffDay = try cutoff.map { try parseDay($0, option: "--cutoff") }
            options.horizonDays = horizon
            options.periodDays = period
            options.historyPeriods = history
            let thresholds = stageThresholds.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            options.stageThresholds = thresholds
            options.split = SplitOptions(seed: seed, trainFraction: trainFraction, validationFraction: validationFraction)
            options.maxRejectFraction = maxRejectFraction
            options.allowPartialHorizon = allowPartialHorizon
            options.buildGraph = !noGraph
            guard rowsPerPart >= 1 else { throw ValidationError("--rows-per-part must be at least 1, got \(rowsPerPart)") }
            options.rowsPerPart = rowsPerPart
            options.snapshots = snapshots
            options.snapshotEveryPeriods = snapshotEvery
            if launchedAcrossRanks {
                try importAcrossRanks(options)
                return
            }
            let summary = try Importer.run(input: input, output: out, options: options)
            print(describe(summary))
            printWarnings(summary.manifest.labelWarnings)
        }
    }

    /// Under mpirun: every rank parses and aggregates a share and writes its parts; rank 0 reports.
    private func importAcrossRanks(_ options: ImportOptions) throws {
        try runOnEveryRank(tool: "clm-data", userMessage: userFacingMessage) { exchange in
            if let summary = try Importer.run(input: input, output: out, options: options, exchange: exchange) {
                print(describe(summary))
                printWarnings(summary.manifest.labelWarnings)
            }
        }
    }
}

/// Each warning as a line of its own on standard error, starting with WARNING so it stands out.
func printWarnings(_ warnings: [String]) {
    for warning in warnings { FileHandle.standardError.write(Data("WARNING: \(warning)\n".utf8)) }
}

func describe(_ summary: ImportSummary) -> String {
    let m = summary.manifest, s = summary.stats, c = m.counts
    var lines: [String] = []
    lines.append("imported \(summary.outputPath) from \(m.source.input) (preset \(m.source.preset), time format \(m.source.timeFormat))")
    lines.append("  rows read        \(formatCount(s.rows))  (+\(s.headerLines) header, \(s.blankLines) blank lines)")
    lines.append("  imported         \(formatCount(s.imported))")
    lines.append("  rejected         \(formatCount(s.rejected))  -> \(summary.rejectsPath)")
    if s.skippedNonPurchase > 0 { lines.append("  non-purchase     \(formatCount(s.skippedNonPurchase)) (skipped by event_type)") }
    lines.append("  events           history \(formatCount(c.eventsInHistory)), horizon \(formatCount(c.eventsInHorizon)), after horizon \(formatCount(c.eventsAfterHorizon))")
    let window = m.cutoffDate.map { "cut-off \($0) (history from \(m.historyStartDate!), horizon to \(m.horizonEndDate!))" }
        ?? "cut-off day \(m.spec.cutoffDay) (relative days)"
    lines.append("  window           \(window); period \(m.spec.periodDays) d x \(m.spec.historyPeriods), horizon \(m.spec.horizonDays) d")
    lines.append("  customers        \(formatCount(c.customers)) in dataset (\(formatCount(c.customersWithoutHistory)) of \(formatCount(c.customersSeen)) seen have no purchase by the cut-off)")
    lines.append("  products         \(formatCount(c.products))" + (m.graph.map { "; graph \(formatCount($0.customerNodes + $0.productNodes)) nodes, \(formatCount($0.directedEdges / 2)) customer-product pairs" } ?? "; no graph"))
    lines.append("  churn rate       \(formatFixed(m.labels.churnRate * 100, 1))%; mean horizon spend \(formatFixed(m.labels.meanHorizonSpend, 2)) (\(m.source.amountMeaning))")
    let stages = zip(m.stageNames, m.labels.stageCounts).map { "\($0) \(formatCount($1))" }.joined(separator: ", ")
    lines.append("  stages           \(stages)  (thresholds \(m.spec.stageThresholds.map(String.init).joined(separator: "/")))")
    lines.append("  split            train \(formatCount(m.split.sizes[0])), validation \(formatCount(m.split.sizes[1])), test \(formatCount(m.split.sizes[2])) (seed \(m.split.seed))")
    if let snapshots = m.snapshots {
        let cutoffs = snapshots.datasets.map { $0.cutoffDate ?? "day \($0.cutoffDay)" }
        lines.append("  earlier cut-offs \(formatCount(snapshots.customers)) more training examples at \(snapshots.datasets.count) cut-offs every \(snapshots.everyPeriods) periods (\(cutoffs.last!) to \(cutoffs.first!)); validation and test at the main cut-off only")
    }
    let mb = Double(s.bytes) / 1_048_576
    lines.append("  speed            \(formatCount(Int(summary.eventsPerSecond))) events/s, \(formatFixed(mb / max(summary.parseSeconds, 1e-9), 0)) MiB/s parsing \(formatFixed(mb, 1)) MiB (\(summary.passes) pass\(summary.passes > 1 ? "es" : "")); total \(formatFixed(summary.seconds, 2)) s")
    if summary.rankPeakResidentBytes.count > 1 {
        let perRank = summary.rankPeakResidentBytes.map { formatFixed(Double($0) / 1_048_576, 1) }
        lines.append("  peak memory      \(perRank.joined(separator: ", ")) MiB resident on ranks 0-\(perRank.count - 1)")
    } else {
        lines.append("  peak memory      \(formatFixed(Double(summary.peakResidentBytes) / 1_048_576, 1)) MiB resident")
    }
    lines.append("  fingerprint      \(m.fingerprint)")
    return lines.joined(separator: "\n")
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at an event file before importing it (writes nothing), or verify a dataset directory.",
        discussion: """
            An event file is read as `import` would read it, with the same layout flags: rows, customers, \
            the date range, the time format, the amount range, the rejected rows by reason, and a cut-off \
            and horizon that fit inside the data. A dataset directory has its manifest summarised and \
            every file verified.
            """)

    @Argument(help: "An event file, or a dataset directory written by import.") var path: String
    @OptionGroup var eventFile: EventFileArguments
    @Option(help: "The horizon in days to suggest a cut-off for (default 273; instacart 91).") var horizon: Int?
    @Option(help: "Days per period (default 7): a shortened horizon is a whole number of periods.") var period: Int?

    func run() throws {
        try runReporting {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                let parsed = try eventFile.options()
                guard parsed.preset == .canonical && parsed.format == CSVFormat() && horizon == nil && period == nil else {
                    throw ValidationError("\(path) is a dataset directory; the layout, --horizon and --period flags apply to an event file")
                }
                try inspectDataset()
            } else {
                try inspectEventFile()
            }
        }
    }

    private func inspectEventFile() throws {
        let parsed = try eventFile.options()
        var options = ImportOptions()
        options.preset = parsed.preset
        options.format = parsed.format
        options.horizonDays = horizon
        options.periodDays = period
        let report = try EventFileInspection.run(input: path, options: options)
        print(describe(report))
    }

    private func inspectDataset() throws {
        let started = Date()
        let data = try CustomerDataset.open(at: URL(fileURLWithPath: path))
        _ = try data.snapshotDatasets()
        let m = data.manifest, c = m.counts
        print("dataset \(path): format \(m.formatVersion), fingerprint \(m.fingerprint), verified in \(formatFixed(Date().timeIntervalSince(started), 2)) s")
        print("  source          \(m.source.input) (preset \(m.source.preset), time \(m.source.timeFormat); amount = \(m.source.amountMeaning))")
        print("  rows            \(formatCount(c.rows)) read, \(formatCount(c.imported)) imported, \(formatCount(c.rejected)) rejected, \(formatCount(c.skippedNonPurchase)) non-purchase")
        print("  customers       \(formatCount(c.customers)) x \(m.spec.historyPeriods) periods x \(m.featureNames.count) features; products \(formatCount(c.products))")
        print("  window          " + (m.cutoffDate.map { "cut-off \($0), history from \(m.historyStartDate!), horizon to \(m.horizonEndDate!)" } ?? "cut-off day \(m.spec.cutoffDay)") + "; period \(m.spec.periodDays) d, horizon \(m.spec.horizonDays) d")
        print("  features        \(m.featureNames.joined(separator: ", "))")
        print("  labels          churn \(formatFixed(m.labels.churnRate * 100, 1))%, stages " + zip(m.stageNames, m.labels.stageCounts).map { "\($0) \($1)" }.joined(separator: ", "))
        print("  split           train \(m.split.sizes[0]), validation \(m.split.sizes[1]), test \(m.split.sizes[2])")
        if let snapshots = m.snapshots {
            for entry in snapshots.datasets {
                print("  earlier cut-off \(entry.cutoffDate ?? "day \(entry.cutoffDay)")  \(formatCount(entry.customers)) training examples in \(entry.directory)/, fingerprint \(entry.fingerprint)")
            }
        }
        if let g = m.graph {
            print("  graph           \(g.customerNodes) customers + \(g.productNodes) products, \(g.directedEdges) directed edges, \(g.nodeFeatureNames.count) node features")
        }
        for file in m.files { print("  file            \(file.name)  \(file.dtype) \(file.shape)  \(formatCount(file.bytes)) bytes  \(file.contentHash)") }
        printWarnings(m.labelWarnings)
    }
}

func describe(_ report: EventFileReport) -> String {
    let s = report.stats
    var lines: [String] = []
    lines.append("\(report.path): \(formatCount(s.rows)) rows (+\(s.headerLines) header, \(s.blankLines) blank lines); nothing was written")
    lines.append("  rows             \(formatCount(s.imported)) purchases, \(formatCount(s.rejected)) rejected, \(formatCount(s.skippedNonPurchase)) non-purchase")
    lines.append("  customers        \(formatCount(report.customers))" + (report.products.map { "; products \(formatCount($0))" } ?? "; no product column"))
    let format = "time format \(s.timeFormat.rawValue) (\(report.timeFormatSource.rawValue))"
    if let first = report.firstEventDay, let last = report.lastEventDay, let span = report.spanDays {
        lines.append("  dates            first event \(report.describe(day: first)), last event \(report.describe(day: last)) (\(formatCount(span)) days); \(format)")
    } else {
        lines.append("  dates            none: no row could be read as a purchase; \(format)")
    }
    if let smallest = report.smallestAmount, let largest = report.largestAmount {
        lines.append("  amounts          \(formatFixed(smallest, 2)) to \(formatFixed(largest, 2))")
    }
    if !report.rejects.reasons.isEmpty {
        lines.append("  rejected rows by reason (an import lists every one in rejects.csv):")
        lines += report.rejects.lines(reasons: 10, examples: RejectTally.defaultExamples, indent: "    ")
    }
    if let suggestion = report.suggestion, let first = report.firstEventDay, let last = report.lastEventDay {
        let history = suggestion.cutoffDay - first
        var why = "the horizon ends on the last event, after \(formatCount(history)) days of history"
        if suggestion.shortened { why += "; a \(report.horizonAsked)-day horizon would leave less history than horizon" }
        lines.append("  suggested window --cutoff \(report.describe(day: suggestion.cutoffDay)) --horizon \(suggestion.horizonDays)  (\(why))")
        if suggestion.shortened && last - report.horizonAsked > first {
            let cutoff = last - report.horizonAsked
            lines.append("  also inside      --cutoff \(report.describe(day: cutoff)) --horizon \(report.horizonAsked)  (\(formatCount(cutoff - first)) days of history)")
        }
    } else if report.spanDays != nil {
        lines.append("  suggested window none: the events span \(formatCount(report.spanDays ?? 0)) days, fewer than two periods")
    }
    return lines.joined(separator: "\n")
}

struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a synthetic canonical event CSV with learnable structure.")

    @Option(help: "Number of customers.") var customers: Int = 10_000
    @Option(help: "Number of products.") var products: Int = 1_000
    @Option(help: "Seed.") var seed: UInt64 = 1
    @Option(help: "Output CSV path.") var out: String
    @Flag(help: "Write an order export instead: rows in date order, customers drawn uniformly per order (the import benchmark's input, not learnable).")
    var dateOrdered = false
    @Option(help: "Rows of the date-ordered export.") var rows: Int = 10_000_000
    @Option(help: "Most lines per order in the date-ordered export (each order draws 1...N).") var maxLinesPerOrder: Int = 1

    func run() throws {
        try runReporting {
            let summary = dateOrdered
                ? try generateDateOrderedEvents(
                    rows: rows, customers: customers, products: products, seed: seed, maxLinesPerOrder: maxLinesPerOrder, to: out)
                : try generateSyntheticEvents(options: SyntheticOptions(customers: customers, products: products, seed: seed), to: out)
            print("wrote \(out): \(formatCount(summary.customers)) customers, \(formatCount(summary.orders)) orders, \(formatCount(summary.rows)) rows, \(formatFixed(Double(summary.bytes) / 1_048_576, 1)) MiB in \(formatFixed(summary.seconds, 1)) s; peak memory \(formatFixed(Double(peakResidentBytes()) / 1_048_576, 1)) MiB")
        }
    }
}
