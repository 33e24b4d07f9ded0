import CustomerData
import Foundation
import Synchronization

/// Request counts, a latency histogram and model gauges, rendered in Prometheus' text format.
///
/// Written by hand rather than through swift-metrics: a dozen series do not need a backend,
/// and one lock around plain dictionaries is cheaper than the scrape it serves.
public final class ServiceMetrics: Sendable {
    /// Upper bounds in seconds; small ones because a single-customer score takes about a millisecond.
    public static let latencyBuckets: [Double] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5]

    private struct State {
        var requests: [RequestKey: Int] = [:]
        var bucketCounts: [String: [Int]] = [:]
        var latencySums: [String: Double] = [:]
        var latencyCounts: [String: Int] = [:]
        var customersScored = 0
        var reloads = 0
        var refusedReloads = 0
        var modelStep: Int? = nil
        var drift: [DriftIndex] = []
        var driftCustomers = 0
        var driftMinimumCustomers = 0
        var openConnections = 0
        var connectionCap = 0
        var evictedConnections = 0
        var refusedConnections = 0
        var requestTimeouts = 0
        var busyExplanations = 0
        var tableReloads = 0
        var refusedTableReloads = 0
        var tableCustomers = 0
        var tableBuildSeconds = 0.0
    }

    private struct RequestKey: Hashable, Comparable {
        var route: String
        var status: Int
        static func < (a: Self, b: Self) -> Bool { (a.route, a.status) < (b.route, b.status) }
    }

    private let state = Mutex(State())

    public init() {}

    /// Records one finished request; `route` is the route pattern, never the raw path, so that
    /// arbitrary URLs cannot grow the series without bound.
    public func record(route: String, status: Int, seconds: Double) {
        state.withLock { state in
            state.requests[RequestKey(route: route, status: status), default: 0] += 1
            var buckets = state.bucketCounts[route] ?? Array(repeating: 0, count: Self.latencyBuckets.count)
            for (index, bound) in Self.latencyBuckets.enumerated() where seconds <= bound { buckets[index] += 1 }
            state.bucketCounts[route] = buckets
            state.latencySums[route, default: 0] += seconds
            state.latencyCounts[route, default: 0] += 1
        }
    }

    public func recordScored(customers: Int) { state.withLock { $0.customersScored += customers } }

    public func recordReload(step: Int) {
        state.withLock {
            $0.modelStep = step
            $0.reloads += 1
        }
    }

    public func recordRefusedReload() { state.withLock { $0.refusedReloads += 1 } }

    /// The latest stability indices of recent traffic against the served model's reference;
    /// rendered as NaN while they cover fewer than `minimumCustomers` (see `DriftMonitor`).
    public func recordDrift(_ indices: [DriftIndex], customers: Int, minimumCustomers: Int) {
        state.withLock {
            $0.drift = indices
            $0.driftCustomers = customers
            $0.driftMinimumCustomers = minimumCustomers
        }
    }

    func recordConnections(open: Int, cap: Int) {
        state.withLock {
            $0.openConnections = open
            $0.connectionCap = cap
        }
    }

    func recordConnectionShed(evicted: Int, refused: Int) {
        state.withLock {
            $0.evictedConnections += evicted
            $0.refusedConnections += refused
        }
    }

    /// A customer table built and now served (the first build included).
    public func recordTableReload(customers: Int, seconds: Double) {
        state.withLock {
            $0.tableReloads += 1
            $0.tableCustomers = customers
            $0.tableBuildSeconds = seconds
        }
    }

    public func recordRefusedTableReload() { state.withLock { $0.refusedTableReloads += 1 } }

    func recordRequestTimeout() { state.withLock { $0.requestTimeouts += 1 } }

    func recordBusyExplanation() { state.withLock { $0.busyExplanations += 1 } }

    /// Open connections, and those closed at the cap: waiting ones closed to make room, new ones refused.
    public func connectionCounts() -> (open: Int, evicted: Int, refused: Int, requestTimeouts: Int) {
        state.withLock { ($0.openConnections, $0.evictedConnections, $0.refusedConnections, $0.requestTimeouts) }
    }

    /// The number of requests seen for a route and status (for tests and the load test).
    public func requestCount(route: String, status: Int) -> Int {
        state.withLock { $0.requests[RequestKey(route: route, status: status)] ?? 0 }
    }

    /// The exposition text for `GET /metrics`.
    public func render() -> String {
        let snapshot = state.withLock { $0 }
        var out = "# HELP clm_http_requests_total HTTP requests by route and status.\n# TYPE clm_http_requests_total counter\n"
        for (key, count) in snapshot.requests.sorted(by: { $0.key < $1.key }) {
            out += "clm_http_requests_total{route=\"\(key.route)\",status=\"\(key.status)\"} \(count)\n"
        }
        out += "# HELP clm_http_request_duration_seconds Time from request head to response, by route.\n"
        out += "# TYPE clm_http_request_duration_seconds histogram\n"
        for route in snapshot.bucketCounts.keys.sorted() {
            let buckets = snapshot.bucketCounts[route]!
            for (index, bound) in Self.latencyBuckets.enumerated() {
                out += "clm_http_request_duration_seconds_bucket{route=\"\(route)\",le=\"\(bound)\"} \(buckets[index])\n"
            }
            let count = snapshot.latencyCounts[route] ?? 0
            out += "clm_http_request_duration_seconds_bucket{route=\"\(route)\",le=\"+Inf\"} \(count)\n"
            out += "clm_http_request_duration_seconds_sum{route=\"\(route)\"} \(snapshot.latencySums[route] ?? 0)\n"
            out += "clm_http_request_duration_seconds_count{route=\"\(route)\"} \(count)\n"
        }
        out += "# HELP clm_customers_scored_total Customers scored since start.\n# TYPE clm_customers_scored_total counter\n"
        out += "clm_customers_scored_total \(snapshot.customersScored)\n"
        out += "# HELP clm_model_reloads_total Checkpoints loaded since start (the first load included).\n# TYPE clm_model_reloads_total counter\n"
        out += "clm_model_reloads_total \(snapshot.reloads)\n"
        out += "# HELP clm_model_reloads_refused_total Checkpoints refused (damaged or incompatible).\n# TYPE clm_model_reloads_refused_total counter\n"
        out += "clm_model_reloads_refused_total \(snapshot.refusedReloads)\n"
        out += "# HELP clm_model_step Training step of the checkpoint being served; -1 before the first load.\n# TYPE clm_model_step gauge\n"
        out += "clm_model_step \(snapshot.modelStep ?? -1)\n"
        out += "# HELP clm_http_open_connections Client connections open now.\n# TYPE clm_http_open_connections gauge\n"
        out += "clm_http_open_connections \(snapshot.openConnections)\n"
        out += "# HELP clm_http_connection_cap Most client connections held open at once.\n# TYPE clm_http_connection_cap gauge\n"
        out += "clm_http_connection_cap \(snapshot.connectionCap)\n"
        out += "# HELP clm_http_connections_evicted_total Connections waiting for their request closed to make room at the cap.\n# TYPE clm_http_connections_evicted_total counter\n"
        out += "clm_http_connections_evicted_total \(snapshot.evictedConnections)\n"
        out += "# HELP clm_http_connections_refused_total New connections closed at the cap because every open one was busy.\n# TYPE clm_http_connections_refused_total counter\n"
        out += "clm_http_connections_refused_total \(snapshot.refusedConnections)\n"
        out += "# HELP clm_http_request_timeouts_total Requests whose head and body did not arrive by the deadline (408).\n# TYPE clm_http_request_timeouts_total counter\n"
        out += "clm_http_request_timeouts_total \(snapshot.requestTimeouts)\n"
        out += "# HELP clm_explanations_busy_total Explained requests answered 503 because every explanation worker was busy.\n# TYPE clm_explanations_busy_total counter\n"
        out += "clm_explanations_busy_total \(snapshot.busyExplanations)\n"
        out += "# HELP clm_customer_table_reloads_total Customer tables (--events) built and served since start (the first build included).\n# TYPE clm_customer_table_reloads_total counter\n"
        out += "clm_customer_table_reloads_total \(snapshot.tableReloads)\n"
        out += "# HELP clm_customer_table_reloads_refused_total Customer table rebuilds that failed; the table before keeps serving.\n# TYPE clm_customer_table_reloads_refused_total counter\n"
        out += "clm_customer_table_reloads_refused_total \(snapshot.refusedTableReloads)\n"
        out += "# HELP clm_customer_table_customers Customers GET /v1/customers/{id} answers for.\n# TYPE clm_customer_table_customers gauge\n"
        out += "clm_customer_table_customers \(snapshot.tableCustomers)\n"
        out += "# HELP clm_customer_table_build_seconds Time the served customer table took to read and score.\n# TYPE clm_customer_table_build_seconds gauge\n"
        out += "clm_customer_table_build_seconds \(snapshot.tableBuildSeconds)\n"
        if !snapshot.drift.isEmpty {
            out += "# HELP clm_drift_customers Recently scored customers the stability indices cover.\n# TYPE clm_drift_customers gauge\n"
            out += "clm_drift_customers \(snapshot.driftCustomers)\n"
            // A handful of customers fills a few bins and gives large indices that mean nothing:
            // below the minimum the gauges read NaN, the way the drift warning stays silent.
            let minimum = snapshot.driftMinimumCustomers
            let enough = snapshot.driftCustomers >= minimum
            let pending = " NaN until the window holds \(minimum) customers."
            for (kind, metric, label, help) in [
                (DriftIndex.Kind.feature, "clm_feature_psi", "feature", "Population stability index of a sequence feature (all valid periods) against the training customers."),
                (.input, "clm_input_psi", "input", "Population stability index of a customer-level input against the training customers."),
                (.score, "clm_score_psi", "score", "Population stability index of a score against the training customers."),
            ] {
                out += "# HELP \(metric) \(help)\(pending)\n# TYPE \(metric) gauge\n"
                for index in snapshot.drift where index.kind == kind {
                    out += "\(metric){\(label)=\"\(index.name)\"} \(enough ? String(format: "%.6f", index.psi) : "NaN")\n"
                }
            }
        }
        return out
    }
}
