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
}

/// The test split's predictions of one run.
public enum TestPredictions: Sendable, Equatable {
    case churn([ChurnPrediction])
    case stages([StagePrediction], classCount: Int)

    public var count: Int {
        switch self {
        case .churn(let rows): return rows.count
        case .stages(let rows, _): return rows.count
        }
    }
}

/// Everything the report reads from one run directory: the newest checkpoint's manifest, the
/// metrics log and the test predictions.
public struct TrainingRun: Sendable {
    public var directory: URL
    /// Name of the checkpoint directory the report describes (`step-000123`): the one `best`
    /// names (the model the test metrics are of), else `latest`'s.
    public var checkpointName: String
    /// The pointer file `checkpointName` came from: `best` or `latest`.
    public var pointerName: String
    public var manifest: CheckpointManifest
    public var log: MetricsLog
    public var predictions: TestPredictions
    /// Stage names from the dataset manifest inside the checkpoint's feature spec, by class index.
    public var stageNames: [String]

    public static let metricsLogName = "metrics.jsonl"
    public static let predictionsName = "test_predictions.csv"

    /// Loads a run directory; every error names the file (and line) at fault.
    public static func load(directory: URL) throws(ReportError) -> TrainingRun {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ReportError(file: directory.relativePath, "is not a run directory")
        }
        let (pointerName, checkpointName, manifest) = try readServedManifest(directory)
        let log = try MetricsLog.read(directory.appendingPathComponent(metricsLogName))
        let stageNames = try readStageNames(manifest, source: directory.appendingPathComponent(checkpointName)
            .appendingPathComponent(CheckpointManifest.fileName).relativePath)
        let predictionsURL = directory.appendingPathComponent(predictionsName)
        guard FileManager.default.fileExists(atPath: predictionsURL.path) else {
            // Runs trained before training wrote its test predictions have none; say so, since
            // the fix (train again) is not obvious from "does not exist" alone.
            throw ReportError(file: predictionsURL.relativePath, "does not exist (training writes it after the test evaluation; a run from an older build has none: train it again)")
        }
        let predictions = try readPredictions(predictionsURL, model: manifest.modelKind, stageNames: stageNames)
        return TrainingRun(directory: directory, checkpointName: checkpointName, pointerName: pointerName, manifest: manifest, log: log,
                           predictions: predictions, stageNames: stageNames)
    }

    /// Follows `best` (else `latest`) to a checkpoint and decodes its manifest (without reading
    /// the tensors: the report needs none of them).
    static func readServedManifest(_ directory: URL) throws(ReportError) -> (String, String, CheckpointManifest) {
        let pointerName = FileManager.default.fileExists(atPath: directory.appendingPathComponent(CheckpointStore.bestFileName).path)
            ? CheckpointStore.bestFileName : CheckpointStore.latestFileName
        let pointer = directory.appendingPathComponent(pointerName)
        let name = try readText(pointer).trimmingCharacters(in: .whitespacesAndNewlines)
        guard CheckpointStore.step(directoryName: name) != nil else {
            throw ReportError(file: pointer.relativePath, line: 1, "should name a checkpoint directory like step-000123, found \"\(name.prefix(80))\"")
        }
        let manifestURL = directory.appendingPathComponent(name).appendingPathComponent(CheckpointManifest.fileName)
        let data: Data
        do {
            data = try Data(contentsOf: manifestURL)
        } catch {
            throw ReportError(file: manifestURL.relativePath, "cannot be read (\(pointerName) names \(name))")
        }
        do {
            return (pointerName, name, try CheckpointManifest(jsonData: data, source: manifestURL.relativePath))
        } catch {
            throw ReportError(file: manifestURL.relativePath, "\(error)".replacingOccurrences(of: "checkpoint: invalid manifest \(manifestURL.relativePath): ", with: ""))
        }
    }

    /// Stage names by class index: the dataset manifest (the checkpoint's feature spec) lists them.
    static func readStageNames(_ manifest: CheckpointManifest, source: String) throws(ReportError) -> [String] {
        guard let value = manifest.featureSpec["stageNames"] else { return [] }
        guard case .array(let items) = value else {
            throw ReportError(file: source, "featureSpec.stageNames is not an array")
        }
        var names: [String] = []
        for (index, item) in items.enumerated() {
            guard case .string(let name) = item else {
                throw ReportError(file: source, "featureSpec.stageNames[\(index)] is not a string")
            }
            names.append(name)
        }
        return names
    }

    /// Reads `test_predictions.csv`, checking that its columns fit the manifest's model kind.
    static func readPredictions(_ url: URL, model: ModelKind, stageNames: [String]) throws(ReportError) -> TestPredictions {
        let table = try CSVTable.read(url)
        let source = url.relativePath
        switch model {
        case .lstm:
            if !table.header.contains("churn_probability") && table.header.contains("predicted_stage") {
                throw ReportError(file: source, line: 1, "has the graph model's columns, but the checkpoint is an LSTM")
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
                    throw ReportError(file: source, line: fields.line, "churn_label: \(churned) is neither 0 nor 1")
                }
                let p = try table.number(fields, probability)
                guard (0...1).contains(p) else {
                    throw ReportError(file: source, line: fields.line, "churn_probability: \(p) is outside [0, 1]")
                }
                var stages: (Int, Int)? = nil
                if let stage, let predictedStage {
                    let truth = try table.integer(fields, stage), guess = try table.integer(fields, predictedStage)
                    for (name, value) in [("stage", truth), ("predicted_stage", guess)] where !(0..<max(stageCount, 1)).contains(value) {
                        throw ReportError(file: source, line: fields.line, "\(name): \(value) is not a stage index below \(stageCount)")
                    }
                    stages = (truth, guess)
                }
                predictions.append(ChurnPrediction(
                    datasetRow: try table.integer(fields, row), churned: churned == 1, probability: p,
                    spend: try table.number(fields, spend), expectedSpend: try table.number(fields, expected),
                    stage: stages?.0, predictedStage: stages?.1))
            }
            if predictions.isEmpty { throw ReportError(file: source, "has a header but no predictions") }
            return .churn(predictions)
        case .gnn:
            if table.header.contains("churn_probability") {
                throw ReportError(file: source, line: 1, "has the LSTM's columns, but the checkpoint is a graph model")
            }
            let row = try table.column("dataset_row"), stage = try table.column("stage")
            let predicted = try table.column("predicted_stage")
            let classCount = table.header.filter { $0.hasPrefix("p_stage_") }.count
            guard classCount > 0 else { throw ReportError(file: source, line: 1, "no p_stage_* columns") }
            if !stageNames.isEmpty && stageNames.count != classCount {
                throw ReportError(file: source, line: 1,
                                  "\(classCount) p_stage_* columns, but the manifest names \(stageNames.count) stages")
            }
            var predictions: [StagePrediction] = []
            for fields in table.rows {
                let truth = try table.integer(fields, stage), guess = try table.integer(fields, predicted)
                for (name, value) in [("stage", truth), ("predicted_stage", guess)] where !(0..<classCount).contains(value) {
                    throw ReportError(file: source, line: fields.line, "\(name): \(value) is not a stage index below \(classCount)")
                }
                predictions.append(StagePrediction(datasetRow: try table.integer(fields, row), stage: truth, predicted: guess))
            }
            if predictions.isEmpty { throw ReportError(file: source, "has a header but no predictions") }
            return .stages(predictions, classCount: classCount)
        }
    }
}

/// How the customers of a batch-scoring output spread over lifecycle stages and actions.
public struct ScoreDistribution: Sendable, Equatable {
    /// (stage, customers): every stage the runs know, in model order (0 when no customer is in
    /// it, which is worth seeing), then unknown ones by first appearance.
    public var stages: [(String, Int)]
    /// (action, customers), most frequent first.
    public var actions: [(String, Int)]
    public var customers: Int
    /// With reason columns (`clm-score batch --explain`): per action, the customers' first churn
    /// reason without its value (`recency_weeks (+)`), most frequent first.
    public var firstReasons: [String: [(String, Int)]] = [:]

    public static func == (a: ScoreDistribution, b: ScoreDistribution) -> Bool {
        a.customers == b.customers && a.stages.elementsEqual(b.stages) { $0 == $1 } && a.actions.elementsEqual(b.actions) { $0 == $1 }
            && a.firstReasons.keys.sorted() == b.firstReasons.keys.sorted()
            && a.firstReasons.allSatisfy { key, value in b.firstReasons[key]!.elementsEqual(value) { $0 == $1 } }
    }

    /// Counts the `stage` and `action` columns of a scores file (found by header name; the other
    /// columns are not read). `stageOrder` puts known stages in model order.
    public static func read(_ url: URL, stageOrder: [String] = []) throws(ReportError) -> ScoreDistribution {
        let table = try CSVTable.read(url)
        let stage = try table.column("stage"), action = try table.column("action")
        var stageCounts: [String: Int] = [:], actionCounts: [String: Int] = [:]
        var firstSeen: [String] = []
        for row in table.rows {
            let stageName = row.fields[stage].trimmingCharacters(in: .whitespaces)
            let actionName = row.fields[action].trimmingCharacters(in: .whitespaces)
            if stageName.isEmpty { throw ReportError(file: url.relativePath, line: row.line, "stage is empty") }
            if actionName.isEmpty { throw ReportError(file: url.relativePath, line: row.line, "action is empty") }
            if stageCounts[stageName] == nil { firstSeen.append(stageName) }
            stageCounts[stageName, default: 0] += 1
            actionCounts[actionName, default: 0] += 1
        }
        if table.rows.isEmpty { throw ReportError(file: url.relativePath, "has a header but no customers") }
        let ordered = stageOrder + firstSeen.filter { !stageOrder.contains($0) }
        func mostFrequentFirst(_ counts: [String: Int]) -> [(String, Int)] {
            counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { ($0.key, $0.value) }
        }
        var distribution = ScoreDistribution(
            stages: ordered.map { ($0, stageCounts[$0] ?? 0) }, actions: mostFrequentFirst(actionCounts), customers: table.rows.count)
        if let reason = try? table.column("churn_reason_1") {
            var counts: [String: [String: Int]] = [:]
            for row in table.rows {
                let code = row.fields[reason]
                // `recency_weeks=14 (+)` → `recency_weeks (+)`: the reason, not the customer's value.
                let name = code.split(separator: "=").first.map(String.init) ?? code
                let sign = code.hasSuffix("(+)") ? " (+)" : code.hasSuffix("(-)") ? " (-)" : ""
                counts[row.fields[action].trimmingCharacters(in: .whitespaces), default: [:]][name.isEmpty ? "(none)" : name + sign, default: 0] += 1
            }
            distribution.firstReasons = counts.mapValues(mostFrequentFirst)
        }
        return distribution
    }
}

/// What `clm-score batch --summary-out` wrote: stability indices against the training
/// customers and, with `--explain`, the mean absolute attribution of each reason group.
public struct ScoringSummary: Sendable, Equatable, Decodable {
    public struct Index: Sendable, Equatable, Decodable {
        public var kind: String
        public var name: String
        public var psi: Double
    }
    public struct Explanation: Sendable, Equatable, Decodable {
        public var steps: Int
        public var baseline: String
        public var worstCompletenessError: Double
        /// Target (`churn_logit`, `expected_spend`) → group → mean |attribution|.
        public var meanAbsoluteAttribution: [String: [String: Double]]
    }
    public var run: String
    public var step: Int
    public var customers: Int
    public var drift: [Index]
    public var explanation: Explanation?

    public static func read(_ url: URL) throws(ReportError) -> ScoringSummary {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw ReportError(file: url.relativePath, "cannot read: \(error.localizedDescription)") }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(ScoringSummary.self, from: data)
        } catch {
            throw ReportError(file: url.relativePath, "is not a clm-score batch summary (--summary-out): \(error)")
        }
    }
}
