import CustomerData
import Foundation
import Scoring
import ScoringService
import ScoringTestSupport
import TestSupport
import Testing

@Suite("Scores by customer id (serve --events)", .serialized)
struct CustomerTableTests {
    func configuration(_ fixture: ScoringFixture, events: String) -> ServiceConfiguration {
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.pollInterval = .milliseconds(100)
        configuration.customerEvents = CustomerEventsSource(path: events, options: EventFileOptions(), asOf: nil)
        return configuration
    }

    /// The customers of a batch score CSV, each field as written, by id.
    func batchRows(_ fixture: ScoringFixture, events: String, name: String) throws -> [String: [String: String]] {
        let out = fixture.directory.path(name)
        _ = try BatchScoring.run(scorer: LSTMScorer(model: try ScoringModel.load(root: fixture.root, run: "test")), job: BatchScoringJob(events: events,
                                 options: EventFileOptions(), asOf: nil, rules: ScoringRules(), output: out, threads: 2))
        return Dictionary(uniqueKeysWithValues: try readScoreCSV(out).map { ($0["customer_id"]!, $0) })
    }

    /// GET /v1/customers/{id} for `id`, with its fields in batch's CSV spelling.
    func served(_ service: RunningService, _ id: String, sourceLocation: SourceLocation = #_sourceLocation) async throws -> [String: String]? {
        let reply = try await service.send("GET", "/v1/customers/\(id.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
        guard reply.status == 200 else {
            #expect(reply.status == 404, "\(id): \(reply.text)", sourceLocation: sourceLocation)
            return nil
        }
        // Numbers are compared as the text the service wrote: both writers print six decimals.
        let text = reply.text
        let score = try #require(try service.json(reply)["score"] as? [String: Any], sourceLocation: sourceLocation)
        var fields: [String: String] = [:]
        for key in ["customer_id", "stage", "action", "stage_source"] { fields[key] = score[key] as? String }
        for key in ["churn_probability", "expected_spend", "history_periods"] {
            let pattern = "\"\(key)\":"
            let start = try #require(text.range(of: pattern), sourceLocation: sourceLocation).upperBound
            fields[key] = String(text[start...].prefix { $0 != "," && $0 != "}" })
        }
        let probabilities = try #require(score["stage_probabilities"] as? [String: Any], sourceLocation: sourceLocation)
        for name in probabilities.keys {
            let pattern = "\"\(name)\":"
            let object = try #require(text.range(of: "\"stage_probabilities\":{"), sourceLocation: sourceLocation).upperBound
            let start = try #require(text[object...].range(of: pattern), sourceLocation: sourceLocation).upperBound
            fields["p_\(name)"] = String(text[start...].prefix { $0 != "," && $0 != "}" })
        }
        return fields
    }

    @Test("GET /v1/customers/{id} equals batch scoring of the same file for every customer; an unknown id is 404 with a JSON error")
    func equalsBatch() async throws {
        let fixture = try ScoringFixture(customers: 120)
        try fixture.saveCheckpoint(step: 4, seed: 6)
        let batch = try batchRows(fixture, events: fixture.eventsPath, name: "batch.csv")
        #expect(batch.count > 100)
        let service = try await RunningService(configuration(fixture, events: fixture.eventsPath))
        for (id, row) in batch.sorted(by: { $0.key < $1.key }) {
            let fields = try #require(try await served(service, id), "\(id) is in batch's output")
            for (key, value) in fields { #expect(row[key] == value, "\(id) \(key): batch \(row[key] ?? "absent"), served \(value)") }
            #expect(Set(fields.keys) == Set(row.keys), "\(id): columns")
        }
        let unknown = try await service.send("GET", "/v1/customers/not-a-customer")
        #expect(unknown.status == 404)
        #expect((try service.json(unknown)["error"] as? String)?.contains("not-a-customer") == true, "\(unknown.text)")
        let metrics = try await service.send("GET", "/metrics").text
        #expect(metrics.contains("clm_customer_table_customers \(batch.count)\n"), "\(metrics)")
        #expect(metrics.contains("clm_http_requests_total{route=\"/v1/customers/{id}\",status=\"200\"} \(batch.count)\n"))
        await service.stop()
    }

    @Test("a replaced event file is served once read whole, counted on /metrics; a damaged one is refused and the table before keeps serving")
    func reloads() async throws {
        let fixture = try ScoringFixture(customers: 60)
        try fixture.saveCheckpoint(step: 1, seed: 2)
        let events = fixture.directory.path("served.csv")
        let original = try String(contentsOfFile: fixture.eventsPath, encoding: .utf8)
        try original.write(toFile: events, atomically: true, encoding: .utf8)
        let service = try await RunningService(configuration(fixture, events: events))
        let first = try #require(service.customers?.current)
        let kept = try fixture.dataset.customerIDs()[0]
        #expect(try await served(service, kept) != nil)
        #expect(try await served(service, "newcomer") == nil)

        // A customer added by replacing the file (rename, as writers of nightly exports do).
        let lines = original.split(separator: "\n", omittingEmptySubsequences: false)
        let template = lines[1].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        var added = template
        added[0] = "newcomer"
        try (original + added.joined(separator: ",") + "\n").write(toFile: events, atomically: true, encoding: .utf8)
        #expect(try await eventually { service.customers?.current !== first })
        #expect(service.customers?.current?.customerCount == first.customerCount + 1)
        let batch = try batchRows(fixture, events: events, name: "after.csv")
        let newcomer = try #require(try await served(service, "newcomer"))
        for (key, value) in newcomer { #expect(batch["newcomer"]?[key] == value, "newcomer \(key)") }
        #expect(try await service.send("GET", "/metrics").text.contains("clm_customer_table_reloads_total 2\n"))

        // Damaged: no row is a purchase. Refused, counted, and the table before still answers.
        let second = service.customers?.current
        try "customer_id,timestamp,amount\nx,not-a-date,1\n".write(toFile: events, atomically: true, encoding: .utf8)
        #expect(try await eventually { try await service.send("GET", "/metrics").text.contains("clm_customer_table_reloads_refused_total 1\n") })
        #expect(service.customers?.current === second)
        #expect(try await served(service, "newcomer") != nil)
        await service.stop()
    }
}
