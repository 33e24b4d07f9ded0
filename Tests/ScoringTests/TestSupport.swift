import Checkpoints
import CustomerData
import Foundation
import Models
import Scoring
import Tensors
import Testing
import TestSupport


/// A small synthetic event file, its imported dataset and a checkpoint store with LSTM
/// checkpoints made from freshly initialised models (no training, no MPI).
final class ScoringFixture: @unchecked Sendable {
    static let hidden = 8
    static let layers = 2

    let directory: TemporaryDirectory
    let eventsPath: String
    let dataset: CustomerDataset
    let store: CheckpointStore

    init(customers: Int = 300) throws {
        directory = try TemporaryDirectory()
        eventsPath = directory.path("events.csv")
        _ = try generateSyntheticEvents(options: SyntheticOptions(customers: customers, products: 50, seed: 7), to: eventsPath)
        var options = ImportOptions()
        options.format.mapping.product = .name("product_id")
        _ = try Importer.run(input: eventsPath, output: directory.path("data"), options: options)
        dataset = try CustomerDataset.open(at: directory.url.appendingPathComponent("data"))
        store = try CheckpointStore(root: directory.url.appendingPathComponent("checkpoints"), run: "test", keep: 10)
    }

    var root: URL { store.root }

    /// A model whose weights come from `seed`; heads scaled up so scores spread over (0, 1).
    /// `heads` picks the CLV head, the stage head and the dense path (log MSE and neither by default).
    func model(seed: UInt64, heads: ModelArchitecture? = nil) -> LSTMModel {
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
    func architecture(clvLoss: CLVLoss = .logMSE, stageCount: Int = 0, customerHidden: Int = 0) -> ModelArchitecture {
        ModelArchitecture(
            kind: .lstm, inputSize: dataset.featureCount, hiddenSize: Self.hidden, layers: Self.layers,
            historyLength: dataset.historyLength, classCount: 4, clvLoss: clvLoss, stageCount: stageCount,
            customerHidden: customerHidden, positiveWeight: 1, classWeights: nil)
    }

    /// Saves `model` as step `step` of the run (moving `latest`), the way training writes checkpoints.
    @discardableResult
    func saveCheckpoint(
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
    func directScores(seed: UInt64) -> (churn: [Double], spend: [Double]) {
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

extension ScoringFixture {
    /// The events of `customer` in the fixture's event file as `POST /v1/score` event objects.
    func requestEvents(of customer: String) throws -> [String] {
        let lines = try String(contentsOfFile: eventsPath, encoding: .utf8).split(separator: "\n")
        let header = lines[0].split(separator: ",").map(String.init)
        var events: [String] = []
        for line in lines.dropFirst() {
            let fields = Dictionary(uniqueKeysWithValues: zip(header, line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)))
            guard fields["customer_id"] == customer else { continue }
            var event = "{\"date\":\"\(fields["timestamp"]!.prefix(10))\",\"amount\":\(fields["amount"]!)"
            if let q = fields["quantity"], !q.isEmpty { event += ",\"quantity\":\(q)" }
            if let o = fields["order_id"], !o.isEmpty { event += ",\"order_id\":\"\(o)\"" }
            if let p = fields["product_id"], !p.isEmpty { event += ",\"product_id\":\"\(p)\"" }
            events.append(event + "}")
        }
        return events
    }
}

/// Reads a CSV written by batch scoring into rows keyed by column name.
func readScoreCSV(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [[String: String]] {
    let text = try String(contentsOfFile: path, encoding: .utf8)
    var lines = text.split(separator: "\n").map(String.init)
    let header = lines.removeFirst().split(separator: ",").map(String.init)
    return lines.map { line in
        let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        #expect(fields.count == header.count, "row \(line)", sourceLocation: sourceLocation)
        return Dictionary(uniqueKeysWithValues: zip(header, fields))
    }
}

/// Polls `condition` until it holds or `deadline` passes; true when it held. For waiting on
/// what a service's watcher does in its own time: the wait ends with the event, not a guess.
func eventually(within deadline: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let clock = ContinuousClock()
    let end = clock.now + deadline
    while clock.now < end {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Puts a damaged copy of a checkpoint into `run`'s directory under `root`, then points
/// `latest` at it. The checkpoint is saved (by `save`, into a staging store) and damaged before
/// `latest` names it, so a watcher can only ever see the damaged bytes; damaging it after
/// saving let a fast watcher load the intact step first.
func stageDamagedCheckpoint(step: Int, root: URL, run: String, save: (CheckpointStore) throws -> URL) throws {
    let staging = try TemporaryDirectory(prefix: "staging")
    let saved = try save(try CheckpointStore(root: staging.url, run: run, keep: 10))
    let file = saved.appendingPathComponent("model.safetensors")
    var bytes = try Data(contentsOf: file)
    bytes[bytes.count / 2] ^= 0xFF
    try bytes.write(to: file)
    let runDirectory = root.appendingPathComponent(run)
    try FileManager.default.moveItem(at: saved, to: runDirectory.appendingPathComponent(saved.lastPathComponent))
    let pointer = runDirectory.appendingPathComponent(".latest-staging")
    try Data("\(saved.lastPathComponent)\n".utf8).write(to: pointer)
    // rename(2) replaces the pointer in one step, as CheckpointStore moves it.
    guard rename(pointer.path, runDirectory.appendingPathComponent(CheckpointStore.latestFileName).path) == 0 else {
        throw CocoaError(.fileWriteUnknown)
    }
}
