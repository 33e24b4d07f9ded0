import Collectives
import Foundation

/// How a dataset's files are cut into parts that are hashed on their own.
///
/// A part is a fixed number of rows (`rowsPerPart` customers, or graph nodes), so where the
/// parts begin depends on the dataset alone, not on how many ranks wrote it: a rank of an
/// import writes whole parts and hashes them as it goes, a rank of a training job verifies
/// only the parts that hold its customers, and the manifest's hashes (and so its fingerprint)
/// are the same whatever the number of ranks that wrote it.
public struct DatasetPartLayout: Sendable, Equatable {
    public static let defaultRowsPerPart = 65_536

    public let rowsPerPart: Int
    public let customers: Int
    /// Product nodes of the graph; 0 without one.
    public let products: Int

    public init(rowsPerPart: Int, customers: Int, products: Int) {
        self.rowsPerPart = max(1, rowsPerPart)
        self.customers = customers
        self.products = products
    }

    /// Parts of the per-customer files, as customer ranges.
    public var customerParts: [Range<Int>] { chunks(of: 0..<customers) }

    /// Parts of the graph's node-indexed files: the customer nodes' parts, then the product
    /// nodes' (node ids `customers..<customers + products`), so that no part mixes the two.
    public var nodeParts: [Range<Int>] {
        chunks(of: 0..<customers) + chunks(of: customers..<customers + products)
    }

    /// Indices into `customerParts` of the parts that overlap `rows`.
    public func customerPartIndices(overlapping rows: Range<Int>) -> Range<Int> {
        guard !rows.isEmpty else { return 0..<0 }
        return rows.lowerBound / rowsPerPart ..< (rows.upperBound - 1) / rowsPerPart + 1
    }

    /// Indices into `nodeParts` of the parts that overlap the node ids `nodes`.
    public func nodePartIndices(overlapping nodes: Range<Int>) -> [Int] {
        let clamped = nodes.clamped(to: 0 ..< customers + products)
        guard !clamped.isEmpty else { return [] }
        let customerPartCount = (customers + rowsPerPart - 1) / rowsPerPart
        // Product parts restart at node `customers`, so a part's index counts from there.
        func index(of node: Int) -> Int {
            node < customers ? node / rowsPerPart : customerPartCount + (node - customers) / rowsPerPart
        }
        return Array(index(of: clamped.lowerBound) ... index(of: clamped.upperBound - 1))
    }

    private func chunks(of range: Range<Int>) -> [Range<Int>] {
        stride(from: range.lowerBound, to: range.upperBound, by: rowsPerPart).map { $0 ..< min($0 + rowsPerPart, range.upperBound) }
    }
}

extension DatasetFile {
    /// One part's size and `ContentHasher` value (16 hex digits).
    public struct Part: Codable, Sendable, Equatable {
        public var bytes: Int
        public var hash: String
        /// In `split.u8` only: the part's training, validation and test customers, so that a
        /// rank finds its own customers without reading the whole column.
        public var splitSizes: [Int]?

        public init(bytes: Int, hash: String, splitSizes: [Int]? = nil) {
            self.bytes = bytes
            self.hash = hash
            self.splitSizes = splitSizes
        }
    }

    /// The file's hash as the hash of its parts' sizes and hashes: the same value for the same
    /// bytes, however many writers the parts had.
    static func combinedHash(of parts: [Part]) -> String {
        var hasher = ContentHasher(seed: 0x7061_7274)
        for part in parts {
            withUnsafeBytes(of: UInt64(part.bytes).littleEndian) { hasher.update($0) }
            withUnsafeBytes(of: (UInt64(part.hash, radix: 16) ?? 0).littleEndian) { hasher.update($0) }
        }
        return ContentHasher.hex(hasher.finalize())
    }

    /// The entry of a file made of `parts` in order.
    init(name: String, parts: [Part], dtype: String, shape: [Int]) {
        self.init(name: name, bytes: parts.reduce(0) { $0 + $1.bytes }, contentHash: Self.combinedHash(of: parts),
                  dtype: dtype, shape: shape, parts: parts)
    }

    /// Byte offset of each part, and of the file's end.
    var partOffsets: [Int] {
        var offsets = [0]
        for part in parts ?? [] { offsets.append(offsets.last! + part.bytes) }
        return offsets
    }
}

/// Element ranges of the four graph files for each node part (`layout.nodeParts`): offsets
/// (the last part also holds the final entry), neighbours and weights (the part's nodes'
/// edges), node features (`width` values a node).
func graphElementRanges(layout: DatasetPartLayout, offsets: (Int) -> Int, width: Int)
    -> (offsets: [Range<Int>], edges: [Range<Int>], nodeFeatures: [Range<Int>]) {
    let parts = layout.nodeParts
    let nodes = layout.customers + layout.products
    return (
        parts.map { $0.lowerBound ..< ($0.upperBound == nodes ? nodes + 1 : $0.upperBound) },
        parts.map { offsets($0.lowerBound) ..< offsets($0.upperBound) },
        parts.map { $0.lowerBound * width ..< $0.upperBound * width }
    )
}

/// Moments of float values summed exactly: each value (or one customer's sum over its
/// sequence) and its square rounded to fixed point (2⁻²⁴) in 128-bit integers, so the sums do
/// not depend on the order or the grouping of the terms, and statistics fitted by several ranks
/// equal those of one process, bit for bit. Only the rounding to 2⁻²⁴ is lost (below 3e-8 a
/// term); magnitudes above 10²⁰ (no feature comes near) count as ±10²⁰.
struct ExactMoments: Sendable, Equatable {
    private(set) var count = 0
    private(set) var sum: Int128 = 0
    private(set) var squares: Int128 = 0

    private static let scale = 16_777_216.0

    @inline(__always)
    mutating func add(_ value: Float) {
        add(count: 1, sum: Double(value), squares: Double(value) * Double(value))
    }

    /// Adds `count` values whose sum and sum of squares are given.
    @inline(__always)
    mutating func add(count: Int, sum: Double, squares: Double) {
        add(count: count, sum: Self.fixed(sum), squares: Self.fixed(squares))
    }

    /// Adds `count` values whose sums are given in fixed point.
    @inline(__always)
    mutating func add(count: Int, sum: Int128, squares: Int128) {
        self.count &+= count
        self.sum &+= sum
        self.squares &+= squares
    }

    /// Rounded half away from zero; NaN counts as 0.
    @inline(__always)
    private static func fixed(_ value: Double) -> Int128 {
        let clamped = value.isNaN ? 0 : min(1e20, max(-1e20, value)) * scale
        return Int128(clamped + (clamped < 0 ? -0.5 : 0.5))
    }

    mutating func add(_ other: ExactMoments) {
        add(count: other.count, sum: other.sum, squares: other.squares)
    }

    var mean: Double { count == 0 ? 0 : Double(sum) / Self.scale / Double(count) }

    /// Population variance.
    var variance: Double {
        guard count > 0 else { return 0 }
        let m = mean
        return max(0, Double(squares) / Self.scale / Double(count) - m * m)
    }

    init() {}
}

extension Array where Element == ExactMoments {
    /// Every rank's moments (the same number on each) summed, on every rank.
    func summed(across world: any Communicator) throws -> [ExactMoments] {
        guard world.size > 1 else { return self }
        let totals = try flatMap { [Int128($0.count), $0.sum, $0.squares] }.summed(across: world)
        return indices.map { k in
            var moments = ExactMoments()
            moments.add(count: Int(totals[3 * k]), sum: totals[3 * k + 1], squares: totals[3 * k + 2])
            return moments
        }
    }
}

extension Array where Element == Int128 {
    /// Every rank's values (the same number on each) summed, on every rank: gathered as two
    /// 64-bit halves each, since no collective adds 128-bit integers.
    func summed(across world: any Communicator) throws -> [Int128] {
        guard world.size > 1 else { return self }
        let halves = flatMap { [Int64(truncatingIfNeeded: $0 >> 64), Int64(truncatingIfNeeded: $0)] }
        let gathered = try world.allgather(halves)
        var total = [Int128](repeating: 0, count: count)
        for rank in 0..<world.size {
            for k in 0..<count {
                let start = rank * halves.count + 2 * k
                total[k] &+= Int128(gathered[start]) << 64 | Int128(UInt64(bitPattern: gathered[start + 1]))
            }
        }
        return total
    }
}

/// How many customers of each split (training, validation, test) every part of the split
/// column holds, from the manifest: enough to find any rank's customers without reading all.
public struct SplitPartSizes: Sendable, Equatable {
    public var rowsPerPart: Int
    /// One entry per part of the customer files, each three counts.
    public var sizes: [[Int]]

    public init(rowsPerPart: Int, sizes: [[Int]]) {
        self.rowsPerPart = rowsPerPart
        self.sizes = sizes
    }
}

extension DatasetManifest {
    /// The split counts per part, when the dataset records them (datasets written before they
    /// were recorded, and format 1, do not: their readers scan the split column).
    public var splitPartSizes: SplitPartSizes? {
        guard let rowsPerPart, let parts = files.first(where: { $0.name == "split.u8" })?.parts else { return nil }
        var sizes: [[Int]] = []
        sizes.reserveCapacity(parts.count)
        for part in parts {
            guard let counts = part.splitSizes, counts.count == 3, counts.allSatisfy({ $0 >= 0 }) else { return nil }
            sizes.append(counts)
        }
        return SplitPartSizes(rowsPerPart: rowsPerPart, sizes: sizes)
    }
}
