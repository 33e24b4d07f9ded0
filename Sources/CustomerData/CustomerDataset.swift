import Foundation

/// A dataset directory opened for training: arrays memory-mapped and checked.
///
/// Opening checks the manifest's fingerprint and every file's size against the manifest and
/// the shapes it declares. With `verifyContents` it also recomputes the content hashes and
/// checks the values that index into other arrays (lengths, splits, stages, graph ids); a rank
/// of a training job opens without and verifies only the parts that hold its own customers
/// (`verify(customers:graphNodes:)`). A damaged or mismatched dataset is refused with the name
/// of the file at fault rather than read as garbage.
public final class CustomerDataset: @unchecked Sendable {
    public let directory: URL
    public let manifest: DatasetManifest
    /// N: customers, T: history periods, F: features per period.
    public let customerCount: Int
    public let historyLength: Int
    public let featureCount: Int

    /// [N, T, F] normalised features, zero beyond each customer's length.
    public let features: UnsafeBufferPointer<Float>
    /// [N] valid steps per customer, 1...T.
    public let lengths: UnsafeBufferPointer<Int32>
    /// [N] 1 when the customer made no purchase in the horizon.
    public let churn: UnsafeBufferPointer<Float>
    /// [N] spend in the horizon (the CLV target), raw units.
    public let spend: UnsafeBufferPointer<Float>
    /// [N] lifecycle stage in the horizon, index into `manifest.stageNames`.
    public let stage: UnsafeBufferPointer<Int32>
    /// [N] 0 train, 1 validation, 2 test.
    public let split: UnsafeBufferPointer<UInt8>
    /// Customers 0..<N then products; nil when the source had no product ids.
    public let graph: CSRGraph?
    /// [N + P, G] node features; empty without a graph.
    public let nodeFeatures: UnsafeBufferPointer<Float>
    public let nodeFeatureWidth: Int

    let mapped: [String: MappedFile]
    private var mappings: [MappedFile] { Array(mapped.values) }
    /// features.f32 opened for `readFeatures`.
    private let featuresDescriptor: Int32

    public enum SplitPart: UInt8, Sendable, CaseIterable { case train = 0, validation = 1, test = 2 }

    private init(directory: URL, manifest: DatasetManifest, mapped: [String: MappedFile], graph: CSRGraph?, featuresFile: Int32) {
        self.directory = directory
        self.manifest = manifest
        customerCount = manifest.counts.customers
        historyLength = manifest.spec.historyPeriods
        featureCount = manifest.featureNames.count
        features = mapped["features.f32"]!.buffer(as: Float.self)
        lengths = mapped["lengths.i32"]!.buffer(as: Int32.self)
        churn = mapped["churn.f32"]!.buffer(as: Float.self)
        spend = mapped["spend.f32"]!.buffer(as: Float.self)
        stage = mapped["stage.i32"]!.buffer(as: Int32.self)
        split = mapped["split.u8"]!.buffer(as: UInt8.self)
        self.graph = graph
        nodeFeatures = mapped["node_features.f32"]?.buffer(as: Float.self) ?? UnsafeBufferPointer(start: nil, count: 0)
        nodeFeatureWidth = manifest.graph?.nodeFeatureNames.count ?? 0
        self.mapped = mapped
        featuresDescriptor = featuresFile
    }

    deinit { _ = close(featuresDescriptor) }

    /// The [T, F] feature rows of customer `index`.
    public func features(of index: Int) -> UnsafeBufferPointer<Float> {
        let size = historyLength * featureCount
        return UnsafeBufferPointer(rebasing: features[index * size ..< (index + 1) * size])
    }

    /// Dataset indices of the customers in one part of the split, ascending.
    public func indices(in part: SplitPart) -> [Int] {
        (0..<customerCount).filter { split[$0] == part.rawValue }
    }

    /// `DriftReference.evenlySpaced(indices(in: part), limit:)` without holding every index of
    /// the part: two passes over the split column, keeping only the `limit` chosen.
    public func evenlySpacedIndices(in part: SplitPart, limit: Int) -> [Int] {
        var total = 0
        for value in split where value == part.rawValue { total += 1 }
        guard total > limit, limit > 0 else { return indices(in: part) }
        var chosen: [Int] = []
        chosen.reserveCapacity(limit)
        var position = 0
        for (index, value) in split.enumerated() where value == part.rawValue {
            if chosen.count < limit && position == chosen.count * total / limit { chosen.append(index) }
            position += 1
        }
        return chosen
    }

    /// Customer ids in dataset order (read from customer_ids.txt).
    public func customerIDs() throws -> [String] {
        let file = try MappedFile(path: directory.appendingPathComponent("customer_ids.txt").path)
        var ids: [String] = []
        ids.reserveCapacity(customerCount)
        var start = 0
        let bytes = file.bytes
        for (i, b) in bytes.enumerated() where b == 10 {
            ids.append(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self))
            start = i + 1
        }
        return ids
    }

    /// Drops the pages read so far from this process's resident set (`MappedFile.releaseResidentPages`):
    /// the arrays stay readable. A caller that streams through the features calls it now and then
    /// to keep its memory bounded by what it holds, not by what it has read.
    public func releaseResidentPages() {
        for mapping in mappings { mapping.releaseResidentPages() }
    }

    /// Copies customer `index`'s [T, F] feature rows into `destination` with `pread`, leaving
    /// the mapping untouched: a caller that reads every customer once in a shuffled order (the
    /// coordinator sending shards) keeps a resident set of what it holds, where reading through
    /// the mapping kept every page it touched, 64 KiB per row with the kernel's fault-around.
    public func readFeatures(of index: Int, into destination: UnsafeMutablePointer<Float>) throws {
        precondition(index >= 0 && index < customerCount)
        let bytes = historyLength * featureCount * MemoryLayout<Float>.stride
        let path = directory.appendingPathComponent("features.f32").path
        var done = 0
        while done < bytes {
            let read = pread(featuresDescriptor, UnsafeMutableRawPointer(destination) + done, bytes - done,
                             off_t(index * bytes + done))
            if read < 0 && errno == EINTR { continue }
            guard read > 0 else {
                throw DataError.io(path: path, operation: "read customer \(index)'s features",
                                  message: read == 0 ? "unexpected end of file" : systemMessage())
            }
            done += read
        }
    }

    /// Opens and verifies the dataset in `directory`. `loadGraph` false leaves the customer–product
    /// graph, which only the graph model reads, on disk (`graph` is then nil): at 1M customers
    /// its arrays are 150 MB of heap. `graphWeights` false loads it without its edge weights,
    /// which the sampler does not read (4 bytes a directed edge, 50 MB at 1M customers).
    public static func open(at directory: URL, verifyContents: Bool = true, loadGraph: Bool = true,
                            graphWeights: Bool = true) throws -> CustomerDataset {
        guard 1.littleEndian == 1 else { throw DataError.damagedDataset(file: directory.path, reason: "datasets are little-endian and this machine is not") }
        let manifestPath = directory.appendingPathComponent("manifest.json").path
        // A wrong --data path is not damage: say that nothing is there.
        guard isDirectory(directory.path) else {
            throw DataError.notADataset(path: directory.path, reason: fileExists(directory.path) ? "it is a file, not a directory" : "the directory does not exist")
        }
        guard fileExists(manifestPath) else {
            throw DataError.notADataset(path: directory.path, reason: "the directory has no manifest.json")
        }
        let manifestData: Data
        do {
            manifestData = try Data(contentsOf: URL(fileURLWithPath: manifestPath))
        } catch {
            throw DataError.damagedDataset(file: manifestPath, reason: "cannot be read (\(error.localizedDescription))")
        }
        let manifest: DatasetManifest
        do {
            manifest = try JSONDecoder().decode(DatasetManifest.self, from: manifestData)
        } catch {
            throw DataError.damagedDataset(file: manifestPath, reason: "is not a valid manifest (\(error))")
        }
        guard DatasetManifest.readableFormatVersions.contains(manifest.formatVersion) else {
            throw DataError.damagedDataset(file: manifestPath, reason: "format version \(manifest.formatVersion); this reader understands \(DatasetManifest.readableFormatVersions.map(String.init).joined(separator: " and "))")
        }
        guard manifest.computeFingerprint() == manifest.fingerprint else {
            throw DataError.damagedDataset(file: manifestPath, reason: "fingerprint \(manifest.fingerprint) does not match its contents (\(manifest.computeFingerprint())); the manifest was edited or damaged")
        }

        let n = manifest.counts.customers, t = manifest.spec.historyPeriods, f = manifest.featureNames.count
        var expected: [String: (dtype: String, count: Int)] = [
            "features.f32": ("f32", n * t * f), "lengths.i32": ("i32", n), "churn.f32": ("f32", n),
            "spend.f32": ("f32", n), "stage.i32": ("i32", n), "split.u8": ("u8", n), "customer_ids.txt": ("text", -1),
        ]
        if let g = manifest.graph {
            let nodes = g.customerNodes + g.productNodes
            guard g.customerNodes == n else {
                throw DataError.damagedDataset(file: manifestPath, reason: "graph has \(g.customerNodes) customer nodes for \(n) customers")
            }
            expected["graph_offsets.i64"] = ("i64", nodes + 1)
            expected["graph_neighbours.i32"] = ("i32", g.directedEdges)
            expected["graph_weights.f32"] = ("f32", g.directedEdges)
            expected["node_features.f32"] = ("f32", nodes * g.nodeFeatureNames.count)
        }
        let entries = Dictionary(manifest.files.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var mapped: [String: MappedFile] = [:]
        for name in expected.keys.sorted() {
            let path = directory.appendingPathComponent(name).path
            guard let entry = entries[name] else { throw DataError.damagedDataset(file: path, reason: "not listed in manifest.json") }
            guard fileExists(path) else { throw DataError.damagedDataset(file: path, reason: "missing") }
            let file = try MappedFile(path: path)
            guard file.count == entry.bytes else {
                throw DataError.damagedDataset(file: path, reason: "\(file.count) bytes, manifest says \(entry.bytes) (truncated or overwritten)")
            }
            let (dtype, count) = expected[name]!
            let elementSize = ["f32": 4, "i32": 4, "i64": 8, "u8": 1, "text": 1][dtype]!
            guard entry.dtype == dtype, count < 0 || entry.bytes == count * elementSize else {
                throw DataError.damagedDataset(file: path, reason: "expected \(count) \(dtype) values (\(count * elementSize) bytes), found \(entry.bytes) bytes of \(entry.dtype)")
            }
            try checkParts(entry, of: manifest, path: path)
            mapped[name] = file
        }

        if verifyContents {
            let nodeParts = manifest.partLayout?.nodeParts.count ?? 0
            try verify(mapped, manifest: manifest, directory: directory, customers: [0..<n], graphParts: Array(0..<nodeParts))
        }
        var graph: CSRGraph?
        if loadGraph, let g = manifest.graph {
            let offsets = mapped["graph_offsets.i64"]!.buffer(as: Int64.self)
            let neighbours = mapped["graph_neighbours.i32"]!.buffer(as: Int32.self)
            let nodes = g.customerNodes + g.productNodes
            let offsetsPath = directory.appendingPathComponent("graph_offsets.i64").path
            guard offsets[0] == 0, Int(offsets[nodes]) == g.directedEdges else {
                throw DataError.damagedDataset(file: offsetsPath, reason: "offsets must start at 0 and end at \(g.directedEdges)")
            }
            for v in 0..<nodes where offsets[v] > offsets[v + 1] {
                throw DataError.damagedDataset(file: offsetsPath, reason: "offsets decrease at node \(v)")
            }
            for (k, u) in neighbours.enumerated() where u < 0 || Int(u) >= nodes {
                throw DataError.damagedDataset(file: directory.appendingPathComponent("graph_neighbours.i32").path, reason: "entry \(k) is node \(u), outside 0..<\(nodes)")
            }
            graph = CSRGraph(offsets: offsets.map { Int($0) }, neighbours: Array(neighbours),
                             weights: graphWeights ? Array(mapped["graph_weights.f32"]!.buffer(as: Float.self)) : [])
            // The heap copies are what is read from now on: the mapped pages the checks and
            // copies touched would otherwise stay in the resident set beside them.
            for name in ["graph_offsets.i64", "graph_neighbours.i32", "graph_weights.f32"] { mapped[name]?.releaseResidentPages() }
        }
        let featuresPath = directory.appendingPathComponent("features.f32").path
        let featuresFile = Glibc.open(featuresPath, O_RDONLY | O_CLOEXEC)
        guard featuresFile >= 0 else { throw DataError.io(path: featuresPath, operation: "open", message: systemMessage()) }
        return CustomerDataset(directory: directory, manifest: manifest, mapped: mapped, graph: graph, featuresFile: featuresFile)
    }

    /// The datasets of the earlier cut-offs (`DatasetManifest.Snapshots`), latest first; empty
    /// for one cut-off. Each is opened as `open` does (with `verifyContents`) and refused when it
    /// is not the one this manifest recorded: another fingerprint, window, normalisation or
    /// feature layout, or a customer outside the training split.
    public func snapshotDatasets(verifyContents: Bool = true) throws -> [CustomerDataset] {
        guard let snapshots = manifest.snapshots else { return [] }
        return try snapshots.datasets.map { entry in
            let url = directory.appendingPathComponent(entry.directory)
            let path = url.appendingPathComponent("manifest.json").path
            let earlier = try CustomerDataset.open(at: url, verifyContents: verifyContents, loadGraph: false)
            let m = earlier.manifest
            func refuse(_ reason: String) -> DataError { .damagedDataset(file: path, reason: reason) }
            guard m.fingerprint == entry.fingerprint else {
                throw refuse("fingerprint \(m.fingerprint); the dataset's manifest records \(entry.fingerprint) for this earlier cut-off")
            }
            var expectedSpec = manifest.spec
            expectedSpec.cutoffDay = entry.cutoffDay
            guard m.spec == expectedSpec, m.counts.customers == entry.customers else {
                throw refuse("window \(m.spec) with \(m.counts.customers) customers; the dataset's manifest records \(expectedSpec) with \(entry.customers)")
            }
            guard m.normalisation == manifest.normalisation, m.featureNames == manifest.featureNames else {
                throw refuse("its features are not normalised as the main cut-off's")
            }
            guard m.split.sizes[1] == 0 && m.split.sizes[2] == 0 else {
                throw refuse("it holds \(m.split.sizes[1]) validation and \(m.split.sizes[2]) test customers; an earlier cut-off holds training customers only")
            }
            return earlier
        }
    }

    /// Verifies the parts of the per-customer files that hold `customers` (their hashes and
    /// values) and the parts of the graph's files that hold `graphNodes` (node ids: customers,
    /// then products), the share of the graph a rank of a job holds. A format-1 dataset has no
    /// parts: its files are verified whole, whatever the arguments.
    public func verify(customers: [Range<Int>], graphNodes: [Range<Int>]) throws {
        var graphParts = Set<Int>()
        if let layout = manifest.partLayout {
            for nodes in graphNodes { graphParts.formUnion(layout.nodePartIndices(overlapping: nodes)) }
        }
        try Self.verify(mapped, manifest: manifest, directory: directory, customers: customers, graphParts: graphParts.sorted())
    }

    static let customerFileNames = ["features.f32", "customer_ids.txt", "lengths.i32", "churn.f32", "spend.f32", "stage.i32", "split.u8"]
    static let graphFileNames = ["graph_offsets.i64", "graph_neighbours.i32", "graph_weights.f32", "node_features.f32"]

    private static func verify(
        _ mapped: [String: MappedFile], manifest: DatasetManifest, directory: URL, customers: [Range<Int>], graphParts: [Int]
    ) throws {
        let entries = Dictionary(manifest.files.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        guard let layout = manifest.partLayout else {
            for (name, file) in mapped.sorted(by: { $0.key < $1.key }) {
                let actual = ContentHasher.hex(file.contentHash())
                guard actual == entries[name]!.contentHash else {
                    throw DataError.damagedDataset(file: path(name), reason: "content hash \(actual) does not match the manifest's \(entries[name]!.contentHash)")
                }
            }
            try checkValues(mapped, manifest: manifest, directory: directory, rows: 0..<manifest.counts.customers)
            return
        }
        func verifyPart(_ name: String, _ index: Int, rows: Range<Int>) throws {
            guard let file = mapped[name], let entry = entries[name], let parts = entry.parts else { return }
            let offsets = entry.partOffsets
            let actual = ContentHasher.hex(file.contentHash(of: offsets[index] ..< offsets[index + 1]))
            guard actual == parts[index].hash else {
                throw DataError.damagedDataset(file: path(name), reason: "part \(index) (rows \(rows.lowerBound)..<\(rows.upperBound), bytes \(offsets[index])..<\(offsets[index + 1])) has content hash \(actual), the manifest says \(parts[index].hash)")
            }
            if name == "customer_ids.txt" {
                var lines = 0
                for byte in file.bytes[offsets[index] ..< offsets[index + 1]] where byte == 10 { lines += 1 }
                guard lines == rows.count else {
                    throw DataError.damagedDataset(file: path(name), reason: "part \(index) holds \(lines) lines for \(rows.count) customers")
                }
            }
        }
        var indices = Set<Int>()
        for rows in customers { indices.formUnion(layout.customerPartIndices(overlapping: rows)) }
        let customerParts = layout.customerParts
        for index in indices.sorted() {
            for name in customerFileNames { try verifyPart(name, index, rows: customerParts[index]) }
            try checkValues(mapped, manifest: manifest, directory: directory, rows: customerParts[index])
        }
        let nodeParts = layout.nodeParts
        for index in graphParts where index < nodeParts.count {
            for name in graphFileNames { try verifyPart(name, index, rows: nodeParts[index]) }
        }
    }

    /// A format-2 entry's parts must be those of the layout, add up to the file, and hash to
    /// its content hash: then checking a part's hash checks that part of the file.
    private static func checkParts(_ entry: DatasetFile, of manifest: DatasetManifest, path: String) throws {
        guard let layout = manifest.partLayout else { return }
        guard let parts = entry.parts else { throw DataError.damagedDataset(file: path, reason: "the manifest lists no parts for it") }
        let expected = customerFileNames.contains(entry.name) ? layout.customerParts.count : layout.nodeParts.count
        guard parts.count == expected else {
            throw DataError.damagedDataset(file: path, reason: "the manifest lists \(parts.count) parts, the layout has \(expected)")
        }
        guard parts.reduce(0, { $0 + $1.bytes }) == entry.bytes, DatasetFile.combinedHash(of: parts) == entry.contentHash else {
            throw DataError.damagedDataset(file: path, reason: "its parts do not add up to the manifest's size and hash")
        }
    }

    private static func checkValues(_ mapped: [String: MappedFile], manifest: DatasetManifest, directory: URL, rows: Range<Int>) throws {
        let t = manifest.spec.historyPeriods
        func fail(_ name: String, _ reason: String) -> DataError {
            DataError.damagedDataset(file: directory.appendingPathComponent(name).path, reason: reason)
        }
        let lengths = mapped["lengths.i32"]!.buffer(as: Int32.self)
        for i in rows where lengths[i] < 1 || Int(lengths[i]) > t {
            throw fail("lengths.i32", "customer \(i) has length \(lengths[i]), outside 1...\(t)")
        }
        let split = mapped["split.u8"]!.buffer(as: UInt8.self)
        for i in rows where split[i] > 2 {
            throw fail("split.u8", "customer \(i) has split \(split[i]), outside 0...2")
        }
        let stages = Int32(manifest.stageNames.count)
        let stage = mapped["stage.i32"]!.buffer(as: Int32.self)
        for i in rows where stage[i] < 0 || stage[i] >= stages {
            throw fail("stage.i32", "customer \(i) has stage \(stage[i]), outside 0..<\(stages)")
        }
        let churn = mapped["churn.f32"]!.buffer(as: Float.self)
        for i in rows where churn[i] != 0 && churn[i] != 1 {
            throw fail("churn.f32", "customer \(i) has churn label \(churn[i]), not 0 or 1")
        }
        // Format 2 counts each part's lines when it verifies the part.
        guard manifest.partLayout == nil else { return }
        var lines = 0
        for b in mapped["customer_ids.txt"]!.bytes where b == 10 { lines += 1 }
        guard lines == manifest.counts.customers else {
            throw fail("customer_ids.txt", "\(lines) lines for \(manifest.counts.customers) customers")
        }
    }
}
