import Models
import Tensors
import Testing

/// The vector kernels against the Swift loops they replace, at hidden sizes that exercise whole
/// 16-lane vectors, a partial last vector and both, with customers of every length, dropout,
/// the dense path and every head.
@Suite struct ElementwiseKernelTests {
    static let cases: [(ElementwiseKernel, Int)] = ElementwiseKernel.available.filter { $0 != .portable }
        .flatMap { kernel in [5, 16, 33, 50].map { (kernel, $0) } }

    /// Head outputs, loss, every parameter gradient and the feature gradients after one step.
    func step(_ kernel: ElementwiseKernel, hidden: Int) -> (outputs: [Float], loss: Float, gradients: [Float], features: [Float]) {
        let (batchSize, steps, inputSize) = (7, 9, 8)
        let model = LSTMModel(
            configuration: LSTMConfiguration(
                inputSize: inputSize, hiddenSize: hidden, layers: 2, dropout: 0.2, clvLoss: .ziln, stageCount: 4, customerHidden: 5),
            seed: 3)
        model.elementwiseKernel = kernel
        var random = SeededRandom(seed: 8, purpose: .synthesis)
        let x = (0..<batchSize * steps * inputSize).map { _ in random.nextFloat(in: -2, 2) }
        let lengths: [Int32] = [9, 1, 5, 9, 2, 7, 3]
        let labels: [Float] = [1, 0, 0, 1, 1, 0, 1]
        let spend: [Float] = [0, 20, 3, 0, 0, 150, 0]
        let stages: [Int32] = [0, 1, 2, 3, 0, 2, 1]
        var features = [Float](repeating: 0, count: x.count)
        var masks = SeededRandom(seed: 4, purpose: .dropout)
        let loss = SequenceBatch.withLabelled(features: x, lengths: lengths, churnLabels: labels, spend: spend, stages: stages, steps: steps) { batch in
            model.parameters.zeroGradients()
            model.forward(batch, training: true, random: &masks)
            let loss = model.loss(batch).total
            features.withUnsafeMutableBufferPointer { model.backward(batch, featureGradients: $0.baseAddress!) }
            return loss
        }
        return (Array(model.headOutputs), loss, Array(model.parameters.gradients.buffer), features)
    }

    /// Each lane does the Swift loop's operations in its order (no fused multiply-adds), so
    /// the vector width changes nothing: the same bits, which keeps runs comparable across
    /// machines with and without AVX.
    @Test("the vector kernels give the Swift loops' outputs, loss and gradients, bit for bit", arguments: cases)
    func agreesWithPortable(kernel: ElementwiseKernel, hidden: Int) {
        let reference = step(.portable, hidden: hidden), vector = step(kernel, hidden: hidden)
        #expect(reference.gradients.contains { $0 != 0 }, "the step should produce gradients, or the comparison proves little")
        #expect(vector.outputs == reference.outputs, "head outputs")
        #expect(vector.loss == reference.loss, "loss \(vector.loss) vs \(reference.loss)")
        let differing = zip(vector.gradients, reference.gradients).filter { $0 != $1 }.count
        #expect(differing == 0, "\(differing) of \(reference.gradients.count) parameter gradients differ")
        #expect(vector.features == reference.features, "feature gradients")
    }

    @Test("a vector-kernel step is the same bits every time", arguments: ElementwiseKernel.available)
    func deterministic(kernel: ElementwiseKernel) {
        let first = step(kernel, hidden: 50), second = step(kernel, hidden: 50)
        #expect(first.gradients == second.gradients && first.outputs == second.outputs)
    }
}
