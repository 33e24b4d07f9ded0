import CustomerData
import Foundation
import OpenAPIKit
import ScoringLoad
import ScoringService
import ScoringTestSupport
import Testing

/// The OpenAPI document's operations and the statuses each documents.
struct DocumentedOperations {
    /// "METHOD /path" with parameters as `{name}`, to the documented status codes.
    var statuses: [String: Set<Int>] = [:]

    init(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let root = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any], sourceLocation: sourceLocation)
        #expect((root["openapi"] as? String)?.hasPrefix("3.1.") == true, "openapi: \(root["openapi"] ?? "absent")", sourceLocation: sourceLocation)
        let paths = try #require(root["paths"] as? [String: [String: Any]], sourceLocation: sourceLocation)
        let responses = (root["components"] as? [String: Any])?["responses"] as? [String: Any] ?? [:]
        for (path, item) in paths {
            for (method, value) in item where ["get", "post", "put", "delete", "patch", "head", "options"].contains(method) {
                let operation = try #require(value as? [String: Any], sourceLocation: sourceLocation)
                let codes = try #require(operation["responses"] as? [String: Any], "\(method) \(path)", sourceLocation: sourceLocation)
                var documented = Set<Int>()
                for (code, response) in codes {
                    let status = try #require(Int(code), "\(method) \(path): response key \(code) is not a status", sourceLocation: sourceLocation)
                    // A reference must name a response the document has, or the status documents nothing.
                    if let reference = (response as? [String: Any])?["$ref"] as? String {
                        let name = String(reference.dropFirst("#/components/responses/".count))
                        #expect(reference.hasPrefix("#/components/responses/") && responses[name] != nil,
                                "\(method) \(path) \(code): \(reference) names no response", sourceLocation: sourceLocation)
                    }
                    documented.insert(status)
                }
                statuses["\(method.uppercased()) \(path)"] = documented
            }
        }
    }
}

/// The router's spelling of a path (`:id`) in the document's (`{id}`).
func openAPIPath(_ routerPath: String) -> String {
    routerPath.split(separator: "/", omittingEmptySubsequences: false).map { component in
        component.hasPrefix(":") ? "{\(component.dropFirst())}" : String(component)
    }.joined(separator: "/")
}

@Suite("OpenAPI document against the live service", .serialized)
struct OpenAPITests {
    static let token = "openapi-test-token"

    func configuration(_ fixture: ScoringFixture) -> ServiceConfiguration {
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.pollInterval = .seconds(60)
        configuration.token = Self.token
        // Short, so that a request left without its body is answered 408 within the test; not
        // shorter, so that a whole request on a starved machine still arrives in time.
        configuration.requestTimeout = .seconds(1)
        configuration.limits.maxCustomers = 2
        configuration.customerEvents = CustomerEventsSource(path: fixture.eventsPath, options: EventFileOptions(), asOf: nil)
        return configuration
    }

    @Test("the document decodes as OpenAPI 3.1 in OpenAPIKit and passes its validation (every reference resolves, every operation answers)")
    func documentIsValidOpenAPI() throws {
        let document = try JSONDecoder().decode(OpenAPI.Document.self, from: Data(openAPIDocument))
        try document.validate()
        #expect(document.paths.count == 7, "\(document.paths.keys)")
    }

    @Test("every route of the router is documented and every documented operation is routed; every status the routes answer is documented")
    func routesAndStatusesAgree() async throws {
        let document = try DocumentedOperations(openAPIDocument)
        let fixture = try ScoringFixture(customers: 30)
        try fixture.saveCheckpoint(step: 2, seed: 3)
        let service = try await RunningService(configuration(fixture))
        // A second service over a run with no checkpoint yet: the answers before a model is loaded.
        let empty = try ScoringFixture(customers: 10)
        let waiting = try await RunningService(configuration(empty))

        let routed = Set(service.routes.map { "\($0.method) \(openAPIPath($0.path))" })
        #expect(!routed.isEmpty)
        #expect(routed.subtracting(document.statuses.keys).sorted() == [], "routes missing from the document")
        #expect(Set(document.statuses.keys).subtracting(routed).sorted() == [], "documented operations the router does not have")

        let auth = ["Authorization": "Bearer \(Self.token)"]
        var seen: [String: Set<Int>] = [:]
        let target = try fixture.dataset.customerIDs()[3]
        func drive(_ service: RunningService, _ operation: String, id: String? = nil, body: String? = nil, headers: [String: String] = auth,
                   expect status: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
            let parts = operation.split(separator: " ", maxSplits: 1).map(String.init)
            let path = parts[1].replacingOccurrences(of: "{id}", with: id ?? target)
            let reply = try await service.send(parts[0], path, body: body, headers: headers)
            #expect(reply.status == status, "\(operation): \(reply.text.prefix(300))", sourceLocation: sourceLocation)
            seen[operation, default: []].insert(reply.status)
            // Every answer of every status is JSON but the metrics' text.
            if operation != "GET /metrics" || reply.status != 200 {
                #expect(reply.headers["content-type"] == "application/json", "\(operation) \(reply.status): \(reply.headers)", sourceLocation: sourceLocation)
                #expect((try? JSONSerialization.jsonObject(with: reply.body)) != nil, "\(operation) \(reply.status): \(reply.text.prefix(200))", sourceLocation: sourceLocation)
            }
        }

        let events = try fixture.requestEvents(of: target).joined(separator: ",")
        let cutoff = fixture.dataset.manifest.spec.cutoffDay
        let score = "POST /v1/score"
        try await drive(service, score, body: "{\"as_of\":\(cutoff),\"customers\":[{\"customer_id\":\"\(target)\",\"events\":[\(events)]}]}", expect: 200)
        try await drive(service, score, body: "{\"customers\":[", expect: 400)
        try await drive(service, score, body: featuresBody([("a", 2), ("b", 2), ("c", 2)]), expect: 413)
        try await drive(service, score, body: "{}", headers: auth.merging(["Content-Type": "text/plain"]) { $1 }, expect: 415)
        try await drive(service, score, body: "{\"as_of\":\"1970-01-02\",\"customers\":[{\"customer_id\":\"\(target)\",\"events\":[\(events)]}]}", expect: 422)
        try await drive(waiting, score, body: featuresBody([("a", 2)]), expect: 503)
        for operation in ["GET /v1/model", "GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json"] {
            try await drive(service, operation, expect: 200)
        }
        try await drive(service, "GET /v1/customers/{id}", expect: 200)
        try await drive(service, "GET /v1/customers/{id}", id: "no-such-customer", expect: 404)
        try await drive(waiting, "GET /v1/customers/{id}", expect: 503)
        try await drive(waiting, "GET /v1/model", expect: 503)
        try await drive(waiting, "GET /readyz", expect: 503)
        for operation in routed.sorted() {
            let open = ["GET /healthz", "GET /readyz", "GET /openapi.json"].contains(operation)
            try await drive(service, operation, body: open ? nil : "{}", headers: [:], expect: open ? 200 : 401)
            // A head announcing a body that never comes, and one announcing a body over the limit.
            try await drive(service, operation, headers: auth.merging(["Content-Length": "10"]) { $1 }, expect: 408)
            try await drive(service, operation, headers: auth.merging(["Content-Length": "100000000"]) { $1 }, expect: 413)
        }

        for (operation, statuses) in seen.sorted(by: { $0.key < $1.key }) {
            let documented = document.statuses[operation] ?? []
            #expect(statuses.isSubset(of: documented), "\(operation) answered \(statuses.subtracting(documented).sorted()), not in the document")
        }
        // The reverse: a documented status nothing answers is a promise the code does not keep.
        // 409 only answers a reload that changes the history length while a request is read.
        let unreachable: [String: Set<Int>] = [score: [409]]
        for (operation, documented) in document.statuses.sorted(by: { $0.key < $1.key }) {
            let missing = documented.subtracting(seen[operation] ?? []).subtracting(unreachable[operation] ?? [])
            #expect(missing.isEmpty, "\(operation) documents \(missing.sorted()), which no request here produced")
        }

        let served = try await service.send("GET", "/openapi.json")
        #expect([UInt8](served.body) == openAPIDocument, "GET /openapi.json serves the document in the repository")
        await waiting.stop()
        await service.stop()
    }
}
