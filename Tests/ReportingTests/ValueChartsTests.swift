import Checkpoints
import Foundation
import Testing
@testable import Reporting
import TestSupport

/// The charts and tables that put the model's value next to its baselines: spend deciles,
/// cumulative gain, the baseline table with its intervals and warnings, the stage head's matrix.
@Suite struct ValueChartsTests {
    @Test("deciles split customers by predicted spend into ten groups and average both spends")
    func decilesAverageEachTenth() {
        // 25 customers: predicted spend 0...24, actual spend twice that; 25/10 makes groups of 2 and 3.
        let rows = (0..<25).map { ChurnPrediction(datasetRow: 100 - $0, churned: false, probability: 0.5, spend: Double(2 * $0), expectedSpend: Double($0)) }
        let deciles = spendDeciles(rows.shuffled())
        #expect(deciles.count == 10)
        #expect(deciles.map(\.customers).reduce(0, +) == 25)
        var start = 0
        for decile in deciles {
            let members = (start..<start + decile.customers).map(Double.init)
            #expect(decile.meanPredicted == members.reduce(0, +) / Double(members.count))
            #expect(decile.meanActual == 2 * decile.meanPredicted)
            start += decile.customers
        }
    }

    @Test("cumulative gain reaches every churner, and a perfect ranking reaches them first")
    func gainOfAPerfectRanking() {
        let labels = [true, false, true, false, false]
        let perfect = cumulativeGain(scores: [0.9, 0.1, 0.8, 0.2, 0.3], labels: labels)
        #expect(perfect.count == 6 && perfect.first! == (0, 0) && perfect.last!.reached == 1)
        #expect(perfect[2].reached == 1 && perfect[2].targeted == 0.4)
        let reversed = cumulativeGain(scores: [0.1, 0.9, 0.2, 0.8, 0.7], labels: labels)
        #expect(reversed[3].reached == 0)
        #expect(cumulativeGain(scores: [0.5], labels: [false]).isEmpty)
    }

    static let baselineTestLine = #"{"event":"test","test_auc":0.78,"test_log_loss":0.48,"test_clv_rmse":97.5,"test_spend_spearman":0.46,"test_bgnbd_auc":0.77,"test_bgnbd_log_loss":0.49,"test_bgnbd_clv_rmse":82.0,"test_bgnbd_spend_spearman":0.45,"test_logistic_auc":0.79,"test_logistic_log_loss":0.47,"test_auc_ci_low":0.76,"test_auc_ci_high":0.80,"test_clv_rmse_minus_bgnbd_ci_low":-0.4,"test_clv_rmse_minus_bgnbd_ci_high":36.5,"test_customers":10,"test_stage_confusion_0_0":2,"test_stage_confusion_0_1":1,"test_stage_confusion_1_0":0,"test_stage_confusion_1_1":1,"warnings":["test clv_rmse: the LSTM's 97.5 is worse than BG/NBD's 82.0"]}"#

    func report() throws -> (TemporaryDirectory, String) {
        let root = try TemporaryDirectory()
        var lines = lstmMetricsLines
        lines[lines.count - 1] = Self.baselineTestLine
        // A stage head: stage and predicted_stage columns beside the churn ones.
        let csv = "dataset_row,churn_label,churn_probability,spend,expected_spend,stage,purchase_probability,predicted_stage,p_stage_0,p_stage_1\n"
            + "1,1,0.9,0,1,0,0.1,0,0.8,0.2\n2,0,0.2,40,35,1,0.8,1,0.3,0.7\n3,1,0.7,0,2,0,0.2,1,0.4,0.6\n4,1,0.8,0,1,0,0.1,0,0.9,0.1\n"
        let run = try makeRun(in: root.url, name: "lstm-run", model: .lstm, metricsLines: lines, predictionsCSV: csv,
                              stageNames: ["churned", "active"])
        return (root, renderReport(try ReportInputs.load(run: run, gnnRun: nil, scores: nil)))
    }

    @Test("the baseline table marks every metric a baseline wins, with the intervals and the logged warnings")
    func baselineTable() throws {
        let (_, html) = try report()
        let table = try #require(elementText(html, containing: "id=\"baseline-table\"").map { _ in html })
        let start = try #require(table.range(of: "id=\"baseline-table\""))
        let end = try #require(table.range(of: "</table>", range: start.upperBound..<table.endIndex))
        let text = String(table[start.upperBound..<end.lowerBound])
        // BG/NBD wins spend RMSE, the floor wins AUC and log loss; nothing else is marked.
        #expect(occurrences(of: "▲", in: text) == 3)
        #expect(text.contains("data-baseline=\"bgnbd\" data-value=\"82.0\">82.0000 ▲"))
        #expect(text.contains("data-baseline=\"logistic\" data-value=\"0.79\">0.7900 ▲"))
        #expect(text.contains("data-baseline=\"bgnbd\" data-value=\"0.77\">0.7700<"))
        #expect(html.contains("data-interval=\"auc\">LSTM churn AUC: 0.7600 to 0.8000"))
        #expect(html.contains("data-interval=\"clv_rmse_minus_bgnbd\""))
        #expect(html.contains("id=\"warnings\"") && html.contains("the LSTM&#39;s 97.5 is worse than BG/NBD&#39;s 82.0"))
    }

    @Test("the LSTM stage head gets its own confusion matrix, checked against the logged counts")
    func stageHeadMatrix() throws {
        let (_, html) = try report()
        let svg = try #require(svgElement(html, id: "lstm-stages-confusion"))
        let counts = attributeValues("data-count", in: svg).map { Int($0)! }
        #expect(counts == [2, 1, 0, 1])
        #expect(html.contains("Equal to the logged test_stage_confusion_* counts."))
        // The predictions' spend feeds the decile chart and the Gini line.
        #expect(svgElement(html, id: "spend-deciles") != nil && svgElement(html, id: "churn-gain") != nil)
        #expect(html.contains("id=\"spend-gini\""))
    }

    @Test("a run with a best step is described by it: the one its test metrics are of")
    func cardDescribesTheBestStep() throws {
        let root = try TemporaryDirectory()
        let run = try makeRun(in: root.url, name: "lstm-run", model: .lstm, metricsLines: lstmMetricsLines,
                              predictionsCSV: churnCSV(handChurnRows), step: 40, epoch: 4)
        let best = CheckpointStore.directoryName(step: 20)
        try FileManager.default.createDirectory(at: run.appendingPathComponent(best), withIntermediateDirectories: true)
        let manifest = CheckpointManifest(
            runName: "lstm-run", step: 20, epoch: 2, programVersion: "test", worldSize: 3, modelKind: .lstm,
            featureSpec: .object(["stageNames": .array([.string("churned"), .string("active")])]),
            datasetFingerprint: "0123456789abcdef", randomState: 7, metrics: ["val_auc": 0.71])
        try manifest.jsonData().write(to: run.appendingPathComponent(best).appendingPathComponent("manifest.json"))
        let html = renderReport(try ReportInputs.load(run: run, gnnRun: nil, scores: nil))
        #expect(elementText(html, containing: "data-fact=\"step\"") == "40 (step-000040, epoch 4), named by latest")
        try "\(best)\n".write(to: run.appendingPathComponent("best"), atomically: true, encoding: .utf8)
        let withBest = renderReport(try ReportInputs.load(run: run, gnnRun: nil, scores: nil))
        #expect(elementText(withBest, containing: "data-fact=\"step\"") == "20 (step-000020, epoch 2), named by best")
    }

    @Test("the graph run's evidence table puts the model, the ablation and the majority class side by side, with a verdict")
    func graphEvidence() throws {
        let root = try TemporaryDirectory()
        var lines = gnnMetricsLines()
        lines[lines.count - 1] = String(lines[lines.count - 1].dropLast())
            + #","test_nograph_macro_f1":0.4,"test_nograph_accuracy":0.5,"test_majority_macro_f1":0.2,"test_majority_accuracy":0.45,"test_macro_f1_ci_low":0.5,"test_macro_f1_ci_high":0.7,"test_macro_f1_minus_nograph_ci_low":0.01,"test_macro_f1_minus_nograph_ci_high":0.3,"warnings":["the graph model's test macro-F1 0.6000 is not shown to beat the majority class's 0.2000"]}"#
        let lstm = try makeRun(in: root.url, name: "lstm-run", model: .lstm, metricsLines: lstmMetricsLines,
                               predictionsCSV: churnCSV(handChurnRows), stageNames: ["a", "b", "c"])
        let gnn = try makeRun(in: root.url, name: "gnn-run", model: .gnn, metricsLines: lines,
                              predictionsCSV: stageCSV(handStageRows), stageNames: ["a", "b", "c"], step: 14, epoch: 2)
        let html = renderReport(try ReportInputs.load(run: lstm, gnnRun: gnn, scores: nil))
        #expect(html.contains("data-metric=\"macro_f1\" data-value=\"0.6\">0.6000 (0.5000–0.7000)"))
        #expect(html.contains("data-metric=\"nograph_macro_f1\" data-value=\"0.4\">0.4000<"))
        #expect(html.contains("data-metric=\"majority_accuracy\" data-value=\"0.45\">0.4500<"))
        #expect(html.contains("the graph helps: the interval is above zero"))
        #expect(html.contains("id=\"graph-warnings\"") && html.contains("is not shown to beat the majority class&#39;s 0.2000"))
        // Without an ablation in the log the section says so instead of inventing numbers, and
        // still shows the run's warnings.
        var plainLines = gnnMetricsLines()
        plainLines[plainLines.count - 1] = String(plainLines[plainLines.count - 1].dropLast())
            + #","warnings":["the graph model's test macro-F1 0.5000 is not shown to beat the majority class's 0.4000"]}"#
        let plain = try makeRun(in: root.url, name: "gnn-plain", model: .gnn, metricsLines: plainLines,
                                predictionsCSV: stageCSV(handStageRows), stageNames: ["a", "b", "c"], step: 14, epoch: 2)
        let without = renderReport(try ReportInputs.load(run: lstm, gnnRun: plain, scores: nil))
        #expect(without.contains("id=\"graph-evidence-missing\""))
        #expect(without.contains("id=\"graph-warnings\"") && without.contains("the majority class&#39;s 0.4000"))
    }
}
