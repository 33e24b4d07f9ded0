import Foundation
import Models
import Scoring
import SwiftProtobuf

/// The LSTM scoring checkpoint as an ONNX model, for scoring stacks that run ONNX Runtime
/// rather than Swift or PyTorch.
///
/// Input contract: `features` [customers, T, F] holds each customer's per-period features as
/// the importer computes them, not normalised (the graph applies the dataset's normalisation),
/// the first `length` periods valid and the rest ignored; `length` [customers] int32 in 1...T.
/// Outputs are what `clm-score batch` prints: churn probability, expected spend over the
/// horizon and, with a stage head, the stage probabilities in the dataset's stage order.
public enum LSTMONNXExport {
    /// Opset 17 is the newest that every ONNX Runtime of the last three years reads; IR version
    /// 8 is the one that opset belongs to.
    public static let opsetVersion: Int64 = 17
    public static let irVersion: Int64 = 8

    /// Bumped when the inputs, outputs or metadata change meaning; readers can check it.
    public static let exportVersion = "1"

    public static func serializedModel(_ scoring: ScoringModel) throws -> Data {
        try model(scoring).serializedBytes()
    }

    static func model(_ scoring: ScoringModel) -> Onnx_ModelProto {
        var builder = GraphBuilder()
        let configuration = scoring.configuration, weights = scoring.weights
        let steps = scoring.historyLength, width = scoring.featureCount, hidden = configuration.hiddenSize
        let heads = configuration.heads
        for name in ["features", "length", "churn_probability", "expected_spend", "stage_probabilities"] { builder.reserve(name) }

        // Normalised as the importer does, so callers pass the features they can compute.
        let mean = builder.constant("normalisation_mean", scoring.dataset.normalisation.mean.map(Float.init), shape: [width])
        let std = builder.constant("normalisation_std", scoring.dataset.normalisation.std.map(Float.init), shape: [width])
        let normalised = builder.apply("Div", builder.apply("Sub", "features", mean), std)

        // ONNX's LSTM reads [T, customers, F] and stops each sequence at its `sequence_lens`,
        // which is exactly the Swift model carrying its state unchanged through the padding.
        var sequence = builder.apply("Transpose", normalised, attributes: [.ints("perm", [1, 0, 2])])
        let squeezeSecond = builder.constant("axis_1", int64: [1], shape: [1])
        let squeezeFirst = builder.constant("axis_0", int64: [0], shape: [1])
        var lastHidden = ""
        for layer in 0..<configuration.layers {
            let inputs = layer == 0 ? width : hidden
            let w = builder.constant("lstm_W_l\(layer)", onnxGateOrder(weights["lstm.weight_ih_l\(layer)"]!, hidden: hidden, columns: inputs), shape: [1, 4 * hidden, inputs])
            let r = builder.constant("lstm_R_l\(layer)", onnxGateOrder(weights["lstm.weight_hh_l\(layer)"]!, hidden: hidden, columns: hidden), shape: [1, 4 * hidden, hidden])
            let b = builder.constant(
                "lstm_B_l\(layer)",
                onnxGateOrder(weights["lstm.bias_ih_l\(layer)"]!, hidden: hidden, columns: 1)
                    + onnxGateOrder(weights["lstm.bias_hh_l\(layer)"]!, hidden: hidden, columns: 1),
                shape: [1, 8 * hidden])
            let outputs = builder.node("LSTM", [sequence, w, r, b, "length"], outputCount: 2, attributes: [.int("hidden_size", hidden)])
            // Y is [T, 1, customers, H]: the next layer's input without the direction axis.
            sequence = builder.apply("Squeeze", outputs[0], squeezeSecond)
            lastHidden = builder.apply("Squeeze", outputs[1], squeezeFirst)
        }

        var joined = lastHidden
        if configuration.customerHidden > 0 {
            let summary = customerSummary(&builder, normalised: normalised, steps: steps, axis1: squeezeSecond)
            let dense = linear(&builder, summary, weights, "customer_dense", rows: 0..<configuration.customerHidden, columns: 2 * width + 1)
            joined = builder.apply("Concat", lastHidden, builder.apply("Relu", dense), attributes: [.int("axis", 1)])
        }
        let headInputs = configuration.headInputSize

        let churnLogit = linear(&builder, joined, weights, "churn_head", rows: 0..<1, columns: headInputs)
        builder.apply("Squeeze", builder.apply("Sigmoid", churnLogit), squeezeSecond, output: "churn_probability")

        let thirty = builder.constant("maximum_log_spend", [LSTMHeadLayout.maximumLogSpend], shape: [1])
        let spend: String
        switch heads.clvLoss {
        case .logMSE:
            let logSpend = linear(&builder, joined, weights, "clv_head", rows: 0..<1, columns: headInputs)
            let one = builder.constant("one", [1], shape: [1]), zero = builder.constant("zero", [0], shape: [1])
            let expm1 = builder.apply("Sub", builder.apply("Exp", builder.apply("Min", logSpend, thirty)), one)
            spend = builder.apply("Max", expm1, zero)
        case .ziln:
            // P(any purchase) · exp(μ + σ²/2), σ = softplus(raw) floored, the exponent capped.
            let purchaseLogit = linear(&builder, joined, weights, "clv_head", rows: 0..<1, columns: headInputs)
            let logMean = linear(&builder, joined, weights, "clv_head", rows: 1..<2, columns: headInputs)
            let rawSigma = linear(&builder, joined, weights, "clv_head", rows: 2..<3, columns: headInputs)
            let floor = builder.constant("minimum_sigma", [LSTMHeadLayout.minimumSigma], shape: [1])
            let half = builder.constant("half", [0.5], shape: [1])
            let sigma = builder.apply("Max", builder.apply("Softplus", rawSigma), floor)
            let variance = builder.apply("Mul", builder.apply("Mul", half, sigma), sigma)
            let exponent = builder.apply("Min", builder.apply("Add", logMean, variance), thirty)
            spend = builder.apply("Mul", builder.apply("Sigmoid", purchaseLogit), builder.apply("Exp", exponent))
        }
        builder.apply("Squeeze", spend, squeezeSecond, output: "expected_spend")

        if heads.stageCount > 0 {
            let logits = linear(&builder, joined, weights, "stage_head", rows: 0..<heads.stageCount, columns: headInputs)
            builder.apply("Softmax", logits, output: "stage_probabilities", attributes: [.int("axis", 1)])
        }

        var graph = Onnx_GraphProto()
        graph.name = "clm_lstm"
        graph.node = builder.nodes
        graph.initializer = builder.initializers
        let featureList = scoring.dataset.featureNames.joined(separator: ", ")
        graph.input = [
            .tensor("features", .float, [.named("customers"), .size(steps), .size(width)],
                    documentation: "Per-period features (\(featureList)), as the importer computes them and not normalised; periods at or past `length` are ignored."),
            .tensor("length", .int32, [.named("customers")], documentation: "Valid leading periods of each customer, 1...\(steps)."),
        ]
        graph.output = [
            .tensor("churn_probability", .float, [.named("customers")], documentation: "Probability of no purchase in the horizon."),
            .tensor("expected_spend", .float, [.named("customers")], documentation: "Expected spend over the horizon, in the export's currency units."),
        ]
        if heads.stageCount > 0 {
            graph.output.append(.tensor("stage_probabilities", .float, [.named("customers"), .size(heads.stageCount)],
                                        documentation: "Probability of each lifecycle stage in the next period, in the order of metadata `stage_names`."))
        }

        var model = Onnx_ModelProto()
        model.irVersion = irVersion
        var opset = Onnx_OperatorSetIdProto()
        opset.domain = ""
        opset.version = opsetVersion
        model.opsetImport = [opset]
        model.producerName = "clm-score"
        model.producerVersion = exportVersion
        model.modelVersion = Int64(scoring.info.step)
        model.docString = "Churn probability, expected spend and lifecycle stage probabilities of the customer-lifecycle LSTM (run \(scoring.info.run), step \(scoring.info.step))."
        model.graph = graph
        let info = scoring.info
        model.metadataProps = [
            ("run", info.run), ("step", String(info.step)), ("dataset_fingerprint", info.datasetFingerprint),
            ("feature_names", scoring.dataset.featureNames.joined(separator: ",")),
            ("stage_names", heads.stageCount > 0 ? scoring.dataset.stageNames.joined(separator: ",") : ""),
            ("period_days", String(scoring.dataset.spec.periodDays)), ("history_periods", String(steps)),
            ("horizon_days", String(scoring.dataset.spec.horizonDays)), ("clv_loss", heads.clvLoss.rawValue),
        ].map { key, value in
            var entry = Onnx_StringStringEntryProto()
            entry.key = key
            entry.value = value
            return entry
        }
        return model
    }

    /// PyTorch stacks the gate blocks as input, forget, cell, output; ONNX as input, output,
    /// forget, cell. `matrix` is [4·hidden, columns] row-major (a bias is one column).
    static func onnxGateOrder(_ matrix: [Float], hidden: Int, columns: Int) -> [Float] {
        let block = hidden * columns
        precondition(matrix.count == 4 * block)
        let (input, forget, cell, output) = (0, 1, 2, 3)
        return [input, output, forget, cell].flatMap { matrix[($0 * block)..<(($0 + 1) * block)] }
    }

    /// `x · W[rows]ᵀ + b[rows]` for a PyTorch `Linear` named `name`, as one Gemm.
    private static func linear(_ builder: inout GraphBuilder, _ input: String, _ weights: [String: [Float]], _ name: String, rows: Range<Int>, columns: Int) -> String {
        let weight = Array(weights["\(name).weight"]![(rows.lowerBound * columns)..<(rows.upperBound * columns)])
        let bias = Array(weights["\(name).bias"]![rows])
        let w = builder.constant("\(name)_weight", weight, shape: [rows.count, columns])
        let b = builder.constant("\(name)_bias", bias, shape: [rows.count])
        return builder.apply("Gemm", input, w, b, attributes: [.int("transB", 1)])
    }

    /// The dense path's customer-level inputs: the last valid period's features, their means over
    /// the valid periods and length / T, as `CustomerInputs` builds them.
    private static func customerSummary(_ builder: inout GraphBuilder, normalised: String, steps: Int, axis1: String) -> String {
        let positions = builder.constant("period_positions", int32: (0..<Int32(steps)).map { $0 }, shape: [1, steps])
        let axis2 = builder.constant("axis_2", int64: [2], shape: [1])
        let length = builder.apply("Unsqueeze", "length", axis1)
        let oneStep = builder.constant("one_period", int32: [1], shape: [1])
        let zero = builder.constant("zero_feature", [0], shape: [1])
        // Where, not a product with a 0/1 mask: padding that holds NaN must not reach the sums.
        let valid = builder.apply("Unsqueeze", builder.apply("Less", positions, length), axis2)
        let last = builder.apply("Unsqueeze", builder.apply("Equal", positions, builder.apply("Sub", length, oneStep)), axis2)
        let keepAxis = [Onnx_AttributeProto.int("keepdims", 0)]
        let validSum = builder.apply("ReduceSum", builder.apply("Where", valid, normalised, zero), axis1, attributes: keepAxis)
        let lastFeatures = builder.apply("ReduceSum", builder.apply("Where", last, normalised, zero), axis1, attributes: keepAxis)
        let lengthAsFloat = builder.apply("Cast", length, attributes: [.int("to", Int(Onnx_TensorProto.DataType.float.rawValue))])
        let means = builder.apply("Div", validSum, lengthAsFloat)
        let periods = builder.constant("history_periods", [Float(steps)], shape: [1])
        let share = builder.apply("Div", lengthAsFloat, periods)
        return builder.apply("Concat", lastFeatures, means, share, attributes: [.int("axis", 1)])
    }
}
