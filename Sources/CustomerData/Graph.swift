import Tensors

/// A graph in compressed sparse row form: the neighbours of node v are
/// `neighbours[offsets[v]..<offsets[v+1]]`. Offsets are 64-bit (edge counts of large graphs
/// pass 2³¹); node ids are 32-bit.
public struct CSRGraph: Sendable, Equatable {
    public let offsets: [Int]
    public let neighbours: [Int32]
    /// Per-edge weight (purchases), parallel to `neighbours`; empty when unweighted.
    public let weights: [Float]

    public var nodeCount: Int { offsets.count - 1 }
    public var edgeCount: Int { neighbours.count }

    public init(offsets: [Int], neighbours: [Int32], weights: [Float] = []) {
        precondition(offsets.first == 0 && offsets.last == neighbours.count, "offsets must span the neighbour list")
        precondition(weights.isEmpty || weights.count == neighbours.count)
        self.offsets = offsets
        self.neighbours = neighbours
        self.weights = weights
    }

    public func degree(of node: Int) -> Int { offsets[node + 1] - offsets[node] }

    /// Builds CSR from an edge list (kept in input order within each source), counting
    /// duplicates as separate edges.
    public init(nodeCount: Int, edges: [(source: Int32, target: Int32)], weights edgeWeights: [Float] = []) {
        var counts = [Int](repeating: 0, count: nodeCount + 1)
        for edge in edges { counts[Int(edge.source) + 1] += 1 }
        for node in 0..<nodeCount { counts[node + 1] += counts[node] }
        var cursor = counts
        var neighbours = [Int32](repeating: 0, count: edges.count)
        var weights = [Float](repeating: 0, count: edgeWeights.isEmpty ? 0 : edges.count)
        for (index, edge) in edges.enumerated() {
            let slot = cursor[Int(edge.source)]
            neighbours[slot] = edge.target
            if !edgeWeights.isEmpty { weights[slot] = edgeWeights[index] }
            cursor[Int(edge.source)] += 1
        }
        self.init(offsets: counts, neighbours: neighbours, weights: weights)
    }
}

/// Turns a batch of seed nodes into the per-layer blocks GraphSAGE trains on.
///
/// For each hop, every destination keeps up to `fanout` distinct neighbour slots drawn
/// uniformly without replacement (all of them when it has fewer), as PyG's NeighborLoader does.
/// Sources of a block are its destinations followed by the newly reached nodes, so the model's
/// self term reads the first rows. `fanouts[0]` applies to the hop next to the seeds.
/// Deterministic for a given random stream. The returned blocks and input nodes are the
/// sampler's own buffers, refilled in place by the next call: a training step that lets go of
/// its sample before sampling again allocates nothing once the buffers have grown to the
/// largest sample.
public final class NeighbourSampler: @unchecked Sendable {
    public let graph: CSRGraph
    public let fanouts: [Int]
    private var localIndex: [Int32]
    private var chosen: [Int] = []
    /// One block per hop, stored outermost first as `Sample.blocks` lists them.
    private var blocks: [SampledBlock]
    /// The sources of each hop, nearest first; the last is the input layer's nodes.
    private var hopSources: [[Int32]]

    public struct Sample: Sendable {
        /// Blocks outermost hop first, ready for `GraphSAGEModel.forward`.
        public var blocks: [SampledBlock]
        /// Global node id of every source row of `blocks[0]` (whose features are the input).
        public var inputNodes: [Int32]
    }

    public init(graph: CSRGraph, fanouts: [Int]) {
        precondition(!fanouts.isEmpty && fanouts.allSatisfy { $0 > 0 })
        self.graph = graph
        self.fanouts = fanouts
        localIndex = [Int32](repeating: -1, count: graph.nodeCount)
        blocks = fanouts.map { _ in SampledBlock(sourceCount: 0, destinationCount: 0, offsets: [0], neighbours: []) }
        hopSources = fanouts.map { _ in [] }
    }

    public func sample(seeds: [Int32], random: inout SeededRandom) -> Sample {
        // The per-node loop works on buffer pointers of locals moved out of `self`: touching a
        // class's stored arrays inside it paid a dynamic exclusivity check and a bounds check
        // per neighbour, about a fifth of the sampler's time.
        var localIndex = self.localIndex
        self.localIndex = []
        defer { self.localIndex = localIndex }
        var chosen = self.chosen
        self.chosen = []
        defer { self.chosen = chosen }
        let hops = fanouts.count
        for hop in 0..<hops {
            let slot = hops - 1 - hop
            let fanout = fanouts[hop]
            // Moved out while refilled, so the buffer is uniquely owned and grows in place.
            var sources = hopSources[hop]
            hopSources[hop] = []
            var offsets = blocks[slot].offsets
            var neighbours = blocks[slot].neighbours
            blocks[slot].offsets = []
            blocks[slot].neighbours = []
            sources.removeAll(keepingCapacity: true)
            offsets.removeAll(keepingCapacity: true)
            neighbours.removeAll(keepingCapacity: true)
            let destinationCount: Int
            if hop == 0 {
                sources.append(contentsOf: seeds)
                destinationCount = seeds.count
            } else {
                sources.append(contentsOf: hopSources[hop - 1])
                destinationCount = hopSources[hop - 1].count
            }
            // Every destination adds at most `fanout` edges and as many new sources, so the
            // appends below never reallocate mid-loop.
            sources.reserveCapacity(destinationCount &* (fanout &+ 1))
            neighbours.reserveCapacity(destinationCount &* fanout)
            offsets.reserveCapacity(destinationCount &+ 1)
            if chosen.count < fanout { chosen = [Int](repeating: 0, count: fanout) }
            localIndex.withUnsafeMutableBufferPointer { local in
                chosen.withUnsafeMutableBufferPointer { chosen in
                    graph.offsets.withUnsafeBufferPointer { graphOffsets in
                        graph.neighbours.withUnsafeBufferPointer { graphNeighbours in
                            for position in 0..<destinationCount { local[Int(sources[position])] = Int32(position) }
                            offsets.append(0)
                            for position in 0..<destinationCount {
                                let node = Int(sources[position])
                                let start = graphOffsets[node]
                                let count = Self.chooseSlots(
                                    degree: graphOffsets[node &+ 1] &- start, fanout: fanout,
                                    into: chosen.baseAddress!, random: &random)
                                for index in 0..<count {
                                    let neighbour = Int(graphNeighbours[start &+ chosen[index]])
                                    var position = local[neighbour]
                                    if position < 0 {
                                        position = Int32(truncatingIfNeeded: sources.count)
                                        local[neighbour] = position
                                        sources.append(Int32(truncatingIfNeeded: neighbour))
                                    }
                                    neighbours.append(position)
                                }
                                offsets.append(Int32(truncatingIfNeeded: neighbours.count))
                            }
                            for index in 0..<sources.count { local[Int(sources[index])] = -1 }
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
}

/// Copies the feature rows of `nodes` from `features` ([nodeCount, width]) into `into`.
public func gatherRows(
    _ features: UnsafePointer<Float>, width: Int, nodes: [Int32], into: UnsafeMutablePointer<Float>
) {
    // A plain loop rather than `update(from:count:)`: rows are a few dozen bytes, and a
    // memmove call per row cost more than the copy itself.
    nodes.withUnsafeBufferPointer { nodes in
        for row in 0..<nodes.count {
            let source = features + Int(nodes[row]) &* width
            let target = into + row &* width
            for column in 0..<width { target[column] = source[column] }
        }
    }
}
