import Testing
@testable import Models
import Tensors

/// Finite-difference checks of every parameter and input gradient, in float32.
///
/// Stencil: (−f(x+2h) + 8f(x+h) − 8f(x−h) + f(x−2h)) / 12h with h = 1e-2: truncation error is
/// O(h⁴) ≈ 1e-8. Rounding of a float32 loss near 1 is ~1e-7 per evaluation, amplified by
/// 18/(12h) = 150 to ~2e-5. Hence the tolerance |analytic − numeric| ≤ 2e-3·|numeric| + 1e-4:
/// five times the noise floor, and far below the error of a missing term or a wrong sign
/// (which shows up as tens of percent on these well-scaled gradients).
func numericDerivative(at pointer: UnsafeMutablePointer<Float>, step h: Float = 1e-2, _ loss: () -> Float) -> Float {
    let original = pointer.pointee
    func at(_ offset: Float) -> Float {
        pointer.pointee = original + offset
        return loss()
    }
    let value = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
    pointer.pointee = original
    return value
}

struct GradientMismatch: CustomStringConvertible {
    let name: String
    let index: Int
    let analytic: Float
    let numeric: Float
    var description: String { "\(name)[\(index)]: analytic \(analytic), numeric \(numeric)" }
}

func compareGradients(
    name: String, values: UnsafeMutablePointer<Float>, analytic: [Float], step: Float = 1e-2, loss: () -> Float
) -> [GradientMismatch] {
    var mismatches: [GradientMismatch] = []
    for index in analytic.indices {
        let numeric = numericDerivative(at: values + index, step: step, loss)
        if abs(analytic[index] - numeric) > 2e-3 * abs(numeric) + 1e-4 {
            mismatches.append(GradientMismatch(name: name, index: index, analytic: analytic[index], numeric: numeric))
        }
    }
    return mismatches
}

/// `compareGradients` over every slice of `parameters`, each against its analytic gradient.
func compareParameterGradients(_ parameters: ParameterStore, step: Float = 1e-2, loss: () -> Float) -> [GradientMismatch] {
    var mismatches: [GradientMismatch] = []
    for slice in parameters.layout.slices {
        mismatches += compareGradients(
            name: slice.name, values: parameters.value(slice),
            analytic: parameters.gradientArray(slice.name)!, step: step, loss: loss)
    }
    return mismatches
}

@Suite struct GradientCheckTests {
    @Test("LSTM gradients match finite differences with padding and dropout, for every element-wise kernel this CPU runs",
          arguments: ElementwiseKernel.available)
    func lstmGradientsMatchFiniteDifferencesWithPaddingAndDropout(kernel: ElementwiseKernel) {
        let (batchSize, steps, inputSize) = (3, 5, 3)
        let model = LSTMModel(
            configuration: LSTMConfiguration(
                inputSize: inputSize, hiddenSize: 4, layers: 2, dropout: 0.3, positiveWeight: 1.5, clvWeight: 0.7, clvLoss: .logMSE),
            seed: 11)
        model.elementwiseKernel = kernel
        var random = SeededRandom(seed: 5, purpose: .synthesis)
        let lengths: [Int32] = [5, 2, 4]
        var x = (0..<batchSize * steps * inputSize).map { _ in random.nextFloat(in: -1, 1) }
        for b in 0..<batchSize {
            for t in Int(lengths[b])..<steps {
                // Garbage in padded steps: it must not leak into outputs or gradients.
                for i in 0..<inputSize { x[(b * steps + t) * inputSize + i] = 100 }
            }
        }
        let labels: [Float] = [1, 0, 1]
        let spend: [Float] = [12, 0, 3]

        x.withUnsafeMutableBufferPointer { xs in
            lengths.withUnsafeBufferPointer { ls in
                labels.withUnsafeBufferPointer { ys in
                    spend.withUnsafeBufferPointer { ss in
                        let batch = SequenceBatch(
                            features: xs.baseAddress!, lengths: ls.baseAddress!, batchSize: batchSize, steps: steps,
                            churnLabels: ys.baseAddress!, spend: ss.baseAddress!)
                        // The same stream every time, hence the same dropout masks.
                        func loss() -> Float {
                            var masks = SeededRandom(seed: 99, purpose: .dropout)
                            model.forward(batch, training: true, random: &masks)
                            return model.loss(batch).total
                        }
                        model.parameters.zeroGradients()
                        _ = loss()
                        var featureGradients = [Float](repeating: 0, count: xs.count)
                        featureGradients.withUnsafeMutableBufferPointer { model.backward(batch, featureGradients: $0.baseAddress!) }

                        var mismatches = compareParameterGradients(model.parameters, loss: loss)
                        for b in 0..<batchSize {
                            for t in 0..<steps {
                                for i in 0..<inputSize {
                                    let index = (b * steps + t) * inputSize + i
                                    if t >= Int(lengths[b]) {
                                        #expect(featureGradients[index] == 0, "padded step b\(b) t\(t) has a gradient")
                                    }
                                }
                            }
                        }
                        mismatches += compareGradients(
                            name: "x", values: xs.baseAddress!, analytic: featureGradients, loss: loss)
                        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(5))")
                    }
                }
            }
        }
    }

    @Test("the ZILN loss's derivatives match finite differences, for a zero and positive spends")
    func zilnLossDerivatives() {
        let cases: [(spend: Float, logit: Float, mu: Float, sigmaRaw: Float)] = [
            (0, 0.3, 1.2, -0.4), (12, -0.7, 2.1, 0.5), (0.4, 1.5, -0.3, -1.2), (250, 0.1, 4.0, 1.8),
        ]
        for c in cases {
            var inputs = [c.logit, c.mu, c.sigmaRaw]
            let analytic = LSTMModel.zilnLoss(spend: c.spend, purchaseLogit: c.logit, mu: c.mu, sigmaRaw: c.sigmaRaw)
            let mismatches = inputs.withUnsafeMutableBufferPointer { values in
                compareGradients(name: "ziln(spend \(c.spend))", values: values.baseAddress!,
                                 analytic: [analytic.dLogit, analytic.dMu, analytic.dSigmaRaw], step: 1e-3) {
                    LSTMModel.zilnLoss(spend: c.spend, purchaseLogit: values[0], mu: values[1], sigmaRaw: values[2]).value
                }
            }
            #expect(mismatches.isEmpty, "\(mismatches)")
            if c.spend == 0 { #expect(analytic.dMu == 0 && analytic.dSigmaRaw == 0, "no spend: only the purchase logit learns") }
        }
    }

    @Test("an LSTM with ZILN and stage heads and the customer-input path: every gradient matches finite differences, with dropout and padding",
          arguments: ElementwiseKernel.available)
    func lstmHeadsGradients(kernel: ElementwiseKernel) {
        let (batchSize, steps, inputSize) = (4, 4, 3)
        let model = LSTMModel(
            configuration: LSTMConfiguration(
                inputSize: inputSize, hiddenSize: 4, layers: 2, dropout: 0.3, positiveWeight: 1.5, clvWeight: 0.7,
                clvLoss: .ziln, stageCount: 3, stageWeight: 0.6, stageClassWeights: [1, 2, 0.5], customerHidden: 3),
            seed: 12)
        model.elementwiseKernel = kernel
        // Keep every dense pre-activation clear of the ReLU's kink, where a finite difference
        // would straddle it: weights within ±0.02 over 7 inputs of magnitude ≤ 1 move it by at
        // most 0.14 around biases of ±0.8 (units 0 and 2 on, unit 1 off), and a step of 2·h
        // moves it by 0.02 more.
        let denseWeight = model.parameters.value(model.parameters.layout.slice(named: "customer_dense.weight")!)
        for index in 0..<3 * CustomerInputs.width(featureCount: inputSize) { denseWeight[index] *= 0.04 }
        let denseBias = model.parameters.value(model.parameters.layout.slice(named: "customer_dense.bias")!)
        (denseBias[0], denseBias[1], denseBias[2]) = (0.8, -0.8, 0.8)
        var random = SeededRandom(seed: 6, purpose: .synthesis)
        let lengths: [Int32] = [4, 1, 3, 2]
        var x = (0..<batchSize * steps * inputSize).map { _ in random.nextFloat(in: -1, 1) }
        let labels: [Float] = [1, 0, 0, 1]
        let spend: [Float] = [0, 7.5, 0.8, 0]
        let stages: [Int32] = [0, 2, 1, 0]
        x.withUnsafeMutableBufferPointer { xs in
            SequenceBatch.withLabelled(features: Array(xs), lengths: lengths, churnLabels: labels, spend: spend,
                                       stages: stages, steps: steps) { template in
                var batch = template
                batch.features = UnsafePointer(xs.baseAddress!)
                func loss() -> Float {
                    var masks = SeededRandom(seed: 98, purpose: .dropout)
                    model.forward(batch, training: true, random: &masks)
                    return model.loss(batch).total
                }
                model.parameters.zeroGradients()
                let value = loss()
                #expect(value.isFinite && value > 0)
                var featureGradients = [Float](repeating: 0, count: xs.count)
                featureGradients.withUnsafeMutableBufferPointer { model.backward(batch, featureGradients: $0.baseAddress!) }
                var mismatches = compareParameterGradients(model.parameters, loss: loss)
                mismatches += compareGradients(name: "x", values: xs.baseAddress!, analytic: featureGradients, loss: loss)
                #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(5))")
            }
        }
    }

    @Test func paddingDoesNotChangeTheOutputs() {
        // A sequence evaluated alone at its own length must give what it gives padded in a batch.
        let model = LSTMModel(configuration: LSTMConfiguration(inputSize: 2, hiddenSize: 3, layers: 2, dropout: 0, clvLoss: .logMSE), seed: 3)
        var random = SeededRandom(seed: 1, purpose: .synthesis)
        let short = (0..<3 * 2).map { _ in random.nextFloat(in: -1, 1) }
        var padded = short + [Float](repeating: 7, count: 2 * 2)
        let long = (0..<5 * 2).map { _ in random.nextFloat(in: -1, 1) }
        padded += long
        var unused = SeededRandom(seed: 0, purpose: .dropout)
        let alone: Float = short.withUnsafeBufferPointer { xs in
            [Int32(3)].withUnsafeBufferPointer { ls in
                model.forward(SequenceBatch(features: xs.baseAddress!, lengths: ls.baseAddress!, batchSize: 1, steps: 3),
                              training: false, random: &unused)
                return model.churnLogits[0]
            }
        }
        let batched: Float = padded.withUnsafeBufferPointer { xs in
            [Int32(3), Int32(5)].withUnsafeBufferPointer { ls in
                model.forward(SequenceBatch(features: xs.baseAddress!, lengths: ls.baseAddress!, batchSize: 2, steps: 5),
                              training: false, random: &unused)
                return model.churnLogits[0]
            }
        }
        #expect(abs(alone - batched) < 1e-6, "alone \(alone), padded in a batch \(batched)")
    }

    @Test func graphSAGEGradientsMatchFiniteDifferencesWithDropout() {
        let classes = 3
        let model = GraphSAGEModel(
            configuration: GraphSAGEConfiguration(
                inputSize: 4, hiddenSize: 6, classes: classes, layers: 2, dropout: 0.25, classWeights: [1, 2, 0.5]),
            seed: 21)
        var random = SeededRandom(seed: 8, purpose: .synthesis)
        let blocks = [
            SampledBlock(sourceCount: 10, destinationCount: 6,
                         offsets: [0, 3, 3, 5, 8, 9, 12], neighbours: [6, 7, 7, 0, 9, 8, 2, 1, 3, 4, 5, 9]),
            SampledBlock(sourceCount: 6, destinationCount: 4,
                         offsets: [0, 2, 4, 4, 6], neighbours: [4, 5, 0, 5, 1, 1]),
        ]
        var x = (0..<10 * 4).map { _ in random.nextFloat(in: -1, 1) }
        let labels: [Int32] = [2, 0, 1, 1]
        x.withUnsafeMutableBufferPointer { xs in
            labels.withUnsafeBufferPointer { ls in
                func loss() -> Float {
                    var masks = SeededRandom(seed: 42, purpose: .dropout)
                    model.forward(features: xs.baseAddress!, blocks: blocks, training: true, random: &masks)
                    return model.loss(labels: ls.baseAddress!)
                }
                model.parameters.zeroGradients()
                _ = loss()
                var featureGradients = [Float](repeating: 0, count: xs.count)
                featureGradients.withUnsafeMutableBufferPointer { model.backward(blocks: blocks, featureGradients: $0.baseAddress!) }
                // ReLU has a kink: a step that moves a pre-activation across zero breaks the
                // derivative, so the steps here are small (2e-3; noise floor ~8e-5, still under
                // the tolerance). With this seed no step crosses a kink; a crossing shows up as
                // an analytic 0 against a numeric non-zero, which is how h=1e-2 failed here.
                var mismatches = compareParameterGradients(model.parameters, step: 2e-3, loss: loss)
                mismatches += compareGradients(
                    name: "x", values: xs.baseAddress!, analytic: featureGradients, step: 2e-3, loss: loss)
                #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(5))")
                #expect(featureGradients.contains { $0 != 0 }, "input gradients must not vanish")
            }
        }
    }
}
