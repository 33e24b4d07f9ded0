import Testing
import Tensors
@testable import CustomerData

/// A random bipartite graph with skewed degrees: some nodes have fewer neighbours than the
/// fan-out, some many more, and some none.
private func skewedGraph(customers: Int, products: Int, seed: UInt64) -> CSRGraph {
    var random = SeededRandom(seed: seed, purpose: .synthesis)
    var edges: [(source: Int32, target: Int32)] = []
    for customer in 0..<customers {
        let purchases = random.nextIndex(below: 9)
        for _ in 0..<purchases {
            let u = random.nextUnitFloat()
            let product = customers + Int(u * u * Float(products - 1))
            edges.append((Int32(customer), Int32(product)))
            edges.append((Int32(product), Int32(customer)))
        }
    }
    return CSRGraph(nodeCount: customers + products, edges: edges)
}

@Suite struct NeighbourSamplerTests {
    @Test("every block is a valid sample: distinct real neighbours, min(fan-out, degree) of them, destinations first")
    func blocksAreValidSamples() {
        let graph = skewedGraph(customers: 300, products: 40, seed: 3)
        let fanouts = [6, 4]
        let sampler = NeighbourSampler(graph: graph, fanouts: fanouts)
        for step in 0..<20 {
            var random = SeededRandom(seed: 1, purpose: .neighbourSampling, step: step)
            let seeds = (0..<50).map { _ in Int32(random.nextIndex(below: 300)) }
            let distinctSeeds = Array(Set(seeds)).sorted()
            let sample = sampler.sample(seeds: distinctSeeds, random: &random)
            #expect(Set(sample.inputNodes).count == sample.inputNodes.count, "input nodes are unique")
            // Walk from the seeds outwards: the blocks are stored outermost first.
            var destinations = distinctSeeds
            for hop in 0..<fanouts.count {
                let block = sample.blocks[fanouts.count - 1 - hop]
                // Each hop's sources extend the previous hop's, so all are prefixes of the inputs.
                let sources = Array(sample.inputNodes.prefix(block.sourceCount))
                #expect(block.destinationCount == destinations.count)
                #expect(Array(sources.prefix(destinations.count)) == destinations, "destinations lead the sources")
                for position in 0..<destinations.count {
                    let node = Int(destinations[position])
                    let picked = block.neighbours[Int(block.offsets[position])..<Int(block.offsets[position + 1])]
                        .map { Int(sources[Int($0)]) }
                    let slots = graph.offsets[node]..<graph.offsets[node + 1]
                    #expect(picked.count == min(fanouts[hop], slots.count))
                    // Distinct slots: the multiset of picked ids fits inside the neighbour multiset.
                    var available: [Int: Int] = [:]
                    for slot in slots { available[Int(graph.neighbours[slot]), default: 0] += 1 }
                    for id in picked { available[id, default: 0] -= 1 }
                    #expect(available.values.allSatisfy { $0 >= 0 }, "node \(node) drew a slot twice or a non-neighbour")
                }
                destinations = sources
            }
        }
    }

    @Test("each neighbour slot is drawn with probability fan-out / degree")
    func slotsAreUniform() {
        // One hub with 20 distinct neighbours; fan-out 5 gives each a 1/4 chance per draw.
        let edges = (1...20).map { (source: Int32(0), target: Int32($0)) }
        let sampler = NeighbourSampler(graph: CSRGraph(nodeCount: 21, edges: edges), fanouts: [5])
        var counts = [Int](repeating: 0, count: 21)
        let draws = 8_000
        for step in 0..<draws {
            var random = SeededRandom(seed: 2, purpose: .neighbourSampling, step: step)
            let sample = sampler.sample(seeds: [0], random: &random)
            for local in sample.blocks[0].neighbours { counts[Int(sample.inputNodes[Int(local)])] += 1 }
        }
        // Binomial(8000, 0.25): standard deviation 38.7; 5 deviations is a bug, not chance.
        let expected = Double(draws) / 4
        #expect(counts[1...].allSatisfy { abs(Double($0) - expected) < 5 * 38.7 }, "\(counts)")
    }
}
