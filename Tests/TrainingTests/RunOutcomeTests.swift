import Checkpoints
import Collectives
import CustomerData
import Foundation
import ModelMetrics
import Models
import Scoring
import Testing
@testable import Training

/// A whole training job in one process (the single-process communicator is the -np 1 path):
/// what the test split is scored with, what the checkpoint says, and what scoring reads back.
@Suite("Training run outcome", .serialized)
struct RunOutcomeTests {
    /// A synthetic dataset and a configuration whose best validation is, by construction, the
    /// first epoch: `val_customers` never changes, so no later epoch can beat it.
    struct Job {
        let directory: URL
        let dataset: CustomerDataset
        let configurationPath: String

        init(epochs: Int = 3, lstmSection: String = "", importOptions: ImportOptions = ImportOptions()) throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("clm-run-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let events = directory.appendingPathComponent("events.csv").path
            _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 500, products: 40, seed: 19), to: events)
            let data = directory.appendingPathComponent("data").path
            _ = try Importer.run(input: events, output: data, options: importOptions)
            dataset = try CustomerDataset.open(at: URL(fileURLWithPath: data))
            configurationPath = directory.appendingPathComponent("lstm.yaml").path
            let yaml = """
                model: lstm
                data: \(data)
                checkpoints: \(directory.appendingPathComponent("checkpoints").path)
                run: outcome
                epochs: \(epochs)
                min_steps: 0
                batch_size: 32
                learning_rate: 0.01
                keep_checkpoints: 10
                early_stopping:
                  metric: val_customers
                  patience: 0
                lstm:
                  hidden: 8
                  layers: 1
                \(lstmSection)
                """
            try yaml.write(toFile: configurationPath, atomically: true, encoding: .utf8)
        }

        func run() throws -> TrainingSummary {
            try TrainingJob.coordinate(JobRequest(configurationPath: configurationPath), world: SingleProcessCommunicator())
        }

        var store: CheckpointStore {
            get throws { try CheckpointStore(root: directory.appendingPathComponent("checkpoints"), run: "outcome") }
        }
    }

    @Test("with earlier cut-offs the LSTM trains on their examples too, and is judged on the same customers against the same baselines")
    func earlierCutoffsAddTrainingExamplesOnly() throws {
        var options = ImportOptions()
        options.snapshots = 3
        options.snapshotEveryPeriods = 4
        let plain = try Job(epochs: 1), withEarlier = try Job(epochs: 1, importOptions: options)
        defer {
            try? FileManager.default.removeItem(at: plain.directory)
            try? FileManager.default.removeItem(at: withEarlier.directory)
        }
        let one = try plain.run(), three = try withEarlier.run()
        let train = plain.dataset.indices(in: .train).count
        let examples = try withEarlier.dataset.snapshotDatasets().map(\.customerCount)
        #expect(examples.count == 2 && examples.allSatisfy { $0 > 0 && $0 <= train })
        // One epoch over batches of 32: the steps count the examples trained on.
        #expect(one.steps == (train + 31) / 32)
        #expect(three.steps == (train + examples.reduce(0, +) + 31) / 32)
        for key in ["val_customers", "test_customers", "val_bgnbd_auc", "test_bgnbd_auc", "test_bgnbd_clv_rmse", "test_logistic_auc"] {
            let a = one.lastValidation[key] ?? one.test[key], b = three.lastValidation[key] ?? three.test[key]
            #expect(a != nil && a == b, "\(key): \(a ?? .nan) with one cut-off, \(b ?? .nan) with three")
        }
        // XGBoost, the strongest baseline, learns from the same examples as the LSTM.
        func boostingTrainRows(_ job: Job) throws -> Int? {
            let files = FileManager.default.enumerator(at: job.directory, includingPropertiesForKeys: nil)?
                .compactMap { $0 as? URL }.filter { $0.lastPathComponent == "xgboost_baseline.json" } ?? []
            let record = try JSONSerialization.jsonObject(with: Data(contentsOf: try #require(files.first))) as? [String: Any]
            return record?["train_rows"] as? Int
        }
        #expect(try boostingTrainRows(plain) == train)
        #expect(try boostingTrainRows(withEarlier) == train + examples.reduce(0, +))
    }

    @Test("the test split is scored with the best checkpoint, which scoring loads by default and scores alike")
    func bestCheckpointIsTheOneEvaluatedAndServed() throws {
        let job = try Job()
        defer { try? FileManager.default.removeItem(at: job.directory) }
        let summary = try job.run()
        let store = try job.store
        let steps = summary.steps
        #expect(summary.evaluatedBest && summary.evaluatedEpoch == 1)
        #expect(try store.bestStep() == summary.evaluatedStep)
        #expect(try store.latestStep() == steps && steps > summary.evaluatedStep, "the last model is a later step")

        // Scoring's default is the best step; its architecture is the one training wrote.
        let model = try ScoringModel.load(root: store.root, run: "outcome")
        #expect(model.info.step == summary.evaluatedStep)
        #expect(model.configuration.clvLoss == .ziln && model.configuration.stageCount == 4 && model.configuration.hiddenSize == 8)

        // Its churn AUC on the test customers is the run's test AUC.
        let test = job.dataset.indices(in: .test)
        let scorer = LSTMScorer(model: model)
        var churn = [Float](repeating: 0, count: test.count), spend = churn
        var features: [Float] = []
        for customer in test { features += job.dataset.features(of: customer) }
        let lengths = test.map { job.dataset.lengths[$0] }
        scorer.score(features: features, lengths: lengths, count: test.count, churn: &churn, spend: &spend)
        let auc = rocAUC(scores: churn.map(Double.init), labels: test.map { job.dataset.churn[$0] >= 0.5 })
        let reported = try #require(summary.test["test_auc"])
        #expect(abs(auc! - reported) < 1e-6, "scoring the best checkpoint gives AUC \(auc!), the run reported \(reported)")
        // And the last model is a different one, so the check above could fail.
        let last = try ScoringModel.load(root: store.root, run: "outcome", step: steps)
        #expect(last.weights != model.weights)
    }

    @Test("each checkpoint carries a drift reference; scoring events exported in cents instead of dollars flags the two spend features and no other")
    func driftFlagsShiftedFeaturesOnly() throws {
        let job = try Job(epochs: 2)
        defer { try? FileManager.default.removeItem(at: job.directory) }
        _ = try job.run()
        let model = try ScoringModel.load(root: try job.store.root, run: "outcome")
        let reference = try #require(model.drift)
        #expect(reference.features.map(\.name) == customerFeatureNames && reference.scores.map(\.name) == DriftReference.scoreNames)
        #expect(reference.features.allSatisfy { abs($0.fractions.reduce(0, +) - 1) < 1e-9 })

        // The same events, and a copy exported in cents: every amount times 100.
        let events = job.directory.appendingPathComponent("events.csv").path
        let lines = try String(contentsOfFile: events, encoding: .utf8).split(separator: "\n")
        let amount = try #require(lines[0].split(separator: ",").firstIndex(of: "amount"))
        var shiftedText = String(lines[0]) + "\n"
        for line in lines.dropFirst() {
            var fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            fields[amount] = String(100 * Double(fields[amount])!)
            shiftedText += fields.joined(separator: ",") + "\n"
        }
        let shiftedEvents = job.directory.appendingPathComponent("shifted.csv").path
        try shiftedText.write(toFile: shiftedEvents, atomically: true, encoding: .utf8)

        let asOf = job.dataset.manifest.spec.cutoffDay
        func drift(_ path: String) throws -> [String: Double] {
            let summary = try BatchScoring.run(scorer: LSTMScorer(model: model), job: BatchScoringJob(events: path, options: EventFileOptions(), asOf: asOf, rules: ScoringRules(),
                output: job.directory.appendingPathComponent("scores-\(UUID().uuidString).csv").path))
            return Dictionary(uniqueKeysWithValues: summary.drift.filter { $0.kind == .feature }.map { ($0.name, $0.psi) })
        }
        let original = try drift(events), shifted = try drift(shiftedEvents)
        #expect(original.count == customerFeatureNames.count)
        #expect(original.values.allSatisfy { $0 < 0.1 }, "the training events are stable: \(original)")
        let spendFeatures: Set = ["log1p_spend", "log1p_mean_spend_per_transaction"]
        for (name, psi) in shifted {
            if spendFeatures.contains(name) {
                #expect(psi > 0.2, "\(name) shifted but reads \(psi)")
            } else {
                #expect(psi < 0.1 && abs(psi - original[name]!) < 1e-12, "\(name) did not shift but reads \(psi) (was \(original[name]!))")
            }
        }
    }

    @Test("every LSTM run ends with the baselines on the same customers, and warns where the model loses")
    func baselinesAreReported() throws {
        let job = try Job(epochs: 1)
        defer { try? FileManager.default.removeItem(at: job.directory) }
        let summary = try job.run()
        for key in ["test_bgnbd_auc", "test_bgnbd_clv_rmse", "test_bgnbd_spend_spearman", "test_logistic_auc",
                    "val_logistic_auc", "test_auc_ci_low", "test_auc_ci_high", "test_auc_minus_bgnbd_ci_low",
                    "test_xgboost_auc", "test_xgboost_log_loss", "test_xgboost_clv_rmse", "val_xgboost_auc",
                    "test_auc_minus_xgboost_ci_low", "test_clv_rmse_minus_xgboost_ci_high"] {
            let value = summary.test[key] ?? summary.lastValidation[key]
            #expect(value?.isFinite == true, "\(key) missing")
        }
        #expect(summary.test["test_auc_ci_low"]! <= summary.test["test_auc"]! && summary.test["test_auc"]! <= summary.test["test_auc_ci_high"]!)
        // The stage head is reported next to always answering the training split's commonest stage.
        let train = job.dataset.indices(in: .train), test = job.dataset.indices(in: .test)
        let counts = (0..<4).map { stage in train.filter { job.dataset.stage[$0] == Int32(stage) }.count }
        let majority = counts.indices.max { counts[$0] < counts[$1] }!
        let majorityShare = Double(test.filter { job.dataset.stage[$0] == Int32(majority) }.count) / Double(test.count)
        #expect(abs(summary.test["test_stage_majority_accuracy"]! - majorityShare) < 1e-12)
        #expect(summary.test["test_stage_macro_f1"] != nil)
        let report = try #require(summary.baselines)
        // A model far below the floor is called out, naming the floor.
        let weak = report.warnings(modelValidation: ["val_auc": report.validation["val_logistic_auc"]! - 0.1], modelTest: [:])
        #expect(weak.contains { $0.contains("logistic floor") })
        let strong = report.warnings(modelValidation: ["val_auc": report.validation["val_logistic_auc"]!], modelTest: [:])
        #expect(!strong.contains { $0.contains("logistic floor") })
        // Where XGBoost beats the model on a test metric, the run says so, naming it.
        let beaten = report.warnings(modelValidation: [:], modelTest: ["test_auc": report.test["test_xgboost_auc"]! - 0.01])
        #expect(beaten.contains { $0.contains("test auc") && $0.contains("XGBoost") })
    }

    @Test("--resume latest refuses a damaged newest checkpoint naming the file; latest-valid resumes from the newest that verifies")
    func resumeFallsBackToTheLastGoodStep() throws {
        let job = try Job(epochs: 2)
        defer { try? FileManager.default.removeItem(at: job.directory) }
        _ = try job.run()
        let store = try job.store
        let newest = try #require(try store.latestStep())
        let older = try #require(try store.steps().filter { $0 < newest }.last)
        let model = store.directory(step: newest).appendingPathComponent("model.safetensors")
        var bytes = try Data(contentsOf: model)
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: model)
        func resume(_ from: String) throws -> TrainingSummary {
            try TrainingJob.coordinate(JobRequest(configurationPath: job.configurationPath, overrides: ["epochs=3"], resume: from),
                                       world: SingleProcessCommunicator())
        }

        let refusal = #expect(throws: (any Error).self) { try resume("latest") }
        #expect("\(String(describing: refusal))".contains("model.safetensors"), "\(String(describing: refusal))")

        let summary = try resume("latest-valid")
        // Resumed from the older step: the damaged one was moved aside, not trained over.
        let aside = store.runDirectory.appendingPathComponent("damaged-" + store.directory(step: newest).lastPathComponent)
        #expect(FileManager.default.fileExists(atPath: aside.appendingPathComponent("model.safetensors").path))
        #expect(summary.epochsRun == 2, "epochs 2 and 3 after resuming from the end of epoch 1 (step \(older))")
        let final = try #require(try store.latestStep())
        #expect(final > newest)
        _ = try store.load(step: final, requiring: ["model.safetensors"])
    }

    @Test("a run given a signing key signs every checkpoint, and scoring with the key accepts them")
    func signedRun() throws {
        let job = try Job(epochs: 1)
        defer { try? FileManager.default.removeItem(at: job.directory) }
        let keyPath = job.directory.appendingPathComponent("signing.key").path
        try Data((0..<32).map { UInt8($0) }).write(to: URL(fileURLWithPath: keyPath))
        _ = try TrainingJob.coordinate(
            JobRequest(configurationPath: job.configurationPath, signingKeyPath: keyPath), world: SingleProcessCommunicator())
        let key = try CheckpointSigningKey.load(path: keyPath)
        let store = try job.store
        for step in try store.steps() {
            try CheckpointStore.verifySignature(of: store.load(step: step), key: key)
        }
        #expect(try ScoringModel.load(root: store.root, run: "outcome", verifyKey: key).info.step == store.bestStep())
        // A missing key file stops the job before it trains, with the key's error as the reason.
        let notStarted = #expect(throws: JobDidNotStart.self) {
            try TrainingJob.coordinate(
                JobRequest(configurationPath: job.configurationPath, overrides: ["run=other"], signingKeyPath: keyPath + ".missing"),
                world: SingleProcessCommunicator())
        }
        #expect(notStarted?.reason is CheckpointError, "\(String(describing: notStarted))")
    }

    @Test("a graph run reports its no-graph ablation and the majority class with intervals, and the ablation leaves the model alone")
    func graphRunReportsItsAblation() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("clm-gnn-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let events = directory.appendingPathComponent("events.csv").path
        _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 400, products: 40, seed: 23), to: events)
        var options = ImportOptions()
        options.format.mapping.product = .name("product_id")
        let data = directory.appendingPathComponent("data").path
        _ = try Importer.run(input: events, output: data, options: options)
        let configuration = directory.appendingPathComponent("gnn.yaml").path
        try """
            model: gnn
            data: \(data)
            checkpoints: \(directory.appendingPathComponent("checkpoints").path)
            run: with-ablation
            epochs: 2
            min_steps: 0
            batch_size: 32
            gnn:
              hidden: 8
              fanouts: [5, 3]
            """.write(toFile: configuration, atomically: true, encoding: .utf8)
        let withAblation = try TrainingJob.coordinate(JobRequest(configurationPath: configuration), world: SingleProcessCommunicator())
        for name in ["macro_f1", "accuracy", "nograph_macro_f1", "majority_macro_f1", "xgboost_macro_f1", "macro_f1_minus_xgboost"] {
            if name.contains("minus") {
                let low = try #require(withAblation.test["test_\(name)_ci_low"], "\(name)")
                let high = try #require(withAblation.test["test_\(name)_ci_high"], "\(name)")
                #expect(low <= high)
                continue
            }
            let low = try #require(withAblation.test["test_\(name)_ci_low"], "\(name)")
            let high = try #require(withAblation.test["test_\(name)_ci_high"], "\(name)")
            let point = try #require(withAblation.test["test_" + name], "\(name)")
            #expect(low <= point && point <= high, "\(name): \(point) outside \(low)...\(high)")
        }
        // The run warns exactly where a paired interval does not lie above zero.
        let nographLow = try #require(withAblation.test["test_macro_f1_minus_nograph_ci_low"])
        let majorityLow = try #require(withAblation.test["test_macro_f1_minus_majority_ci_low"])
        #expect(withAblation.warnings.contains { $0.contains("its no-graph ablation's") } == (nographLow <= 0), "\(withAblation.warnings)")
        #expect(withAblation.warnings.contains { $0.contains("the majority class's") } == (majorityLow <= 0), "\(withAblation.warnings)")
        #expect(withAblation.lastValidation["val_nograph_macro_f1"] != nil)
        // XGBoost's stage baseline is warned about exactly when it beats the model on test macro-F1.
        let boosted = try #require(withAblation.test["test_xgboost_macro_f1"])
        #expect(withAblation.warnings.contains { $0.contains("XGBoost on the customer's") } == (boosted > withAblation.test["test_macro_f1"]!),
                "\(withAblation.warnings)")
        let without = try TrainingJob.coordinate(
            JobRequest(configurationPath: configuration, overrides: ["run=without-ablation", "gnn.ablation=false"]),
            world: SingleProcessCommunicator())
        #expect(without.test["test_nograph_macro_f1"] == nil)
        #expect(without.parameterChecksum == withAblation.parameterChecksum, "training the ablation changed the model")
        #expect(without.test["test_macro_f1"] == withAblation.test["test_macro_f1"])
    }

    @Test("a run shorter than min_steps is lengthened, and patience cannot stop it before them while its metric has not improved")
    func minimumStepsLengthenShortRuns() throws {
        let job = try Job(epochs: 1)
        defer { try? FileManager.default.removeItem(at: job.directory) }
        let overrides = ["min_steps=40", "early_stopping.patience=1"]
        let summary = try TrainingJob.coordinate(
            JobRequest(configurationPath: job.configurationPath, overrides: overrides), world: SingleProcessCommunicator())
        #expect(summary.steps >= 40, "\(summary.steps) steps")
        #expect(!summary.stoppedEarly || summary.steps >= 40)
    }
}
