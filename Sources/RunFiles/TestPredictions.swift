import Checkpoints
import Foundation

/// One test customer's churn and spend, as the LSTM run wrote them.
public struct ChurnPrediction: Sendable, Equatable {
    public var datasetRow: Int
    public var churned: Bool
    public var probability: Double
    public var spend: Double
    public var expectedSpend: Double
    /// Actual and predicted lifecycle stage, when the LSTM has a stage head (else nil).
    public var stage: Int?
    public var predictedStage: Int?

    public init(datasetRow: Int, churned: Bool, probability: Double, spend: Double, expectedSpend: Double,
                stage: Int? = nil, predictedStage: Int? = nil) {
        self.datasetRow = datasetRow
        self.churned = churned
        self.probability = probability
        self.spend = spend
        self.expectedSpend = expectedSpend
        self.stage = stage
        self.predictedStage = predictedStage
    }
}

/// One test customer's true and predicted lifecycle stage, as the GNN run wrote them.
public struct StagePrediction: Sendable, Equatable {
    public var datasetRow: Int
    public var stage: Int
    public var predicted: Int

    public init(datasetRow: Int, stage: Int, predicted: Int) {
        self.datasetRow = datasetRow
        self.stage = stage
        self.predicted = predicted
    }
}

/// The test split's predictions of one run (`test_predictions.csv`), for the report's ROC,
/// calibration, spend and confusion charts. Training writes it with `churnHeader` and
/// `appendChurnRow` (or the stage pair), every rank its own rows; `read` reads it back.
///
/// Columns, LSTM: dataset_row, churn_label, churn_probability, spend, expected_spend, stage, then
/// purchase_probability with a ZILN head, predicted_stage and p_stage_k with a stage head.
/// GNN: dataset_row, stage, predicted_stage, then one probability per stage.
public enum TestPredictions: Sendable, Equatable {
    case churn([ChurnPrediction])
    case stages([StagePrediction], classCount: Int)

    /// The format this type writes and reads; the file has no version field of its own (its
    /// bytes are what earlier runs wrote), so a change to the columns is a new version here.
    public static let version = 1
    public static let fileName = "test_predictions.csv"

    /// The LSTM's header line, newline included.
    public static func churnHeader(hasPurchaseProbability: Bool, stageCount: Int) -> String {
        var header = "dataset_row,churn_label,churn_probability,spend,expected_spend,stage"
        if hasPurchaseProbability { header += ",purchase_probability" }
        if stageCount > 0 { header += ",predicted_stage" + (0..<stageCount).map { ",p_stage_\($0)" }.joined() }
        return header + "\n"
    }

    /// One LSTM row under `churnHeader`: `purchaseProbability` when the header has its column,
    /// `predictedStage` and `stageProbabilities` when it has stage columns.
    public static func appendChurnRow<Value: BinaryFloatingPoint & CustomStringConvertible>(
        to text: inout String, datasetRow: Value, churnLabel: Value, probability: Value, spend: Value, expectedSpend: Value,
        stage: Value, purchaseProbability: Value?, predictedStage: Int?, stageProbabilities: [Value]
    ) {
        var fields = [Int(datasetRow).description, Int(churnLabel).description, formatValue(probability),
                      formatValue(spend), formatValue(expectedSpend), Int(stage).description]
        if let purchaseProbability { fields.append(formatValue(purchaseProbability)) }
        if let predictedStage {
            fields.append(predictedStage.description)
            for p in stageProbabilities { fields.append(formatValue(p)) }
        }
        text += fields.joined(separator: ",") + "\n"
    }

    /// The graph model's header line for `classCount` stages, newline included.
    public static func stageHeader(classCount: Int) -> String {
        "dataset_row,stage,predicted_stage" + (0..<classCount).map { ",p_stage_\($0)" }.joined() + "\n"
    }

    /// One graph-model row under `stageHeader`: the dataset row, the true and predicted stage,
    /// then one probability per stage.
    public static func appendStageRow<Value: BinaryFloatingPoint & CustomStringConvertible>(
        to text: inout String, _ fields: some Collection<Value>
    ) {
        text += fields.map(formatValue).joined(separator: ",") + "\n"
    }

    /// Whole numbers as integers (row indices, labels), anything else in its shortest exact form.
    static func formatValue<Value: BinaryFloatingPoint & CustomStringConvertible>(_ value: Value) -> String {
        value == value.rounded() && abs(value) < 1e7 ? "\(Int(value))" : "\(value)"
    }

    public var count: Int {
        switch self {
        case .churn(let rows): return rows.count
        case .stages(let rows, _): return rows.count
        }
    }

    /// Reads the file, checking that its columns fit the manifest's model kind.
    public static func read(_ url: URL, model: ModelKind, stageNames: [String]) throws(RunFileError) -> TestPredictions {
        let table = try CSVTable.read(url)
        let source = url.relativePath
        switch model {
        case .lstm:
            if !table.header.contains("churn_probability") && table.header.contains("predicted_stage") {
                throw RunFileError(file: source, line: 1, "has the graph model's columns, but the checkpoint is an LSTM")
            }
            let row = try table.column("dataset_row"), label = try table.column("churn_label")
            let probability = try table.column("churn_probability"), spend = try table.column("spend")
            let expected = try table.column("expected_spend")
            // A stage head adds the stage columns; both or neither.
            let hasStages = table.header.contains("predicted_stage")
            let stage = hasStages ? try table.column("stage") : nil
            let predictedStage = hasStages ? try table.column("predicted_stage") : nil
            let stageCount = table.header.filter { $0.hasPrefix("p_stage_") }.count
            var predictions: [ChurnPrediction] = []
            predictions.reserveCapacity(table.rows.count)
            for fields in table.rows {
                let churned = try table.integer(fields, label)
                guard churned == 0 || churned == 1 else {
                    throw RunFileError(file: source, line: fields.line, "churn_label: \(churned) is neither 0 nor 1")
                }
                let p = try table.number(fields, probability)
                guard (0...1).contains(p) else {
                    throw RunFileError(file: source, line: fields.line, "churn_probability: \(p) is outside [0, 1]")
                }
                var stages: (Int, Int)? = nil
                if let stage, let predictedStage {
                    let truth = try table.integer(fields, stage), guess = try table.integer(fields, predictedStage)
                    for (name, value) in [("stage", truth), ("predicted_stage", guess)] where !(0..<max(stageCount, 1)).contains(value) {
                        throw RunFileError(file: source, line: fields.line, "\(name): \(value) is not a stage index below \(stageCount)")
                    }
                    stages = (truth, guess)
                }
                predictions.append(ChurnPrediction(
                    datasetRow: try table.integer(fields, row), churned: churned == 1, probability: p,
                    spend: try table.number(fields, spend), expectedSpend: try table.number(fields, expected),
                    stage: stages?.0, predictedStage: stages?.1))
            }
            if predictions.isEmpty { throw RunFileError(file: source, "has a header but no predictions") }
            return .churn(predictions)
        case .gnn:
            if table.header.contains("churn_probability") {
                throw RunFileError(file: source, line: 1, "has the LSTM's columns, but the checkpoint is a graph model")
            }
            let row = try table.column("dataset_row"), stage = try table.column("stage")
            let predicted = try table.column("predicted_stage")
            let classCount = table.header.filter { $0.hasPrefix("p_stage_") }.count
            guard classCount > 0 else { throw RunFileError(file: source, line: 1, "no p_stage_* columns") }
            if !stageNames.isEmpty && stageNames.count != classCount {
                throw RunFileError(file: source, line: 1,
                                  "\(classCount) p_stage_* columns, but the manifest names \(stageNames.count) stages")
            }
            var predictions: [StagePrediction] = []
            for fields in table.rows {
                let truth = try table.integer(fields, stage), guess = try table.integer(fields, predicted)
                for (name, value) in [("stage", truth), ("predicted_stage", guess)] where !(0..<classCount).contains(value) {
                    throw RunFileError(file: source, line: fields.line, "\(name): \(value) is not a stage index below \(classCount)")
                }
                predictions.append(StagePrediction(datasetRow: try table.integer(fields, row), stage: truth, predicted: guess))
            }
            if predictions.isEmpty { throw RunFileError(file: source, "has a header but no predictions") }
            return .stages(predictions, classCount: classCount)
        }
    }
}
