import Foundation
import Testing
@testable import Reporting
import TestSupport

/// Each malformed input is refused with the file and, where one is to blame, the line.
@Suite struct InputErrorTests {
    func run(_ root: TemporaryDirectory, metrics: [String] = lstmMetricsLines, csv: String = churnCSV(handChurnRows)) throws -> URL {
        try makeRun(in: root.url, name: "run", model: .lstm, metricsLines: metrics, predictionsCSV: csv)
    }

    @Test func brokenJSONLineIsNamed() throws {
        let root = try TemporaryDirectory()
        var lines = lstmMetricsLines
        lines[2] = #"{"epoch":3,"event":"epoch","train_loss":1.65"#
        let directory = try run(root, metrics: lines)
        expectReportError(file: "metrics.jsonl", line: 3, containing: "not valid JSON") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func epochRecordNeedsAnEpochAndAnEvent() throws {
        let root = try TemporaryDirectory()
        var lines = lstmMetricsLines
        lines[1] = #"{"event":"epoch","train_loss":1.7}"#
        let directory = try run(root, metrics: lines)
        expectReportError(file: "metrics.jsonl", line: 2, containing: "positive integer \"epoch\"") {
            _ = try TrainingRun.load(directory: directory)
        }
        lines[1] = #"{"epoch":2,"train_loss":1.7}"#
        try (lines.joined(separator: "\n")).write(to: directory.appendingPathComponent("metrics.jsonl"), atomically: true, encoding: .utf8)
        expectReportError(file: "metrics.jsonl", line: 2, containing: "\"event\"") {
            _ = try TrainingRun.load(directory: directory)
        }
        try "\n".write(to: directory.appendingPathComponent("metrics.jsonl"), atomically: true, encoding: .utf8)
        expectReportError(file: "metrics.jsonl", line: nil, containing: "no \"event\":\"epoch\" lines") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func resumedEpochKeepsTheLaterLine() throws {
        var lines = lstmMetricsLines
        lines.insert(#"{"epoch":2,"event":"epoch","train_loss":9.9}"#, at: 2)
        let log = try MetricsLog(text: lines.joined(separator: "\n"), source: "m")
        #expect(log.epochs.map(\.epoch) == [1, 2, 3, 4])
        #expect(log.epochs[1]["train_loss"] == 9.9)
        #expect(log.epochs[1].line == 3)
        #expect(log.testLine == 6)
    }

    @Test func nonNumericPredictionNamesLineAndColumn() throws {
        let root = try TemporaryDirectory()
        var csv = churnCSV(handChurnRows).split(separator: "\n").map(String.init)
        csv[4] = "13,1,high,0,1,0"
        let directory = try run(root, csv: csv.joined(separator: "\n"))
        expectReportError(file: "test_predictions.csv", line: 5, containing: "churn_probability: \"high\" is not a finite number") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func predictionRowsAreChecked() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root, csv: "dataset_row,churn_label,churn_probability,spend,expected_spend\n1,1,0.5,0,0\n2,0,0.4\n")
        expectReportError(file: "test_predictions.csv", line: 3, containing: "3 fields, but the header on line 1 has 5") {
            _ = try TrainingRun.load(directory: directory)
        }
        try "dataset_row,churn_label,churn_probability,spend,expected_spend\n1,2,0.5,0,0\n"
            .write(to: directory.appendingPathComponent("test_predictions.csv"), atomically: true, encoding: .utf8)
        expectReportError(file: "test_predictions.csv", line: 2, containing: "neither 0 nor 1") {
            _ = try TrainingRun.load(directory: directory)
        }
        try "dataset_row,churn_label,churn_probability,spend,expected_spend\n1,1,1.5,0,0\n"
            .write(to: directory.appendingPathComponent("test_predictions.csv"), atomically: true, encoding: .utf8)
        expectReportError(file: "test_predictions.csv", line: 2, containing: "outside [0, 1]") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func missingColumnIsNamed() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root, csv: "dataset_row,churn_label,churn_probability,spend\n1,1,0.5,3\n")
        expectReportError(file: "test_predictions.csv", line: 1, containing: "no column \"expected_spend\"") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func predictionsOfTheOtherModelAreRefused() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root, csv: stageCSV(handStageRows))
        expectReportError(file: "test_predictions.csv", line: 1, containing: "graph model's columns") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func stageOutOfRangeIsNamed() throws {
        let root = try TemporaryDirectory()
        let csv = stageCSV(handStageRows) + "99,3,0,0.1,0.2,0.7\n"
        let directory = try makeRun(in: root.url, name: "g", model: .gnn, metricsLines: gnnMetricsLines(), predictionsCSV: csv,
                                    stageNames: ["a", "b", "c"])
        expectReportError(file: "test_predictions.csv", line: handStageRows.count + 2, containing: "stage: 3 is not a stage index below 3") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func missingFilesAreNamed() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root)
        try FileManager.default.removeItem(at: directory.appendingPathComponent("test_predictions.csv"))
        expectReportError(file: "test_predictions.csv", line: nil, containing: "does not exist") {
            _ = try TrainingRun.load(directory: directory)
        }
        try FileManager.default.removeItem(at: directory.appendingPathComponent("metrics.jsonl"))
        expectReportError(file: "metrics.jsonl", line: nil, containing: "does not exist") {
            _ = try TrainingRun.load(directory: directory)
        }
        expectReportError(file: "nowhere", line: nil, containing: "is not a run directory") {
            _ = try TrainingRun.load(directory: root.url.appendingPathComponent("nowhere"))
        }
    }

    @Test func badLatestAndManifestAreNamed() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root)
        let latest = directory.appendingPathComponent("latest")
        try "../etc\n".write(to: latest, atomically: true, encoding: .utf8)
        expectReportError(file: "latest", line: 1, containing: "step-000123") {
            _ = try TrainingRun.load(directory: directory)
        }
        try "step-000040\n".write(to: latest, atomically: true, encoding: .utf8)
        try #"{"runName": "run"}"#.write(to: directory.appendingPathComponent("step-000040/manifest.json"), atomically: true, encoding: .utf8)
        expectReportError(file: "manifest.json", line: nil, containing: "missing key") {
            _ = try TrainingRun.load(directory: directory)
        }
    }

    @Test func gnnRunMustBeAGraphRun() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root)
        expectReportError(file: "run", line: nil, containing: "the graph-model run (--gnn-run) is a lstm run") {
            _ = try ReportInputs.load(run: directory, gnnRun: directory, scores: nil)
        }
    }

    @Test func scoresNeedStageAndActionColumns() throws {
        let root = try TemporaryDirectory()
        let directory = try run(root)
        let scores = root.url.appendingPathComponent("scores.csv")
        try scoresCSV([scoreRow("x", stage: "loyal", action: "upsell")], stageNames: ["loyal"])
            .replacingOccurrences(of: ",action,", with: ",deed,").write(to: scores, atomically: true, encoding: .utf8)
        expectReportError(file: "scores.csv", line: 1, containing: "no column \"action\"") {
            _ = try ReportInputs.load(run: directory, gnnRun: nil, scores: scores)
        }
        try "customer_id,stage,action\nx,loyal,upsell\n\"y,stage,\n".write(to: scores, atomically: true, encoding: .utf8)
        expectReportError(file: "scores.csv", line: 3, containing: "quoted field is not closed") {
            _ = try ReportInputs.load(run: directory, gnnRun: nil, scores: scores)
        }
        try scoresCSV([scoreRow("x", stage: "", action: "upsell")], stageNames: ["loyal"]).write(to: scores, atomically: true, encoding: .utf8)
        expectReportError(file: "scores.csv", line: 2, containing: "stage is empty") {
            _ = try ReportInputs.load(run: directory, gnnRun: nil, scores: scores)
        }
    }
}
