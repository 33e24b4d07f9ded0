import Foundation
import Models
@testable import Scoring
import Tensors
import Testing

/// `InferenceLSTM` reorders each batch by length and skips finished customers; these check
/// that neither the order nor the company a customer is scored in changes its scores.
@Suite("Inference LSTM: packed batches")
struct PackedBatchTests {
    /// Random customers: features in [−2, 2] on valid steps, zero on padding.
    struct Customers {
        let steps: Int
        let inputSize: Int
        var features: [Float]
        var lengths: [Int32]

        init(count: Int, steps: Int, inputSize: Int, lengths: (inout SeededRandom) -> Int32, seed: UInt64) {
            self.steps = steps
            self.inputSize = inputSize
            var random = SeededRandom(seed: seed, purpose: .synthesis)
            self.lengths = (0..<count).map { _ in lengths(&random) }
            features = [Float](repeating: 0, count: count * steps * inputSize)
            for customer in 0..<count {
                for index in 0..<Int(self.lengths[customer]) * inputSize {
                    features[customer * steps * inputSize + index] = random.nextFloat(in: -2, 2)
                }
            }
        }

        var count: Int { lengths.count }

        /// Runs the training model's forward on every customer (its outputs stay in `model`).
        func forward(through model: LSTMModel) {
            var random = SeededRandom(seed: 0, purpose: .dropout)
            features.withUnsafeBufferPointer { xs in
                lengths.withUnsafeBufferPointer { ls in
                    model.forward(SequenceBatch(features: xs.baseAddress!, lengths: ls.baseAddress!, batchSize: count, steps: steps),
                                  training: false, random: &random)
                }
            }
        }

        /// Churn logits and CLV outputs of customers `range`, scored as one batch.
        func score(_ network: InferenceLSTM, _ range: Range<Int>, workspace: InferenceWorkspace = InferenceWorkspace())
            -> (churn: [Float], clv: [Float]) {
            let width = network.heads.width
            var outputs = [Float](repeating: .nan, count: range.count * width)
            features.withUnsafeBufferPointer { xs in
                lengths.withUnsafeBufferPointer { ls in
                    network.forward(
                        features: xs.baseAddress! + range.lowerBound * steps * inputSize, lengths: ls.baseAddress! + range.lowerBound,
                        batch: range.count, steps: steps, workspace: workspace, outputs: &outputs)
                }
            }
            return (stride(from: 0, to: outputs.count, by: width).map { outputs[$0] },
                    stride(from: 1, to: outputs.count, by: width).map { outputs[$0] })
        }
    }

    /// Every step version this CPU runs (on the CI machine: all three).
    static let kernels = ForwardKernel.allCases.filter { $0 <= ForwardKernel.available }

    static func network(_ configuration: LSTMConfiguration, seed: UInt64, kernel: ForwardKernel = .available,
                        weightScale: Float = 3) -> (InferenceLSTM, LSTMModel) {
        let model = LSTMModel(configuration: configuration, seed: seed)
        // Larger weights than the initialisation's, so that gates saturate and cells grow past
        // the range where tanh is near-linear: the clamps and the combined quotients get used.
        let values = model.parameters.values
        for index in 0..<values.count { values[index] *= weightScale }
        var weights: [String: [Float]] = [:]
        for slice in model.parameters.layout.slices {
            weights[slice.name] = Array(UnsafeBufferPointer(start: model.parameters.value(slice), count: slice.count))
        }
        return (InferenceLSTM(configuration: configuration, weights: weights, kernel: kernel), model)
    }

    @Test("a batch of mixed lengths in arbitrary order scores each customer as when scored alone (the same bits with a fused kernel)",
          arguments: kernels)
    func batchEqualsAlone(kernel: ForwardKernel) {
        let configuration = LSTMConfiguration(inputSize: 8, hiddenSize: 50, layers: 2, dropout: 0, clvLoss: .logMSE)
        let (network, _) = Self.network(configuration, seed: 31, kernel: kernel)
        #expect(network.kernel == kernel)
        // 45 customers: not a multiple of the vector width, so partial vectors are stored too;
        // lengths repeat and come in no order.
        let customers = Customers(count: 45, steps: 39, inputSize: 8, lengths: { Int32(1 + $0.nextIndex(below: 39)) }, seed: 5)
        #expect(Set(customers.lengths).count > 20 && Set(customers.lengths).count < customers.count)
        let batch = customers.score(network, 0..<customers.count)
        let workspace = InferenceWorkspace()
        var worst: Float = 0
        for customer in 0..<customers.count {
            // One workspace for all: buffers left from the batch must not leak into a single.
            let alone = customers.score(network, customer..<customer + 1, workspace: workspace)
            worst = max(worst, abs(alone.churn[0] - batch.churn[customer]), abs(alone.clv[0] - batch.clv[customer]))
        }
        // The fused kernels compute each customer's arithmetic alike in a tile of 32 and alone;
        // the portable path's GEMM sums in an order that depends on the batch's width.
        #expect(kernel == .portable ? worst < 1e-5 : worst == 0, "worst difference \(worst)")
        #expect(batch.churn.max()! - batch.churn.min()! > 0.5, "the scores should differ between customers")
    }

    @Test("with saturating gates and large cells, scores equal the training model's forward", arguments: [
        LSTMConfiguration(inputSize: 8, hiddenSize: 50, layers: 2, dropout: 0, clvLoss: .logMSE),
        // An odd hidden size: the AVX-512 kernel's tiles of two units get a padded unit.
        LSTMConfiguration(inputSize: 3, hiddenSize: 5, layers: 3, dropout: 0, clvLoss: .logMSE),
    ], kernels)
    func matchesTrainingModel(configuration: LSTMConfiguration, kernel: ForwardKernel) {
        let (network, model) = Self.network(configuration, seed: 17, kernel: kernel)
        let steps = 13
        let customers = Customers(count: 61, steps: steps, inputSize: configuration.inputSize,
                                  lengths: { Int32(1 + $0.nextIndex(below: steps)) }, seed: 9)
        let scores = customers.score(network, 0..<customers.count)
        customers.forward(through: model)
        var worst: Float = 0
        for customer in 0..<customers.count {
            worst = max(worst, abs(scores.churn[customer] - model.churnLogits[customer]),
                        abs(scores.clv[customer] - model.clvPredictions[customer]))
        }
        #expect(worst < 1e-5, "worst difference \(worst)")
    }

    @Test("weights large enough to saturate every gate keep the scores finite and equal to the training model's",
          arguments: kernels)
    func saturatedNetwork(kernel: ForwardKernel) {
        let configuration = LSTMConfiguration(inputSize: 8, hiddenSize: 50, layers: 2, dropout: 0, clvLoss: .logMSE)
        let (network, model) = Self.network(configuration, seed: 23, kernel: kernel, weightScale: 30)
        let steps = 11
        let customers = Customers(count: 40, steps: steps, inputSize: 8, lengths: { Int32(1 + $0.nextIndex(below: steps)) }, seed: 4)
        let scores = customers.score(network, 0..<customers.count)
        customers.forward(through: model)
        // The logit's own scale: with h in [−1, 1] it is at most Σ|w| + |b|, and weights ×30
        // make single logits cancel down to small values, where a relative test means nothing.
        // Gate sums of huge terms cancel too, so float rounding moves a unit near its transition
        // a long way: the portable path, already tested above, differs by 4·10⁻⁵ of the
        // scale here. A wrong or overflowing saturation differs by a good part of it.
        let head = model.parameters.valueArray("churn_head.weight")! + model.parameters.valueArray("churn_head.bias")!
        let scale = head.reduce(0) { $0 + abs($1) }
        var worst: Float = 0
        for customer in 0..<customers.count {
            #expect(scores.churn[customer].isFinite && scores.clv[customer].isFinite)
            worst = max(worst, abs(scores.churn[customer] - model.churnLogits[customer]) / scale)
        }
        #expect(worst < 1e-3, "worst difference \(worst) of the logit's scale")
    }

    @Test("all customers full length, all length one, and a length of zero (state stays zero)", arguments: kernels)
    func edgeLengths(kernel: ForwardKernel) {
        let configuration = LSTMConfiguration(inputSize: 8, hiddenSize: 50, layers: 2, dropout: 0, clvLoss: .logMSE)
        let (network, model) = Self.network(configuration, seed: 3, kernel: kernel)
        let full = Customers(count: 16, steps: 39, inputSize: 8, lengths: { _ in 39 }, seed: 1)
        let short = Customers(count: 16, steps: 39, inputSize: 8, lengths: { _ in 1 }, seed: 2)
        for customers in [full, short] {
            let batch = customers.score(network, 0..<customers.count)
            for customer in [0, 7, 15] {
                let alone = customers.score(network, customer..<customer + 1)
                #expect(abs(alone.churn[0] - batch.churn[customer]) < 1e-5)
            }
        }
        var empty = short
        empty.lengths[4] = 0
        let scores = empty.score(network, 0..<empty.count)
        let bias = model.parameters.valueArray("churn_head.bias")![0]
        #expect(scores.churn[4] == bias)
        #expect(abs(scores.churn[5] - short.score(network, 5..<6).churn[0]) < 1e-5)
    }

    @Test("the vector 2^u is within 2 ulp over the clamped range")
    func exponential() {
        var worst = 0.0
        for start in stride(from: -36.0, to: 36.0, by: 0.0007 * 16) {
            let u = InferenceLSTM.Lanes((0..<16).map { Float(start + 0.0007 * Double($0)) })
            let y = InferenceLSTM.exp2(u)
            for lane in 0..<16 {
                let exact = exp2(Double(u[lane]))
                worst = max(worst, abs(Double(y[lane]) - exact) / exact)
            }
        }
        // 2 ulp where floats are sparsest relative to their value (just below a power of 2).
        #expect(worst < 2 * 0x1p-23, "worst relative error \(worst)")
    }

    @Test("saturated gates give the limits instead of overflowing")
    func saturation() {
        typealias Lanes = InferenceLSTM.Lanes
        // The inputs are exponents u = −x·log2(e): very negative means σ(x) = 1.
        let open = Lanes(repeating: -1e30), shut = Lanes(repeating: 1e30), c = Lanes(repeating: 0.5)
        let kept = InferenceLSTM.lanesUpdate(open, open, open, open, c)
        for lane in 0..<Lanes.scalarCount {
            #expect(abs(kept.cell[lane] - 1.5) < 1e-6)
            #expect(abs(kept.hidden[lane] - Float(tanh(1.5))) < 1e-6)
        }
        let cleared = InferenceLSTM.lanesUpdate(shut, shut, open, open, c)
        // σ stops at 1/(1 + 2^36) ≈ 1.5·10⁻¹¹ rather than 0: the clamp that keeps products finite.
        for lane in 0..<Lanes.scalarCount { #expect(abs(cleared.cell[lane]) < 1e-10 && abs(cleared.hidden[lane]) < 1e-10) }
        let huge = InferenceLSTM.lanesUpdate(open, open, open, open, Lanes(repeating: 1e6))
        #expect(huge.hidden == Lanes(repeating: 1))
    }
}
