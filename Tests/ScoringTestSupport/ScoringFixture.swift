import Checkpoints
import CustomerData
import Foundation
import Models
import Scoring
import Tensors
import TestSupport

/// A small synthetic event file, its imported dataset and a checkpoint store with LSTM
/// checkpoints made from freshly initialised models (no training, no MPI).
package final class ScoringFixture: @unchecked Sendable {
    package static let hidden = 8
    package static let layers = 2

    package let directory: TemporaryDirectory
    package let eventsPath: String
    package let dataset: CustomerDataset
    package let store: CheckpointStore

    package init(customers: Int = 300) throws {
        directory = try TemporaryDirectory()
        eventsPath = directory.path("events.csv")
        _ = try generateSyntheticEvents(options: SyntheticOptions(customers: customers, products: 50, seed: 7), to: eventsPath)
        var options = ImportOptions()
        options.format.mapping.product = .name("product_id")
        _ = try Importer.run(input: eventsPath, output: directory.path("data"), options: options)
        dataset = try CustomerDataset.open(at: directory.url.appendingPathComponent("data"))
        store = try CheckpointStore(root: directory.url.appendingPathComponent("checkpoints"), run: "test", keep: 10)
    }

    package var root: URL { store.root }

    /// A model whose weights come from `seed`; heads scaled up so scores spread over (0, 1).
    /// `heads` picks the CLV head, the stage head and the dense path (log MSE and neither by default).
    package func model(seed: UInt64, heads: ModelArchitecture? = nil) -> LSTMModel {
        let architecture = heads ?? architecture()
        let model = LSTMModel(configuration: architecture.lstmConfiguration, seed: seed)
        for name in ["churn_head.weight", "clv_head.weight", "stage_head.weight"] {
            guard let slice = model.parameters.layout.slice(named: name) else { continue }
            let values = model.parameters.value(slice)
            for k in 0..<slice.count { values[k] *= 4 }
        }
        // A spend of e³ ≈ 20 for log MSE; for ZILN the lognormal's μ.
        model.parameters.value(model.parameters.layout.slice(named: "clv_head.bias")!)[architecture.clvLoss == .ziln ? 1 : 0] = 3
        return model
    }

    /// The fixture's architecture: `clvLoss`, `stageCount` and `customerHidden` as given.
    package func architecture(clvLoss: CLVLoss = .logMSE, stageCount: Int = 0, customerHidden: Int = 0) -> ModelArchitecture {
        ModelArchitecture(
            kind: .lstm, inputSize: dataset.featureCount, hiddenSize: Self.hidden, layers: Self.layers,
            historyLength: dataset.historyLength, classCount: 4, clvLoss: clvLoss, stageCount: stageCount,
            customerHidden: customerHidden, positiveWeight: 1, classWeights: nil)
    }

    /// Saves `model` as step `step` of the run (moving `latest`), the way training writes checkpoints.
    @discardableResult
    package func saveCheckpoint(
        step: Int, seed: UInt64, configurationOverride: JSONValue? = nil, heads: ModelArchitecture? = nil,
        fingerprintStale: Bool = false, signingKey: CheckpointSigningKey? = nil, into target: CheckpointStore? = nil,
        changeDataset: (inout DatasetManifest) -> Void = { _ in }, changeWeights: (LSTMModel) -> Void = { _ in },
        withDriftReference: Bool = false
    ) throws -> URL {
        let model = model(seed: seed, heads: heads)
        changeWeights(model)
        var writer = SafeTensorsWriter(metadata: ["format": "pt", "model": "lstm"])
        for slice in model.parameters.layout.slices {
            try writer.add(slice.name, shape: slice.shape,
                           floats: Array(UnsafeBufferPointer(start: model.parameters.value(slice), count: slice.count)))
        }
        let architecture = heads ?? architecture()
        let configuration: JSONValue = try configurationOverride ?? [
            "architecture": JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(architecture)),
        ]
        var datasetManifest = dataset.manifest
        changeDataset(&datasetManifest)
        if !fingerprintStale {
            // A consistent but bad manifest: what a buggy writer (not a bit flip) would produce.
            datasetManifest.fingerprint = datasetManifest.computeFingerprint()
        }
        let featureSpec = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(datasetManifest))
        let manifest = CheckpointManifest(
            runName: store.run, step: step, epoch: 1, programVersion: "test", worldSize: 1, modelKind: .lstm,
            configuration: configuration, featureSpec: featureSpec, datasetFingerprint: datasetManifest.fingerprint,
            randomState: seed, metrics: ["val_auc": 0.5])
        var store = target ?? self.store
        store.signingKey = signingKey
        var files = ["model.safetensors": Data(try writer.serialized())]
        if withDriftReference {
            // As training writes it: the training customers' bins and this model's scores.
            let train = dataset.indices(in: .train)
            var random = SeededRandom(seed: 0, purpose: .dropout)
            let reference = try DriftReference.make(
                dataset: dataset, customers: train, features: try DriftReference.features(of: dataset, customers: train)
            ) { features, lengths, count, churn, spend in
                model.forward(SequenceBatch(features: features, lengths: lengths, batchSize: count, steps: dataset.historyLength),
                              training: false, random: &random)
                let rows = model.headOutputs.baseAddress!
                for k in 0..<count {
                    churn[k] = model.heads.churnProbability(rows + k * model.heads.width)
                    spend[k] = model.heads.expectedSpend(rows + k * model.heads.width)
                }
            }
            files[DriftReference.fileName] = try JSONEncoder().encode(reference)
        }
        return try store.save(step: step, files: files, manifest: manifest)
    }

    /// Churn probabilities and expected spends straight from a model forward on the stored dataset.
    package func directScores(seed: UInt64) -> (churn: [Double], spend: [Double]) {
        let model = model(seed: seed)
        var random = SeededRandom(seed: 0, purpose: .initialisation)
        model.forward(SequenceBatch(features: dataset.features.baseAddress!, lengths: dataset.lengths.baseAddress!,
                                    batchSize: dataset.customerCount, steps: dataset.historyLength),
                      training: false, random: &random)
        let churn = model.churnLogits.map { 1 / (1 + exp(-Double($0))) }
        let spend = model.clvPredictions.map { max(expm1(Double($0)), 0) }
        return (churn, spend)
    }
}

