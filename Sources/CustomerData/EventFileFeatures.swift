#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives

/// The event-file options shared by `clm-data import` and the scoring tools, checked and resolved.
public struct EventFileOptions: Sendable {
    public var preset: Preset
    public var format: CSVFormat

    public init(preset: Preset = .canonical, format: CSVFormat = CSVFormat()) {
        self.preset = preset
        self.format = format
    }

    /// Builds the options from command-line values; a mapping option with a non-canonical
    /// preset, or an unusable delimiter, is refused by name.
    public init(
        preset parsedPreset: Preset, timeFormat parsedTimeFormat: TimeFormat = .auto, delimiter: String = ",", whitespace: Bool = false,
        noHeader: Bool = false, customerCol: String? = nil, timeCol: String? = nil, amountCol: String? = nil,
        quantityCol: String? = nil, productCol: String? = nil, orderCol: String? = nil, eventTypeCol: String? = nil
    ) throws {
        let delimiterByte: UInt8
        if delimiter == "tab" || delimiter == "\\t" {
            delimiterByte = 9
        } else {
            guard delimiter.utf8.count == 1, let byte = delimiter.utf8.first, byte != 10, byte != 13, byte != 34 else {
                throw DataError.invalidOption("--delimiter must be one ASCII character other than a quote or line break, got '\(delimiter)'")
            }
            delimiterByte = byte
        }
        let customMapping = [customerCol, timeCol, amountCol, quantityCol, productCol, orderCol, eventTypeCol].contains { $0 != nil }
        if parsedPreset != .canonical && (customMapping || whitespace || noHeader) {
            throw DataError.invalidOption("column mapping options apply to --preset canonical only")
        }
        self.preset = parsedPreset
        format = CSVFormat(
            delimiter: delimiterByte, whitespace: whitespace, header: noHeader ? .absent : .present, timeFormat: parsedTimeFormat,
            mapping: ColumnMapping(
                customer: ColumnRef(argument: customerCol ?? "customer_id"), time: ColumnRef(argument: timeCol ?? "timestamp"),
                amount: ColumnRef(argument: amountCol ?? "amount"), quantity: quantityCol.map(ColumnRef.init(argument:)),
                product: productCol.map(ColumnRef.init(argument:)), order: orderCol.map(ColumnRef.init(argument:)),
                eventType: eventTypeCol.map(ColumnRef.init(argument:))),
            detectOptionalColumns: !customMapping)
    }

    func source(path: String) -> EventSourceKind {
        switch preset {
        case .canonical: return .csv(CSVEventSource(path: path, format: format))
        case .cdnow: return .csv(CSVEventSource(path: path, format: Preset.cdnowFormat))
        case .instacart: return .instacart(InstacartSource(path: path))
        }
    }
}

/// Normalised feature sequences of every customer in an event file as of one day, produced
/// in caller-sized batches for scoring.
///
/// The file is read once (twice when the day has to be found first) through the importer's
/// parser and per-customer aggregates, so memory grows with customers, never with events, and
/// a batch's [B, T, F] features exist only while the caller scores them. The window, periods and
/// normalisation are those of a trained dataset, so the values equal what training saw for
/// the same events and day.
///
/// `fill` and `customerID` only read the sealed aggregates, so several threads may call them at
/// once (batch scoring does); `customerProductGraph` consumes the purchase pairs and belongs to
/// one thread.
public final class EventFileFeatures: @unchecked Sendable {
    /// The training spec with the history window moved to end on `asOfDay`.
    public let spec: FeatureSpec
    public let asOfDay: Int
    public let stats: ReadStats
    /// Customers seen only after `asOfDay`; they have nothing to score and are left out.
    public private(set) var customersWithoutHistory: Int
    private let normalisation: FeatureNormalisation
    private let aggregates: CustomerAggregates
    private let order: [Int32]
    private var graphBuilt = false

    /// Reads `path`; `asOf` nil means the day of the file's last event.
    ///
    /// Rows the importer would reject are skipped and counted in `stats.rejected`; a file with
    /// no importable row is refused.
    ///
    /// `withGraph: false` ignores product ids: no customer–product graph, and much less memory
    /// on an order export, where the customer–product pairs are the largest part.
    public convenience init(path: String, options: EventFileOptions, asOf: Int?, trainedSpec: FeatureSpec,
                            normalisation: FeatureNormalisation, withGraph: Bool = true) throws {
        guard fileExists(path) else { throw DataError.io(path: path, operation: "open", message: "No such file or directory") }
        try Self.check(normalisation)
        let source = options.source(path: path)
        let day: Int
        if let asOf {
            day = asOf
        } else {
            let tracker = LastDayTracker()
            _ = try source.run(sink: tracker, rejects: nil)
            guard tracker.lastDay != .min else { throw Self.noLastDay(path) }
            day = tracker.lastDay
        }
        let window = Self.window(trainedSpec, endingOn: day)
        let aggregates = CustomerAggregates(spec: window, partitions: CustomerAggregates.partitions(forInputBytes: fileSize(path) ?? 0),
                                            countsPairs: withGraph)
        let stats = try source.run(sink: aggregates, rejects: nil)
        guard stats.imported > 0 else {
            throw DataError.noCustomers(path: path, reason: "none of its \(stats.rows) rows is a valid purchase")
        }
        self.init(aggregates: aggregates, stats: stats, normalisation: normalisation)
    }

    /// The same features across the ranks of `exchange`: every rank parses a stripe of `path`
    /// at a time and keeps the customers it owns (a hash of the id picks the rank), so each
    /// rank's instance holds only its own customers, in dataset order; merging the ranks' lists
    /// by id gives one process's order. `stats` and `customersWithoutHistory` are job totals.
    /// The file must be readable at the same path on every rank. Product ids are ignored: a
    /// graph needs every customer in one process.
    package convenience init(path: String, options: EventFileOptions, asOf: Int?, trainedSpec: FeatureSpec,
                             normalisation: FeatureNormalisation, roundBytesPerRank: Int = 16 << 20,
                             exchange: any Communicator) throws {
        let format: CSVFormat = try exchange.onEveryRank("checking the options") {
            try Self.check(normalisation)
            return try options.preset.stripedFormat(custom: options.format, task: "score")
        }
        let file = try StripedEventFile(path: path, format: format, bytesPerRank: roundBytesPerRank, exchange: exchange) {
            guard fileExists(path) else { throw DataError.io(path: path, operation: "open", message: "No such file or directory") }
        }
        let day = try asOf ?? file.lastEventDay(exchange: exchange)
        try exchange.onEveryRank("finding the last event day") {
            guard day != .min else { throw Self.noLastDay(path) }
        }
        let window = Self.window(trainedSpec, endingOn: day)
        let aggregates = CustomerAggregates(
            spec: window, partitions: CustomerAggregates.partitions(forInputBytes: file.fileBytes / exchange.size), countsPairs: false)
        var stats = try file.aggregateOwnedCustomers(into: aggregates, rejects: nil, exchange: exchange)
        let totals = try exchange.allreduceSum([stats.rows, stats.imported, stats.rejected].map { Int64($0) })
        (stats.rows, stats.imported, stats.rejected) = (Int(totals[0]), Int(totals[1]), Int(totals[2]))
        try exchange.onEveryRank("counting the purchases") {
            guard stats.imported > 0 else {
                throw DataError.noCustomers(path: path, reason: "none of its \(stats.rows) rows is a valid purchase")
            }
        }
        self.init(aggregates: aggregates, stats: stats, normalisation: normalisation)
        customersWithoutHistory = Int(try exchange.allreduceSum([Int64(customersWithoutHistory)])[0])
    }

    private init(aggregates: CustomerAggregates, stats: ReadStats, normalisation: FeatureNormalisation) {
        spec = aggregates.spec
        asOfDay = aggregates.spec.cutoffDay
        self.stats = stats
        self.normalisation = normalisation
        self.aggregates = aggregates
        order = aggregates.datasetOrder()
        customersWithoutHistory = aggregates.customerCount - order.count
    }

    private static func check(_ normalisation: FeatureNormalisation) throws {
        guard normalisation.mean.count == customerFeatureNames.count, normalisation.std.count == customerFeatureNames.count else {
            throw DataError.invalidOption("the normalisation statistics have \(normalisation.mean.count) features, this program computes \(customerFeatureNames.count)")
        }
    }

    private static func noLastDay(_ path: String) -> DataError {
        .noCustomers(path: path, reason: "no row could be read as a purchase, so there is no last event day")
    }

    /// The training spec with its history window ending on `day` and no horizon.
    private static func window(_ trainedSpec: FeatureSpec, endingOn day: Int) -> FeatureSpec {
        var window = trainedSpec
        window.cutoffDay = day
        window.horizonDays = 0
        return window
    }

    /// Customers with a purchase on or before `asOfDay`.
    public var customerCount: Int { order.count }
    public var historyLength: Int { spec.historyPeriods }
    public var featureCount: Int { customerFeatureNames.count }

    public func customerID(_ index: Int) -> String { aggregates.customerIDString(Int(order[index])) }
    /// Customer `index`'s id as the bytes the aggregates hold (valid while these features live).
    package func customerIDBytes(_ index: Int) -> UnsafeRawBufferPointer { aggregates.customerID(Int(order[index])) }

    /// The customer–product graph of purchases up to `asOfDay`, its customers in this file's
    /// order (customer node i is `customerID(i)`), its node features z-scored with a trained
    /// dataset's `statistics`. Built once: it consumes the purchase pairs.
    public func customerProductGraph(statistics: DatasetManifest.Graph) throws -> CustomerProductGraph {
        guard aggregates.countsPairs else {
            throw DataError.invalidOption("these features were read without the customer–product pairs (withGraph: false)")
        }
        guard !graphBuilt else {
            throw DataError.invalidOption("the customer–product graph of this event file was already built")
        }
        guard aggregates.products.count > 0 else {
            throw DataError.invalidOption("the events have no product ids, so there is no customer–product graph (map the product column, e.g. --product-col)")
        }
        if let problem = statistics.unusableForScoring {
            throw DataError.invalidOption(problem)
        }
        graphBuilt = true
        return buildCustomerProductGraph(aggregates: aggregates, order: order, statistics: statistics).0
    }

    /// Writes the features of customers `range` into `features` [range.count, T, F] and their
    /// sequence lengths into `lengths`.
    public func fill(_ range: Range<Int>, features: UnsafeMutablePointer<Float>, lengths: UnsafeMutablePointer<Int32>) {
        let size = historyLength * featureCount
        for (position, index) in range.enumerated() {
            let row = features + position * size
            let length = aggregates.rawFeatures(Int(order[index]), into: row)
            normalisation.apply(row, length: length, width: featureCount)
            lengths[position] = Int32(length)
        }
    }
}
