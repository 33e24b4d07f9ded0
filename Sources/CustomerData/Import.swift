#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Foundation
import CMemoryHints

/// A known input layout with its defaults.
public enum Preset: String, CaseIterable, Sendable {
    /// `customer_id,timestamp,amount[,quantity,product_id,order_id,event_type]`, or any
    /// delimited file through the column-mapping options.
    case canonical
    /// CDNOW_master.txt: `customer_id date(YYYYMMDD) number_of_cds dollar_value`, whitespace-separated.
    case cdnow
    /// Instacart df_sample.csv: order lines without dates or prices.
    case instacart

    /// The CDNOW layout; its header line is optional (the copy in lifetimes has one).
    public static let cdnowFormat = CSVFormat(
        whitespace: true, header: .auto, timeFormat: .yyyymmdd,
        mapping: ColumnMapping(customer: .index(0), time: .index(1), amount: .index(3), quantity: .index(2)),
        detectOptionalColumns: false)

    /// The CSV layout that ranks read in stripes (`custom` for the canonical preset). Instacart
    /// has none: its reader rebuilds each customer's timeline from the whole file in one
    /// process, so the refusal tells the user to `task` it without mpirun.
    func stripedFormat(custom: CSVFormat, task: String) throws -> CSVFormat {
        switch self {
        case .canonical: return custom
        case .cdnow: return Preset.cdnowFormat
        case .instacart:
            throw DataError.invalidOption("--preset instacart rebuilds each customer's timeline from the whole file in one process; \(task) it without mpirun")
        }
    }
}

/// Everything an import can be told.
public struct ImportOptions: Sendable {
    public var preset: Preset = .canonical
    /// Layout of a canonical or custom-mapped file (ignored by the other presets).
    public var format = CSVFormat()
    /// Last day of history; nil for the preset's default or one derived from the data.
    public var cutoffDay: Int?
    public var periodDays: Int?
    public var historyPeriods: Int?
    public var horizonDays: Int?
    public var stageThresholds = FeatureSpec.defaultStageThresholds
    public var split = SplitOptions()
    public var maxRejectFraction = 0.01
    /// Import even when the cut-off plus the horizon ends after the last event; by default that
    /// is refused, since customers whose horizon the data does not cover look churned.
    public var allowPartialHorizon = false
    public var buildGraph = true
    /// K: cut-offs whose training customers give examples, the main one included (1: the main
    /// cut-off only). See `DatasetManifest.Snapshots`.
    public var snapshots = 1
    /// P: periods between consecutive cut-offs; required when `snapshots` > 1.
    public var snapshotEveryPeriods: Int?
    /// Partitions of the customer aggregation (a power of two); nil picks one from the input's
    /// size (`CustomerAggregates.partitions(forInputBytes:)`). Any value gives the same dataset.
    public var partitions: Int?
    /// Events queued before the partitions are aggregated (tests make it small so that a small
    /// file goes through many rounds). The queue costs about 52 bytes an event at the parse's
    /// peak; see `CustomerAggregates.defaultChunkEvents` for the size chosen.
    var aggregationChunkEvents = CustomerAggregates.defaultChunkEvents
    /// Whether a one-process import aggregates each round of events on a second thread while
    /// it parses the next (see `CustomerAggregates.init`); the dataset is the same either way.
    public var aggregatesWhileParsing = usableProcessorCount() > 1
    /// Bytes of the file each rank parses per round of a multi-rank import before the events
    /// are exchanged; it bounds the memory a round needs. Any value gives the same dataset (tests
    /// make it small so that a small file goes through many rounds).
    public var roundBytesPerRank = 16 << 20
    /// Customer–product pairs, summed over the ranks, that a rank writing products' rows takes
    /// in per round of a multi-rank import (a round holds at least one product); any value
    /// gives the same graph (tests make it small).
    public var pairsPerGather = 65_536
    /// Dataset positions each writing rank takes in per round of a multi-rank import; any
    /// value gives the same dataset (tests make it small).
    public var customersPerRound = 4_096
    /// Customers (and graph nodes) per hashed part of every file (`DatasetPartLayout`): the
    /// unit a writing rank owns and a training rank verifies. It changes the manifest, not
    /// the arrays.
    public var rowsPerPart = DatasetPartLayout.defaultRowsPerPart

    public init() {}

    /// Period, history, horizon and cut-off after applying the preset's defaults; the cut-off
    /// is nil when it has to be derived from the last event.
    func resolvedWindow() -> (period: Int, history: Int, horizon: Int, cutoff: Int?) {
        switch preset {
        case .cdnow:
            return (periodDays ?? 7, historyPeriods ?? 39, horizonDays ?? 273,
                    cutoffDay ?? ByteParsing.daysFromCivil(year: 1997, month: 9, day: 30))
        case .instacart:
            // Every customer's timeline starts at their first order (day 0), so a common cut-off
            // 26 weeks in, with the next 13 weeks as outcome, compares like with like.
            return (periodDays ?? 7, historyPeriods ?? 26, horizonDays ?? 91, cutoffDay ?? 181)
        case .canonical:
            return (periodDays ?? 7, historyPeriods ?? 39, horizonDays ?? 273, cutoffDay)
        }
    }
}

/// Parses a day given on the command line (`--cutoff`, `--as-of`, `--graph-as-of`):
/// `YYYY-MM-DD`, `YYYYMMDD` or a (relative) day number. `option` names the flag in the error.
public func parseDay(_ text: String, option: String = "--cutoff") throws -> Int {
    var copy = text
    let day: Int? = copy.withUTF8 { buffer in
        guard let base = buffer.baseAddress else { return nil }
        return ByteParsing.parseISO(base, buffer.count) ?? ByteParsing.parseCompactDate(base, buffer.count)
            ?? ByteParsing.parseInt(base, buffer.count).map { Int($0) }
    }
    guard let day else { throw DataError.invalidOption("\(option) '\(text)' is not a date (YYYY-MM-DD or YYYYMMDD) or a day number") }
    return day
}

/// What an import did, for the summary line and tests.
public struct ImportSummary: Sendable {
    public var manifest: DatasetManifest
    public var stats: ReadStats
    public var outputPath: String
    public var rejectsPath: String
    /// Wall time of the whole import, and of the final parsing pass alone.
    public var seconds: Double
    public var parseSeconds: Double
    public var passes: Int
    public var peakResidentBytes: Int
    /// Peak resident bytes of each rank of a multi-rank import (empty for one process).
    public var rankPeakResidentBytes: [Int] = []

    /// Rows per second of the final parsing pass (which also aggregates).
    public var eventsPerSecond: Double { parseSeconds > 0 ? Double(stats.rows) / parseSeconds : 0 }
}

/// One of the input kinds behind a common "run a pass over all events" call.
enum EventSourceKind {
    case csv(CSVEventSource)
    case instacart(InstacartSource)

    func run<Sink: EventSink>(sink: Sink, rejects: RejectSink?) throws -> ReadStats {
        switch self {
        case let .csv(source): return try source.run(sink: sink, rejects: rejects)
        case let .instacart(source): return try source.run(sink: sink, rejects: rejects)
        }
    }
}

/// Reads an event file and writes a dataset directory.
public enum Importer {
    /// Imports `input` into the dataset directory `output`, atomically.
    ///
    /// The dataset is assembled in a sibling temporary directory and renamed into place only
    /// when complete; an existing dataset at `output` is replaced, anything else there is left
    /// alone and reported. When the rejected share exceeds `maxRejectFraction`, nothing is
    /// written except the rejects file, moved to `<output>.rejects.csv`.
    public static func run(input: String, output: String, options: ImportOptions) throws -> ImportSummary {
        let started = monotonicSeconds()
        clm_map_blocks_from(importMappedBlockBytes)
        try validate(input: input, output: output, options: options)
        let (source, amountMeaning) = eventSource(input: input, options: options)

        let firstPassRejects = RejectTally()
        let (spec, passes) = try options.featureSpec(input: input, lastDay: {
            let tracker = LastDayTracker()
            _ = try source.run(sink: tracker, rejects: firstPassRejects)
            return tracker.lastDay
        }, rejectsWithoutEvents: { firstPassRejects.summary })

        let newParents = missingParents(of: output)
        let temporary = try makeTemporaryDirectory(for: output)
        var keepTemporary = false
        defer {
            if !keepTemporary {
                removeFlatDirectory(temporary)
                removeEmptyDirectories(newParents)
            }
        }

        let rejects = try RejectsWriter(path: temporary + "/rejects.csv")
        let partitions = try options.resolvedPartitions(inputBytes: fileSize(input) ?? 0)
        let aggregates = CustomerAggregates(spec: spec, partitions: partitions, chunkEvents: options.aggregationChunkEvents,
                                            aggregatesWhileParsing: options.aggregatesWhileParsing)
        let stats = try source.run(sink: aggregates, rejects: rejects)
        try rejects.close()
        try checkRejects(stats, rejects.tally.summary, options: options, temporary: temporary, output: output, input: input)
        aggregates.finishAdding()
        try checkHorizon(spec, lastEventDay: aggregates.lastEventDay, calendar: stats.timeFormat.isCalendar, options: options)

        let datasetSource = sourceInfo(input: input, options: options, stats: stats, amountMeaning: amountMeaning)
        var manifest = try writeDataset(aggregates: aggregates, stats: stats, source: datasetSource,
                                        split: options.split, buildGraph: options.buildGraph, rowsPerPart: options.rowsPerPart,
                                        directory: temporary)
        let plan = try options.snapshotPlan()
        if !plan.isEmpty {
            // Each earlier cut-off reads the events again into aggregates of its own window: the
            // per-customer aggregates hold one cut-off's periods and horizon, and a pass each
            // keeps the memory of one.
            var entries: [DatasetManifest.Snapshots.Entry] = []
            for (j, back) in plan.enumerated() {
                let earlier = ImportOptions.snapshotSpec(spec, periodsBack: back)
                let snapshotAggregates = CustomerAggregates(
                    spec: earlier, partitions: partitions, chunkEvents: options.aggregationChunkEvents, countsPairs: false,
                    aggregatesWhileParsing: options.aggregatesWhileParsing)
                // The same rows as the first pass, so its read counts stand; the event counts are per window.
                _ = try source.run(sink: snapshotAggregates, rejects: nil)
                let name = DatasetManifest.Snapshots.directoryName(j + 1)
                let directory = try makeSnapshotDirectory(name, in: temporary)
                let written = try writeDataset(
                    aggregates: snapshotAggregates, stats: stats, source: datasetSource, split: options.split,
                    buildGraph: false, rowsPerPart: options.rowsPerPart, directory: directory,
                    snapshot: SnapshotRows(normalisation: manifest.normalisation, periodsBack: back))
                try fsyncDirectory(directory)
                entries.append(.init(written, directory: name))
            }
            manifest.snapshots = .init(count: options.snapshots, everyPeriods: plan[0], datasets: entries)
            try writeManifest(&manifest, directory: temporary)
        }
        try publish(temporary, as: output)
        keepTemporary = true

        return ImportSummary(
            manifest: manifest, stats: stats, outputPath: output, rejectsPath: output + "/rejects.csv",
            seconds: monotonicSeconds() - started, parseSeconds: stats.seconds, passes: passes + plan.count,
            peakResidentBytes: peakResidentBytes())
    }

    /// Blocks a one-process import maps on their own (see `clm_map_blocks_from`), so that the
    /// memory of a finished round goes back to the system at once and the peak stays low with
    /// the aggregation on a second thread. Not under mpirun: there the ranks allocate their
    /// exchange buffers every round, and the page faults of fresh mappings would cost more than
    /// glibc's adaptive threshold does.
    static let importMappedBlockBytes = 256 << 10

    /// Checks what can be checked before reading a row.
    static func validate(input: String, output: String, options: ImportOptions) throws {
        try options.split.validate()
        guard options.maxRejectFraction >= 0 && options.maxRejectFraction <= 1 else {
            throw DataError.invalidOption("--max-reject-fraction must be between 0 and 1, got \(options.maxRejectFraction)")
        }
        if fileExists(output) && !(isDirectory(output) && fileExists(output + "/manifest.json")) {
            throw DataError.invalidOption("\(output) exists and is not a dataset directory; refusing to replace it")
        }
        guard fileExists(input) else { throw DataError.io(path: input, operation: "open", message: "No such file or directory") }
        _ = try options.snapshotPlan()
    }

    /// The reader for the preset, and what its amounts mean.
    static func eventSource(input: String, options: ImportOptions) -> (EventSourceKind, String) {
        switch options.preset {
        case .canonical: return (.csv(CSVEventSource(path: input, format: options.format)), "spend in the input's currency")
        case .cdnow: return (.csv(CSVEventSource(path: input, format: Preset.cdnowFormat)), "spend in the input's currency")
        case .instacart:
            return (.instacart(InstacartSource(path: input)), "items (one per order line): the data has no prices")
        }
    }

    /// The cut-off that puts the horizon's end on the last event day; `rejects` says why no
    /// row could be read when there is no last day.
    static func derivedCutoff(lastDay: Int, horizon: Int, input: String, rejects: () throws -> RejectSummary) throws -> Int {
        guard lastDay != .min else { throw DataError.noEventForCutoff(path: input, reasons: try rejects()) }
        return lastDay - horizon
    }

    /// Refuses a window whose horizon ends after the last event (unless the options allow a
    /// partial horizon): a customer's silence after the data ends is not churn.
    static func checkHorizon(_ spec: FeatureSpec, lastEventDay: Int, calendar: Bool, options: ImportOptions) throws {
        let horizonEnd = spec.cutoffDay + spec.horizonDays
        guard horizonEnd > lastEventDay, lastEventDay != .min, !options.allowPartialHorizon else { return }
        throw DataError.horizonPastData(
            cutoff: describeDay(spec.cutoffDay, calendar: calendar), horizonDays: spec.horizonDays,
            horizonEnd: describeDay(horizonEnd, calendar: calendar), lastEvent: describeDay(lastEventDay, calendar: calendar),
            latestCutoff: describeDay(lastEventDay - spec.horizonDays, calendar: calendar))
    }

    /// Creates the empty sibling directory `output.tmp-PID` (and any missing parents of
    /// `output`) in which a dataset is assembled, after removing leftovers of killed imports.
    static func makeTemporaryDirectory(for output: String) throws -> String {
        removeStaleLeftovers(of: output)
        let temporary = output + ".tmp-\(getpid())"
        // A new dataset may live in folders that do not exist yet (runs/demo/data/cdnow).
        var parent = ""
        for component in output.split(separator: "/", omittingEmptySubsequences: false).dropLast() {
            parent += parent.isEmpty && component.isEmpty ? "/" : (parent.isEmpty || parent == "/" ? "" : "/") + component
            guard !parent.isEmpty, parent != "/" else { continue }
            if mkdir(parent, 0o755) != 0 && errno != EEXIST {
                throw DataError.io(path: parent, operation: "mkdir", message: systemMessage())
            }
        }
        removeFlatDirectory(temporary)
        guard mkdir(temporary, 0o755) == 0 else {
            throw DataError.io(path: temporary, operation: "mkdir", message: systemMessage())
        }
        return temporary
    }

    /// Creates `temporary`/`name` for the dataset of an earlier cut-off.
    static func makeSnapshotDirectory(_ name: String, in temporary: String) throws -> String {
        let directory = temporary + "/" + name
        guard mkdir(directory, 0o755) == 0 else {
            throw DataError.io(path: directory, operation: "mkdir", message: systemMessage())
        }
        return directory
    }

    /// The folders above `output` that do not exist yet, deepest last: what
    /// `makeTemporaryDirectory` creates, and a failed import removes again (when still empty).
    static func missingParents(of output: String) -> [String] {
        var missing: [String] = []
        var parent = parentDirectory(output)
        while !parent.isEmpty, parent != "/", parent != ".", !fileExists(parent) {
            missing.insert(parent, at: 0)
            parent = parentDirectory(parent)
        }
        return missing
    }

    /// Removes each of `directories` that is empty, deepest first; a folder that holds anything
    /// (a rejects file kept beside the output) stays.
    static func removeEmptyDirectories(_ directories: [String]) {
        for directory in directories.reversed() { _ = rmdir(directory) }
    }

    /// Throws when nothing usable was read or too many rows were rejected; then only the
    /// rejects file is kept, beside the output as `<output>.rejects.csv`.
    /// `temporary` is nil on ranks that write nothing.
    static func checkRejects(_ stats: ReadStats, _ rejects: RejectSummary, options: ImportOptions, temporary: String?,
                             output: String, input: String) throws {
        let rejectedShare = stats.rows > 0 ? Double(stats.rejected) / Double(stats.rows) : 0
        guard stats.rows == 0 || stats.imported == 0 || rejectedShare > options.maxRejectFraction else { return }
        let kept = output + ".rejects.csv"
        if stats.rejected > 0, let temporary { try renameItem(temporary + "/rejects.csv", kept) }
        if stats.rows == 0 { throw DataError.noCustomers(path: input, reason: "the file has a header but no event rows") }
        if stats.imported == 0 && rejectedShare <= options.maxRejectFraction {
            throw DataError.noCustomers(path: input, reason: "no purchase events (all \(stats.skippedNonPurchase) rows have a non-purchase event_type)")
        }
        throw DataError.tooManyRejects(rejected: stats.rejected, rows: stats.rows, limit: options.maxRejectFraction, rejectsPath: kept,
                                       reasons: rejects)
    }

    static func sourceInfo(input: String, options: ImportOptions, stats: ReadStats, amountMeaning: String) -> DatasetManifest.Source {
        DatasetManifest.Source(
            preset: options.preset.rawValue, input: lastPathComponent(input), timeFormat: stats.timeFormat.rawValue,
            calendarDays: stats.timeFormat.isCalendar, amountMeaning: amountMeaning)
    }

    /// Makes the finished dataset in `temporary` durable and moves it to `output`.
    static func publish(_ temporary: String, as output: String) throws {
        try fsyncDirectory(temporary)
        try swapIntoPlace(temporary, output)
        try fsyncDirectory(parentDirectory(output))
    }
}

extension ImportOptions {
    /// The periods by which each earlier cut-off precedes the main one (P, 2P, …, (K−1)P);
    /// empty for one cut-off.
    func snapshotPlan() throws -> [Int] {
        guard snapshots >= 1 && snapshots <= 1_000 else {
            throw DataError.invalidOption("--snapshots must be between 1 and 1000 cut-offs, got \(snapshots)")
        }
        guard snapshots > 1 else { return [] }
        guard let every = snapshotEveryPeriods else {
            throw DataError.invalidOption("--snapshots \(snapshots) needs --snapshot-every P, the periods between consecutive cut-offs")
        }
        guard every >= 1 else { throw DataError.invalidOption("--snapshot-every must be at least 1 period, got \(every)") }
        return (1..<snapshots).map { $0 * every }
    }

    /// The spec of the cut-off `periodsBack` periods before `spec`'s: the same period grid,
    /// history and horizon lengths, so its examples are built exactly as the main cut-off's.
    static func snapshotSpec(_ spec: FeatureSpec, periodsBack: Int) -> FeatureSpec {
        var earlier = spec
        earlier.cutoffDay = spec.cutoffDay - periodsBack * spec.periodDays
        return earlier
    }

    /// The feature spec of an import of `input` and the passes it reads the file: with no
    /// cut-off, `lastDay` (a first pass over the events) finds the last event day so that the
    /// horizon fits before it, and `rejectsWithoutEvents` says why when that pass found none.
    func featureSpec(
        input: String, lastDay: () throws -> Int, rejectsWithoutEvents: () throws -> RejectSummary
    ) throws -> (spec: FeatureSpec, passes: Int) {
        let window = resolvedWindow()
        var passes = 1
        let cutoff: Int
        if let given = window.cutoff {
            cutoff = given
        } else {
            passes = 2
            cutoff = try Importer.derivedCutoff(lastDay: try lastDay(), horizon: window.horizon, input: input,
                                                rejects: rejectsWithoutEvents)
        }
        let spec = FeatureSpec(periodDays: window.period, historyPeriods: window.history, cutoffDay: cutoff,
                               horizonDays: window.horizon, stageThresholds: stageThresholds)
        try spec.validate()
        return (spec, passes)
    }

    func resolvedPartitions(inputBytes: Int) throws -> Int {
        let partitions = partitions ?? CustomerAggregates.partitions(forInputBytes: inputBytes)
        guard partitions >= 1 && partitions <= 1 << 16 && partitions & (partitions - 1) == 0 else {
            throw DataError.invalidOption("partitions must be a power of two from 1 to 65536, got \(partitions)")
        }
        return partitions
    }
}

/// Moves the finished dataset `temporary` to `output`, replacing any dataset there so that
/// at every moment one whole dataset is at `output` or beside it: the old one is moved aside
/// first, and moved back if the second rename fails (without that, a failed rename left nothing
/// at the path and the old dataset under a `.old-PID` name nothing would look for).
func swapIntoPlace(_ temporary: String, _ output: String, rename: (String, String) throws -> Void = renameItem) throws {
    guard fileExists(output) else {
        try rename(temporary, output)
        return
    }
    let old = output + ".old-\(getpid())"
    try rename(output, old)
    do {
        try rename(temporary, output)
    } catch {
        do {
            try rename(old, output)
        } catch let restoring {
            throw DataError.io(path: output, operation: "swap in the new dataset (\(error)); then restore the old one from \(old)",
                               message: "\(restoring); the old dataset is intact at \(old)")
        }
        throw error
    }
    removeFlatDirectory(old)
}

/// Removes what killed imports to `output` left: `.tmp-PID` directories of processes that are
/// gone (12 killed imports had left 1.2 GB), and `.old-PID` ones, which hold the previous
/// dataset only between the two renames of a swap; if `output` itself is missing (a crash in
/// between), the old dataset is moved back instead of removed.
func removeStaleLeftovers(of output: String) {
    let parent = parentDirectory(output)
    let base = lastPathComponent(output)
    guard let directory = opendir(parent) else { return }
    var names: [String] = []
    while let entry = readdir(directory) {
        names.append(withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        })
    }
    closedir(directory)
    for name in names.sorted() {
        for marker in [".tmp-", ".old-"] where name.hasPrefix(base + marker) {
            guard let pid = pid_t(name.dropFirst(base.count + marker.count)), pid > 0, pid != getpid() else { continue }
            // kill(pid, 0) fails with ESRCH only when no such process exists.
            guard kill(pid, 0) != 0 && errno == ESRCH else { continue }
            let path = parent + "/" + name
            if marker == ".old-" && !fileExists(output) {
                _ = rename(path, output)
            } else {
                removeFlatDirectory(path)
            }
        }
    }
}

func lastPathComponent(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: slash)...])
}

/// The Instacart sample: one row per order line, `days_since_prior_order` instead of dates and
/// no prices.
///
/// A customer's day offset is the running sum of `days_since_prior_order` over their orders in
/// `order_number` order, starting at 0 for their earliest order in the file; every line is
/// one item, and items stand in for spend. Orders must be grouped, so the file is read whole
/// (the sample has 150,000 lines) and replayed sorted by customer and order.
final class InstacartSource {
    let path: String
    private var parsed = false
    private var stats = ReadStats()
    private var rejected: [(line: Int, reason: String, content: [UInt8])] = []
    private let users = ByteInterner()
    private var lines: [(user: Int32, orderNumber: Int32, product: [UInt8], order: UInt64, index: Int32)] = []
    private var eventDays: [Int] = []
    private var order: [Int] = []

    init(path: String) { self.path = path }

    func run<Sink: EventSink>(sink: Sink, rejects: RejectSink?) throws -> ReadStats {
        if !parsed { try parse() }
        let started = monotonicSeconds()
        if let rejects {
            for r in rejected { try r.content.withUnsafeBytes { try rejects.add(line: r.line, reason: r.reason, content: $0) } }
        }
        for k in order {
            let line = lines[k]
            line.product.withUnsafeBytes { product in
                sink.consume(RawEvent(customer: users.bytes(Int(line.user)), day: eventDays[k], amount: 1, quantity: 1,
                                      product: product, orderHash: line.order))
            }
        }
        var result = stats
        result.seconds += monotonicSeconds() - started
        return result
    }

    private func parse() throws {
        let started = monotonicSeconds()
        let splitter = CSVEventSource(path: path, format: CSVFormat())
        var columns: (user: Int, order: Int, number: Int, days: Int, product: Int)?
        var width = 0
        var gaps: [Int64: Double?] = [:] // (user << 32 | order_number) -> days since prior order
        var pending: [(line: Int, content: [UInt8], user: Int32, number: Int32, product: [UInt8], order: UInt64, days: Double?)] = []
        func reject(_ line: Int, _ reason: String, _ p: UnsafePointer<UInt8>, _ n: Int) {
            rejected.append((line, reason, Array(UnsafeBufferPointer(start: p, count: n))))
            stats.rejected += 1
        }
        try forEachLine(path: path) { line, count, lineNumber in
            if count == 0 || (0..<count).allSatisfy({ line[$0] == 32 || line[$0] == 9 }) {
                stats.blankLines += 1
                return
            }
            guard let columns else {
                let header = splitter.splitAll(line, count).map { $0.lowercased() }
                func find(_ name: String) throws -> Int {
                    guard let index = header.firstIndex(of: name) else {
                        throw DataError.missingColumn(path: path, column: name, header: header)
                    }
                    return index
                }
                columns = (try find("user_id"), try find("order_id"), try find("order_number"),
                           try find("days_since_prior_order"), try find("product_id"))
                width = header.count
                stats.headerLines = 1
                return
            }
            stats.rows += 1
            guard String(validating: UnsafeBufferPointer(start: line, count: count), as: UTF8.self) != nil else {
                return reject(lineNumber, "invalid UTF-8", line, count)
            }
            let fields = splitter.splitAll(line, count)
            guard fields.count == width else { return reject(lineNumber, "expected \(width) fields, found \(fields.count)", line, count) }
            let user = fields[columns.user], orderID = fields[columns.order], product = fields[columns.product]
            guard !user.isEmpty else { return reject(lineNumber, "empty user_id", line, count) }
            guard !orderID.isEmpty else { return reject(lineNumber, "empty order_id", line, count) }
            guard !product.isEmpty else { return reject(lineNumber, "empty product_id", line, count) }
            guard let number = Int32(fields[columns.number]), number >= 1 else {
                return reject(lineNumber, "unparsable order_number '\(fields[columns.number].prefix(40))'", line, count)
            }
            var days: Double?
            let daysText = fields[columns.days]
            if !daysText.isEmpty {
                let value = withBytesOf(daysText) { ByteParsing.parseDouble($0, $1) }
                guard let value, value >= 0 else {
                    return reject(lineNumber, "unparsable days_since_prior_order '\(daysText.prefix(40))'", line, count)
                }
                days = value
            }
            let userIndex = withBytesOf(user) { users.intern($0, $1) }
            let orderHash = withBytesOf(orderID) { hashIdentifier($0, $1) } | 1
            pending.append((lineNumber, Array(UnsafeBufferPointer(start: line, count: count)), userIndex, number,
                            Array(product.utf8), orderHash, days))
        } bytesRead: { stats.bytes = $0 }
        guard columns != nil else { throw DataError.emptyFile(path: path) }

        // An order's gap is the first value seen; the earliest order of a customer needs none.
        for p in pending {
            let key = Int64(p.user) << 32 | Int64(p.number)
            if gaps[key] == nil || gaps[key]! == nil { gaps[key] = .some(p.days) }
        }
        var ordersOfUser: [Int32: [Int32]] = [:]
        for key in gaps.keys { ordersOfUser[Int32(key >> 32), default: []].append(Int32(key & 0xFFFF_FFFF)) }
        var offset: [Int64: Int] = [:]
        var missingGap: Set<Int64> = []
        for (user, numbers) in ordersOfUser {
            var day = 0.0
            for (k, number) in numbers.sorted().enumerated() {
                let key = Int64(user) << 32 | Int64(number)
                if k > 0 {
                    guard let gap = gaps[key]!, gap.isFinite else {
                        missingGap.insert(key)
                        continue
                    }
                    day += gap
                }
                offset[key] = Int(day.rounded(.down))
            }
        }
        for p in pending {
            let key = Int64(p.user) << 32 | Int64(p.number)
            if missingGap.contains(key) {
                rejected.append((p.line, "empty days_since_prior_order for order_number \(p.number), which is not the customer's first order", p.content))
                stats.rejected += 1
                continue
            }
            lines.append((p.user, p.number, p.product, p.order, Int32(p.line)))
            eventDays.append(offset[key]!)
        }
        rejected.sort { $0.line < $1.line }
        order = Array(lines.indices).sorted {
            let a = lines[$0], b = lines[$1]
            if a.user != b.user { return users.precedes(Int(a.user), Int(b.user)) }
            if a.orderNumber != b.orderNumber { return a.orderNumber < b.orderNumber }
            return a.index < b.index
        }
        stats.imported = lines.count
        stats.timeFormat = .days
        stats.seconds = monotonicSeconds() - started
        parsed = true
    }
}

func withBytesOf<T>(_ text: String, _ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
    var copy = text
    return copy.withUTF8 { body($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
}
