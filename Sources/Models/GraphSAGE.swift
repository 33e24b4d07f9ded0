import Foundation
import Tensors

public struct GraphSAGEConfiguration: Sendable, Equatable, Codable {
    public var inputSize: Int
    public var hiddenSize: Int
    public var classes: Int
    public var layers: Int
    public var dropout: Float
    /// Weight of each class in the cross-entropy (PyTorch's `weight`); nil weighs all alike.
    public var classWeights: [Float]?

    public init(
        inputSize: Int, hiddenSize: Int = 64, classes: Int, layers: Int = 2, dropout: Float = 0.2,
        classWeights: [Float]? = nil
    ) {
        self.inputSize = inputSize
        self.hiddenSize = hiddenSize
        self.classes = classes
        self.layers = layers
        self.dropout = dropout
        self.classWeights = classWeights
    }
}

/// GraphSAGE with the mean aggregator on sampled mini-batches, hand-written backward.
///
/// Layer k: `out_i = lin_l(mean_{j ∈ N(i)} h_j) + lin_r(h_i)`, ReLU and dropout between layers,
/// softmax cross-entropy on the last layer's outputs for the batch's (labelled) destinations.
public final class GraphSAGEModel: @unchecked Sendable {
    public let configuration: GraphSAGEConfiguration
    public let parameters: ParameterStore

    struct LayerSlices {
        let neighbourWeight: ParameterSlice  // lin_l.weight [out, in]
        let neighbourBias: ParameterSlice    // lin_l.bias [out]
        let selfWeight: ParameterSlice       // lin_r.weight [out, in]
        let inputSize: Int
        let outputSize: Int
    }

    let layerSlices: [LayerSlices]
    private let workspace: SAGEWorkspace

    public init(configuration: GraphSAGEConfiguration, seed: UInt64) {
        precondition(configuration.layers >= 1)
        if let weights = configuration.classWeights { precondition(weights.count == configuration.classes) }
        self.configuration = configuration
        var layout = ParameterLayout()
        var slices: [LayerSlices] = []
        for layer in 0..<configuration.layers {
            let inputSize = layer == 0 ? configuration.inputSize : configuration.hiddenSize
            let outputSize = layer == configuration.layers - 1 ? configuration.classes : configuration.hiddenSize
            slices.append(LayerSlices(
                neighbourWeight: layout.add("convs.\(layer).lin_l.weight", shape: [outputSize, inputSize]),
                neighbourBias: layout.add("convs.\(layer).lin_l.bias", shape: [outputSize]),
                selfWeight: layout.add("convs.\(layer).lin_r.weight", shape: [outputSize, inputSize]),
                inputSize: inputSize, outputSize: outputSize))
        }
        layerSlices = slices
        parameters = ParameterStore(layout: layout)
        workspace = SAGEWorkspace(layers: configuration.layers)
        // PyTorch Linear's default: U(±1/√fan_in) for weight and bias.
        var random = SeededRandom(seed: seed, purpose: .initialisation)
        parameters.initialiseUniform(&random) { slice in
            let fanIn = slices.first { $0.neighbourWeight == slice || $0.neighbourBias == slice || $0.selfWeight == slice }!.inputSize
            return 1 / Float(fanIn).squareRoot()
        }
    }

    /// Logits [destinations of the last block, classes] of the last `forward`.
    public var logits: UnsafeBufferPointer<Float> {
        let last = workspace.outputs[configuration.layers - 1]
        return UnsafeBufferPointer(start: last.pointer, count: last.count)
    }

    /// Class probabilities of the last `forward`, row-major [destinations, classes].
    public func probabilities() -> [Float] {
        let classes = configuration.classes
        var result = Array(logits)
        for row in 0..<result.count / classes {
            _ = result.withUnsafeMutableBufferPointer { softmaxRow($0.baseAddress! + row * classes, classes) }
        }
        return result
    }

    // MARK: - Forward

    /// Runs the layers over `blocks` (one per layer, outermost hop first). `features` holds
    /// [blocks[0].sourceCount, inputSize].
    public func forward(
        features: UnsafePointer<Float>, blocks: [SampledBlock], training: Bool, random: inout SeededRandom
    ) {
        precondition(blocks.count == configuration.layers, "one block per layer")
        let dropping = training && configuration.dropout > 0
        workspace.prepare(configuration, blocks: blocks, slices: layerSlices)
        var input = features
        for layer in 0..<blocks.count {
            let block = blocks[layer]
            let slices = layerSlices[layer]
            if layer > 0 {
                precondition(block.sourceCount == blocks[layer - 1].destinationCount,
                             "block \(layer) has \(block.sourceCount) sources, the layer below produced \(blocks[layer - 1].destinationCount)")
            }
            let aggregate = workspace.aggregates[layer].pointer
            meanOfNeighbours(block, input: input, width: slices.inputSize, into: aggregate)
            let output = workspace.outputs[layer].pointer
            let destinations = block.destinationCount
            BLAS.gemm(
                transposeB: true, m: destinations, n: slices.outputSize, k: slices.inputSize,
                a: aggregate, lda: slices.inputSize, b: parameters.value(slices.neighbourWeight),
                ldb: slices.inputSize, c: output, ldc: slices.outputSize)
            BLAS.gemm(
                transposeB: true, m: destinations, n: slices.outputSize, k: slices.inputSize,
                a: input, lda: slices.inputSize, b: parameters.value(slices.selfWeight),
                ldb: slices.inputSize, beta: 1, c: output, ldc: slices.outputSize)
            Kernels.addRowBias(output, rows: destinations, columns: slices.outputSize,
                               bias: parameters.value(slices.neighbourBias))
            if layer + 1 < configuration.layers {
                let count = destinations * slices.outputSize
                Kernels.reluInPlace(output, count: count)
                let next = workspace.activations[layer].pointer
                next.update(from: output, count: count)
                if dropping {
                    let mask = workspace.masks[layer].pointer
                    let keep = 1 - configuration.dropout
                    for index in 0..<count { mask[index] = random.nextUnitFloat() < keep ? 1 / keep : 0 }
                    Kernels.multiply(next, by: mask, count: count)
                }
                workspace.dropoutActive[layer] = dropping
                input = UnsafePointer(next)
            }
        }
        // Filled in place: building a new array here was an allocation every step.
        workspace.layerInputs[0] = features
        for layer in 1..<configuration.layers {
            workspace.layerInputs[layer] = UnsafePointer(workspace.activations[layer - 1].pointer)
        }
    }

    private func meanOfNeighbours(
        _ block: SampledBlock, input: UnsafePointer<Float>, width: Int, into aggregate: UnsafeMutablePointer<Float>
    ) {
        block.offsets.withUnsafeBufferPointer { offsets in
            block.neighbours.withUnsafeBufferPointer { neighbours in
                for node in 0..<block.destinationCount {
                    let row = aggregate + node &* width
                    row.update(repeating: 0, count: width)
                    let start = Int(offsets[node])
                    let end = Int(offsets[node &+ 1])
                    guard end > start else { continue }
                    for edge in start..<end {
                        let source = input + Int(neighbours[edge]) &* width
                        for column in 0..<width { row[column] += source[column] }
                    }
                    let scale = 1 / Float(end - start)
                    for column in 0..<width { row[column] *= scale }
                }
            }
        }
    }

    // MARK: - Loss

    /// Weighted mean cross-entropy over the last block's destinations (PyTorch's definition:
    /// Σ w[y]·nll / Σ w[y]); leaves d(loss)/d(logits) for `backward`.
    public func loss(labels: UnsafePointer<Int32>) -> Float {
        let classes = configuration.classes
        let lastLayer = configuration.layers - 1
        let rows = workspace.outputs[lastLayer].count / classes
        return weightedCrossEntropy(
            logits: workspace.outputs[lastLayer].pointer, gradient: workspace.outputGradients[lastLayer].pointer,
            rows: rows, classes: classes, stride: classes, labels: labels, weights: configuration.classWeights)
    }

    // MARK: - Backward

    /// Adds parameter gradients of the last `loss`; optionally writes d(loss)/d(features)
    /// [blocks[0].sourceCount, inputSize].
    public func backward(blocks: [SampledBlock], featureGradients: UnsafeMutablePointer<Float>? = nil) {
        for layer in stride(from: configuration.layers - 1, through: 0, by: -1) {
            let slices = layerSlices[layer]
            let block = blocks[layer]
            let destinations = block.destinationCount
            let outputGradient = workspace.outputGradients[layer].pointer
            let input = workspace.layerInputs[layer]
            let aggregate = workspace.aggregates[layer].pointer
            BLAS.gemm(
                transposeA: true, m: slices.outputSize, n: slices.inputSize, k: destinations,
                a: outputGradient, lda: slices.outputSize, b: aggregate, ldb: slices.inputSize, beta: 1,
                c: parameters.gradient(slices.neighbourWeight), ldc: slices.inputSize)
            BLAS.gemm(
                transposeA: true, m: slices.outputSize, n: slices.inputSize, k: destinations,
                a: outputGradient, lda: slices.outputSize, b: input, ldb: slices.inputSize, beta: 1,
                c: parameters.gradient(slices.selfWeight), ldc: slices.inputSize)
            Kernels.accumulateColumnSums(outputGradient, rows: destinations, columns: slices.outputSize,
                                         into: parameters.gradient(slices.neighbourBias))

            guard layer > 0 || featureGradients != nil else { continue }
            let inputGradient = layer > 0 ? workspace.outputGradients[layer - 1].pointer : featureGradients!
            let width = slices.inputSize
            inputGradient.update(repeating: 0, count: block.sourceCount * width)
            // Self term: the destinations are the first rows of the input.
            BLAS.gemm(
                m: destinations, n: width, k: slices.outputSize, a: outputGradient, lda: slices.outputSize,
                b: parameters.value(slices.selfWeight), ldb: width, c: inputGradient, ldc: width)
            // Neighbour term: d(mean) = dOut · W_l, shared equally by the sampled neighbours.
            let aggregateGradient = workspace.aggregateGradients[layer].pointer
            BLAS.gemm(
                m: destinations, n: width, k: slices.outputSize, a: outputGradient, lda: slices.outputSize,
                b: parameters.value(slices.neighbourWeight), ldb: width, c: aggregateGradient, ldc: width)
            block.offsets.withUnsafeBufferPointer { offsets in
                block.neighbours.withUnsafeBufferPointer { neighbours in
                    for node in 0..<destinations {
                        let start = Int(offsets[node])
                        let end = Int(offsets[node &+ 1])
                        guard end > start else { continue }
                        let scale = 1 / Float(end - start)
                        let share = aggregateGradient + node &* width
                        for edge in start..<end {
                            let target = inputGradient + Int(neighbours[edge]) &* width
                            for column in 0..<width { target[column] += scale * share[column] }
                        }
                    }
                }
            }
            if layer > 0 {
                let count = block.sourceCount * width
                if workspace.dropoutActive[layer - 1] {
                    Kernels.multiply(inputGradient, by: workspace.masks[layer - 1].pointer, count: count)
                }
                Kernels.reluBackward(inputGradient, output: workspace.outputs[layer - 1].pointer, count: count)
            }
        }
    }

    /// Forward, loss and backward of one batch; gradients are added to, not replaced.
    public func trainingStep(
        features: UnsafePointer<Float>, blocks: [SampledBlock], labels: UnsafePointer<Int32>,
        random: inout SeededRandom
    ) -> Float {
        forward(features: features, blocks: blocks, training: true, random: &random)
        let value = loss(labels: labels)
        backward(blocks: blocks)
        return value
    }
}

/// Weighted mean softmax cross-entropy of `rows` rows of logits, PyTorch's definition
/// (Σ w[y]·nll / Σ w[y], all weights 1 when `weights` is nil), and `scale` times its gradient
/// with respect to the logits, written into `gradient`. Row r's logits start at r·`stride` in
/// both buffers, so the classes can be a slice of a wider row.
func weightedCrossEntropy(
    logits: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>, rows: Int, classes: Int, stride: Int,
    labels: UnsafePointer<Int32>, weights: [Float]?, scale: Float = 1
) -> Float {
    var weightSum: Float = 0
    var total: Float = 0
    for row in 0..<rows {
        let label = Int(labels[row])
        precondition(label >= 0 && label < classes, "label \(label) of row \(row) is outside 0..<\(classes)")
        let weight = weights?[label] ?? 1
        let z = logits + row &* stride
        let g = gradient + row &* stride
        g.update(from: z, count: classes)
        let logSum = softmaxRow(g, classes)
        total += weight * (logSum - z[label])
        g[label] -= 1
        for column in 0..<classes { g[column] *= weight }
        weightSum += weight
    }
    let normaliser = weightSum > 0 ? 1 / weightSum : 0
    for row in 0..<rows {
        let g = gradient + row &* stride
        for column in 0..<classes { g[column] *= scale * normaliser }
    }
    return total * normaliser
}

/// Replaces a row of logits by its softmax; returns log Σ exp (for the cross-entropy).
@discardableResult
func softmaxRow(_ row: UnsafeMutablePointer<Float>, _ count: Int) -> Float {
    var largest = row[0]
    for index in 1..<count { largest = max(largest, row[index]) }
    var sum: Float = 0
    for index in 0..<count {
        row[index] = expf(row[index] - largest)
        sum += row[index]
    }
    for index in 0..<count { row[index] /= sum }
    return largest + logf(sum)
}

final class SAGEWorkspace {
    var aggregates: [Tensor]          // [D_k, in_k]
    var outputs: [Tensor]             // [D_k, out_k] (after ReLU below the last layer)
    var activations: [Tensor]         // [D_k, out_k] input of layer k+1 (after dropout)
    var masks: [Tensor]
    var outputGradients: [Tensor]     // [D_k, out_k]; below the top also d(input of k+1)
    var aggregateGradients: [Tensor]
    var dropoutActive: [Bool]
    /// The input each layer read in the last forward (for backward).
    var layerInputs: [UnsafePointer<Float>]

    init(layers: Int) {
        func make() -> [Tensor] { (0..<layers).map { _ in Tensor(shape: [1]) } }
        aggregates = make()
        outputs = make()
        activations = make()
        masks = make()
        outputGradients = make()
        aggregateGradients = make()
        dropoutActive = [Bool](repeating: false, count: layers)
        layerInputs = aggregates.map { UnsafePointer($0.pointer) }
    }

    func prepare(_ configuration: GraphSAGEConfiguration, blocks: [SampledBlock], slices: [GraphSAGEModel.LayerSlices]) {
        for layer in 0..<blocks.count {
            let block = blocks[layer]
            aggregates[layer].reshape(block.destinationCount, slices[layer].inputSize)
            aggregateGradients[layer].reshape(block.destinationCount, slices[layer].inputSize)
            outputs[layer].reshape(block.destinationCount, slices[layer].outputSize)
            activations[layer].reshape(block.destinationCount, slices[layer].outputSize)
            masks[layer].reshape(block.destinationCount, slices[layer].outputSize)
            outputGradients[layer].reshape(block.destinationCount, slices[layer].outputSize)
        }
    }
}
