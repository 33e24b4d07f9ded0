import CustomerData
import Foundation
import Models
import Tensors

/// Seconds since an arbitrary start, monotonic.
@inline(__always)
func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

/// Single-thread `cblas_sgemm` rate on square matrices: the yardstick for model-FLOP utilisation.
public func measureSgemm(size: Int = 512, minimumSeconds: Double = 1) -> Double {
    BLAS.setThreadCount(1)
    var random = SeededRandom(seed: 1, purpose: .synthesis)
    let a = Tensor(shape: [size, size]), b = Tensor(shape: [size, size]), c = Tensor(shape: [size, size])
    for index in 0..<size * size { a[index] = random.nextFloat(in: -1, 1); b[index] = random.nextFloat(in: -1, 1) }
    let flops = 2 * Double(size) * Double(size) * Double(size)
    var best = 0.0
    let deadline = now() + minimumSeconds
    repeat {
        let start = now()
        BLAS.gemm(m: size, n: size, k: size, a: a.pointer, lda: size, b: b.pointer, ldb: size, c: c.pointer, ldc: size)
        best = max(best, flops / (now() - start))
    } while now() < deadline
    return best
}

/// LSTM training throughput: forward, loss, backward and Adam on one thread.
public struct LSTMThroughput {
    public var steps = 39
    public var inputSize = 8
    public var hiddenSize = 50
    public var layers = 2
    public var batchSize = 32
    public var minimumSeconds = 3.0
    /// The element-wise step kernels to time (the best this CPU runs by default).
    public var kernel = ElementwiseKernel.best

    public init() {}

    /// Multiply-adds ×2 of the GEMMs of one sample's forward pass; backward does twice that.
    public var forwardFlopsPerSample: Double {
        var flops = 0.0
        for layer in 0..<layers {
            let input = layer == 0 ? inputSize : hiddenSize
            flops += 2 * Double(steps) * Double(4 * hiddenSize) * Double(input + hiddenSize)
        }
        return flops + 2 * 2 * Double(hiddenSize)
    }

    public struct Result: Sendable {
        public let samplesPerSecond: Double
        public let gflops: Double
        /// Shares of the step: forward, loss + backward, optimizer.
        public let forwardShare: Double
        public let backwardShare: Double
        public let optimizerShare: Double
    }

    public func run() -> Result {
        BLAS.setThreadCount(1)
        // The heads a default training run ships: churn, ZILN and four stages.
        let model = LSTMModel(
            configuration: LSTMConfiguration(
                inputSize: inputSize, hiddenSize: hiddenSize, layers: layers, dropout: 0.2, clvLoss: .ziln, stageCount: 4),
            seed: 1)
        model.elementwiseKernel = kernel
        let adam = AdamOptimizer(parameterCount: model.parameters.layout.totalCount)
        var random = SeededRandom(seed: 2, purpose: .synthesis)
        let features = (0..<batchSize * steps * inputSize).map { _ in random.nextFloat(in: -1, 1) }
        // Realistic mixed lengths: customers joined at different times.
        let lengths = (0..<batchSize).map { _ in Int32(steps / 2 + random.nextIndex(below: steps - steps / 2 + 1)) }
        let labels = (0..<batchSize).map { _ in Float(random.nextIndex(below: 2)) }
        // Churned customers spend nothing, as in the data, so the ZILN sees both of its parts.
        let spend = labels.map { $0 > 0.5 ? 0 : random.nextFloat(in: 1, 100) }
        let stages = (0..<batchSize).map { _ in Int32(random.nextIndex(below: 4)) }
        return SequenceBatch.withLabelled(features: features, lengths: lengths, churnLabels: labels, spend: spend, stages: stages,
                                          steps: steps) { batch in
            var forward = 0.0, backward = 0.0, optimizer = 0.0
            func step(_ index: Int) {
                var masks = SeededRandom(seed: 3, purpose: .dropout, step: index)
                let t0 = now()
                model.parameters.zeroGradients()
                model.forward(batch, training: true, random: &masks)
                let t1 = now()
                _ = model.loss(batch)
                model.backward(batch)
                let t2 = now()
                adam.update(model.parameters.values, gradients: model.parameters.gradients, learningRate: 1e-3)
                let t3 = now()
                forward += t1 - t0
                backward += t2 - t1
                optimizer += t3 - t2
            }
            for index in 0..<3 { step(index) }
            forward = 0; backward = 0; optimizer = 0
            var count = 0
            let start = now()
            while now() - start < minimumSeconds || count < 10 {
                step(count)
                count += 1
            }
            let samplesPerSecond = Double(count * batchSize) / (now() - start)
            let total = forward + backward + optimizer
            return Result(samplesPerSecond: samplesPerSecond,
                          gflops: samplesPerSecond * 3 * forwardFlopsPerSample / 1e9,
                          forwardShare: forward / total, backwardShare: backward / total,
                          optimizerShare: optimizer / total)
        }
    }
}

/// GraphSAGE training throughput on a synthetic customer–product graph, with the time split
/// between sampling, gathering input features and compute.
public struct GraphSAGEThroughput {
    public var customers = 200_000
    public var products = 20_000
    public var edgesPerCustomer = 12
    public var featureSize = 16
    public var hiddenSize = 64
    public var classes = 4
    public var fanouts = [10, 5]
    public var batchSize = 512
    public var minimumSeconds = 3.0

    public init() {}

    public struct Result: Sendable {
        public let seedNodesPerSecond: Double
        public let samplingShare: Double
        public let gatherShare: Double
        public let computeShare: Double
        public let meanInputNodes: Double
    }

    public func run() throws -> Result {
        BLAS.setThreadCount(1)
        let nodeCount = customers + products
        var random = SeededRandom(seed: 4, purpose: .synthesis)
        var edges: [(source: Int32, target: Int32)] = []
        edges.reserveCapacity(2 * customers * edgesPerCustomer)
        for customer in 0..<customers {
            // Product popularity is skewed, as in shop data: squaring a uniform favours low ids.
            for _ in 0..<edgesPerCustomer {
                let u = random.nextUnitFloat()
                let product = customers + Int(u * u * Float(products - 1))
                edges.append((Int32(customer), Int32(product)))
                edges.append((Int32(product), Int32(customer)))
            }
        }
        let graph = CSRGraph(nodeCount: nodeCount, edges: edges)
        let features = (0..<nodeCount * featureSize).map { _ in random.nextFloat(in: -1, 1) }
        // The sampler training runs, on one rank: every node its own.
        let sampler = features.withUnsafeBufferPointer {
            NeighbourSampler(graph: graph, features: $0, featureWidth: featureSize, fanouts: fanouts)
        }
        let model = GraphSAGEModel(
            configuration: GraphSAGEConfiguration(inputSize: featureSize, hiddenSize: hiddenSize, classes: classes),
            seed: 5)
        let adam = AdamOptimizer(parameterCount: model.parameters.layout.totalCount)
        let input = Tensor(shape: [1])
        var labels = [Int32](repeating: 0, count: batchSize)

        var sampling = 0.0, gathering = 0.0, compute = 0.0
        var seedsDone = 0
        var inputNodes = 0
        var step = 0
        let start = now()
        while now() - start < minimumSeconds || step < 5 {
            var stream = SeededRandom(seed: 6, purpose: .neighbourSampling, step: step)
            let t0 = now()
            let seeds = (0..<batchSize).map { _ in Int32(stream.nextIndex(below: customers)) }
            let sample = try sampler.sample(seeds: seeds, random: &stream)
            let t1 = now()
            input.reshape([sample.inputNodes.count, featureSize])
            try sampler.gatherFeatures(of: sample.inputNodes, into: input.pointer)
            for index in 0..<batchSize { labels[index] = seeds[index] % Int32(classes) }
            let t2 = now()
            var masks = SeededRandom(seed: 7, purpose: .dropout, step: step)
            model.parameters.zeroGradients()
            _ = labels.withUnsafeBufferPointer {
                model.trainingStep(features: input.pointer, blocks: sample.blocks, labels: $0.baseAddress!, random: &masks)
            }
            adam.update(model.parameters.values, gradients: model.parameters.gradients, learningRate: 1e-3)
            let t3 = now()
            if step >= 2 {  // the first steps grow the buffers
                sampling += t1 - t0
                gathering += t2 - t1
                compute += t3 - t2
                seedsDone += batchSize
                inputNodes += sample.inputNodes.count
            }
            step += 1
        }
        let total = sampling + gathering + compute
        return Result(
            seedNodesPerSecond: Double(seedsDone) / total, samplingShare: sampling / total,
            gatherShare: gathering / total, computeShare: compute / total,
            meanInputNodes: Double(inputNodes) / Double(max(step - 2, 1)))
    }
}
