import Checkpoints
import Foundation
@_exported import RunFiles

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

    public static let metricsLogName = MetricsLog.fileName
    public static let predictionsName = TestPredictions.fileName

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
        let predictions = try TestPredictions.read(predictionsURL, model: manifest.modelKind, stageNames: stageNames)
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

    /// Counts the stages and actions of a scores file (`ScoresFile`). `stageOrder` puts known
    /// stages in model order.
    public static func read(_ url: URL, stageOrder: [String] = []) throws(ReportError) -> ScoreDistribution {
        let contents = try ScoresFile.read(url)
        var stageCounts: [String: Int] = [:], actionCounts: [String: Int] = [:]
        var firstSeen: [String] = []
        for (line, row) in contents.rows {
            if row.stage.isEmpty { throw ReportError(file: url.relativePath, line: line, "stage is empty") }
            if row.action.isEmpty { throw ReportError(file: url.relativePath, line: line, "action is empty") }
            if stageCounts[row.stage] == nil { firstSeen.append(row.stage) }
            stageCounts[row.stage, default: 0] += 1
            actionCounts[row.action, default: 0] += 1
        }
        if contents.rows.isEmpty { throw ReportError(file: url.relativePath, "has a header but no customers") }
        let ordered = stageOrder + firstSeen.filter { !stageOrder.contains($0) }
        func mostFrequentFirst(_ counts: [String: Int]) -> [(String, Int)] {
            counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { ($0.key, $0.value) }
        }
        var distribution = ScoreDistribution(
            stages: ordered.map { ($0, stageCounts[$0] ?? 0) }, actions: mostFrequentFirst(actionCounts), customers: contents.rows.count)
        if contents.hasReasons {
            var counts: [String: [String: Int]] = [:]
            for (_, row) in contents.rows {
                let code = row.churnReasons.first ?? ""
                // `recency_weeks=14 (+)` → `recency_weeks (+)`: the reason, not the customer's value.
                let name = code.split(separator: "=").first.map(String.init) ?? code
                let sign = code.hasSuffix("(+)") ? " (+)" : code.hasSuffix("(-)") ? " (-)" : ""
                counts[row.action, default: [:]][name.isEmpty ? "(none)" : name + sign, default: 0] += 1
            }
            distribution.firstReasons = counts.mapValues(mostFrequentFirst)
        }
        return distribution
    }
}

