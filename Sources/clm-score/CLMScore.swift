import ArgumentParser
import Checkpoints
import CustomerData
import EventFileArguments
import Foundation
import Logging
import Scoring
import ScoringLoad
import ScoringService
import Tensors
import ToolSupport

@main
struct CLMScore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-score",
        abstract: "Score customers with a trained checkpoint: churn probability, expected spend, lifecycle stage, action.",
        subcommands: [Batch.self, Serve.self, LoadTestCommand.self])
}

extension ScoringError: UserFacingError {}
extension DataError: UserFacingError {}
extension ClientError: UserFacingError {
    public var description: String { message }
}
extension LoadTestError: UserFacingError {}

func reporting<T>(_ body: () async throws -> T) async throws -> T {
    try await reportingUserErrors(tool: "clm-score", body)
}

/// Options naming the checkpoint to score with.
struct CheckpointOptions: ParsableArguments {
    @Option(help: "Root of the checkpoint store (the training config's `checkpoints`).") var checkpoints: String?
    @Option(help: "Run name: its best checkpoint is used (the best validation, as training's test split; latest when none is marked).") var run: String?
    @Option(help: "A checkpoint directory (step-NNNNNN) to use instead of a run's best.") var checkpoint: String?
    @Option(help: "YAML or JSON file of action and stage rule thresholds (see docs/scoring.md).") var rules: String?
    @Option(help: "A GraphSAGE run in --checkpoints whose best checkpoint gives the stages (instead of the LSTM's stage head or the rule).") var gnnRun: String?
    @Option(help: "A GraphSAGE checkpoint directory to give the stages, instead of --gnn-run.") var gnnCheckpoint: String?
    @Option(help: "Refuse checkpoints this key (the training run's --signing-key-file) did not sign.") var verifyKeyFile: String?

    func verifyKey() throws -> CheckpointSigningKey? {
        do {
            return try verifyKeyFile.map(CheckpointSigningKey.load(path:))
        } catch {
            throw ScoringError.invalidInput("--verify-key-file: \(error)")
        }
    }

    func load(verifyKey key: CheckpointSigningKey?) throws -> ScoringModel {
        switch (checkpoint, run) {
        case let (path?, nil): return try ScoringModel.load(directory: URL(fileURLWithPath: path), verifyKey: key)
        case let (nil, run?):
            guard let checkpoints else { throw ScoringError.invalidInput("--run needs --checkpoints DIR") }
            return try ScoringModel.load(root: URL(fileURLWithPath: checkpoints), run: run, verifyKey: key)
        case (.some, .some): throw ScoringError.invalidInput("give --run or --checkpoint, not both")
        case (nil, nil): throw ScoringError.invalidInput("name the model: --checkpoints DIR --run NAME, or --checkpoint PATH")
        }
    }

    /// The graph model named by --gnn-run or --gnn-checkpoint, checked against the LSTM's stages.
    func loadGraph(compatibleWith lstm: ScoringModel, verifyKey key: CheckpointSigningKey?) throws -> GraphScoringModel? {
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

    func loadRules() throws -> ScoringRules { try rules.map(ScoringRules.load(path:)) ?? ScoringRules() }
}

struct Batch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Score every customer of an event file into a CSV or JSON Lines file.")

    @OptionGroup var model: CheckpointOptions
    @Option(help: "The event file (same layouts as clm-data import).") var events: String
    @Option(help: "Score as of this day: YYYY-MM-DD, YYYYMMDD or a day number. Default: the file's last event day.") var asOf: String?
    @Option(help: "Output file; .csv or .jsonl picks the format. Written atomically.") var out: String
    @Option(help: "Customers per forward pass (256 keeps a step's gates in L2 cache).") var batchSize: Int = 256
    @Option(help: "Threads scoring batches in parallel (default: every core). The output is the same for any count.")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    @Flag(help: "Add three reasons per customer for its churn and its expected spend (integrated gradients; see docs/scoring.md). Several times slower.")
    var explain = false
    @Option(help: "Integrated-gradients steps per customer with --explain (more: attributions add up more exactly, slower).")
    var explainSteps: Int = 32
    @Option(help: "What --explain compares a customer with: zeros (every feature at its training mean) or tenure-mean (the scored customers of the same history length, on average).")
    var explainBaseline: ExplanationBaseline = .zeros
    @Option(help: "Also write the run's summary as JSON (stability indices against the training customers; with --explain, mean attribution per reason group), for clm-report --summary.")
    var summaryOut: String?
    @OptionGroup var eventFile: EventFileArguments

    func run() async throws {
        // Parallelism comes from --threads; OpenBLAS's own threads would spin in sched_yield
        // between small GEMMs and take the cores from them.
        BLAS.setThreadCount(1)
        try await reporting {
            let options = try eventFile.options()
            let rules = try model.loadRules()
            let key = try model.verifyKey()
            let loaded = try model.load(verifyKey: key)
            let graph = try model.loadGraph(compatibleWith: loaded, verifyKey: key)
            let day = try asOf.map { try parseDay($0, option: "--as-of") }
            let summary = try BatchScoring.run(
                scorer: LSTMScorer(model: loaded), events: events, options: options, asOf: day, rules: rules,
                output: out, batchSize: batchSize, threads: threads, graph: graph.map(GraphStageScorer.init(model:)),
                explain: explain ? ExplanationSettings(steps: explainSteps, baseline: explainBaseline) : nil)
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
            print(String(format: "speed     %.0f customers/s scoring (features + LSTM, %.2f s on %d thread%@), %.0f customers/s LSTM alone; read %.2f s, write %.2f s",
                         summary.customersPerSecond, summary.scoreSeconds, summary.threads, summary.threads == 1 ? "" : "s",
                         summary.modelCustomersPerSecond,
                         summary.readSeconds, summary.writeSeconds))
            if let settings = summary.explanation {
                print(String(format: "reasons   integrated gradients, %d steps from the %@ baseline: %.2f s on %d thread%@ (%.0f customers/s); attributions add up to the score change within %.2g%% (worst: %@, %@)",
                             settings.steps, settings.baseline.rawValue, summary.explainSeconds, summary.threads, summary.threads == 1 ? "" : "s",
                             Double(summary.customers) / max(summary.explainSeconds, 1e-9), (summary.worstCompleteness?.error ?? 0) * 100,
                             summary.worstCompleteness?.customerID ?? "-", summary.worstCompleteness?.target ?? "-"))
            }
            print(String(format: "high value expected spend >= %.2f", summary.highValueLine))
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
            print("wrote     \(out)")
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve scores over HTTP, following the run's best checkpoint (latest when none is marked).")

    @Option(help: "Root of the checkpoint store.") var checkpoints: String
    @Option(help: "Run name; its `best` (else `latest`) is polled and hot-reloaded.") var run: String
    @Option(help: "Address to bind; anything but loopback requires --token.") var host: String = "127.0.0.1"
    @Option(help: "Port (0 picks a free one and prints it).") var port: Int = 8080
    @Option(help: "Bearer token required on /v1/* and /metrics (visible in `ps`; prefer --token-file or CLM_SCORE_TOKEN).") var token: String?
    @Option(help: "A file holding the bearer token (one line).") var tokenFile: String?
    @Option(help: "Refuse checkpoints this key (the training run's --signing-key-file) did not sign.") var verifyKeyFile: String?
    @Option(help: "Seconds between polls of `best` / `latest`.") var pollSeconds: Double = 2
    @Option(help: "Close a connection that sends nothing for this many seconds (idle keep-alive, a stalled header or body).")
    var idleTimeoutSeconds: Double = 10
    @Option(help: "Most customers per request.") var maxCustomers: Int = 1000
    @Option(help: "Log a warning when a feature's, input's or score's stability index over recent traffic passes this (0.2: a large shift).")
    var psiThreshold: Double = 0.2
    @Option(help: "Customers per drift window; /metrics' clm_*_psi gauges cover the current window and the one before.")
    var driftWindow: Int = 5000
    @Option(help: "Largest request body in bytes.") var maxBodyBytes: Int = 1 << 20
    @Option(help: "YAML or JSON file of action and stage rule thresholds.") var rules: String?
    @Option(help: "A GraphSAGE run in --checkpoints whose best checkpoint gives stages (followed like --run; needs --graph-events).") var gnnRun: String?
    @Option(help: "Event file of the population request customers join (the graph's other customers and products).") var graphEvents: String?
    @Option(help: "Layout of --graph-events.") var graphPreset: Preset = .canonical
    @Option(help: "Build the reference graph as of this day. Default: the --graph-events file's last event day.") var graphAsOf: String?

    /// Where the graph model comes from, when --gnn-run asks for one.
    func graphSource() throws -> GraphSource? {
        guard let gnnRun else {
            if graphEvents != nil { throw ScoringError.invalidInput("--graph-events needs --gnn-run") }
            return nil
        }
        guard let graphEvents else {
            throw ScoringError.invalidInput("--gnn-run needs --graph-events FILE: request customers join that population's customer–product graph")
        }
        return GraphSource(run: gnnRun, events: graphEvents, options: try EventFileOptions(preset: graphPreset),
                           asOf: try graphAsOf.map { try parseDay($0, option: "--graph-as-of") })
    }

    func run() async throws {
        // Parallelism comes from requests; OpenBLAS's own threads would spin in sched_yield
        // between small GEMMs and take the cores from the request threads (p99 200 ms -> 3-5 ms).
        BLAS.setThreadCount(1)
        try await reporting {
            var configuration = ServiceConfiguration(checkpoints: URL(fileURLWithPath: checkpoints), run: run)
            do {
                configuration.verifyKey = try verifyKeyFile.map(CheckpointSigningKey.load(path:))
            } catch {
                throw ScoringError.invalidInput("--verify-key-file: \(error)")
            }
            configuration.graphSource = try graphSource()
            // Loaded here first: a wrong run or file stops the start with its error.
            configuration.initialGraph = try configuration.graphSource?.load(root: configuration.checkpoints, verifyKey: configuration.verifyKey)
            configuration.host = host
            configuration.port = port
            configuration.token = try ServiceConfiguration.resolveToken(
                flag: token, file: tokenFile, environment: ProcessInfo.processInfo.environment["CLM_SCORE_TOKEN"])
            guard pollSeconds > 0 && pollSeconds.isFinite else { throw ScoringError.invalidInput("--poll-seconds must be positive") }
            configuration.pollInterval = .milliseconds(Int64(pollSeconds * 1000))
            guard idleTimeoutSeconds > 0 && idleTimeoutSeconds.isFinite && idleTimeoutSeconds <= 86_400 else {
                throw ScoringError.invalidInput("--idle-timeout-seconds must be in (0, 86400], got \(idleTimeoutSeconds)")
            }
            configuration.idleTimeout = .milliseconds(Int64(idleTimeoutSeconds * 1000))
            guard maxCustomers >= 1, maxBodyBytes >= 1024 else {
                throw ScoringError.invalidInput("--max-customers must be at least 1 and --max-body-bytes at least 1024")
            }
            configuration.limits.maxCustomers = maxCustomers
            configuration.limits.maxBodyBytes = maxBodyBytes
            configuration.rules = try rules.map(ScoringRules.load(path:)) ?? ScoringRules()
            guard psiThreshold > 0, driftWindow >= 1 else {
                throw ScoringError.invalidInput("--psi-threshold must be above 0 and --drift-window at least 1")
            }
            configuration.psiThreshold = psiThreshold
            configuration.driftWindow = driftWindow
            var logger = Logger(label: "clm-score")
            logger.logLevel = .info
            try await runService(configuration: configuration, logger: logger) { port in
                FileHandle.standardOutput.write(Data("listening on http://\(host):\(port)\n".utf8))
            }
        }
    }
}

struct LoadTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadtest", abstract: "Send single-customer score requests to a local server at a fixed rate.")

    @Option(help: "Server URL; loopback only.") var url: String = "http://127.0.0.1:8080"
    @Option(help: "Requests per second.") var rate: Double = 1000
    @Option(help: "Duration in seconds.") var seconds: Double = 10
    @Option(help: "Keep-alive connections (one thread each).") var connections: Int = 4
    @Option(help: "Bearer token, when the server wants one.") var token: String?
    @Option(help: "A request body file; default: one synthetic customer with a year of purchases.") var body: String?

    func run() async throws {
        try await reporting {
            guard let parsed = URL(string: url), parsed.scheme == "http", let host = parsed.host else {
                throw ScoringError.invalidInput("--url must look like http://127.0.0.1:PORT, got \(url)")
            }
            let payload: Data
            if let body {
                guard let data = FileManager.default.contents(atPath: body) else { throw ScoringError.io(path: body, reason: "cannot read") }
                payload = data
            } else {
                payload = Data(LoadTest.sampleBody().utf8)
            }
            var headers: [String: String] = [:]
            if let token { headers["Authorization"] = "Bearer \(token)" }
            let report = try LoadTest.run(
                host: host, port: parsed.port ?? 80, path: "/v1/score", body: payload, rate: rate, seconds: seconds,
                connections: connections, headers: headers)
            print(report.summary)
        }
    }
}

extension ExplanationBaseline: ExpressibleByArgument {}

/// The batch's summary as JSON, written atomically: what `clm-report --summary` reads.
func writeSummary(_ summary: BatchSummary, to path: String) throws {
    func number(_ value: Double) -> String { value.isFinite ? String(format: "%.6g", value) : "null" }
    var text = "{\"run\":\(jsonString(summary.checkpoint.run)),\"step\":\(summary.checkpoint.step),\"customers\":\(summary.customers)"
    text += ",\"drift\":[" + summary.drift.map {
        "{\"kind\":\(jsonString($0.kind.rawValue)),\"name\":\(jsonString($0.name)),\"psi\":\(number($0.psi))}"
    }.joined(separator: ",") + "]"
    if let attribution = summary.meanAbsoluteAttribution, let settings = summary.explanation {
        func groups(_ values: [Double]) -> String {
            "{" + zip(Explainer.groupNames, values).map { "\(jsonString($0)):\(number($1))" }.joined(separator: ",") + "}"
        }
        text += ",\"explanation\":{\"steps\":\(settings.steps),\"baseline\":\(jsonString(settings.baseline.rawValue))"
        text += ",\"worst_completeness_error\":\(number(summary.worstCompleteness?.error ?? 0))"
        text += ",\"mean_absolute_attribution\":{\"churn_logit\":\(groups(attribution.churn)),\"expected_spend\":\(groups(attribution.spend))}}"
    }
    text += "}\n"
    try writeFileAtomically(Data(text.utf8), to: URL(fileURLWithPath: path))
}
