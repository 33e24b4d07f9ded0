import Checkpoints
import Collectives
import CustomerData
import Foundation
import Testing
@testable import Training

/// What a first training run must say plainly: a dataset with nothing to learn is refused, a
/// graph model that does not beat its yardsticks is warned about, and `min_steps` does not keep
/// a run going long past its best.
@Suite("A first training run", .serialized)
struct FirstRunTests {
    @Test("a dataset whose labels are all the same is refused before anything trains, for either model",
          arguments: [ModelKind.lstm, .gnn])
    func constantLabelsAreRefused(model: ModelKind) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("clm-constant-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let events = directory.appendingPathComponent("events.csv").path
        _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 200, products: 20, seed: 3), to: events)
        // A cut-off after the last event: nobody buys in the horizon, so everybody churned and
        // every customer is in the first stage.
        var options = ImportOptions()
        options.format.mapping.product = .name("product_id")
        options.cutoffDay = try parseDay("2030-01-01")
        options.horizonDays = 28
        options.allowPartialHorizon = true
        let data = directory.appendingPathComponent("data").path
        let manifest = try Importer.run(input: events, output: data, options: options).manifest
        #expect(manifest.labels.churnRate == 1)
        let configuration = directory.appendingPathComponent("run.yaml").path
        try """
            model: \(model.rawValue)
            data: \(data)
            checkpoints: \(directory.appendingPathComponent("checkpoints").path)
            run: constant
            epochs: 1
            min_steps: 0
            """.write(toFile: configuration, atomically: true, encoding: .utf8)
        do {
            _ = try TrainingJob.coordinate(JobRequest(configurationPath: configuration), world: SingleProcessCommunicator())
            Issue.record("a \(model) run trained on constant labels")
        } catch let error as JobDidNotStart {
            let refusal = try #require(error.reason as? UnlearnableDataset, "\(error)")
            #expect(refusal.model == model)
            let expected = model == .lstm ? "every one of the 200 customers churned" : "every one of the 200 customers is in stage 'churned'"
            #expect("\(error)".contains("dataset \(data) cannot train the \(model.rawValue) model: \(expected)"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("checkpoints/constant").path),
                "nothing was trained or written")
    }

    @Test("the graph model is warned about where the paired interval does not show it beating the ablation or the majority class")
    func graphWarnings() {
        var metrics: [String: Double] = [
            "test_macro_f1": 0.372, "test_nograph_macro_f1": 0.384, "test_majority_macro_f1": 0.155,
            "test_macro_f1_minus_nograph_ci_low": -0.051, "test_macro_f1_minus_nograph_ci_high": 0.027,
            "test_macro_f1_minus_majority_ci_low": 0.12, "test_macro_f1_minus_majority_ci_high": 0.31,
        ]
        let warnings = StageComparison.warnings(test: metrics)
        #expect(warnings == [
            "the graph model's test macro-F1 0.3720 is not shown to beat its no-graph ablation's 0.3840 on the same customers "
                + "(difference 95% CI -0.0510 to +0.0270): the graph has not shown that it helps; do not ship it",
        ])
        // An interval that touches zero is no evidence either.
        metrics["test_macro_f1_minus_majority_ci_low"] = 0
        #expect(StageComparison.warnings(test: metrics).count == 2)
        #expect(StageComparison.warnings(test: metrics)[1].contains("is not shown to beat the majority class's 0.1550"))
        // Both intervals above zero: nothing to warn about.
        metrics["test_macro_f1_minus_nograph_ci_low"] = 0.004
        metrics["test_macro_f1_minus_majority_ci_low"] = 0.12
        #expect(StageComparison.warnings(test: metrics).isEmpty)
    }

    @Test("patience stops a metric that improved and then stalled, however short of min_steps; one that never improved waits for min_steps")
    func minimumStepsAndPatience() {
        var progress = TrainingProgress()
        progress.epoch = 13
        progress.globalStep = 52
        progress.bestEpoch = 8
        progress.epochsWithoutImprovement = 5
        let improvedThenStalled = DataParallelTrainer.earlyStop(progress, metric: "val_loss", patience: 5, minSteps: 300, firstValidatedEpoch: 1)
        #expect(improvedThenStalled == "early stopping at epoch 13, step 52: val_loss has not improved for 5 epochs since epoch 8 "
                + "(before min_steps 300: that minimum holds only a run whose metric has not improved since its first validation)")
        progress.epochsWithoutImprovement = 4
        #expect(DataParallelTrainer.earlyStop(progress, metric: "val_loss", patience: 5, minSteps: 300, firstValidatedEpoch: 1) == nil,
                "patience has not run out")

        // Never better than the first validation: min_steps holds the run, then patience ends it.
        progress.bestEpoch = 1
        progress.epochsWithoutImprovement = 12
        #expect(DataParallelTrainer.earlyStop(progress, metric: "val_auc", patience: 5, minSteps: 300, firstValidatedEpoch: 1) == nil)
        progress.epoch = 75
        progress.globalStep = 300
        progress.epochsWithoutImprovement = 74
        #expect(DataParallelTrainer.earlyStop(progress, metric: "val_auc", patience: 5, minSteps: 300, firstValidatedEpoch: 1)
                == "early stopping at epoch 75, step 300: val_auc has not improved for 74 epochs since epoch 1, its first validation; "
                + "min_steps 300 kept the run going until now")
        // Validating every second epoch: epoch 2 is the first validation.
        progress.bestEpoch = 2
        #expect(DataParallelTrainer.earlyStop(progress, metric: "val_auc", patience: 5, minSteps: 900, firstValidatedEpoch: 2) == nil)
        #expect(DataParallelTrainer.earlyStop(progress, metric: "val_auc", patience: 0, minSteps: 0, firstValidatedEpoch: 1) == nil,
                "patience 0 turns early stopping off")
    }

    @Test("a real run whose validation loss stalls stops on patience long before a large min_steps")
    func realRunStopsOnPatience() throws {
        let job = try RunOutcomeTests.Job(epochs: 1)
        defer { try? FileManager.default.removeItem(at: job.directory) }
        let overrides = ["min_steps=3000", "early_stopping.metric=val_loss", "early_stopping.patience=2"]
        let summary = try TrainingJob.coordinate(
            JobRequest(configurationPath: job.configurationPath, overrides: overrides), world: SingleProcessCommunicator())
        #expect(summary.stoppedEarly)
        #expect(summary.steps < 3000, "\(summary.steps) steps")
        #expect(summary.evaluatedEpoch > 1, "the loss improved after the first validation")
        #expect(summary.epochsRun == summary.evaluatedEpoch + 2, "stopped two epochs after the best")
    }
}
