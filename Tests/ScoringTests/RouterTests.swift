import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
@testable import Scoring
@testable import ScoringService
import Synchronization
import Testing

/// A `Scorer` with known outputs, so the router's own behaviour (routes, statuses, error
/// bodies, authentication, metrics) is tested without checkpoints or sockets. The real-socket
/// tests in ServiceTests keep one test per endpoint family end to end.
final class StubScorer: Scorer {
    let model: ModelSummary?
    private let received = Mutex<[ScoreRequest]>([])
    /// Thrown by `score` instead of answering, when set.
    let failure: ClientError?

    init(loaded: Bool = true, failure: ClientError? = nil) {
        model = loaded ? ModelSummary(
            info: CheckpointInfo(run: "stub", step: 7, epoch: 2, path: "/stub/step-000007", modelKind: .lstm,
                                 createdAt: "2026-12-01T00:00:00Z", metrics: ["val_auc": 0.75], datasetFingerprint: "f00d"),
            historyLength: 4, featureCount: 8, stageNames: ["churned", "occasional", "regular", "loyal"],
            highValueLine: HighValueLine(amount: 50, origin: "test"), stageModel: nil, referenceAsOfDay: nil) : nil
        self.failure = failure
    }

    var currentModel: ModelSummary? { model }
    var requests: [ScoreRequest] { received.withLock { $0 } }

    func score(_ request: ScoreRequest) throws -> ScoreResult {
        received.withLock { $0.append(request) }
        if let failure { throw failure }
        let scores = request.customers.enumerated().map { index, customer in
            let id: String
            switch customer {
            case let .events(customerID, _): id = customerID
            case let .features(customerID, _, _): id = customerID
            }
            return CustomerScore(
                customerID: id, churnProbability: 0.25 + Double(index) / 10, expectedSpend: 12.5, historyPeriods: 4,
                stage: "regular", stageProbabilities: [0.1, 0.2, 0.6, 0.1], action: "nurture", stageSource: "lstm")
        }
        return ScoreResult(model: model!.info, asOfDay: 20_000, stageNames: model!.stageNames, scores: scores)
    }
}

@Suite("Service router (no sockets)")
struct RouterTests {
    func application(_ scorer: StubScorer, token: String? = nil, limits: RequestLimits = RequestLimits())
        -> (some ApplicationProtocol, ServiceMetrics) {
        let metrics = ServiceMetrics()
        let router = buildRouter(scorer: scorer, metrics: metrics, limits: limits, token: token,
                                 logger: Logger(label: "router-tests"))
        return (Application(router: router), metrics)
    }

    func json(_ buffer: ByteBuffer) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as! [String: Any]
    }

    let body = ByteBuffer(string: featuresBody([("a", 2), ("b", 4)]))

    @Test("probes, model and score answer with the stub's values")
    func everyRoute() async throws {
        let scorer = StubScorer()
        let (app, _) = application(scorer)
        try await app.test(.router) { client in
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/readyz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/model", method: .get) { response in
                #expect(response.status == .ok)
                let model = try json(response.body)
                #expect(model["run"] as? String == "stub" && model["step"] as? Int == 7 && model["feature_count"] as? Int == 8)
                #expect((model["metrics"] as? [String: Double])?["val_auc"] == 0.75)
            }
            try await client.execute(uri: "/v1/score", method: .post, headers: [.contentType: "application/json"], body: body) { response in
                #expect(response.status == .ok)
                let reply = try json(response.body)
                let scores = reply["scores"] as! [[String: Any]]
                #expect(scores.map { $0["customer_id"] as? String } == ["a", "b"])
                #expect(scores[1]["churn_probability"] as? Double == 0.35)
                #expect((reply["model"] as? [String: Any])?["step"] as? Int == 7)
            }
            try await client.execute(uri: "/metrics", method: .get) { response in
                #expect(response.status == .ok)
                let text = String(buffer: response.body)
                #expect(text.contains("clm_http_requests_total{route=\"/v1/score\",status=\"200\"} 1"), "\(text)")
            }
        }
        // The request reached the scorer parsed: two customers, their feature rows and lengths.
        #expect(scorer.requests.count == 1 && scorer.requests[0].customers.count == 2)
    }

    @Test("every error class gets its status and a JSON error", arguments: [
        // (method, uri, content type, body, expected status, words in the error)
        ("POST", "/v1/score", "application/json", "{\"customers\":", 400, "JSON"),
        ("POST", "/v1/score", "application/json", "{\"customers\":[]}", 400, "customers"),
        ("POST", "/v1/score", "text/plain", "{}", 415, "Content-Type"),
        ("POST", "/v1/score", "application/json", String(repeating: " ", count: 5000) + "{}", 413, "larger than"),
        ("GET", "/v1/nowhere", "application/json", "", 404, ""),
    ])
    func errorClasses(method: String, uri: String, contentType: String, text: String, status: Int, words: String) async throws {
        var limits = RequestLimits()
        limits.maxBodyBytes = 4096
        let (app, _) = application(StubScorer(), limits: limits)
        try await app.test(.router) { client in
            try await client.execute(uri: uri, method: method == "GET" ? .get : .post, headers: [.contentType: contentType],
                                     body: ByteBuffer(string: text)) { response in
                #expect(response.status.code == status, "\(String(buffer: response.body))")
                if !words.isEmpty {
                    let error = try json(response.body)["error"] as? String ?? ""
                    #expect(error.contains(words), "\(error)")
                }
            }
        }
    }

    @Test("a body that is not UTF-8 is refused naming the byte")
    func invalidUTF8() async throws {
        let (app, _) = application(StubScorer())
        let bytes: [UInt8] = Array("{\"customers\":[{\"customer_id\":\"".utf8) + [0xC3, 0x28] + Array("\"}]}".utf8)
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/score", method: .post, headers: [.contentType: "application/json"],
                                     body: ByteBuffer(bytes: bytes)) { response in
                #expect(response.status == .badRequest)
                let error = try json(response.body)["error"] as? String
                #expect(error == "malformed JSON at byte 30: not valid UTF-8", "\(String(describing: error))")
            }
        }
    }

    @Test("without a model: readyz, model and score say 503; what the scorer refuses keeps its status")
    func unavailableAndRefused() async throws {
        let (idle, _) = application(StubScorer(loaded: false))
        try await idle.test(.router) { client in
            try await client.execute(uri: "/readyz", method: .get) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/model", method: .get) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/v1/score", method: .post, headers: [.contentType: "application/json"], body: body) { response in
                #expect(response.status == .serviceUnavailable)
                let error = try json(response.body)["error"] as? String
                #expect(error == "no model is loaded yet")
            }
        }
        let (refusing, _) = application(StubScorer(failure: ClientError(422, "customer a: churn probability is NaN")))
        try await refusing.test(.router) { client in
            try await client.execute(uri: "/v1/score", method: .post, headers: [.contentType: "application/json"], body: body) { response in
                #expect(response.status.code == 422)
                let error = try json(response.body)["error"] as? String
                #expect(error == "customer a: churn probability is NaN")
            }
        }
    }

    @Test("a token guards /v1 and /metrics, never the probes")
    func token() async throws {
        let (app, _) = application(StubScorer(), token: "s3cret")
        try await app.test(.router) { client in
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/readyz", method: .get) { #expect($0.status == .ok) }
            for uri in ["/v1/model", "/metrics"] {
                try await client.execute(uri: uri, method: .get) { response in
                    #expect(response.status == .unauthorized)
                    #expect(response.headers[.wwwAuthenticate] == "Bearer")
                }
                try await client.execute(uri: uri, method: .get, headers: [.authorization: "Bearer s3cre"]) { #expect($0.status == .unauthorized) }
                try await client.execute(uri: uri, method: .get, headers: [.authorization: "Bearer s3cret"]) { #expect($0.status == .ok) }
            }
        }
    }
}
