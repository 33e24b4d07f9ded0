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

/// Writes the per-customer files of a dataset from customer records handed over in dataset
/// order; where they were computed (this process, or the ranks that own the customers) does
/// not change a byte.
///
/// Each record's raw features are computed once: they go to `features.f32` as they arrive
/// while the normalisation is fitted, and `finish` normalises the file in place.
final class DatasetAssembler {
    let spec: FeatureSpec
    let splitOptions: SplitOptions
    let directory: String
    private let width = customerFeatureNames.count
    private let assigner: SplitAssigner
    private let rawFeatures: HashingFileWriter
    private let idsFile, lengthsFile, churnFile, spendFile, stageFile: HashingFileWriter
    // Each touched once or more per customer: see CustomerShard for why exclusivity is
    // unchecked.
    @exclusivity(unchecked) private var split: [UInt8] = []
    @exclusivity(unchecked) private var lengths: [UInt16] = []
    @exclusivity(unchecked) private(set) var splitSizes = [0, 0, 0]
    @exclusivity(unchecked) private var trainingFit: NormalisationFitter
    @exclusivity(unchecked) private var allFit: NormalisationFitter
    @exclusivity(unchecked) private(set) var stageCounts = [0, 0, 0, 0]
    @exclusivity(unchecked) private var churned = 0
    @exclusivity(unchecked) private var totalSpend = 0.0
    @exclusivity(unchecked) private(set) var graphTotals = GraphCustomerTotals()
    private let keepGraphTotals: Bool

    init(spec: FeatureSpec, split: SplitOptions, directory: String, expectedCustomers: Int, keepGraphTotals: Bool) throws {
        self.spec = spec
        splitOptions = split
        assigner = SplitAssigner(split)
        self.directory = directory
        self.keepGraphTotals = keepGraphTotals
        rawFeatures = try HashingFileWriter(path: directory + "/features.f32", name: "features.f32", hashing: false)
        idsFile = try HashingFileWriter(path: directory + "/customer_ids.txt", name: "customer_ids.txt")
        lengthsFile = try HashingFileWriter(path: directory + "/lengths.i32", name: "lengths.i32")
        churnFile = try HashingFileWriter(path: directory + "/churn.f32", name: "churn.f32")
        spendFile = try HashingFileWriter(path: directory + "/spend.f32", name: "spend.f32")
        stageFile = try HashingFileWriter(path: directory + "/stage.i32", name: "stage.i32")
        trainingFit = NormalisationFitter(width: customerFeatureNames.count)
        allFit = NormalisationFitter(width: customerFeatureNames.count)
        self.split.reserveCapacity(expectedCustomers)
        lengths.reserveCapacity(expectedCustomers)
        if keepGraphTotals { graphTotals.reserve(expectedCustomers) }
    }

    var customerCount: Int { split.count }

    /// Adds the next customer in dataset order: its id and its record (see `CustomerRecordHeader`).
    func add(id: UnsafeRawBufferPointer, record: UnsafeRawPointer) throws {
        let header = record.loadUnaligned(as: CustomerRecordHeader.self)
        let features = (record + MemoryLayout<CustomerRecordHeader>.stride).assumingMemoryBound(to: Float.self)
        let length = Int(header.length)
        let assigned = assigner.split(of: id)
        split.append(assigned)
        splitSizes[Int(assigned)] += 1
        lengths.append(UInt16(length))
        // Statistics come from training customers only, so validation and test stay unseen;
        // a split without training customers falls back to all of them (see `finish`).
        if assigned == 0 { trainingFit.add(features, length: length, width: width) }
        allFit.add(features, length: length, width: width)
        try rawFeatures.write(UnsafeBufferPointer(start: features, count: spec.historyPeriods * width))

        try idsFile.write(id)
        try idsFile.write(value: UInt8(10))
        try lengthsFile.write(value: Int32(length))
        let purchases = Int(header.horizonTransactions)
        try churnFile.write(value: Float(purchases == 0 ? 1 : 0))
        churned += purchases == 0 ? 1 : 0
        let horizonSpend = FixedPoint.value(header.horizonSpend)
        try spendFile.write(value: Float(horizonSpend))
        totalSpend += horizonSpend
        let stage = spec.stage(forPurchases: purchases)
        try stageFile.write(value: stage)
        stageCounts[Int(stage)] += 1
        if keepGraphTotals {
            graphTotals.transactions.append(header.historyTransactions)
            graphTotals.spend.append(header.historySpend)
            graphTotals.recencyPeriods.append(header.recencyPeriods)
            graphTotals.tenurePeriods.append(header.tenurePeriods)
        }
    }

    /// Normalises `features.f32` in place and closes every file; returns their manifest
    /// entries, the normalisation, and whether it was fitted on all customers.
    typealias FinishedFiles = (files: [DatasetFile], normalisation: FeatureNormalisation, fittedOnAll: Bool)

    func finish() throws -> FinishedFiles {
        let n = customerCount
        let fitOnAll = splitSizes[0] == 0
        let normalisation = (fitOnAll ? allFit : trainingFit).result()
        _ = try rawFeatures.close(dtype: "f32", shape: [])
        var files = [try normaliseInPlace(normalisation)]
        files.append(try idsFile.close(dtype: "text", shape: [n]))
        files.append(try lengthsFile.close(dtype: "i32", shape: [n]))
        files.append(try churnFile.close(dtype: "f32", shape: [n]))
        files.append(try spendFile.close(dtype: "f32", shape: [n]))
        files.append(try stageFile.close(dtype: "i32", shape: [n]))
        files.append(try writeArray(split, directory, "split.u8", "u8", [n]))
        return (files, normalisation, fitOnAll)
    }

    var labels: DatasetManifest.Labels {
        let n = Double(max(customerCount, 1))
        return .init(churnRate: Double(churned) / n, stageCounts: stageCounts, meanHorizonSpend: totalSpend / n)
    }

    /// Rewrites the raw rows of `features.f32` normalised, a block of rows at a time, hashing
    /// what it writes.
    private func normaliseInPlace(_ normalisation: FeatureNormalisation) throws -> DatasetFile {
        let path = directory + "/features.f32"
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw DataError.io(path: path, operation: "open", message: systemMessage()) }
        defer { _ = close(fd) }
        let rowFloats = spec.historyPeriods * width
        let rowsPerBlock = max(1, (4 << 20) / (rowFloats * 4))
        let block = UnsafeMutablePointer<Float>.allocate(capacity: rowsPerBlock * rowFloats)
        defer { block.deallocate() }
        var hasher = ContentHasher()
        var row = 0
        while row < customerCount {
            let rows = min(rowsPerBlock, customerCount - row)
            let bytes = rows * rowFloats * 4
            let offset = off_t(row * rowFloats * 4)
            try readFully(fd, path, UnsafeMutableRawPointer(block), bytes, at: offset)
            for k in 0..<rows {
                normalisation.apply(block + k * rowFloats, length: Int(lengths[row + k]), width: width)
            }
            let raw = UnsafeRawBufferPointer(start: block, count: bytes)
            hasher.update(raw)
            try writeFully(fd, path, raw, at: offset)
            row += rows
        }
        guard fsync(fd) == 0 else { throw DataError.io(path: path, operation: "fsync", message: systemMessage()) }
        return DatasetFile(name: "features.f32", bytes: customerCount * rowFloats * 4,
                           contentHash: ContentHasher.hex(hasher.finalize()), dtype: "f32",
                           shape: [customerCount, spec.historyPeriods, width])
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

/// Turns aggregates into the files of a dataset inside `directory` (which must exist and be
/// empty apart from rejects.csv) and returns the manifest it wrote.
func writeDataset(
    aggregates: CustomerAggregates, stats: ReadStats, source: DatasetManifest.Source,
    split splitOptions: SplitOptions, buildGraph: Bool, directory: String
) throws -> DatasetManifest {
    let spec = aggregates.spec
    aggregates.finishAdding()
    let order = aggregates.datasetOrder()
    guard !order.isEmpty else { throw noHistory(spec: spec, source: source) }
    let withGraph = buildGraph && aggregates.products.count > 0
    let assembler = try DatasetAssembler(spec: spec, split: splitOptions, directory: directory,
                                         expectedCustomers: order.count, keepGraphTotals: withGraph)
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
    // Only the graph reads the aggregates from here on, and only their pairs: freeing the
    // customer records first lowered the peak (the graph's arrays come on top of them) from 581
    // to 523 MiB on the 10M-row date-ordered benchmark file.
    aggregates.releaseCustomerRecords()
    let totals = assembler.graphTotals
    // The customer files' last pass (normalising the features in place, fsyncs) and the graph
    // share nothing, so they run at once.
    let (customerFiles, (graphFiles, graphInfo)) = try runAlongside({ try assembler.finish() }) {
        () throws -> ([DatasetFile], DatasetManifest.Graph?) in
        guard withGraph else { return ([], nil) }
        var position = [Int32](repeating: -1, count: aggregates.customerCount)
        for (p, c) in order.enumerated() { position[Int(c)] = Int32(p) }
        let (graph, info) = buildCustomerProductGraph(
            customerCount: order.count, products: aggregates.products,
            forEachPair: { last, body in aggregates.forEachPair(releasing: last) { c, p, count in body(position[Int(c)], p, count) } },
            totals: totals, statistics: nil)
        return (try writeGraphFiles(graph, directory: directory), info)
    }
    return try finishDataset(assembler: assembler, customerFiles: customerFiles, graphFiles: graphFiles, graphInfo: graphInfo,
                             counts: counts, stats: stats, source: source)
}

func noHistory(spec: FeatureSpec, source: DatasetManifest.Source) -> DataError {
    DataError.noCustomers(path: source.input, reason: "no customer has a purchase on or before the cut-off \(describeDay(spec.cutoffDay, calendar: source.calendarDays)); nothing to write (check --cutoff and --time-format)")
}

/// The graph's four files, in the order the manifest lists them.
func writeGraphFiles(_ graph: CustomerProductGraph, directory: String) throws -> [DatasetFile] {
    let nodes = graph.csr.nodeCount
    return [
        try writeArray(graph.csr.offsets.map { Int64($0) }, directory, "graph_offsets.i64", "i64", [nodes + 1]),
        try writeArray(graph.csr.neighbours, directory, "graph_neighbours.i32", "i32", [graph.csr.edgeCount]),
        try writeArray(graph.csr.weights, directory, "graph_weights.f32", "f32", [graph.csr.edgeCount]),
        try writeArray(graph.nodeFeatures, directory, "node_features.f32", "f32", [nodes, nodeFeatureNames.count]),
    ]
}

/// Writes the manifest of the files that `assembler.finish()` closed (`customerFiles`) and
/// of the graph's (`graphFiles`, already written, listed after the customer files), and
/// returns it.
func finishDataset(
    assembler: DatasetAssembler, customerFiles: DatasetAssembler.FinishedFiles, graphFiles: [DatasetFile],
    graphInfo: DatasetManifest.Graph?, counts: AggregateCounts, stats: ReadStats, source: DatasetManifest.Source
) throws -> DatasetManifest {
    let spec = assembler.spec
    let directory = assembler.directory
    let n = assembler.customerCount
    let (normalisation, fitOnAll) = (customerFiles.normalisation, customerFiles.fittedOnAll)
    let files = customerFiles.files + graphFiles
    let splitOptions = assembler.splitOptions
    let calendar = source.calendarDays
    var manifest = DatasetManifest(
        formatVersion: DatasetManifest.currentFormatVersion,
        source: source,
        counts: .init(rows: stats.rows, imported: stats.imported, rejected: stats.rejected,
                      skippedNonPurchase: stats.skippedNonPurchase, blankLines: stats.blankLines, headerLines: stats.headerLines,
                      eventsInHistory: counts.eventsInHistory, eventsInHorizon: counts.eventsInHorizon,
                      eventsAfterHorizon: counts.eventsAfterHorizon, customersSeen: counts.customersSeen,
                      customers: n, customersWithoutHistory: counts.customersSeen - n, products: graphInfo?.productNodes ?? 0),
        spec: spec,
        cutoffDate: calendar ? ByteParsing.isoDate(spec.cutoffDay) : nil,
        historyStartDate: calendar ? ByteParsing.isoDate(spec.windowStartDay) : nil,
        horizonEndDate: calendar ? ByteParsing.isoDate(spec.cutoffDay + spec.horizonDays) : nil,
        featureNames: customerFeatureNames,
        normalisation: normalisation,
        stageNames: FeatureSpec.stageNames,
        labels: assembler.labels,
        split: .init(seed: splitOptions.seed, fractions: [splitOptions.trainFraction, splitOptions.validationFraction,
                                                          1 - splitOptions.trainFraction - splitOptions.validationFraction],
                     sizes: assembler.splitSizes, statisticsFittedOnAllCustomers: fitOnAll),
        graph: graphInfo,
        files: files,
        fingerprint: "")
    manifest.fingerprint = manifest.computeFingerprint()
    let json = try manifest.encoded()
    let manifestFile = try HashingFileWriter(path: directory + "/manifest.json", name: "manifest.json")
    try json.withUnsafeBytes { try manifestFile.write($0) }
    _ = try manifestFile.close(dtype: "text", shape: [])
    return manifest
}

func writeArray<T: BitwiseCopyable>(_ values: [T], _ directory: String, _ name: String, _ dtype: String, _ shape: [Int]) throws -> DatasetFile {
    let writer = try HashingFileWriter(path: directory + "/" + name, name: name)
    try writer.write(array: values)
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
/// Both graph builders (in memory, and streamed by rank 0 of a multi-rank import) use it, so
/// they write the same bytes.
func graphNodeFeatures(
    customerDegree: (Int) -> Int, productPurchases: [Double], productCustomers: (Int) -> Int, edgeCount: Int,
    totals: GraphCustomerTotals, statistics: DatasetManifest.Graph?
) -> (features: [Float], info: DatasetManifest.Graph) {
    let customerCount = totals.transactions.count, productCount = productPurchases.count
    let nodes = customerCount + productCount
    let width = nodeFeatureNames.count
    var features = [Float](repeating: 0, count: nodes * width)
    for position in 0..<customerCount {
        let row = position * width
        features[row + 0] = Float(log1p(totals.transactions[position]))
        features[row + 1] = Float(log1p(max(0, totals.spend[position])))
        features[row + 2] = Float(totals.recencyPeriods[position])
        features[row + 3] = Float(totals.tenurePeriods[position])
        features[row + 4] = Float(log1p(Double(customerDegree(position))))
        features[row + 5] = 0
    }
    for p in 0..<productCount {
        let purchases = productPurchases[p]
        let customers = Double(productCustomers(p))
        let row = (customerCount + p) * width
        features[row + 0] = Float(log1p(purchases))
        features[row + 1] = Float(log1p(customers))
        // Share of purchases that repeat an earlier purchase by the same customer.
        features[row + 2] = purchases > 0 ? Float((purchases - customers) / purchases) : 0
        features[row + 5] = 1
    }
    let customerStats = standardise(&features, rows: 0..<customerCount, width: width, columns: 0..<5,
                                    fixed: statistics.map { ($0.customerFeatureMean, $0.customerFeatureStd) })
    let productStats = standardise(&features, rows: customerCount..<nodes, width: width, columns: 0..<3,
                                   fixed: statistics.map { ($0.productFeatureMean, $0.productFeatureStd) })
    let info = DatasetManifest.Graph(
        customerNodes: customerCount, productNodes: productCount, directedEdges: edgeCount,
        nodeFeatureNames: nodeFeatureNames,
        customerFeatureMean: customerStats.mean, customerFeatureStd: customerStats.std,
        productFeatureMean: productStats.mean, productFeatureStd: productStats.std)
    return (features, info)
}

/// Z-scores `columns` over `rows` in place (constant columns are only centred), with the
/// `fixed` statistics when given, else with ones fitted to these rows.
private func standardise(
    _ features: inout [Float], rows: Range<Int>, width: Int, columns: Range<Int>, fixed: (mean: [Double], std: [Double])?
) -> (mean: [Double], std: [Double]) {
    if let fixed {
        for (k, column) in columns.enumerated() {
            for row in rows {
                features[row * width + column] = Float((Double(features[row * width + column]) - fixed.mean[k]) / fixed.std[k])
            }
        }
        return fixed
    }
    var mean = [Double](repeating: 0, count: columns.count)
    var std = [Double](repeating: 1, count: columns.count)
    guard !rows.isEmpty else { return (mean, std) }
    for (k, column) in columns.enumerated() {
        var sum = 0.0, sumSquares = 0.0
        for row in rows {
            let v = Double(features[row * width + column])
            sum += v
            sumSquares += v * v
        }
        let m = sum / Double(rows.count)
        let s = max(0, sumSquares / Double(rows.count) - m * m).squareRoot()
        mean[k] = m
        std[k] = s > 1e-6 ? s : 1
        for row in rows {
            features[row * width + column] = Float((Double(features[row * width + column]) - m) / std[k])
        }
    }
    return (mean, std)
}
