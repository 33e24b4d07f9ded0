import Checkpoints
import CustomerData
import Foundation
import Models
import RunFiles

/// Why a checkpoint or an input cannot be scored.
public enum ScoringError: Error, CustomStringConvertible, Equatable, Sendable {
    case checkpoint(String)
    case incompatible(path: String, reason: String)
    case invalidInput(String)
    case io(path: String, reason: String)

    public var description: String {
        switch self {
        case let .checkpoint(message): return message
        case let .incompatible(path, reason): return "checkpoint \(path) cannot be used for scoring: \(reason)"
        case let .invalidInput(message): return message
        case let .io(path, reason): return "\(path): \(reason)"
        }
    }
}

/// Where a loaded checkpoint came from, as `GET /v1/model` and the batch summary report it.
public struct CheckpointInfo: Codable, Sendable, Equatable {
    public var run: String
    public var step: Int
    public var epoch: Int
    public var path: String
    /// Encoded as its raw value (`"lstm"`, `"gnn"`), the string `GET /v1/model` has always shown.
    public var modelKind: ModelKind
    public var createdAt: String
    public var metrics: [String: Double]
    public var datasetFingerprint: String
}

/// What every scoring checkpoint shares once verified: its manifest's model description, the
/// training dataset's manifest and where it came from.
struct VerifiedCheckpoint {
    let loaded: LoadedCheckpoint
    let stored: ModelArchitecture
    let dataset: DatasetManifest
    let info: CheckpointInfo
    /// As the user gave it: relative when the checkpoint root or directory was given relative.
    var path: String { loaded.directory.relativePath }

    /// Loads and verifies `directory`; with `verifyKey`, also refuses it unless that key signed it.
    static func load(directory: URL, kind: ModelKind, verifyKey: CheckpointSigningKey? = nil) throws -> VerifiedCheckpoint {
        let loaded: LoadedCheckpoint
        do {
            loaded = try CheckpointStore.load(directory: directory, requiring: [ScoringModel.modelFile])
            if let verifyKey { try CheckpointStore.verifySignature(of: loaded, key: verifyKey) }
        } catch {
            throw ScoringError.checkpoint("cannot load checkpoint \(directory.relativePath): \(error)")
        }
        return try VerifiedCheckpoint(loaded, kind: kind)
    }

    static func load(root: URL, run: String, step: Int?, kind: ModelKind, verifyKey: CheckpointSigningKey? = nil) throws -> VerifiedCheckpoint {
        if step == nil, let message = missingRunMessage(root: root, run: run) { throw ScoringError.checkpoint(message) }
        let loaded: LoadedCheckpoint
        do {
            let store = try CheckpointStore(root: root, run: run)
            loaded = try store.load(step: step ?? store.servingStep(), requiring: [ScoringModel.modelFile])
            if let verifyKey { try CheckpointStore.verifySignature(of: loaded, key: verifyKey) }
        } catch {
            throw ScoringError.checkpoint("cannot load run '\(run)' in \(root.relativePath): \(error)")
        }
        return try VerifiedCheckpoint(loaded, kind: kind)
    }

    init(_ loaded: LoadedCheckpoint, kind: ModelKind) throws {
        let path = loaded.directory.relativePath
        let manifest = loaded.manifest
        guard manifest.modelKind == kind else {
            let need = kind == .lstm ? "churn and CLV scores need an lstm checkpoint" : "stage probabilities need a gnn checkpoint"
            throw ScoringError.incompatible(path: path, reason: "it holds a \(manifest.modelKind.rawValue) model; \(need)")
        }
        do {
            stored = try StoredModelConfiguration(manifestValue: manifest.configuration).architecture
        } catch {
            throw ScoringError.incompatible(path: path, reason: "its manifest configuration does not describe the model (no valid 'architecture'; checkpoints from before it was recorded must be retrained): configuration: \(describeDecodingFailure(decoding: StoredModelConfiguration.self, error, json: (try? JSONEncoder().encode(manifest.configuration)) ?? Data()))")
        }
        guard stored.kind == kind else {
            throw ScoringError.incompatible(path: path, reason: "its architecture describes a \(stored.kind.rawValue) model, the manifest a \(kind.rawValue) one")
        }
        // Bounded so that a damaged manifest is refused here instead of sizing buffers from it.
        guard (1...4096).contains(stored.hiddenSize), (1...16).contains(stored.layers), (1...4096).contains(stored.inputSize),
              (0...64).contains(stored.stageCount), (0...4096).contains(stored.customerHidden),
              (1...64).contains(stored.classCount) else {
            throw ScoringError.incompatible(path: path, reason: "its architecture has sizes outside what this program scores (hidden \(stored.hiddenSize) of 1...4096, layers \(stored.layers) of 1...16, inputs \(stored.inputSize) of 1...4096, stages \(stored.stageCount) of 0...64, customer units \(stored.customerHidden) of 0...4096, classes \(stored.classCount) of 1...64)")
        }
        do {
            dataset = try reencode(manifest.featureSpec, as: DatasetManifest.self)
        } catch {
            throw ScoringError.incompatible(path: path, reason: "its manifest has no usable dataset manifest (feature spec and normalisation): featureSpec: \(describeDecodingFailure(decoding: DatasetManifest.self, error, json: (try? JSONEncoder().encode(manifest.featureSpec)) ?? Data()))")
        }
        // The dataset manifest carries a fingerprint of its own contents, and the checkpoint names
        // that fingerprint: an edited window, normalisation or stage list shows as a mismatch.
        guard dataset.computeFingerprint() == dataset.fingerprint else {
            throw ScoringError.incompatible(path: path, reason: "its dataset manifest (feature spec, normalisation, stages) does not match its fingerprint \(dataset.fingerprint): it was edited or damaged")
        }
        guard manifest.datasetFingerprint == dataset.fingerprint else {
            throw ScoringError.incompatible(path: path, reason: "it records dataset \(manifest.datasetFingerprint) but carries the manifest of dataset \(dataset.fingerprint)")
        }
        // The window sizes every buffer and divides every day: refuse what the importer would.
        do {
            try dataset.spec.validate()
        } catch {
            throw ScoringError.incompatible(path: path, reason: "its feature spec is out of range: \(error)")
        }
        guard dataset.spec.periodDays <= 3660 else {
            throw ScoringError.incompatible(path: path, reason: "its feature spec has periodDays \(dataset.spec.periodDays), above the 3660 this program scores")
        }
        guard stored.historyLength == dataset.spec.historyPeriods else {
            throw ScoringError.incompatible(path: path, reason: "history length \(stored.historyLength) differs from the dataset's \(dataset.spec.historyPeriods) periods")
        }
        guard dataset.stageNames.count == stored.classCount else {
            throw ScoringError.incompatible(path: path, reason: "it names \(dataset.stageNames.count) stages \(dataset.stageNames) for a model of \(stored.classCount) classes")
        }
        if let problem = stageNamesProblem(dataset.stageNames) {
            throw ScoringError.incompatible(path: path, reason: "its stage names \(dataset.stageNames) \(problem)")
        }
        self.loaded = loaded
        info = CheckpointInfo(
            run: manifest.runName, step: manifest.step, epoch: manifest.epoch, path: path,
            modelKind: manifest.modelKind, createdAt: manifest.createdAt, metrics: manifest.metrics,
            datasetFingerprint: manifest.datasetFingerprint)
    }

    /// The checkpoint's tensors named by `layout`, each with its exact shape and finite.
    ///
    /// The layout a fresh model has is the contract: a checkpoint missing a tensor, or holding
    /// one of another shape, was not written for this model.
    func weights(layout: ParameterLayout) throws -> [String: [Float]] {
        let path = self.path
        let tensors: SafeTensorsFile
        do {
            tensors = try loaded.safeTensors(ScoringModel.modelFile)
        } catch {
            throw ScoringError.incompatible(path: path, reason: "\(ScoringModel.modelFile): \(error)")
        }
        // A tensor the architecture does not use means the manifest describes another model
        // (one layer fewer, no stage head): scoring with part of the weights would be wrong.
        let expected = Set(layout.slices.map(\.name))
        if let extra = tensors.names.sorted().first(where: { !expected.contains($0) }) {
            throw ScoringError.incompatible(path: path, reason: "\(ScoringModel.modelFile) holds tensor \(extra), which the architecture in the manifest does not have")
        }
        var weights: [String: [Float]] = [:]
        for slice in layout.slices {
            let values: [Float]
            do {
                guard try tensors.shape(slice.name) == slice.shape else {
                    throw ScoringError.incompatible(path: path, reason: "tensor \(slice.name) has shape \(try tensors.shape(slice.name)), the model needs \(slice.shape)")
                }
                values = try tensors.floats(slice.name)
            } catch let error as ScoringError {
                throw error
            } catch {
                throw ScoringError.incompatible(path: path, reason: "\(ScoringModel.modelFile): \(error)")
            }
            guard values.allSatisfy(\.isFinite) else {
                throw ScoringError.incompatible(path: path, reason: "tensor \(slice.name) holds non-finite values")
            }
            weights[slice.name] = values
        }
        return weights
    }
}

/// An LSTM checkpoint verified and decoded for scoring: weights, sizes and the dataset's
/// feature pipeline. Immutable, so one value is shared by every request.
public struct ScoringModel: Sendable {
    public static let modelFile = "model.safetensors"

    public let info: CheckpointInfo
    public let configuration: LSTMConfiguration
    /// The training dataset's manifest: feature spec, normalisation statistics, stage names.
    public let dataset: DatasetManifest
    public let weights: [String: [Float]]
    /// What training saw (`drift.json`), for the stability indices of scored customers; nil for
    /// checkpoints written before it existed.
    public let drift: DriftReference?

    /// Loads the checkpoint in `directory`, verifying every file's size and SHA-256.
    public static func load(directory: URL, verifyKey: CheckpointSigningKey? = nil) throws -> ScoringModel {
        try ScoringModel(VerifiedCheckpoint.load(directory: directory, kind: .lstm, verifyKey: verifyKey))
    }

    /// Loads the step `best` names in `<root>/<run>` (`latest` when none is marked), or `step`.
    public static func load(root: URL, run: String, step: Int? = nil, verifyKey: CheckpointSigningKey? = nil) throws -> ScoringModel {
        try ScoringModel(VerifiedCheckpoint.load(root: root, run: run, step: step, kind: .lstm, verifyKey: verifyKey))
    }

    init(_ checkpoint: VerifiedCheckpoint) throws {
        let path = checkpoint.path, stored = checkpoint.stored, dataset = checkpoint.dataset
        guard stored.stageCount == 0 || stored.stageCount == dataset.stageNames.count else {
            throw ScoringError.incompatible(path: path, reason: "its stage head has \(stored.stageCount) stages for the dataset's \(dataset.stageNames)")
        }
        guard stored.inputSize == customerFeatureNames.count, dataset.featureNames == customerFeatureNames else {
            throw ScoringError.incompatible(path: path, reason: "the model reads \(stored.inputSize) features \(dataset.featureNames), this program computes \(customerFeatureNames)")
        }
        guard dataset.normalisation.mean.count == stored.inputSize, dataset.normalisation.std.count == stored.inputSize,
              dataset.normalisation.mean.allSatisfy({ $0.isFinite && abs($0) < 1e9 }),
              dataset.normalisation.std.allSatisfy({ $0.isFinite && $0 > 1e-9 && $0 < 1e9 }) else {
            throw ScoringError.incompatible(path: path, reason: "the normalisation statistics are missing, non-finite, vanishing or out of range (means \(dataset.normalisation.mean), deviations \(dataset.normalisation.std))")
        }
        let configuration = stored.lstmConfiguration
        weights = try checkpoint.weights(layout: LSTMModel(configuration: configuration, seed: 0).parameters.layout)
        self.configuration = configuration
        self.dataset = dataset
        info = checkpoint.info
        if let data = checkpoint.loaded.files[DriftReference.fileName] {
            let reference: DriftReference
            do {
                reference = try JSONDecoder().decode(DriftReference.self, from: data)
            } catch {
                throw ScoringError.incompatible(path: path, reason: "\(DriftReference.fileName) is not a drift reference: \(describeDecodingFailure(decoding: DriftReference.self, error, json: data))")
            }
            guard reference.features.map(\.name) == dataset.featureNames, reference.scores.count == 2, reference.inputs.count == 1,
                  (reference.features + reference.inputs + reference.scores).allSatisfy({ $0.fractions.count == $0.edges.count + 1 }),
                  reference.trainingSpends?.allSatisfy(\.isFinite) ?? true else {
                throw ScoringError.incompatible(path: path, reason: "\(DriftReference.fileName) does not describe this model's features, input and scores, or holds a training spend that is not a number")
            }
            drift = reference
        } else {
            drift = nil
        }
        if let problem = probeOutputs() {
            throw ScoringError.incompatible(path: path, reason: problem)
        }
    }

    /// Why the model's outputs are unusable, or nil: a forward over a few probe customers (all
    /// features 0, +3 and −3 standard deviations, at the full length and at one period) must give
    /// finite churn probabilities, expected spends and stage probabilities. Weights that are
    /// finite can still overflow (a recurrent weight of 10³⁸ turns the gates into NaN); without
    /// this, such a checkpoint would be served and its scores printed as 0.
    func probeOutputs() -> String? {
        let steps = historyLength, width = featureCount
        let probes: [(value: Float, length: Int32)] = [(0, Int32(steps)), (3, Int32(steps)), (-3, Int32(steps)), (3, 1), (-3, 1)]
        var features = [Float](repeating: 0, count: probes.count * steps * width)
        for (index, probe) in probes.enumerated() {
            for position in 0..<Int(probe.length) * width { features[(index * steps) * width + position] = probe.value }
        }
        let heads = configuration.heads
        var outputs = [Float](repeating: .nan, count: probes.count * heads.width)
        InferenceLSTM(configuration: configuration, weights: weights).forward(
            features: features, lengths: probes.map(\.length), batch: probes.count, steps: steps,
            workspace: InferenceWorkspace(), outputs: &outputs)
        var stages = [Float](repeating: 0, count: max(heads.stageCount, 1))
        for index in probes.indices {
            let (churn, spend) = outputs.withUnsafeBufferPointer { rows -> (Float, Float) in
                let row = rows.baseAddress! + index * heads.width
                stages.withUnsafeMutableBufferPointer { heads.stageProbabilities(row, into: $0.baseAddress!) }
                return (heads.churnProbability(row), heads.expectedSpend(row))
            }
            guard churn.isFinite, spend.isFinite, stages.allSatisfy(\.isFinite) else {
                return "its forward pass is not finite on a probe customer (features \(probes[index].value), \(probes[index].length) periods): churn \(churn), expected spend \(spend), stage probabilities \(stages)"
            }
        }
        return nil
    }

    public var historyLength: Int { dataset.spec.historyPeriods }
    public var heads: LSTMHeadLayout { configuration.heads }
    public var featureCount: Int { configuration.inputSize }

    /// A model instance with these weights and its own forward workspace.
    public func makeInstance() -> LSTMModel {
        let model = LSTMModel(configuration: configuration, seed: 0)
        // The names were checked against this very layout in init.
        try! model.parameters.load(weights)
        return model
    }
}

private func reencode<T: Decodable>(_ value: JSONValue, as type: T.Type) throws -> T {
    try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value))
}

/// Why `names` cannot name stages in the scores, or nil. They become CSV columns (`p_NAME`),
/// JSON keys and action lines, so a comma, quote or line break would break the file, and two
/// equal names would give two equal columns or keys.
func stageNamesProblem(_ names: [String]) -> String? {
    for name in names {
        guard !name.isEmpty, name.utf8.count <= 64,
              name.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D })
        else {
            return "include \(String(reflecting: name)): a stage name is 1 to 64 ASCII letters, digits, '_' or '-'"
        }
    }
    guard Set(names).count == names.count else { return "repeat a name" }
    return nil
}
