import Checkpoints
import Foundation
import Models
import RunFiles
import Testing

/// Every run file written by its owner type and read back by the same type: a field renamed on
/// one side (a key, a column) fails here before a report or a scorer meets it.
@Suite struct RoundTripTests {
    @Test func metricsLogReadsWhatItWrote() throws {
        let first: [String: Double] = ["epoch": 1, "step": 10, "train_loss": 1.9, "learning_rate": 0.003]
        let second: [String: Double] = ["epoch": 2, "step": 20, "train_loss": 1.7, "val_auc": 0.71, "val_loss": 1.8]
        let test: [String: Double] = ["test_auc": 0.86, "test_log_loss": 0.50123, "test_customers": 10]
        let warnings = ["test auc: the LSTM's 0.86 is worse than the floor's 0.87"]
        var data = Data()
        data += try #require(MetricsLog.line(first, event: MetricsLog.epochEvent))
        data += try #require(MetricsLog.line(second.merging(["not_finite": .nan]) { a, _ in a }, event: MetricsLog.epochEvent))
        data += try #require(MetricsLog.line(test, event: MetricsLog.testEvent, warnings: warnings))
        let log = try MetricsLog(text: String(decoding: data, as: UTF8.self), source: MetricsLog.fileName)
        #expect(log.epochs.map(\.epoch) == [1, 2])
        #expect(log.epochs.map(\.line) == [1, 2])
        #expect(log.epochs[0].values == first)
        #expect(log.epochs[1].values == second)
        #expect(log.test == test)
        #expect(log.testLine == 3)
        #expect(log.testWarnings == warnings)
    }

    @Test func lstmPredictionsReadWhatTheyWrote() throws {
        let rows: [(row: Float, label: Float, p: Float, spend: Float, expected: Float, stage: Float, purchase: Float, predicted: Int, stages: [Float])] = [
            (3, 1, 0.875, 0, 0.5, 0, 0.125, 0, [0.75, 0.25]),
            (7, 0, 0.25, 40.25, 35.5, 1, 0.9, 1, [0.3, 0.7]),
            (12, 1, 1, 0, 1e8, 0, 0, 0, [1, 0]),
        ]
        var text = TestPredictions.churnHeader(hasPurchaseProbability: true, stageCount: 2)
        for r in rows {
            TestPredictions.appendChurnRow(to: &text, datasetRow: r.row, churnLabel: r.label, probability: r.p, spend: r.spend,
                                           expectedSpend: r.expected, stage: r.stage, purchaseProbability: r.purchase,
                                           predictedStage: r.predicted, stageProbabilities: r.stages)
        }
        let read = try TestPredictions.read(try written(text), model: .lstm, stageNames: ["churned", "active"])
        #expect(read == .churn(rows.map {
            ChurnPrediction(datasetRow: Int($0.row), churned: $0.label == 1, probability: Double($0.p), spend: Double($0.spend),
                            expectedSpend: Double($0.expected), stage: Int($0.stage), predictedStage: $0.predicted)
        }))
        // Without a stage head the stage columns are absent and the rows carry none.
        var plain = TestPredictions.churnHeader(hasPurchaseProbability: false, stageCount: 0)
        TestPredictions.appendChurnRow(to: &plain, datasetRow: 4.0, churnLabel: 0, probability: 0.25, spend: 9, expectedSpend: 8.5,
                                       stage: 2, purchaseProbability: nil, predictedStage: nil, stageProbabilities: [])
        #expect(try TestPredictions.read(try written(plain), model: .lstm, stageNames: [])
            == .churn([ChurnPrediction(datasetRow: 4, churned: false, probability: 0.25, spend: 9, expectedSpend: 8.5)]))
    }

    @Test func stagePredictionsReadWhatTheyWrote() throws {
        var text = TestPredictions.stageHeader(classCount: 3)
        TestPredictions.appendStageRow(to: &text, [Float(5), 2, 1, 0.1, 0.5, 0.4])
        TestPredictions.appendStageRow(to: &text, [Float(9), 0, 0, 0.7, 0.2, 0.1])
        let read = try TestPredictions.read(try written(text), model: .gnn, stageNames: ["a", "b", "c"])
        #expect(read == .stages([StagePrediction(datasetRow: 5, stage: 2, predicted: 1), StagePrediction(datasetRow: 9, stage: 0, predicted: 0)],
                                classCount: 3))
    }

    @Test func scoresFileReadsWhatItWrote() throws {
        let rows = [
            ScoresFile.Row(customerID: "a,\"1\"", churnProbability: 0.912345, expectedSpend: 1.5, historyPeriods: 3, stage: "churned",
                           stageProbabilities: [0.9, 0.1], action: "winback_email", stageSource: "rule",
                           churnReasons: ["recency_weeks=14 (+)", "tenure_weeks=30 (-)", "spend_last4=3.00 (-)"], spendReasons: ["x=1 (+)"]),
            ScoresFile.Row(customerID: "b2", churnProbability: 0.000001, expectedSpend: 90.25, historyPeriods: 10, stage: "loyal",
                           stageProbabilities: [0, 1], action: "upsell", stageSource: "gnn", churnReasons: [], spendReasons: []),
        ]
        let text = ScoresFile.csvHeader(stageNames: ["churned", "loyal"], explain: true) + rows.map { ScoresFile.csvRow($0, explain: true) }.joined()
        let contents = try ScoresFile.read(try written(text))
        #expect(contents.stageNames == ["churned", "loyal"])
        #expect(contents.hasReasons)
        #expect(contents.rows.map(\.line) == [2, 3])
        #expect(contents.rows.map(\.row) == rows)
        let plain = ScoresFile.csvHeader(stageNames: ["churned", "loyal"], explain: false) + ScoresFile.csvRow(rows[1], explain: false)
        let plainContents = try ScoresFile.read(try written(plain))
        #expect(!plainContents.hasReasons)
        #expect(plainContents.rows.map(\.row) == [rows[1]])
    }

    @Test func scoringSummaryReadsWhatItWrote() throws {
        let groups = ["recency:last4", "spend:last4", "recency:earlier"]
        let summary = ScoringSummary(
            run: "cdnow \"lstm\"", step: 129, customers: 23570,
            drift: [ScoringSummary.Index(kind: "feature", name: "recency", psi: 0.0125), ScoringSummary.Index(kind: "score", name: "churn", psi: 0.25)],
            explanation: ScoringSummary.Explanation(
                steps: 32, baseline: "zeros", worstCompletenessError: 0.0015,
                meanAbsoluteAttribution: ["churn_logit": ["recency:last4": 0.5, "spend:last4": 0.125, "recency:earlier": 0.0625],
                                          "expected_spend": ["recency:last4": 2.5, "spend:last4": 12.75, "recency:earlier": 0]]))
        let url = try written("")
        try summary.write(to: url, groupOrder: groups)
        #expect(try ScoringSummary.read(url) == summary)
        let text = try String(contentsOf: url, encoding: .utf8)
        #expect(text.contains(#"{"recency:last4":0.5,"spend:last4":0.125,"recency:earlier":0.0625}"#))
        let plain = ScoringSummary(run: "r", step: 1, customers: 2, drift: [])
        try plain.write(to: url, groupOrder: groups)
        #expect(try ScoringSummary.read(url) == plain)
    }

    @Test func storedModelConfigurationReadsWhatItWrote() throws {
        let architecture = ModelArchitecture(kind: .lstm, inputSize: 12, hiddenSize: 8, layers: 2, historyLength: 39, classCount: 4,
                                             clvLoss: .ziln, stageCount: 4, customerHidden: 4, positiveWeight: 1.5, classWeights: [1, 2, 3, 4])
        let stored = StoredModelConfiguration(architecture: architecture, training: .object(["epochs": .number(2), "run": .string("x")]))
        let value = try stored.jsonValue()
        guard case .object(let fields) = value else { Issue.record("not an object: \(value)"); return }
        #expect(Set(fields.keys) == ["architecture", "training"])
        #expect(try StoredModelConfiguration(manifestValue: value) == stored)
        // Through a whole manifest, as a checkpoint stores it.
        let manifest = CheckpointManifest(runName: "r", step: 3, epoch: 1, created: Date(timeIntervalSince1970: 1_790_000_000),
                                          programVersion: "test", worldSize: 2, modelKind: .lstm, configuration: value,
                                          featureSpec: .null, datasetFingerprint: "ab", randomState: 7, metrics: [:], files: [:])
        let reread = try CheckpointManifest(jsonData: try manifest.jsonData(), source: "manifest.json")
        #expect(try StoredModelConfiguration(manifestValue: reread.configuration) == stored)
    }

    /// `text` in a fresh temporary file.
    private func written(_ text: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("runfiles-\(UUID().uuidString)")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }
}
