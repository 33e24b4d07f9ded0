import CTrainingKernels
import Foundation
import Tensors

/// Sizes and loss settings of the churn / CLV / stage sequence model.
public struct LSTMConfiguration: Sendable, Equatable, Codable {
    public var inputSize: Int
    public var hiddenSize: Int
    public var layers: Int
    /// Inverted dropout between stacked layers, in training only.
    public var dropout: Float
    /// PyTorch's `pos_weight` of the churn loss; 1 weighs both classes alike.
    public var positiveWeight: Float
    /// λ in loss = BCE(churn) + λ · CLV loss + μ · stage loss.
    public var clvWeight: Float
    /// The CLV head and its loss. Callers always name it: the training configuration's
    /// `lstm.clv_loss` holds the one default.
    public var clvLoss: CLVLoss
    /// Lifecycle stages of the stage head; 0 leaves the head out.
    public var stageCount: Int
    /// μ in the loss above.
    public var stageWeight: Float
    /// Per-stage weights of the stage cross-entropy (PyTorch's `weight`); nil weighs all alike.
    public var stageClassWeights: [Float]?
    /// Starting biases of the ZILN head; nil leaves them at the uniform initialisation.
    public var spendPrior: SpendPrior?
    /// Units of the dense path from the customer-level inputs (`CustomerInputs`) to the heads;
    /// 0 leaves it out and the heads read the LSTM's state alone.
    public var customerHidden: Int

    public init(
        inputSize: Int, hiddenSize: Int = 50, layers: Int = 2, dropout: Float = 0.2,
        positiveWeight: Float = 1, clvWeight: Float = 1, clvLoss: CLVLoss,
        stageCount: Int = 0, stageWeight: Float = 0.5, stageClassWeights: [Float]? = nil,
        spendPrior: SpendPrior? = nil, customerHidden: Int = 0
    ) {
        self.inputSize = inputSize
        self.hiddenSize = hiddenSize
        self.layers = layers
        self.dropout = dropout
        self.positiveWeight = positiveWeight
        self.clvWeight = clvWeight
        self.clvLoss = clvLoss
        self.stageCount = stageCount
        self.stageWeight = stageWeight
        self.stageClassWeights = stageClassWeights
        self.spendPrior = spendPrior
        self.customerHidden = customerHidden
    }

    /// Width of the vector the heads read: the LSTM's last state, then the dense path's output.
    public var headInputSize: Int { hiddenSize + customerHidden }

    public var heads: LSTMHeadLayout { LSTMHeadLayout(clvLoss: clvLoss, stageCount: stageCount) }
}

/// One mini-batch of customer sequences, batch-major.
public struct SequenceBatch {
    /// [batch, steps, inputSize]; steps at or past a sequence's length are ignored.
    public var features: UnsafePointer<Float>
    /// [batch]; each in 1...steps.
    public var lengths: UnsafePointer<Int32>
    public var batchSize: Int
    public var steps: Int
    /// [batch] 1 = churned in the horizon, 0 = bought again; nil when only predicting.
    public var churnLabels: UnsafePointer<Float>?
    /// [batch] spend in the horizon, the CLV target.
    public var spend: UnsafePointer<Float>?
    /// [batch] lifecycle stage in the horizon; needed only by a model with a stage head.
    public var stages: UnsafePointer<Int32>?

    public init(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, batchSize: Int, steps: Int,
        churnLabels: UnsafePointer<Float>? = nil, spend: UnsafePointer<Float>? = nil,
        stages: UnsafePointer<Int32>? = nil
    ) {
        self.features = features
        self.lengths = lengths
        self.batchSize = batchSize
        self.steps = steps
        self.churnLabels = churnLabels
        self.spend = spend
        self.stages = stages
    }

    /// Calls `body` with a labelled batch over arrays (one customer per entry of `lengths`),
    /// keeping them pinned for the call.
    public static func withLabelled<R>(
        features: [Float], lengths: [Int32], churnLabels: [Float], spend: [Float], stages: [Int32]? = nil, steps: Int,
        _ body: (SequenceBatch) throws -> R
    ) rethrows -> R {
        precondition(churnLabels.count == lengths.count && spend.count == lengths.count, "one label and spend per customer")
        precondition(stages == nil || stages!.count == lengths.count, "one stage per customer")
        precondition(features.count % max(lengths.count * steps, 1) == 0, "features must be [customers, steps, inputs]")
        let stageLabels = stages ?? []
        return try features.withUnsafeBufferPointer { xs in
            try lengths.withUnsafeBufferPointer { ls in
                try churnLabels.withUnsafeBufferPointer { ys in
                    try spend.withUnsafeBufferPointer { ss in
                        try stageLabels.withUnsafeBufferPointer { zs in
                            try body(SequenceBatch(
                                features: xs.baseAddress!, lengths: ls.baseAddress!, batchSize: lengths.count, steps: steps,
                                churnLabels: ys.baseAddress!, spend: ss.baseAddress!,
                                stages: stages == nil ? nil : zs.baseAddress!))
                        }
                    }
                }
            }
        }
    }
}

public struct LSTMLoss: Sendable, Equatable {
    public var total: Float
    public var churn: Float
    public var clv: Float
    /// Weighted stage cross-entropy; 0 without a stage head.
    public var stage: Float
}

/// A stacked LSTM (PyTorch's equations, gate order i, f, g, o, two biases) with a churn logit
/// head, a CLV head (`CLVLoss`) and optionally a stage head on the last valid hidden state.
///
/// Time-major internally ([steps, batch, ·]) so the input projection of all steps is one GEMM
/// and each step's rows are contiguous. Padded steps (t ≥ length) carry h and c unchanged, so the
/// state at the last step equals the state at each sequence's own last step, and in backward
/// their gate gradients are zero: they contribute nothing, as with packed sequences.
public final class LSTMModel: @unchecked Sendable {
    public let configuration: LSTMConfiguration
    public let parameters: ParameterStore

    struct LayerSlices {
        let inputWeight: ParameterSlice   // [4H, in]
        let hiddenWeight: ParameterSlice  // [4H, H]
        let inputBias: ParameterSlice     // [4H]
        let hiddenBias: ParameterSlice    // [4H]
        let inputSize: Int
    }

    let layerSlices: [LayerSlices]
    // Head weights are laid out as one [K, H] matrix (churn row, CLV rows, stage rows) and one
    // [K] bias so every head is one GEMM; their names stay PyTorch's (one nn.Linear per head).
    let headWeight: ParameterSlice
    let headBias: ParameterSlice
    public let heads: LSTMHeadLayout
    /// The dense path: [customerHidden, CustomerInputs.width] and [customerHidden]; nil without it.
    let customerWeight: ParameterSlice?
    let customerBias: ParameterSlice?

    private let workspace: LSTMWorkspace
    /// Which element-wise step kernels training runs: the best this CPU has (AVX-512 or AVX2,
    /// `CTrainingKernels`), or `portable`, the Swift loops, kept as the reference they are
    /// tested against and used where neither instruction set exists.
    public var elementwiseKernel: ElementwiseKernel = .best

    public init(configuration: LSTMConfiguration, seed: UInt64) {
        self.configuration = configuration
        let hidden = configuration.hiddenSize
        var layout = ParameterLayout()
        var layers: [LayerSlices] = []
        for layer in 0..<configuration.layers {
            let inputSize = layer == 0 ? configuration.inputSize : hidden
            layers.append(LayerSlices(
                inputWeight: layout.add("lstm.weight_ih_l\(layer)", shape: [4 * hidden, inputSize]),
                hiddenWeight: layout.add("lstm.weight_hh_l\(layer)", shape: [4 * hidden, hidden]),
                inputBias: layout.add("lstm.bias_ih_l\(layer)", shape: [4 * hidden]),
                hiddenBias: layout.add("lstm.bias_hh_l\(layer)", shape: [4 * hidden]),
                inputSize: inputSize))
        }
        let heads = configuration.heads
        self.heads = heads
        if configuration.customerHidden > 0 {
            let inputs = CustomerInputs.width(featureCount: configuration.inputSize)
            customerWeight = layout.add("customer_dense.weight", shape: [configuration.customerHidden, inputs])
            customerBias = layout.add("customer_dense.bias", shape: [configuration.customerHidden])
        } else {
            customerWeight = nil
            customerBias = nil
        }
        let headInput = configuration.headInputSize
        let churnWeight = layout.add("churn_head.weight", shape: [1, headInput])
        let clvWeight = layout.add("clv_head.weight", shape: [heads.clvWidth, headInput])
        let stageWeight = heads.stageCount > 0 ? layout.add("stage_head.weight", shape: [heads.stageCount, headInput]) : nil
        let churnBias = layout.add("churn_head.bias", shape: [1])
        let clvBias = layout.add("clv_head.bias", shape: [heads.clvWidth])
        let stageBias = heads.stageCount > 0 ? layout.add("stage_head.bias", shape: [heads.stageCount]) : nil
        // The heads run as one [K, H] GEMM and one [K] bias only because each head's rows follow
        // the previous head's in the flat layout: a reordering above must fail here, not
        // silently read one head's weights as another's.
        precondition(clvWeight.offset == churnWeight.offset + churnWeight.count
                     && (stageWeight.map { $0.offset == clvWeight.offset + clvWeight.count } ?? true),
                     "head weights must be adjacent in the layout")
        precondition(clvBias.offset == churnBias.offset + 1 && (stageBias.map { $0.offset == clvBias.offset + clvBias.count } ?? true),
                     "head biases must be adjacent in the layout")
        headWeight = ParameterSlice(name: "heads.weight", shape: [heads.width, headInput], offset: churnWeight.offset)
        headBias = ParameterSlice(name: "heads.bias", shape: [heads.width], offset: churnBias.offset)
        if let weights = configuration.stageClassWeights { precondition(weights.count == heads.stageCount, "one weight per stage") }
        layerSlices = layers
        parameters = ParameterStore(layout: layout)
        workspace = LSTMWorkspace(layers: configuration.layers)

        // PyTorch: every LSTM tensor U(±1/√H); Linear weight and bias U(±1/√fan_in).
        var random = SeededRandom(seed: seed, purpose: .initialisation)
        let bound = 1 / Float(hidden).squareRoot()
        parameters.initialiseUniform(&random) { _ in bound }
        if configuration.clvLoss == .ziln, let prior = configuration.spendPrior {
            let bias = parameters.value(headBias) + heads.clvColumn
            let rate = min(max(prior.purchaseRate, 1e-4), 1 - 1e-4)
            bias[0] = logf(rate / (1 - rate))
            bias[1] = prior.logMean
            // softplus⁻¹(σ) = log(e^σ − 1).
            bias[2] = logf(expm1f(max(prior.logStd, LSTMHeadLayout.minimumSigma)))
        }
    }

    /// Head outputs of the last `forward`, [batch, heads.width] row-major (see `LSTMHeadLayout`).
    public var headOutputs: UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(start: workspace.headOutputs.pointer, count: workspace.batchSize * heads.width)
    }

    /// Churn logits of the last `forward`, [batch].
    public var churnLogits: UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(start: workspace.churnLogits.pointer, count: workspace.batchSize)
    }

    /// The CLV head's outputs of the last `forward`, [batch, heads.clvWidth].
    public var clvPredictions: UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(start: workspace.clvOutputs.pointer, count: workspace.batchSize * heads.clvWidth)
    }

    // MARK: - Forward

    /// Runs the model on `batch`. In training, dropout masks come from `random`.
    public func forward(_ batch: SequenceBatch, training: Bool, random: inout SeededRandom) {
        let hidden = configuration.hiddenSize
        let gatesWidth = 4 * hidden
        let batchSize = batch.batchSize
        let steps = batch.steps
        let rows = steps * batchSize
        let dropping = training && configuration.dropout > 0 && configuration.layers > 1
        workspace.prepare(configuration, batchSize: batchSize, steps: steps, dropout: dropping)

        // Batch-major [b, t, i] → time-major [t, b, i] for layer 0.
        let input = workspace.layerInputs[0].pointer
        let inputSize = configuration.inputSize
        for b in 0..<batchSize {
            for t in 0..<steps {
                (input + (t &* batchSize &+ b) &* inputSize).update(
                    from: batch.features + (b &* steps &+ t) &* inputSize, count: inputSize)
            }
        }

        for layer in 0..<configuration.layers {
            let slices = layerSlices[layer]
            let x = workspace.layerInputs[layer].pointer
            let gates = workspace.gates[layer].pointer
            let cells = workspace.cells[layer].pointer
            let outputs = workspace.hiddens[layer].pointer
            let wIH = parameters.value(slices.inputWeight)
            let wHH = parameters.value(slices.hiddenWeight)
            let bIH = parameters.value(slices.inputBias)
            let bHH = parameters.value(slices.hiddenBias)

            // Input projection of every step at once, then both biases.
            BLAS.gemm(
                transposeB: true, m: rows, n: gatesWidth, k: slices.inputSize,
                a: x, lda: slices.inputSize, b: wIH, ldb: slices.inputSize, c: gates, ldc: gatesWidth)
            for row in 0..<rows {
                let line = gates + row &* gatesWidth
                for column in 0..<gatesWidth { line[column] += bIH[column] + bHH[column] }
            }

            for t in 0..<steps {
                let stepGates = gates + t &* batchSize &* gatesWidth
                let stepCells = cells + t &* batchSize &* hidden
                let stepOutputs = outputs + t &* batchSize &* hidden
                if t > 0 {
                    BLAS.gemm(
                        transposeB: true, m: batchSize, n: gatesWidth, k: hidden,
                        a: stepOutputs - batchSize &* hidden, lda: hidden, b: wHH, ldb: hidden,
                        beta: 1, c: stepGates, ldc: gatesWidth)
                }
                if elementwiseKernel != .portable {
                    clm_lstm_train_forward_cells(
                        elementwiseKernel.rawValue, stepGates, t > 0 ? stepCells - batchSize &* hidden : nil,
                        t > 0 ? stepOutputs - batchSize &* hidden : nil, stepCells,
                        workspace.tanhCells[layer].pointer + t &* batchSize &* hidden, stepOutputs,
                        batch.lengths, Int32(t), Int32(batchSize), Int32(hidden))
                    continue
                }
                for b in 0..<batchSize {
                    let g = stepGates + b &* gatesWidth
                    let c = stepCells + b &* hidden
                    let h = stepOutputs + b &* hidden
                    let active = t < Int(batch.lengths[b])
                    if !active {
                        // Past the end: carry the state (zero before the first step).
                        if t == 0 {
                            c.update(repeating: 0, count: hidden)
                            h.update(repeating: 0, count: hidden)
                        } else {
                            c.update(from: c - batchSize &* hidden, count: hidden)
                            h.update(from: h - batchSize &* hidden, count: hidden)
                        }
                        continue
                    }
                    // Gate rows are [i | f | g | o]: σ over i and f together, tanh over g, σ over o.
                    Kernels.sigmoidInPlace(g, count: 2 &* hidden)
                    Kernels.tanhInPlace(g + 2 &* hidden, count: hidden)
                    Kernels.sigmoidInPlace(g + 3 &* hidden, count: hidden)
                    let previousCells = t > 0 ? UnsafePointer(c - batchSize &* hidden) : UnsafePointer(workspace.zeros.pointer)
                    let inputGate = g, forgetGate = g + hidden, candidate = g + 2 &* hidden, outputGate = g + 3 &* hidden
                    for unit in 0..<hidden {
                        let cell = forgetGate[unit] * previousCells[unit] + inputGate[unit] * candidate[unit]
                        c[unit] = cell
                        h[unit] = outputGate[unit] * Kernels.tanh(cell)
                    }
                }
            }

            if layer + 1 < configuration.layers {
                let next = workspace.layerInputs[layer + 1].pointer
                next.update(from: outputs, count: rows &* hidden)
                if dropping {
                    let mask = workspace.masks[layer].pointer
                    let keep = 1 - configuration.dropout
                    let scale = 1 / keep
                    for index in 0..<rows &* hidden {
                        mask[index] = random.nextUnitFloat() < keep ? scale : 0
                    }
                    Kernels.multiply(next, by: mask, count: rows &* hidden)
                }
            }
        }

        // Heads on the top layer's state at the last step (= each sequence's last valid step).
        let final = workspace.hiddens[configuration.layers - 1].pointer + (steps - 1) &* batchSize &* hidden
        let width = heads.width
        let clvWidth = heads.clvWidth
        let headOutputs = workspace.headOutputs.pointer
        let headInputSize = configuration.headInputSize
        var headInput = UnsafePointer(final)
        if let customerWeight, let customerBias {
            // [h | relu(W·s + b)] per customer: the heads see the state and the customer-level inputs.
            let inputs = CustomerInputs.width(featureCount: inputSize)
            let customerInputs = workspace.customerInputs.pointer
            for b in 0..<batchSize {
                CustomerInputs.compute(
                    sequence: batch.features + b &* steps &* inputSize, length: Int(batch.lengths[b]), steps: steps,
                    featureCount: inputSize, into: customerInputs + b &* inputs)
            }
            let units = configuration.customerHidden
            let dense = workspace.customerHidden.pointer
            BLAS.gemm(
                transposeB: true, m: batchSize, n: units, k: inputs,
                a: customerInputs, lda: inputs, b: parameters.value(customerWeight), ldb: inputs, c: dense, ldc: units)
            let denseBias = parameters.value(customerBias)
            let joined = workspace.headInputs.pointer
            for b in 0..<batchSize {
                let row = joined + b &* headInputSize
                row.update(from: final + b &* hidden, count: hidden)
                let unitsRow = dense + b &* units
                for unit in 0..<units {
                    let value = max(unitsRow[unit] + denseBias[unit], 0)
                    unitsRow[unit] = value
                    row[hidden &+ unit] = value
                }
            }
            headInput = UnsafePointer(joined)
        }
        BLAS.gemm(
            transposeB: true, m: batchSize, n: width, k: headInputSize,
            a: headInput, lda: headInputSize, b: parameters.value(headWeight), ldb: headInputSize, c: headOutputs, ldc: width)
        let bias = parameters.value(headBias)
        for b in 0..<batchSize {
            let row = headOutputs + b &* width
            for column in 0..<width { row[column] += bias[column] }
            workspace.churnLogits.pointer[b] = row[0]
            (workspace.clvOutputs.pointer + b &* clvWidth).update(from: row + 1, count: clvWidth)
        }
    }

    // MARK: - Loss

    /// The training loss of the last `forward`, and d(loss)/d(head outputs) for `backward`:
    ///
    /// - churn: mean BCE-with-logits, with `positiveWeight`;
    /// - CLV, `log_mse`: mean squared error against log1p(spend);
    /// - CLV, `ziln`: mean zero-inflated lognormal negative log-likelihood: BCE of the purchase
    ///   logit against spend > 0, plus, for spenders, −log N(log y; μ, σ) + log y (the lognormal
    ///   density of y, so the value is a true NLL in the data's currency);
    /// - stage: cross-entropy weighted by `stageClassWeights` (Σ w·nll / Σ w, as PyTorch).
    ///
    /// total = churn + λ·CLV + μ·stage.
    public func loss(_ batch: SequenceBatch) -> LSTMLoss {
        guard let labels = batch.churnLabels, let spend = batch.spend else {
            preconditionFailure("loss needs churn labels and spend")
        }
        let batchSize = batch.batchSize
        let width = heads.width
        let p = configuration.positiveWeight
        let lambda = configuration.clvWeight
        let invBatch = 1 / Float(batchSize)
        let outputs = workspace.headOutputs.pointer
        let headGradients = workspace.headGradients.pointer
        var churnLoss: Float = 0
        var clvLoss: Float = 0
        for b in 0..<batchSize {
            let row = outputs + b &* width
            let gradient = headGradients + b &* width
            let z = row[0]
            let y = labels[b]
            // -[p·y·log σ(z) + (1-y)·log(1-σ(z))] with log σ(z) = -softplus(-z).
            churnLoss += p * y * Kernels.softplus(-z) + (1 - y) * Kernels.softplus(z)
            let s = Kernels.sigmoid(z)
            gradient[0] = (p * y * (s - 1) + (1 - y) * s) * invBatch
            let clv = row + heads.clvColumn
            let clvGradient = gradient + heads.clvColumn
            switch heads.clvLoss {
            case .logMSE:
                let error = clv[0] - log1pf(spend[b])
                clvLoss += error * error
                clvGradient[0] = 2 * lambda * error * invBatch
            case .ziln:
                let (value, dLogit, dMu, dSigma) = LSTMModel.zilnLoss(
                    spend: spend[b], purchaseLogit: clv[0], mu: clv[1], sigmaRaw: clv[2])
                clvLoss += value
                clvGradient[0] = lambda * dLogit * invBatch
                clvGradient[1] = lambda * dMu * invBatch
                clvGradient[2] = lambda * dSigma * invBatch
            }
        }
        churnLoss *= invBatch
        clvLoss *= invBatch
        let stageLoss = heads.stageCount > 0 ? self.stageLoss(batch) : 0
        return LSTMLoss(total: churnLoss + lambda * clvLoss + configuration.stageWeight * stageLoss,
                        churn: churnLoss, clv: clvLoss, stage: stageLoss)
    }

    /// One customer's ZILN negative log-likelihood and its derivatives with respect to the
    /// purchase logit, μ and the raw (pre-softplus) σ.
    @inline(__always)
    public static func zilnLoss(spend: Float, purchaseLogit: Float, mu: Float, sigmaRaw: Float)
        -> (value: Float, dLogit: Float, dMu: Float, dSigmaRaw: Float) {
        let positive: Float = spend > 0 ? 1 : 0
        // BCE(positive, logit) = softplus(logit) − positive·logit.
        var value = Kernels.softplus(purchaseLogit) - positive * purchaseLogit
        let dLogit = Kernels.sigmoid(purchaseLogit) - positive
        guard spend > 0 else { return (value, dLogit, 0, 0) }
        let softplusSigma = Kernels.softplus(sigmaRaw)
        let sigma = max(softplusSigma, LSTMHeadLayout.minimumSigma)
        let logSpend = logf(spend)
        let standardised = (logSpend - mu) / sigma
        // −log lognormal(y; μ, σ) = log y + log σ + ½ log 2π + ½ z².
        value += logSpend + logf(sigma) + 0.918_938_5 + 0.5 * standardised * standardised
        let dMu = -standardised / sigma
        // d/dσ = 1/σ − z²/σ; the floor has no gradient, softplus' derivative is the sigmoid.
        let dSigma = (1 - standardised * standardised) / sigma
        let dSigmaRaw = softplusSigma > LSTMHeadLayout.minimumSigma ? dSigma * Kernels.sigmoid(sigmaRaw) : 0
        return (value, dLogit, dMu, dSigmaRaw)
    }

    /// Weighted stage cross-entropy of the last `forward`; writes μ·d(loss)/d(stage logits).
    private func stageLoss(_ batch: SequenceBatch) -> Float {
        guard let stages = batch.stages else { preconditionFailure("a model with a stage head needs stage labels") }
        return weightedCrossEntropy(
            logits: workspace.headOutputs.pointer + heads.stageColumn, gradient: workspace.headGradients.pointer + heads.stageColumn,
            rows: batch.batchSize, classes: heads.stageCount, stride: heads.width, labels: stages,
            weights: configuration.stageClassWeights, scale: configuration.stageWeight)
    }

    // MARK: - Backward

    /// Adds the gradients of the last `loss` to `parameters.gradients`; optionally writes
    /// d(loss)/d(features) in the batch's [batch, steps, input] layout.
    ///
    /// `gradientsReady` is called as soon as a part of the flat gradient buffer is final (the top
    /// layer and the heads first, then each layer below), so a data-parallel caller can start
    /// all-reducing it while the layers below are still running backward.
    /// `parameterGradients` false skips the weight and bias gradients (half of the GEMMs), for a
    /// caller that only wants `featureGradients`.
    public func backward(
        _ batch: SequenceBatch, featureGradients: UnsafeMutablePointer<Float>? = nil,
        parameterGradients: Bool = true, gradientsReady: ((Range<Int>) -> Void)? = nil
    ) {
        let hidden = configuration.hiddenSize
        let gatesWidth = 4 * hidden
        let batchSize = batch.batchSize
        let steps = batch.steps
        let rows = steps * batchSize
        let top = configuration.layers - 1

        // Heads: d(head weights) += dOutᵀ · input, d(input) = dOut · W, input = [final | dense].
        let final = workspace.hiddens[top].pointer + (steps - 1) &* batchSize &* hidden
        let headGradients = workspace.headGradients.pointer
        let width = heads.width
        let headInputSize = configuration.headInputSize
        let headInput = customerWeight == nil ? UnsafePointer(final) : UnsafePointer(workspace.headInputs.pointer)
        if parameterGradients {
            BLAS.gemm(
                transposeA: true, m: width, n: headInputSize, k: batchSize,
                a: headGradients, lda: width, b: headInput, ldb: headInputSize, beta: 1,
                c: parameters.gradient(headWeight), ldc: headInputSize)
            Kernels.accumulateColumnSums(headGradients, rows: batchSize, columns: width, into: parameters.gradient(headBias))
        }
        let outputGradients = workspace.outputGradients.pointer
        outputGradients.update(repeating: 0, count: rows &* hidden)
        let lastStepGradients = outputGradients + (steps - 1) &* batchSize &* hidden
        if let customerWeight, let customerBias {
            let inputGradients = workspace.headInputGradients.pointer
            BLAS.gemm(
                m: batchSize, n: headInputSize, k: width, a: headGradients, lda: width,
                b: parameters.value(headWeight), ldb: headInputSize, c: inputGradients, ldc: headInputSize)
            let units = configuration.customerHidden
            let dense = workspace.customerHidden.pointer
            let denseGradients = workspace.customerHiddenGradients.pointer
            for b in 0..<batchSize {
                lastStepGradients.advanced(by: b &* hidden).update(from: inputGradients + b &* headInputSize, count: hidden)
                for unit in 0..<units {
                    // Through the ReLU: no gradient where the unit was off.
                    denseGradients[b &* units &+ unit] = dense[b &* units &+ unit] > 0 ? inputGradients[b &* headInputSize &+ hidden &+ unit] : 0
                }
            }
            let inputs = CustomerInputs.width(featureCount: configuration.inputSize)
            if parameterGradients {
                BLAS.gemm(
                    transposeA: true, m: units, n: inputs, k: batchSize,
                    a: denseGradients, lda: units, b: workspace.customerInputs.pointer, ldb: inputs, beta: 1,
                    c: parameters.gradient(customerWeight), ldc: inputs)
                Kernels.accumulateColumnSums(denseGradients, rows: batchSize, columns: units, into: parameters.gradient(customerBias))
            }
        } else {
            BLAS.gemm(
                m: batchSize, n: hidden, k: width, a: headGradients, lda: width,
                b: parameters.value(headWeight), ldb: hidden, c: lastStepGradients, ldc: hidden)
        }

        for layer in stride(from: top, through: 0, by: -1) {
            let slices = layerSlices[layer]
            let gates = workspace.gates[layer].pointer
            let cells = workspace.cells[layer].pointer
            let outputs = workspace.hiddens[layer].pointer
            let gateGradients = workspace.gateGradients.pointer
            let hiddenCarry = workspace.hiddenCarry.pointer
            let cellCarry = workspace.cellCarry.pointer
            let wHH = parameters.value(slices.hiddenWeight)
            hiddenCarry.update(repeating: 0, count: batchSize &* hidden)
            cellCarry.update(repeating: 0, count: batchSize &* hidden)

            for t in stride(from: steps - 1, through: 0, by: -1) {
                let stepGates = gates + t &* batchSize &* gatesWidth
                let stepGateGradients = gateGradients + t &* batchSize &* gatesWidth
                let stepCells = cells + t &* batchSize &* hidden
                let stepOutputGradients = outputGradients + t &* batchSize &* hidden
                if elementwiseKernel != .portable {
                    clm_lstm_train_backward_cells(
                        elementwiseKernel.rawValue, stepGates, workspace.tanhCells[layer].pointer + t &* batchSize &* hidden,
                        t > 0 ? stepCells - batchSize &* hidden : nil, stepOutputGradients, hiddenCarry, cellCarry,
                        stepGateGradients, batch.lengths, Int32(t), Int32(batchSize), Int32(hidden))
                } else {
                    portableBackwardCells(
                        stepGates: stepGates, stepCells: stepCells, stepOutputGradients: stepOutputGradients,
                        stepGateGradients: stepGateGradients, hiddenCarry: hiddenCarry, cellCarry: cellCarry,
                        lengths: batch.lengths, t: t, batchSize: batchSize)
                }
                if t > 0 {
                    BLAS.gemm(
                        m: batchSize, n: hidden, k: gatesWidth, a: stepGateGradients, lda: gatesWidth,
                        b: wHH, ldb: hidden, beta: 1, c: hiddenCarry, ldc: hidden)
                }
            }

            // Weight and bias gradients over all steps at once.
            let x = workspace.layerInputs[layer].pointer
            if parameterGradients {
                BLAS.gemm(
                    transposeA: true, m: gatesWidth, n: slices.inputSize, k: rows,
                    a: gateGradients, lda: gatesWidth, b: x, ldb: slices.inputSize, beta: 1,
                    c: parameters.gradient(slices.inputWeight), ldc: slices.inputSize)
                if steps > 1 {
                    BLAS.gemm(
                        transposeA: true, m: gatesWidth, n: hidden, k: rows - batchSize,
                        a: gateGradients + batchSize &* gatesWidth, lda: gatesWidth, b: outputs, ldb: hidden,
                        beta: 1, c: parameters.gradient(slices.hiddenWeight), ldc: hidden)
                }
                // Both biases enter the gates alike, so they share one column sum.
                let biasGradient = workspace.biasGradient.pointer
                biasGradient.update(repeating: 0, count: gatesWidth)
                Kernels.accumulateColumnSums(gateGradients, rows: rows, columns: gatesWidth, into: biasGradient)
                Kernels.axpy(1, biasGradient, parameters.gradient(slices.inputBias), count: gatesWidth)
                Kernels.axpy(1, biasGradient, parameters.gradient(slices.hiddenBias), count: gatesWidth)
            }
            if let gradientsReady {
                // Layers are laid out bottom-up with the heads last, so everything from this
                // layer's first slice to the end of the buffer is now final; report the new part.
                let end = layer == top ? parameters.layout.totalCount : layerSlices[layer + 1].inputWeight.offset
                gradientsReady(slices.inputWeight.offset..<end)
            }

            guard layer > 0 || featureGradients != nil else { continue }
            // d(layer input) = dGates · W_ih; for layer > 0 it is the layer below's output
            // gradient, through the same dropout mask.
            let inputGradients = workspace.inputGradients.pointer
            BLAS.gemm(
                m: rows, n: slices.inputSize, k: gatesWidth, a: gateGradients, lda: gatesWidth,
                b: parameters.value(slices.inputWeight), ldb: slices.inputSize,
                c: inputGradients, ldc: slices.inputSize)
            if layer > 0 {
                outputGradients.update(from: inputGradients, count: rows &* hidden)
                if workspace.dropoutActive {
                    Kernels.multiply(outputGradients, by: workspace.masks[layer - 1].pointer, count: rows &* hidden)
                }
            } else if let featureGradients {
                let inputSize = configuration.inputSize
                for b in 0..<batchSize {
                    for t in 0..<steps {
                        (featureGradients + (b &* steps &+ t) &* inputSize).update(
                            from: inputGradients + (t &* batchSize &+ b) &* inputSize, count: inputSize)
                    }
                }
                if let customerWeight {
                    // d(customer inputs) = d(dense) · W, then back to the steps they summarise.
                    let units = configuration.customerHidden
                    let inputs = CustomerInputs.width(featureCount: inputSize)
                    let summaryGradients = workspace.customerInputGradients.pointer
                    BLAS.gemm(
                        m: batchSize, n: inputs, k: units, a: workspace.customerHiddenGradients.pointer, lda: units,
                        b: parameters.value(customerWeight), ldb: inputs, c: summaryGradients, ldc: inputs)
                    for b in 0..<batchSize {
                        CustomerInputs.accumulateGradient(
                            summaryGradients + b &* inputs, length: Int(batch.lengths[b]), steps: steps, featureCount: inputSize,
                            into: featureGradients + b &* steps &* inputSize)
                    }
                }
            }
        }
    }

    /// The element-wise part of backward at step `t` in Swift: the reference the vector kernels
    /// (`clm_lstm_train_backward_cells`) are tested against.
    private func portableBackwardCells(
        stepGates: UnsafeMutablePointer<Float>, stepCells: UnsafeMutablePointer<Float>,
        stepOutputGradients: UnsafeMutablePointer<Float>, stepGateGradients: UnsafeMutablePointer<Float>,
        hiddenCarry: UnsafeMutablePointer<Float>, cellCarry: UnsafeMutablePointer<Float>,
        lengths: UnsafePointer<Int32>, t: Int, batchSize: Int
    ) {
        let hidden = configuration.hiddenSize, gatesWidth = 4 * hidden
        for b in 0..<batchSize {
            let dh = hiddenCarry + b &* hidden
            let dc = cellCarry + b &* hidden
            let fromAbove = stepOutputGradients + b &* hidden
            for unit in 0..<hidden { dh[unit] += fromAbove[unit] }
            let dGates = stepGateGradients + b &* gatesWidth
            guard t < Int(lengths[b]) else {
                // A carried step passes dh and dc through untouched.
                dGates.update(repeating: 0, count: gatesWidth)
                continue
            }
            let g = stepGates + b &* gatesWidth
            let c = stepCells + b &* hidden
            let previousCells = t > 0 ? UnsafePointer(c - batchSize &* hidden) : UnsafePointer(workspace.zeros.pointer)
            let inputGate = g, forgetGate = g + hidden, candidate = g + 2 &* hidden, outputGate = g + 3 &* hidden
            let dInput = dGates, dForget = dGates + hidden, dCandidate = dGates + 2 &* hidden
            let dOutput = dGates + 3 &* hidden
            for unit in 0..<hidden {
                let i = inputGate[unit], f = forgetGate[unit], cand = candidate[unit], o = outputGate[unit]
                let tanhCell = Kernels.tanh(c[unit])
                let cellGradient = dc[unit] + dh[unit] * o * (1 - tanhCell * tanhCell)
                dInput[unit] = cellGradient * cand * i * (1 - i)
                dForget[unit] = cellGradient * previousCells[unit] * f * (1 - f)
                dCandidate[unit] = cellGradient * i * (1 - cand * cand)
                dOutput[unit] = dh[unit] * tanhCell * o * (1 - o)
                dc[unit] = cellGradient * f
                // Consumed: the recurrent GEMM below adds this step's share back.
                dh[unit] = 0
            }
        }
    }

    /// d(target)/d(features) for the batch of the last `forward` (no loss needed): for each
    /// customer b, `outputGradient(b, outputs, gradient)` writes the target's derivative with
    /// respect to each of the row's `heads.width` head outputs; the features' gradients come back
    /// in the batch's [batch, steps, input] layout (zero past each length). The forward state is
    /// left as it was, so several targets can follow one forward. Parameter gradients are not
    /// touched.
    public func featureGradients(
        _ batch: SequenceBatch, into gradients: UnsafeMutablePointer<Float>,
        outputGradient: (_ customer: Int, _ outputs: UnsafePointer<Float>, _ gradient: UnsafeMutablePointer<Float>) -> Void
    ) {
        let width = heads.width
        let outputs = workspace.headOutputs.pointer, headGradients = workspace.headGradients.pointer
        headGradients.update(repeating: 0, count: batch.batchSize &* width)
        for b in 0..<batch.batchSize { outputGradient(b, outputs + b &* width, headGradients + b &* width) }
        backward(batch, featureGradients: gradients, parameterGradients: false)
    }

    /// Forward, loss and backward of one training batch; gradients are added to, not replaced.
    public func trainingStep(
        _ batch: SequenceBatch, random: inout SeededRandom, gradientsReady: ((Range<Int>) -> Void)? = nil
    ) -> LSTMLoss {
        forward(batch, training: true, random: &random)
        let value = loss(batch)
        backward(batch, gradientsReady: gradientsReady)
        return value
    }
}

/// Buffers of one forward/backward pass, grown to the largest batch seen and then reused.
final class LSTMWorkspace {
    var layerInputs: [Tensor]   // [T, B, in_l]
    var gates: [Tensor]         // [T, B, 4H] activated gates i, f, g, o
    var cells: [Tensor]         // [T, B, H]
    var tanhCells: [Tensor]     // [T, B, H] tanh(c), kept by the vector kernels for backward
    var hiddens: [Tensor]       // [T, B, H]
    var masks: [Tensor]         // [T, B, H] dropout between layer l and l+1
    let headOutputs = Tensor(shape: [1])
    let churnLogits = Tensor(shape: [1])
    let clvOutputs = Tensor(shape: [1])
    let headGradients = Tensor(shape: [1])
    let outputGradients = Tensor(shape: [1])
    let gateGradients = Tensor(shape: [1])
    let inputGradients = Tensor(shape: [1])
    let hiddenCarry = Tensor(shape: [1])
    let cellCarry = Tensor(shape: [1])
    /// The cell state before the first step.
    let zeros = Tensor(shape: [1])
    let biasGradient = Tensor(shape: [1])
    let customerInputs = Tensor(shape: [1])            // [B, CustomerInputs.width]
    let customerHidden = Tensor(shape: [1])            // [B, customerHidden] after ReLU
    let headInputs = Tensor(shape: [1])                // [B, H + customerHidden]
    let headInputGradients = Tensor(shape: [1])
    let customerHiddenGradients = Tensor(shape: [1])
    let customerInputGradients = Tensor(shape: [1])
    var batchSize = 0
    var dropoutActive = false

    init(layers: Int) {
        layerInputs = (0..<layers).map { _ in Tensor(shape: [1]) }
        gates = (0..<layers).map { _ in Tensor(shape: [1]) }
        cells = (0..<layers).map { _ in Tensor(shape: [1]) }
        tanhCells = (0..<layers).map { _ in Tensor(shape: [1]) }
        hiddens = (0..<layers).map { _ in Tensor(shape: [1]) }
        masks = (0..<max(layers - 1, 1)).map { _ in Tensor(shape: [1]) }
    }

    func prepare(_ configuration: LSTMConfiguration, batchSize: Int, steps: Int, dropout: Bool) {
        self.batchSize = batchSize
        dropoutActive = dropout
        let hidden = configuration.hiddenSize
        let widest = max(configuration.inputSize, hidden)
        for layer in 0..<configuration.layers {
            let inputSize = layer == 0 ? configuration.inputSize : hidden
            layerInputs[layer].reshape(steps, batchSize, inputSize)
            gates[layer].reshape(steps, batchSize, 4 * hidden)
            cells[layer].reshape(steps, batchSize, hidden)
            tanhCells[layer].reshape(steps, batchSize, hidden)
            hiddens[layer].reshape(steps, batchSize, hidden)
        }
        // By index: iterating the array itself allocated an iterator box per call in debug builds.
        for index in 0..<masks.count { masks[index].reshape(steps, batchSize, hidden) }
        let heads = configuration.heads
        headOutputs.reshape(batchSize, heads.width)
        churnLogits.reshape(batchSize)
        clvOutputs.reshape(batchSize, heads.clvWidth)
        headGradients.reshape(batchSize, heads.width)
        outputGradients.reshape(steps, batchSize, hidden)
        gateGradients.reshape(steps, batchSize, 4 * hidden)
        inputGradients.reshape(steps, batchSize, widest)
        hiddenCarry.reshape(batchSize, hidden)
        cellCarry.reshape(batchSize, hidden)
        zeros.reshape(hidden)
        biasGradient.reshape(4 * hidden)
        if configuration.customerHidden > 0 {
            let inputs = CustomerInputs.width(featureCount: configuration.inputSize)
            customerInputs.reshape(batchSize, inputs)
            customerHidden.reshape(batchSize, configuration.customerHidden)
            headInputs.reshape(batchSize, configuration.headInputSize)
            headInputGradients.reshape(batchSize, configuration.headInputSize)
            customerHiddenGradients.reshape(batchSize, configuration.customerHidden)
            customerInputGradients.reshape(batchSize, inputs)
        }
    }
}
