import Models
import Tensors

/// The LSTM forward pass for scoring only: PyTorch's equations as in `LSTMModel.forward`, with
/// the weights rearranged once so that each step's activations are one vectorisable loop.
///
/// Rearrangement: every gate is computed as a sigmoid, the candidate gate g through
/// tanh(x) = 2σ(2x) − 1, so its weight rows and biases are doubled at load time; the two biases
/// are summed. Weights are immutable and shared by all callers; each caller brings an
/// `InferenceWorkspace`.
public final class InferenceLSTM: Sendable {
    struct Layer {
        let inputSize: Int
        let inputWeight: [Float]   // [4H, in], g rows doubled
        let hiddenWeight: [Float]  // [4H, H], g rows doubled
        let bias: [Float]          // [4H] = b_ih + b_hh, g part doubled
    }

    public let hiddenSize: Int
    public let inputSize: Int
    let layers: [Layer]
    let headWeight: [Float]        // [2, H]: churn row, CLV row
    let headBias: [Float]          // [2]

    /// Builds the inference weights from PyTorch-named tensors (already checked for shape).
    public init(configuration: LSTMConfiguration, weights: [String: [Float]]) {
        let hidden = configuration.hiddenSize
        hiddenSize = hidden
        inputSize = configuration.inputSize
        func doubledCandidate(_ values: [Float], columns: Int) -> [Float] {
            var out = values
            for index in 2 * hidden * columns..<3 * hidden * columns { out[index] *= 2 }
            return out
        }
        layers = (0..<configuration.layers).map { k in
            let inputSize = k == 0 ? configuration.inputSize : hidden
            let bias = zip(weights["lstm.bias_ih_l\(k)"]!, weights["lstm.bias_hh_l\(k)"]!).map { $0 + $1 }
            return Layer(
                inputSize: inputSize,
                inputWeight: doubledCandidate(weights["lstm.weight_ih_l\(k)"]!, columns: inputSize),
                hiddenWeight: doubledCandidate(weights["lstm.weight_hh_l\(k)"]!, columns: hidden),
                bias: doubledCandidate(bias, columns: 1))
        }
        headWeight = weights["churn_head.weight"]! + weights["clv_head.weight"]!
        headBias = weights["churn_head.bias"]! + weights["clv_head.bias"]!
    }

    /// Churn logits and CLV predictions (log1p scale) of `batch` customers.
    ///
    /// `features` is [batch, steps, inputSize] batch-major, `lengths` [batch] in 1...steps;
    /// steps at or past a customer's length leave its state unchanged, as in training.
    public func forward(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, batch: Int, steps: Int,
        workspace: InferenceWorkspace, churnLogits: UnsafeMutablePointer<Float>, clv: UnsafeMutablePointer<Float>
    ) {
        let hidden = hiddenSize, width = 4 * hidden
        workspace.prepare(batch: batch, steps: steps, inputSize: inputSize, hidden: hidden)
        let sequence = workspace.sequence.pointer   // [T, B, max(in, H)]: layer input, then its output
        let gates = workspace.gates.pointer         // [T, B, 4H]
        let cells = workspace.cells.pointer         // [B, H]

        // Batch-major to time-major, so each step's rows are contiguous for the recurrent GEMM.
        for b in 0..<batch {
            for t in 0..<steps {
                (sequence + (t &* batch &+ b) &* inputSize).update(from: features + (b &* steps &+ t) &* inputSize, count: inputSize)
            }
        }

        for layer in layers {
            let rows = steps * batch
            // Input projection of every step at once, biases added after.
            layer.inputWeight.withUnsafeBufferPointer { w in
                BLAS.gemm(transposeB: true, m: rows, n: width, k: layer.inputSize,
                          a: sequence, lda: layer.inputSize, b: w.baseAddress!, ldb: layer.inputSize, c: gates, ldc: width)
            }
            layer.bias.withUnsafeBufferPointer { bias in
                for row in 0..<rows {
                    let line = gates + row &* width
                    for column in 0..<width { line[column] += bias[column] }
                }
            }
            cells.update(repeating: 0, count: batch * hidden)
            // The layer's outputs overwrite its inputs step by step: step t's input was consumed
            // by the projection above, so the buffer becomes the next layer's input.
            for t in 0..<steps {
                let stepGates = gates + t &* batch &* width
                let outputs = sequence + t &* batch &* hidden
                if t > 0 {
                    layer.hiddenWeight.withUnsafeBufferPointer { w in
                        BLAS.gemm(transposeB: true, m: batch, n: width, k: hidden,
                                  a: outputs - batch &* hidden, lda: hidden, b: w.baseAddress!, ldb: hidden,
                                  beta: 1, c: stepGates, ldc: width)
                    }
                }
                InferenceLSTM.sigmoidInPlace(stepGates, count: batch &* width)
                for b in 0..<batch {
                    let h = outputs + b &* hidden
                    let c = cells + b &* hidden
                    guard t < Int(lengths[b]) else {
                        // Past the end: carry h (c is untouched); zero before the first step.
                        if t == 0 { h.update(repeating: 0, count: hidden) } else { h.update(from: h - batch &* hidden, count: hidden) }
                        continue
                    }
                    let g = stepGates + b &* width
                    for unit in 0..<hidden {
                        let candidate = 2 * g[2 &* hidden &+ unit] - 1
                        let cell = g[hidden &+ unit] * c[unit] + g[unit] * candidate
                        c[unit] = cell
                        h[unit] = g[3 &* hidden &+ unit] * (2 * InferenceLSTM.sigmoid(2 * cell) - 1)
                    }
                }
            }
        }

        // Heads on the top layer's last step (= each customer's last valid step).
        let final = sequence + (steps - 1) &* batch &* hidden
        for b in 0..<batch {
            let h = final + b &* hidden
            var churn = headBias[0], value = headBias[1]
            for unit in 0..<hidden {
                churn += headWeight[unit] * h[unit]
                value += headWeight[hidden &+ unit] * h[unit]
            }
            churnLogits[b] = churn
            clv[b] = value
        }
    }

    @inline(__always)
    static func sigmoid(_ x: Float) -> Float { Kernels.sigmoid(x) }

    /// One flat loop over a whole step's gates; the kernel is branch-free and inlined, so the
    /// compiler vectorises it (the per-customer calls of 2H and H elements in `LSTMModel`
    /// leave most of that on the table).
    static func sigmoidInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = sigmoid(x[index]) }
    }
}

/// Per-caller buffers of `InferenceLSTM.forward`, grown to the largest batch seen; used by one
/// caller at a time (the scorer's pool hands it out), hence unchecked Sendable.
public final class InferenceWorkspace: @unchecked Sendable {
    let sequence = Tensor(shape: [1])
    let gates = Tensor(shape: [1])
    let cells = Tensor(shape: [1])

    public init() {}

    func prepare(batch: Int, steps: Int, inputSize: Int, hidden: Int) {
        sequence.reshape([steps, batch, max(inputSize, hidden)])
        gates.reshape([steps, batch, 4 * hidden])
        cells.reshape([batch, hidden])
    }
}
