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
/// Deterministic for a given random stream; reuses its buffers, so sampling allocates only
/// what it returns.
public final class NeighbourSampler: @unchecked Sendable {
    public let graph: CSRGraph
    public let fanouts: [Int]
    private var localIndex: [Int32]
    private var chosen: [Int] = []

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
    }

    public func sample(seeds: [Int32], random: inout SeededRandom) -> Sample {
        var blocks: [SampledBlock] = []
        var destinations = seeds
        for fanout in fanouts {
            var sources = destinations
            for (position, node) in destinations.enumerated() { localIndex[Int(node)] = Int32(position) }
            var offsets = [Int32](repeating: 0, count: destinations.count + 1)
            var neighbours: [Int32] = []
            neighbours.reserveCapacity(destinations.count * fanout)
            for (position, node) in destinations.enumerated() {
                let start = graph.offsets[Int(node)]
                let degree = graph.offsets[Int(node) + 1] - start
                chooseSlots(degree: degree, fanout: fanout, random: &random)
                for slot in chosen {
                    let neighbour = graph.neighbours[start + slot]
                    var local = localIndex[Int(neighbour)]
                    if local < 0 {
                        local = Int32(sources.count)
                        localIndex[Int(neighbour)] = local
                        sources.append(neighbour)
                    }
                    neighbours.append(local)
                }
                offsets[position + 1] = Int32(neighbours.count)
            }
            for node in sources { localIndex[Int(node)] = -1 }
            blocks.append(SampledBlock(
                sourceCount: sources.count, destinationCount: destinations.count,
                offsets: offsets, neighbours: neighbours))
            destinations = sources
        }
        return Sample(blocks: blocks.reversed(), inputNodes: destinations)
    }

    /// Fills `chosen` with min(fanout, degree) distinct slots in 0..<degree (Floyd's algorithm
    /// when sampling, so the cost is O(fanout) however large the degree).
    private func chooseSlots(degree: Int, fanout: Int, random: inout SeededRandom) {
        chosen.removeAll(keepingCapacity: true)
        if degree <= fanout {
            chosen.append(contentsOf: 0..<degree)
            return
        }
        for upper in (degree - fanout)..<degree {
            let candidate = random.nextIndex(below: upper + 1)
            chosen.append(chosen.contains(candidate) ? upper : candidate)
        }
    }
}

/// Copies the feature rows of `nodes` from `features` ([nodeCount, width]) into `into`.
public func gatherRows(
    _ features: UnsafePointer<Float>, width: Int, nodes: [Int32], into: UnsafeMutablePointer<Float>
) {
    for (row, node) in nodes.enumerated() {
        (into + row &* width).update(from: features + Int(node) &* width, count: width)
    }
}
