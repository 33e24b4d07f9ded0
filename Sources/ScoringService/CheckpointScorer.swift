import Checkpoints
import CustomerData
import Foundation
import Logging
import Scoring
import Synchronization

/// What a score request returns.
public struct ScoreResult: Sendable, Equatable {
    public var model: CheckpointInfo
    public var asOfDay: Int
    public var stageNames: [String]
    public var scores: [CustomerScore]
    /// Reason codes per score, when the request asked for them.
    public var explanations: [Explanation]? = nil
    /// The request's customers counted in the model's drift bins (nil without a reference).
    public var drift: DriftCounter? = nil
}

/// Rolling stability indices of what the service scores, against the served model's training
/// reference: counts over the current window of customers and the one before it (so the
/// indices always cover between one and two windows of recent traffic), restarted when another
/// checkpoint is served. An index crossing the threshold is logged once, when it crosses, and
/// only once the windows hold `minimumCustomers`, below which an index is mostly noise (and
/// `/metrics` shows it as NaN).
public final class DriftMonitor: Sendable {
    public let threshold: Double
    public let window: Int
    public let minimumCustomers = 100
    private struct State {
        var step: Int?
        var current: DriftCounter?
        var previous: DriftCounter?
        var above: Set<String> = []
    }
    private let state = Mutex(State())

    public init(threshold: Double = 0.2, window: Int = 5_000) {
        self.threshold = threshold
        self.window = max(1, window)
    }

    /// Adds a request's counts; returns the current indices, the customers they cover, and the
    /// names of indices that have just crossed the threshold.
    func record(_ counts: DriftCounter, step: Int) -> (indices: [DriftIndex], customers: Int, crossed: [DriftIndex]) {
        state.withLock { state in
            if state.step != step || state.current?.reference != counts.reference {
                state = State(step: step, current: DriftCounter(reference: counts.reference))
            }
            state.current!.merge(counts)
            if state.current!.customers >= window {
                state.previous = state.current
                state.current!.reset()
            }
            var recent = state.current!
            if let previous = state.previous { recent.merge(previous) }
            let indices = recent.stabilityIndices()
            var crossed: [DriftIndex] = []
            for index in indices {
                let key = "\(index.kind.rawValue):\(index.name)"
                if index.psi > threshold && recent.customers >= minimumCustomers {
                    if state.above.insert(key).inserted { crossed.append(index) }
                } else if index.psi <= threshold {
                    state.above.remove(key)
                }
            }
            return (indices, recent.customers, crossed)
        }
    }
}

/// The scoring face the HTTP controller talks to; tests substitute one with known outputs.
public protocol Scorer: Sendable {
    /// The model being served, nil until one is loaded.
    var currentModel: ModelSummary? { get }
    /// Scores a validated request; throws `ClientError` for what only the model can judge.
    func score(_ request: ScoreRequest) throws -> ScoreResult
}

/// A GraphSAGE model and the population graph request customers join.
public final class ServedGraphModel: Sendable {
    public let scorer: GraphStageScorer
    public let reference: ReferenceGraph

    public init(scorer: GraphStageScorer, reference: ReferenceGraph) {
        self.scorer = scorer
        self.reference = reference
    }
}

/// Where the served graph model comes from: a run in the service's checkpoint store, whose
/// `best` (else `latest`) is followed like the LSTM's, and the event file of its reference population.
public struct GraphSource: Sendable {
    public var run: String
    public var events: String
    public var options: EventFileOptions
    /// The reference graph's day; nil: the file's last event day.
    public var asOf: Int?

    public init(run: String, events: String, options: EventFileOptions, asOf: Int?) {
        self.run = run
        self.events = events
        self.options = options
        self.asOf = asOf
    }

    /// Verifies step `step` (nil: `best`, else `latest`) of the run and builds its reference graph.
    public func load(root: URL, step: Int? = nil, verifyKey: CheckpointSigningKey? = nil) throws -> ServedGraphModel {
        let model = try GraphScoringModel.load(root: root, run: run, step: step, verifyKey: verifyKey)
        let reference = try ReferenceGraph.load(events: events, options: options, asOf: asOf, model: model)
        return ServedGraphModel(scorer: GraphStageScorer(model: model), reference: reference)
    }
}

/// A loaded model with everything derived from it, swapped as one reference.
final class ServedModel: Sendable {
    let scorer: LSTMScorer
    let graph: ServedGraphModel?
    let summary: ModelSummary
    let rules: ScoringRules

    init(_ model: ScoringModel, graph: ServedGraphModel?, rules: ScoringRules) throws {
        if let graph, let reason = graph.scorer.model.incompatibility(with: model) {
            throw ScoringError.incompatible(path: model.info.path, reason: reason)
        }
        scorer = LSTMScorer(model: model)
        self.graph = graph
        self.rules = rules
        summary = ModelSummary(
            info: model.info, historyLength: model.historyLength, featureCount: model.featureCount,
            stageNames: model.dataset.stageNames, highValueLine: HighValueLine.fromCheckpoint(rules: rules, model: model),
            stageModel: graph?.scorer.model.info, referenceAsOfDay: graph?.reference.asOfDay)
    }
}

/// The production scorer: the latest good checkpoint of a run, reloaded when `best` (else `latest`) moves.
///
/// A request takes the current `ServedModel` reference once and uses it to the end, so a swap
/// never changes the model under a running request; the old one is freed when its last request
/// finishes.
public final class CheckpointScorer: Scorer {
    public let root: URL
    public let run: String
    public let rules: ScoringRules
    /// Gives stages when set; otherwise they come from the stage rule.
    public let graphSource: GraphSource?
    /// When set, only checkpoints this key signed are served (graph ones too).
    public let verifyKey: CheckpointSigningKey?
    private let served = Mutex<ServedModel?>(nil)
    private let servedGraph: Mutex<ServedGraphModel?>
    /// The steps last tried, good or bad, so a refused checkpoint is not reloaded every poll.
    private let lastAttempted = Mutex<Int?>(nil)
    private let lastGraphAttempted: Mutex<Int?>
    private let metrics: ServiceMetrics?
    private let logger: Logger
    private let driftMonitor: DriftMonitor

    /// `initialGraph` is a graph model already loaded from `graphSource` (the command line loads
    /// it first, so that a wrong path stops the start instead of serving rule stages).
    public init(root: URL, run: String, rules: ScoringRules, graphSource: GraphSource? = nil,
                initialGraph: ServedGraphModel? = nil, verifyKey: CheckpointSigningKey? = nil,
                metrics: ServiceMetrics? = nil, logger: Logger, driftMonitor: DriftMonitor = DriftMonitor()) {
        self.driftMonitor = driftMonitor
        self.root = root
        self.verifyKey = verifyKey
        self.run = run
        self.rules = rules
        self.graphSource = graphSource
        servedGraph = Mutex(initialGraph)
        lastGraphAttempted = Mutex(initialGraph?.scorer.model.info.step)
        self.metrics = metrics
        self.logger = logger
    }

    public var currentModel: ModelSummary? { served.withLock { $0?.summary } }

    /// The served LSTM, for building the customer table with it.
    public var servedLSTM: LSTMScorer? { served.withLock { $0?.scorer } }

    /// Loads the checkpoints the `best` (else `latest`) pointers of the run (and of the graph run) name when
    /// they differ from the ones last tried.
    ///
    /// Returns true when a new model is now served. Loading and verification happen on the
    /// caller's thread, never under the lock; a checkpoint that fails them is logged and
    /// skipped until its pointer moves again, and the model already served stays.
    @discardableResult
    public func reloadIfChanged() -> Bool {
        let graphMoved = reloadGraphIfChanged()
        let moved = loadMovedModel()
        guard let model = moved ?? (graphMoved ? served.withLock({ $0?.scorer.model }) : nil) else { return false }
        do {
            let next = try ServedModel(model, graph: servedGraph.withLock { $0 }, rules: rules)
            served.withLock { $0 = next }
            if moved != nil {
                metrics?.recordReload(step: model.info.step)
                logger.info("serving run '\(run)' step \(model.info.step) from \(model.info.path)")
            }
            return true
        } catch {
            refuse(step: model.info.step, error)
            return false
        }
    }

    /// Counts and logs an LSTM checkpoint that will not be served, and what serves instead.
    private func refuse(step: Int, _ error: any Error) {
        metrics?.recordRefusedReload()
        let keeping = currentModel.map { "step \($0.info.step) keeps serving" } ?? "no model is served yet"
        logger.error("refused checkpoint step \(step) of run '\(run)': \(error); \(keeping)")
    }

    /// The LSTM checkpoint the run serves when it moved and loads; nil otherwise.
    private func loadMovedModel() -> ScoringModel? {
        guard let latest = movedStep(run: run, last: lastAttempted) else { return nil }
        do {
            let model = try ScoringModel.load(root: root, run: run, step: latest, verifyKey: verifyKey)
            if let current = currentModel, current.featureCount != model.featureCount {
                throw ScoringError.incompatible(path: model.info.path, reason: "it reads \(model.featureCount) features, the served model \(current.featureCount)")
            }
            return model
        } catch {
            refuse(step: latest, error)
            return nil
        }
    }

    /// Swaps in the graph run's new `latest` when it loads and fits the served LSTM; true if it did.
    private func reloadGraphIfChanged() -> Bool {
        guard let graphSource, let latest = movedStep(run: graphSource.run, last: lastGraphAttempted) else { return false }
        do {
            let next = try graphSource.load(root: root, step: latest, verifyKey: verifyKey)
            if let lstm = served.withLock({ $0?.scorer.model }), let reason = next.scorer.model.incompatibility(with: lstm) {
                throw ScoringError.incompatible(path: next.scorer.model.info.path, reason: reason)
            }
            servedGraph.withLock { $0 = next }
            logger.info("stages from graph run '\(graphSource.run)' step \(latest), reference graph as of day \(next.reference.asOfDay)")
            return true
        } catch {
            metrics?.recordRefusedReload()
            let keeping = servedGraph.withLock { $0?.scorer.model.info.step }.map { "step \($0) keeps giving stages" } ?? "stages come from the rule"
            logger.error("refused graph checkpoint step \(latest) of run '\(graphSource.run)': \(error); \(keeping)")
            return false
        }
    }

    /// The step `run` serves (`best`, else `latest`) when it differs from `last` (which it then becomes).
    private func movedStep(run: String, last: borrowing Mutex<Int?>) -> Int? {
        let latest: Int?
        do {
            latest = try CheckpointStore(root: root, run: run).servingStep()
        } catch {
            logger.warning("cannot read the latest pointer of run '\(run)': \(error)")
            return nil
        }
        guard let latest, latest != last.withLock({ $0 }) else { return nil }
        last.withLock { $0 = latest }
        return latest
    }

    /// Polls `latest` every `interval` until the task is cancelled.
    public func watch(every interval: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { break }
            // Loading parses and hashes a file: keep it off the cooperative pool's threads.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global(qos: .utility).async {
                    self.reloadIfChanged()
                    continuation.resume()
                }
            }
        }
    }

    public func score(_ request: ScoreRequest) throws -> ScoreResult {
        guard let model = served.withLock({ $0 }) else { throw ClientError(503, "no model is loaded yet") }
        let result = try model.score(request)
        metrics?.recordScored(customers: result.scores.count)
        if let counts = result.drift {
            let (indices, customers, crossed) = driftMonitor.record(counts, step: result.model.step)
            metrics?.recordDrift(indices, customers: customers, minimumCustomers: driftMonitor.minimumCustomers)
            for index in crossed {
                logger.warning("drift: \(index.kind.rawValue) \(index.name) has a population stability index of \(String(format: "%.3f", index.psi)) over the last \(customers) scored customers, above \(driftMonitor.threshold), against the training customers of step \(result.model.step)")
            }
        }
        return result
    }
}

extension ServedModel {
    /// Builds one feature block in request order and scores it in one pass.
    func score(_ request: ScoreRequest) throws -> ScoreResult {
        let steps = summary.historyLength, width = summary.featureCount, rowSize = steps * width
        let asOf = request.asOfDay ?? Int((Date().timeIntervalSince1970 / 86_400).rounded(.down))
        var features = [Float](repeating: 0, count: request.customers.count * rowSize)
        var lengths = [Int32](repeating: 0, count: request.customers.count)

        var eventCustomers: [Int] = []
        var events: [CustomerEvent] = []
        for (index, customer) in request.customers.enumerated() {
            switch customer {
            case let .events(_, customerEvents):
                eventCustomers.append(index)
                events.append(contentsOf: customerEvents)
            case let .features(id, rows, length):
                // The request was checked against the model of its time; a reload since may differ.
                guard rows.count % width == 0, rows.count / width <= steps else {
                    throw ClientError(409, "customer \(id): the model changed while the request was read; resend it")
                }
                features.replaceSubrange(index * rowSize..<index * rowSize + rows.count, with: rows)
                // Rows past `length` are padding the model ignores; zero them as training did.
                for k in length * width..<rows.count { features[index * rowSize + k] = 0 }
                lengths[index] = Int32(length)
            }
        }
        if !eventCustomers.isEmpty {
            let sequences = scoringFeatures(events: events, asOf: asOf, manifest: scorer.model.dataset)
            var position: [String: Int] = [:]
            for (k, id) in sequences.customerIDs.enumerated() { position[id] = k }
            for index in eventCustomers {
                let id = request.customers[index].id
                guard let k = position[id] else {
                    throw ClientError(422, "customer \(id): no purchase on or before the as-of day \(ByteParsing.isoDate(asOf)) (\(asOf)); nothing to score")
                }
                let source = sequences.sequence(of: k)
                features.replaceSubrange(index * rowSize..<(index + 1) * rowSize, with: source)
                lengths[index] = sequences.lengths[k]
            }
        }

        let count = request.customers.count
        var churn = [Float](repeating: 0, count: count), spend = [Float](repeating: 0, count: count)
        let headStages = scorer.stageCount
        var lstmStages = [Float](repeating: 0, count: count * headStages)
        features.withUnsafeBufferPointer { f in
            lengths.withUnsafeBufferPointer { l in
                churn.withUnsafeMutableBufferPointer { c in
                    spend.withUnsafeMutableBufferPointer { s in
                        lstmStages.withUnsafeMutableBufferPointer { z in
                            scorer.score(features: f.baseAddress!, lengths: l.baseAddress!, count: count,
                                         churn: c.baseAddress!, spend: s.baseAddress!,
                                         stages: headStages > 0 ? z.baseAddress! : nil)
                        }
                    }
                }
            }
        }
        let stages = graph.flatMap { graphStages($0, events: events, asOf: asOf) }
        let classes = summary.stageNames.count
        let scores = (0..<count).map { index in
            let id = request.customers[index].id
            let graphStage = stages.flatMap { stages in stages.rows[id].map { stages.probabilities[$0 * classes..<($0 + 1) * classes] } }
            return scorer.customerScore(id, index: index, churn: churn, spend: spend, lengths: lengths, headStages: lstmStages,
                                        graphStage: graphStage, rules: rules, highValueLine: summary.highValueLine.amount)
        }
        if let bad = scores.first(where: { $0.nonFiniteScore != nil }) {
            throw ClientError(422, "customer \(bad.customerID): \(bad.nonFiniteScore!); its features are outside what the model can score")
        }
        var result = ScoreResult(model: summary.info, asOfDay: asOf, stageNames: summary.stageNames, scores: scores)
        if let reference = scorer.model.drift {
            var counts = DriftCounter(reference: reference)
            features.withUnsafeBufferPointer { f in
                for index in 0..<count {
                    counts.add(sequence: f.baseAddress! + index * rowSize, length: Int(lengths[index]), churn: churn[index], spend: spend[index])
                }
            }
            result.drift = counts
        }
        if request.explain {
            // From the zeros baseline: a request has no population to average over.
            result.explanations = features.withUnsafeBufferPointer { f in
                lengths.withUnsafeBufferPointer { l in
                    Explainer(model: scorer.model).explain(features: f.baseAddress!, lengths: l.baseAddress!, count: count)
                }
            }
        }
        return result
    }

    /// Stage probabilities of the event customers who bought a product: they join the
    /// reference graph; customers sent as features, or without product ids, keep the rule stage.
    func graphStages(_ graph: ServedGraphModel, events: [CustomerEvent], asOf: Int) -> (probabilities: [Float], rows: [String: Int])? {
        let model = graph.scorer.model
        guard !events.isEmpty,
              let request = scoringGraph(events: events, asOf: asOf, spec: model.dataset.spec, statistics: model.graphStatistics)
        else { return nil }
        // A customer with no product the reference knows would be an isolated node, which the
        // stage rule describes better than a model trained on neighbourhoods.
        let csr = request.graph.csr, customers = request.graph.customerNodes
        var rows: [String: Int] = [:]
        for (k, id) in request.customerIDs.enumerated()
        where (csr.offsets[k]..<csr.offsets[k + 1]).contains(where: {
            graph.reference.knowsProduct(request.graph.productIDs[Int(csr.neighbours[$0]) - customers])
        }) {
            rows[id] = k
        }
        let probabilities = graph.scorer.stageProbabilities(joining: graph.reference, request: request.graph, customerIDs: request.customerIDs)
        return (probabilities, rows)
    }
}
