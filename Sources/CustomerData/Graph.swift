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
