import Collectives
import Foundation
import Tensors

/// Where a customer goes: 0 train, 1 validation, 2 test.
///
/// Decided by hashing the id with a key derived from the seed, so it depends on neither row
/// order nor the other customers, and a customer keeps its split when data is added.
public func splitAssignment(customerID: UnsafeRawBufferPointer, seed: UInt64, trainFraction: Double, validationFraction: Double) -> UInt8 {
    SplitAssigner(SplitOptions(seed: seed, trainFraction: trainFraction, validationFraction: validationFraction)).split(of: customerID)
}

/// `splitAssignment` with its key derived once, for a writer that assigns every customer.
struct SplitAssigner {
    let key: UInt64
    let trainFraction: Double
    let validationFraction: Double

    init(_ options: SplitOptions) {
        key = SeededRandom(seed: options.seed, purpose: .split).state
        trainFraction = options.trainFraction
        validationFraction = options.validationFraction
    }

    @inline(__always)
    func split(of customerID: UnsafeRawBufferPointer) -> UInt8 {
        let h = hashIdentifier(customerID.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, customerID.count, seed: key)
        let u = Double(h >> 11) * (1.0 / 9_007_199_254_740_992.0)
        if u < trainFraction { return 0 }
        if u < trainFraction + validationFraction { return 1 }
        return 2
    }
}

/// Names of the graph node features, in storage order (the same width for both node types).
public let nodeFeatureNames = [
    "log1p_transactions_or_purchases", "log1p_spend_or_distinct_customers", "recency_periods_or_repeat_rate",
    "tenure_periods", "log1p_distinct_products", "is_product",
]

/// How the split is drawn.
public struct SplitOptions: Sendable, Equatable {
    public var seed: UInt64 = 42
    public var trainFraction = 0.70
    public var validationFraction = 0.15

    public init(seed: UInt64 = 42, trainFraction: Double = 0.70, validationFraction: Double = 0.15) {
        self.seed = seed
        self.trainFraction = trainFraction
        self.validationFraction = validationFraction
    }

    func validate() throws {
        guard trainFraction > 0, validationFraction >= 0, trainFraction + validationFraction <= 1 else {
            throw DataError.invalidOption("split fractions must satisfy train > 0, validation >= 0, train + validation <= 1; got \(trainFraction), \(validationFraction)")
        }
    }
}

/// What a dataset's manifest reports about the events behind it, summed over every partition
/// (or rank) that aggregated them.
struct AggregateCounts: Sendable {
    var eventsInHistory = 0
    var eventsInHorizon = 0
    var eventsAfterHorizon = 0
    /// Customers with any event, with or without history.
    var customersSeen = 0

    init(eventsInHistory: Int = 0, eventsInHorizon: Int = 0, eventsAfterHorizon: Int = 0, customersSeen: Int = 0) {
        self.eventsInHistory = eventsInHistory
        self.eventsInHorizon = eventsInHorizon
        self.eventsAfterHorizon = eventsAfterHorizon
        self.customersSeen = customersSeen
    }

    init(_ aggregates: CustomerAggregates) {
        self.init(eventsInHistory: aggregates.eventsInHistory, eventsInHorizon: aggregates.eventsInHorizon,
                  eventsAfterHorizon: aggregates.eventsAfterHorizon, customersSeen: aggregates.customerCount)
    }
}

/// One customer's outputs as the dataset writer takes them: this fixed header, then the raw
/// (unnormalised) feature sequence [T, F], zero-padded. A flat byte layout, so that records
/// computed on the rank that owns a customer travel to the writing rank as they are.
struct CustomerRecordHeader {
    var length: Int32
    var horizonTransactions: Int32
    var horizonSpend: Int64
    var historyTransactions: Double
    var historySpend: Double
    var recencyPeriods: Int32
    var tenurePeriods: Int32

    /// Bytes of one whole record for `spec`.
    static func recordBytes(_ spec: FeatureSpec) -> Int {
        MemoryLayout<CustomerRecordHeader>.stride + spec.historyPeriods * customerFeatureNames.count * MemoryLayout<Float>.stride
    }
}

extension CustomerAggregates {
    /// Writes customer `c`'s record (`CustomerRecordHeader` then raw features) at `record`.
    func writeRecord(_ c: Int, into record: UnsafeMutableRawPointer) {
        let features = (record + MemoryLayout<CustomerRecordHeader>.stride).assumingMemoryBound(to: Float.self)
        let length = rawFeatures(c, into: features)
        let totals = historyTotals(c)
        record.storeBytes(of: CustomerRecordHeader(
            length: Int32(length), horizonTransactions: Int32(clamping: horizonTransactions(c)), horizonSpend: horizonSpend(c),
            historyTransactions: totals.transactions, historySpend: totals.spend,
            recencyPeriods: Int32(clamping: recencyPeriods(c)), tenurePeriods: Int32(clamping: tenurePeriods(c))),
            as: CustomerRecordHeader.self)
    }
}

/// The per-customer inputs of the graph's customer node features, in dataset order.
struct GraphCustomerTotals {
    var transactions: [Double] = []
    var spend: [Double] = []
    var recencyPeriods: [Int32] = []
    var tenurePeriods: [Int32] = []

    mutating func reserve(_ n: Int) {
        transactions.reserveCapacity(n); spend.reserveCapacity(n)
        recencyPeriods.reserveCapacity(n); tenurePeriods.reserveCapacity(n)
    }
}

/// Writes a range of dataset positions of the per-customer files from customer records
/// handed over in dataset order; where they were computed (this process, or the ranks that
/// own the customers) does not change a byte. One process writes every position; a rank of a
/// multi-rank import writes its whole parts (`DatasetPartLayout`) of files every rank shares.
///
/// Each record's raw features are computed once: they go to `features.f32` as they arrive
/// while the normalisation is fitted, and `finish` normalises the range in place.
final class DatasetAssembler {
    let spec: FeatureSpec
    let splitOptions: SplitOptions
    let directory: String
    /// The dataset positions this writer writes.
    let rows: Range<Int>
    let rowsPerPart: Int
    private let width = customerFeatureNames.count
    private let assigner: SplitAssigner
    private let rawFeatures: HashingFileWriter
    private let idsFile, lengthsFile, churnFile, spendFile, stageFile, splitFile: HashingFileWriter
    private var perCustomerFiles: [HashingFileWriter] { [idsFile, lengthsFile, churnFile, spendFile, stageFile, splitFile] }
    // Each touched once or more per customer: see CustomerShard for why exclusivity is
    // unchecked.
    @exclusivity(unchecked) private var lengths: [UInt16] = []
    @exclusivity(unchecked) private(set) var totals = Totals()
    /// The normalisation's sums over each split's customers (each customer's values are
    /// quantised once; training alone, or all three, make the fit).
    @exclusivity(unchecked) private var splitFits: [NormalisationFitter]
    /// Customers of each split in the part being written, recorded with the split column's part.
    @exclusivity(unchecked) private var partSplitSizes = [0, 0, 0]
    @exclusivity(unchecked) private(set) var graphTotals = GraphCustomerTotals()
    private let keepGraphTotals: Bool

    /// What the manifest reports about the labels and the split, as integers so that the
    /// ranks' shares add up to exactly one process's.
    struct Totals: Equatable {
        var splitSizes = [0, 0, 0]
        var stageCounts = [0, 0, 0, 0]
        var churned = 0
        /// Horizon spend in `FixedPoint`.
        var spend: Int128 = 0

        func summed(across world: any Communicator) throws -> Totals {
            let fields = (splitSizes + stageCounts + [churned]).map { Int128($0) } + [spend]
            let sums = try fields.summed(across: world)
            return Totals(splitSizes: sums[0..<3].map { Int($0) }, stageCounts: sums[3..<7].map { Int($0) },
                          churned: Int(sums[7]), spend: sums[8])
        }

        var customers: Int { splitSizes.reduce(0, +) }

        var labels: DatasetManifest.Labels {
            let n = Double(max(customers, 1))
            return .init(churnRate: Double(churned) / n, stageCounts: stageCounts,
                         meanHorizonSpend: Double(spend) / FixedPoint.scale / n)
        }
    }

    /// `idsOffset` nil creates the files (one process, `rows` from 0); otherwise they exist
    /// and this writer writes `rows` of them, its ids from byte `idsOffset` of customer_ids.txt.
    init(spec: FeatureSpec, split: SplitOptions, directory: String, rows: Range<Int>, idsOffset: Int?, rowsPerPart: Int,
         keepGraphTotals: Bool) throws {
        self.spec = spec
        splitOptions = split
        assigner = SplitAssigner(split)
        self.directory = directory
        self.rows = rows
        self.rowsPerPart = max(1, rowsPerPart)
        self.keepGraphTotals = keepGraphTotals
        let shared = idsOffset != nil
        func file(_ name: String, _ elementBytes: Int, hashing: Bool = true) throws -> HashingFileWriter {
            try HashingFileWriter(path: directory + "/" + name, name: name, hashing: hashing,
                                  offset: shared ? rows.lowerBound * elementBytes : nil)
        }
        rawFeatures = try file("features.f32", spec.historyPeriods * width * 4, hashing: false)
        idsFile = try HashingFileWriter(path: directory + "/customer_ids.txt", name: "customer_ids.txt", offset: idsOffset)
        lengthsFile = try file("lengths.i32", 4)
        churnFile = try file("churn.f32", 4)
        spendFile = try file("spend.f32", 4)
        stageFile = try file("stage.i32", 4)
        splitFile = try file("split.u8", 1)
        splitFits = .init(repeating: NormalisationFitter(width: customerFeatureNames.count), count: 3)
        lengths.reserveCapacity(rows.count)
        if keepGraphTotals { graphTotals.reserve(rows.count) }
    }

    var customerCount: Int { lengths.count }

    /// Adds the next customer in dataset order: its id and its record (see `CustomerRecordHeader`).
    func add(id: UnsafeRawBufferPointer, record: UnsafeRawPointer) throws {
        let header = record.loadUnaligned(as: CustomerRecordHeader.self)
        let features = (record + MemoryLayout<CustomerRecordHeader>.stride).assumingMemoryBound(to: Float.self)
        let length = Int(header.length)
        let assigned = assigner.split(of: id)
        try splitFile.write(value: assigned)
        totals.splitSizes[Int(assigned)] += 1
        partSplitSizes[Int(assigned)] += 1
        lengths.append(UInt16(length))
        // Statistics come from training customers only, so validation and test stay unseen;
        // a split without training customers falls back to all of them (`normalisation`).
        splitFits[Int(assigned)].add(features, length: length, width: width)
        try rawFeatures.write(UnsafeBufferPointer(start: features, count: spec.historyPeriods * width))

        try idsFile.write(id)
        try idsFile.write(value: UInt8(10))
        try lengthsFile.write(value: Int32(length))
        let purchases = Int(header.horizonTransactions)
        try churnFile.write(value: Float(purchases == 0 ? 1 : 0))
        totals.churned += purchases == 0 ? 1 : 0
        try spendFile.write(value: Float(FixedPoint.value(header.horizonSpend)))
        totals.spend &+= Int128(header.horizonSpend)
        let stage = spec.stage(forPurchases: purchases)
        try stageFile.write(value: stage)
        totals.stageCounts[Int(stage)] += 1
        if keepGraphTotals {
            graphTotals.transactions.append(header.historyTransactions)
            graphTotals.spend.append(header.historySpend)
            graphTotals.recencyPeriods.append(header.recencyPeriods)
            graphTotals.tenurePeriods.append(header.tenurePeriods)
        }
        if (rows.lowerBound + lengths.count) % rowsPerPart == 0 { endCustomerPart() }
    }

    private func endCustomerPart() {
        for file in perCustomerFiles where file !== splitFile { file.endPart() }
        splitFile.endPart(splitSizes: partSplitSizes)
        partSplitSizes = [0, 0, 0]
    }

    /// The normalisation fitted on the training customers of every writer (all customers when
    /// no writer has one), and whether it fell back to all.
    func normalisation(across world: any Communicator, splitSizes: [Int]) throws -> (FeatureNormalisation, fittedOnAll: Bool) {
        let fitOnAll = splitSizes[0] == 0
        var moments = splitFits[0].moments
        if fitOnAll {
            for fit in splitFits.dropFirst() { for f in moments.indices { moments[f].add(fit.moments[f]) } }
        }
        let fit = NormalisationFitter(moments: try moments.summed(across: world))
        return (fit.result(), fitOnAll)
    }

    /// Normalises this writer's rows of `features.f32` in place and closes every file; returns
    /// the entries of the parts it wrote, in manifest order.
    func finish(normalisation: FeatureNormalisation) throws -> [DatasetFile] {
        precondition(customerCount == rows.count, "\(customerCount) customers added for \(rows.count) rows")
        let n = customerCount
        if (rows.lowerBound + n) % rowsPerPart != 0 { endCustomerPart() }
        _ = try rawFeatures.close(dtype: "f32", shape: [])
        var files = [try normaliseInPlace(normalisation)]
        files.append(try idsFile.close(dtype: "text", shape: [n]))
        files.append(try lengthsFile.close(dtype: "i32", shape: [n]))
        files.append(try churnFile.close(dtype: "f32", shape: [n]))
        files.append(try spendFile.close(dtype: "f32", shape: [n]))
        files.append(try stageFile.close(dtype: "i32", shape: [n]))
        files.append(try splitFile.close(dtype: "u8", shape: [n]))
        return files
    }

    /// Rewrites the raw rows of `features.f32` normalised, a block of rows at a time (never
    /// across a part's end), hashing each part.
    private func normaliseInPlace(_ normalisation: FeatureNormalisation) throws -> DatasetFile {
        let path = directory + "/features.f32"
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw DataError.io(path: path, operation: "open", message: systemMessage()) }
        defer { _ = close(fd) }
        let rowFloats = spec.historyPeriods * width
        let rowsPerBlock = max(1, (4 << 20) / (rowFloats * 4))
        let block = UnsafeMutablePointer<Float>.allocate(capacity: rowsPerBlock * rowFloats)
        defer { block.deallocate() }
        var parts: [DatasetFile.Part] = []
        var hasher = ContentHasher()
        var partBytes = 0
        var row = 0
        while row < customerCount {
            let position = rows.lowerBound + row
            let partEnd = (position / rowsPerPart + 1) * rowsPerPart
            let count = min(rowsPerBlock, customerCount - row, partEnd - position)
            let bytes = count * rowFloats * 4
            let offset = off_t(position * rowFloats * 4)
            try readFully(fd, path, UnsafeMutableRawPointer(block), bytes, at: offset)
            for k in 0..<count {
                normalisation.apply(block + k * rowFloats, length: Int(lengths[row + k]), width: width)
            }
            let raw = UnsafeRawBufferPointer(start: block, count: bytes)
            hasher.update(raw)
            partBytes += bytes
            try writeFully(fd, path, raw, at: offset)
            row += count
            if position + count == partEnd || row == customerCount {
                parts.append(DatasetFile.Part(bytes: partBytes, hash: ContentHasher.hex(hasher.finalize())))
                hasher = ContentHasher()
                partBytes = 0
            }
        }
        guard fsync(fd) == 0 else { throw DataError.io(path: path, operation: "fsync", message: systemMessage()) }
        return DatasetFile(name: "features.f32", parts: parts, dtype: "f32", shape: [customerCount, spec.historyPeriods, width])
    }
}

private func readFully(_ fd: Int32, _ path: String, _ base: UnsafeMutableRawPointer, _ count: Int, at offset: off_t) throws {
    var done = 0
    while done < count {
        let n = pread(fd, base + done, count - done, offset + off_t(done))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw DataError.io(path: path, operation: "read", message: n == 0 ? "file ended early" : systemMessage()) }
        done += n
    }
}

private func writeFully(_ fd: Int32, _ path: String, _ bytes: UnsafeRawBufferPointer, at offset: off_t) throws {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, offset + off_t(done))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw DataError.io(path: path, operation: "write", message: systemMessage()) }
        done += n
    }
}

/// What sets the dataset of an earlier cut-off (`DatasetManifest.Snapshots`) apart from a main
/// one: it holds only the customers of the main training split, and its features are normalised
/// with the main cut-off's statistics, so that its rows and the main rows are one population to
/// the model and the main dataset's validation and test rows stay what they are for one cut-off.
struct SnapshotRows {
    var normalisation: FeatureNormalisation
    /// Periods before the main cut-off, for the error when no customer qualifies.
    var periodsBack: Int

    /// Keeps, of customers in dataset order, those the main split puts in training.
    func training(_ order: [Int32], split: SplitOptions, id: (Int32) -> UnsafeRawBufferPointer) -> [Int32] {
        let assigner = SplitAssigner(split)
        return order.filter { assigner.split(of: id($0)) == 0 }
    }

    func empty(spec: FeatureSpec, source: DatasetManifest.Source) -> DataError {
        DataError.noCustomers(path: source.input, reason: "no training customer has a purchase on or before the earlier cut-off \(describeDay(spec.cutoffDay, calendar: source.calendarDays)) (\(periodsBack) periods before the main one); give fewer --snapshots or a smaller --snapshot-every")
    }
}

/// Turns aggregates into the files of a dataset inside `directory` (which must exist and be
/// empty apart from rejects.csv) and returns the manifest it wrote. With `snapshot`, the
/// dataset of an earlier cut-off: training customers only, no graph, the given normalisation.
func writeDataset(
    aggregates: CustomerAggregates, stats: ReadStats, source: DatasetManifest.Source,
    split splitOptions: SplitOptions, buildGraph: Bool, rowsPerPart: Int, directory: String, snapshot: SnapshotRows? = nil
) throws -> DatasetManifest {
    let spec = aggregates.spec
    aggregates.finishAdding()
    var order = aggregates.datasetOrder()
    if let snapshot {
        order = snapshot.training(order, split: splitOptions) { aggregates.customerID(Int($0)) }
        guard !order.isEmpty else { throw snapshot.empty(spec: spec, source: source) }
    }
    guard !order.isEmpty else { throw noHistory(spec: spec, source: source) }
    let withGraph = buildGraph && snapshot == nil && aggregates.products.count > 0
    let assembler = try DatasetAssembler(spec: spec, split: splitOptions, directory: directory, rows: 0..<order.count,
                                         idsOffset: nil, rowsPerPart: rowsPerPart, keepGraphTotals: withGraph)
    let record = UnsafeMutableRawPointer.allocate(byteCount: CustomerRecordHeader.recordBytes(spec), alignment: 16)
    defer { record.deallocate() }
    try order.withUnsafeBufferPointer { order in
        for (k, c) in order.enumerated() {
            aggregates.prefetchForWriting(order, at: k)
            aggregates.writeRecord(Int(c), into: record)
            try assembler.add(id: aggregates.customerID(Int(c)), record: record)
        }
    }
    let counts = AggregateCounts(aggregates)
    // Only the graph reads the aggregates from here on, and only their pairs: the customer
    // records are freed first so that the graph's arrays do not come on top of them.
    aggregates.releaseCustomerRecords()
    let graphTotals = assembler.graphTotals
    let totals = assembler.totals
    let (normalisation, fitOnAll) = try snapshot.map { ($0.normalisation, false) }
        ?? assembler.normalisation(across: SingleProcessCommunicator(), splitSizes: totals.splitSizes)
    // The customer files' last pass (normalising the features in place, fsyncs) and the graph
    // share nothing, so they run at once.
    let (customerFiles, (graphFiles, graphInfo)) = try runAlongside({ try assembler.finish(normalisation: normalisation) }) {
        () throws -> ([DatasetFile], DatasetManifest.Graph?) in
        guard withGraph else { return ([], nil) }
        var position = [Int32](repeating: -1, count: aggregates.customerCount)
        for (p, c) in order.enumerated() { position[Int(c)] = Int32(p) }
        let (graph, info) = buildCustomerProductGraph(
            customerCount: order.count, products: aggregates.products,
            forEachPair: { last, body in aggregates.forEachPair(releasing: last) { c, p, count in body(position[Int(c)], p, count) } },
            totals: graphTotals, statistics: nil)
        return (try writeGraphFiles(graph, directory: directory, rowsPerPart: rowsPerPart), info)
    }
    return try finishDataset(
        DatasetContents(spec: spec, splitOptions: splitOptions, rowsPerPart: rowsPerPart, totals: totals,
                        normalisation: normalisation, fittedOnAll: fitOnAll, files: customerFiles + graphFiles, graph: graphInfo),
        counts: counts, stats: stats, source: source, directory: directory)
}

func noHistory(spec: FeatureSpec, source: DatasetManifest.Source) -> DataError {
    DataError.noCustomers(path: source.input, reason: "no customer has a purchase on or before the cut-off \(describeDay(spec.cutoffDay, calendar: source.calendarDays)); nothing to write (check --cutoff and --time-format)")
}

/// The graph's four files, in the order the manifest lists them, each cut into the parts of
/// `DatasetPartLayout`.
func writeGraphFiles(_ graph: CustomerProductGraph, directory: String, rowsPerPart: Int) throws -> [DatasetFile] {
    let nodes = graph.csr.nodeCount
    let layout = DatasetPartLayout(rowsPerPart: rowsPerPart, customers: graph.customerNodes, products: nodes - graph.customerNodes)
    let ranges = graphElementRanges(layout: layout, offsets: { graph.csr.offsets[$0] }, width: nodeFeatureNames.count)
    return [
        try writeArray(graph.csr.offsets.map { Int64($0) }, directory, "graph_offsets.i64", "i64", [nodes + 1], parts: ranges.offsets),
        try writeArray(graph.csr.neighbours, directory, "graph_neighbours.i32", "i32", [graph.csr.edgeCount], parts: ranges.edges),
        try writeArray(graph.csr.weights, directory, "graph_weights.f32", "f32", [graph.csr.edgeCount], parts: ranges.edges),
        try writeArray(graph.nodeFeatures, directory, "node_features.f32", "f32", [nodes, nodeFeatureNames.count],
                       parts: ranges.nodeFeatures),
    ]
}

/// Everything about a dataset's files that its manifest records besides the input's counts:
/// what one process has at the end of its import, and what rank 0 of a multi-rank import
/// assembles from every rank's share.
struct DatasetContents {
    var spec: FeatureSpec
    var splitOptions: SplitOptions
    var rowsPerPart: Int
    var totals: DatasetAssembler.Totals
    var normalisation: FeatureNormalisation
    var fittedOnAll: Bool
    /// Customer files then graph files, in manifest order, with all their parts.
    var files: [DatasetFile]
    var graph: DatasetManifest.Graph?
}

/// Writes the manifest of `contents`' files into `directory` and returns it.
func finishDataset(
    _ contents: DatasetContents, counts: AggregateCounts, stats: ReadStats, source: DatasetManifest.Source, directory: String
) throws -> DatasetManifest {
    let spec = contents.spec
    let n = contents.totals.customers
    let splitOptions = contents.splitOptions
    let calendar = source.calendarDays
    var manifest = DatasetManifest(
        formatVersion: DatasetManifest.currentFormatVersion,
        source: source,
        counts: .init(rows: stats.rows, imported: stats.imported, rejected: stats.rejected,
                      skippedNonPurchase: stats.skippedNonPurchase, blankLines: stats.blankLines, headerLines: stats.headerLines,
                      eventsInHistory: counts.eventsInHistory, eventsInHorizon: counts.eventsInHorizon,
                      eventsAfterHorizon: counts.eventsAfterHorizon, customersSeen: counts.customersSeen,
                      customers: n, customersWithoutHistory: counts.customersSeen - n, products: contents.graph?.productNodes ?? 0),
        spec: spec,
        cutoffDate: calendar ? ByteParsing.isoDate(spec.cutoffDay) : nil,
        historyStartDate: calendar ? ByteParsing.isoDate(spec.windowStartDay) : nil,
        horizonEndDate: calendar ? ByteParsing.isoDate(spec.cutoffDay + spec.horizonDays) : nil,
        featureNames: customerFeatureNames,
        normalisation: contents.normalisation,
        stageNames: FeatureSpec.stageNames,
        labels: contents.totals.labels,
        split: .init(seed: splitOptions.seed, fractions: [splitOptions.trainFraction, splitOptions.validationFraction,
                                                          1 - splitOptions.trainFraction - splitOptions.validationFraction],
                     sizes: contents.totals.splitSizes, statisticsFittedOnAllCustomers: contents.fittedOnAll),
        graph: contents.graph,
        files: contents.files,
        rowsPerPart: contents.rowsPerPart,
        fingerprint: "")
    try writeManifest(&manifest, directory: directory)
    return manifest
}

/// Sets `manifest`'s fingerprint and writes it as `directory`/manifest.json (replacing one
/// written before, as an import with earlier cut-offs does once their datasets are known).
func writeManifest(_ manifest: inout DatasetManifest, directory: String) throws {
    manifest.fingerprint = manifest.computeFingerprint()
    let json = try manifest.encoded()
    let manifestFile = try HashingFileWriter(path: directory + "/manifest.json", name: "manifest.json")
    try json.withUnsafeBytes { try manifestFile.write($0) }
    _ = try manifestFile.close(dtype: "text", shape: [])
}

/// Writes `values` as the file `name`, hashed in `parts` (element ranges, in order, covering
/// every value).
func writeArray<T: BitwiseCopyable>(
    _ values: [T], _ directory: String, _ name: String, _ dtype: String, _ shape: [Int], parts: [Range<Int>]
) throws -> DatasetFile {
    let writer = try HashingFileWriter(path: directory + "/" + name, name: name)
    try values.withUnsafeBufferPointer { values in
        for part in parts {
            try writer.write(UnsafeBufferPointer(rebasing: values[part]))
            writer.endPart()
        }
    }
    return try writer.close(dtype: dtype, shape: shape)
}

func describeDay(_ day: Int, calendar: Bool) -> String {
    calendar ? ByteParsing.isoDate(day) : "day \(day)"
}

/// The bipartite customer–product graph with its node features.
public struct CustomerProductGraph: Sendable {
    /// Customers 0..<customerNodes (dataset order), then products sorted by id.
    public var csr: CSRGraph
    /// [customers + products, nodeFeatureNames.count], z-scored per node type.
    public var nodeFeatures: [Float]
    public var customerNodes: Int
    /// The id of product node `customerNodes + k` at index k.
    public var productIDs: [String]
}

/// Builds one symmetric CSR over customers (0..<C, dataset order) and products (C..<C+P, sorted
/// by id) from purchases up to the cut-off; each node's neighbours are sorted by id.
///
/// `statistics` nil fits the z-scores to this graph (importing); scoring passes the trained
/// dataset's, so a model reads features on the scale it was trained on.
func buildCustomerProductGraph(
    aggregates: CustomerAggregates, order: [Int32], statistics: DatasetManifest.Graph?
) -> (CustomerProductGraph, DatasetManifest.Graph) {
    var position = [Int32](repeating: -1, count: aggregates.customerCount)
    var totals = GraphCustomerTotals()
    totals.reserve(order.count)
    for (p, c) in order.enumerated() {
        let customer = Int(c)
        position[customer] = Int32(p)
        let history = aggregates.historyTotals(customer)
        totals.transactions.append(history.transactions)
        totals.spend.append(history.spend)
        totals.recencyPeriods.append(Int32(clamping: aggregates.recencyPeriods(customer)))
        totals.tenurePeriods.append(Int32(clamping: aggregates.tenurePeriods(customer)))
    }
    return buildCustomerProductGraph(
        customerCount: order.count, products: aggregates.products,
        forEachPair: { last, body in aggregates.forEachPair(releasing: last) { c, p, count in body(position[Int(c)], p, count) } },
        totals: totals, statistics: statistics)
}

/// The graph from its parts: `forEachPair` calls its argument with every customer–product pair
/// (customer as dataset position, product as an index of `products`, purchase count), in any
/// order. It is called twice, the second time with `last` set: it may free the pairs as that
/// read goes, so that the graph's arrays never sit beside all of them (on the 10M-row
/// date-ordered file the pairs are 70 MB and the arrays 140 MB). `totals` holds the customers'
/// history totals.
func buildCustomerProductGraph(
    customerCount: Int, products: ByteInterner,
    forEachPair: (_ last: Bool, _ body: (_ position: Int32, _ product: Int32, _ count: Int32) -> Void) -> Void,
    totals: GraphCustomerTotals, statistics: DatasetManifest.Graph?
) -> (CustomerProductGraph, DatasetManifest.Graph) {
    let (productOrder, productPosition) = productPositions(products)
    let productCount = productOrder.count
    let nodes = customerCount + productCount

    // Counting sort by customer, then each customer's list sorted by product.
    var degree = [Int](repeating: 0, count: nodes + 1)
    forEachPair(false) { u, p, _ in
        degree[Int(u) + 1] += 1
        degree[customerCount + Int(productPosition[Int(p)]) + 1] += 1
    }
    for v in 0..<nodes { degree[v + 1] += degree[v] }
    let offsets = degree
    let edgeCount = offsets[nodes]
    // Left unwritten until filled, customer half then product half (every slot once): a page
    // becomes resident only as it is written, while the second read frees the pairs, so the
    // pairs and the whole CSR are never resident together.
    var neighbours = [Int32](unsafeUninitializedCapacity: edgeCount) { _, count in count = edgeCount }
    var weights = [Float](unsafeUninitializedCapacity: edgeCount) { _, count in count = edgeCount }
    var cursor = offsets
    forEachPair(true) { u, p, count in
        let slot = cursor[Int(u)]
        neighbours[slot] = Int32(customerCount) + productPosition[Int(p)]
        weights[slot] = Float(count)
        cursor[Int(u)] += 1
    }
    // Everything below reads the customer half of the CSR; the pairs are gone.
    for u in 0..<customerCount {
        let range = offsets[u]..<offsets[u + 1]
        // Products by id. Most customers have a handful, sorted in place by insertion: sorting
        // a copy of every row allocated an array per customer. Long rows (a reseller's) get the
        // library sort, whose cost does not grow with the square of the row.
        if range.count > 32 {
            var pairs = range.map { (neighbours[$0], weights[$0]) }
            pairs.sort { $0.0 < $1.0 }
            for (k, slot) in range.enumerated() { (neighbours[slot], weights[slot]) = pairs[k] }
        } else {
            neighbours.withUnsafeMutableBufferPointer { n in
                weights.withUnsafeMutableBufferPointer { w in
                    var i = range.lowerBound + 1
                    while i < range.upperBound {
                        let neighbour = n[i], weight = w[i]
                        var j = i
                        while j > range.lowerBound && n[j - 1] > neighbour {
                            n[j] = n[j - 1]
                            w[j] = w[j - 1]
                            j -= 1
                        }
                        n[j] = neighbour
                        w[j] = weight
                        i += 1
                    }
                }
            }
        }
        // Walking customers in order leaves every product's list sorted by customer.
        for slot in range {
            let productNode = Int(neighbours[slot])
            let target = cursor[productNode]
            neighbours[target] = Int32(u)
            weights[target] = weights[slot]
            cursor[productNode] += 1
        }
    }
    let csr = CSRGraph(offsets: offsets, neighbours: neighbours, weights: weights)
    let productPurchases = (0..<productCount).map { p in
        var purchases = 0.0
        for slot in offsets[customerCount + p]..<offsets[customerCount + p + 1] { purchases += Double(weights[slot]) }
        return purchases
    }
    let (features, info) = graphNodeFeatures(
        customerDegree: { csr.degree(of: $0) }, productPurchases: productPurchases,
        productCustomers: { csr.degree(of: customerCount + $0) }, edgeCount: edgeCount, totals: totals, statistics: statistics)
    let productIDs = productOrder.map { products.string(Int($0)) }
    return (CustomerProductGraph(csr: csr, nodeFeatures: features, customerNodes: customerCount, productIDs: productIDs), info)
}

/// Products sorted by id (the graph's product node order): `order[k]` is the product index of
/// node k, `position[p]` the node of product index p.
func productPositions(_ products: ByteInterner) -> (order: [Int32], position: [Int32]) {
    var order = (0..<Int32(products.count)).map { $0 }
    order.sort { products.precedes(Int($0), Int($1)) }
    var position = [Int32](repeating: -1, count: order.count)
    for (k, p) in order.enumerated() { position[Int(p)] = Int32(k) }
    return (order, position)
}

/// The node features, z-scored per node type, and the graph's manifest entry, from per-node
/// totals: customers `0..<totals.transactions.count` (dataset order), then products by id.
func graphNodeFeatures(
    customerDegree: (Int) -> Int, productPurchases: [Double], productCustomers: (Int) -> Int, edgeCount: Int,
    totals: GraphCustomerTotals, statistics: DatasetManifest.Graph?
) -> (features: [Float], info: DatasetManifest.Graph) {
    let customerCount = totals.transactions.count, productCount = productPurchases.count
    let nodes = customerCount + productCount
    let width = nodeFeatureNames.count
    var features = [Float](repeating: 0, count: nodes * width)
    features.withUnsafeMutableBufferPointer { features in
        for position in 0..<customerCount {
            writeCustomerNodeFeatures(totals, position, degree: customerDegree(position), into: features.baseAddress! + position * width)
        }
        for p in 0..<productCount {
            writeProductNodeFeatures(purchases: productPurchases[p], customers: productCustomers(p),
                                     into: features.baseAddress! + (customerCount + p) * width)
        }
    }
    var customerStats: NodeStandardisation, productStats: NodeStandardisation
    if let statistics {
        customerStats = NodeStandardisation(mean: statistics.customerFeatureMean, std: statistics.customerFeatureStd)
        productStats = NodeStandardisation(mean: statistics.productFeatureMean, std: statistics.productFeatureStd)
    } else {
        customerStats = NodeStandardisation(NodeStandardisation.moments(features, rows: 0..<customerCount, columns: customerNodeColumns))
        productStats = NodeStandardisation(NodeStandardisation.moments(features, rows: customerCount..<nodes, columns: productNodeColumns))
    }
    customerStats.apply(&features, rows: 0..<customerCount)
    productStats.apply(&features, rows: customerCount..<nodes)
    let info = graphInfo(customers: customerCount, products: productCount, edges: edgeCount, customerStats: customerStats,
                         productStats: productStats)
    return (features, info)
}

func graphInfo(customers: Int, products: Int, edges: Int, customerStats: NodeStandardisation, productStats: NodeStandardisation)
    -> DatasetManifest.Graph {
    DatasetManifest.Graph(
        customerNodes: customers, productNodes: products, directedEdges: edges, nodeFeatureNames: nodeFeatureNames,
        customerFeatureMean: customerStats.mean, customerFeatureStd: customerStats.std,
        productFeatureMean: productStats.mean, productFeatureStd: productStats.std)
}

/// The node-feature columns z-scored for each node type (the rest are constant or flags).
let customerNodeColumns = 0..<5
let productNodeColumns = 0..<3

/// Customer node `position`'s unscaled features (`nodeFeatureNames`).
@inline(__always)
func writeCustomerNodeFeatures(_ totals: GraphCustomerTotals, _ position: Int, degree: Int, into row: UnsafeMutablePointer<Float>) {
    row[0] = Float(log1p(totals.transactions[position]))
    row[1] = Float(log1p(max(0, totals.spend[position])))
    row[2] = Float(totals.recencyPeriods[position])
    row[3] = Float(totals.tenurePeriods[position])
    row[4] = Float(log1p(Double(degree)))
    row[5] = 0
}

/// A product node's unscaled features from its purchases (summed edge weights) and its
/// distinct customers.
@inline(__always)
func writeProductNodeFeatures(purchases: Double, customers: Int, into row: UnsafeMutablePointer<Float>) {
    let distinct = Double(customers)
    row[0] = Float(log1p(purchases))
    row[1] = Float(log1p(distinct))
    // Share of purchases that repeat an earlier purchase by the same customer.
    row[2] = purchases > 0 ? Float((purchases - distinct) / purchases) : 0
    row[3] = 0
    row[4] = 0
    row[5] = 1
}

/// The z-score of one node type's columns (`columns`, from 0), fitted from exact moments so
/// that ranks that each hold some of the nodes fit the statistics one process fits.
struct NodeStandardisation {
    var mean: [Double]
    var std: [Double]

    init(mean: [Double], std: [Double]) {
        self.mean = mean
        self.std = std
    }

    /// Constant columns (and no nodes) are only centred.
    init(_ moments: [ExactMoments]) {
        mean = moments.map(\.mean)
        std = moments.map { $0.count == 0 ? 1 : ($0.variance.squareRoot() > 1e-6 ? $0.variance.squareRoot() : 1) }
    }

    static func moments(_ features: [Float], rows: Range<Int>, columns: Range<Int>) -> [ExactMoments] {
        let width = nodeFeatureNames.count
        var moments = [ExactMoments](repeating: ExactMoments(), count: columns.count)
        for row in rows {
            for column in columns { moments[column].add(features[row * width + column]) }
        }
        return moments
    }

    func apply(_ features: inout [Float], rows: Range<Int>) {
        let width = nodeFeatureNames.count
        features.withUnsafeMutableBufferPointer { features in
            for row in rows {
                for k in 0..<mean.count {
                    features[row * width + k] = Float((Double(features[row * width + k]) - mean[k]) / std[k])
                }
            }
        }
    }
}
