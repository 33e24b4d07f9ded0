import Checkpoints
import CustomerData
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Scoring
import ScoringTestSupport
import ScoringLoad
import ScoringService
import TestSupport
import Testing

/// A running service on a free loopback port, stopped by `stop()`.
final class RunningService: @unchecked Sendable {
    let port: Int
    let scorer: CheckpointScorer
    let metrics: ServiceMetrics
    /// The routes of the router this service runs.
    let routes: [ServiceRoute]
    /// The table `GET /v1/customers/{id}` answers from, when the configuration names an event file.
    let customers: CustomerTable?
    private let server: Task<Void, any Error>
    private let watcher: Task<Void, Never>

    init(_ configuration: ServiceConfiguration) async throws {
        var configuration = configuration
        configuration.port = 0
        var logger = Logger(label: "scoring-tests")
        logger.logLevel = .critical
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let (application, scorer, metrics, routes, customers) = try buildApplication(configuration: configuration, logger: logger) { port in
            continuation.yield(port)
        }
        self.scorer = scorer
        self.metrics = metrics
        self.routes = routes
        scorer.reloadIfChanged()
        try customers?.reloadIfChanged(scorer: scorer.servedLSTM, rules: scorer.rules)
        self.customers = customers
        server = Task { try await application.runService(gracefulShutdownSignals: []) }
        let interval = configuration.pollInterval
        watcher = Task {
            await withDiscardingTaskGroup { group in
                group.addTask { await scorer.watch(every: interval) }
                if let customers { group.addTask { await customers.watch(every: interval, scorer: scorer) } }
            }
        }
        var iterator = ports.makeAsyncIterator()
        port = await iterator.next()!
    }

    func stop() async {
        watcher.cancel()
        server.cancel()
        _ = await server.result
    }

    /// One request on its own connection and its own thread: the client blocks, and neither the
    /// cooperative pool nor GCD (which adds threads for blocked work only slowly) should wait on it.
    func send(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) async throws -> LoopbackClient.Reply {
        let port = port
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                let client = LoopbackClient(port: port)
                continuation.resume(with: Result { try client.send(method, path, body: body.map { Data($0.utf8) }, headers: headers) })
            }
            thread.start()
        }
    }

    func json(_ reply: LoopbackClient.Reply) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: reply.body) as! [String: Any]
    }
}

/// Features rows for a customer: `length` rows of the model's width.
func featuresBody(_ customers: [(String, Int)], width: Int = 8) -> String {
    var items: [String] = []
    for (id, length) in customers {
        var rows: [String] = []
        for t in 0..<length {
            var values: [String] = []
            for f in 0..<width { values.append(String(Double((t + f) % 5) * 0.3 - 0.6)) }
            rows.append("[" + values.joined(separator: ",") + "]")
        }
        items.append("{\"customer_id\":\"\(id)\",\"features\":[\(rows.joined(separator: ","))],\"length\":\(length)}")
    }
    return "{\"customers\":[\(items.joined(separator: ","))]}"
}

@Suite("Scoring service", .serialized)
struct ServiceTests {
    func configuration(_ fixture: ScoringFixture) -> ServiceConfiguration {
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.pollInterval = .milliseconds(100)
        return configuration
    }

    @Test("every endpoint answers, and scores equal batch scoring of the same events")
    func endpoints() async throws {
        let fixture = try ScoringFixture(customers: 80)
        try fixture.saveCheckpoint(step: 3, seed: 5)
        let service = try await RunningService(configuration(fixture))

        #expect(try await service.send("GET", "/healthz").status == 200)
        #expect(try await service.send("GET", "/readyz").status == 200)
        let model = try service.json(try await service.send("GET", "/v1/model"))
        #expect(model["run"] as? String == "test")
        #expect(model["step"] as? Int == 3)
        #expect((model["path"] as? String)?.hasSuffix("step-000003") == true)
        #expect((model["metrics"] as? [String: Double])?["val_auc"] == 0.5)
        #expect(model["created_at"] is String)

        // Score one customer's events through HTTP and through batch, as of the same day.
        let target = try fixture.dataset.customerIDs()[7]
        let events = try fixture.requestEvents(of: target)
        #expect(!events.isEmpty)
        let cutoff = fixture.dataset.manifest.spec.cutoffDay
        let reply = try await service.send("POST", "/v1/score", body: "{\"as_of\":\(cutoff),\"customers\":[{\"customer_id\":\"\(target)\",\"events\":[\(events.joined(separator: ","))]}]}")
        #expect(reply.status == 200, "\(reply.text)")
        let scores = try service.json(reply)["scores"] as! [[String: Any]]
        #expect(scores.count == 1)
        let direct = fixture.directScores(seed: 5)
        #expect(abs((scores[0]["churn_probability"] as! Double) - direct.churn[7]) < 2e-6)
        #expect(abs((scores[0]["expected_spend"] as! Double) - direct.spend[7]) < 2e-5 * max(1, direct.spend[7]))
        #expect(scores[0]["history_periods"] as? Int == Int(fixture.dataset.lengths[7]))
        for key in ["stage", "action", "stage_probabilities", "customer_id"] { #expect(scores[0][key] != nil, "\(key)") }

        let metrics = try await service.send("GET", "/metrics")
        #expect(metrics.status == 200)
        #expect(metrics.text.contains("clm_http_requests_total{route=\"/v1/score\",status=\"200\"} 1"))
        #expect(metrics.text.contains("clm_model_step 3"))
        #expect(metrics.text.contains("clm_http_request_duration_seconds_bucket{route=\"/v1/score\",le=\"+Inf\"} 1"))
        await service.stop()
    }

    @Test("\"explain\": true adds three churn and three spend reasons to each score; without it none")
    func explainedScores() async throws {
        let fixture = try ScoringFixture(customers: 60)
        try fixture.saveCheckpoint(step: 2, seed: 9)
        let service = try await RunningService(configuration(fixture))
        let body = featuresBody([("a", 6), ("b", 2)])
        let plain = try service.json(try await service.send("POST", "/v1/score", body: body))["scores"] as! [[String: Any]]
        #expect(plain.allSatisfy { $0["reasons"] == nil })
        let explainedBody = String(body.dropLast()) + ",\"explain\":true}"
        let reply = try await service.send("POST", "/v1/score", body: explainedBody)
        #expect(reply.status == 200, "\(reply.text)")
        let scores = try service.json(reply)["scores"] as! [[String: Any]]
        #expect(scores.count == 2)
        for (score, plainScore) in zip(scores, plain) {
            // Explaining does not change the scores.
            #expect(score["churn_probability"] as? Double == plainScore["churn_probability"] as? Double)
            let reasons = try #require(score["reasons"] as? [String: Any], "\(score)")
            for target in ["churn", "spend"] {
                let list = try #require(reasons[target] as? [[String: Any]])
                #expect((1...3).contains(list.count), "\(target): \(list)")
                let magnitudes = list.map { abs($0["contribution"] as! Double) }
                #expect(magnitudes == magnitudes.sorted(by: >), "largest first: \(magnitudes)")
                for reason in list {
                    let code = try #require(reason["code"] as? String)
                    #expect(code.contains("=") && (code.hasSuffix("(+)") || code.hasSuffix("(-)")), "\(code)")
                    #expect(Explainer.groupNames.contains(reason["group"] as? String ?? ""))
                }
            }
        }
        let bad = try await service.send("POST", "/v1/score", body: String(body.dropLast()) + ",\"explain\":\"yes\"}")
        #expect(bad.status == 400 && bad.text.contains("explain: expected true or false"), "\(bad.text)")
        await service.stop()
    }

    @Test("two 1,000-customer explanations do not hold up a plain request; a third waits with 503 and Retry-After; past the bound is 413")
    func explanationsDoNotBlockPlainScoring() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 4)
        var configuration = configuration(fixture)
        configuration.limits.maxCustomers = 2000
        configuration.limits.maxExplainedCustomers = 1000
        let service = try await RunningService(configuration)
        let plainBody = featuresBody([("p", 6)])
        func plainLatency() async throws -> Duration {
            let started = ContinuousClock.now
            let reply = try await service.send("POST", "/v1/score", body: plainBody)
            #expect(reply.status == 200, "\(reply.text)")
            return ContinuousClock.now - started
        }
        var quiet: [Duration] = []
        for _ in 0..<5 { quiet.append(try await plainLatency()) }
        let explained = String(featuresBody((0..<1000).map { ("e\($0)", 6) }).dropLast()) + ",\"explain\":true}"
        let started = ContinuousClock.now
        async let first = service.send("POST", "/v1/score", body: explained)
        async let second = service.send("POST", "/v1/score", body: explained)
        // Plain requests while the explanations run; the loop ends when they do, or after 60 s.
        var during: [Duration] = []
        while service.metrics.requestCount(route: "/v1/score", status: 200) + service.metrics.requestCount(route: "/v1/score", status: 503) < 5 + during.count + 2,
              ContinuousClock.now - started < .seconds(60) {
            during.append(try await plainLatency())
        }
        let replies = [try await first, try await second]
        let explainedTime = ContinuousClock.now - started
        #expect(replies.contains { $0.status == 200 }, "\(replies.map { $0.text.prefix(200) })")
        for reply in replies where reply.status != 200 {
            #expect(reply.status == 503 && reply.headers["retry-after"] == "1" && reply.text.contains("explanation workers are busy"), "\(reply.text)")
        }
        #expect(during.count >= 3, "too few plain requests ran alongside: \(during)")
        // Before the explanation pool, a plain request waited for both explanations (6.2 s). A plain
        // request still waits while the body of an explained one is parsed (tens of ms in a debug build).
        // The bound is on the 99th percentile: the single worst request also loses the processor to
        // the other suites `swift test` runs beside this one on two cores (500 ms once).
        let sorted = during.sorted(), worst = sorted.last ?? .zero, p99 = sorted[sorted.count * 99 / 100]
        #expect(p99 < .milliseconds(50), "plain requests beside explanations: p99 \(p99), worst \(worst); alone: \(quiet)")
        print("explanations: \(replies.map(\.status)) in \(explainedTime); \(during.count) plain requests beside them, median \(sorted[sorted.count / 2]), p99 \(p99), worst \(worst); alone worst \(quiet.max()!)")
        let tooMany = String(featuresBody((0..<1001).map { ("e\($0)", 1) }).dropLast()) + ",\"explain\":true}"
        let refused = try await service.send("POST", "/v1/score", body: tooMany)
        #expect(refused.status == 413 && refused.text.contains("1001 customers with \\\"explain\\\": true, the limit is 1000"), "\(refused.text)")
        await service.stop()
    }

    @Test("/metrics' stability gauges stay low for the training population and rise for a shifted feature only")
    func driftGauges() async throws {
        let fixture = try ScoringFixture(customers: 300)
        try fixture.saveCheckpoint(step: 4, seed: 3, withDriftReference: true)
        let service = try await RunningService(configuration(fixture))
        let dataset = fixture.dataset
        let width = dataset.featureCount, spendFeature = dataset.manifest.featureNames.firstIndex(of: "log1p_spend")!
        // Customers as normalised feature rows, the training ones first, then with spend moved up 1.5 standard deviations.
        func body(_ customers: Range<Int>, shift: Float, prefix: String) -> String {
            let items = customers.map { index -> String in
                let length = Int(dataset.lengths[index])
                let row = dataset.features(of: index)
                let rows = (0..<length).map { t in
                    "[" + (0..<width).map { f in String(row[t * width + f] + (f == spendFeature ? shift : 0)) }.joined(separator: ",") + "]"
                }
                return "{\"customer_id\":\"\(prefix)\(index)\",\"features\":[\(rows.joined(separator: ","))],\"length\":\(length)}"
            }
            return "{\"customers\":[\(items.joined(separator: ","))]}"
        }
        func gauges() async throws -> [String: Double] {
            let text = try await service.send("GET", "/metrics").text
            var values: [String: Double] = [:]
            for line in text.split(separator: "\n") where line.hasPrefix("clm_feature_psi{") || line.hasPrefix("clm_score_psi{") {
                let parts = line.split(separator: " ")
                values[String(parts[0])] = Double(parts[1])
            }
            return values
        }
        let train = dataset.indices(in: .train)
        let first = try await service.send("POST", "/v1/score", body: body(train[0]..<train[0] + 1, shift: 0, prefix: "warm"))
        #expect(first.status == 200, "\(first.text)")
        let customers = dataset.customerCount
        #expect(customers >= 200, "enough customers for stable indices: \(customers)")
        #expect(try await service.send("POST", "/v1/score", body: body(0..<customers, shift: 0, prefix: "a")).status == 200)
        let before = try await gauges()
        let spendKey = "clm_feature_psi{feature=\"log1p_spend\"}"
        #expect(before.count == 10, "8 features and 2 scores: \(before.keys.sorted())")
        #expect(before.filter { $0.key.hasPrefix("clm_feature_psi") }.allSatisfy { $0.value < 0.1 }, "the training population is stable: \(before)")
        for chunk in stride(from: 0, to: customers, by: 100) {
            let range = chunk..<min(customers, chunk + 100)
            #expect(try await service.send("POST", "/v1/score", body: body(range, shift: 1.5, prefix: "s")).status == 200)
        }
        let after = try await gauges()
        #expect((after[spendKey] ?? 0) > 0.2 && (after[spendKey] ?? 0) > (before[spendKey] ?? 1), "shifted spend: \(before[spendKey] ?? -1) -> \(after[spendKey] ?? -1)")
        for (key, value) in after where key.hasPrefix("clm_feature_psi") && key != spendKey {
            #expect(value < 0.1, "\(key) did not shift but reads \(value)")
        }
        await service.stop()
    }

    @Test("readyz is 503 until a checkpoint appears, then the watcher loads it")
    func readiness() async throws {
        let fixture = try ScoringFixture(customers: 40)
        let service = try await RunningService(configuration(fixture))
        #expect(try await service.send("GET", "/readyz").status == 503)
        #expect(try await service.send("POST", "/v1/score", body: featuresBody([("a", 3)])).status == 503)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        #expect(try await eventually { try await service.send("GET", "/readyz").status == 200 })
        await service.stop()
    }

    @Test("bad requests get 4xx with a JSON error naming the problem")
    func badRequests() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        var configuration = configuration(fixture)
        configuration.limits.maxCustomers = 5
        configuration.limits.maxBodyBytes = 64 * 1024
        let service = try await RunningService(configuration)
        let history = fixture.dataset.historyLength
        let cases: [(body: String, status: Int, mentions: String)] = [
            ("{\"customers\":[{", 400, "malformed JSON at byte 15: expected a string key, found the end of the input"),
            ("{\"customers\":[1,]}", 400, "malformed JSON at byte 16: expected a value, found character ']'"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"customer_id\":\"b\"}]}", 400, "malformed JSON at byte 33: duplicate key \\\"customer_id\\\""),
            (String(repeating: "[", count: 100) + String(repeating: "]", count: 100), 400, "nesting deeper than 32 levels"),
            ("{\"customers\":[{\"customer_id\":\"a\\q\"}]}", 400, "invalid escape"),
            ("[]", 400, "JSON object"),
            ("{\"customers\":{}}", 400, "customers: expected an array"),
            ("{\"customers\":[]}", 400, "must not be empty"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1}]}],\"extra\":1}", 400, "unknown field \\\"extra\\\""),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"ammount\":1}]}]}", 400, "customers[0].events[0]: unknown field \\\"ammount\\\""),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":\"12\"}]}]}", 400, "customers[0].events[0].amount: expected a number"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5.5,\"amount\":1}]}]}", 400, "whole day"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"date\":\"2023-02-30\",\"amount\":1}]}]}", 400, "not a date"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":\"NaN\"}]}]}", 400, "finite number"),
            // Dates outside 1970-01-01...2100-12-31, as a date, a day number or as_of.
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"date\":\"0001-01-01\",\"amount\":1}]}]}", 400,
             "customers[0].events[0].date: 0001-01-01 (day -719162) is outside the accepted dates 1970-01-01 to 2100-12-31"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"date\":\"9999-12-31\",\"amount\":1}]}]}", 400, "events[0].date: 9999-12-31"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":60000,\"amount\":1}]}]}", 400, "events[0].day: 2134-04-11 (day 60000) is outside"),
            ("{\"as_of\":\"2101-01-01\",\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1}]}]}", 400, "as_of: 2101-01-01 (day 47847) is outside"),
            ("{\"as_of\":-1,\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1}]}]}", 400, "as_of: 1969-12-31 (day -1) is outside"),
            ("{\"as_of\":\"29349-01-26\",\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1}]}]}", 400, "as_of: \\\"29349-01-26\\\" is not a date"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1e999}]}]}", 400, "number 1e999 is too large"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"features\":[[1,2,3]]}]}", 400, "3 values, the model reads 8"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"features\":[[1,2,3,4,5,6,7,1e39]]}]}", 400, "32-bit float"),
            (featuresBody([("a", history + 1)]), 400, "at most \(history) periods"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"features\":[[1,2,3,4,5,6,7,8]],\"length\":2}]}", 400, "length"),
            ("{\"customers\":[{\"customer_id\":\"a\"}]}", 400, "needs \\\"events\\\""),
            ("{\"customers\":[{\"customer_id\":7.5,\"events\":[{\"day\":5,\"amount\":1}]}]}", 400, "customer_id: expected a string"),
            // The importer's rules: no negative amounts or quantities, ids as printable text.
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":-3}]}]}", 400, "amount: -3.0 is negative"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":3,\"quantity\":-1}]}]}", 400, "quantity: -1.0 is negative"),
            ("{\"customers\":[{\"customer_id\":17,\"events\":[{\"day\":5,\"amount\":1}]}]}", 400, "send numeric ids as text"),
            ("{\"customers\":[{\"customer_id\":\"a\\u0000b\",\"events\":[{\"day\":5,\"amount\":1}]}]}", 400, "control character 0x0"),
            (featuresBody([("a", 1), ("a", 2)]), 400, "more than once"),
            (featuresBody((0..<6).map { ("c\($0)", 1) }), 413, "limit is 5"),
            ("{\"as_of\":2,\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1}]}]}", 422, "no purchase on or before"),
            ("{\"customers\":[{\"customer_id\":\"a\",\"events\":[{\"day\":5,\"amount\":1}]}]," + String(repeating: " ", count: 70 * 1024) + "}", 413, "larger than"),
        ]
        for (body, status, mentions) in cases {
            let reply = try await service.send("POST", "/v1/score", body: body)
            #expect(reply.status == status, "\(body.prefix(120)) -> \(reply.status) \(reply.text)")
            #expect(reply.headers["content-type"] == "application/json")
            let error = (try? service.json(reply))?["error"] as? String
            #expect(error != nil, "no JSON error for \(body.prefix(80)): \(reply.text)")
            #expect(reply.text.contains(mentions), "\(body.prefix(80)) -> \(reply.text)")
        }
        // The media type exactly, with at most a UTF-8 charset.
        for (type, status) in [("text/plain", 415), ("application/jsonx", 415), ("application/json-seq", 415), ("application/json; charset=latin1", 415),
                               ("application/json;x=1", 415), ("Application/JSON; charset=\"UTF-8\"", 200), ("application/json", 200)] {
            let reply = try await service.send("POST", "/v1/score", body: featuresBody([("a", 1)]), headers: ["Content-Type": type])
            #expect(reply.status == status, "\(type): \(reply.status) \(reply.text)")
        }
        #expect(try await service.send("GET", "/v1/nothing").status == 404)
        // The process survived all of it and still scores.
        #expect(try await service.send("POST", "/v1/score", body: featuresBody([("a", 3)])).status == 200)
        #expect(service.metrics.requestCount(route: "/v1/score", status: 400) == cases.filter { $0.status == 400 }.count)
        await service.stop()
    }

    @Test("the token comes from one of flag, file or environment; a file's newline is not part of it")
    func tokenSources() throws {
        let fixture = try ScoringFixture(customers: 10)
        let file = fixture.directory.path("token")
        try "from-file\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try ServiceConfiguration.resolveToken(flag: nil, file: file, environment: nil) == "from-file")
        #expect(try ServiceConfiguration.resolveToken(flag: nil, file: nil, environment: "from-env") == "from-env")
        #expect(try ServiceConfiguration.resolveToken(flag: "flag", file: nil, environment: nil) == "flag")
        #expect(try ServiceConfiguration.resolveToken(flag: nil, file: nil, environment: nil) == nil)
        #expect(throws: ScoringError.self) { try ServiceConfiguration.resolveToken(flag: "a", file: nil, environment: "b") }
        #expect(throws: ScoringError.self) { try ServiceConfiguration.resolveToken(flag: nil, file: file + ".missing", environment: nil) }
    }

    @Test("a bearer token guards the API but not the probes")
    func token() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        var configuration = configuration(fixture)
        configuration.token = "s3cret"
        let service = try await RunningService(configuration)
        #expect(try await service.send("GET", "/healthz").status == 200)
        #expect(try await service.send("GET", "/v1/model").status == 401)
        #expect(try await service.send("GET", "/metrics", headers: ["Authorization": "Bearer s3cre"]).status == 401)
        #expect(try await service.send("POST", "/v1/score", body: featuresBody([("a", 2)]), headers: ["Authorization": "Bearer wrong!"]).status == 401)
        #expect(try await service.send("POST", "/v1/score", body: featuresBody([("a", 2)]), headers: ["Authorization": "Bearer s3cret"]).status == 200)
        await service.stop()

        var open = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        open.host = "0.0.0.0"
        #expect(throws: ScoringError.self) { try open.validate() }
    }

    @Test("hot reload: a new latest is served; a damaged one is refused and the old model keeps serving")
    func hotReload() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        let service = try await RunningService(configuration(fixture))
        let body = featuresBody([("a", 6)])
        func served() async throws -> (step: Int, churn: Double) {
            let reply = try await service.send("POST", "/v1/score", body: body)
            let object = try service.json(reply)
            return ((object["model"] as! [String: Any])["step"] as! Int,
                    (object["scores"] as! [[String: Any]])[0]["churn_probability"] as! Double)
        }
        func waitForStep(_ step: Int) async throws -> Bool {
            try await eventually { try await served().step == step }
        }
        let first = try await served()
        #expect(first.step == 1)

        try fixture.saveCheckpoint(step: 2, seed: 2)
        #expect(try await waitForStep(2))
        let second = try await served()
        #expect(second.churn != first.churn)

        // Step 3 is damaged before latest names it: its digest no longer matches.
        try stageDamagedCheckpoint(step: 3, root: fixture.root, run: "test") { try fixture.saveCheckpoint(step: 3, seed: 3, into: $0) }
        #expect(try await eventually {
            try await service.send("GET", "/metrics").text.contains("clm_model_reloads_refused_total 1")
        })
        let after = try await served()
        #expect(after.step == 2)
        #expect(after.churn == second.churn)
        let metrics = try await service.send("GET", "/metrics")
        #expect(metrics.text.contains("clm_model_reloads_refused_total 1"))
        #expect(metrics.text.contains("clm_model_step 2"))

        // A good step after the damaged one is picked up again.
        try fixture.saveCheckpoint(step: 4, seed: 4)
        #expect(try await waitForStep(4))
        await service.stop()
    }

    @Test("hot reload refuses untrusted manifests and overflowing weights; the served model keeps answering")
    func hotReloadRefusesOutOfRangeCheckpoints() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        var configuration = configuration(fixture)
        // The test drives the poll itself (reloadIfChanged), so the watcher stays out of the way.
        configuration.pollInterval = .seconds(3600)
        let service = try await RunningService(configuration)
        let body = featuresBody([("a", 6)])
        func servedStep() async throws -> Int {
            let reply = try await service.send("POST", "/v1/score", body: body)
            #expect(reply.status == 200, "\(reply.text)")
            return ((try service.json(reply))["model"] as! [String: Any])["step"] as! Int
        }
        #expect(try await servedStep() == 1)

        var architecture = fixture.architecture()
        architecture.layers = 1
        let oneLayer: JSONValue = ["architecture": try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(architecture))]
        var hugeHidden = fixture.architecture()
        hugeHidden.hiddenSize = 1_000_000_000
        let huge: JSONValue = ["architecture": try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(hugeHidden))]
        let bad: [(String, (Int) throws -> Void)] = [
            ("periodDays 0", { step in try fixture.saveCheckpoint(step: step, seed: 2) { $0.spec.periodDays = 0 } }),
            ("historyPeriods -1", { step in try fixture.saveCheckpoint(step: step, seed: 2) { $0.spec.historyPeriods = -1 } }),
            ("historyPeriods 100000", { step in try fixture.saveCheckpoint(step: step, seed: 2) { $0.spec.historyPeriods = 100_000 } }),
            ("five stage names for four classes", { step in try fixture.saveCheckpoint(step: step, seed: 2) { $0.stageNames.append("extra") } }),
            ("a stage name with a comma and a line break", { step in
                try fixture.saveCheckpoint(step: step, seed: 2) { $0.stageNames[3] = "lo,yal\n" }
            }),
            ("two stages of one name", { step in try fixture.saveCheckpoint(step: step, seed: 2) { $0.stageNames[2] = "loyal" } }),
            ("a vanishing deviation", { step in try fixture.saveCheckpoint(step: step, seed: 2) { $0.normalisation.std[0] = 1e-30 } }),
            ("a normalisation mean edited under its fingerprint", { step in
                try fixture.saveCheckpoint(step: step, seed: 2, fingerprintStale: true) { $0.normalisation.mean[0] += 0.5 }
            }),
            ("a manifest of one layer over two layers' tensors", { step in try fixture.saveCheckpoint(step: step, seed: 2, configurationOverride: oneLayer) }),
            ("a billion hidden units", { step in try fixture.saveCheckpoint(step: step, seed: 2, configurationOverride: huge) }),
            ("a recurrent weight of 3.4e38", { step in
                try fixture.saveCheckpoint(step: step, seed: 2, changeWeights: { model in
                    model.parameters.value(model.parameters.layout.slice(named: "lstm.weight_hh_l0")!)[0] = 3.4e38
                })
            }),
        ]
        for (index, (name, save)) in bad.enumerated() {
            try save(2 + index)
            #expect(service.scorer.reloadIfChanged() == false, "\(name) was loaded")
            #expect(try await servedStep() == 1, "after \(name)")
        }
        let metrics = try await service.send("GET", "/metrics")
        #expect(metrics.text.contains("clm_model_reloads_refused_total \(bad.count)"), "\(metrics.text)")
        try fixture.saveCheckpoint(step: 100, seed: 3)
        #expect(service.scorer.reloadIfChanged())
        #expect(try await servedStep() == 100)
        await service.stop()
    }

    @Test("parallel requests are all answered, each with its own customer's scores")
    func concurrency() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 9)
        let service = try await RunningService(configuration(fixture))
        // Reference: each length scored alone.
        var expected: [Int: Double] = [:]
        for length in 1...8 {
            let reply = try await service.send("POST", "/v1/score", body: featuresBody([("c", length)]))
            expected[length] = ((try service.json(reply)["scores"] as! [[String: Any]])[0]["churn_probability"] as! Double)
        }
        #expect(Set(expected.values).count > 1)
        let results = try await withThrowingTaskGroup(of: (Int, Double, Int).self) { group in
            for k in 0..<64 {
                let length = k % 8 + 1
                group.addTask {
                    let reply = try await service.send("POST", "/v1/score", body: featuresBody([("c\(k)", length)]))
                    let churn = reply.status == 200 ? ((try service.json(reply)["scores"] as! [[String: Any]])[0]["churn_probability"] as! Double) : -1
                    return (length, churn, reply.status)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 64)
        for (length, churn, status) in results {
            #expect(status == 200)
            #expect(abs(churn - expected[length]!) < 1e-6, "length \(length)")
        }
        await service.stop()
    }
}

/// A raw TCP connection to the service, for what a well-behaved HTTP client never does: stop
/// half-way, or never read the answer.
final class RawConnection: @unchecked Sendable {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard fd >= 0, connected == 0 else { throw ClientError(0, "cannot connect to 127.0.0.1:\(port): errno \(errno)") }
    }

    deinit { close(fd) }

    /// The head of a `POST /v1/score` announcing `length` body bytes.
    static func scoreHead(length: Int, close: Bool = false) -> [UInt8] {
        Array(("POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (close ? "Connection: close\r\n" : "") + "Content-Length: \(length)\r\n\r\n").utf8)
    }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { return }
            offset += written
        }
    }

    /// Sends until the socket buffers are full (the server has stopped reading), then closes the
    /// sending side, as a client that gave up half-way through an upload does.
    func floodThenStopSending() {
        let chunk = [UInt8](repeating: UInt8(ascii: " "), count: 65_536)
        while true {
            let written = chunk.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if written <= 0 { break }
        }
        shutdown(fd, Int32(SHUT_WR))
    }

    /// Reads until the server closes the connection or `seconds` pass; returns what arrived and
    /// whether the server closed it. The blocking reads run on a thread of their own: on the
    /// cooperative pool (two threads here) they would starve the server's own request tasks.
    func readUntilClosed(seconds: Int) async -> (text: String, closed: Bool) {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: self.blockingRead(seconds: seconds)) }
        }
    }

    private func blockingRead(seconds: Int) -> (text: String, closed: Bool) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if count == 0 { return (String(decoding: received, as: UTF8.self), true) }
            if count < 0 {
                if errno == EINTR { continue }
                // ECONNRESET is a close too; a time-out is not.
                return (String(decoding: received, as: UTF8.self), errno == ECONNRESET)
            }
            received += buffer[0..<count]
        }
        return (String(decoding: received, as: UTF8.self), false)
    }
}

/// Waits until the server has closed every one of `connections` or `deadline` passes; returns
/// how many are still open and when the last close was seen. One poll(2) loop on a thread of
/// its own, so thousands of sockets need no thread each.
func waitUntilClosed(_ connections: [RawConnection], within deadline: Duration) async -> (open: Int, lastClose: Duration) {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread {
            let clock = ContinuousClock(), start = clock.now, end = start + deadline
            var open = Set(connections.indices), lastClose = Duration.zero
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !open.isEmpty && clock.now < end {
                let indices = Array(open)
                var fds = indices.map { pollfd(fd: connections[$0].fd, events: Int16(POLLIN), revents: 0) }
                let left = end - clock.now
                let ready = poll(&fds, nfds_t(fds.count), Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)))
                if ready <= 0 { continue }
                for (k, entry) in fds.enumerated() where entry.revents != 0 {
                    let count = buffer.withUnsafeMutableBytes { recv(entry.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
                    if count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR) || entry.revents & Int16(POLLHUP | POLLERR) != 0 {
                        open.remove(indices[k])
                        lastClose = clock.now - start
                    }
                }
            }
            continuation.resume(returning: (open.count, lastClose))
        }
    }
}

/// Five good requests one after another, each answered 200; their times. Their median is what
/// the attack tests bound: `swift test` runs other suites beside them on two cores, and one
/// request can lose the processor to those for longer than the bound.
func goodRequestTimes(port: Int) async throws -> [Duration] {
    var times: [Duration] = []
    for _ in 0..<5 {
        let good = try await timedGoodRequest(port: port)
        #expect(good.status == 200)
        times.append(good.elapsed)
    }
    return times
}

/// Opens `count` connections that each announce a large body and send one byte of it.
func openSlowBodies(_ count: Int, port: Int, token: String? = nil) throws -> [RawConnection] {
    try (0..<count).map { _ in
        let connection = try RawConnection(port: port)
        connection.send(Array(("POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (token.map { "Authorization: Bearer \($0)\r\n" } ?? "") + "Content-Length: 60000\r\n\r\n{").utf8))
        return connection
    }
}

/// Sends one good score request on a new connection and times it.
func timedGoodRequest(port: Int, token: String? = nil) async throws -> (status: Int, elapsed: Duration) {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            let client = LoopbackClient(port: port)
            let started = ContinuousClock.now
            let result = Result { try client.send("POST", "/v1/score", body: Data(featuresBody([("good", 3)]).utf8),
                                                  headers: token.map { ["Authorization": "Bearer \($0)"] } ?? [:]) }
            let elapsed = ContinuousClock.now - started
            continuation.resume(with: result.map { ($0.status, elapsed) })
        }
    }
}

// Serialized: the latencies measured here are of one attack at a time.
@Suite("Scoring service: connections", .serialized)
struct ServiceConnectionTests {
    /// A service over a fresh one-checkpoint fixture, with a short idle timeout and body limit.
    func service(idleSeconds: Double = 0.5) async throws -> RunningService {
        let fixture = try ScoringFixture(customers: 20)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.idleTimeout = .milliseconds(Int64(idleSeconds * 1000))
        configuration.limits.maxBodyBytes = 64 * 1024
        return try await RunningService(configuration)
    }

    @Test("slow bodies past the connection cap: the server answers a good request within 100 ms and closes every slow body by the deadline")
    func slowBodiesPastTheCap() async throws {
        let fixture = try ScoringFixture(customers: 20)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.maxConnections = 32
        configuration.requestTimeout = .seconds(1)
        let service = try await RunningService(configuration)
        // A first request on its own, so the 100 ms below measures the attack, not a cold start.
        #expect(try await timedGoodRequest(port: service.port).status == 200)
        let slow = try openSlowBodies(300, port: service.port)
        // The first good connection waits behind the attack's in the accept queue; the next meets a full cap.
        #expect(try await timedGoodRequest(port: service.port).status == 200)
        let goods = try await goodRequestTimes(port: service.port)
        #expect(goods.sorted()[2] < .milliseconds(100), "good requests during the attack took \(goods)")
        // Every slow body is closed: the oldest to make room, the rest at the 1 s deadline.
        let (open, lastClose) = await waitUntilClosed(slow, within: .seconds(5))
        #expect(open == 0, "\(open) of \(slow.count) slow bodies still open")
        #expect(lastClose < .milliseconds(2500), "the last slow body closed after \(lastClose)")
        let counts = service.metrics.connectionCounts()
        // Each slow body was closed either to make room or at its deadline.
        #expect(counts.evicted > 0 && counts.requestTimeouts > 0 && counts.evicted + counts.requestTimeouts >= slow.count, "\(counts)")
        let metrics = try await service.send("GET", "/metrics").text
        #expect(metrics.contains("clm_http_connection_cap 32"))
        #expect(metrics.contains("clm_http_connections_evicted_total \(counts.evicted)"), "\(metrics)")
        #expect(try await service.send("GET", "/healthz").status == 200)
        await service.stop()
    }

    @Test("clm-score under a 256-descriptor limit: 1,000 slow bodies do not end it, a good request is answered within 100 ms, every slow body is closed by the deadline")
    func descriptorLimit() async throws {
        let fixture = try ScoringFixture(customers: 20)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        // swift build --build-tests builds the tools beside the test bundle.
        let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let tool = [products, Bundle.main.bundleURL.deletingLastPathComponent()].map { $0.appendingPathComponent("clm-score").path }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        let binary = try #require(tool, "clm-score is not built next to the tests (\(products.path)); run swift build --build-tests")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "ulimit -n 256 && exec \"$0\" serve --checkpoints \"$1\" --run test --port 0 --request-timeout-seconds 2",
                             binary, fixture.root.path]
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        defer { if process.isRunning { process.terminate(); process.waitUntilExit() } }
        // The port from "listening on http://127.0.0.1:PORT", read with a deadline.
        let port: Int? = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var text = ""
                let handle = output.fileHandleForReading
                var descriptor = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
                let end = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < end, !text.contains("\n") {
                    guard poll(&descriptor, 1, 200) > 0 else { continue }
                    let data = handle.availableData
                    if data.isEmpty { break }
                    text += String(decoding: data, as: UTF8.self)
                }
                continuation.resume(returning: text.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            }
        }
        let listening = try #require(port, "clm-score did not say where it listens")
        #expect(try await timedGoodRequest(port: listening).status == 200)
        // Four times the descriptor limit, so only the cap (128 by default, half of 256) keeps the process alive.
        let slow = try openSlowBodies(1000, port: listening)
        // The first good connection queues behind the attack's in the kernel's accept queue; the
        // next one meets a cap held by slow bodies (their deadline is 2 s away).
        let first = try await timedGoodRequest(port: listening)
        #expect(first.status == 200 && first.elapsed < .seconds(1), "\(first)")
        let goods = try await goodRequestTimes(port: listening)
        #expect(goods.sorted()[2] < .milliseconds(100), "good requests during the attack took \(goods)")
        let (open, lastClose) = await waitUntilClosed(slow, within: .seconds(8))
        #expect(open == 0, "\(open) of \(slow.count) slow bodies still open after \(lastClose)")
        #expect(lastClose < .seconds(4), "the last slow body closed after \(lastClose)")
        #expect(process.isRunning, "clm-score ended: \(String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self))")
        let metrics = try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try LoopbackClient(port: listening).send("GET", "/metrics").text }) }
        }
        #expect(metrics.contains("clm_http_connection_cap 128"), "\(metrics)")
        process.terminate()
        process.waitUntilExit()
        let log = String(decoding: output.fileHandleForReading.readDataToEndOfFile() + errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        // One episode at the cap: one warning when it starts, one note when it ends.
        #expect(log.components(separatedBy: "the cap (descriptor limit 256)").count == 2, "\(log.suffix(2000))")
        #expect(log.components(separatedBy: "connections back under 96").count == 2, "\(log.suffix(2000))")
        print("descriptor limit 256, cap 128: \(slow.count) slow bodies; good requests \(first.elapsed) (behind the accept queue), then \(goods); last slow body closed after \(lastClose); "
              + metrics.split(separator: "\n").filter { $0.hasPrefix("clm_http_connections_") || $0.hasPrefix("clm_http_request_timeouts") }.joined(separator: "; "))
    }

    @Test("without the token, a request is answered 401 and closed as soon as its head is read")
    func unauthenticatedBodiesAreNotAwaited() async throws {
        let fixture = try ScoringFixture(customers: 20)
        try fixture.saveCheckpoint(step: 1, seed: 1)
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.token = "s3cret"
        let service = try await RunningService(configuration)
        // The request deadline and idle timeout are 10 s: only the refusal can close these in 3.
        let slow = try openSlowBodies(50, port: service.port) + openSlowBodies(50, port: service.port, token: "wrong")
        let (open, lastClose) = await waitUntilClosed(slow, within: .seconds(3))
        #expect(open == 0, "\(open) unauthenticated slow bodies still open after \(lastClose)")
        let one = try RawConnection(port: service.port)
        one.send(RawConnection.scoreHead(length: 1000))
        let (text, closed) = await one.readUntilClosed(seconds: 3)
        #expect(text.hasPrefix("HTTP/1.1 401") && text.contains("missing or wrong bearer token") && closed, "\(text)")
        let good = try await timedGoodRequest(port: service.port, token: "s3cret")
        #expect(good.status == 200)
        #expect(service.metrics.requestCount(route: "/v1/score", status: 401) == 101)
        await service.stop()
    }

    @Test("a Content-Length over the limit is answered 413 at once, before any body, and closed")
    func oversizeContentLengthIsRefusedAtOnce() async throws {
        let service = try await service(idleSeconds: 10)
        let connection = try RawConnection(port: service.port)
        connection.send(RawConnection.scoreHead(length: 10_000_000_000))
        let started = ContinuousClock.now
        let (text, closed) = await connection.readUntilClosed(seconds: 5)
        #expect(text.hasPrefix("HTTP/1.1 413") && text.contains("larger than 65536 bytes (Content-Length: 10000000000)"), "\(text)")
        #expect(closed, "still open")
        // The refusal ends the connection (its FIN follows the answer), not the 10 s idle timeout.
        #expect(ContinuousClock.now - started < .seconds(3))
        await service.stop()
    }

    @Test("idle, half-sent headers and stalled bodies are closed after the idle timeout")
    func stalledConnectionsAreClosed() async throws {
        let service = try await service()
        let idle = try RawConnection(port: service.port)
        let halfHeader = try RawConnection(port: service.port)
        halfHeader.send(Array("POST /v1/score HTTP/1.1\r\nHost: x\r\n".utf8))
        let halfBody = try RawConnection(port: service.port)
        halfBody.send(RawConnection.scoreHead(length: 1000) + Array("{\"cust".utf8))
        for (name, connection) in [("idle", idle), ("half a header", halfHeader), ("half a body", halfBody)] {
            #expect(await connection.readUntilClosed(seconds: 8).closed, "\(name): still open")
        }
        await service.stop()
    }

    @Test("an oversize upload gets 413 and its connection is closed even when the client never finishes it")
    func oversizeUploadDoesNotHoldTheSocket() async throws {
        let service = try await service()
        let connection = try RawConnection(port: service.port)
        connection.send(RawConnection.scoreHead(length: 3 << 20, close: true))
        // Past the 64 KiB limit, but not so far that the send blocks on full socket buffers: a
        // client stuck in send never reads the 413 before the close resets the connection.
        connection.send([UInt8](repeating: UInt8(ascii: " "), count: 96 * 1024))
        let (text, closed) = await connection.readUntilClosed(seconds: 8)
        #expect(text.hasPrefix("HTTP/1.1 413"), "\(text.prefix(200))")
        #expect(closed, "the server kept the refused upload's socket open")
        // A client that sends megabytes past the limit fills the socket buffers, because the server
        // stops reading after the limit; without an idle timeout the server never saw it leave.
        let flooding = try RawConnection(port: service.port)
        flooding.send(RawConnection.scoreHead(length: 64 << 20, close: true))
        flooding.floodThenStopSending()
        #expect(await flooding.readUntilClosed(seconds: 8).closed, "the server kept a flooding upload's socket open")
        // And the service still answers.
        let health = try await service.send("GET", "/healthz")
        #expect(health.status == 200)
        await service.stop()
    }

    @Test("a client that disconnects mid-body is counted as 499, not as a server error")
    func disconnectIsNotAServerError() async throws {
        let service = try await service()
        do {
            let connection = try RawConnection(port: service.port)
            connection.send(RawConnection.scoreHead(length: 1000) + Array("{\"customers\":[".utf8))
        }   // closed here, 986 bytes short
        let deadline = ContinuousClock.now + .seconds(5)
        while service.metrics.requestCount(route: "/v1/score", status: 499) == 0 && ContinuousClock.now < deadline {
            await Task.yield()
        }
        #expect(service.metrics.requestCount(route: "/v1/score", status: 499) == 1)
        #expect(service.metrics.requestCount(route: "/v1/score", status: 500) == 0)
        await service.stop()
    }
}

@Test("a service started on a run with no checkpoint says what it waits for and which runs exist")
func waitingForARunNamesItAndTheRunsThatExist() throws {
    let root = try TemporaryDirectory(prefix: "waiting")
    for (run, hasCheckpoint) in [("cdnow-lstm", true), ("empty", false)] {
        try FileManager.default.createDirectory(at: root.url.appendingPathComponent(run), withIntermediateDirectories: false)
        if hasCheckpoint { try "step-000001\n".write(toFile: root.path("\(run)/latest"), atomically: true, encoding: .utf8) }
    }
    let message = waitingMessage(root: root.url, run: "cdnow-lstn")
    #expect(message.contains("run 'cdnow-lstn' has no checkpoint to score with (\(root.path("cdnow-lstn")) does not exist)"), "\(message)")
    #expect(message.contains("runs with checkpoints under \(root.url.path): cdnow-lstm; answering 503 until one appears"), "\(message)")
    #expect(!message.contains("empty,") && !message.contains(", empty"), "\(message)")
    let empty = waitingMessage(root: root.url, run: "empty")
    #expect(empty.contains("(\(root.path("empty")) has no best or latest checkpoint yet)"), "\(empty)")
}
