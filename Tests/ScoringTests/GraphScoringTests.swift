import Checkpoints
import CustomerData
import Foundation
import Models
@testable import Scoring
import ScoringService
import ScoringTestSupport
import Tensors
import Testing

extension ScoringFixture {
    static let graphHidden = 6

    /// A fresh GraphSAGE model from `seed`, its last layer scaled up so stages differ by customer.
    func graphModel(seed: UInt64) -> GraphSAGEModel {
        let model = GraphSAGEModel(
            configuration: GraphSAGEConfiguration(inputSize: nodeFeatureNames.count, hiddenSize: Self.graphHidden,
                                                  classes: dataset.manifest.stageNames.count, layers: 2),
            seed: seed)
        for name in ["convs.1.lin_l.weight", "convs.1.lin_r.weight"] {
            let slice = model.parameters.layout.slice(named: name)!
            for k in 0..<slice.count { model.parameters.value(slice)[k] *= 6 }
        }
        return model
    }

    /// Saves a GraphSAGE checkpoint as step `step` of run `test-gnn`, as training writes one.
    @discardableResult
    func saveGraphCheckpoint(step: Int, seed: UInt64, into target: CheckpointStore? = nil) throws -> URL {
        let model = graphModel(seed: seed)
        var writer = SafeTensorsWriter(metadata: ["format": "pt", "model": "gnn"])
        for slice in model.parameters.layout.slices {
            try writer.add(slice.name, shape: slice.shape,
                           floats: Array(UnsafeBufferPointer(start: model.parameters.value(slice), count: slice.count)))
        }
        let architecture = ModelArchitecture(
            kind: .gnn, inputSize: nodeFeatureNames.count, hiddenSize: Self.graphHidden, layers: 2,
            historyLength: dataset.historyLength, classCount: dataset.manifest.stageNames.count, clvLoss: nil,
            stageCount: dataset.manifest.stageNames.count, positiveWeight: 1, classWeights: nil)
        let configuration: JSONValue = [
            "architecture": try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(architecture)),
        ]
        let featureSpec = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(dataset.manifest))
        let manifest = CheckpointManifest(
            runName: "test-gnn", step: step, epoch: 1, programVersion: "test", worldSize: 1, modelKind: .gnn,
            configuration: configuration, featureSpec: featureSpec, datasetFingerprint: dataset.manifest.fingerprint,
            randomState: seed, metrics: ["val_accuracy": 0.25])
        return try (target ?? CheckpointStore(root: root, run: "test-gnn", keep: 10))
            .save(step: step, files: ["model.safetensors": Data(try writer.serialized())], manifest: manifest)
    }
}

/// Full-neighbourhood GraphSAGE (mean aggregator, ReLU between layers, softmax) in Double with
/// plain loops over the stored graph: an independent reading of what scoring should compute.
func referenceStageProbabilities(weights: [String: [Float]], graph: CSRGraph, features: UnsafeBufferPointer<Float>,
                                 width: Int, customers: Int, layers: Int) -> [[Double]] {
    var h = (0..<graph.nodeCount).map { v in (0..<width).map { Double(features[v * width + $0]) } }
    for layer in 0..<layers {
        let neighbourWeight = weights["convs.\(layer).lin_l.weight"]!, bias = weights["convs.\(layer).lin_l.bias"]!
        let selfWeight = weights["convs.\(layer).lin_r.weight"]!
        let inputs = h[0].count, outputs = bias.count
        let nodes = layer == layers - 1 ? customers : graph.nodeCount
        h = (0..<nodes).map { v in
            var mean = [Double](repeating: 0, count: inputs)
            let range = graph.offsets[v]..<graph.offsets[v + 1]
            for slot in range { for k in 0..<inputs { mean[k] += h[Int(graph.neighbours[slot])][k] / Double(range.count) } }
            return (0..<outputs).map { o in
                var value = Double(bias[o])
                for k in 0..<inputs {
                    value += Double(neighbourWeight[o * inputs + k]) * mean[k] + Double(selfWeight[o * inputs + k]) * h[v][k]
                }
                return layer == layers - 1 ? value : max(value, 0)
            }
        }
    }
    return h.map { logits in
        let top = logits.max()!
        let e = logits.map { exp($0 - top) }
        return e.map { $0 / e.reduce(0, +) }
    }
}

@Suite("Graph stage scoring")
struct GraphScoringTests {
    @Test("the graph rebuilt from the events as of the cut-off equals the imported dataset's, features included")
    func rebuiltGraphEqualsImported() throws {
        let fixture = try ScoringFixture(customers: 200)
        let manifest = fixture.dataset.manifest
        let input = try EventFileFeatures(
            path: fixture.eventsPath, options: EventFileOptions(), asOf: manifest.spec.cutoffDay,
            trainedSpec: manifest.spec, normalisation: manifest.normalisation)
        let rebuilt = try input.customerProductGraph(statistics: manifest.graph!)
        let stored = try #require(fixture.dataset.graph)
        #expect(rebuilt.customerNodes == fixture.dataset.customerCount)
        #expect(rebuilt.csr.offsets == stored.offsets)
        #expect(rebuilt.csr.neighbours == stored.neighbours)
        #expect(rebuilt.nodeFeatures == Array(fixture.dataset.nodeFeatures))
        // Building consumes the purchase pairs, so a second build is refused rather than empty.
        #expect(throws: DataError.self) { try input.customerProductGraph(statistics: manifest.graph!) }
    }

    @Test("features read without the graph's pairs equal those read with them, and the graph is refused")
    func featuresWithoutPairs() throws {
        let fixture = try ScoringFixture(customers: 150)
        let manifest = fixture.dataset.manifest
        func read(withGraph: Bool) throws -> EventFileFeatures {
            try EventFileFeatures(path: fixture.eventsPath, options: EventFileOptions(), asOf: manifest.spec.cutoffDay,
                                  trainedSpec: manifest.spec, normalisation: manifest.normalisation, withGraph: withGraph)
        }
        let with = try read(withGraph: true), without = try read(withGraph: false)
        #expect(without.customerCount == with.customerCount && with.customerCount > 100)
        let size = with.historyLength * with.featureCount * with.customerCount
        var a = [Float](repeating: .nan, count: size), b = [Float](repeating: 0, count: size)
        var lengthsA = [Int32](repeating: 0, count: with.customerCount), lengthsB = lengthsA
        a.withUnsafeMutableBufferPointer { f in
            lengthsA.withUnsafeMutableBufferPointer { with.fill(0..<with.customerCount, features: f.baseAddress!, lengths: $0.baseAddress!) }
        }
        b.withUnsafeMutableBufferPointer { f in
            lengthsB.withUnsafeMutableBufferPointer { without.fill(0..<without.customerCount, features: f.baseAddress!, lengths: $0.baseAddress!) }
        }
        #expect(a == b && lengthsA == lengthsB)
        #expect((0..<with.customerCount).allSatisfy { with.customerID($0) == without.customerID($0) })
        #expect(throws: DataError.self) { try without.customerProductGraph(statistics: manifest.graph!) }
        #expect((try? with.customerProductGraph(statistics: manifest.graph!)) != nil)
    }

    @Test("batch stages come from the GraphSAGE checkpoint and equal a full-neighbourhood reference forward")
    func batchStagesFromGraphModel() throws {
        let fixture = try ScoringFixture(customers: 240)
        try fixture.saveCheckpoint(step: 1, seed: 11)
        try fixture.saveGraphCheckpoint(step: 3, seed: 5)
        let lstm = try ScoringModel.load(root: fixture.root, run: "test")
        let graphModel = try GraphScoringModel.load(root: fixture.root, run: "test-gnn")
        #expect(graphModel.info.step == 3 && graphModel.info.modelKind == .gnn)
        #expect(graphModel.incompatibility(with: lstm) == nil)
        let out = fixture.directory.path("scores.csv")
        let summary = try BatchScoring.run(scorer: LSTMScorer(model: lstm), job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(),
            asOf: fixture.dataset.manifest.spec.cutoffDay, rules: ScoringRules(), output: out,
            graph: GraphStageScorer(model: graphModel)))
        #expect(summary.customersWithGraphStage == fixture.dataset.customerCount)

        let rows = try readScoreCSV(out)
        let names = fixture.dataset.manifest.stageNames
        let reference = referenceStageProbabilities(
            weights: graphModel.weights, graph: fixture.dataset.graph!, features: fixture.dataset.nodeFeatures,
            width: nodeFeatureNames.count, customers: fixture.dataset.customerCount, layers: 2)
        #expect(rows.count == reference.count)
        var worst = 0.0
        var stagesSeen = Set<String>()
        for (row, expected) in zip(rows, reference) {
            #expect(row["stage_source"] == "gnn")
            let probabilities = names.map { Double(row["p_\($0)"]!)! }
            worst = max(worst, zip(probabilities, expected).map { abs($0 - $1) }.max()!)
            #expect(row["stage"] == names[expected.indices.max { expected[$0] < expected[$1] }!])
            stagesSeen.insert(row["stage"]!)
        }
        #expect(worst < 1e-5, "worst stage probability difference \(worst)")
        // More than one stage predicted, or agreeing on the arg-max would prove little.
        #expect(stagesSeen.count >= 2, "stages \(stagesSeen)")
    }

    @Test("a gnn checkpoint is refused where an lstm is needed and the other way round; events without products are refused by name")
    func refusals() throws {
        let fixture = try ScoringFixture(customers: 80)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        try fixture.saveGraphCheckpoint(step: 1, seed: 2)
        #expect(throws: ScoringError.self) { try ScoringModel.load(root: fixture.root, run: "test-gnn") }
        #expect(throws: ScoringError.self) { try GraphScoringModel.load(root: fixture.root, run: "test") }

        // The same purchases without the product column: no graph to score.
        let text = try String(contentsOfFile: fixture.eventsPath, encoding: .utf8)
        let lines = text.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        let productColumn = try #require(lines[0].firstIndex(of: "product_id"))
        let stripped = lines.map { fields in fields.enumerated().filter { $0.offset != productColumn }.map(\.element).joined(separator: ",") }
        let noProducts = fixture.directory.path("no-products.csv")
        try (stripped.joined(separator: "\n") + "\n").write(toFile: noProducts, atomically: true, encoding: .utf8)
        let out = fixture.directory.path("scores.csv")
        do {
            _ = try BatchScoring.run(scorer: LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test")), job: BatchScoringJob(events: noProducts,
                options: EventFileOptions(), asOf: nil, rules: ScoringRules(), output: out,
                graph: GraphStageScorer(model: try GraphScoringModel.load(root: fixture.root, run: "test-gnn"))))
            Issue.record("scoring events without product ids with a graph model succeeded")
        } catch let error as ScoringError {
            #expect(error.description.contains("no product ids"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: out), "nothing is written when scoring fails")
    }
}

@Suite("Graph stages in the service")
struct GraphServiceTests {
    @Test("request customers joined to the reference graph get the stages batch scoring gives them; features-only customers keep the rule; the graph run is hot-reloaded")
    func serviceStagesEqualBatch() async throws {
        let fixture = try ScoringFixture(customers: 150)
        try fixture.saveCheckpoint(step: 2, seed: 4)
        try fixture.saveGraphCheckpoint(step: 6, seed: 9)
        let cutoff = fixture.dataset.manifest.spec.cutoffDay
        let graphModel = try GraphScoringModel.load(root: fixture.root, run: "test-gnn")
        let stageScorer = GraphStageScorer(model: graphModel)

        // What batch scoring says of every customer as of the cut-off.
        let out = fixture.directory.path("batch.csv")
        _ = try BatchScoring.run(scorer: LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test")), job: BatchScoringJob(events: fixture.eventsPath,
            options: EventFileOptions(), asOf: cutoff, rules: ScoringRules(), output: out, graph: stageScorer))
        let batch = Dictionary(uniqueKeysWithValues: try readScoreCSV(out).map { ($0["customer_id"]!, $0) })

        // The reference is the same events: customers sending their own full history replace
        // themselves with identical nodes, so the joined graph is the batch graph.
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.pollInterval = .milliseconds(100)
        configuration.graphSource = GraphSource(run: "test-gnn", events: fixture.eventsPath, options: EventFileOptions(), asOf: cutoff)
        let service = try await RunningService(configuration)
        let model = try service.json(try await service.send("GET", "/v1/model"))
        #expect((model["stage_model"] as? [String: Any])?["run"] as? String == "test-gnn")
        #expect((model["stage_model"] as? [String: Any])?["step"] as? Int == 6)

        let ids = try fixture.dataset.customerIDs()
        let chosen = [3, 7, 40, 41, 99].map { ids[$0] }
        var items = try chosen.map { id in "{\"customer_id\":\"\(id)\",\"events\":[\(try fixture.requestEvents(of: id).joined(separator: ","))]}" }
        items.append("{\"customer_id\":\"by-features\",\"features\":[[0,0,0,0,0,0,0,0]],\"length\":1}")
        let reply = try await service.send("POST", "/v1/score", body: "{\"as_of\":\(cutoff),\"customers\":[\(items.joined(separator: ","))]}")
        #expect(reply.status == 200, "\(reply.text)")
        let scores = try service.json(reply)["scores"] as! [[String: Any]]
        #expect(scores.count == chosen.count + 1)
        let names = fixture.dataset.manifest.stageNames
        var worst = 0.0
        for score in scores {
            let id = score["customer_id"] as! String
            guard let expected = batch[id] else {
                #expect(id == "by-features")
                #expect(score["stage_source"] as? String == "rule")
                continue
            }
            #expect(score["stage_source"] as? String == "gnn", "customer \(id)")
            #expect(score["stage"] as? String == expected["stage"], "customer \(id)")
            let probabilities = score["stage_probabilities"] as! [String: Double]
            for name in names { worst = max(worst, abs(probabilities[name]! - Double(expected["p_\(name)"]!)!)) }
        }
        #expect(worst < 1e-5, "worst stage probability difference \(worst)")

        // The graph run's latest is followed like the LSTM's: a new step is served, a damaged
        // one is refused and the previous graph model keeps giving stages.
        func stageModelStep() async throws -> Int? {
            let model = try service.json(try await service.send("GET", "/v1/model"))
            return (model["stage_model"] as? [String: Any])?["step"] as? Int
        }
        try fixture.saveGraphCheckpoint(step: 7, seed: 10)
        #expect(try await eventually { try await stageModelStep() == 7 })
        // Step 8 is damaged before latest names it.
        try stageDamagedCheckpoint(step: 8, root: fixture.root, run: "test-gnn") { try fixture.saveGraphCheckpoint(step: 8, seed: 11, into: $0) }
        #expect(try await eventually {
            try await service.send("GET", "/metrics").text.contains("clm_model_reloads_refused_total 1")
        })
        #expect(try await stageModelStep() == 7)
        let again = try service.json(try await service.send("POST", "/v1/score", body: "{\"as_of\":\(cutoff),\"customers\":[\(items[0])]}"))
        #expect((again["scores"] as! [[String: Any]])[0]["stage_source"] as? String == "gnn")
        await service.stop()
    }
}
