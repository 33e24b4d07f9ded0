import CustomerData
import Foundation
import ScoringService
import ScoringTestSupport
import Testing

/// The metric names a PromQL expression reads: the names left once strings, label matchers,
/// ranges and grouping clauses are removed, less numbers, function names (followed by `(`) and
/// keywords.
func promQLMetricNames(_ expression: String) throws -> Set<String> {
    var text = expression
    for pattern in [#""(?:[^"\\]|\\.)*""#, #"\{[^}]*\}"#, #"\[[^\]]*\]"#,
                    #"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"#] {
        text = text.replacing(try Regex(pattern), with: " ")
    }
    let keywords: Set<String> = ["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"]
    var names = Set<String>()
    // A number is one token, so the exponent of 1e-9 is not read as a name.
    for match in text.matches(of: try Regex(#"[A-Za-z_:][A-Za-z0-9_:]*|[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"#)) {
        let word = String(text[match.range])
        if word.first!.isNumber { continue }
        if text[match.range.upperBound...].drop(while: { $0 == " " }).first == "(" || keywords.contains(word.lowercased()) { continue }
        names.insert(word)
    }
    return names
}

/// Every PromQL expression in a Grafana dashboard: panel targets (rows' panels too) and the
/// template variables' queries.
func dashboardExpressions(_ dashboard: [String: Any]) -> [String] {
    func panels(_ list: [[String: Any]]) -> [[String: Any]] {
        list + list.flatMap { panels(($0["panels"] as? [[String: Any]]) ?? []) }
    }
    var expressions = panels((dashboard["panels"] as? [[String: Any]]) ?? []).flatMap { panel in
        ((panel["targets"] as? [[String: Any]]) ?? []).compactMap { $0["expr"] as? String }
    }
    for variable in ((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]]) ?? [] where variable["type"] as? String == "query" {
        let query = (variable["query"] as? [String: Any])?["query"] as? String ?? variable["query"] as? String
        // label_values(SELECTOR, label): the selector is PromQL, the label is not.
        if let query, let open = query.firstIndex(of: "("), let comma = query.lastIndex(of: ",") {
            expressions.append(String(query[query.index(after: open)..<comma]))
        }
    }
    return expressions
}

@Suite("Grafana dashboard against the live service's /metrics")
struct DashboardTests {
    static let dashboardPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("cluster/grafana/clm-score.json").path

    @Test("the metric extraction finds metrics and skips functions, labels, ranges, numbers and strings")
    func extraction() throws {
        #expect(try promQLMetricNames(#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{job=~"$job", x="y(z)"}[$__rate_interval])))"#) == ["a_bucket"])
        #expect(try promQLMetricNames("sum(rate(a_total[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9) > bool 0.5") == ["a_total", "b_total"])
        #expect(try promQLMetricNames("c_gauge") == ["c_gauge"])
    }

    @Test("every metric the dashboard queries is one the running service exports")
    func everyQueriedMetricIsExported() async throws {
        let data = try #require(FileManager.default.contents(atPath: Self.dashboardPath), "\(Self.dashboardPath) is missing")
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let expressions = dashboardExpressions(dashboard)
        var queried: [String: [String]] = [:]
        for expression in expressions {
            for name in try promQLMetricNames(expression) { queried[name, default: []].append(expression) }
        }
        // What the issue asks the dashboard to show, so an emptied dashboard cannot pass.
        for required in ["clm_http_requests_total", "clm_http_request_duration_seconds_bucket", "clm_model_reloads_total",
                         "clm_customer_table_reloads_total", "clm_feature_psi", "clm_http_connections_refused_total"] {
            #expect(queried[required] != nil, "the dashboard does not query \(required)")
        }

        // A service that has scored customers with a drift reference and serves a customer table
        // exports every series it has; the drift gauges appear only then.
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 1, withDriftReference: true)
        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.customerEvents = CustomerEventsSource(path: fixture.eventsPath, options: EventFileOptions(), asOf: nil)
        let service = try await RunningService(configuration)
        #expect(try await service.send("POST", "/v1/score", body: featuresBody([("a", 3)])).status == 200)
        let text = try await service.send("GET", "/metrics").text
        await service.stop()
        let exported = Set(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line in
            String(line.prefix { $0 != "{" && $0 != " " })
        })
        #expect(exported.contains("clm_feature_psi"), "drift gauges missing from \(text)")
        for (name, where_) in queried.sorted(by: { $0.key < $1.key }) {
            #expect(exported.contains(name), "the dashboard queries \(name), which /metrics does not export (in \(where_[0]))")
        }
    }
}
