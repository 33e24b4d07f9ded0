import Checkpoints
import Foundation
import Testing
@testable import Reporting


/// A hand-made LSTM test row: (dataset row, churned, probability, spend, expected spend).
typealias ChurnRow = (row: Int, label: Int, probability: Double, spend: Double, expected: Double)

/// Small, hand-checkable churn predictions: ties at 0.7 (one churned, one not) and a
/// probability of exactly 1.0, which belongs to the last calibration bin.
let handChurnRows: [ChurnRow] = [
    (10, 1, 0.95, 0, 0.5), (11, 1, 0.7, 0, 2), (12, 0, 0.7, 40, 35), (13, 1, 0.62, 0, 1),
    (14, 0, 0.31, 120, 80), (15, 0, 0.05, 300, 150), (16, 1, 0.44, 12.5, 9), (17, 0, 0.58, 7, 20),
    (18, 1, 1.0, 0, 0), (19, 0, 0.12, 55, 60),
]

/// Writes a run directory: metrics.jsonl and test_predictions.csv as given (from
/// `metricsLine`, `churnCSV` and `stageCSV`, which go through training's writers), latest and
/// the manifest it names. Returns the directory.
@discardableResult
func makeRun(
    in root: URL, name: String, model: ModelKind, metricsLines: [String], predictionsCSV: String,
    stageNames: [String] = ["churned", "occasional", "regular", "loyal"], step: Int = 40, epoch: Int = 4,
    datasetFingerprint: String = "0123456789abcdef"
) throws -> URL {
    let directory = root.appendingPathComponent(name, isDirectory: true)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    try (metricsLines.joined(separator: "\n") + "\n").write(to: directory.appendingPathComponent(MetricsLog.fileName), atomically: true, encoding: .utf8)
    try predictionsCSV.write(to: directory.appendingPathComponent(TestPredictions.fileName), atomically: true, encoding: .utf8)
    let checkpoint = CheckpointStore.directoryName(step: step)
    try FileManager.default.createDirectory(at: directory.appendingPathComponent(checkpoint), withIntermediateDirectories: true)
    let manifest = CheckpointManifest(
        runName: name, step: step, epoch: epoch, created: Date(timeIntervalSince1970: 1_790_000_000),
        programVersion: "test", worldSize: 3, modelKind: model,
        featureSpec: .object(["stageNames": .array(stageNames.map { .string($0) })]),
        datasetFingerprint: datasetFingerprint, randomState: 7, metrics: ["val_loss": 0.5])
    try manifest.jsonData().write(to: directory.appendingPathComponent(checkpoint).appendingPathComponent("manifest.json"))
    try "\(checkpoint)\n".write(to: directory.appendingPathComponent("latest"), atomically: true, encoding: .utf8)
    return directory
}

/// One metrics log line as training writes it, without its newline.
func metricsLine(_ metrics: [String: Double], event: String, warnings: [String] = [], time: String? = nil) -> String {
    let date = time.flatMap { ISO8601DateFormatter().date(from: $0) } ?? Date(timeIntervalSince1970: 1_795_000_000)
    let line = MetricsLog.line(metrics, event: event, warnings: warnings, time: date)!
    return String(decoding: line.dropLast(), as: UTF8.self)
}

/// Four epochs, validated on epochs 2 and 4 only (as with validate_every_epochs: 2).
let lstmMetricsLines = [
    metricsLine(["allreduce_share": 0.12, "epoch": 1, "learning_rate": 0.003, "samples_per_second": 9100.5, "step": 10, "train_loss": 1.9],
                event: "epoch", time: "2026-11-23T15:13:48Z"),
    metricsLine(["allreduce_share": 0.08, "epoch": 2, "learning_rate": 0.0028, "samples_per_second": 9800, "step": 20, "train_loss": 1.7,
                 "val_auc": 0.71, "val_loss": 1.8, "val_f1": 0.8], event: "epoch", time: "2026-11-23T15:13:50Z"),
    metricsLine(["allreduce_share": 0.1, "epoch": 3, "learning_rate": 0.002, "samples_per_second": 10050, "step": 30, "train_loss": 1.65],
                event: "epoch", time: "2026-11-23T15:13:52Z"),
    metricsLine(["allreduce_share": 0.07, "epoch": 4, "learning_rate": 0.001, "samples_per_second": 9950, "step": 40, "train_loss": 1.6,
                 "val_auc": 0.74, "val_loss": 1.75, "val_f1": 0.82], event: "epoch", time: "2026-11-23T15:13:54Z"),
    metricsLine(["test_accuracy": 0.8, "test_auc": 0.86, "test_brier": 0.1712, "test_clv_rmse": 41.25, "test_customers": 10,
                 "test_f1": 0.8181818, "test_log_loss": 0.50123], event: "test", time: "2026-11-23T15:14:02Z"),
]

/// Test predictions of an LSTM without a stage head, through training's writer (every stage 0).
func churnCSV(_ rows: [ChurnRow]) -> String {
    var text = TestPredictions.churnHeader(hasPurchaseProbability: false, stageCount: 0)
    for row in rows {
        TestPredictions.appendChurnRow(to: &text, datasetRow: Double(row.row), churnLabel: Double(row.label), probability: row.probability,
                                       spend: row.spend, expectedSpend: row.expected, stage: 0, purchaseProbability: nil,
                                       predictedStage: nil, stageProbabilities: [])
    }
    return text
}

/// True and predicted stage of each GNN test customer, three stages.
let handStageRows: [(row: Int, stage: Int, predicted: Int)] = [
    (1, 0, 0), (2, 0, 0), (3, 0, 2), (4, 1, 1), (5, 1, 0), (6, 2, 2), (7, 2, 2), (8, 2, 1), (9, 2, 2),
]

/// Graph-model test predictions through training's writer: 0.6 on the predicted stage.
func stageCSV(_ rows: [(row: Int, stage: Int, predicted: Int)], classCount: Int = 3) -> String {
    var text = TestPredictions.stageHeader(classCount: classCount)
    for row in rows {
        let probabilities = (0..<classCount).map { $0 == row.predicted ? 0.6 : 0.4 / Double(classCount - 1) }
        TestPredictions.appendStageRow(to: &text, [Double(row.row), Double(row.stage), Double(row.predicted)] + probabilities)
    }
    return text
}

/// The confusion counts of `handStageRows`, logged as training would.
func gnnMetricsLines() -> [String] {
    var matrix = [[Int]](repeating: [0, 0, 0], count: 3)
    for row in handStageRows { matrix[row.stage][row.predicted] += 1 }
    var test: [String: Double] = ["test_accuracy": 0.6666666666666666, "test_macro_f1": 0.6, "test_customers": 9]
    for i in 0..<3 { for j in 0..<3 { test["test_confusion_\(i)_\(j)"] = Double(matrix[i][j]) } }
    return [
        metricsLine(["allreduce_share": 0.03, "epoch": 1, "samples_per_second": 280000, "step": 7, "train_loss": 1.2, "val_accuracy": 0.5,
                     "val_loss": 1.1, "val_macro_f1": 0.4], event: "epoch"),
        metricsLine(["allreduce_share": 0.02, "epoch": 2, "samples_per_second": 290000, "step": 14, "train_loss": 1.0, "val_accuracy": 0.56,
                     "val_loss": 1.05, "val_macro_f1": 0.46], event: "epoch"),
        metricsLine(test, event: "test"),
    ]
}

/// A scores file as batch scoring writes it (`ScoresFile`), with reason columns when `explain`.
func scoresCSV(_ rows: [ScoresFile.Row], stageNames: [String], explain: Bool = false) -> String {
    ScoresFile.csvHeader(stageNames: stageNames, explain: explain) + rows.map { ScoresFile.csvRow($0, explain: explain) }.joined()
}

/// A scored customer with the given stage, action and churn reasons; one stage probability.
func scoreRow(_ id: String, stage: String, action: String, churn: Double = 0.5, spend: Double = 10, history: Int = 10,
              source: String = "lstm", churnReasons: [String] = []) -> ScoresFile.Row {
    ScoresFile.Row(customerID: id, churnProbability: churn, expectedSpend: spend, historyPeriods: history, stage: stage,
                   stageProbabilities: [churn], action: action, stageSource: source, churnReasons: churnReasons)
}

/// The `<svg id="…">…</svg>` element with that id, or nil.
func svgElement(_ html: String, id: String) -> String? {
    guard let start = html.range(of: "<svg id=\"\(id)\"") else { return nil }
    guard let end = html.range(of: "</svg>", range: start.upperBound..<html.endIndex) else { return nil }
    return String(html[start.lowerBound..<end.upperBound])
}

/// Every value of attribute `name` in `text`, in order.
func attributeValues(_ name: String, in text: String) -> [String] {
    var values: [String] = []
    var rest = text[...]
    let marker = " \(name)=\""
    while let start = rest.range(of: marker) {
        let valueStart = start.upperBound
        guard let end = rest.range(of: "\"", range: valueStart..<rest.endIndex) else { break }
        values.append(String(rest[valueStart..<end.lowerBound]))
        rest = rest[end.upperBound...]
    }
    return values
}

/// Occurrences of `needle` in `text`.
func occurrences(of needle: String, in text: String) -> Int {
    text.components(separatedBy: needle).count - 1
}

/// The text of the element whose opening tag contains `marker` (up to its first closing tag).
func elementText(_ html: String, containing marker: String) -> String? {
    guard let start = html.range(of: marker),
          let open = html.range(of: ">", range: start.upperBound..<html.endIndex),
          let close = html.range(of: "</", range: open.upperBound..<html.endIndex) else { return nil }
    return String(html[open.upperBound..<close.lowerBound])
}

/// Expects `body` to throw a ReportError about `file` (by last path component) at `line`.
func expectReportError(
    file: String, line: Int?, containing text: String,
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected an error about \(file)", sourceLocation: sourceLocation)
    } catch let error as ReportError {
        #expect(URL(fileURLWithPath: error.file).lastPathComponent == file, "\(error)", sourceLocation: sourceLocation)
        #expect(error.line == line, "\(error)", sourceLocation: sourceLocation)
        #expect(error.reason.contains(text), "\(error)", sourceLocation: sourceLocation)
        #expect(error.description.hasPrefix(error.file), sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}
