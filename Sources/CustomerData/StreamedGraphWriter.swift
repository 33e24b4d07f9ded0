/// Writes a dataset's graph files from rows handed over in node order (customers by dataset
/// position, then products by id) without holding the CSR: only per-node counts, the products'
/// purchase totals and, at the end, the node features stay in memory. Rank 0 of a multi-rank
/// import receives the rows from the ranks that hold the pairs; the CSR it built before was
/// 140 MB at 1M customers. The files are the bytes `writeGraphFiles` writes for the graph
/// `buildCustomerProductGraph` builds from the same pairs.
final class StreamedGraphWriter {
    let customerCount: Int
    let productCount: Int
    private let directory: String
    private let neighbours: HashingFileWriter
    private let weights: HashingFileWriter
    // Touched for every neighbour of every row: unchecked exclusivity keeps the runtime's
    // access tracking (about 5% of rank 0's samples in a 2-rank import) out of the loop.
    // Single-threaded use only.
    @exclusivity(unchecked) private var degrees: [Int32] = []
    @exclusivity(unchecked) private var productPurchases: [Double] = []
    @exclusivity(unchecked) private var rowNeighbours: [Int32] = []
    @exclusivity(unchecked) private var rowWeights: [Float] = []
    @exclusivity(unchecked) private(set) var edgeCount = 0

    init(directory: String, customerCount: Int, productCount: Int) throws {
        self.directory = directory
        self.customerCount = customerCount
        self.productCount = productCount
        neighbours = try HashingFileWriter(path: directory + "/graph_neighbours.i32", name: "graph_neighbours.i32")
        weights = try HashingFileWriter(path: directory + "/graph_weights.f32", name: "graph_weights.f32")
        degrees.reserveCapacity(customerCount + productCount)
        productPurchases.reserveCapacity(productCount)
    }

    /// The next node's row: `pairs` interleaves each neighbour and its purchase count, the
    /// neighbours in increasing order, as product positions for a customer's row (before every
    /// product's row) and as customer positions for a product's.
    func addRow(_ pairs: UnsafeBufferPointer<Int32>) throws {
        let isProduct = degrees.count >= customerCount
        precondition(degrees.count < customerCount + productCount, "more rows than nodes")
        let count = pairs.count / 2
        let base = isProduct ? 0 : Int32(customerCount)
        rowNeighbours.removeAll(keepingCapacity: true)
        rowWeights.removeAll(keepingCapacity: true)
        var purchases = 0.0
        for k in 0..<count {
            rowNeighbours.append(base + pairs[2 * k])
            let weight = Float(pairs[2 * k + 1])
            rowWeights.append(weight)
            // As the in-memory builder sums a product's weights.
            purchases += Double(weight)
        }
        try neighbours.write(array: rowNeighbours)
        try weights.write(array: rowWeights)
        degrees.append(Int32(count))
        if isProduct { productPurchases.append(purchases) }
        edgeCount += count
    }

    /// Writes the offsets and the node features after the last row; the files in manifest order.
    func finish(totals: GraphCustomerTotals) throws -> (files: [DatasetFile], info: DatasetManifest.Graph) {
        precondition(degrees.count == customerCount + productCount, "\(degrees.count) rows for \(customerCount + productCount) nodes")
        precondition(totals.transactions.count == customerCount)
        var offsets = [Int64](repeating: 0, count: degrees.count + 1)
        for (node, degree) in degrees.enumerated() { offsets[node + 1] = offsets[node] + Int64(degree) }
        let offsetsFile = try writeArray(offsets, directory, "graph_offsets.i64", "i64", [degrees.count + 1])
        offsets = []
        let neighboursFile = try neighbours.close(dtype: "i32", shape: [edgeCount])
        let weightsFile = try weights.close(dtype: "f32", shape: [edgeCount])
        let (features, info) = graphNodeFeatures(
            customerDegree: { Int(self.degrees[$0]) }, productPurchases: productPurchases,
            productCustomers: { Int(self.degrees[self.customerCount + $0]) }, edgeCount: edgeCount, totals: totals,
            statistics: nil)
        let featuresFile = try writeArray(features, directory, "node_features.f32", "f32", [degrees.count, nodeFeatureNames.count])
        return ([offsetsFile, neighboursFile, weightsFile, featuresFile], info)
    }
}
