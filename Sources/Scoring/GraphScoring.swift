import CustomerData
import Foundation
import Models
import Synchronization
import Tensors

/// A GraphSAGE checkpoint verified and decoded for scoring: weights, sizes and the training
/// dataset's graph statistics. Immutable and shared.
public struct GraphScoringModel: Sendable {
    public let info: CheckpointInfo
    public let configuration: GraphSAGEConfiguration
    /// The training dataset's manifest: its window, stage names and node-feature statistics.
    public let dataset: DatasetManifest
    public let graphStatistics: DatasetManifest.Graph
    public let weights: [String: [Float]]

    public static func load(directory: URL) throws -> GraphScoringModel {
        try GraphScoringModel(VerifiedCheckpoint.load(directory: directory, kind: .gnn))
    }

    /// Loads the step `latest` names in `<root>/<run>`, or `step` when given.
    public static func load(root: URL, run: String, step: Int? = nil) throws -> GraphScoringModel {
        try GraphScoringModel(VerifiedCheckpoint.load(root: root, run: run, step: step, kind: .gnn))
    }

    init(_ checkpoint: VerifiedCheckpoint) throws {
        let path = checkpoint.path, stored = checkpoint.stored, dataset = checkpoint.dataset
        guard let gnn = stored.training.gnn, gnn.hidden >= 1, gnn.layers >= 1 else {
            throw ScoringError.incompatible(path: path, reason: "the configuration has no valid gnn section")
        }
        guard let statistics = dataset.graph else {
            throw ScoringError.incompatible(path: path, reason: "its dataset manifest has no graph section (node-feature statistics)")
        }
        guard stored.inputSize == nodeFeatureNames.count, statistics.nodeFeatureNames == nodeFeatureNames else {
            throw ScoringError.incompatible(path: path, reason: "the model reads node features \(statistics.nodeFeatureNames), this program computes \(nodeFeatureNames)")
        }
        let classes = stored.classCount ?? dataset.stageNames.count
        guard classes == dataset.stageNames.count, classes >= 2 else {
            throw ScoringError.incompatible(path: path, reason: "the model has \(classes) classes for the stages \(dataset.stageNames)")
        }
        let configuration = GraphSAGEConfiguration(
            inputSize: stored.inputSize, hiddenSize: gnn.hidden, classes: classes, layers: gnn.layers, dropout: 0)
        weights = try checkpoint.weights(layout: GraphSAGEModel(configuration: configuration, seed: 0).parameters.layout)
        self.configuration = configuration
        self.dataset = dataset
        graphStatistics = statistics
        info = checkpoint.info
    }

    public var stageNames: [String] { dataset.stageNames }

    /// Why this graph model cannot give stages next to `lstm`'s scores, or nil when it can.
    public func incompatibility(with lstm: ScoringModel) -> String? {
        guard stageNames == lstm.dataset.stageNames else {
            return "the gnn checkpoint's stages \(stageNames) differ from the lstm checkpoint's \(lstm.dataset.stageNames)"
        }
        return nil
    }
}

/// Next-period stage probabilities of every customer of a customer–product graph.
///
/// Inference aggregates each node's full neighbourhood, layer by layer over the whole graph,
/// rather than sampling `fanouts` neighbours as training does: the mean over all neighbours
/// is what the sampled mean estimates, and a customer's stage then depends neither on a
/// random stream nor on which other customers happen to be scored with it.
public final class GraphStageScorer: Sendable {
    public let model: GraphScoringModel
    private let idle: Mutex<[GraphSAGEModel]>

    public init(model: GraphScoringModel) {
        self.model = model
        idle = Mutex([])
    }

    /// [graph.customerNodes, classes] probabilities, row i for customer node i.
    public func stageProbabilities(_ graph: CustomerProductGraph) throws -> [Float] {
        let csr = graph.csr
        let width = model.configuration.inputSize
        guard graph.nodeFeatures.count == csr.nodeCount * width else {
            throw ScoringError.invalidInput("the graph has \(graph.nodeFeatures.count) node feature values for \(csr.nodeCount) nodes of width \(width)")
        }
        guard csr.edgeCount <= Int(Int32.max), csr.nodeCount <= Int(Int32.max) else {
            throw ScoringError.invalidInput("the graph has \(csr.nodeCount) nodes and \(csr.edgeCount) edges; scoring handles at most \(Int32.max) of each")
        }
        guard graph.customerNodes > 0 else { return [] }
        // Every node's neighbours are its sources: with all nodes as sources (in node order), a
        // block's local indices are the global ids, so the CSR is the block.
        let offsets = csr.offsets.map { Int32($0) }
        let everyNode = SampledBlock(sourceCount: csr.nodeCount, destinationCount: csr.nodeCount,
                                     offsets: offsets, neighbours: csr.neighbours)
        let customers = graph.customerNodes
        let customerBlock = SampledBlock(
            sourceCount: csr.nodeCount, destinationCount: customers, offsets: Array(offsets[0...customers]),
            neighbours: Array(csr.neighbours[0..<csr.offsets[customers]]))
        let blocks = Array(repeating: everyNode, count: model.configuration.layers - 1) + [customerBlock]

        let network = idle.withLock { $0.popLast() } ?? makeNetwork()
        defer { idle.withLock { $0.append(network) } }
        var unused = SeededRandom(seed: 0, purpose: .dropout)
        graph.nodeFeatures.withUnsafeBufferPointer { features in
            network.forward(features: features.baseAddress!, blocks: blocks, training: false, random: &unused)
        }
        return network.probabilities()
    }

    private func makeNetwork() -> GraphSAGEModel {
        let network = GraphSAGEModel(configuration: model.configuration, seed: 0)
        // The names and shapes were checked against this very layout when the model loaded.
        try! network.parameters.load(model.weights)
        return network
    }
}
