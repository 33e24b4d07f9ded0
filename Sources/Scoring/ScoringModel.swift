import Checkpoints
import CustomerData
import Foundation
import Models

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
    public var modelKind: String
    public var createdAt: String
    public var metrics: [String: Double]
    public var datasetFingerprint: String
}

/// The manifest's `configuration` as scoring reads it: the architecture training wrote (the
/// full training configuration beside it is provenance, not needed here).
struct StoredModelInfo: Decodable {
    var architecture: ModelArchitecture
}

/// What every scoring checkpoint shares once verified: its manifest's model description, the
/// training dataset's manifest and where it came from.
struct VerifiedCheckpoint {
    let loaded: LoadedCheckpoint
    let stored: ModelArchitecture
    let dataset: DatasetManifest
    let info: CheckpointInfo
    var path: String { loaded.directory.path }

    static func load(directory: URL, kind: ModelKind) throws -> VerifiedCheckpoint {
        do {
            return try VerifiedCheckpoint(CheckpointStore.load(directory: directory, requiring: [ScoringModel.modelFile]), kind: kind)
        } catch let error as ScoringError {
            throw error
        } catch {
            throw ScoringError.checkpoint("cannot load checkpoint \(directory.path): \(error)")
        }
    }

    static func load(root: URL, run: String, step: Int?, kind: ModelKind) throws -> VerifiedCheckpoint {
        let loaded: LoadedCheckpoint
        do {
            let store = try CheckpointStore(root: root, run: run)
            loaded = try store.load(step: step ?? store.servingStep(), requiring: [ScoringModel.modelFile])
        } catch {
            throw ScoringError.checkpoint("cannot load run '\(run)' in \(root.path): \(error)")
        }
        return try VerifiedCheckpoint(loaded, kind: kind)
    }

    init(_ loaded: LoadedCheckpoint, kind: ModelKind) throws {
        let path = loaded.directory.path
        let manifest = loaded.manifest
        guard manifest.modelKind == kind else {
            let need = kind == .lstm ? "churn and CLV scores need an lstm checkpoint" : "stage probabilities need a gnn checkpoint"
            throw ScoringError.incompatible(path: path, reason: "it holds a \(manifest.modelKind.rawValue) model; \(need)")
        }
        do {
            stored = try reencode(manifest.configuration, as: StoredModelInfo.self).architecture
        } catch {
            throw ScoringError.incompatible(path: path, reason: "its manifest configuration does not describe the model (no valid 'architecture'; checkpoints from before it was recorded must be retrained): \(error)")
        }
        guard stored.kind.rawValue == kind.rawValue else {
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
            throw ScoringError.incompatible(path: path, reason: "its manifest has no usable dataset manifest (feature spec and normalisation): \(error)")
        }
        self.loaded = loaded
        info = CheckpointInfo(
            run: manifest.runName, step: manifest.step, epoch: manifest.epoch, path: path,
            modelKind: manifest.modelKind.rawValue, createdAt: manifest.createdAt, metrics: manifest.metrics,
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

    /// Loads the checkpoint in `directory`, verifying every file's size and SHA-256.
    public static func load(directory: URL) throws -> ScoringModel {
        try ScoringModel(VerifiedCheckpoint.load(directory: directory, kind: .lstm))
    }

    /// Loads the step `best` names in `<root>/<run>` (`latest` when none is marked), or `step`.
    public static func load(root: URL, run: String, step: Int? = nil) throws -> ScoringModel {
        try ScoringModel(VerifiedCheckpoint.load(root: root, run: run, step: step, kind: .lstm))
    }

    init(_ checkpoint: VerifiedCheckpoint) throws {
        let path = checkpoint.path, stored = checkpoint.stored, dataset = checkpoint.dataset
        guard stored.stageCount == 0 || stored.stageCount == dataset.stageNames.count else {
            throw ScoringError.incompatible(path: path, reason: "its stage head has \(stored.stageCount) stages for the dataset's \(dataset.stageNames)")
        }
        guard stored.inputSize == customerFeatureNames.count, dataset.featureNames == customerFeatureNames else {
            throw ScoringError.incompatible(path: path, reason: "the model reads \(stored.inputSize) features \(dataset.featureNames), this program computes \(customerFeatureNames)")
        }
        guard stored.historyLength == dataset.spec.historyPeriods else {
            throw ScoringError.incompatible(path: path, reason: "history length \(stored.historyLength) differs from the dataset's \(dataset.spec.historyPeriods) periods")
        }
        guard dataset.normalisation.mean.count == stored.inputSize, dataset.normalisation.std.count == stored.inputSize,
              (dataset.normalisation.mean + dataset.normalisation.std).allSatisfy(\.isFinite),
              dataset.normalisation.std.allSatisfy({ $0 > 0 }) else {
            throw ScoringError.incompatible(path: path, reason: "the normalisation statistics are missing, non-finite or have a zero deviation")
        }
        let configuration = stored.lstmConfiguration
        weights = try checkpoint.weights(layout: LSTMModel(configuration: configuration, seed: 0).parameters.layout)
        self.configuration = configuration
        self.dataset = dataset
        info = checkpoint.info
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
