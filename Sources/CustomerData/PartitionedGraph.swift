import Collectives
import Foundation
import Tensors

/// Which rank owns each node of the customer–product graph: customers (node ids `0..<customers`)
/// in contiguous blocks of dataset rows, products (node ids `customers..<customers + products`)
/// in contiguous blocks of product ids, the first `total mod ranks` ranks one node more.
///
/// Contiguous customer blocks follow the training shards (`ShardPlan` cuts every split into
/// contiguous blocks in dataset order too), so most of a rank's seeds are its own nodes; any
/// rank finds any node's owner with two divisions, without a table of all nodes.
public struct GraphPartition: Sendable, Equatable {
    public let customers: Int
    public let products: Int
    public let ranks: Int

    public init(customers: Int, products: Int, ranks: Int) {
        precondition(customers >= 0 && products >= 0 && ranks >= 1)
        self.customers = customers
        self.products = products
        self.ranks = ranks
    }

    public var nodeCount: Int { customers + products }

    /// Customer node ids owned by `rank`.
    public func customerBlock(of rank: Int) -> Range<Int> { Self.block(rank, total: customers, ranks: ranks) }

    /// Product node ids (offset by `customers`) owned by `rank`.
    public func productBlock(of rank: Int) -> Range<Int> {
        let block = Self.block(rank, total: products, ranks: ranks)
        return customers + block.lowerBound ..< customers + block.upperBound
    }

    @inline(__always)
    public func owner(of node: Int) -> Int {
        node < customers ? Self.owner(node, total: customers, ranks: ranks)
                         : Self.owner(node &- customers, total: products, ranks: ranks)
    }

    private static func block(_ rank: Int, total: Int, ranks: Int) -> Range<Int> {
        let (quotient, remainder) = total.quotientAndRemainder(dividingBy: ranks)
        let start = rank * quotient + min(rank, remainder)
        return start ..< start + quotient + (rank < remainder ? 1 : 0)
    }

    @inline(__always)
    private static func owner(_ index: Int, total: Int, ranks: Int) -> Int {
        let quotient = total / ranks
        let remainder = total &- quotient &* ranks
        let larger = remainder &* (quotient &+ 1)
        // Past the larger blocks every block has `quotient` nodes, and quotient > 0 there.
        return index < larger ? index / (quotient &+ 1) : remainder &+ (index &- larger) / quotient
    }
}

/// One rank's share of the graph: the adjacency and feature rows of the nodes it owns (its
/// customer block, then its product block), with neighbours as global node ids. At 1M
/// customers on 4 ranks a share is about a quarter of the 58 MB of offsets and neighbours and
/// of the node features every rank used to hold whole.
public struct LocalGraph: Sendable {
    public let partition: GraphPartition
    public let rank: Int
    public let customers: Range<Int>
    public let products: Range<Int>
    /// Offsets into `neighbours` for each owned node, customers first; `ownedCount + 1` entries.
    public let offsets: [Int]
    public let neighbours: [Int32]
    /// Row-major [ownedCount, featureWidth].
    public let features: [Float]
    public let featureWidth: Int

    public var ownedCount: Int { customers.count + products.count }

    /// Row of `node` (which this rank must own) in `offsets` and `features`.
    @inline(__always)
    public func localIndex(of node: Int) -> Int {
        node < partition.customers ? node &- customers.lowerBound : customers.count &+ (node &- products.lowerBound)
    }

    public init(partition: GraphPartition, rank: Int, offsets: [Int], neighbours: [Int32], features: [Float], featureWidth: Int) {
        let customers = partition.customerBlock(of: rank), products = partition.productBlock(of: rank)
        precondition(offsets.count == customers.count + products.count + 1 && offsets.first == 0 && offsets.last == neighbours.count)
        precondition(features.count == (offsets.count - 1) * featureWidth)
        self.partition = partition
        self.rank = rank
        self.customers = customers
        self.products = products
        self.offsets = offsets
        self.neighbours = neighbours
        self.features = features
        self.featureWidth = featureWidth
    }

    /// `rank`'s share of a whole graph held in memory (tests and single-process tools).
    public init(graph: CSRGraph, features: UnsafeBufferPointer<Float>, featureWidth: Int, partition: GraphPartition, rank: Int) {
        precondition(graph.nodeCount == partition.nodeCount && features.count == graph.nodeCount * featureWidth)
        var offsets = [0], neighbours: [Int32] = [], rows: [Float] = []
        for block in [partition.customerBlock(of: rank), partition.productBlock(of: rank)] {
            for node in block {
                neighbours.append(contentsOf: graph.neighbours[graph.offsets[node] ..< graph.offsets[node + 1]])
                offsets.append(neighbours.count)
            }
            rows.append(contentsOf: features[block.lowerBound * featureWidth ..< block.upperBound * featureWidth])
        }
        self.init(partition: partition, rank: rank, offsets: offsets, neighbours: neighbours, features: rows, featureWidth: featureWidth)
    }
}

extension CustomerDataset {
    /// The partition of this dataset's graph over `ranks`; nil without a graph.
    public func graphPartition(ranks: Int) -> GraphPartition? {
        manifest.graph.map { GraphPartition(customers: $0.customerNodes, products: $0.productNodes, ranks: ranks) }
    }

    /// Copies `rank`'s share of the mapped graph (adjacency without weights, and node features)
    /// to the heap, checking the values it copies, and lets go of the mapped pages it touched.
    public func graphShare(of partition: GraphPartition, rank: Int) throws -> LocalGraph {
        guard let mappedOffsets = mapped["graph_offsets.i64"], let mappedNeighbours = mapped["graph_neighbours.i32"],
              let mappedFeatures = mapped["node_features.f32"], let edges = manifest.graph?.directedEdges else {
            throw DataError.damagedDataset(file: directory.path, reason: "the dataset has no graph")
        }
        defer { for name in Self.graphFileNames { mapped[name]?.releaseResidentPages() } }
        let allOffsets = mappedOffsets.buffer(as: Int64.self)
        let allNeighbours = mappedNeighbours.buffer(as: Int32.self)
        let allFeatures = mappedFeatures.buffer(as: Float.self)
        let nodes = partition.nodeCount, width = nodeFeatureWidth
        let offsetsPath = directory.appendingPathComponent("graph_offsets.i64").path
        let neighboursPath = directory.appendingPathComponent("graph_neighbours.i32").path
        let blocks = [partition.customerBlock(of: rank), partition.productBlock(of: rank)].filter { !$0.isEmpty }
        var edgeRanges: [Range<Int>] = []
        for block in blocks {
            for node in block where allOffsets[node] > allOffsets[node + 1] {
                throw DataError.damagedDataset(file: offsetsPath, reason: "offsets decrease at node \(node)")
            }
            let first = Int(allOffsets[block.lowerBound]), end = Int(allOffsets[block.upperBound])
            guard first >= 0, end <= edges else {
                throw DataError.damagedDataset(file: offsetsPath, reason: "nodes \(block.lowerBound)..<\(block.upperBound) reach edges \(first)..<\(end), outside 0..<\(edges)")
            }
            edgeRanges.append(first ..< end)
        }
        // Sized once, and each file's pages let go as soon as it is copied: the peak is the
        // share plus one file's touched pages, not the share grown by doubling beside them all.
        let ownedCount = blocks.reduce(0) { $0 + $1.count }
        var offsets = [0], neighbours: [Int32] = [], features: [Float] = []
        offsets.reserveCapacity(ownedCount + 1)
        neighbours.reserveCapacity(edgeRanges.reduce(0) { $0 + $1.count })
        features.reserveCapacity(ownedCount * width)
        var copiedEdges = 0
        for (block, edgeRange) in zip(blocks, edgeRanges) {
            let base = copiedEdges - edgeRange.lowerBound
            for node in block { offsets.append(base + Int(allOffsets[node + 1])) }
            copiedEdges += edgeRange.count
        }
        mappedOffsets.releaseResidentPages()
        for edgeRange in edgeRanges {
            for slot in edgeRange where allNeighbours[slot] < 0 || Int(allNeighbours[slot]) >= nodes {
                throw DataError.damagedDataset(file: neighboursPath, reason: "entry \(slot) is node \(allNeighbours[slot]), outside 0..<\(nodes)")
            }
            neighbours.append(contentsOf: allNeighbours[edgeRange])
        }
        mappedNeighbours.releaseResidentPages()
        for block in blocks { features.append(contentsOf: allFeatures[block.lowerBound * width ..< block.upperBound * width]) }
        return LocalGraph(partition: partition, rank: rank, offsets: offsets, neighbours: neighbours, features: features, featureWidth: width)
    }
}

/// GraphSAGE's neighbour sampling over a graph whose nodes are spread over the ranks, each rank
/// holding only its `LocalGraph`.
///
/// A hop samples its own destinations' neighbours locally and asks the owners of the others
/// for theirs: one exchange of request counts and two `alltoallv`s (the node ids out, the
/// sampled neighbours back, `fanout + 1` slots per node) per hop, and the same for the input
/// nodes' feature rows, as DistDGL's halo exchange does. Every destination keeps up to
/// `fanout` distinct neighbour slots drawn uniformly without replacement, whichever rank draws
/// them, as PyG's NeighborLoader does on one machine; on one rank nothing is exchanged and the
/// blocks depend on the caller's stream alone. An owner draws for others from its own step
/// stream (split per hop), so a given seed and world size give the same run.
///
/// Collective: every rank of `world` must call `sample` and `gatherFeatures` the same number of
/// times, with no seeds when it has none left. Buffers are refilled in place: a training step
/// allocates nothing once they have grown to the largest sample.
public final class NeighbourSampler: @unchecked Sendable {
    public let graph: LocalGraph
    public let fanouts: [Int]
    /// The no-graph ablation: every node has degree zero, so no hop exchanges anything.
    public let withoutEdges: Bool
    private let world: any Communicator
    private let ranks: Int

    private var positions: NodePositions
    private var chosen: [Int] = []
    private var blocks: [SampledBlock]
    private var hopSources: [[Int32]]

    private let ones: [Int]
    private var requestCounts: [Int]
    private var incomingCounts: [Int]
    private var sendScaled: [Int]
    private var receiveScaled: [Int]
    private var countsOut: [Int64]
    private var countsIn: [Int64]
    private var cursor: [Int]
    /// Per destination (or input node), its slot among this rank's requests; -1 when local.
    private var requestSlot: [Int32] = []
    private var requests: [Int32] = []
    private var incoming: [Int32] = []
    private var replies: [Int32] = []
    private var answers: [Int32] = []
    private var featureReplies: [Float] = []
    private var featureAnswers: [Float] = []

    public struct Sample: Sendable {
        /// Blocks outermost hop first, ready for `GraphSAGEModel.forward`.
        public var blocks: [SampledBlock]
        /// Global node id of every source row of `blocks[0]` (whose features are the input).
        public var inputNodes: [Int32]
    }

    /// A sampler over a whole graph held in one process (tools, benchmarks and tests).
    public convenience init(graph: CSRGraph, features: UnsafeBufferPointer<Float> = UnsafeBufferPointer(start: nil, count: 0),
                            featureWidth: Int = 0, fanouts: [Int]) {
        let partition = GraphPartition(customers: graph.nodeCount, products: 0, ranks: 1)
        self.init(graph: LocalGraph(graph: graph, features: features, featureWidth: featureWidth, partition: partition, rank: 0),
                  fanouts: fanouts, world: SingleProcessCommunicator())
    }

    public init(graph: LocalGraph, fanouts: [Int], world: any Communicator, withoutEdges: Bool = false) {
        precondition(!fanouts.isEmpty && fanouts.allSatisfy { $0 > 0 })
        precondition(world.size == graph.partition.ranks && world.rank == graph.rank, "the graph share must be this rank's")
        self.graph = graph
        positions = NodePositions(owning: graph)
        self.fanouts = fanouts
        self.withoutEdges = withoutEdges
        // The calls agree by construction (every rank runs the same hops), so they skip the
        // per-call agreement round trip.
        self.world = world.withoutAgreementCheck()
        ranks = world.size
        blocks = fanouts.map { _ in SampledBlock(sourceCount: 0, destinationCount: 0, offsets: [0], neighbours: []) }
        hopSources = fanouts.map { _ in [] }
        ones = [Int](repeating: 1, count: world.size)
        requestCounts = ones
        incomingCounts = ones
        sendScaled = ones
        receiveScaled = ones
        countsOut = [Int64](repeating: 0, count: world.size)
        countsIn = countsOut
        cursor = ones
    }

    public func sample(seeds: [Int32], random: inout SeededRandom) throws -> Sample {
        let hops = fanouts.count
        let serving = random.split(0x5E7E)
        // The per-node loop works on locals moved out of `self`: touching a class's stored
        // arrays inside it paid a dynamic exclusivity check and a bounds check per neighbour.
        var positions = self.positions
        self.positions = NodePositions()
        defer { self.positions = positions }
        var chosen = self.chosen
        self.chosen = []
        defer { self.chosen = chosen }
        for hop in 0..<hops {
            let slot = hops - 1 - hop
            let fanout = fanouts[hop]
            var sources = hopSources[hop]
            hopSources[hop] = []
            var offsets = blocks[slot].offsets
            var neighbours = blocks[slot].neighbours
            blocks[slot].offsets = []
            blocks[slot].neighbours = []
            sources.removeAll(keepingCapacity: true)
            offsets.removeAll(keepingCapacity: true)
            neighbours.removeAll(keepingCapacity: true)
            sources.append(contentsOf: hop == 0 ? seeds : hopSources[hop - 1])
            let destinationCount = sources.count
            sources.reserveCapacity(destinationCount &* (fanout &+ 1))
            neighbours.reserveCapacity(destinationCount &* fanout)
            offsets.reserveCapacity(destinationCount &+ 1)
            if chosen.count < fanout { chosen = [Int](repeating: 0, count: fanout) }
            positions.reserve(destinationCount &* (fanout &+ 1))

            let remote = ranks > 1 && !withoutEdges
            if remote {
                let incomingTotal = try exchangeRequests(for: sources, count: destinationCount)
                var stream = serving.split(hop)
                serveNeighbours(incomingTotal, fanout: fanout, random: &stream, chosen: &chosen)
                try exchange(replies, counts: incomingCounts, into: &answers, counts: requestCounts, width: fanout + 1)
            }
            let stride = fanout &+ 1
            positions.withLease { table in
                chosen.withUnsafeMutableBufferPointer { chosen in
                    graph.offsets.withUnsafeBufferPointer { graphOffsets in
                        graph.neighbours.withUnsafeBufferPointer { graphNeighbours in
                            requestSlot.withUnsafeBufferPointer { requestSlot in
                                answers.withUnsafeBufferPointer { answers in
                                    for position in 0..<destinationCount {
                                        table.set(sources[position], Int32(truncatingIfNeeded: position))
                                    }
                                    offsets.append(0)
                                    for position in 0..<destinationCount {
                                        let node = Int(sources[position])
                                        if withoutEdges {
                                        } else if remote, requestSlot[position] >= 0 {
                                            let reply = Int(requestSlot[position]) &* stride
                                            let count = Int(answers[reply])
                                            for index in 0..<count {
                                                Self.add(answers[reply &+ 1 &+ index], &sources, &neighbours, table)
                                            }
                                        } else {
                                            let local = graph.localIndex(of: node)
                                            let start = graphOffsets[local]
                                            let count = Self.chooseSlots(
                                                degree: graphOffsets[local &+ 1] &- start, fanout: fanout,
                                                into: chosen.baseAddress!, random: &random)
                                            for index in 0..<count {
                                                Self.add(graphNeighbours[start &+ chosen[index]], &sources, &neighbours, table)
                                            }
                                        }
                                        offsets.append(Int32(truncatingIfNeeded: neighbours.count))
                                    }
                                    // Newest first: every key's probe run then still holds the keys it passed.
                                    // (A countdown, not `reversed()`, whose iterator allocates in debug builds.)
                                    var index = sources.count
                                    while index > 0 {
                                        index &-= 1
                                        table.remove(sources[index])
                                    }
                                }
                            }
                        }
                    }
                }
            }
            blocks[slot].sourceCount = sources.count
            blocks[slot].destinationCount = destinationCount
            blocks[slot].offsets = offsets
            blocks[slot].neighbours = neighbours
            hopSources[hop] = sources
        }
        return Sample(blocks: blocks, inputNodes: hopSources[hops - 1])
    }

    /// Puts a drawn `neighbour` into the hop's block: its position among the sources, which it
    /// joins when the hop has not reached it before. Local and remote draws land the same way.
    @inline(__always)
    private static func add(_ neighbour: Int32, _ sources: inout [Int32], _ neighbours: inout [Int32], _ table: NodePositions.Lease) {
        let candidate = Int32(truncatingIfNeeded: sources.count)
        let found = table.insert(neighbour, candidate)
        if found == candidate { sources.append(neighbour) }
        neighbours.append(found)
    }

    /// Copies the feature rows of `nodes` into `target` ([nodes.count, featureWidth]), asking
    /// their owners for the rows of nodes this rank does not hold.
    public func gatherFeatures(of nodes: [Int32], into target: UnsafeMutablePointer<Float>) throws {
        let graph = self.graph, ranks = self.ranks, width = graph.featureWidth
        if ranks > 1 {
            let incomingTotal = try exchangeRequests(for: nodes, count: nodes.count)
            if featureReplies.count < incomingTotal * width {
                featureReplies = [Float](repeating: 0, count: max(incomingTotal * width, 2 * featureReplies.count))
            }
            featureReplies.withUnsafeMutableBufferPointer { replies in
                graph.features.withUnsafeBufferPointer { features in
                    incoming.withUnsafeBufferPointer { incoming in
                        for index in 0..<incomingTotal {
                            let source = features.baseAddress! + graph.localIndex(of: Int(incoming[index])) &* width
                            let row = replies.baseAddress! + index &* width
                            for column in 0..<width { row[column] = source[column] }
                        }
                    }
                }
            }
            try exchange(featureReplies, counts: incomingCounts, into: &featureAnswers, counts: requestCounts, width: width)
        }
        graph.features.withUnsafeBufferPointer { features in
            featureAnswers.withUnsafeBufferPointer { answers in
                requestSlot.withUnsafeBufferPointer { requestSlot in
                    nodes.withUnsafeBufferPointer { nodes in
                        for row in 0..<nodes.count {
                            let slot = ranks > 1 ? Int(requestSlot[row]) : -1
                            let source = slot >= 0 ? answers.baseAddress! + slot &* width
                                                   : features.baseAddress! + graph.localIndex(of: Int(nodes[row])) &* width
                            let destination = target + row &* width
                            for column in 0..<width { destination[column] = source[column] }
                        }
                    }
                }
            }
        }
    }

    /// Sends the ids of the first `count` of `nodes` that other ranks own to their owners
    /// (grouped by owner, in order), fills `requestSlot` with each node's place among them
    /// (-1 for own nodes), `requestCounts` and `incomingCounts`, and receives the ids asked of
    /// this rank into `incoming`; returns how many that is.
    private func exchangeRequests(for nodes: [Int32], count: Int) throws -> Int {
        let me = graph.rank, partition = graph.partition, ranks = self.ranks
        if requestSlot.count < count { requestSlot = [Int32](repeating: -1, count: max(count, 2 * requestSlot.count)) }
        if requests.count < count { requests = [Int32](repeating: 0, count: max(count, 2 * requests.count)) }
        // The loops run on buffer pointers: indexing the class's arrays paid an exclusivity check
        // per access, a tenth of a 2-rank step.
        requestCounts.withUnsafeMutableBufferPointer { counts in
            cursor.withUnsafeMutableBufferPointer { cursor in
                requestSlot.withUnsafeMutableBufferPointer { slots in
                    requests.withUnsafeMutableBufferPointer { requests in
                        nodes.withUnsafeBufferPointer { nodes in
                            for peer in 0..<ranks { counts[peer] = 0 }
                            // First pass: each node's owner (-1 for this rank), counted per owner.
                            for index in 0..<count {
                                let owner = partition.owner(of: Int(nodes[index]))
                                if owner == me {
                                    slots[index] = -1
                                } else {
                                    slots[index] = Int32(truncatingIfNeeded: owner)
                                    counts[owner] &+= 1
                                }
                            }
                            var start = 0
                            for peer in 0..<ranks {
                                cursor[peer] = start
                                start &+= counts[peer]
                            }
                            // Second pass: each remote node's place in its owner's group.
                            for index in 0..<count where slots[index] >= 0 {
                                let owner = Int(slots[index])
                                let slot = cursor[owner]
                                requests[slot] = nodes[index]
                                slots[index] = Int32(truncatingIfNeeded: slot)
                                cursor[owner] = slot &+ 1
                            }
                        }
                    }
                }
            }
        }
        for peer in 0..<ranks { countsOut[peer] = Int64(requestCounts[peer]) }
        try countsOut.withUnsafeBufferPointer { out in
            try countsIn.withUnsafeMutableBufferPointer { into in
                try world.alltoallv(out, sendCounts: ones, into: into, receiveCounts: ones)
            }
        }
        for peer in 0..<ranks { incomingCounts[peer] = Int(countsIn[peer]) }
        let incomingTotal = incomingCounts.reduce(0, +)
        if incoming.count < incomingTotal { incoming = [Int32](repeating: 0, count: max(incomingTotal, 2 * incoming.count)) }
        try exchange(requests, counts: requestCounts, into: &incoming, counts: incomingCounts, width: 1)
        return incomingTotal
    }

    /// Draws up to `fanout` neighbours of each of the first `total` nodes of `incoming` into
    /// `replies`, `fanout + 1` slots per node: the count, then the neighbours' global ids.
    private func serveNeighbours(_ total: Int, fanout: Int, random: inout SeededRandom, chosen: inout [Int]) {
        let stride = fanout &+ 1
        if replies.count < total &* stride { replies = [Int32](repeating: 0, count: max(total &* stride, 2 * replies.count)) }
        if chosen.count < fanout { chosen = [Int](repeating: 0, count: fanout) }
        let graph = self.graph
        replies.withUnsafeMutableBufferPointer { replies in
            chosen.withUnsafeMutableBufferPointer { chosen in
                incoming.withUnsafeBufferPointer { incoming in
                    graph.offsets.withUnsafeBufferPointer { offsets in
                        graph.neighbours.withUnsafeBufferPointer { neighbours in
                            for index in 0..<total {
                                let local = graph.localIndex(of: Int(incoming[index]))
                                let start = offsets[local]
                                let count = Self.chooseSlots(
                                    degree: offsets[local &+ 1] &- start, fanout: fanout, into: chosen.baseAddress!, random: &random)
                                let reply = replies.baseAddress! + index &* stride
                                reply[0] = Int32(truncatingIfNeeded: count)
                                for pick in 0..<count { reply[1 &+ pick] = neighbours[start &+ chosen[pick]] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes min(fanout, degree) distinct slots in 0..<degree to `chosen` and returns how many
    /// (Floyd's algorithm when sampling, so the cost is O(fanout) however large the degree).
    @inline(__always)
    static func chooseSlots(
        degree: Int, fanout: Int, into chosen: UnsafeMutablePointer<Int>, random: inout SeededRandom
    ) -> Int {
        if degree <= fanout {
            for slot in 0..<degree { chosen[slot] = slot }
            return degree
        }
        var count = 0
        for upper in (degree &- fanout)..<degree {
            let candidate = random.nextIndex(below: upper &+ 1)
            var taken = false
            for index in 0..<count where chosen[index] == candidate { taken = true }
            chosen[count] = taken ? upper : candidate
            count &+= 1
        }
        return count
    }

    /// One `alltoallv` of `width` elements per counted item, growing `destination` if needed.
    private func exchange<T: CollectiveScalar & AdditiveArithmetic>(
        _ source: [T], counts sendItems: [Int], into destination: inout [T], counts receiveItems: [Int], width: Int
    ) throws {
        var receiveTotal = 0
        for peer in 0..<ranks {
            sendScaled[peer] = sendItems[peer] &* width
            receiveScaled[peer] = receiveItems[peer] &* width
            receiveTotal &+= receiveScaled[peer]
        }
        if destination.count < receiveTotal {
            destination = [T](repeating: .zero, count: max(receiveTotal, 2 * destination.count))
        }
        try source.withUnsafeBufferPointer { source in
            try destination.withUnsafeMutableBufferPointer { destination in
                try world.alltoallv(source, sendCounts: sendScaled, into: destination, receiveCounts: receiveScaled)
            }
        }
    }
}

/// Global node id → position in a sample, for the nodes one hop has reached. A rank's own nodes
/// are looked up directly by their row in its share (on one rank, every node); the others in an
/// open-addressing table sized to the sample. Nothing has an entry per node of the graph, which
/// would be O(all customers) on every rank. A table slot holds key and position (the id in the
/// low half), so a probe touches one cache line.
struct NodePositions {
    private static let empty = UInt64.max
    private var slots: [UInt64] = []
    private var owned: [Int32]
    private let customers: Range<Int>
    private let products: Range<Int>

    /// An empty stand-in, for while the sampler has lent its table out.
    init() {
        owned = []
        customers = 0..<0
        products = 0..<0
    }

    init(owning graph: LocalGraph) {
        owned = [Int32](repeating: -1, count: graph.ownedCount)
        customers = graph.customers
        products = graph.products
    }

    /// Makes room for `count` entries at a load of at most one half.
    mutating func reserve(_ count: Int) {
        var capacity = max(slots.count, 16)
        while capacity < 2 &* count { capacity &*= 2 }
        if capacity != slots.count { slots = [UInt64](repeating: Self.empty, count: capacity) }
    }

    /// The table's memory, lent for the duration of `body`.
    struct Lease {
        let slots: UnsafeMutablePointer<UInt64>
        let mask: Int
        let owned: UnsafeMutablePointer<Int32>
        let customerStart: Int, customerCount: Int, productStart: Int, productCount: Int

        @inline(__always)
        private func ownedRow(_ node: Int) -> Int {
            let customer = node &- customerStart
            if customer >= 0 && customer < customerCount { return customer }
            let product = node &- productStart
            return product >= 0 && product < productCount ? customerCount &+ product : -1
        }

        @inline(__always)
        private func home(_ key: Int32) -> Int {
            Int(truncatingIfNeeded: (UInt64(UInt32(bitPattern: key)) &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
        }

        /// The position stored for `key`, or `position` after storing it when the key is new.
        @inline(__always)
        func insert(_ key: Int32, _ position: Int32) -> Int32 {
            let row = ownedRow(Int(key))
            if row >= 0 {
                let stored = owned[row]
                if stored >= 0 { return stored }
                owned[row] = position
                return position
            }
            let low = UInt64(UInt32(bitPattern: key))
            var index = home(key)
            while true {
                let stored = slots[index]
                if stored == empty {
                    slots[index] = low | UInt64(UInt32(bitPattern: position)) << 32
                    return position
                }
                if stored & 0xFFFF_FFFF == low { return Int32(bitPattern: UInt32(truncatingIfNeeded: stored >> 32)) }
                index = (index &+ 1) & mask
            }
        }

        /// Stores `position` for `key`, replacing any it had. A hop's destinations go in this way:
        /// a store to a rank's own row, unlike `insert`'s read, does not wait for a cache miss.
        @inline(__always)
        func set(_ key: Int32, _ position: Int32) {
            let row = ownedRow(Int(key))
            if row >= 0 {
                owned[row] = position
                return
            }
            let entry = UInt64(UInt32(bitPattern: key)) | UInt64(UInt32(bitPattern: position)) << 32
            var index = home(key)
            while true {
                let stored = slots[index]
                if stored == empty || stored & 0xFFFF_FFFF == entry & 0xFFFF_FFFF {
                    slots[index] = entry
                    return
                }
                index = (index &+ 1) & mask
            }
        }

        /// Forgets `key`. Only valid while emptying the whole table newest key first: a key's
        /// probe run then still holds every key it passed when it was stored.
        @inline(__always)
        func remove(_ key: Int32) {
            let row = ownedRow(Int(key))
            if row >= 0 {
                owned[row] = -1
                return
            }
            let low = UInt64(UInt32(bitPattern: key))
            var index = home(key)
            while true {
                let stored = slots[index]
                if stored == empty { return }
                if stored & 0xFFFF_FFFF == low {
                    slots[index] = empty
                    return
                }
                index = (index &+ 1) & mask
            }
        }
    }

    mutating func withLease(_ body: (Lease) -> Void) {
        let mask = slots.count &- 1
        let customers = self.customers, products = self.products
        slots.withUnsafeMutableBufferPointer { slots in
            owned.withUnsafeMutableBufferPointer { owned in
                // A rank that owns no node still needs a valid pointer; it is never read.
                var none: Int32 = -1
                withUnsafeMutablePointer(to: &none) { fallback in
                    body(Lease(slots: slots.baseAddress!, mask: mask, owned: owned.baseAddress ?? fallback,
                               customerStart: customers.lowerBound, customerCount: customers.count,
                               productStart: products.lowerBound, productCount: products.count))
                }
            }
        }
    }
}
