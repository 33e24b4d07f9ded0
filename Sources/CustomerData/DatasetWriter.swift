import Foundation
import Tensors

/// Where a customer goes: 0 train, 1 validation, 2 test.
///
/// Decided by hashing the id with a key derived from the seed, so it depends on neither row
/// order nor the other customers, and a customer keeps its split when data is added.
public func splitAssignment(customerID: UnsafeRawBufferPointer, seed: UInt64, trainFraction: Double, validationFraction: Double) -> UInt8 {
    let key = SeededRandom(seed: seed, purpose: .split).state
    let h = hashIdentifier(customerID.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, customerID.count, seed: key)
    let u = Double(h >> 11) * (1.0 / 9_007_199_254_740_992.0)
    if u < trainFraction { return 0 }
    if u < trainFraction + validationFraction { return 1 }
    return 2
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

/// Turns aggregates into the files of a dataset inside `directory` (which must exist and be
/// empty apart from rejects.csv) and returns the manifest it wrote.
func writeDataset(
    aggregates: CustomerAggregates, stats: ReadStats, source: DatasetManifest.Source,
    split splitOptions: SplitOptions, buildGraph: Bool, directory: String
) throws -> DatasetManifest {
    let spec = aggregates.spec
    aggregates.finishAdding()
    let order = aggregates.datasetOrder()
    let n = order.count
    let periods = spec.historyPeriods
    let width = customerFeatureNames.count
    guard n > 0 else {
        throw DataError.noCustomers(path: source.input, reason: "no customer has a purchase on or before the cut-off \(describeDay(spec.cutoffDay, calendar: source.calendarDays)); nothing to write (check --cutoff and --time-format)")
    }

    var split = [UInt8](repeating: 0, count: n)
    var splitSizes = [0, 0, 0]
    for (position, c) in order.enumerated() {
        split[position] = splitAssignment(customerID: aggregates.customerID(Int(c)), seed: splitOptions.seed,
                                          trainFraction: splitOptions.trainFraction, validationFraction: splitOptions.validationFraction)
        splitSizes[Int(split[position])] += 1
    }

    // Statistics come from training customers only, so validation and test stay unseen.
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: periods * width)
    defer { scratch.deallocate() }
    var fitter = NormalisationFitter(width: width)
    let fitOnAll = splitSizes[0] == 0
    for (position, c) in order.enumerated() where fitOnAll || split[position] == 0 {
        let length = aggregates.rawFeatures(Int(c), into: scratch)
        fitter.add(scratch, length: length, width: width)
    }
    let normalisation = fitter.result()

    // Per-customer outputs are streamed in dataset order, like the features: nothing of size
    // N × 39 × 8 (or even N) is held beyond the aggregates themselves.
    var files: [DatasetFile] = []
    let featuresFile = try HashingFileWriter(path: directory + "/features.f32", name: "features.f32")
    let idsFile = try HashingFileWriter(path: directory + "/customer_ids.txt", name: "customer_ids.txt")
    let lengthsFile = try HashingFileWriter(path: directory + "/lengths.i32", name: "lengths.i32")
    let churnFile = try HashingFileWriter(path: directory + "/churn.f32", name: "churn.f32")
    let spendFile = try HashingFileWriter(path: directory + "/spend.f32", name: "spend.f32")
    let stageFile = try HashingFileWriter(path: directory + "/stage.i32", name: "stage.i32")
    var stageCounts = [0, 0, 0, 0]
    var churned = 0
    var totalSpend = 0.0
    let newline: [UInt8] = [10]
    for c in order {
        let customer = Int(c)
        let length = aggregates.rawFeatures(customer, into: scratch)
        normalisation.apply(scratch, length: length, width: width)
        try featuresFile.write(UnsafeBufferPointer(start: scratch, count: periods * width))
        try idsFile.write(aggregates.customerID(customer))
        try newline.withUnsafeBytes { try idsFile.write($0) }
        try lengthsFile.write(value: Int32(length))
        let purchases = aggregates.horizonTransactions(customer)
        try churnFile.write(value: Float(purchases == 0 ? 1 : 0))
        churned += purchases == 0 ? 1 : 0
        let horizonSpend = FixedPoint.value(aggregates.horizonSpend(customer))
        try spendFile.write(value: Float(horizonSpend))
        totalSpend += horizonSpend
        let stage = spec.stage(forPurchases: purchases)
        try stageFile.write(value: stage)
        stageCounts[Int(stage)] += 1
    }
    files.append(try featuresFile.close(dtype: "f32", shape: [n, periods, width]))
    files.append(try idsFile.close(dtype: "text", shape: [n]))
    files.append(try lengthsFile.close(dtype: "i32", shape: [n]))
    files.append(try churnFile.close(dtype: "f32", shape: [n]))
    files.append(try spendFile.close(dtype: "f32", shape: [n]))
    files.append(try stageFile.close(dtype: "i32", shape: [n]))
    files.append(try writeArray(split, directory, "split.u8", "u8", [n]))

    var graphInfo: DatasetManifest.Graph?
    if buildGraph && aggregates.products.count > 0 {
        let (graph, info) = buildCustomerProductGraph(aggregates: aggregates, order: order, statistics: nil)
        graphInfo = info
        let nodes = graph.csr.nodeCount
        files.append(try writeArray(graph.csr.offsets.map { Int64($0) }, directory, "graph_offsets.i64", "i64", [nodes + 1]))
        files.append(try writeArray(graph.csr.neighbours, directory, "graph_neighbours.i32", "i32", [graph.csr.edgeCount]))
        files.append(try writeArray(graph.csr.weights, directory, "graph_weights.f32", "f32", [graph.csr.edgeCount]))
        files.append(try writeArray(graph.nodeFeatures, directory, "node_features.f32", "f32", [nodes, nodeFeatureNames.count]))
    }

    let calendar = source.calendarDays
    var manifest = DatasetManifest(
        formatVersion: DatasetManifest.currentFormatVersion,
        source: source,
        counts: .init(rows: stats.rows, imported: stats.imported, rejected: stats.rejected,
                      skippedNonPurchase: stats.skippedNonPurchase, blankLines: stats.blankLines, headerLines: stats.headerLines,
                      eventsInHistory: aggregates.eventsInHistory, eventsInHorizon: aggregates.eventsInHorizon,
                      eventsAfterHorizon: aggregates.eventsAfterHorizon, customersSeen: aggregates.customerCount,
                      customers: n, customersWithoutHistory: aggregates.customerCount - n, products: graphInfo?.productNodes ?? 0),
        spec: spec,
        cutoffDate: calendar ? ByteParsing.isoDate(spec.cutoffDay) : nil,
        historyStartDate: calendar ? ByteParsing.isoDate(spec.windowStartDay) : nil,
        horizonEndDate: calendar ? ByteParsing.isoDate(spec.cutoffDay + spec.horizonDays) : nil,
        featureNames: customerFeatureNames,
        normalisation: normalisation,
        stageNames: FeatureSpec.stageNames,
        labels: .init(churnRate: Double(churned) / Double(n), stageCounts: stageCounts, meanHorizonSpend: totalSpend / Double(n)),
        split: .init(seed: splitOptions.seed, fractions: [splitOptions.trainFraction, splitOptions.validationFraction,
                                                          1 - splitOptions.trainFraction - splitOptions.validationFraction],
                     sizes: splitSizes, statisticsFittedOnAllCustomers: fitOnAll),
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

private func writeArray<T: BitwiseCopyable>(_ values: [T], _ directory: String, _ name: String, _ dtype: String, _ shape: [Int]) throws -> DatasetFile {
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
    let customerCount = order.count
    var customerPosition = [Int32](repeating: -1, count: aggregates.customerCount)
    for (position, c) in order.enumerated() { customerPosition[Int(c)] = Int32(position) }
    var productOrder = (0..<Int32(aggregates.products.count)).map { $0 }
    productOrder.sort { aggregates.products.precedes(Int($0), Int($1)) }
    let productCount = productOrder.count
    var productPosition = [Int32](repeating: -1, count: productCount)
    for (position, p) in productOrder.enumerated() { productPosition[Int(p)] = Int32(position) }
    let nodes = customerCount + productCount

    // Counting sort by customer, then each customer's list sorted by product.
    var degree = [Int](repeating: 0, count: nodes + 1)
    aggregates.forEachPair { c, p, _ in
        degree[Int(customerPosition[Int(c)]) + 1] += 1
        degree[customerCount + Int(productPosition[Int(p)]) + 1] += 1
    }
    for v in 0..<nodes { degree[v + 1] += degree[v] }
    let offsets = degree
    let edgeCount = offsets[nodes]
    var neighbours = [Int32](repeating: 0, count: edgeCount)
    var weights = [Float](repeating: 0, count: edgeCount)
    var cursor = offsets
    aggregates.forEachPair { c, p, count in
        let u = Int(customerPosition[Int(c)])
        let slot = cursor[u]
        neighbours[slot] = Int32(customerCount) + productPosition[Int(p)]
        weights[slot] = Float(count)
        cursor[u] += 1
    }
    // Everything below reads the customer half of the CSR; the pair table is no longer needed.
    aggregates.releasePairs()
    for u in 0..<customerCount {
        let range = offsets[u]..<offsets[u + 1]
        if range.count > 1 {
            var pairs = range.map { (neighbours[$0], weights[$0]) }
            pairs.sort { $0.0 < $1.0 }
            for (k, slot) in range.enumerated() { (neighbours[slot], weights[slot]) = pairs[k] }
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

    let width = nodeFeatureNames.count
    var features = [Float](repeating: 0, count: nodes * width)
    for (position, c) in order.enumerated() {
        let customer = Int(c)
        let totals = aggregates.historyTotals(customer)
        let row = position * width
        features[row + 0] = Float(log1p(totals.transactions))
        features[row + 1] = Float(log1p(max(0, totals.spend)))
        features[row + 2] = Float(aggregates.recencyPeriods(customer))
        features[row + 3] = Float(aggregates.tenurePeriods(customer))
        features[row + 4] = Float(log1p(Double(csr.degree(of: position))))
        features[row + 5] = 0
    }
    for p in 0..<productCount {
        let node = customerCount + p
        var purchases = 0.0
        for slot in offsets[node]..<offsets[node + 1] { purchases += Double(weights[slot]) }
        let customers = Double(csr.degree(of: node))
        let row = node * width
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
    let productIDs = productOrder.map { aggregates.products.string(Int($0)) }
    return (CustomerProductGraph(csr: csr, nodeFeatures: features, customerNodes: customerCount, productIDs: productIDs), info)
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
