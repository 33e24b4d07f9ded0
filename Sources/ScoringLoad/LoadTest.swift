import Foundation
import Synchronization

/// A load test that cannot run as asked.
public struct LoadTestError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// What a load test measured.
public struct LoadTestReport: Sendable {
    public var sent: Int
    public var succeeded: Int
    public var failed: Int
    public var seconds: Double
    /// Latencies in seconds, measured from each request's scheduled start, so a stalled server
    /// is charged for the requests that queued behind the stall.
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var max: Double
    public var firstFailure: String?

    public var requestsPerSecond: Double { seconds > 0 ? Double(succeeded) / seconds : 0 }

    public var summary: String {
        String(format: "%d requests in %.2f s: %.0f req/s ok, %d failed; latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms",
               sent, seconds, requestsPerSecond, failed, p50 * 1000, p90 * 1000, p99 * 1000, max * 1000)
            + (firstFailure.map { "; first failure: \($0)" } ?? "")
    }
}

/// An open-loop load generator: requests start on a fixed schedule whether or not earlier ones
/// have finished, spread over `connections` keep-alive connections (one thread each).
public enum LoadTest {
    /// Sends `rate` requests per second for `seconds` to a loopback `host:port`: `method` on
    /// `paths`, request i to `paths[i % paths.count]` (so a list of ids is walked in turn), with
    /// `body` when given.
    ///
    /// Refuses any address outside 127.0.0.0/8: this tool is for measuring a local service.
    public static func run(
        host: String, port: Int, method: String = "POST", paths: [String], body: Data?, rate: Double, seconds: Double, connections: Int,
        headers: [String: String] = [:]
    ) throws -> LoadTestReport {
        guard !paths.isEmpty else { throw LoadTestError("no request path to send") }
        guard host == "localhost" || host.hasPrefix("127.") else {
            throw LoadTestError("the load test only targets loopback addresses (127.0.0.0/8), got \(host)")
        }
        guard rate > 0, rate <= 100_000, seconds > 0, seconds <= 600, connections >= 1, connections <= 64 else {
            throw LoadTestError("rate must be in (0, 100000], seconds in (0, 600], connections in 1...64")
        }
        let total = Int(rate * seconds)
        let interval = 1 / rate
        let latencies = Mutex<[Double]>([])
        let failures = Mutex<(count: Int, first: String?)>((0, nil))
        let start = DispatchTime.now().uptimeNanoseconds + 50_000_000
        let group = DispatchGroup()
        for worker in 0..<connections {
            let thread = Thread {
                let client = LoopbackClient(host: host == "localhost" ? "127.0.0.1" : host, port: port)
                var mine: [Double] = []
                mine.reserveCapacity(total / connections + 1)
                var index = worker
                while index < total {
                    let scheduled = start + UInt64(Double(index) * interval * 1e9)
                    let now = DispatchTime.now().uptimeNanoseconds
                    if scheduled > now { usleep(UInt32((scheduled - now) / 1000)) }
                    do {
                        let reply = try client.send(method, paths[index % paths.count], body: body, headers: headers)
                        if reply.status == 200 {
                            mine.append(Double(DispatchTime.now().uptimeNanoseconds - scheduled) / 1e9)
                        } else {
                            failures.withLock { f in
                                f.count += 1
                                if f.first == nil { f.first = "HTTP \(reply.status): \(reply.text.prefix(200))" }
                            }
                        }
                    } catch {
                        client.close()
                        failures.withLock { f in
                            f.count += 1
                            if f.first == nil { f.first = "\(error)" }
                        }
                    }
                    index += connections
                }
                latencies.withLock { $0.append(contentsOf: mine) }
                group.leave()
            }
            group.enter()
            thread.start()
        }
        group.wait()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let sorted = latencies.withLock { $0 }.sorted()
        func quantile(_ q: Double) -> Double {
            sorted.isEmpty ? 0 : sorted[Swift.min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)]
        }
        let failed = failures.withLock { $0 }
        return LoadTestReport(
            sent: total, succeeded: sorted.count, failed: failed.count, seconds: elapsed,
            p50: quantile(0.5), p90: quantile(0.9), p99: quantile(0.99), max: sorted.last ?? 0, firstFailure: failed.first)
    }
}

extension LoadTest {
    /// One customer with a purchase every three weeks for a year, as of the last one.
    public static func sampleBody(customerID: String = "load-1") -> String {
        var events: [String] = []
        let start = 19_000  // 2022-01-08
        for k in 0..<18 {
            events.append("{\"day\":\(start + 21 * k),\"amount\":\(20 + k % 5 * 7).5,\"quantity\":\(1 + k % 3)}")
        }
        return "{\"as_of\":\(start + 21 * 17 + 3),\"customers\":[{\"customer_id\":\"\(customerID)\",\"events\":[\(events.joined(separator: ","))]}]}"
    }
}
