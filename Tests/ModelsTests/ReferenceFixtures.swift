import Foundation
import Testing
@testable import Models
import Tensors

/// Tensors written by scripts/make_reference_fixtures.py (float64 NumPy, PyTorch's equations).
struct ReferenceFixture {
    struct Entry: Decodable {
        let shape: [Int]
        let data: [Double]
    }

    let tensors: [String: Entry]

    static func load(_ model: String) throws -> ReferenceFixture {
        let url = try #require(Bundle.module.url(forResource: "reference", withExtension: "json", subdirectory: "Fixtures"))
        let all = try JSONDecoder().decode([String: [String: Entry]].self, from: Data(contentsOf: url))
        return ReferenceFixture(tensors: try #require(all[model], "fixture has no \(model) section"))
    }

    func floats(_ name: String) -> [Float] { tensors[name]!.data.map { Float($0) } }
    func ints(_ name: String) -> [Int32] { tensors[name]!.data.map { Int32($0) } }
    func doubles(_ name: String) -> [Double] { tensors[name]!.data }

    /// Parameter values by name, for `ParameterStore.load`.
    func parameters(of layout: ParameterLayout) -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: layout.slices.map { ($0.name, floats($0.name)) })
    }
}

/// Compares float32 results with float64 references and reports the worst element.
///
/// Tolerance: |actual − expected| ≤ 1e-5 · max(|expected|, scale), with `scale` = 1e-2 of the
/// tensor's largest magnitude. Float32 rounding over these short chains of products is a few
/// ulps (~1e-7 relative); the scale floor keeps gradient entries that are almost exactly zero
/// (down to 4e-7 here, left over from cancellations) from turning that rounding into large
/// relative errors, while still failing any entry that is wrong by 1e-7 of the tensor's size.
func expectClose(
    _ actual: [Float], _ expected: [Double], _ name: String, relative: Double = 1e-5,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(actual.count == expected.count, "\(name): \(actual.count) values, expected \(expected.count)",
            sourceLocation: sourceLocation)
    guard actual.count == expected.count else { return }
    let scale = (expected.map(abs).max() ?? 0) * 1e-2
    var worst = 0.0
    var worstIndex = -1
    for index in expected.indices {
        let error = abs(Double(actual[index]) - expected[index]) / max(abs(expected[index]), scale, 1e-30)
        if error > worst { worst = error; worstIndex = index }
    }
    #expect(worst <= relative,
            "\(name): worst relative error \(worst) at \(worstIndex) (got \(worstIndex >= 0 ? actual[worstIndex] : 0), expected \(worstIndex >= 0 ? expected[worstIndex] : 0))",
            sourceLocation: sourceLocation)
}

@Suite struct ReferenceFixtureTests {
    @Test("the LSTM matches the NumPy reference, for every element-wise kernel this CPU runs", arguments: ElementwiseKernel.available)
    func lstmMatchesTheNumPyReference(kernel: ElementwiseKernel) throws {
        let fixture = try ReferenceFixture.load("lstm")
        let shape = fixture.tensors["x"]!.shape
        let (batchSize, steps, inputSize) = (shape[0], shape[1], shape[2])
        let hidden = fixture.tensors["lstm.weight_hh_l0"]!.shape[1]
        let model = LSTMModel(
            configuration: LSTMConfiguration(
                inputSize: inputSize, hiddenSize: hidden, layers: 2, dropout: 0,
                positiveWeight: fixture.floats("pos_weight")[0], clvWeight: fixture.floats("clv_weight")[0], clvLoss: .logMSE),
            seed: 1)
        model.elementwiseKernel = kernel
        try model.parameters.load(fixture.parameters(of: model.parameters.layout))

        let x = fixture.floats("x")
        let lengths = fixture.ints("lengths")
        let labels = fixture.floats("churn_label")
        let spend = fixture.floats("spend")
        var featureGradients = [Float](repeating: .nan, count: x.count)
        var random = SeededRandom(seed: 0, purpose: .dropout)
        let loss = SequenceBatch.withLabelled(features: x, lengths: lengths, churnLabels: labels, spend: spend, steps: steps) { batch in
            model.parameters.zeroGradients()
            model.forward(batch, training: true, random: &random)
            let loss = model.loss(batch)
            featureGradients.withUnsafeMutableBufferPointer { model.backward(batch, featureGradients: $0.baseAddress!) }
            return loss
        }
        expectClose(Array(model.churnLogits), fixture.doubles("churn_logit"), "churn_logit")
        expectClose(Array(model.clvPredictions), fixture.doubles("clv_pred"), "clv_pred")
        expectClose([loss.total], fixture.doubles("loss"), "loss")
        for slice in model.parameters.layout.slices {
            expectClose(model.parameters.gradientArray(slice.name)!, fixture.doubles("grad." + slice.name), "grad." + slice.name)
        }
        expectClose(featureGradients, fixture.doubles("grad.x"), "grad.x")
    }

    @Test("an LSTM with the customer-input path, ZILN and stage heads matches the NumPy reference: outputs, loss, every gradient",
          arguments: ElementwiseKernel.available)
    func lstmHeadsMatchTheNumPyReference(kernel: ElementwiseKernel) throws {
        let fixture = try ReferenceFixture.load("lstm_heads")
        let shape = fixture.tensors["x"]!.shape
        let (steps, inputSize) = (shape[1], shape[2])
        let hidden = fixture.tensors["lstm.weight_hh_l0"]!.shape[1]
        let stageWeights = fixture.floats("stage_class_weight")
        let model = LSTMModel(
            configuration: LSTMConfiguration(
                inputSize: inputSize, hiddenSize: hidden, layers: 2, dropout: 0,
                positiveWeight: fixture.floats("pos_weight")[0], clvWeight: fixture.floats("clv_weight")[0],
                clvLoss: .ziln, stageCount: stageWeights.count, stageWeight: fixture.floats("stage_weight")[0],
                stageClassWeights: stageWeights, customerHidden: fixture.tensors["customer_dense.weight"]!.shape[0]),
            seed: 1)
        model.elementwiseKernel = kernel
        try model.parameters.load(fixture.parameters(of: model.parameters.layout))

        let x = fixture.floats("x")
        var featureGradients = [Float](repeating: .nan, count: x.count)
        var random = SeededRandom(seed: 0, purpose: .dropout)
        let loss = SequenceBatch.withLabelled(
            features: x, lengths: fixture.ints("lengths"), churnLabels: fixture.floats("churn_label"),
            spend: fixture.floats("spend"), stages: fixture.ints("stage"), steps: steps
        ) { batch in
            model.parameters.zeroGradients()
            model.forward(batch, training: true, random: &random)
            let loss = model.loss(batch)
            featureGradients.withUnsafeMutableBufferPointer { model.backward(batch, featureGradients: $0.baseAddress!) }
            return loss
        }
        expectClose(Array(model.headOutputs), fixture.doubles("head_outputs"), "head_outputs")
        let outputs = Array(model.headOutputs), width = model.heads.width
        let spend = fixture.floats("spend")
        let nll = spend.indices.map { b in
            LSTMModel.zilnLoss(spend: spend[b], purchaseLogit: outputs[b * width + 1], mu: outputs[b * width + 2],
                               sigmaRaw: outputs[b * width + 3]).value
        }
        expectClose(nll, fixture.doubles("ziln_nll"), "ziln_nll")
        expectClose([loss.total], fixture.doubles("loss"), "loss")
        for slice in model.parameters.layout.slices {
            // Stage gradients are softmax probabilities minus one-hot labels, summed over the
            // batch in float32: their cancellation leaves ~1.5e-5 relative, twice the others'.
            expectClose(model.parameters.gradientArray(slice.name)!, fixture.doubles("grad." + slice.name), "grad." + slice.name,
                        relative: slice.name.hasPrefix("stage_head") ? 3e-5 : 1e-5)
        }
        expectClose(featureGradients, fixture.doubles("grad.x"), "grad.x")
    }

    @Test func graphSAGEMatchesTheNumPyReference() throws {
        let fixture = try ReferenceFixture.load("sage")
        let inputSize = fixture.tensors["x"]!.shape[1]
        let hidden = fixture.tensors["convs.0.lin_l.weight"]!.shape[0]
        let classes = fixture.tensors["convs.1.lin_l.weight"]!.shape[0]
        let model = GraphSAGEModel(
            configuration: GraphSAGEConfiguration(
                inputSize: inputSize, hiddenSize: hidden, classes: classes, layers: 2, dropout: 0,
                classWeights: fixture.floats("class_weight")),
            seed: 1)
        try model.parameters.load(fixture.parameters(of: model.parameters.layout))
        let blocks = sageBlocks(fixture)
        let x = fixture.floats("x")
        let labels = fixture.ints("labels")
        var featureGradients = [Float](repeating: .nan, count: x.count)
        var random = SeededRandom(seed: 0, purpose: .dropout)
        model.parameters.zeroGradients()
        let loss = x.withUnsafeBufferPointer { xs in
            labels.withUnsafeBufferPointer { ls in
                model.forward(features: xs.baseAddress!, blocks: blocks, training: false, random: &random)
                return model.loss(labels: ls.baseAddress!)
            }
        }
        expectClose(Array(model.logits), fixture.doubles("logits"), "logits")
        featureGradients.withUnsafeMutableBufferPointer { model.backward(blocks: blocks, featureGradients: $0.baseAddress!) }
        expectClose([loss], fixture.doubles("loss"), "loss")
        for slice in model.parameters.layout.slices {
            expectClose(model.parameters.gradientArray(slice.name)!, fixture.doubles("grad." + slice.name), "grad." + slice.name)
        }
        expectClose(featureGradients, fixture.doubles("grad.x"), "grad.x")
    }
}

func sageBlocks(_ fixture: ReferenceFixture) -> [SampledBlock] {
    let sources0 = fixture.tensors["x"]!.shape[0]
    let destinations0 = Int(fixture.ints("block0.num_dst")[0])
    let destinations1 = Int(fixture.ints("block1.num_dst")[0])
    return [
        SampledBlock(sourceCount: sources0, destinationCount: destinations0,
                     offsets: fixture.ints("block0.offsets"), neighbours: fixture.ints("block0.indices")),
        SampledBlock(sourceCount: destinations0, destinationCount: destinations1,
                     offsets: fixture.ints("block1.offsets"), neighbours: fixture.ints("block1.indices")),
    ]
}
