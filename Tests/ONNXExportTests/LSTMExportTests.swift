import Foundation
import Models
@testable import ONNXExport
import Scoring
import ScoringTestSupport
import SwiftProtobuf
import Testing

/// The exported graph read back as ONNX Runtime reads it: the numbers themselves are checked
/// against `clm-score batch` by onnxruntime in scripts/test-serving.sh.
@Suite("ONNX export")
struct LSTMExportTests {
    static let layouts: [(CLVLoss, Int, Int)] = [(.logMSE, 0, 0), (.ziln, 4, 0), (.ziln, 4, 5)]

    func exported(_ fixture: ScoringFixture, clvLoss: CLVLoss, stages: Int, customerUnits: Int) throws -> (ScoringModel, Onnx_ModelProto, Data) {
        let heads = fixture.architecture(clvLoss: clvLoss, stageCount: stages, customerHidden: customerUnits)
        let checkpoint = try fixture.saveCheckpoint(step: 2, seed: 21, heads: heads)
        let model = try ScoringModel.load(directory: checkpoint)
        let bytes = try LSTMONNXExport.serializedModel(model)
        return (model, try Onnx_ModelProto(serializedBytes: bytes), bytes)
    }

    @Test("inputs, outputs, opset and metadata describe the model", arguments: layouts)
    func contract(clvLoss: CLVLoss, stages: Int, customerUnits: Int) throws {
        let fixture = try ScoringFixture(customers: 40)
        let (model, onnx, _) = try exported(fixture, clvLoss: clvLoss, stages: stages, customerUnits: customerUnits)
        #expect(onnx.irVersion == 8)
        #expect(onnx.opsetImport.map(\.version) == [17])
        let graph = onnx.graph
        #expect(graph.input.map(\.name) == ["features", "length"])
        let featureDims = graph.input[0].type.tensorType.shape.dim
        #expect(featureDims.count == 3)
        #expect(featureDims[0].dimParam == "customers")
        #expect(featureDims[1].dimValue == Int64(fixture.dataset.historyLength))
        #expect(featureDims[2].dimValue == Int64(fixture.dataset.featureCount))
        let expectedOutputs = ["churn_probability", "expected_spend"] + (stages > 0 ? ["stage_probabilities"] : [])
        #expect(graph.output.map(\.name) == expectedOutputs)
        let metadata = Dictionary(uniqueKeysWithValues: onnx.metadataProps.map { ($0.key, $0.value) })
        #expect(metadata["feature_names"] == model.dataset.featureNames.joined(separator: ","))
        #expect(metadata["stage_names"] == (stages > 0 ? model.dataset.stageNames.joined(separator: ",") : ""))
        #expect(metadata["history_periods"] == String(fixture.dataset.historyLength))
        #expect(metadata["clv_loss"] == clvLoss.rawValue)
        #expect(metadata["run"] == "test" && metadata["step"] == "2")
    }

    @Test("every node reads only values defined before it, and every output is produced once", arguments: layouts)
    func wellFormed(clvLoss: CLVLoss, stages: Int, customerUnits: Int) throws {
        let fixture = try ScoringFixture(customers: 40)
        let (_, onnx, _) = try exported(fixture, clvLoss: clvLoss, stages: stages, customerUnits: customerUnits)
        let graph = onnx.graph
        var defined = Set(graph.input.map(\.name)).union(graph.initializer.map(\.name))
        #expect(defined.count == graph.input.count + graph.initializer.count, "an initializer shadows an input or another initializer")
        for node in graph.node {
            for input in node.input where !input.isEmpty {
                #expect(defined.contains(input), "\(node.name) (\(node.opType)) reads \(input) before it is defined")
            }
            for output in node.output {
                #expect(!defined.contains(output), "\(output) is produced twice")
                defined.insert(output)
            }
        }
        for output in graph.output {
            #expect(defined.contains(output.name), "graph output \(output.name) is never produced")
        }
        #expect(Set(graph.node.map(\.name)).count == graph.node.count)
        #expect(graph.node.filter { $0.opType == "LSTM" }.count == ScoringFixture.layers)
    }

    @Test("LSTM weights are in ONNX's gate order (input, output, forget, cell) with both biases")
    func gateOrder() throws {
        let fixture = try ScoringFixture(customers: 40)
        let (model, onnx, _) = try exported(fixture, clvLoss: .ziln, stages: 4, customerUnits: 5)
        let hidden = ScoringFixture.hidden
        func floats(_ name: String) throws -> [Float] {
            let tensor = try #require(onnx.graph.initializer.first { $0.name == name })
            return tensor.rawData.withUnsafeBytes { raw in
                (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
            }
        }
        for layer in 0..<ScoringFixture.layers {
            let columns = layer == 0 ? fixture.dataset.featureCount : hidden
            let pytorch = model.weights["lstm.weight_ih_l\(layer)"]!
            let onnxW = try floats("lstm_W_l\(layer)")
            // PyTorch blocks: 0 input, 1 forget, 2 cell, 3 output.
            for (onnxBlock, pytorchBlock) in [(0, 0), (1, 3), (2, 1), (3, 2)] {
                let block = hidden * columns
                #expect(Array(onnxW[(onnxBlock * block)..<((onnxBlock + 1) * block)]) == Array(pytorch[(pytorchBlock * block)..<((pytorchBlock + 1) * block)]),
                        "layer \(layer): ONNX block \(onnxBlock) should be PyTorch block \(pytorchBlock)")
            }
            let bias = try floats("lstm_B_l\(layer)")
            #expect(bias.count == 8 * hidden)
            let hiddenBias = model.weights["lstm.bias_hh_l\(layer)"]!
            // Rb's forget block (ONNX block 2 of the second half) is PyTorch's block 1.
            #expect(Array(bias[(4 * hidden + 2 * hidden)..<(4 * hidden + 3 * hidden)]) == Array(hiddenBias[hidden..<(2 * hidden)]))
        }
    }

    @Test("the same checkpoint exports to the same bytes")
    func deterministic() throws {
        let fixture = try ScoringFixture(customers: 40)
        let (model, _, bytes) = try exported(fixture, clvLoss: .ziln, stages: 4, customerUnits: 5)
        #expect(try LSTMONNXExport.serializedModel(model) == bytes)
    }
}
