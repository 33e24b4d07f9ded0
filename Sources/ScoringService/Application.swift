import Checkpoints
import CustomerData
import Foundation
import Hummingbird
import Logging
import NIOCore
import Scoring

/// Everything `clm-score serve` can be told, typed so that a misspelt setting cannot pass unnoticed.
public struct ServiceConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// Bearer token required on `/v1/*` and `/metrics` when set.
    public var token: String? = nil
    public var checkpoints: URL
    public var run: String
    public var pollInterval: Duration = .seconds(2)
    /// A connection that sends nothing for this long is closed: an idle keep-alive, a request
    /// stopped half-way through its header or body, and one whose oversize body was refused
    /// (the server stops reading it, so only this notices the client has gone).
    public var idleTimeout: Duration = .seconds(10)
    /// A request's head and body must have arrived this long after its connection was ready for
    /// it (accepted, or the previous answer sent), or it is answered 408 and closed: a body
    /// trickled a byte at a time otherwise holds its connection for ever. The shorter of this and
    /// `idleTimeout` applies: the idle clock also runs from that moment until the request is whole.
    public var requestTimeout: Duration = .seconds(10)
    /// Most connections open at once; nil: half the descriptor limit read at start, at most 16,384.
    public var maxConnections: Int? = nil
    public var limits = RequestLimits()
    /// Explained requests computed at once; one more is answered 503 with `Retry-After`.
    public var explanationWorkers = 1
    public var rules = ScoringRules()
    /// Stages from a GraphSAGE run joined to a reference graph; nil keeps the stage rule.
    public var graphSource: GraphSource? = nil
    /// The graph model already loaded from `graphSource`, if the caller loaded it up front.
    public var initialGraph: ServedGraphModel? = nil
    /// When set, unsigned checkpoints and those signed with another key are refused.
    public var verifyKey: CheckpointSigningKey? = nil
    /// A stability index of the recently scored customers above this is logged as a warning.
    public var psiThreshold = 0.2
    /// Customers per drift window; the indices cover the current window and the one before.
    public var driftWindow = 5_000
    /// Start even when the run has no checkpoint yet, answering 503 until its first one appears
    /// (a service started beside the training job); otherwise such a run is refused at start.
    public var waitForRun = false
    /// The event file `GET /v1/customers/{id}` answers from (`--events`); nil: that route answers 404.
    public var customerEvents: CustomerEventsSource? = nil

    public init(checkpoints: URL, run: String) {
        self.checkpoints = checkpoints
        self.run = run
    }

    /// The bearer token from a flag, a file or the environment, at most one of them: the command
    /// line shows in `ps` to every user of the machine, a file or the environment do not.
    public static func resolveToken(flag: String?, file: String?, environment: String?) throws -> String? {
        let given = [flag != nil, file != nil, environment != nil].filter { $0 }.count
        guard given <= 1 else { throw ScoringError.invalidInput("give the token one way: --token, --token-file or CLM_SCORE_TOKEN") }
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ScoringError.io(path: file, reason: "cannot read the token file")
            }
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
        }
        return flag ?? environment
    }

    /// Descriptors never given to connections: checkpoint files, logs, the runtime's own.
    public static let reservedDescriptors = 64

    /// The connection cap in force: the configured one, or half the descriptor limit.
    public func connectionCap(descriptorLimit limit: Int) -> Int {
        maxConnections ?? max(1, min(limit / 2, 16_384))
    }

    /// Loopback addresses, where running without a token is safe.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Refuses settings that would expose an unauthenticated scorer to the network.
    public func validate() throws {
        guard (0...65_535).contains(port) else { throw ScoringError.invalidInput("--port must be 0...65535, got \(port)") }
        if !isLoopback && (token ?? "").isEmpty {
            throw ScoringError.invalidInput("--host \(host) is not a loopback address: pass --token so that only callers with it are served")
        }
        if let token, token.isEmpty || token.contains(where: { $0.isWhitespace }) {
            throw ScoringError.invalidInput("--token must be non-empty and contain no whitespace")
        }
        guard pollInterval > .zero else { throw ScoringError.invalidInput("--poll-seconds must be positive") }
        guard idleTimeout > .zero else { throw ScoringError.invalidInput("--idle-timeout-seconds must be positive") }
        guard explanationWorkers >= 1 else { throw ScoringError.invalidInput("--explanation-workers must be at least 1, got \(explanationWorkers)") }
        guard limits.maxExplainedCustomers >= 1 else {
            throw ScoringError.invalidInput("--max-explained-customers must be at least 1, got \(limits.maxExplainedCustomers)")
        }
        guard requestTimeout > .zero else { throw ScoringError.invalidInput("--request-timeout-seconds must be positive") }
        let limit = descriptorLimit()
        if let maxConnections, !(1...max(1, limit - Self.reservedDescriptors)).contains(maxConnections) {
            throw ScoringError.invalidInput("--max-connections must be 1...\(limit - Self.reservedDescriptors) (the descriptor limit \(limit) less \(Self.reservedDescriptors) kept for checkpoint files and the runtime), got \(maxConnections)")
        }
        try rules.validate()
        if customerEvents != nil && graphSource != nil {
            throw ScoringError.invalidInput("--events with --gnn-run: GET /v1/customers/{id} gives stages from the LSTM's stage head or the rule, not a graph model; serve the graph model without --events")
        }
    }
}

/// The routes the service answers, for the metrics' route label.
let knownRoutes: Set<String> = ["/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json"]

/// The metrics' route label of a request path: the route pattern, never the raw path, so that
/// arbitrary URLs cannot grow the series without bound.
func routeLabel(_ path: String) -> String {
    if knownRoutes.contains(path) { return path }
    let customers = "/v1/customers/"
    if path.hasPrefix(customers), path.count > customers.count, !path.dropFirst(customers.count).contains("/") {
        return "/v1/customers/{id}"
    }
    return "other"
}

/// Routes answered without the token: probes, and the contract clients generate their code from.
let openRoutes: Set<String> = ["/healthz", "/readyz", "/openapi.json"]

/// The service's OpenAPI 3.1 document (`Sources/ScoringService/openapi.json`, the one source of
/// the contract), as served at `GET /openapi.json`.
public let openAPIDocument: [UInt8] = PackageResources.openapi_json

/// The router with every endpoint; `scorer` may be a test double.
public func buildRouter<S: Scorer>(
    scorer: S, metrics: ServiceMetrics, limits: RequestLimits, token: String?, logger: Logger,
    explanations: ExplanationPool? = nil, customers: CustomerTable? = nil
) -> Router<BasicRequestContext> {
    let router = Router(context: BasicRequestContext.self)
    router.add(middleware: ServiceMiddleware(metrics: metrics, token: token, logger: logger))
    router.get("/healthz") { _, _ in jsonResponse(.ok, "{\"status\":\"ok\"}") }
    router.get("/readyz") { _, _ in
        scorer.currentModel == nil
            ? jsonResponse(.serviceUnavailable, "{\"ready\":false,\"error\":\"no model is loaded yet\"}")
            : jsonResponse(.ok, "{\"ready\":true}")
    }
    router.get("/openapi.json") { _, _ in
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: openAPIDocument)))
    }
    router.get("/metrics") { _, _ in
        Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                 body: .init(byteBuffer: ByteBuffer(string: metrics.render())))
    }
    ScoreController(scorer: scorer, limits: limits, metrics: metrics,
                    explanations: explanations ?? ExplanationPool(workers: 1, metrics: metrics)).addRoutes(to: router.group("v1"))
    CustomerController(customers: customers).addRoutes(to: router.group("v1"))
    return router
}

/// The whole service: router, server settings and the checkpoint watcher.
public func buildApplication(
    configuration: ServiceConfiguration, logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) throws -> (application: some ApplicationProtocol, scorer: CheckpointScorer, metrics: ServiceMetrics, routes: [ServiceRoute], customers: CustomerTable?) {
    try configuration.validate()
    let metrics = ServiceMetrics()
    let scorer = CheckpointScorer(
        root: configuration.checkpoints, run: configuration.run, rules: configuration.rules,
        graphSource: configuration.graphSource, initialGraph: configuration.initialGraph, verifyKey: configuration.verifyKey,
        metrics: metrics, logger: logger, driftMonitor: DriftMonitor(threshold: configuration.psiThreshold, window: configuration.driftWindow))
    let customers = configuration.customerEvents.map { CustomerTable(source: $0, metrics: metrics, logger: logger) }
    let router = buildRouter(scorer: scorer, metrics: metrics, limits: configuration.limits, token: configuration.token, logger: logger,
                             explanations: ExplanationPool(workers: configuration.explanationWorkers, metrics: metrics), customers: customers)
    let limit = descriptorLimit()
    let governor = ConnectionGovernor(cap: configuration.connectionCap(descriptorLimit: limit), descriptorLimit: limit, metrics: metrics, logger: logger)
    let policy = GatePolicy(token: configuration.token, maxBodyBytes: configuration.limits.maxBodyBytes,
                            requestTimeout: timeAmount(min(configuration.requestTimeout, configuration.idleTimeout)), metrics: metrics, governor: governor)
    let application = Application(
        router: router,
        server: .http1(configuration: .init(additionalChannelHandlers: [RequestGate(policy: policy)],
                                            idleTimeout: timeAmount(configuration.idleTimeout))),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "clm-score"),
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
        logger: logger)
    return (application, scorer, metrics, router.routes.map { ServiceRoute(method: $0.method.rawValue, path: $0.path.description) }, customers)
}

/// One route of the live router, for checking it against the OpenAPI document.
public struct ServiceRoute: Hashable, Sendable, CustomStringConvertible {
    public var method: String
    /// As the router spells it: a parameter is `:name`.
    public var path: String
    public var description: String { "\(method) \(path)" }
}

func timeAmount(_ duration: Duration) -> TimeAmount {
    .nanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
}

/// Loads the first model, then serves until SIGINT/SIGTERM while a watcher follows `latest`.
///
/// A run with no checkpoint at all is refused before anything binds (a misspelt name would
/// otherwise look like a slow run), unless `waitForRun` asks to wait for it. A run whose
/// checkpoint does not load, or one waited for, is served anyway: `/readyz` says 503 until the
/// watcher finds a good checkpoint, which is what an orchestrator's readiness probe expects.
public func runService(configuration: ServiceConfiguration, logger: Logger,
                       onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
    if !configuration.waitForRun, let missing = missingRunMessage(root: configuration.checkpoints, run: configuration.run) {
        throw ScoringError.invalidInput("--run: \(missing); to start anyway and answer 503 until its first checkpoint appears, pass --wait-for-run")
    }
    let (application, scorer, _, _, customers) = try buildApplication(configuration: configuration, logger: logger, onServerRunning: onServerRunning)
    scorer.reloadIfChanged()
    if scorer.currentModel == nil {
        logger.warning("\(waitingMessage(root: configuration.checkpoints, run: configuration.run))")
    }
    // Built before listening: a file that cannot be served stops the start with its error.
    try customers?.reloadIfChanged(scorer: scorer.servedLSTM, rules: scorer.rules)
    let watcher = Task { await scorer.watch(every: configuration.pollInterval) }
    let tableWatcher = Task { await customers?.watch(every: configuration.pollInterval, scorer: scorer) }
    defer {
        watcher.cancel()
        tableWatcher.cancel()
    }
    try await application.runService()
}

/// What the service waits for when the run has no checkpoint it can serve yet, with the runs
/// that do exist under the root, so a misspelt `--run` shows at once.
public func waitingMessage(root: URL, run: String) -> String {
    let missing = missingRunMessage(root: root, run: run)
        ?? "run '\(run)' has no checkpoint that loads yet (the error above says why)"
    return "\(missing); answering 503 until one appears"
}

/// A JSON response with a body already serialised.
func jsonResponse(_ status: HTTPResponse.Status, _ body: String) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
}

/// `{"error": message}` for every failure, authentication, request metrics.
struct ServiceMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let metrics: ServiceMetrics
    let token: String?
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        let path = request.uri.path
        let route = routeLabel(path)
        let response: Response
        if let token, !openRoutes.contains(path), !authorised(request, token: token) {
            var denied = jsonResponse(.unauthorized, "{\"error\":\"missing or wrong bearer token\"}")
            denied.headers[.wwwAuthenticate] = "Bearer"
            response = denied
        } else {
            do {
                response = try await next(request, context)
            } catch let error as ClientError {
                if error.status == ClientError.clientClosedRequest {
                    logger.info("request \(request.method) \(path): \(error.message)")
                }
                var refusal = jsonResponse(.init(code: error.status), "{\"error\":\(jsonString(error.message))}")
                if let retry = error.retryAfterSeconds { refusal.headers[.retryAfter] = String(retry) }
                response = refusal
            } catch let error as HTTPError {
                let message = error.body ?? error.status.reasonPhrase
                response = jsonResponse(error.status, "{\"error\":\(jsonString(message))}")
            } catch let error as any HTTPResponseError {
                response = jsonResponse(error.status, "{\"error\":\(jsonString(error.status.reasonPhrase))}")
            } catch {
                logger.error("request \(request.method) \(path) failed: \(error)")
                response = jsonResponse(.internalServerError, "{\"error\":\"internal error; the server log has the details\"}")
            }
        }
        let elapsed = ContinuousClock.now - started
        metrics.record(route: route, status: response.status.code, seconds: seconds(elapsed))
        return response
    }

    /// Over a socket `RequestGate` has already refused a wrong token; this covers the router alone (tests).
    private func authorised(_ request: Request, token: String) -> Bool {
        bearerTokenMatches(request.headers[.authorization], token: token)
    }
}

/// `POST /v1/score` and `GET /v1/model`.
struct ScoreController<S: Scorer> {
    let scorer: S
    let limits: RequestLimits
    let metrics: ServiceMetrics
    let explanations: ExplanationPool

    func addRoutes(to group: RouterGroup<BasicRequestContext>) {
        group.post("score", use: score)
        group.get("model", use: model)
    }

    @Sendable func score(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard let model = scorer.currentModel else { throw ClientError(503, "no model is loaded yet") }
        if let type = request.headers[.contentType], !ScoreRequest.isJSONContentType(type) {
            throw ClientError(415, "Content-Type must be application/json, got \(type)")
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: limits.maxBodyBytes)
        } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
            throw ClientError(413, "the body is larger than \(limits.maxBodyBytes) bytes")
        } catch {
            // The body could not be read: the client went away mid-upload. Not a server error.
            throw ClientError(ClientError.clientClosedRequest, "the client closed the connection before sending the whole body (\(error))")
        }
        let parsed = try ScoreRequest.parse(Data(body.readableBytesView), limits: limits, model: model)
        let result = parsed.explain ? try await explanations.run { [scorer] in try scorer.score(parsed) } : try scorer.score(parsed)
        var text = "{\"model\":{\"run\":\(jsonString(result.model.run)),\"step\":\(result.model.step)}"
        text += ",\"as_of\":\(jsonString(ByteParsing.isoDate(result.asOfDay))),\"scores\":["
        for (index, score) in result.scores.enumerated() {
            if index > 0 { text += "," }
            text += BatchScoring.jsonLine(score, stageNames: result.stageNames, reasons: result.explanations?[index])
        }
        text += "]}"
        return jsonResponse(.ok, text)
    }

    @Sendable func model(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard let model = scorer.currentModel else { throw ClientError(503, "no model is loaded yet") }
        let info = model.info
        var text = "{\"run\":\(jsonString(info.run)),\"step\":\(info.step),\"epoch\":\(info.epoch),\"path\":\(jsonString(info.path))"
        text += ",\"model_kind\":\(jsonString(info.modelKind.rawValue)),\"created_at\":\(jsonString(info.createdAt))"
        text += ",\"dataset_fingerprint\":\(jsonString(info.datasetFingerprint)),\"history_periods\":\(model.historyLength)"
        let line = model.highValueLine
        text += ",\"feature_count\":\(model.featureCount),\"high_value_line\":\(line.amount.isFinite ? String(line.amount) : "null")"
        text += ",\"high_value_origin\":\(jsonString(line.origin))"
        if let stageModel = model.stageModel, let day = model.referenceAsOfDay {
            text += ",\"stage_model\":{\"run\":\(jsonString(stageModel.run)),\"step\":\(stageModel.step),\"path\":\(jsonString(stageModel.path))"
            text += ",\"reference_as_of\":\(jsonString(ByteParsing.isoDate(day)))}"
        } else {
            text += ",\"stage_model\":null"
        }
        text += ",\"metrics\":{"
        text += info.metrics.sorted(by: { $0.key < $1.key }).map { "\(jsonString($0.key)):\($0.value.isFinite ? String($0.value) : "null")" }.joined(separator: ",")
        text += "}}"
        return jsonResponse(.ok, text)
    }
}

/// `GET /v1/customers/{id}`: the served customer table's score of one customer.
struct CustomerController {
    let customers: CustomerTable?

    func addRoutes(to group: RouterGroup<BasicRequestContext>) {
        group.get("customers/:id", use: customer)
    }

    @Sendable func customer(_ request: Request, context: BasicRequestContext) async throws -> Response {
        guard let customers else {
            throw ClientError(404, "this service answers by customer id only when started with --events FILE")
        }
        guard let table = customers.current else {
            throw ClientError(503, "the customer table of \(customers.source.path) is not built yet (it needs a loaded model)")
        }
        // The router hands the path segment over as sent: ids with spaces or slashes come percent-encoded.
        let raw = context.parameters.get("id") ?? ""
        let id = raw.removingPercentEncoding ?? raw
        guard let score = table.score(of: id) else {
            throw ClientError(404, "customer \(id) has no purchase in \(table.path) on or before \(ByteParsing.isoDate(table.asOfDay))")
        }
        var text = "{\"model\":{\"run\":\(jsonString(table.model.run)),\"step\":\(table.model.step)}"
        text += ",\"as_of\":\(jsonString(ByteParsing.isoDate(table.asOfDay))),\"score\":"
        text += BatchScoring.jsonLine(score, stageNames: table.stageNames) + "}"
        return jsonResponse(.ok, text)
    }
}
