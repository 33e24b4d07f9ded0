import Foundation
import Testing
import Collectives
import Tensors
@testable import CustomerData

private func syntheticDataset(_ scratch: Scratch, customers: Int = 400, products: Int = 60, seed: UInt64 = 11) throws -> (ImportSummary, CustomerDataset) {
    let csv = scratch.path + "/synth.csv"
    _ = try generateSyntheticEvents(options: SyntheticOptions(customers: customers, products: products, seed: seed), to: csv)
    var options = ImportOptions()
    options.maxRejectFraction = 0
    // Several parts per file, as a large import has.
    options.rowsPerPart = 64
    return try importFile(csv, into: scratch, options)
}

@Test func splitIsDeterministicAndProportional() {
    func part(_ id: String, seed: UInt64) -> UInt8 {
        withBytesOf(id) { p, n in splitAssignment(customerID: UnsafeRawBufferPointer(start: p, count: n), seed: seed, trainFraction: 0.7, validationFraction: 0.15) }
    }
    let ids = (0..<20_000).map { "customer-\($0)" }
    var counts = [0, 0, 0]
    for id in ids { counts[Int(part(id, seed: 42))] += 1 }
    // Binomial standard deviation at n = 20,000 is about 65 for 70%; allow 5 sigma.
    #expect(abs(counts[0] - 14_000) < 330)
    #expect(abs(counts[1] - 3_000) < 260)
    #expect(abs(counts[2] - 3_000) < 260)
    #expect(ids.prefix(500).map { part($0, seed: 42) } == ids.prefix(500).map { part($0, seed: 42) })
    let other = ids.prefix(500).map { part($0, seed: 43) }
    #expect(other != ids.prefix(500).map { part($0, seed: 42) })
}

@Test func datasetRoundTripsThroughTheReader() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (summary, data) = try syntheticDataset(scratch)
    let m = summary.manifest
    #expect(data.manifest == m)
    #expect(data.customerCount == m.counts.customers && data.customerCount > 100)
    #expect(data.features.count == data.customerCount * 39 * 8)
    #expect(m.split.sizes.reduce(0, +) == data.customerCount)
    #expect((0..<3).map { data.indices(in: CustomerDataset.SplitPart(rawValue: UInt8($0))!).count } == m.split.sizes)
    // Every part of the split column records its customers of each split, as its bytes hold them.
    let partSizes = try #require(m.splitPartSizes)
    #expect(partSizes.sizes.count == m.partLayout?.customerParts.count)
    for (index, rows) in (m.partLayout?.customerParts ?? []).enumerated() {
        #expect(partSizes.sizes[index] == (0..<3).map { s in rows.filter { Int(data.split[$0]) == s }.count }, "part \(index)")
    }
    #expect(m.labels.stageCounts.reduce(0, +) == data.customerCount)
    #expect(abs(Double(data.churn.reduce(0, +)) / Double(data.customerCount) - m.labels.churnRate) < 1e-9)
    // Normalised features over training customers' valid steps: mean 0, std 1 (non-constant ones).
    let f = data.featureCount, t = data.historyLength
    var sum = [Double](repeating: 0, count: f), squares = sum
    var steps = 0
    for c in data.indices(in: .train) {
        for s in 0..<Int(data.lengths[c]) {
            for k in 0..<f {
                let v = Double(data.features[(c * t + s) * f + k])
                sum[k] += v
                squares[k] += v * v
            }
            steps += 1
        }
    }
    for k in 0..<f where m.normalisation.std[k] != 1 {
        #expect(abs(sum[k] / Double(steps)) < 1e-3, "\(m.featureNames[k])")
        #expect(abs(squares[k] / Double(steps) - 1) < 1e-3, "\(m.featureNames[k])")
    }
    // Manifest JSON decodes to the same value it was written from.
    let json = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/dataset/manifest.json"))
    #expect(try JSONDecoder().decode(DatasetManifest.self, from: json) == m)
}

/// The coordinator's drift samples, picked without holding every training index, are the
/// samples `evenlySpaced` picks from them all.
@Test func evenlySpacedIndicesEqualTheSampleOfAllIndices() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (_, data) = try syntheticDataset(scratch)
    for part in CustomerDataset.SplitPart.allCases {
        let all = data.indices(in: part)
        for limit in [1, 7, all.count - 1, all.count, all.count + 5] where limit > 0 {
            #expect(data.evenlySpacedIndices(in: part, limit: limit) == DriftReference.evenlySpaced(all, limit: limit))
        }
    }
}

@Test func graphIsSymmetricBipartiteAndInRange() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (summary, data) = try syntheticDataset(scratch)
    let g = try #require(data.graph)
    let info = try #require(summary.manifest.graph)
    let customers = info.customerNodes, nodes = customers + info.productNodes
    #expect(g.nodeCount == nodes && g.edgeCount == info.directedEdges)
    #expect(info.productNodes <= 60 && info.productNodes > 0)
    var weightSums = [Float](repeating: 0, count: 2)
    for v in 0..<nodes {
        let neighbours = g.neighbours[g.offsets[v]..<g.offsets[v + 1]]
        #expect(neighbours.allSatisfy { $0 >= 0 && Int($0) < nodes })
        // Bipartite: customers link to products only and the reverse.
        #expect(neighbours.allSatisfy { (Int($0) < customers) != (v < customers) })
        #expect(Array(neighbours) == neighbours.sorted())
        for slot in g.offsets[v]..<g.offsets[v + 1] {
            let u = Int(g.neighbours[slot])
            // The reverse edge exists with the same weight.
            let back = g.offsets[u]..<g.offsets[u + 1]
            let reverse = back.first { g.neighbours[$0] == Int32(v) }
            #expect(reverse.map { g.weights[$0] } == g.weights[slot])
            weightSums[v < customers ? 0 : 1] += g.weights[slot]
        }
    }
    #expect(weightSums[0] == weightSums[1])
    // The type flag separates the node types; widths agree.
    let w = data.nodeFeatureWidth
    #expect(data.nodeFeatures.count == nodes * w)
    #expect((0..<nodes).allSatisfy { data.nodeFeatures[$0 * w + w - 1] == ($0 < customers ? 0 : 1) })
    #expect(data.nodeFeatures.allSatisfy { $0.isFinite })

    // A one-rank job's share of it is all of it, and the sampler works on it, deterministically
    // and within range.
    let share = try data.graphShare(of: try #require(data.graphPartition(ranks: 1)), rank: 0)
    #expect(share.offsets == g.offsets && share.neighbours == g.neighbours && share.features == Array(data.nodeFeatures))
    let sampler = NeighbourSampler(graph: share, fanouts: [5, 3], world: SingleProcessCommunicator())
    var r1 = SeededRandom(seed: 1, purpose: .neighbourSampling, epoch: 0, step: 3)
    var r2 = r1
    let seeds = Array(Int32(0)..<Int32(32))
    let a = try sampler.sample(seeds: seeds, random: &r1)
    let b = try sampler.sample(seeds: seeds, random: &r2)
    #expect(a.inputNodes == b.inputNodes && a.blocks == b.blocks)
    #expect(a.inputNodes.allSatisfy { $0 >= 0 && Int($0) < nodes })
    let hop = a.blocks.last!
    for d in 0..<hop.destinationCount {
        let sampled = Int(hop.offsets[d + 1] - hop.offsets[d])
        #expect(sampled == min(5, g.degree(of: Int(seeds[d]))))
    }
}

@Test func syntheticDataIsDeterministicAndLearnable() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let options = SyntheticOptions(customers: 2_000, products: 80, seed: 3)
    let a = try generateSyntheticEvents(options: options, to: scratch.path + "/a.csv")
    let b = try generateSyntheticEvents(options: options, to: scratch.path + "/b.csv")
    let bytesA = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/a.csv"))
    #expect(bytesA == (try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/b.csv"))))
    #expect(a.rows == b.rows && a.rows > 2_000)
    var importOptions = ImportOptions()
    importOptions.maxRejectFraction = 0
    let (summary, data) = try importFile(scratch.path + "/a.csv", into: scratch, importOptions)
    #expect(summary.stats.rejected == 0)
    let churn = summary.manifest.labels.churnRate
    #expect(churn > 0.2 && churn < 0.95)
    // History predicts churn: customers active in the last history period churn less.
    var activeChurn = [0.0, 0.0], activeCount = [0.0, 0.0]
    let t = data.historyLength, f = data.featureCount
    for c in 0..<data.customerCount {
        let length = Int(data.lengths[c])
        var recent = false
        for s in max(0, length - 4)..<length where rawFeature(data, customer: c, step: s, feature: 3) > 0.5 { recent = true }
        _ = (t, f)
        activeChurn[recent ? 1 : 0] += Double(data.churn[c])
        activeCount[recent ? 1 : 0] += 1
    }
    #expect(activeCount[0] > 0 && activeCount[1] > 0)
    #expect(activeChurn[1] / activeCount[1] < activeChurn[0] / activeCount[0] - 0.1)
}

// MARK: Damaged datasets

private func copyDataset(_ from: String, _ to: String) throws {
    try FileManager.default.copyItem(atPath: from, toPath: to)
}

private func expectRefusal(_ path: String, naming file: String, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        _ = try CustomerDataset.open(at: URL(fileURLWithPath: path))
        Issue.record("a damaged dataset was accepted (\(file))", sourceLocation: sourceLocation)
    } catch let error as DataError {
        guard case let .damagedDataset(named, _) = error else {
            Issue.record("wrong error \(error)", sourceLocation: sourceLocation)
            return
        }
        #expect(named.hasSuffix("/" + file), "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("wrong error \(error)", sourceLocation: sourceLocation)
    }
}

@Test("a path with no dataset is called that, not damage")
func aMissingDatasetIsNotCalledDamaged() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let nowhere = scratch.path + "/no-such-dataset"
    #expect(throws: DataError.notADataset(path: nowhere, reason: "the directory does not exist")) {
        try CustomerDataset.open(at: URL(fileURLWithPath: nowhere))
    }
    let empty = scratch.path + "/empty"
    try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: false)
    let error = #expect(throws: DataError.self) { try CustomerDataset.open(at: URL(fileURLWithPath: empty)) }
    #expect(error?.description.contains("no dataset at \(empty): the directory has no manifest.json") == true, "\(String(describing: error))")
    #expect(error?.description.contains("damaged") == false)
}

@Test func damagedDatasetsAreRefusedNamingTheFile() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (_, _) = try syntheticDataset(scratch)
    let good = scratch.path + "/dataset"

    let truncated = scratch.path + "/truncated"
    try copyDataset(good, truncated)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: truncated + "/features.f32"))
    let size = try handle.seekToEnd()
    try handle.truncate(atOffset: size - 4)
    try handle.close()
    expectRefusal(truncated, naming: "features.f32")

    for name in ["lengths.i32", "graph_neighbours.i32", "split.u8", "customer_ids.txt", "node_features.f32"] {
        let flipped = scratch.path + "/flipped-\(name)"
        try copyDataset(good, flipped)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: flipped + "/" + name))
        bytes[bytes.count / 2] ^= 0x10
        try bytes.write(to: URL(fileURLWithPath: flipped + "/" + name))
        expectRefusal(flipped, naming: name)
    }

    let missing = scratch.path + "/missing"
    try copyDataset(good, missing)
    try FileManager.default.removeItem(atPath: missing + "/churn.f32")
    expectRefusal(missing, naming: "churn.f32")

    // An edited manifest (say, someone changes the normalisation) no longer matches its fingerprint.
    let edited = scratch.path + "/edited"
    try copyDataset(good, edited)
    var text = try String(contentsOfFile: edited + "/manifest.json", encoding: .utf8)
    text = text.replacingOccurrences(of: "\"historyPeriods\" : 39", with: "\"historyPeriods\" : 38")
    try text.write(toFile: edited + "/manifest.json", atomically: true, encoding: .utf8)
    expectRefusal(edited, naming: "manifest.json")

    let garbage = scratch.path + "/garbage"
    try copyDataset(good, garbage)
    try "{ not json".write(toFile: garbage + "/manifest.json", atomically: true, encoding: .utf8)
    expectRefusal(garbage, naming: "manifest.json")

    // A flipped byte that keeps values in range is still caught by the hash (features).
    let subtle = scratch.path + "/subtle"
    try copyDataset(good, subtle)
    var features = try Data(contentsOf: URL(fileURLWithPath: subtle + "/features.f32"))
    features[0] ^= 0x01
    try features.write(to: URL(fileURLWithPath: subtle + "/features.f32"))
    expectRefusal(subtle, naming: "features.f32")
    // ... and skipped when the caller opts out of hashing, while sizes are still checked.
    #expect(throws: Never.self) { try CustomerDataset.open(at: URL(fileURLWithPath: subtle), verifyContents: false) }
    #expect(throws: DataError.self) { try CustomerDataset.open(at: URL(fileURLWithPath: truncated), verifyContents: false) }
}

/// The damage `verify` reports, or nil when it accepts.
private func verificationFailure(_ dataset: CustomerDataset, customers: [Range<Int>], graphNodes: [Range<Int>]) -> String? {
    do {
        try dataset.verify(customers: customers, graphNodes: graphNodes)
        return nil
    } catch let error as DataError {
        guard case let .damagedDataset(file, reason) = error else { return "\(error)" }
        return (file as NSString).lastPathComponent + ": " + reason
    } catch {
        return "\(error)"
    }
}

@Test func aRankVerifiesThePartsOfItsOwnCustomersOnly() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let csv = scratch.path + "/synth.csv"
    _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 400, products: 60, seed: 11), to: csv)
    var options = ImportOptions()
    options.maxRejectFraction = 0
    options.rowsPerPart = 50
    let (summary, clean) = try importFile(csv, into: scratch, options)
    let n = clean.customerCount
    let layout = try #require(summary.manifest.partLayout)
    #expect(layout.customerParts.count == (n + 49) / 50)
    #expect(summary.manifest.files.allSatisfy { $0.parts?.count == ($0.name.hasPrefix("graph") || $0.name.hasPrefix("node") ? layout.nodeParts.count : layout.customerParts.count) })

    // One flipped byte in customer 260's features (part 5), one in the last product part's edges.
    let damaged = scratch.path + "/damaged"
    try copyDataset(scratch.path + "/dataset", damaged)
    var features = try Data(contentsOf: URL(fileURLWithPath: damaged + "/features.f32"))
    features[260 * clean.historyLength * clean.featureCount * 4 + 3] ^= 0x01
    try features.write(to: URL(fileURLWithPath: damaged + "/features.f32"))
    var neighbours = try Data(contentsOf: URL(fileURLWithPath: damaged + "/graph_neighbours.i32"))
    neighbours[neighbours.count - 4] ^= 0x01  // the low byte: still a node in range
    try neighbours.write(to: URL(fileURLWithPath: damaged + "/graph_neighbours.i32"))

    let dataset = try CustomerDataset.open(at: URL(fileURLWithPath: damaged), verifyContents: false)
    #expect(verificationFailure(dataset, customers: [0..<100, 300..<n], graphNodes: []) == nil)
    let customerDamage = verificationFailure(dataset, customers: [240..<251], graphNodes: [])
    #expect(customerDamage?.hasPrefix("features.f32: part 5 (rows 250..<300") == true, "\(customerDamage ?? "accepted")")
    // The damaged edge is the last product's: a rank holding every other node accepts.
    let lastPart = layout.nodeParts.count - 1
    let nodes = n + layout.products
    #expect(layout.nodePartIndices(overlapping: 0..<nodes) == Array(0...lastPart))
    #expect(layout.nodePartIndices(overlapping: n - 1 ..< n + 1) == [(n - 1) / 50, (n + 49) / 50])
    #expect(verificationFailure(dataset, customers: [], graphNodes: [0..<n, n..<layout.nodeParts[lastPart].lowerBound]) == nil)
    let graphDamage = verificationFailure(dataset, customers: [], graphNodes: [nodes - 1 ..< nodes])
    #expect(graphDamage?.hasPrefix("graph_neighbours.i32: part \(lastPart) ") == true, "\(graphDamage ?? "accepted")")
    #expect(throws: DataError.self) { try CustomerDataset.open(at: URL(fileURLWithPath: damaged)) }
}

/// A dataset of format 1 (whole-file hashes, no parts) is still read and verified.
@Test func formatOneDatasetsStayReadable() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (_, current) = try syntheticDataset(scratch)
    let directory = scratch.path + "/dataset"
    var manifest = current.manifest
    manifest.formatVersion = 1
    manifest.rowsPerPart = nil
    for k in manifest.files.indices {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + manifest.files[k].name))
        manifest.files[k].contentHash = bytes.withUnsafeBytes { ContentHasher.hex(ContentHasher.hash($0)) }
        manifest.files[k].parts = nil
    }
    manifest.fingerprint = manifest.computeFingerprint()
    try manifest.encoded().write(to: URL(fileURLWithPath: directory + "/manifest.json"))
    let reopened = try CustomerDataset.open(at: URL(fileURLWithPath: directory))
    #expect(reopened.manifest.formatVersion == 1)
    #expect(Array(reopened.features) == Array(current.features))
    try reopened.verify(customers: [0..<10], graphNodes: [0..<1])

    var features = try Data(contentsOf: URL(fileURLWithPath: directory + "/features.f32"))
    features[features.count - 1] ^= 0x01
    try features.write(to: URL(fileURLWithPath: directory + "/features.f32"))
    expectRefusal(directory, naming: "features.f32")
}

@Test func reimportReplacesADatasetAtomically() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let input = scratch.file("e.csv", "customer_id,timestamp,amount\na,1,2\nb,2,3\n")
    let out = scratch.path + "/ds"
    var options = dayOptions(cutoff: 27)
    let first = try Importer.run(input: input, output: out, options: options)
    options.historyPeriods = 3
    let second = try Importer.run(input: input, output: out, options: options)
    #expect(first.manifest.fingerprint != second.manifest.fingerprint)
    #expect(try CustomerDataset.open(at: URL(fileURLWithPath: out)).manifest == second.manifest)
    let entries = try FileManager.default.contentsOfDirectory(atPath: scratch.path)
    #expect(entries.sorted() == ["ds", "e.csv"])
    // Something that is not a dataset is never replaced.
    let precious = scratch.file("precious.txt", "keep me")
    #expect(throws: DataError.self) { try Importer.run(input: input, output: precious, options: options) }
    #expect(try String(contentsOfFile: precious, encoding: .utf8) == "keep me")
}

@Test("every node's neighbours come sorted by id with their weights, in short rows and long ones",
      arguments: [5, 33, 200])
func graphRowsSortedWithTheirWeights(productsOfTheBigBuyer: Int) {
    let products = ByteInterner()
    // Interned in reverse id order, so every row arrives unsorted.
    for p in (0..<productsOfTheBigBuyer).reversed() { _ = withBytesOf(String(format: "p%04d", p)) { products.intern($0, $1) } }
    // Customer 0 bought every product, product k (by id) k + 1 times; customer 1 the last three.
    let count = productsOfTheBigBuyer
    var pairs: [(Int32, Int32, Int32)] = (0..<count).map { index in (0, Int32(index), Int32(count - index)) }
    pairs += (0..<3).map { index in (1, Int32(index), 1) }
    var totals = GraphCustomerTotals()
    for _ in 0..<2 {
        totals.transactions.append(1); totals.spend.append(1); totals.recencyPeriods.append(0); totals.tenurePeriods.append(1)
    }
    let (graph, info) = buildCustomerProductGraph(
        customerCount: 2, products: products, forEachPair: { _, body in for (c, p, n) in pairs { body(c, p, n) } },
        totals: totals, statistics: nil)
    let csr = graph.csr
    #expect(info.directedEdges == 2 * (count + 3))
    let bigRow = csr.offsets[0]..<csr.offsets[1]
    #expect(Array(csr.neighbours[bigRow]) == (0..<count).map { Int32(2 + $0) })
    #expect(Array(csr.weights[bigRow]) == (0..<count).map { Float($0 + 1) })
    // The reverse rows: product k lists customer 0, and customer 1 for the three last ids.
    for k in 0..<count {
        let row = csr.offsets[2 + k]..<csr.offsets[3 + k]
        #expect(Array(csr.neighbours[row]) == (k >= count - 3 ? [0, 1] : [0]))
    }
}
