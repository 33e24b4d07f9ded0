import AllocationCounting
import Collectives
import CustomerData
import Models
import Tensors
import Testing

/// Heap allocations the calling thread makes in `body`.
func allocations(_ body: () -> Void) -> Int {
    clm_allocation_counting_begin()
    body()
    return clm_allocation_counting_end()
}

@Suite("Allocation-free training steps")
struct AllocationTests {
    @Test("the counter sees an allocation, so a zero below means something")
    func counterCounts() {
        var kept: [[Int]] = []
        let count = allocations { kept.append(Array(repeating: 1, count: 100)) }
        #expect(count >= 1)
        #expect(kept.count == 1)
    }

    @Test("an LSTM step with its optimizer update allocates nothing after the first, for every head layout",
          arguments: [(CLVLoss.logMSE, 0, 0), (CLVLoss.ziln, 4, 0), (CLVLoss.ziln, 4, 8)])
    func lstmStep(clvLoss: CLVLoss, stages: Int, customerUnits: Int) {
        // One OpenBLAS thread per rank, as training runs: OpenBLAS's threaded GEMM allocates its
        // job array on every call.
        BLAS.setThreadCount(1)
        let configuration = LSTMConfiguration(
            inputSize: 8, hiddenSize: 16, layers: 2, clvLoss: clvLoss, stageCount: stages,
            stageClassWeights: stages > 0 ? [1, 2, 0.5, 1.5] : nil, customerHidden: customerUnits)
        let model = LSTMModel(configuration: configuration, seed: 3)
        let optimizer = AdamOptimizer(parameterCount: model.parameters.values.count)
        let batch = 32, steps = 12
        var random = SeededRandom(seed: 1, purpose: .dropout)
        let features = (0..<batch * steps * 8).map { _ in random.nextUnitFloat() - 0.5 }
        let lengths = (0..<batch).map { Int32(1 + $0 % steps) }
        let churn = (0..<batch).map { Float($0 % 2) }
        let spend = (0..<batch).map { Float($0) }
        let stageLabels = (0..<batch).map { Int32($0 % 4) }
        func step() {
            SequenceBatch.withLabelled(features: features, lengths: lengths, churnLabels: churn, spend: spend,
                                       stages: stageLabels, steps: steps) { batch in
                model.parameters.zeroGradients()
                _ = model.trainingStep(batch, random: &random)
                _ = clipGlobalNorm(model.parameters.gradients, maxNorm: 1)
                optimizer.update(model.parameters.values, gradients: model.parameters.gradients, learningRate: 1e-3)
            }
        }
        step()
        #expect(allocations { step(); step() } == 0)
    }

    @Test("a GraphSAGE step, sampling included, allocates nothing once its buffers have grown")
    func graphStep() {
        BLAS.setThreadCount(1)
        // A bipartite graph: 60 customers, 25 products, every customer buying 1 to 6 products.
        let customers = 60, products = 25
        var edges: [(source: Int32, target: Int32)] = []
        for c in 0..<customers {
            for k in 0..<(1 + c % 6) {
                let p = Int32(customers + (c * 7 + k * 3) % products)
                edges.append((Int32(c), p))
                edges.append((p, Int32(c)))
            }
        }
        let graph = CSRGraph(nodeCount: customers + products, edges: edges)
        let width = 6
        let configuration = GraphSAGEConfiguration(inputSize: width, hiddenSize: 8, classes: 4, layers: 2)
        let model = GraphSAGEModel(configuration: configuration, seed: 2)
        let optimizer = AdamOptimizer(parameterCount: model.parameters.values.count)
        var random = SeededRandom(seed: 4, purpose: .neighbourSampling)
        let nodeFeatures = (0..<graph.nodeCount * width).map { _ in random.nextUnitFloat() }
        let partition = GraphPartition(customers: customers, products: products, ranks: 1)
        let share = nodeFeatures.withUnsafeBufferPointer {
            LocalGraph(graph: graph, features: $0, featureWidth: width, partition: partition, rank: 0)
        }
        let sampler = NeighbourSampler(graph: share, fanouts: [4, 3], world: SingleProcessCommunicator())
        let input = Tensor(shape: [graph.nodeCount, width])
        let labels = (0..<16).map { Int32($0 % 4) }
        var seeds: [Int32] = []
        seeds.reserveCapacity(16)
        func step(_ first: Int) {
            seeds.removeAll(keepingCapacity: true)
            for k in 0..<16 { seeds.append(Int32((first + k * 3) % customers)) }
            let sample = try! sampler.sample(seeds: seeds, random: &random)
            try! sampler.gatherFeatures(of: sample.inputNodes, into: input.pointer)
            model.parameters.zeroGradients()
            _ = labels.withUnsafeBufferPointer {
                model.trainingStep(features: input.pointer, blocks: sample.blocks, labels: $0.baseAddress!, random: &random)
            }
            optimizer.update(model.parameters.values, gradients: model.parameters.gradients, learningRate: 1e-3)
        }
        // Buffers grow to the largest sample seen; a few steps over every seed set reach it.
        for first in 0..<customers { step(first) }
        #expect(allocations { for first in 0..<customers { step(first) } } == 0)
    }
}
