import Foundation
import Models
import Scoring
import Tensors

/// Scoring forward throughput (`InferenceLSTM`, what `clm-score batch` and the service run) on
/// one thread, on synthetic sequences.
///
/// The weights are a freshly initialised model's: the forward's cost does not depend on their
/// values (its kernels are branch-free), so no checkpoint is needed. What does matter is the
/// length distribution, because steps past a customer's length may be skipped.
public struct ScoringThroughput {
    public var steps = 39
    public var inputSize = 8
    public var hiddenSize = 50
    public var layers = 2
    public var batchSize = 256
    /// Distinct customers cycled through, so the features stream from memory as in a real run
    /// rather than staying in cache.
    public var poolSize = 16384
    public var minimumSeconds = 3.0
    /// The step version timed (lowered to what the CPU runs).
    public var kernel = ForwardKernel.available

    public init() {}

    /// How customers' sequence lengths are drawn.
    public enum Lengths: CustomStringConvertible, Sendable {
        /// Every customer has the full T steps (the synthetic 200k file: 91% at T, mean 38.6).
        case full
        /// Uniform in 1...T (mean (T+1)/2): a young customer base.
        case uniform
        /// Sampled with replacement from stored lengths, e.g. a dataset's `lengths.i32`.
        case sampled(name: String, values: [Int32])

        public var description: String {
            switch self {
            case .full: return "all T"
            case .uniform: return "uniform 1...T"
            case let .sampled(name, _): return name
            }
        }
    }

    public struct Result: Sendable {
        /// The median of quarter-second rounds.
        public let customersPerSecond: Double
        public let meanLength: Double
        /// Multiply-adds ×2 of the GEMMs over each customer's valid steps only: the work any
        /// implementation must do, so padded steps computed and thrown away count against it.
        public let usefulGflops: Double
    }

    /// FLOPs of one valid step through every layer (gates' GEMMs; the heads are added once).
    public var flopsPerStep: Double {
        var flops = 0.0
        for layer in 0..<layers {
            let input = layer == 0 ? inputSize : hiddenSize
            flops += 2 * Double(4 * hiddenSize) * Double(input + hiddenSize)
        }
        return flops
    }

    public func run(lengths distribution: Lengths) -> Result {
        BLAS.setThreadCount(1)
        // The heads a default training run ships: churn, ZILN and four stages.
        let configuration = LSTMConfiguration(
            inputSize: inputSize, hiddenSize: hiddenSize, layers: layers, dropout: 0, clvLoss: .ziln, stageCount: 4)
        let model = LSTMModel(configuration: configuration, seed: 1)
        var weights: [String: [Float]] = [:]
        for slice in model.parameters.layout.slices {
            weights[slice.name] = Array(UnsafeBufferPointer(start: model.parameters.value(slice), count: slice.count))
        }
        let network = InferenceLSTM(configuration: configuration, weights: weights, kernel: kernel)
        let workspace = InferenceWorkspace()

        var random = SeededRandom(seed: 8, purpose: .synthesis)
        let lengths: [Int32] = (0..<poolSize).map { _ in
            switch distribution {
            case .full: return Int32(steps)
            case .uniform: return Int32(1 + random.nextIndex(below: steps))
            case let .sampled(_, values): return min(max(values[random.nextIndex(below: values.count)], 1), Int32(steps))
            }
        }
        // Normalised features; padding steps are zero, as the feature pipeline leaves them.
        var features = [Float](repeating: 0, count: poolSize * steps * inputSize)
        for customer in 0..<poolSize {
            for index in 0..<Int(lengths[customer]) * inputSize {
                features[(customer * steps) * inputSize + index] = random.nextFloat(in: -2, 2)
            }
        }
        var outputs = [Float](repeating: 0, count: batchSize * configuration.heads.width)
        let meanLength = Double(lengths.reduce(0) { $0 + Int($1) }) / Double(poolSize)

        return features.withUnsafeBufferPointer { xs in
            lengths.withUnsafeBufferPointer { ls in
                outputs.withUnsafeMutableBufferPointer { headsOut in
                    var next = 0
                    func batch() -> Int {
                        let n = min(batchSize, poolSize - next)
                        network.forward(
                            features: xs.baseAddress! + next * steps * inputSize, lengths: ls.baseAddress! + next,
                            batch: n, steps: steps, workspace: workspace,
                            outputs: headsOut.baseAddress!)
                        next = next + n == poolSize ? 0 : next + n
                        return n
                    }
                    // Grows the workspace and warms the caches.
                    for _ in 0..<4 { _ = batch() }
                    // Rounds of a quarter second, and their median: a neighbour on the host
                    // slowing a round down moves the mean but not the median.
                    var rates: [Double] = []
                    let start = now()
                    while now() - start < minimumSeconds || rates.count < 3 {
                        var customers = 0
                        let roundStart = now()
                        while now() - roundStart < 0.25 || customers < 4 * batchSize { customers += batch() }
                        rates.append(Double(customers) / (now() - roundStart))
                    }
                    let perSecond = rates.sorted()[rates.count / 2]
                    let flopsPerCustomer = meanLength * flopsPerStep + 2 * 2 * Double(hiddenSize)
                    return Result(customersPerSecond: perSecond, meanLength: meanLength,
                                  usefulGflops: perSecond * flopsPerCustomer / 1e9)
                }
            }
        }
    }
}
