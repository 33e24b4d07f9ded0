#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives
import Foundation

/// The writing half of a multi-rank import: every rank writes its share of the dataset.
///
/// 1. **Positions.** The ranks agree on each customer's dataset position without any rank
///    holding every id: splitters sampled from every rank's sorted ids cut the id order into
///    one range per rank, each rank merges the ids of its range that the owners send, and the
///    owners get their customers' positions back.
/// 2. **Customers.** Rank w writes the whole parts (`DatasetPartLayout`) of a contiguous block
///    of positions. Round by round, every owner sends each writer the records of its customers
///    that fall in the writer's next window of positions (one `MPI_Alltoallv`), with their ids
///    and their customer–product pairs; the writer writes them at its offsets of every
///    per-customer file and of the graph's customer rows, hashing each part as it goes.
/// 3. **Products.** Rank w also writes the rows of a block of products' parts, from the pairs
///    the owners send it a bounded round at a time.
/// 4. **Statistics** (normalisation, node-feature z-scores, labels) are exact integer sums
///    (`ExactMoments`) added over the ranks, so every byte is the one a single process writes.
///    Rank 0 gathers the parts' hashes and writes the manifest.
extension Importer {
    static func writeInParallel(
        aggregates: CustomerAggregates, counts: AggregateCounts, stats: ReadStats, source: DatasetManifest.Source,
        options: ImportOptions, temporary: String?, exchange: any Communicator, snapshot: SnapshotRows? = nil
    ) throws -> (manifest: DatasetManifest?, normalisation: FeatureNormalisation) {
        let rank = exchange.rank, ranks = exchange.size
        let spec = aggregates.spec
        var localOrder = aggregates.datasetOrder()
        if let snapshot { localOrder = snapshot.training(localOrder, split: options.split) { aggregates.customerID(Int($0)) } }
        let n = Int(try exchange.allreduceSum([Int64(localOrder.count)])[0])
        let productCount = aggregates.products.count
        try exchange.onEveryRank("counting the customers") {
            if let snapshot, n == 0 { throw snapshot.empty(spec: spec, source: source) }
            guard n > 0 else { throw noHistory(spec: spec, source: source) }
            guard n + productCount < Int(Int32.max) else {
                throw DataError.invalidOption("\(n) customers and \(productCount) products are more graph nodes than a dataset indexes (2,147,483,647)")
            }
        }
        let directory = try exchange.broadcast(string: temporary ?? "", root: 0)
        let withGraph = options.buildGraph && snapshot == nil && productCount > 0
        let layout = DatasetPartLayout(rowsPerPart: options.rowsPerPart, customers: n, products: withGraph ? productCount : 0)
        let rowsPerPart = layout.rowsPerPart

        // 1. Positions.
        let positions = try datasetPositions(count: localOrder.count, id: { aggregates.customerID(Int(localOrder[$0])) },
                                             exchange: exchange)
        let productPosition = productPositions(aggregates.products).position
        var pairs = withGraph
            ? try customerMajorPairs(aggregates: aggregates, localOrder: localOrder, positions: positions, productPosition: productPosition)
            : []
        // pairStart[k]..<pairStart[k + 1]: local customer k's pairs (sorted by position).
        var pairStart = [Int](repeating: 0, count: localOrder.count + 1)
        do {
            var index = 0
            for k in 0..<localOrder.count {
                while index < pairs.count && pairs[index].high == positions[k] { index += 1 }
                pairStart[k + 1] = index
            }
        }

        // 2. Customers: which rank writes which positions, and where each starts in the files
        // whose rows differ in size (ids, the graph's customer rows).
        let customerParts = layout.customerParts.count
        func writerRows(_ w: Int) -> Range<Int> {
            min(n, w * customerParts / ranks * rowsPerPart) ..< min(n, (w + 1) * customerParts / ranks * rowsPerPart)
        }
        // localBounds[w]..<localBounds[w + 1]: the local customers rank w writes.
        var localBounds = [0]
        for w in 0..<ranks {
            var k = localBounds[w]
            while k < positions.count && Int(positions[k]) < writerRows(w).upperBound { k += 1 }
            localBounds.append(k)
        }
        var shares = [Int64](repeating: 0, count: 2 * ranks)
        for w in 0..<ranks {
            for k in localBounds[w]..<localBounds[w + 1] {
                shares[w] += Int64(aggregates.customerID(Int(localOrder[k])).count + 1)
                shares[ranks + w] += Int64(pairStart[k + 1] - pairStart[k])
            }
        }
        shares = try exchange.allreduceSum(shares)
        let idsOffset = Int(shares[0..<rank].reduce(0, +))
        let customerEdgesBefore = Int(shares[ranks ..< ranks + rank].reduce(0, +))
        let customerEdges = Int(shares[ranks...].reduce(0, +))
        let myRows = writerRows(rank)

        try exchange.agreeing("creating the dataset files") {
            guard rank == 0 else { return }
            var names = ["features.f32", "customer_ids.txt", "lengths.i32", "churn.f32", "spend.f32", "stage.i32", "split.u8"]
            if withGraph { names += ["graph_offsets.i64", "graph_neighbours.i32", "graph_weights.f32", "node_features.f32"] }
            for name in names { _ = try HashingFileWriter(path: directory + "/" + name, name: name).close(dtype: "", shape: []) }
        }
        let (assembler, customerGraph) = try exchange.agreeing("opening the dataset files") {
            (try DatasetAssembler(spec: spec, split: options.split, directory: directory, rows: myRows, idsOffset: idsOffset,
                                  rowsPerPart: rowsPerPart, keepGraphTotals: withGraph),
             withGraph ? try GraphRowWriter(directory: directory, firstNode: myRows.lowerBound, firstEdge: customerEdgesBefore) : nil)
        }

        let recordBytes = CustomerRecordHeader.recordBytes(spec)
        let window = max(1, options.customersPerRound)
        let rounds = (0..<ranks).map { (writerRows($0).count + window - 1) / window }.max() ?? 0
        var cursor = Array(localBounds.dropLast())
        var outgoing: [UInt8] = []
        var incoming: [UInt8] = []
        var degrees: [Int32] = []
        degrees.reserveCapacity(myRows.count)
        var rowNeighbours: [Int32] = [], rowWeights: [Float] = []
        for round in 0..<rounds {
            outgoing.removeAll(keepingCapacity: true)
            var sendCounts = [Int](repeating: 0, count: ranks)
            for w in 0..<ranks {
                let rows = writerRows(w)
                let windowEnd = min(rows.upperBound, rows.lowerBound + (round + 1) * window)
                let before = outgoing.count
                while cursor[w] < localBounds[w + 1] && Int(positions[cursor[w]]) < windowEnd {
                    let k = cursor[w]
                    appendRecord(position: positions[k], customer: Int(localOrder[k]), pairs: pairs[pairStart[k]..<pairStart[k + 1]],
                                 aggregates: aggregates, recordBytes: recordBytes, to: &outgoing)
                    cursor[w] += 1
                }
                sendCounts[w] = outgoing.count - before
            }
            let receiveCounts = try exchangeCounts(sendCounts, exchange: exchange)
            incoming = [UInt8](repeating: 0, count: receiveCounts.reduce(0, +))
            try outgoing.withUnsafeBytes { source in
                try incoming.withUnsafeMutableBytes {
                    try exchange.alltoallv(source, sendCounts: sendCounts, into: $0, receiveCounts: receiveCounts)
                }
            }
            let windowStart = myRows.lowerBound + round * window
            let windowCount = max(0, min(window, myRows.upperBound - windowStart))
            try exchange.agreeing("writing the customer files") {
                try incoming.withUnsafeBytes { received in
                    // Where each position's record lies in what arrived.
                    var slot = [Int](repeating: -1, count: windowCount)
                    var offset = 0
                    while offset < received.count {
                        let position = Int(received.loadUnaligned(fromByteOffset: offset, as: Int32.self))
                        guard position >= windowStart && position < windowStart + windowCount && slot[position - windowStart] < 0 else {
                            throw DataError.invalidOption("a rank sent customer position \(position), outside this rank's window \(windowStart)..<\(windowStart + windowCount)")
                        }
                        slot[position - windowStart] = offset
                        offset += recordLength(received, at: offset, recordBytes: recordBytes)
                    }
                    for (k, start) in slot.enumerated() {
                        guard start >= 0 else { throw DataError.invalidOption("no rank sent the customer at position \(windowStart + k)") }
                        let idLength = Int(received.loadUnaligned(fromByteOffset: start + 4, as: UInt32.self))
                        let degree = Int(received.loadUnaligned(fromByteOffset: start + 8, as: UInt32.self))
                        let record = received.baseAddress! + start + recordPrefix
                        let id = UnsafeRawBufferPointer(start: record + recordBytes, count: idLength)
                        try assembler.add(id: id, record: record)
                        degrees.append(Int32(degree))
                        guard let customerGraph else { continue }
                        rowNeighbours.removeAll(keepingCapacity: true)
                        rowWeights.removeAll(keepingCapacity: true)
                        let pairBase = start + recordPrefix + recordBytes + idLength
                        for j in 0..<degree {
                            rowNeighbours.append(Int32(n) + received.loadUnaligned(fromByteOffset: pairBase + 8 * j, as: Int32.self))
                            rowWeights.append(Float(received.loadUnaligned(fromByteOffset: pairBase + 8 * j + 4, as: Int32.self)))
                        }
                        try customerGraph.addRow(rowNeighbours, rowWeights)
                        if (windowStart + k + 1) % rowsPerPart == 0 || windowStart + k + 1 == myRows.upperBound { customerGraph.endPart() }
                    }
                }
            }
        }
        outgoing = []
        incoming = []
        aggregates.releaseCustomerRecords()

        let totals = try assembler.totals.summed(across: exchange)
        let (normalisation, fittedOnAll) = try snapshot.map { ($0.normalisation, false) }
            ?? assembler.normalisation(across: exchange, splitSizes: totals.splitSizes)
        let customerFiles = try exchange.agreeing("normalising the features") { try assembler.finish(normalisation: normalisation) }

        var graphParts: [[DatasetFile.Part]] = []
        var graphEntry: DatasetManifest.Graph?
        if withGraph, let customerGraph {
            let productSide = try writeProductRows(
                pairs: &pairs, productCount: productCount, customers: n, customerEdges: customerEdges, layout: layout,
                pairsPerRound: options.pairsPerGather, directory: directory, exchange: exchange)
            // Node features: each rank's own nodes, z-scored with statistics summed over every rank.
            let width = nodeFeatureNames.count
            var customerNodes = [Float](repeating: 0, count: myRows.count * width)
            customerNodes.withUnsafeMutableBufferPointer { rows in
                for k in 0..<myRows.count {
                    writeCustomerNodeFeatures(assembler.graphTotals, k, degree: Int(degrees[k]), into: rows.baseAddress! + k * width)
                }
            }
            var productNodes = productSide.nodeFeatures
            let customerStats = NodeStandardisation(try NodeStandardisation.moments(
                customerNodes, rows: 0..<myRows.count, columns: customerNodeColumns).summed(across: exchange))
            let productStats = NodeStandardisation(try NodeStandardisation.moments(
                productNodes, rows: 0..<productSide.products.count, columns: productNodeColumns).summed(across: exchange))
            customerStats.apply(&customerNodes, rows: 0..<myRows.count)
            productStats.apply(&productNodes, rows: 0..<productSide.products.count)
            let (customerFeatureParts, productFeatureParts) = try exchange.agreeing("writing the node features") {
                (try writeNodeFeatures(customerNodes, firstNode: myRows.lowerBound, nodes: myRows.count, directory: directory, rowsPerPart: rowsPerPart),
                 try writeNodeFeatures(productNodes, firstNode: n + productSide.products.lowerBound, nodes: productSide.products.count,
                                       directory: directory, rowsPerPart: rowsPerPart))
            }
            let customerRows = try exchange.agreeing("closing the graph files") { try customerGraph.close() }
            graphParts = [customerRows.offsets, productSide.parts.offsets, customerRows.neighbours, productSide.parts.neighbours,
                          customerRows.weights, productSide.parts.weights, customerFeatureParts, productFeatureParts]
            graphEntry = graphInfo(customers: n, products: productCount, edges: customerEdges + productSide.edges,
                                  customerStats: customerStats, productStats: productStats)
        }

        // Rank 0 lists every rank's parts in position order and writes the manifest.
        let mine = try JSONEncoder().encode(customerFiles.map { $0.parts ?? [] } + graphParts)
        let gathered = try [UInt8](mine).withUnsafeBytes { try exchange.gatherBytes($0) }
        let manifest = try exchange.agreeing("writing the manifest") { () -> DatasetManifest? in
            guard rank == 0 else { return nil }
            var lists: [[[DatasetFile.Part]]] = []
            var offset = 0
            for count in gathered.counts {
                lists.append(try JSONDecoder().decode([[DatasetFile.Part]].self, from: Data(gathered.bytes[offset..<offset + count])))
                offset += count
            }
            func parts(_ index: Int) -> [DatasetFile.Part] { lists.flatMap { $0[index] } }
            var files = customerFiles.enumerated().map { k, file in
                var shape = file.shape
                shape[0] = n
                return DatasetFile(name: file.name, parts: parts(k), dtype: file.dtype, shape: shape)
            }
            if let graphEntry {
                let nodes = n + productCount, edges = graphEntry.directedEdges, base = customerFiles.count
                files.append(DatasetFile(name: "graph_offsets.i64", parts: parts(base) + parts(base + 1), dtype: "i64", shape: [nodes + 1]))
                files.append(DatasetFile(name: "graph_neighbours.i32", parts: parts(base + 2) + parts(base + 3), dtype: "i32", shape: [edges]))
                files.append(DatasetFile(name: "graph_weights.f32", parts: parts(base + 4) + parts(base + 5), dtype: "f32", shape: [edges]))
                files.append(DatasetFile(name: "node_features.f32", parts: parts(base + 6) + parts(base + 7), dtype: "f32",
                                         shape: [nodes, nodeFeatureNames.count]))
            }
            return try finishDataset(
                DatasetContents(spec: spec, splitOptions: options.split, rowsPerPart: rowsPerPart, totals: totals,
                                normalisation: normalisation, fittedOnAll: fittedOnAll, files: files, graph: graphEntry),
                counts: counts, stats: stats, source: source, directory: directory)
        }
        return (manifest, normalisation)
    }

    /// Each local customer's dataset position (local customers in dataset order, so ascending).
    /// Splitters picked from 64 ids sampled from every rank cut the id order into one range per
    /// rank; rank w merges the sorted ids the ranks send it from its range, and sends each its
    /// positions back. A rank holds about its share of the ids, never all of them.
    static func datasetPositions(count: Int, id: (Int) -> UnsafeRawBufferPointer, exchange: any Communicator) throws -> [Int32] {
        let ranks = exchange.size
        guard ranks > 1 else { return (0..<count).map { Int32($0) } }
        var samples: [UInt8] = []
        let sampleCount = min(count, 64)
        for j in 0..<sampleCount { appendLengthPrefixed(id(j * count / sampleCount), to: &samples) }
        let sampleBytes = try samples.withUnsafeBytes { try exchange.allgatherBytes($0) }
        // bounds[w]..<bounds[w + 1]: the local ids in rank w's range of the id order.
        let bounds = sampleBytes.withUnsafeBytes { raw in
            var pooled = splitLengthPrefixed(raw)
            pooled.sort { identifierPrecedes($0, $1) }
            var bounds = [0]
            for w in 1..<ranks {
                let splitter = pooled[w * pooled.count / ranks]
                var low = bounds.last!, high = count
                while low < high {
                    let middle = (low + high) / 2
                    if identifierPrecedes(id(middle), splitter) { low = middle + 1 } else { high = middle }
                }
                bounds.append(low)
            }
            bounds.append(count)
            return bounds
        }
        var outgoing: [UInt8] = []
        var sendCounts = [Int](repeating: 0, count: ranks)
        for w in 0..<ranks {
            let before = outgoing.count
            for k in bounds[w]..<bounds[w + 1] { appendLengthPrefixed(id(k), to: &outgoing) }
            sendCounts[w] = outgoing.count - before
        }
        let receiveCounts = try exchangeCounts(sendCounts, exchange: exchange)
        var incoming = [UInt8](repeating: 0, count: receiveCounts.reduce(0, +))
        try outgoing.withUnsafeBytes { source in
            try incoming.withUnsafeMutableBytes { try exchange.alltoallv(source, sendCounts: sendCounts, into: $0, receiveCounts: receiveCounts) }
        }
        outgoing = []
        // Merge the senders' sorted lists; rankInRange[s][j]: where sender s's j-th id lands.
        let (rankInRange, rangeSize) = incoming.withUnsafeBytes { bytes -> ([[Int32]], Int) in
            var lists: [[UnsafeRawBufferPointer]] = []
            var offset = 0
            for count in receiveCounts {
                lists.append(splitLengthPrefixed(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])))
                offset += count
            }
            var result = lists.map { [Int32](repeating: 0, count: $0.count) }
            var heads = [Int](repeating: 0, count: ranks)
            let total = lists.reduce(0) { $0 + $1.count }
            for merged in 0..<total {
                var best = -1
                for s in 0..<ranks where heads[s] < lists[s].count {
                    if best < 0 || identifierPrecedes(lists[s][heads[s]], lists[best][heads[best]]) { best = s }
                }
                result[best][heads[best]] = Int32(merged)
                heads[best] += 1
            }
            return (result, total)
        }
        incoming = []
        let rangeSizes = try exchange.allgather([Int64(rangeSize)])
        let base = Int32(rangeSizes[0..<exchange.rank].reduce(0, +))
        let back = rankInRange.flatMap { $0.map { $0 + base } }
        var positions = [Int32](repeating: 0, count: count)
        let backCounts = rankInRange.map { $0.count }
        let ownCounts = (0..<ranks).map { bounds[$0 + 1] - bounds[$0] }
        try back.withUnsafeBufferPointer { source in
            try positions.withUnsafeMutableBufferPointer {
                try exchange.alltoallv(source, sendCounts: backCounts, into: $0, receiveCounts: ownCounts)
            }
        }
        return positions
    }

    /// What each rank sends this one, from what each rank sends each (`sendCounts[w]` to rank w).
    static func exchangeCounts(_ sendCounts: [Int], exchange: any Communicator) throws -> [Int] {
        let all = try exchange.allgather(sendCounts.map { Int64($0) })
        return (0..<exchange.size).map { Int(all[$0 * exchange.size + exchange.rank]) }
    }

    /// Rank w's rows of the products of its block of product parts, from every rank's pairs,
    /// a round of at most `pairsPerRound` pairs (or one product) at a time; returns the parts it
    /// wrote, its products' unscaled node features and the product edges of every rank.
    private static func writeProductRows(
        pairs: inout [RankPair], productCount: Int, customers n: Int, customerEdges: Int, layout: DatasetPartLayout,
        pairsPerRound: Int, directory: String, exchange: any Communicator
    ) throws -> (parts: GraphRowWriter.Parts, nodeFeatures: [Float], products: Range<Int>, edges: Int) {
        let rank = exchange.rank, ranks = exchange.size
        let rowsPerPart = layout.rowsPerPart
        let productParts = (productCount + rowsPerPart - 1) / rowsPerPart
        func writerProducts(_ w: Int) -> Range<Int> {
            min(productCount, w * productParts / ranks * rowsPerPart) ..< min(productCount, (w + 1) * productParts / ranks * rowsPerPart)
        }
        // A counting sort of the pairs' indices by product: walking them in customer order
        // leaves each product's customers sorted.
        var productStarts = [Int](repeating: 0, count: productCount + 1)
        for pair in pairs { productStarts[Int(pair.low) + 1] += 1 }
        let productDegrees = try exchange.allreduceSum(productStarts.dropFirst().map { Int64($0) })
        for p in 0..<productCount { productStarts[p + 1] += productStarts[p] }
        var byProduct = [UInt32](unsafeUninitializedCapacity: pairs.count) { _, count in count = pairs.count }
        do {
            var next = productStarts
            for (k, pair) in pairs.enumerated() {
                byProduct[next[Int(pair.low)]] = UInt32(k)
                next[Int(pair.low)] += 1
            }
        }
        // Every writer's rounds, the same on every rank: blocks of its products.
        let blocks: [[Range<Int>]] = (0..<ranks).map { w in
            var result: [Range<Int>] = []
            var first = writerProducts(w).lowerBound
            while first < writerProducts(w).upperBound {
                var end = first + 1, held = productDegrees[first]
                while end < writerProducts(w).upperBound && held + productDegrees[end] <= Int64(max(1, pairsPerRound)) {
                    held += productDegrees[end]
                    end += 1
                }
                result.append(first..<end)
                first = end
            }
            return result
        }
        let mine = writerProducts(rank)
        let edgesBefore = customerEdges + Int(productDegrees[0..<mine.lowerBound].reduce(0, +))
        let writer = try exchange.agreeing("opening the graph files") {
            try GraphRowWriter(directory: directory, firstNode: n + mine.lowerBound, firstEdge: edgesBefore)
        }
        let width = nodeFeatureNames.count
        var nodeFeatures = [Float](repeating: 0, count: mine.count * width)
        var outgoing: [Int32] = [], incoming: [Int32] = []
        var row: [(customer: Int32, count: Int32)] = []
        var rowNeighbours: [Int32] = [], rowWeights: [Float] = []
        for round in 0..<(blocks.map(\.count).max() ?? 0) {
            outgoing.removeAll(keepingCapacity: true)
            var sendCounts = [Int](repeating: 0, count: ranks)
            for w in 0..<ranks where round < blocks[w].count {
                let block = blocks[w][round]
                for index in productStarts[block.lowerBound]..<productStarts[block.upperBound] {
                    let pair = pairs[Int(byProduct[index])]
                    outgoing.append(pair.low)
                    outgoing.append(pair.high)
                    outgoing.append(pair.count)
                }
                sendCounts[w] = productStarts[block.upperBound] * 3 - productStarts[block.lowerBound] * 3
            }
            let receiveCounts = try exchangeCounts(sendCounts, exchange: exchange)
            incoming = [Int32](repeating: 0, count: receiveCounts.reduce(0, +))
            try outgoing.withUnsafeBufferPointer { source in
                try incoming.withUnsafeMutableBufferPointer {
                    try exchange.alltoallv(source, sendCounts: sendCounts, into: $0, receiveCounts: receiveCounts)
                }
            }
            // Every rank agrees on every round, those with no block left too.
            let block = round < blocks[rank].count ? blocks[rank][round] : 0..<0
            try exchange.agreeing("writing the products' rows") {
                var cursor = [0], ends: [Int] = []
                for count in receiveCounts { ends.append(cursor.last! + count); cursor.append(cursor.last! + count) }
                cursor.removeLast()
                for product in block {
                    row.removeAll(keepingCapacity: true)
                    for s in 0..<ranks {
                        while cursor[s] < ends[s] && Int(incoming[cursor[s]]) == product {
                            row.append((incoming[cursor[s] + 1], incoming[cursor[s] + 2]))
                            cursor[s] += 3
                        }
                    }
                    // Each rank's customers come sorted; across ranks they interleave.
                    row.sort { $0.customer < $1.customer }
                    rowNeighbours.removeAll(keepingCapacity: true)
                    rowWeights.removeAll(keepingCapacity: true)
                    var purchases = 0.0
                    for entry in row {
                        rowNeighbours.append(entry.customer)
                        rowWeights.append(Float(entry.count))
                        purchases += Double(Float(entry.count))
                    }
                    try writer.addRow(rowNeighbours, rowWeights)
                    nodeFeatures.withUnsafeMutableBufferPointer { features in
                        writeProductNodeFeatures(purchases: purchases, customers: row.count,
                                                 into: features.baseAddress! + (product - mine.lowerBound) * width)
                    }
                    let last = product + 1 == productCount
                    if last { try writer.addFinalOffset() }
                    if (product + 1) % rowsPerPart == 0 || last { writer.endPart() }
                }
            }
        }
        pairs = []
        let parts = try exchange.agreeing("closing the graph files") { try writer.close() }
        return (parts, nodeFeatures, mine, Int(productDegrees.reduce(0, +)))
    }

    /// Writes `nodes` rows of node features from node `firstNode` of node_features.f32 and
    /// returns their parts (every `rowsPerPart` nodes from the first of their node type).
    private static func writeNodeFeatures(
        _ features: [Float], firstNode: Int, nodes: Int, directory: String, rowsPerPart: Int
    ) throws -> [DatasetFile.Part] {
        let width = nodeFeatureNames.count
        let writer = try HashingFileWriter(path: directory + "/node_features.f32", name: "node_features.f32", offset: firstNode * width * 4)
        var k = 0
        try features.withUnsafeBufferPointer { features in
            while k < nodes {
                let end = min(nodes, (k / rowsPerPart + 1) * rowsPerPart)
                try writer.write(UnsafeBufferPointer(rebasing: features[k * width ..< end * width]))
                writer.endPart()
                k = end
            }
        }
        return try writer.close(dtype: "f32", shape: []).parts ?? []
    }

    /// Bytes before a record's `CustomerRecordHeader`: position, id length, degree, padding.
    private static let recordPrefix = 16

    /// Appends local customer `customer`'s record for its writer: prefix, record, id, then its
    /// pairs as (product node from 0, purchase count), padded to 8 bytes.
    private static func appendRecord(
        position: Int32, customer: Int, pairs: ArraySlice<RankPair>, aggregates: CustomerAggregates, recordBytes: Int,
        to bytes: inout [UInt8]
    ) {
        let id = aggregates.customerID(customer)
        let start = bytes.count
        let length = recordPrefix + recordBytes + id.count + 8 * pairs.count
        bytes.append(contentsOf: repeatElement(0, count: (length + 7) / 8 * 8))
        bytes.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress! + start
            base.storeBytes(of: position, as: Int32.self)
            base.storeBytes(of: UInt32(id.count), toByteOffset: 4, as: UInt32.self)
            base.storeBytes(of: UInt32(pairs.count), toByteOffset: 8, as: UInt32.self)
            aggregates.writeRecord(customer, into: base + recordPrefix)
            if id.count > 0 { (base + recordPrefix + recordBytes).copyMemory(from: id.baseAddress!, byteCount: id.count) }
            var offset = recordPrefix + recordBytes + id.count
            for pair in pairs {
                base.storeBytes(of: pair.low, toByteOffset: offset, as: Int32.self)
                base.storeBytes(of: pair.count, toByteOffset: offset + 4, as: Int32.self)
                offset += 8
            }
        }
    }

    private static func recordLength(_ bytes: UnsafeRawBufferPointer, at offset: Int, recordBytes: Int) -> Int {
        let idLength = Int(bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
        let degree = Int(bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self))
        return (recordPrefix + recordBytes + idLength + 8 * degree + 7) / 8 * 8
    }

    /// A customer–product pair held by the rank that owns the customer: customer position
    /// (high) and product position from 0 (low), and the purchase count.
    struct RankPair {
        var key: UInt64
        var count: Int32

        var high: Int32 { Int32(truncatingIfNeeded: key >> 32) }
        var low: Int32 { Int32(truncatingIfNeeded: key) }
        static func key(_ high: Int32, _ low: Int32) -> UInt64 { UInt64(UInt32(bitPattern: high)) << 32 | UInt64(UInt32(bitPattern: low)) }
    }

    /// This rank's customer–product pairs keyed (dataset position, product position), sorted by
    /// that key without a comparison sort: each customer's pairs go to its slots in dataset
    /// order (counted by a first read of the pairs), and each customer's few pairs are then
    /// sorted by product in place. The second read frees the pairs as it goes.
    private static func customerMajorPairs(
        aggregates: CustomerAggregates, localOrder: [Int32], positions: [Int32], productPosition: [Int32]
    ) throws -> [RankPair] {
        var localIndex = [Int32](repeating: -1, count: aggregates.customerCount)
        for (k, c) in localOrder.enumerated() { localIndex[Int(c)] = Int32(k) }
        var starts = [Int](repeating: 0, count: localOrder.count + 1)
        aggregates.forEachPair { c, _, _ in
            let k = localIndex[Int(c)]
            if k >= 0 { starts[Int(k) + 1] += 1 }
        }
        for k in 0..<localOrder.count { starts[k + 1] += starts[k] }
        let total = starts[localOrder.count]
        // Every slot is written once below.
        var pairs = [RankPair](unsafeUninitializedCapacity: total) { _, count in count = total }
        pairs.withUnsafeMutableBufferPointer { pairs in
            var cursor = starts
            aggregates.forEachPair(releasing: true) { c, p, count in
                let k = Int(localIndex[Int(c)])
                guard k >= 0 else { return }
                pairs[cursor[k]] = RankPair(key: RankPair.key(positions[k], productPosition[Int(p)]), count: count)
                cursor[k] += 1
            }
            for k in 0..<localOrder.count {
                let first = starts[k], end = starts[k + 1]
                if end - first > 32 {
                    var long = UnsafeMutableBufferPointer(rebasing: pairs[first..<end])
                    long.sort { $0.key < $1.key }
                    continue
                }
                var i = first + 1
                while i < end {
                    let pair = pairs[i]
                    var j = i
                    while j > first && pairs[j - 1].key > pair.key {
                        pairs[j] = pairs[j - 1]
                        j -= 1
                    }
                    pairs[j] = pair
                    i += 1
                }
            }
        }
        return pairs
    }
}

/// Writes a block of consecutive graph rows (nodes from `firstNode`, their edges from
/// `firstEdge`) into the three CSR files every rank shares, hashing each part.
final class GraphRowWriter {
    struct Parts {
        var offsets: [DatasetFile.Part]
        var neighbours: [DatasetFile.Part]
        var weights: [DatasetFile.Part]
    }

    private let offsets, neighbours, weights: HashingFileWriter
    private var nextEdge: Int64

    init(directory: String, firstNode: Int, firstEdge: Int) throws {
        offsets = try HashingFileWriter(path: directory + "/graph_offsets.i64", name: "graph_offsets.i64", offset: firstNode * 8)
        neighbours = try HashingFileWriter(path: directory + "/graph_neighbours.i32", name: "graph_neighbours.i32", offset: firstEdge * 4)
        weights = try HashingFileWriter(path: directory + "/graph_weights.f32", name: "graph_weights.f32", offset: firstEdge * 4)
        nextEdge = Int64(firstEdge)
    }

    func addRow(_ rowNeighbours: [Int32], _ rowWeights: [Float]) throws {
        try offsets.write(value: nextEdge)
        try neighbours.write(array: rowNeighbours)
        try weights.write(array: rowWeights)
        nextEdge += Int64(rowNeighbours.count)
    }

    /// The offsets file's last entry, after the graph's last row: the number of edges.
    func addFinalOffset() throws { try offsets.write(value: nextEdge) }

    func endPart() {
        offsets.endPart()
        neighbours.endPart()
        weights.endPart()
    }

    func close() throws -> Parts {
        Parts(offsets: try offsets.close(dtype: "", shape: []).parts ?? [],
              neighbours: try neighbours.close(dtype: "", shape: []).parts ?? [],
              weights: try weights.close(dtype: "", shape: []).parts ?? [])
    }
}

/// Appends `id` to `bytes` as a 4-byte length and the id's bytes.
func appendLengthPrefixed(_ id: UnsafeRawBufferPointer, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: UInt32(id.count).littleEndian) { bytes.append(contentsOf: $0) }
    bytes.append(contentsOf: id)
}

/// The ids `appendLengthPrefixed` wrote into `bytes`, as views into it.
func splitLengthPrefixed(_ bytes: UnsafeRawBufferPointer) -> [UnsafeRawBufferPointer] {
    var ids: [UnsafeRawBufferPointer] = []
    var offset = 0
    while offset + 4 <= bytes.count {
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        ids.append(UnsafeRawBufferPointer(rebasing: bytes[offset + 4 ..< offset + 4 + length]))
        offset += 4 + length
    }
    return ids
}
