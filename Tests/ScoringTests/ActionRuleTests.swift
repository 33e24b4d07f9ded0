import Checkpoints
import CustomerData
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
@testable import Scoring
import ScoringLoad
import ScoringService
import ScoringTestSupport
import TestSupport
import Testing

extension ScoringFixture {
    /// Every customer's events in the fixture's file as `POST /v1/score` event objects, read once.
    func requestEventsByCustomer() throws -> [String: [String]] {
        let lines = try String(contentsOfFile: eventsPath, encoding: .utf8).split(separator: "\n")
        let header = lines[0].split(separator: ",").map(String.init)
        var events: [String: [String]] = [:]
        for line in lines.dropFirst() {
            let fields = Dictionary(uniqueKeysWithValues: zip(header, line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)))
            var event = "{\"date\":\"\(fields["timestamp"]!.prefix(10))\",\"amount\":\(fields["amount"]!)"
            if let q = fields["quantity"], !q.isEmpty { event += ",\"quantity\":\(q)" }
            if let o = fields["order_id"], !o.isEmpty { event += ",\"order_id\":\"\(o)\"" }
            if let p = fields["product_id"], !p.isEmpty { event += ",\"product_id\":\"\(p)\"" }
            events[fields["customer_id"]!, default: []].append(event + "}")
        }
        return events
    }
}

@Suite("One action rule for batch and service", .serialized)
struct ActionRuleTests {
    @Test("batch and the live service give every customer the same action, at the high-value line the checkpoint stores")
    func batchAndServiceAgree() async throws {
        let fixture = try ScoringFixture(customers: 300)
        try fixture.saveCheckpoint(step: 1, seed: 5, withDriftReference: true)
        let cutoff = fixture.dataset.manifest.spec.cutoffDay
        let model = try ScoringModel.load(root: fixture.root, run: "test")

        // The line read straight from the checkpoint's drift.json: halfway between the last of
        // the top 20% of the stored spends and the first below them, so that no training
        // customer sits on it.
        let driftFile = fixture.root.appendingPathComponent("test/step-000001/drift.json")
        let stored = try #require(try JSONDecoder().decode(DriftReference.self, from: Data(contentsOf: driftFile)).trainingSpends)
        #expect(stored.count == fixture.dataset.indices(in: .train).count)
        let descending = stored.sorted(by: >)
        let inside = Int((Double(stored.count) * 0.2).rounded(.up))
        let expectedLine = (Double(descending[inside - 1]) + Double(descending[inside])) / 2
        #expect(stored.allSatisfy { Double($0) != expectedLine } || descending[inside - 1] == descending[inside])

        let out = fixture.directory.path("batch.csv")
        let summary = try BatchScoring.run(scorer: LSTMScorer(model: model), job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(),
                                           asOf: cutoff, rules: ScoringRules(), output: out, batchSize: 256))
        #expect(summary.highValueLine.amount == expectedLine)
        #expect(summary.highValueLine.origin.contains("top 20% of \(stored.count) training customers"), "\(summary.highValueLine.origin)")
        let batch = try readScoreCSV(out)
        #expect(batch.count == summary.customers && batch.count > 250)
        // The line must split the customers, or agreeing on it proves nothing.
        let valuable = batch.filter { ["upsell", "retention_offer"].contains($0["action"]!) }.count
        #expect(valuable > 0 && valuable < batch.count, "\(valuable) of \(batch.count) high value")

        var configuration = ServiceConfiguration(checkpoints: fixture.root, run: "test")
        configuration.limits.maxBodyBytes = 16 << 20
        let service = try await RunningService(configuration)
        let described = try service.json(try await service.send("GET", "/v1/model"))
        #expect(described["high_value_line"] as? Double == expectedLine)
        #expect((described["high_value_origin"] as? String) == summary.highValueLine.origin)

        // The customers in the batches batch scoring formed (256 in file order), so that each
        // forward pass sees the same block of customers.
        let events = try fixture.requestEventsByCustomer()
        var served: [String: [String: Any]] = [:]
        for start in stride(from: 0, to: batch.count, by: 256) {
            let items = try batch[start..<min(batch.count, start + 256)].map { row -> String in
                let id = row["customer_id"]!
                let history = try #require(events[id], "customer \(id) has no events")
                return "{\"customer_id\":\"\(id)\",\"events\":[\(history.joined(separator: ","))]}"
            }
            let reply = try await service.send("POST", "/v1/score", body: "{\"as_of\":\(cutoff),\"customers\":[\(items.joined(separator: ","))]}")
            #expect(reply.status == 200, "\(reply.text.prefix(300))")
            for score in try service.json(reply)["scores"] as! [[String: Any]] { served[score["customer_id"] as! String] = score }
        }
        await service.stop()
        #expect(served.count == batch.count)
        var differing: [String] = []
        for row in batch {
            let id = row["customer_id"]!
            guard let score = served[id] else { continue }
            if score["action"] as? String != row["action"] {
                differing.append("\(id): batch \(row["action"]!) at spend \(row["expected_spend"]!), service \(score["action"] ?? "-") at \(score["expected_spend"] ?? "-")")
            }
        }
        #expect(differing.isEmpty, "\(differing.count) customers differ (line \(expectedLine)): \(differing.prefix(5))")
    }

    @Test("--high-value-from scored takes the line from the scored customers; a checkpoint without stored spends falls back to the mean horizon spend and says so")
    func otherLines() throws {
        let fixture = try ScoringFixture(customers: 120)
        try fixture.saveCheckpoint(step: 1, seed: 8)
        let old = try ScoringModel.load(root: fixture.root, run: "test")
        #expect(old.drift == nil)
        let fallback = HighValueLine.fromCheckpoint(rules: ScoringRules(), model: old)
        #expect(fallback.amount == fixture.dataset.manifest.labels.meanHorizonSpend)
        #expect(fallback.origin.contains("mean horizon spend") && fallback.origin.contains("retrain"), "\(fallback.origin)")

        let out = fixture.directory.path("scored.csv")
        let summary = try BatchScoring.run(scorer: LSTMScorer(model: old), job: BatchScoringJob(events: fixture.eventsPath, options: EventFileOptions(),
                                           asOf: nil, rules: ScoringRules(), output: out, highValue: .scored))
        let spends = try readScoreCSV(out).map { Double($0["expected_spend"]!)! }.sorted(by: >)
        let kth = spends[Int((Double(spends.count) * 0.2).rounded(.up)) - 1]
        #expect(abs(summary.highValueLine.amount - kth) <= 1e-5 * max(1, kth), "\(summary.highValueLine.amount) vs \(kth)")
        #expect(summary.highValueLine.origin.contains("\(spends.count) scored customers"), "\(summary.highValueLine.origin)")

        var rules = ScoringRules()
        rules.highValueAmount = 12.5
        for source in HighValueSource.allCases {
            #expect(HighValueLine.of(source, rules: rules, model: old, scoredCustomers: 3) { 99 } == HighValueLine(amount: 12.5, origin: "high_value_amount in the rules"))
        }
    }
}

@Suite("Unknown runs", .serialized)
struct UnknownRunTests {
    /// A store with runs `test` (a checkpoint) and `training` (a directory, no checkpoint yet),
    /// its root given relative to the fixture's directory, as a user in that directory would.
    /// The caller keeps the fixture alive: its directory goes with it.
    static func store() throws -> (ScoringFixture, URL) {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 2)
        try FileManager.default.createDirectory(at: fixture.root.appendingPathComponent("training"), withIntermediateDirectories: false)
        return (fixture, URL(fileURLWithPath: "checkpoints", relativeTo: fixture.directory.url))
    }

    @Test("batch loading refuses an unknown run with the runs that exist, paths as given")
    func batchRefuses() throws {
        let (fixture, root) = try Self.store()
        defer { withExtendedLifetime(fixture) {} }
        #expect(root.relativePath == "checkpoints")
        for (run, state) in [("tset", "checkpoints/tset does not exist"), ("training", "checkpoints/training has no best or latest checkpoint yet")] {
            do {
                _ = try ScoringModel.load(root: root, run: run)
                Issue.record("run \(run) loaded")
            } catch let error as ScoringError {
                #expect(error.description == "run '\(run)' has no checkpoint to score with (\(state)); runs with checkpoints under checkpoints: test", "\(error)")
            }
        }
        #expect(try ScoringModel.load(root: root, run: "test").info.path == "checkpoints/test/step-000001")
    }

    @Test("serve refuses an unknown run before it binds; with waitForRun it starts and answers 503 until a checkpoint appears")
    func serveRefusesUnlessWaiting() async throws {
        let (fixture, root) = try Self.store()
        defer { withExtendedLifetime(fixture) {} }
        var logger = Logger(label: "unknown-run-tests")
        logger.logLevel = .critical
        var configuration = ServiceConfiguration(checkpoints: root, run: "tset")
        configuration.port = 0
        configuration.pollInterval = .milliseconds(50)
        do {
            try await runService(configuration: configuration, logger: logger) { _ in Issue.record("the service started") }
            Issue.record("runService returned")
        } catch let error as ScoringError {
            #expect(error.description.hasPrefix("--run: run 'tset' has no checkpoint to score with (checkpoints/tset does not exist); runs with checkpoints under checkpoints: test"), "\(error)")
            #expect(error.description.hasSuffix("pass --wait-for-run"), "\(error)")
        }

        // A run whose training has not written a checkpoint yet, waited for.
        let fresh = try ScoringFixture(customers: 40)
        configuration = ServiceConfiguration(checkpoints: fresh.root, run: "test")
        configuration.port = 0
        configuration.pollInterval = .milliseconds(50)
        configuration.waitForRun = true
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let server = Task { try await runService(configuration: configuration, logger: logger) { continuation.yield($0) } }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        let client = { (path: String) async throws -> Int in
            try await withCheckedThrowingContinuation { done in
                Thread.detachNewThread { done.resume(with: Result { try LoopbackClient(port: port).send("GET", path).status }) }
            }
        }
        #expect(try await client("/readyz") == 503)
        // The run's first checkpoint appears: the watcher serves it.
        try fresh.saveCheckpoint(step: 1, seed: 2)
        #expect(try await eventually { try await client("/readyz") == 200 })
        server.cancel()
        _ = await server.result
    }
}

@Suite("Drift gauges", .serialized)
struct DriftGaugeMinimumTests {
    /// The `clm_*_psi` samples of a `/metrics` text, by series.
    static func gauges(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("clm_feature_psi{") || line.hasPrefix("clm_input_psi{") || line.hasPrefix("clm_score_psi{") {
            let parts = line.split(separator: " ")
            values[String(parts[0])] = String(parts[1])
        }
        return values
    }

    @Test("/metrics' stability gauges read NaN until the window holds the customers the drift warning needs, then numbers")
    func gaugesWaitForTheMinimum() async throws {
        let fixture = try ScoringFixture(customers: 60)
        try fixture.saveCheckpoint(step: 1, seed: 3, withDriftReference: true)
        let service = try await RunningService(ServiceConfiguration(checkpoints: fixture.root, run: "test"))
        let minimum = DriftMonitor().minimumCustomers
        #expect(try await service.send("POST", "/v1/score", body: featuresBody([("a", 6), ("b", 3)])).status == 200)
        var text = try await service.send("GET", "/metrics").text
        var gauges = Self.gauges(text)
        #expect(gauges.count == 11, "8 features, 1 input, 2 scores: \(gauges.keys.sorted())")
        #expect(gauges.values.allSatisfy { $0 == "NaN" }, "two customers are noise, not drift: \(gauges)")
        #expect(text.contains("clm_drift_customers 2\n"))
        #expect(text.contains("NaN until the window holds \(minimum) customers."))

        let rest = (0..<(minimum - 2)).map { ("c\($0)", 1 + $0 % 6) }
        #expect(try await service.send("POST", "/v1/score", body: featuresBody(rest)).status == 200)
        text = try await service.send("GET", "/metrics").text
        gauges = Self.gauges(text)
        #expect(text.contains("clm_drift_customers \(minimum)\n"))
        #expect(gauges.count == 11 && gauges.values.allSatisfy { Double($0)?.isFinite == true }, "\(gauges)")
        await service.stop()
    }
}

/// The `clm-score` tool `swift build --build-tests` builds beside the tests.
func clmScoreTool() throws -> String {
    let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let tool = [products, Bundle.main.bundleURL.deletingLastPathComponent()].map { $0.appendingPathComponent("clm-score").path }
        .first { FileManager.default.isExecutableFile(atPath: $0) }
    return try #require(tool, "clm-score is not built next to the tests (\(products.path)); run swift build --build-tests")
}

/// A `clm-score` process with its output captured.
final class ToolProcess: @unchecked Sendable {
    let process = Process()
    let output = Pipe(), errors = Pipe()

    init(_ arguments: [String], in directory: URL) throws {
        process.executableURL = URL(fileURLWithPath: try clmScoreTool())
        process.arguments = arguments
        process.currentDirectoryURL = directory
        process.standardOutput = output
        process.standardError = errors
        try process.run()
    }

    deinit { if process.isRunning { process.terminate(); process.waitUntilExit() } }

    /// The exit status and standard error once the process ends, or nil if it runs past `deadline`.
    func exit(within deadline: Duration = .seconds(60)) async throws -> (status: Int32, errors: String)? {
        let end = ContinuousClock.now + deadline
        while process.isRunning && ContinuousClock.now < end { try await Task.sleep(for: .milliseconds(50)) }
        guard !process.isRunning else { return nil }
        return (process.terminationStatus, String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    /// The port of the first line, "listening on http://HOST:PORT", read with a deadline.
    func listeningPort(within deadline: Duration = .seconds(60)) async -> Int? {
        let handle = output.fileHandleForReading
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var text = ""
                var descriptor = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
                let end = ContinuousClock.now + deadline
                while ContinuousClock.now < end, !text.contains("\n") {
                    guard poll(&descriptor, 1, 200) > 0 else { continue }
                    let data = handle.availableData
                    if data.isEmpty { break }
                    text += String(decoding: data, as: UTF8.self)
                }
                let line = text.split(separator: "\n").first ?? ""
                continuation.resume(returning: line.hasPrefix("listening on") ? line.split(separator: ":").last.flatMap { Int($0) } : nil)
            }
        }
    }
}

@Suite("clm-score's run and event-file flags", .serialized)
struct ScoreToolFlagTests {
    @Test("serve reads --graph-events with batch's column-mapping flags; without them the mapped file is refused at start, and they are refused without the file")
    func serveTakesTheColumnMapping() async throws {
        let fixture = try ScoringFixture(customers: 80)
        try fixture.saveCheckpoint(step: 1, seed: 4)
        try fixture.saveGraphCheckpoint(step: 2, seed: 6)
        // The fixture's events in another layout: tab-separated, other names and order, unix seconds.
        let lines = try String(contentsOfFile: fixture.eventsPath, encoding: .utf8).split(separator: "\n")
        let header = lines[0].split(separator: ",").map(String.init)
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd"
        formatter.timeZone = TimeZone(identifier: "UTC")
        var mapped = "when\tuser\titem\tspend\n", lastDay = ""
        for line in lines.dropFirst() {
            let fields = Dictionary(uniqueKeysWithValues: zip(header, line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)))
            let day = String(fields["timestamp"]!.prefix(10))
            lastDay = max(lastDay, day)
            let seconds = Int(try #require(formatter.date(from: day)).timeIntervalSince1970) + 3600
            mapped += "\(seconds)\t\(fields["customer_id"]!)\t\(fields["product_id"]!)\t\(fields["amount"]!)\n"
        }
        try mapped.write(toFile: fixture.directory.path("export.tsv"), atomically: true, encoding: .utf8)

        let common = ["serve", "--checkpoints", "checkpoints", "--run", "test", "--gnn-run", "test-gnn", "--graph-events", "export.tsv", "--port", "0"]
        let mapping = ["--delimiter", "tab", "--customer-col", "user", "--time-col", "when", "--time-format", "unix",
                       "--amount-col", "spend", "--product-col", "item"]
        let server = try ToolProcess(common + mapping, in: fixture.directory.url)
        let port = try #require(await server.listeningPort(), "clm-score serve did not start")
        let reply = try await withCheckedThrowingContinuation { done in
            Thread.detachNewThread { done.resume(with: Result { try LoopbackClient(port: port).send("GET", "/v1/model") }) }
        }
        let model = try JSONSerialization.jsonObject(with: reply.body) as! [String: Any]
        let stageModel = try #require(model["stage_model"] as? [String: Any], "\(reply.text)")
        #expect(stageModel["run"] as? String == "test-gnn")
        #expect(stageModel["reference_as_of"] as? String == lastDay, "the reference graph runs to the mapped file's last day")
        #expect(model["path"] as? String == "checkpoints/test/step-000001", "the path as given: \(model["path"] ?? "-")")
        server.process.terminate()

        let unmapped = try ToolProcess(common, in: fixture.directory.url)
        let refused = try #require(try await unmapped.exit(), "serve started on a file it cannot read")
        #expect(refused.status == 1 && refused.errors.contains("export.tsv"), "\(refused.errors)")

        // Layout flags with no file to describe are refused, not ignored.
        let stray = try ToolProcess(["serve", "--checkpoints", "checkpoints", "--run", "test", "--port", "0"] + mapping, in: fixture.directory.url)
        let strayed = try #require(try await stray.exit(), "serve started with layout flags and no --graph-events")
        #expect(strayed.status == 1 && strayed.errors.contains("describe --events or --graph-events"), "\(strayed.errors)")
    }

    @Test("serve and batch refuse a misspelt run at start, listing the runs that exist")
    func misspeltRunsAreRefused() async throws {
        let fixture = try ScoringFixture(customers: 40)
        try fixture.saveCheckpoint(step: 1, seed: 4)
        try fixture.saveGraphCheckpoint(step: 2, seed: 6)
        let listing = "run 'tset' has no checkpoint to score with (checkpoints/tset does not exist); runs with checkpoints under checkpoints: test, test-gnn"
        let serve = try ToolProcess(["serve", "--checkpoints", "checkpoints", "--run", "tset", "--port", "0"], in: fixture.directory.url)
        let served = try #require(try await serve.exit(), "serve started on a run that does not exist")
        #expect(served.status == 1 && served.errors.contains(listing) && served.errors.contains("--wait-for-run"), "\(served.errors)")

        let batch = try ToolProcess(["batch", "--checkpoints", "checkpoints", "--run", "tset", "--events", "events.csv", "--out", "scores.csv"],
                                    in: fixture.directory.url)
        let scored = try #require(try await batch.exit(), "batch did not end")
        #expect(scored.status == 1 && scored.errors.contains(listing), "\(scored.errors)")
        #expect(!FileManager.default.fileExists(atPath: fixture.directory.path("scores.csv")))
    }
}
