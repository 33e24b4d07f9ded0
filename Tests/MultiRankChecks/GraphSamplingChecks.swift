import Collectives
import CustomerData
import Foundation
import RankTesting
import Tensors

// GraphSAGE's sampler over a graph spread across the ranks must draw as PyG's NeighborLoader
// does on the whole graph: every block a valid sample of the whole graph (distinct real
// neighbours, min(fan-out, degree) of them, destinations first), each neighbour slot with
// probability fan-out / degree whichever rank draws it, the feature rows of the nodes it
// reached, and the same run for the same seed. Every rank
// builds the same small graph from one seed and keeps its share; seeds are drawn from all
// customers, so most of a rank's destinations belong to other ranks, and one rank in turn has
// no seeds at all.

/// A bipartite graph with skewed degrees (some customers buy nothing, some products are hubs),
/// and node features that name their node: feature c of node v is v * 8 + c.
private func sharedGraph() -> (graph: CSRGraph, customers: Int, products: Int, features: [Float]) {
    let customers = 240, products = 37, width = 3
    var random = SeededRandom(seed: 9, purpose: .synthesis)
    var edges: [(source: Int32, target: Int32)] = []
    for customer in 0..<customers {
        for _ in 0..<random.nextIndex(below: 9) {
            let u = random.nextUnitFloat()
            let product = customers + Int(u * u * Float(products - 1))
            edges.append((Int32(customer), Int32(product)))
            edges.append((Int32(product), Int32(customer)))
        }
    }
    let nodes = customers + products
    let features = (0..<nodes * width).map { Float(($0 / width) * 8 + $0 % width) }
    return (CSRGraph(nodeCount: nodes, edges: edges), customers, products, features)
}

public func runGraphSamplingChecks(_ world: any Communicator, _ checks: RankChecks) {
    let (graph, customers, products, features) = sharedGraph()
    let width = 3
    let partition = GraphPartition(customers: customers, products: products, ranks: world.size)
    let share = features.withUnsafeBufferPointer {
        LocalGraph(graph: graph, features: $0, featureWidth: width, partition: partition, rank: world.rank)
    }
    let fanouts = [6, 4]

    checks.check("the partition gives every node exactly one owner, and each rank holds its nodes' adjacency") {
        for node in 0..<partition.nodeCount {
            let owner = partition.owner(of: node)
            let block = node < customers ? partition.customerBlock(of: owner) : partition.productBlock(of: owner)
            checks.expect(block.contains(node), "node \(node) is not in the block of its owner \(owner)")
        }
        let blocks = (0..<world.size).map { partition.customerBlock(of: $0).count + partition.productBlock(of: $0).count }
        checks.expectEqual(blocks.reduce(0, +), partition.nodeCount, "the blocks cover the nodes")
        for node in Array(share.customers) + Array(share.products) {
            let local = share.localIndex(of: node)
            checks.expectElementsEqual(Array(share.neighbours[share.offsets[local] ..< share.offsets[local + 1]]),
                                       Array(graph.neighbours[graph.offsets[node] ..< graph.offsets[node + 1]]), "neighbours of node \(node)")
        }
    }

    /// The seeds of `step` on this rank: distinct customers of the whole graph, none on the
    /// rank whose turn it is to have nothing to sample.
    func seeds(step: Int) -> [Int32] {
        guard world.size == 1 || step % world.size != world.rank else { return [] }
        var random = SeededRandom(seed: 5, purpose: .neighbourSampling, step: step, rank: world.rank)
        return Array(Set((0..<40).map { _ in Int32(random.nextIndex(below: customers)) })).sorted()
    }

    func samples(steps: Int) throws -> [(NeighbourSampler.Sample, [Float])] {
        let sampler = NeighbourSampler(graph: share, fanouts: fanouts, world: world)
        return try (0..<steps).map { step in
            var random = SeededRandom(seed: 1, purpose: .neighbourSampling, step: step, rank: world.rank)
            let sample = try sampler.sample(seeds: seeds(step: step), random: &random)
            var rows = [Float](repeating: -1, count: sample.inputNodes.count * width)
            try rows.withUnsafeMutableBufferPointer { try sampler.gatherFeatures(of: sample.inputNodes, into: $0.baseAddress!) }
            return (sample, rows)
        }
    }

    checks.check("every block is a valid sample of the whole graph, and the rows gathered are the input nodes' features") {
        for (step, (sample, rows)) in try samples(steps: 12).enumerated() {
            let seeds = seeds(step: step)
            checks.expectEqual(Set(sample.inputNodes).count, sample.inputNodes.count, "step \(step): input nodes are unique")
            var destinations = seeds
            for hop in 0..<fanouts.count {
                let block = sample.blocks[fanouts.count - 1 - hop]
                let sources = Array(sample.inputNodes.prefix(block.sourceCount))
                checks.expectEqual(block.destinationCount, destinations.count, "step \(step) hop \(hop): destinations")
                checks.expectElementsEqual(Array(sources.prefix(destinations.count)), destinations, "step \(step) hop \(hop): destinations lead the sources")
                for position in 0..<destinations.count {
                    let node = Int(destinations[position])
                    let picked = block.neighbours[Int(block.offsets[position]) ..< Int(block.offsets[position + 1])].map { Int(sources[Int($0)]) }
                    let slots = graph.offsets[node] ..< graph.offsets[node + 1]
                    checks.expectEqual(picked.count, min(fanouts[hop], slots.count), "step \(step) hop \(hop): picks of node \(node)")
                    var available: [Int: Int] = [:]
                    for slot in slots { available[Int(graph.neighbours[slot]), default: 0] += 1 }
                    for id in picked { available[id, default: 0] -= 1 }
                    checks.expect(available.values.allSatisfy { $0 >= 0 }, "step \(step): node \(node) drew a slot twice or a non-neighbour")
                }
                destinations = sources
            }
            let expected = sample.inputNodes.flatMap { node in (0..<width).map { features[Int(node) * width + $0] } }
            checks.expectElementsEqual(rows, expected, "step \(step): gathered feature rows")
        }
    }

    checks.check("the same seed and world size give the same samples") {
        let first = try samples(steps: 6), second = try samples(steps: 6)
        for step in 0..<6 {
            checks.expectElementsEqual(second[step].0.inputNodes, first[step].0.inputNodes, "step \(step): input nodes")
            checks.expect(second[step].0.blocks == first[step].0.blocks, "step \(step): the blocks differ between two runs")
        }
    }

    checks.check("each neighbour slot of a hub on rank 0 is drawn with probability fan-out / degree by every rank") {
        // One customer (node 0, owned by rank 0) that bought all 20 products; fan-out 5.
        let hubEdges = (1...20).flatMap { [(source: Int32(0), target: Int32($0)), (source: Int32($0), target: Int32(0))] }
        let hub = CSRGraph(nodeCount: 21, edges: hubEdges)
        let hubFeatures = [Float](repeating: 0, count: 21)
        let hubPartition = GraphPartition(customers: 1, products: 20, ranks: world.size)
        let hubShare = hubFeatures.withUnsafeBufferPointer {
            LocalGraph(graph: hub, features: $0, featureWidth: 1, partition: hubPartition, rank: world.rank)
        }
        let sampler = NeighbourSampler(graph: hubShare, fanouts: [5], world: world)
        var counts = [Int64](repeating: 0, count: 21)
        let drawsPerRank = 2_000
        for step in 0..<drawsPerRank {
            var random = SeededRandom(seed: 2, purpose: .neighbourSampling, step: step, rank: world.rank)
            let sample = try sampler.sample(seeds: [0], random: &random)
            for local in sample.blocks[0].neighbours { counts[Int(sample.inputNodes[Int(local)])] += 1 }
        }
        try world.allreduce(&counts, op: .sum)
        // Binomial(draws, 1/4): 5 standard deviations off is a bug, not chance.
        let draws = Double(drawsPerRank * world.size)
        let expected = draws / 4, deviation = (draws * 0.25 * 0.75).squareRoot()
        checks.expect(counts[1...].allSatisfy { abs(Double($0) - expected) < 5 * deviation }, "counts \(counts), expected \(expected) ± \(5 * deviation)")
        checks.expectEqual(counts[0], 0, "the hub is never its own neighbour")
    }
}
