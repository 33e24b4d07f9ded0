import ArgumentParser
import Checkpoints
import CustomerData
import EventFileArguments
import Foundation
import RunFiles
import Scoring
import Tensors

/// Options naming the checkpoint to score with.
public struct CheckpointOptions: ParsableArguments {
    public init() {}

    @Option(help: "Root of the checkpoint store (the training config's `checkpoints`).") var checkpoints: String?
    @Option(help: "Run name: its best checkpoint is used (the best validation, as training's test split; latest when none is marked).") var run: String?
    @Option(help: "A checkpoint directory (step-NNNNNN) to use instead of a run's best.") var checkpoint: String?
    @Option(help: "YAML or JSON file of action and stage rule thresholds (see docs/scoring.md).") var rules: String?
    @Option(help: "A GraphSAGE run in --checkpoints whose best checkpoint gives the stages (instead of the LSTM's stage head or the rule).") var gnnRun: String?
    @Option(help: "A GraphSAGE checkpoint directory to give the stages, instead of --gnn-run.") var gnnCheckpoint: String?
    @Option(help: "Refuse checkpoints this key (the training run's --signing-key-file) did not sign.") var verifyKeyFile: String?

    /// Whether --gnn-run or --gnn-checkpoint was given.
    public var namesGraphModel: Bool { gnnRun != nil || gnnCheckpoint != nil }

    public func verifyKey() throws -> CheckpointSigningKey? { try loadVerifyKey(verifyKeyFile) }

    public func load(verifyKey key: CheckpointSigningKey?) throws -> ScoringModel {
        try loadScoringModel(checkpoints: checkpoints, run: run, checkpoint: checkpoint, verifyKey: key)
    }

    /// The graph model named by --gnn-run or --gnn-checkpoint, checked against the LSTM's stages.
    public func loadGraph(compatibleWith lstm: ScoringModel, verifyKey key: CheckpointSigningKey?) throws -> GraphScoringModel? {
        let graph: GraphScoringModel
        switch (gnnCheckpoint, gnnRun) {
        case (nil, nil): return nil
        case let (path?, nil): graph = try GraphScoringModel.load(directory: URL(fileURLWithPath: path), verifyKey: key)
        case let (nil, run?):
            guard let checkpoints else { throw ScoringError.invalidInput("--gnn-run needs --checkpoints DIR") }
            graph = try GraphScoringModel.load(root: URL(fileURLWithPath: checkpoints), run: run, verifyKey: key)
        case (.some, .some): throw ScoringError.invalidInput("give --gnn-run or --gnn-checkpoint, not both")
        }
        if let reason = graph.incompatibility(with: lstm) { throw ScoringError.incompatible(path: graph.info.path, reason: reason) }
        return graph
    }

    public func loadRules() throws -> ScoringRules { try rules.map(ScoringRules.load(path:)) ?? ScoringRules() }
}

/// The key of --verify-key-file, if given.
public func loadVerifyKey(_ path: String?) throws -> CheckpointSigningKey? {
    do {
        return try path.map(CheckpointSigningKey.load(path:))
    } catch {
        throw ScoringError.invalidInput("--verify-key-file: \(error)")
    }
}

/// The LSTM checkpoint named by --checkpoint PATH, or by --checkpoints DIR --run NAME (its best step).
public func loadScoringModel(checkpoints: String?, run: String?, checkpoint: String?, verifyKey key: CheckpointSigningKey?) throws -> ScoringModel {
    switch (checkpoint, run) {
    case let (path?, nil): return try ScoringModel.load(directory: URL(fileURLWithPath: path), verifyKey: key)
    case let (nil, run?):
        guard let checkpoints else { throw ScoringError.invalidInput("--run needs --checkpoints DIR") }
        return try ScoringModel.load(root: URL(fileURLWithPath: checkpoints), run: run, verifyKey: key)
    case (.some, .some): throw ScoringError.invalidInput("give --run or --checkpoint, not both")
    case (nil, nil): throw ScoringError.invalidInput("name the model: --checkpoints DIR --run NAME, or --checkpoint PATH")
    }
}

/// The options of a batch scoring run, shared by `clm-score batch` and `clm-score-mpi`.
public struct BatchOptions: ParsableArguments {
    public init() {}

    @OptionGroup public var model: CheckpointOptions
    @Option(help: "The event file (same layouts as clm-data import).") public var events: String
    @Option(help: "Score as of this day: YYYY-MM-DD, YYYYMMDD or a day number. Default: the file's last event day.") public var asOf: String?
    @Option(help: "Output file; .csv or .jsonl picks the format. Written atomically.") public var out: String
    @Option(help: "Customers per forward pass (256 keeps a step's gates in L2 cache).") public var batchSize: Int = 256
    @Option(help: "Threads scoring batches in parallel (default: every core this process may run on, which taskset or mpirun's binding can limit). The output is the same for any count.")
    public var threads: Int = usableProcessorCount()
    @Flag(help: "Add three reasons per customer for its churn and its expected spend (integrated gradients; see docs/scoring.md). Several times slower.")
    public var explain = false
    @Option(help: "Integrated-gradients steps per customer with --explain (more: attributions add up more exactly, slower).")
    public var explainSteps: Int = 32
    @Option(help: "What --explain compares a customer with: zeros (every feature at its training mean) or tenure-mean (the scored customers of the same history length, on average).")
    public var explainBaseline: ExplanationBaseline = .zeros
    @Option(help: "Where the high-value line comes from when the rules set no high_value_amount: training (the top fraction of the training customers' expected spends, stored in the checkpoint: the line the service uses) or scored (the top fraction of this file's customers).")
    public var highValueFrom: HighValueSource = .training
    @Option(help: "Also write the run's summary as JSON (stability indices against the training customers; with --explain, mean attribution per reason group), for clm-report --summary.")
    public var summaryOut: String?
    @OptionGroup public var eventFile: EventFileArguments

    /// Everything a run needs, loaded and checked.
    public struct Prepared {
        public var options: EventFileOptions
        public var rules: ScoringRules
        public var model: ScoringModel
        public var graph: GraphScoringModel?
        public var asOfDay: Int?
        public var explanation: ExplanationSettings?
    }

    public func prepare() throws -> Prepared {
        // Parallelism comes from --threads (and ranks); OpenBLAS's own threads would spin in
        // sched_yield between small GEMMs and take the cores from them.
        BLAS.setThreadCount(1)
        let options = try eventFile.options()
        let rules = try model.loadRules()
        let key = try model.verifyKey()
        let loaded = try model.load(verifyKey: key)
        let graph = try model.loadGraph(compatibleWith: loaded, verifyKey: key)
        let day = try asOf.map { try parseDay($0, option: "--as-of") }
        return Prepared(options: options, rules: rules, model: loaded, graph: graph, asOfDay: day,
                        explanation: explain ? ExplanationSettings(steps: explainSteps, baseline: explainBaseline) : nil)
    }

    /// `clm-score batch`: one process, every core.
    public func runInOneProcess() throws {
        let prepared = try prepare()
        let summary = try BatchScoring.run(scorer: LSTMScorer(model: prepared.model), job: job(prepared))
        try report(summary, prepared)
    }

    /// The job these options describe, with what `prepare` loaded.
    public func job(_ prepared: Prepared) -> BatchScoringJob {
        BatchScoringJob(events: events, options: prepared.options, asOf: prepared.asOfDay, rules: prepared.rules, output: out,
                        batchSize: batchSize, threads: threads, graph: prepared.graph.map(GraphStageScorer.init(model:)),
                        explain: prepared.explanation, highValue: highValueFrom)
    }

    /// Prints what the run did and writes `--summary-out`.
    public func report(_ summary: BatchSummary, _ prepared: Prepared) throws {
        let (rules, graph, loaded) = (prepared.rules, prepared.graph, prepared.model)
        let c = summary.checkpoint
        print("model     run \(c.run) step \(c.step) (\(c.path))")
        if rules.stageRule {
            print("stages    from the stage rule (stage_rule: true in the rules)")
        } else if let g = graph?.info {
            print("stages    gnn run \(g.run) step \(g.step) (\(g.path)): \(summary.customersWithGraphStage) customers, "
                  + String(format: "%.2f s for the graph and its forward", summary.graphSeconds)
                  + (loaded.heads.stageCount > 0 ? "; the others from the LSTM's stage head" : "; the others from the stage rule"))
        } else if loaded.heads.stageCount > 0 {
            print("stages    from the LSTM's stage head")
        } else {
            print("stages    from the stage rule (the checkpoint has no stage head and no --gnn-run was given)")
        }
        print("as of     \(ByteParsing.isoDate(summary.asOfDay)) (day \(summary.asOfDay)); \(summary.rowsRead) rows read, \(summary.rowsRejected) rejected")
        print("customers \(summary.customers) scored, \(summary.customersWithoutHistory) left out (no purchase by the as-of day)")
        print(String(format: "speed     %.0f customers/s scoring (features + LSTM, %.2f s on %@), %.0f customers/s LSTM alone (%@ kernel); read %.2f s, write %.2f s",
                     summary.customersPerSecond, summary.scoreSeconds, workersDescription(summary),
                     summary.modelCustomersPerSecond, ForwardKernel.chosen.description,
                     summary.readSeconds, summary.writeSeconds))
        if let settings = summary.explanation {
            print(String(format: "reasons   integrated gradients, %d steps from the %@ baseline: %.2f s on %@ (%.0f customers/s); attributions add up to the score change within %.2g%% (worst: %@, %@)",
                         settings.steps, settings.baseline.rawValue, summary.explainSeconds, workersDescription(summary),
                         Double(summary.customers) / max(summary.explainSeconds, 1e-9), (summary.worstCompleteness?.error ?? 0) * 100,
                         summary.worstCompleteness?.customerID ?? "-", summary.worstCompleteness?.target ?? "-"))
        }
        print(String(format: "high value expected spend >= %.2f (", summary.highValueLine.amount) + summary.highValueLine.origin + ")")
        if summary.drift.isEmpty {
            print("drift     the checkpoint has no training reference (drift.json): retrain to get stability indices")
        } else {
            let shifted = summary.drift.filter { $0.psi > 0.2 }
            print("drift     population stability index against the training customers (> 0.2: large shift): "
                  + (shifted.isEmpty ? "none above 0.2" : shifted.map { "\($0.name) \(String(format: "%.3f", $0.psi))" }.joined(separator: ", ")))
            for index in summary.drift {
                let label = index.kind.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)
                    + index.name.padding(toLength: 34, withPad: " ", startingAt: 0)
                print("          " + label + String(format: "%6.3f  ", index.psi) + index.verdict)
            }
        }
        if let summaryOut {
            try writeSummary(summary, to: summaryOut)
            print("wrote     \(summaryOut) (summary)")
        }
        print("actions   " + summary.actionCounts.sorted(by: { $0.key < $1.key }).map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        print("wrote     \(out)" + (summary.rankBytesWritten.isEmpty ? ""
            : " (bytes per rank: " + summary.rankBytesWritten.map(String.init).joined(separator: ", ") + ")"))
    }
}

extension ExplanationBaseline: ExpressibleByArgument {}
extension HighValueSource: ExpressibleByArgument {}

/// "2 threads", or "3 ranks × 2 threads" under mpirun.
func workersDescription(_ summary: BatchSummary) -> String {
    let threads = "\(summary.threads) thread\(summary.threads == 1 ? "" : "s")"
    return summary.ranks > 1 ? "\(summary.ranks) ranks × \(threads)" : threads
}

/// The batch's summary as `clm-report --summary` reads it.
public func scoringSummary(_ summary: BatchSummary) -> ScoringSummary {
    var explanation: ScoringSummary.Explanation? = nil
    if let attribution = summary.meanAbsoluteAttribution, let settings = summary.explanation {
        func groups(_ values: [Double]) -> [String: Double] {
            Dictionary(zip(Explainer.groupNames, values), uniquingKeysWith: { first, _ in first })
        }
        explanation = ScoringSummary.Explanation(
            steps: settings.steps, baseline: settings.baseline.rawValue,
            worstCompletenessError: summary.worstCompleteness?.error ?? 0,
            meanAbsoluteAttribution: ["churn_logit": groups(attribution.churn), "expected_spend": groups(attribution.spend)])
    }
    return ScoringSummary(run: summary.checkpoint.run, step: summary.checkpoint.step, customers: summary.customers,
                          drift: summary.drift.map { ScoringSummary.Index(kind: $0.kind.rawValue, name: $0.name, psi: $0.psi) },
                          explanation: explanation)
}

/// Writes the batch's summary atomically, attribution groups in `Explainer.groupNames` order.
public func writeSummary(_ summary: BatchSummary, to path: String) throws {
    try scoringSummary(summary).write(to: URL(fileURLWithPath: path), groupOrder: Explainer.groupNames)
}
