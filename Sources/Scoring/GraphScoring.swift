import Checkpoints
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

    public static func load(directory: URL, verifyKey: CheckpointSigningKey? = nil) throws -> GraphScoringModel {
        try GraphScoringModel(VerifiedCheckpoint.load(directory: directory, kind: .gnn, verifyKey: verifyKey))
    }

    /// Loads the step `best` names in `<root>/<run>` (`latest` when none is marked), or `step`.
    public static func load(root: URL, run: String, step: Int? = nil, verifyKey: CheckpointSigningKey? = nil) throws -> GraphScoringModel {
        try GraphScoringModel(VerifiedCheckpoint.load(root: root, run: run, step: step, kind: .gnn, verifyKey: verifyKey))
    }

    init(_ checkpoint: VerifiedCheckpoint) throws {
        let path = checkpoint.path, stored = checkpoint.stored, dataset = checkpoint.dataset
        guard let statistics = dataset.graph else {
            throw ScoringError.incompatible(path: path, reason: "its dataset manifest has no graph section (node-feature statistics)")
        }
        guard stored.inputSize == nodeFeatureNames.count else {
            throw ScoringError.incompatible(path: path, reason: "the model reads \(stored.inputSize) node features, this program computes \(nodeFeatureNames.count)")
        }
        if let problem = statistics.unusableForScoring {
            throw ScoringError.incompatible(path: path, reason: problem)
        }
        let classes = stored.classCount
        guard classes == dataset.stageNames.count, classes >= 2 else {
            throw ScoringError.incompatible(path: path, reason: "the model has \(classes) classes for the stages \(dataset.stageNames)")
        }
        let configuration = GraphSAGEConfiguration(
            inputSize: stored.inputSize, hiddenSize: stored.hiddenSize, classes: classes, layers: stored.layers, dropout: 0)
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
    let idle: Mutex<[GraphSAGEModel]>

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

        return run(features: graph.nodeFeatures, blocks: blocks)
    }

    func makeNetwork() -> GraphSAGEModel {
        let network = GraphSAGEModel(configuration: model.configuration, seed: 0)
        // The names and shapes were checked against this very layout when the model loaded.
        try! network.parameters.load(model.weights)
        return network
    }
}

/// A population's customer–product graph that request customers join, so that a few customers
/// can be scored by the graph model: their products' embeddings need the other customers who
/// bought them, which a request does not carry.
///
/// A request customer becomes a new node linked to the reference products it bought (products
/// the reference has never seen are left out: they have no trained neighbourhood). A request
/// customer whose id is in the reference replaces that node: its reference edges are ignored,
/// so the request's events are its whole history. Product features stay the reference's.
public final class ReferenceGraph: Sendable {
    public let graph: CustomerProductGraph
    /// The day the reference's purchases run to.
    public let asOfDay: Int
    let productNode: [String: Int32]
    let customerNode: [String: Int32]

    public init(graph: CustomerProductGraph, customerIDs: [String], asOfDay: Int) {
        precondition(customerIDs.count == graph.customerNodes, "one id per customer node")
        self.graph = graph
        self.asOfDay = asOfDay
        var products: [String: Int32] = [:]
        for (k, id) in graph.productIDs.enumerated() { products[id] = Int32(graph.customerNodes + k) }
        var customers: [String: Int32] = [:]
        for (k, id) in customerIDs.enumerated() { customers[id] = Int32(k) }
        productNode = products
        customerNode = customers
    }

    /// Whether request customers buying product `id` join the graph through it.
    public func knowsProduct(_ id: String) -> Bool { productNode[id] != nil }

    /// Builds the reference from an event file as of `asOf` (nil: its last event day), with the
    /// graph model's window and statistics.
    public static func load(events: String, options: EventFileOptions, asOf: Int?, model: GraphScoringModel) throws -> ReferenceGraph {
        do {
            let source = try EventFileFeatures(path: events, options: options, asOf: asOf, trainedSpec: model.dataset.spec,
                                               normalisation: model.dataset.normalisation)
            let graph = try source.customerProductGraph(statistics: model.graphStatistics)
            return ReferenceGraph(graph: graph, customerIDs: (0..<source.customerCount).map(source.customerID), asOfDay: source.asOfDay)
        } catch let error as DataError {
            throw ScoringError.invalidInput("reference graph \(events): \(error.description)")
        }
    }
}

extension GraphStageScorer {
    /// Stage probabilities [request.customerNodes, classes] of a request's customers joined to
    /// `reference`, with every node's full neighbourhood as in batch scoring.
    public func stageProbabilities(joining reference: ReferenceGraph, request: CustomerProductGraph, customerIDs: [String]) -> [Float] {
        let base = reference.graph.csr
        let referenceNodes = base.nodeCount
        let requestCustomers = request.customerNodes
        guard requestCustomers > 0 else { return [] }
        // Node ids of the joined graph: the reference's, then request customer i at referenceNodes + i.
        var replaced = Set<Int32>()
        for id in customerIDs { if let node = reference.customerNode[id] { replaced.insert(node) } }
        var requestProducts: [[Int32]] = []
        var joiningCustomers: [Int32: [Int32]] = [:]
        for i in 0..<requestCustomers {
            var products: [Int32] = []
            for slot in request.csr.offsets[i]..<request.csr.offsets[i + 1] {
                let id = request.productIDs[Int(request.csr.neighbours[slot]) - requestCustomers]
                guard let product = reference.productNode[id] else { continue }
                products.append(product)
                joiningCustomers[product, default: []].append(Int32(referenceNodes + i))
            }
            requestProducts.append(products)
        }
        func forEachNeighbour(of node: Int32, _ body: (Int32) -> Void) {
            if Int(node) >= referenceNodes {
                for product in requestProducts[Int(node) - referenceNodes] { body(product) }
                return
            }
            for slot in base.offsets[Int(node)]..<base.offsets[Int(node) + 1] where !replaced.contains(base.neighbours[slot]) {
                body(base.neighbours[slot])
            }
            for customer in joiningCustomers[node] ?? [] { body(customer) }
        }

        // Full-neighbourhood blocks from the request customers outwards, as the sampler builds them.
        var destinations = (0..<requestCustomers).map { Int32(referenceNodes + $0) }
        var blocks: [SampledBlock] = []
        for _ in 0..<model.configuration.layers {
            var sources = destinations
            var local: [Int32: Int32] = [:]
            for (position, node) in destinations.enumerated() { local[node] = Int32(position) }
            var offsets: [Int32] = [0]
            var neighbours: [Int32] = []
            for node in destinations {
                forEachNeighbour(of: node) { neighbour in
                    if let position = local[neighbour] {
                        neighbours.append(position)
                    } else {
                        local[neighbour] = Int32(sources.count)
                        neighbours.append(Int32(sources.count))
                        sources.append(neighbour)
                    }
                }
                offsets.append(Int32(neighbours.count))
            }
            blocks.append(SampledBlock(sourceCount: sources.count, destinationCount: destinations.count,
                                       offsets: offsets, neighbours: neighbours))
            destinations = sources
        }
        let width = model.configuration.inputSize
        var input = [Float](repeating: 0, count: destinations.count * width)
        for (row, node) in destinations.enumerated() {
            let (features, index) = Int(node) >= referenceNodes
                ? (request.nodeFeatures, Int(node) - referenceNodes) : (reference.graph.nodeFeatures, Int(node))
            input.replaceSubrange(row * width..<(row + 1) * width, with: features[index * width..<(index + 1) * width])
        }
        return run(features: input, blocks: blocks.reversed())
    }

    /// One forward on a pooled network; safe from many threads at once.
    func run(features: [Float], blocks: [SampledBlock]) -> [Float] {
        let network = idle.withLock { $0.popLast() } ?? makeNetwork()
        defer { idle.withLock { $0.append(network) } }
        var unused = SeededRandom(seed: 0, purpose: .dropout)
        features.withUnsafeBufferPointer { input in
            network.forward(features: input.baseAddress!, blocks: blocks, training: false, random: &unused)
        }
        return network.probabilities()
    }
}
