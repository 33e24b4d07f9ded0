import Checkpoints
import CustomerData
import Foundation
import Models
import RunFiles
import Tensors

/// Rank 0's link between the training loop and the checkpoint store: what goes into a checkpoint
/// and how a run resumes from one.
///
/// A checkpoint holds `model.safetensors` (PyTorch / PyG names, loadable with `load_state_dict`),
/// `optimizer.safetensors` (Adam's moments over the flat layout and its step), `training.json`
/// (epoch, step and early-stopping state), for LSTM runs `drift.json` (the training customers'
/// input and score distributions, for drift at scoring) and `manifest.json` (configuration, the dataset's
/// manifest with its feature spec and normalisation statistics, metrics, fingerprint, world size,
/// program version and SHA-256 of every file).
final class CheckpointIO {
    let configuration: TrainingConfiguration
    let spec: JobSpec
    let dataset: CustomerDataset?
    let signingKey: CheckpointSigningKey?
    private let recipe: any ModelRecipe
    private var storeInstance: CheckpointStore?
    private var driftFeatures: (features: [BinnedDistribution], inputs: [BinnedDistribution])?
    private lazy var driftScorer: DriftScorer? = recipe.driftScorer(spec)

    init(configuration: TrainingConfiguration, spec: JobSpec, dataset: CustomerDataset?, signingKey: CheckpointSigningKey? = nil) {
        self.configuration = configuration
        self.spec = spec
        self.dataset = dataset
        self.signingKey = signingKey
        recipe = spec.recipe
    }

    private func store() throws -> CheckpointStore {
        if let storeInstance { return storeInstance }
        var store = try CheckpointStore(
            root: URL(fileURLWithPath: configuration.checkpoints), run: configuration.run,
            keep: configuration.keepCheckpoints)
        store.signingKey = signingKey
        storeInstance = store
        return store
    }

    /// Refuses to start a fresh run over existing checkpoints, and clears what a crashed writer
    /// left behind: temporaries, and steps newer than the one being resumed (they were written
    /// after `latest` last moved and will be written again, identically).
    func prepare(resumedStep: Int?) throws {
        let store = try store()
        try store.cleanStaleTemporaries()
        let existing = try store.steps()
        guard let resumedStep else {
            if let newest = existing.last {
                throw AgreementError(message: "run '\(configuration.run)' in \(configuration.checkpoints) already has checkpoints "
                    + "(newest: step \(newest)); resume it with --resume latest or choose another --run")
            }
            return
        }
        for step in existing where step > resumedStep {
            try FileManager.default.removeItem(at: store.directory(step: step))
        }
    }

    func save(_ request: CheckpointRequest) throws {
        let store = try store()
        let parameters = request.parameters
        var model = SafeTensorsWriter(metadata: ["format": "pt", "model": recipe.kind.rawValue])
        for slice in parameters.layout.slices {
            try model.add(slice.name, shape: slice.shape,
                          floats: Array(UnsafeBufferPointer(start: parameters.value(slice), count: slice.count)))
        }
        var optimizer = SafeTensorsWriter(metadata: ["optimizer": configuration.weightDecay > 0 ? "adamw" : "adam"])
        try optimizer.add("exp_avg", shape: [request.optimizer.firstMoment.count], floats: request.optimizer.firstMoment.array)
        try optimizer.add("exp_avg_sq", shape: [request.optimizer.secondMoment.count], floats: request.optimizer.secondMoment.array)
        try optimizer.add("step", shape: [1], int64s: [Int64(request.optimizer.step)])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var files: [String: Data] = [
            "model.safetensors": Data(try model.serialized()),
            "optimizer.safetensors": Data(try optimizer.serialized()),
            "training.json": try encoder.encode(request.progress),
        ]
        if let reference = try driftReference(request.parameters) {
            files[DriftReference.fileName] = try encoder.encode(reference)
        }
        let manifest = CheckpointManifest(
            runName: configuration.run, step: request.progress.globalStep, epoch: request.progress.epoch,
            programVersion: programVersion, worldSize: request.progress.worldSize,
            modelKind: recipe.kind,
            configuration: try StoredModelConfiguration(architecture: spec.architecture, training: jsonValue(spec.configuration)).jsonValue(),
            featureSpec: try jsonValue(dataset?.manifest),
            datasetFingerprint: spec.datasetFingerprint, randomState: configuration.seed,
            metrics: request.metrics, files: [:])
        try store.save(step: request.progress.globalStep, files: files, manifest: manifest)
        if request.isBest { try store.markBest(step: request.progress.globalStep) }
    }

    /// What scoring compares scored customers with (models with a `DriftScorer`): the training
    /// customers' feature and history-length bins, computed once, and the scores of this
    /// checkpoint's weights on up to `scoreSample` training customers, evenly spaced.
    private func driftReference(_ parameters: ParameterStore, scoreSample: Int = 2_000) throws -> DriftReference? {
        guard let driftScorer, let dataset else { return nil }
        // The samples, not every training customer's index: the coordinator holds nothing that
        // grows with the dataset.
        let featureSample = dataset.evenlySpacedIndices(in: .train, limit: 20_000)
        guard !featureSample.isEmpty else { return nil }
        if driftFeatures == nil {
            driftFeatures = try DriftReference.features(of: dataset, customers: featureSample, limit: featureSample.count)
        }
        driftScorer.load(parameters)
        let scored = dataset.evenlySpacedIndices(in: .train, limit: scoreSample)
        return try DriftReference.make(dataset: dataset, customers: scored, features: driftFeatures!, scoreSample: scoreSample) {
            features, lengths, count, churn, spend in
            driftScorer.score(features: features, lengths: lengths, count: count, churn: churn, spend: spend)
        }
    }

    /// The newest checkpoint that verifies, walking back from the step `latest` names (from the
    /// newest step when `latest` itself is unreadable). Each step skipped is said with its reason
    /// and moved aside as `damaged-step-NNNNNN`, where retention leaves it for inspection and
    /// resuming cannot pick it again. Only damage is skipped this way; a checkpoint of another
    /// model or dataset still stops the job when loaded.
    func newestValid(requiring required: Set<String>) throws -> LoadedCheckpoint {
        let store = try store()
        var steps = try store.steps()
        let newest = (try? store.latestStep()) ?? nil
        if let newest { steps = steps.filter { $0 <= newest } }
        var skipped: [String] = []
        for step in steps.reversed() {
            do {
                let loaded = try store.load(step: step, requiring: required)
                if !skipped.isEmpty {
                    report("--resume latest-valid: resuming from step \(step); skipped " + skipped.joined(separator: "; "))
                }
                return loaded
            } catch {
                let aside = store.runDirectory.appendingPathComponent("damaged-" + store.directory(step: step).lastPathComponent)
                try? FileManager.default.removeItem(at: aside)
                try FileManager.default.moveItem(at: store.directory(step: step), to: aside)
                skipped.append("step \(step) (\(error); moved to \(aside.path))")
            }
        }
        throw AgreementError(message: "--resume latest-valid: no checkpoint of run '\(configuration.run)' in \(configuration.checkpoints) verifies"
            + (skipped.isEmpty ? " (there is none)" : "; skipped " + skipped.joined(separator: "; ")))
    }

    /// A line for the person running the job, before the progress reporter exists.
    private func report(_ line: String) {
        print(line)
        fflush(nil)
    }

    /// The parameters of saved step `step`, verified, without touching the run's other steps.
    func parameters(step: Int) throws -> [Float] {
        let loaded = try store().load(step: step, requiring: ["model.safetensors"])
        let model = try loaded.safeTensors("model.safetensors")
        let layout = recipe.parameterLayout(spec)
        var parameters = [Float](repeating: 0, count: layout.totalCount)
        for slice in layout.slices {
            let values = try model.floats(slice.name)
            guard values.count == slice.count else {
                throw AgreementError(message: "checkpoint step \(step) tensor \(slice.name) has \(values.count) values, the model needs \(slice.count)")
            }
            parameters.replaceSubrange(slice.offset..<slice.offset + slice.count, with: values)
        }
        return parameters
    }

    /// Reads and verifies the checkpoint named by `resume`: "latest", "latest-valid" (the newest
    /// step that verifies, see `newestValid`), a step, or a directory.
    func load(_ resume: String, parameterCount: Int) throws -> RestoredState {
        let loaded: LoadedCheckpoint
        let required: Set<String> = ["model.safetensors", "optimizer.safetensors", "training.json"]
        if resume == "latest" {
            loaded = try store().load(step: nil, requiring: required)
        } else if resume == "latest-valid" {
            loaded = try newestValid(requiring: required)
        } else if let step = Int(resume) {
            loaded = try store().load(step: step, requiring: required)
        } else {
            loaded = try CheckpointStore.load(directory: URL(fileURLWithPath: resume), requiring: required)
        }
        let manifest = loaded.manifest
        guard manifest.modelKind == recipe.kind else {
            throw AgreementError(message: "checkpoint \(loaded.directory.path) holds a \(manifest.modelKind.rawValue) model, "
                + "the configuration trains \(recipe.kind.rawValue)")
        }
        guard manifest.datasetFingerprint == spec.datasetFingerprint else {
            throw AgreementError(message: "checkpoint \(loaded.directory.path) was trained on dataset \(manifest.datasetFingerprint), "
                + "the configuration names dataset \(spec.datasetFingerprint)")
        }
        let model = try loaded.safeTensors("model.safetensors")
        let layoutProbe = recipe.parameterLayout(spec)
        var parameters = [Float](repeating: 0, count: parameterCount)
        for slice in layoutProbe.slices {
            let values = try model.floats(slice.name)
            guard values.count == slice.count else {
                throw AgreementError(message: "checkpoint tensor \(slice.name) has \(values.count) values, the model needs \(slice.count)")
            }
            parameters.replaceSubrange(slice.offset..<slice.offset + slice.count, with: values)
        }
        let optimizer = try loaded.safeTensors("optimizer.safetensors")
        let first = try optimizer.floats("exp_avg")
        let second = try optimizer.floats("exp_avg_sq")
        guard first.count == parameterCount, second.count == parameterCount else {
            throw AgreementError(message: "checkpoint optimizer state has \(first.count) moments, the model has \(parameterCount) parameters")
        }
        let progress = try JSONDecoder().decode(TrainingProgress.self, from: loaded.files["training.json"]!)
        try prepare(resumedStep: manifest.step)
        return RestoredState(progress: progress, parameters: parameters, firstMoment: first, secondMoment: second,
                             optimizerStep: Int(try optimizer.int64s("step").first ?? 0))
    }
}

private func jsonValue<T: Encodable>(_ value: T) throws -> JSONValue {
    try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(value))
}
