import Checkpoints
import CustomerData
import EventFileArguments
import Foundation
import Models
@testable import Scoring
import ScoringTestSupport
import Tensors
import Testing

@Suite("Batch scoring")
struct BatchScoringTests {
    @Test("batch scores equal a direct forward on the imported dataset's features")
    func matchesDirectForward() throws {
        let fixture = try ScoringFixture()
        try fixture.saveCheckpoint(step: 5, seed: 11)
        let model = try ScoringModel.load(root: fixture.root, run: "test")
        #expect(model.info.step == 5)
        let out = fixture.directory.path("scores.csv")
        // As of the dataset's cut-off the features equal the stored ones exactly.
        let summary = try BatchScoring.run(scorer: LSTMScorer(model: model), job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(),
            asOf: fixture.dataset.manifest.spec.cutoffDay, rules: ScoringRules(), output: out, batchSize: 64))
        #expect(summary.customers == fixture.dataset.customerCount)
        let rows = try readScoreCSV(out)
        let ids = try fixture.dataset.customerIDs()
        #expect(rows.map { $0["customer_id"]! } == ids)
        let direct = fixture.directScores(seed: 11)
        var worstChurn = 0.0, worstSpend = 0.0
        for (index, row) in rows.enumerated() {
            worstChurn = max(worstChurn, abs(Double(row["churn_probability"]!)! - direct.churn[index]))
            worstSpend = max(worstSpend, abs(Double(row["expected_spend"]!)! - direct.spend[index]) / max(1, direct.spend[index]))
            #expect(Int(row["history_periods"]!)! == Int(fixture.dataset.lengths[index]))
        }
        #expect(worstChurn < 2e-6, "worst churn difference \(worstChurn)")
        #expect(worstSpend < 2e-5, "worst relative spend difference \(worstSpend)")
        // The scores are not all alike, or the comparison above would prove little.
        let churns = rows.map { Double($0["churn_probability"]!)! }
        #expect(churns.max()! - churns.min()! > 0.05)
        // The temporary file was renamed into place: nothing half-written is left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.directory.url.path).allSatisfy { !$0.hasPrefix(".tmp-") })
    }

    @Test("with a verify key, only checkpoints that key signed are scored")
    func signedCheckpointsOnly() throws {
        let fixture = try ScoringFixture(customers: 30)
        let key = try CheckpointSigningKey(bytes: Array(repeating: 3, count: 32))
        let other = try CheckpointSigningKey(bytes: Array(repeating: 4, count: 32))
        try fixture.saveCheckpoint(step: 1, seed: 1)
        #expect(throws: ScoringError.self) { try ScoringModel.load(root: fixture.root, run: "test", verifyKey: key) }
        try fixture.saveCheckpoint(step: 2, seed: 1, signingKey: other)
        #expect(throws: ScoringError.self) { try ScoringModel.load(root: fixture.root, run: "test", verifyKey: key) }
        try fixture.saveCheckpoint(step: 3, seed: 1, signingKey: key)
        #expect(try ScoringModel.load(root: fixture.root, run: "test", verifyKey: key).info.step == 3)
        // Without a key, signed and unsigned checkpoints load alike.
        #expect(try ScoringModel.load(root: fixture.root, run: "test", step: 1).info.step == 1)
    }

    @Test("a stage head gives every customer a model stage (its argmax), unless the rules ask for the rule")
    func stageHeadGivesStages() throws {
        let fixture = try ScoringFixture(customers: 120)
        try fixture.saveCheckpoint(step: 1, seed: 9, heads: fixture.architecture(clvLoss: .ziln, stageCount: 4))
        let scorer = LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test"))
        #expect(scorer.stageCount == 4)
        let names = fixture.dataset.manifest.stageNames
        let out = fixture.directory.path("stages.csv")
        _ = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                 rules: ScoringRules(), output: out))
        let rows = try readScoreCSV(out)
        for row in rows {
            #expect(row["stage_source"] == "lstm")
            let probabilities = names.map { Double(row["p_\($0)"]!)! }
            #expect(abs(probabilities.reduce(0, +) - 1) < 1e-5)
            #expect(row["stage"] == names[probabilities.indices.max { probabilities[$0] < probabilities[$1] }!])
        }
        // Untrained weights put most customers in one stage, but the probabilities must move
        // with the customer, or the comparison above would prove little.
        let firstStage = rows.map { Double($0["p_\(names[0])"]!)! }
        #expect(firstStage.max()! - firstStage.min()! > 0.02, "stage probabilities barely differ between customers")

        var rules = ScoringRules()
        rules.stageRule = true
        _ = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                 rules: rules, output: out))
        #expect(try readScoreCSV(out).allSatisfy { $0["stage_source"] == "rule" })
    }

    @Test("any number of threads writes the same bytes as one", arguments: [2, 3, 8])
    func threadsGiveTheSameOutput(threads: Int) throws {
        let fixture = try ScoringFixture(customers: 150)
        try fixture.saveCheckpoint(step: 1, seed: 4)
        let scorer = LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test"))
        let one = fixture.directory.path("one.csv"), many = fixture.directory.path("many.csv")
        // Batches of 7: many of them, and a short last one (the forward's small-batch path).
        let a = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                     rules: ScoringRules(), output: one, batchSize: 7, threads: 1))
        let b = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                     rules: ScoringRules(), output: many, batchSize: 7, threads: threads))
        #expect(a.customers > 100 && a.customers % 7 != 0)
        #expect(b.threads == threads)
        #expect(try Data(contentsOf: URL(fileURLWithPath: one)) == Data(contentsOf: URL(fileURLWithPath: many)))
    }

    @Test("JSON Lines output carries the same scores as CSV, and the default as-of day is the last event's")
    func jsonLinesAndDefaultDay() throws {
        let fixture = try ScoringFixture(customers: 120)
        try fixture.saveCheckpoint(step: 1, seed: 3)
        let scorer = LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test"))
        let csv = fixture.directory.path("s.csv"), jsonl = fixture.directory.path("s.jsonl")
        let a = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                     rules: ScoringRules(), output: csv))
        let b = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                     rules: ScoringRules(), output: jsonl))
        // The importer derived its cut-off as the last event day minus the horizon.
        #expect(a.asOfDay == fixture.dataset.manifest.spec.cutoffDay + fixture.dataset.manifest.spec.horizonDays)
        #expect(a.asOfDay == b.asOfDay)
        let rows = try readScoreCSV(csv)
        let lines = try String(contentsOfFile: jsonl, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == rows.count)
        for (row, line) in zip(rows, lines) {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            #expect(object["customer_id"] as? String == row["customer_id"])
            #expect(abs((object["churn_probability"] as! Double) - Double(row["churn_probability"]!)!) < 1e-9)
            #expect(object["action"] as? String == row["action"])
            let stages = object["stage_probabilities"] as! [String: Double]
            #expect(abs(stages.values.reduce(0, +) - 1) < 1e-5)
        }
    }

    @Test("bad inputs are refused with a message that names them")
    func refusals() throws {
        let fixture = try ScoringFixture(customers: 60)
        try fixture.saveCheckpoint(step: 1, seed: 3)
        let scorer = LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test"))
        #expect(throws: ScoringError.self) {
            try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(), asOf: nil,
                                 rules: ScoringRules(), output: fixture.directory.path("scores.txt")))
        }
        do {
            _ = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: fixture.directory.path("missing.csv"), options: EventFileOptions(),
                                     asOf: nil, rules: ScoringRules(), output: fixture.directory.path("s.csv")))
            Issue.record("a missing events file was accepted")
        } catch let error as ScoringError {
            #expect(error.description.contains("missing.csv"))
        }
        #expect(throws: DataError.self) { try EventFileOptions(preset: .cdnow, customerCol: "x") }
        // Presets and time formats are enums to the argument parser: a misspelt one fails there.
        #expect(throws: (any Error).self) { try EventFileArguments.parse(["--preset", "nope"]) }
        #expect(throws: (any Error).self) { try EventFileArguments.parse(["--time-format", "yyyy"]) }
        #expect(try EventFileArguments.parse(["--preset", "cdnow"]).options().preset == .cdnow)
        #expect(!FileManager.default.fileExists(atPath: fixture.directory.path("s.csv")))
    }

    @Test("a damaged or foreign checkpoint is refused")
    func checkpointRefusals() throws {
        let fixture = try ScoringFixture(customers: 60)
        let good = try fixture.saveCheckpoint(step: 1, seed: 3)
        // A flipped byte: the store's SHA-256 check must catch it.
        let file = good.appendingPathComponent("model.safetensors")
        var bytes = try Data(contentsOf: file)
        bytes[bytes.count - 3] ^= 0x40
        try bytes.write(to: file)
        #expect(throws: ScoringError.self) { try ScoringModel.load(directory: good) }
        // A manifest that describes another model size: the tensors do not fit.
        try fixture.saveCheckpoint(step: 2, seed: 3, configurationOverride: [
            "architecture": [
                "kind": "lstm", "inputSize": 8, "hiddenSize": 16, "layers": 2,
                "historyLength": .number(Double(fixture.dataset.historyLength)), "classCount": 4, "clvLoss": "log_mse",
                "stageCount": 0, "customerHidden": 0, "positiveWeight": 1,
            ],
        ])
        do {
            _ = try ScoringModel.load(root: fixture.root, run: "test", step: 2)
            Issue.record("a checkpoint with mismatched tensor shapes was accepted")
        } catch let error as ScoringError {
            #expect(error.description.contains("lstm.weight_ih_l0"))
        }
        // A damaged manifest asking for a billion hidden units is refused before anything is sized from it.
        var huge = fixture.architecture()
        huge.hiddenSize = 1_000_000_000
        try fixture.saveCheckpoint(step: 3, seed: 3, configurationOverride: [
            "architecture": try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(huge)),
        ])
        do {
            _ = try ScoringModel.load(root: fixture.root, run: "test", step: 3)
            Issue.record("a checkpoint with a billion hidden units was accepted")
        } catch let error as ScoringError {
            #expect(error.description.contains("outside what this program scores"))
        }
    }
}

@Suite("Rules")
struct RulesTests {
    let rules = ScoringRules()

    @Test("actions follow the documented order on hand cases")
    func actions() {
        #expect(rules.action(churnProbability: 0.6, expectedSpend: 100, historyPeriods: 20, highValueLine: 100) == "retention_offer")
        #expect(rules.action(churnProbability: 0.9, expectedSpend: 99.9, historyPeriods: 20, highValueLine: 100) == "winback_email")
        #expect(rules.action(churnProbability: 0.59, expectedSpend: 150, historyPeriods: 2, highValueLine: 100) == "upsell")
        #expect(rules.action(churnProbability: 0.2, expectedSpend: 10, historyPeriods: 4, highValueLine: 100) == "onboarding")
        #expect(rules.action(churnProbability: 0.2, expectedSpend: 10, historyPeriods: 5, highValueLine: 100) == "nurture")
        // High risk wins over being new.
        #expect(rules.action(churnProbability: 0.7, expectedSpend: 10, historyPeriods: 1, highValueLine: 100) == "winback_email")
    }

    @Test("rule stages and their probabilities")
    func stages() {
        let churned = rules.ruleStage(churnProbability: 0.8, expectedSpend: 500, highValueLine: 100)
        #expect(churned.index == 0)
        #expect(churned.probabilities == [0.8, 0, 0, 1 - 0.8])
        #expect(rules.ruleStage(churnProbability: 0.1, expectedSpend: 100, highValueLine: 100).index == 3)
        #expect(rules.ruleStage(churnProbability: 0.1, expectedSpend: 25, highValueLine: 100).index == 2)
        #expect(rules.ruleStage(churnProbability: 0.1, expectedSpend: 24.9, highValueLine: 100).index == 1)
    }

    @Test("the high-value line is the top fraction's lowest spend, or the configured amount")
    func highValueLine() throws {
        let spends: [Float] = (1...10).map { Float($0) }
        #expect(rules.highValueLine(spends: spends) == 9)
        var fixed = ScoringRules()
        fixed.highValueAmount = 3.5
        #expect(fixed.highValueLine(spends: spends) == 3.5)
        let parsed = try ScoringRules.parse("high_churn: 0.7\nhigh_value_amount: 250\n", source: "r.yaml")
        #expect(parsed.highChurn == 0.7 && parsed.highValueAmount == 250 && parsed.newCustomerMaxPeriods == 4)
        let json = try ScoringRules.parse("{\"new_customer_max_periods\": 2}", source: "r.json")
        #expect(json.newCustomerMaxPeriods == 2)
    }

    @Test("rules files with unknown keys or bad values are refused by key")
    func badRules() {
        for (text, key) in [("high_chrun: 0.7", "high_chrun"), ("high_churn: 1.5", "high_churn"),
                            ("high_churn: lots", "high_churn"), ("high_value_top_fraction: 0", "high_value_top_fraction")] {
            do {
                _ = try ScoringRules.parse(text, source: "rules.yaml")
                Issue.record("accepted \(text)")
            } catch let error as ScoringError {
                #expect(error.description.contains(key), "\(error)")
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
    }
}

@Suite("Inference LSTM")
struct InferenceLSTMTests {
    @Test("matches LSTMModel.forward for odd sizes, three layers, mixed lengths and every head layout",
          arguments: [(5, 3, 7, CLVLoss.logMSE, 0, 0), (50, 2, 39, CLVLoss.ziln, 4, 16), (7, 2, 11, CLVLoss.ziln, 0, 3), (6, 1, 5, CLVLoss.logMSE, 3, 0)])
    func matchesTrainingForward(hidden: Int, layers: Int, steps: Int, clvLoss: CLVLoss, stages: Int, customerUnits: Int) {
        let configuration = LSTMConfiguration(
            inputSize: 8, hiddenSize: hidden, layers: layers, clvLoss: clvLoss, stageCount: stages, customerHidden: customerUnits)
        let reference = LSTMModel(configuration: configuration, seed: UInt64(hidden))
        var weights: [String: [Float]] = [:]
        for slice in reference.parameters.layout.slices { weights[slice.name] = reference.parameters.valueArray(slice.name)! }
        let batch = 13
        var random = SeededRandom(seed: 99, purpose: .initialisation)
        let features = (0..<batch * steps * 8).map { _ in random.nextFloat(in: -2, 2) }
        let lengths = (0..<batch).map { Int32(1 + $0 * 7 % steps) }
        features.withUnsafeBufferPointer { f in
            lengths.withUnsafeBufferPointer { l in
                reference.forward(SequenceBatch(features: f.baseAddress!, lengths: l.baseAddress!, batchSize: batch, steps: steps),
                                  training: false, random: &random)
                let width = configuration.heads.width
                var outputs = [Float](repeating: .nan, count: batch * width)
                InferenceLSTM(configuration: configuration, weights: weights).forward(
                    features: f.baseAddress!, lengths: l.baseAddress!, batch: batch, steps: steps,
                    workspace: InferenceWorkspace(), outputs: &outputs)
                #expect(reference.headOutputs.count == outputs.count)
                for index in outputs.indices {
                    #expect(abs(outputs[index] - reference.headOutputs[index]) < 1e-5,
                            "customer \(index / width) output \(index % width)")
                }
            }
        }
    }
}

@Test("numbers are written with six decimals, trailing zeros trimmed")
func numberFormatting() {
    #expect(formatNumber(0.5) == "0.5")
    #expect(formatNumber(0) == "0.0")
    #expect(formatNumber(12.0000004) == "12.0")
    #expect(formatNumber(0.0000015) == "0.000002")
    #expect(formatNumber(-3.25) == "-3.25")
    #expect(formatNumber(0.123456789) == "0.123457")
    #expect(formatNumber(.nan) == "0")
}

@Test("stage names that would break a CSV column, a JSON key or a line are refused")
func stageNamesThatBreakOutputAreRefused() {
    #expect(stageNamesProblem(["churned", "occasional", "regular", "loyal"]) == nil)
    #expect(stageNamesProblem(["churned", "lo,yal\n"])?.contains("\"lo,yal\\n\"") == true)
    #expect(stageNamesProblem(["a\"b"]) != nil)
    #expect(stageNamesProblem([""]) != nil)
    #expect(stageNamesProblem([String(repeating: "x", count: 65)]) != nil)
    #expect(stageNamesProblem(["loyal", "loyal"]) == "repeat a name")
}
