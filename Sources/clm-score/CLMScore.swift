import ArgumentParser
import BatchScoringArguments
import Checkpoints
import CustomerData
import EventFileArguments
import Foundation
import Logging
import ONNXExport
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
        subcommands: [Batch.self, Serve.self, Export.self, LoadTestCommand.self])
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

struct Batch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Score every customer of an event file into a CSV or JSON Lines file.")

    @OptionGroup var batch: BatchOptions

    func run() async throws {
        try await reporting { try batch.runInOneProcess() }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve scores over HTTP, following the run's best checkpoint (latest when none is marked).")

    @Option(help: "Root of the checkpoint store.") var checkpoints: String
    @Option(help: "Run name in --checkpoints; its `best` (else `latest`) is polled and hot-reloaded. A run with no checkpoint is refused at start, listing the runs that have one.") var run: String
    @Flag(help: "Start even when --run has no checkpoint yet, answering 503 until its first one appears (a service started beside training).")
    var waitForRun = false
    @Option(help: "Address to bind; anything but loopback requires --token.") var host: String = "127.0.0.1"
    @Option(help: "Port (0 picks a free one and prints it).") var port: Int = 8080
    @Option(help: "Bearer token required on /v1/* and /metrics (visible in `ps`; prefer --token-file or CLM_SCORE_TOKEN).") var token: String?
    @Option(help: "A file holding the bearer token (one line).") var tokenFile: String?
    @Option(help: "Refuse checkpoints this key (the training run's --signing-key-file) did not sign.") var verifyKeyFile: String?
    @Option(help: "Seconds between polls of `best` / `latest`.") var pollSeconds: Double = 2
    @Option(help: "Close a connection that sends nothing for this many seconds (idle keep-alive, a stalled header or body).")
    var idleTimeoutSeconds: Double = 10
    @Option(help: "A request's head and body must arrive within this many seconds of its connection being ready (the shorter of this and --idle-timeout-seconds applies); else 408 and close.")
    var requestTimeoutSeconds: Double = 10
    @Option(help: "Most client connections open at once (default: half the descriptor limit, at most 16384).") var maxConnections: Int?
    @Option(help: "Most customers per request with \"explain\": true.") var maxExplainedCustomers: Int = 100
    @Option(help: "Explained requests computed at once (on threads of their own, below plain scoring's priority); one more gets 503 with Retry-After.")
    var explanationWorkers: Int = 1
    @Option(help: "Most customers per request.") var maxCustomers: Int = 1000
    @Option(help: "Log a warning when a feature's, input's or score's stability index over recent traffic passes this (0.2: a large shift).")
    var psiThreshold: Double = 0.2
    @Option(help: "Customers per drift window; /metrics' clm_*_psi gauges cover the current window and the one before.")
    var driftWindow: Int = 5000
    @Option(help: "Largest request body in bytes.") var maxBodyBytes: Int = 1 << 20
    @Option(help: "YAML or JSON file of action and stage rule thresholds.") var rules: String?
    @Option(help: "A GraphSAGE run in --checkpoints whose best checkpoint gives stages (followed like --run; needs --graph-events).") var gnnRun: String?
    @Option(help: "Event file of the population request customers join (the graph's other customers and products).") var graphEvents: String?
    @Option(help: "Build the reference graph as of this day. Default: the --graph-events file's last event day.") var graphAsOf: String?
    @Option(help: "Answer GET /v1/customers/{id} from this event file: every customer scored once at start (as clm-score batch scores it), again when the file or the checkpoint changes.")
    var events: String?
    @Option(help: "With --events: score as of this day (YYYY-MM-DD, YYYYMMDD or a day number). Default: the file's last event day.")
    var asOf: String?
    /// The layout of --events or --graph-events (never both: --events refuses --gnn-run), with
    /// the flags and meanings of clm-score batch's --events.
    @OptionGroup(title: "Layout of --events or --graph-events (as clm-score batch reads --events)") var graphEventFile: EventFileArguments

    /// The event file GET /v1/customers/{id} answers from, when --events names one.
    func customerEvents() throws -> CustomerEventsSource? {
        guard let events else {
            if asOf != nil { throw ScoringError.invalidInput("--as-of applies to --events FILE; give both") }
            return nil
        }
        if gnnRun != nil || graphEvents != nil {
            throw ScoringError.invalidInput("--events with --gnn-run/--graph-events: GET /v1/customers/{id} gives stages from the LSTM's stage head or the rule, not a graph model; serve the graph model without --events")
        }
        return CustomerEventsSource(path: events, options: try graphEventFile.options(),
                                    asOf: try asOf.map { try parseDay($0, option: "--as-of") })
    }

    /// Where the graph model comes from, when --gnn-run asks for one.
    func graphSource() throws -> GraphSource? {
        if graphEvents == nil && events == nil && graphEventFile.anyGiven {
            throw ScoringError.invalidInput("the event-file flags (--preset, --customer-col, --delimiter, ...) describe --events or --graph-events; give them with --events FILE, or with --gnn-run NAME --graph-events FILE")
        }
        guard let gnnRun else {
            if graphEvents != nil { throw ScoringError.invalidInput("--graph-events needs --gnn-run") }
            return nil
        }
        guard let graphEvents else {
            throw ScoringError.invalidInput("--gnn-run needs --graph-events FILE: request customers join that population's customer–product graph")
        }
        return GraphSource(run: gnnRun, events: graphEvents, options: try graphEventFile.options(),
                           asOf: try graphAsOf.map { try parseDay($0, option: "--graph-as-of") })
    }

    func run() async throws {
        // Parallelism comes from requests; OpenBLAS's own threads would spin in sched_yield
        // between small GEMMs and take the cores from the request threads (p99 200 ms -> 3-5 ms).
        BLAS.setThreadCount(1)
        try await reporting {
            var configuration = ServiceConfiguration(checkpoints: URL(fileURLWithPath: checkpoints), run: run)
            configuration.waitForRun = waitForRun
            configuration.verifyKey = try loadVerifyKey(verifyKeyFile)
            configuration.customerEvents = try customerEvents()
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
            guard requestTimeoutSeconds > 0 && requestTimeoutSeconds.isFinite && requestTimeoutSeconds <= 86_400 else {
                throw ScoringError.invalidInput("--request-timeout-seconds must be in (0, 86400], got \(requestTimeoutSeconds)")
            }
            configuration.requestTimeout = .milliseconds(Int64(requestTimeoutSeconds * 1000))
            configuration.maxConnections = maxConnections
            guard maxCustomers >= 1, maxBodyBytes >= 1024 else {
                throw ScoringError.invalidInput("--max-customers must be at least 1 and --max-body-bytes at least 1024")
            }
            configuration.limits.maxCustomers = maxCustomers
            configuration.limits.maxBodyBytes = maxBodyBytes
            configuration.limits.maxExplainedCustomers = maxExplainedCustomers
            configuration.explanationWorkers = explanationWorkers
            configuration.rules = try rules.map(ScoringRules.load(path:)) ?? ScoringRules()
            guard psiThreshold > 0, driftWindow >= 1 else {
                throw ScoringError.invalidInput("--psi-threshold must be above 0 and --drift-window at least 1")
            }
            configuration.psiThreshold = psiThreshold
            configuration.driftWindow = driftWindow
            var logger = Logger(label: "clm-score")
            logger.logLevel = .info
            try await runService(configuration: configuration, logger: logger) { [host] port in
                FileHandle.standardOutput.write(Data("listening on http://\(host):\(port)\n".utf8))
            }
        }
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an LSTM checkpoint as an ONNX model (churn probability, expected spend, stage probabilities) for ONNX Runtime.")

    enum Format: String, ExpressibleByArgument, CaseIterable { case onnx }

    @Option(help: "Export format.") var format: Format
    @Option(help: "Root of the checkpoint store (the training config's `checkpoints`).") var checkpoints: String?
    @Option(name: .customLong("run"), help: "Run name: its best checkpoint is exported (latest when none is marked).") var runName: String?
    @Option(help: "A checkpoint directory (step-NNNNNN) to export instead of a run's best.") var checkpoint: String?
    @Option(help: "Refuse checkpoints this key (the training run's --signing-key-file) did not sign.") var verifyKeyFile: String?
    @Option(help: "The model file to write (replaced atomically).") var out: String

    func run() throws {
        try reportingUserErrors(tool: "clm-score") {
            let model = try loadScoringModel(checkpoints: checkpoints, run: runName, checkpoint: checkpoint, verifyKey: try loadVerifyKey(verifyKeyFile))
            let bytes = try LSTMONNXExport.serializedModel(model)
            do {
                try writeFileAtomically(bytes, to: URL(fileURLWithPath: out))
            } catch {
                throw ScoringError.io(path: out, reason: "cannot write the model: \(error)")
            }
            print("wrote \(out): run \(model.info.run) step \(model.info.step), \(bytes.count) bytes, ONNX opset \(LSTMONNXExport.opsetVersion)")
        }
    }
}

struct LoadTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadtest", abstract: "Send single-customer score requests (POST /v1/score, or GET /v1/customers/{id} with --customer-ids) to a local server at a fixed rate.")

    @Option(help: "Server URL; loopback only.") var url: String = "http://127.0.0.1:8080"
    @Option(help: "Requests per second.") var rate: Double = 1000
    @Option(help: "Duration in seconds.") var seconds: Double = 10
    @Option(help: "Keep-alive connections (one thread each).") var connections: Int = 4
    @Option(help: "Bearer token, when the server wants one.") var token: String?
    @Option(help: "A request body file; default: one synthetic customer with a year of purchases.") var body: String?
    @Option(help: "GET /v1/customers/{id} for the ids in this file (one per line, a CSV's first column; a header line customer_id is skipped), in turn, instead of POST /v1/score (for serve --events).")
    var customerIds: String?

    func run() async throws {
        try await reporting {
            guard let parsed = URL(string: url), parsed.scheme == "http", let host = parsed.host else {
                throw ScoringError.invalidInput("--url must look like http://127.0.0.1:PORT, got \(url)")
            }
            var headers: [String: String] = [:]
            if let token { headers["Authorization"] = "Bearer \(token)" }
            if let customerIds {
                if body != nil { throw ScoringError.invalidInput("--customer-ids sends GET requests, which have no --body") }
                guard let data = FileManager.default.contents(atPath: customerIds) else { throw ScoringError.io(path: customerIds, reason: "cannot read") }
                let paths = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { line -> String? in
                    let id = String(line.prefix { $0 != "," })
                    guard !id.isEmpty, id != "customer_id" else { return nil }
                    return "/v1/customers/" + (id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id)
                }
                guard !paths.isEmpty else { throw ScoringError.invalidInput("--customer-ids \(customerIds): no customer id in the file") }
                let report = try LoadTest.run(
                    host: host, port: parsed.port ?? 80, method: "GET", paths: paths, body: nil, rate: rate, seconds: seconds,
                    connections: connections, headers: headers)
                print(report.summary)
                return
            }
            let payload: Data
            if let body {
                guard let data = FileManager.default.contents(atPath: body) else { throw ScoringError.io(path: body, reason: "cannot read") }
                payload = data
            } else {
                payload = Data(LoadTest.sampleBody().utf8)
            }
            let report = try LoadTest.run(
                host: host, port: parsed.port ?? 80, paths: ["/v1/score"], body: payload, rate: rate, seconds: seconds,
                connections: connections, headers: headers)
            print(report.summary)
        }
    }
}

