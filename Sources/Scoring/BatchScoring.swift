import Checkpoints
import CustomerData
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The layout of a batch scoring output file, chosen by its extension.
public enum ScoreFileFormat: String, Sendable {
    case csv, jsonl

    public init(path: String) throws {
        if path.hasSuffix(".csv") {
            self = .csv
        } else if path.hasSuffix(".jsonl") || path.hasSuffix(".ndjson") {
            self = .jsonl
        } else {
            throw ScoringError.invalidInput("--out \(path): the name must end in .csv or .jsonl (it picks the format)")
        }
    }
}

/// What a batch run did, for the summary line and tests.
public struct BatchSummary: Sendable {
    public var checkpoint: CheckpointInfo
    public var asOfDay: Int
    public var customers: Int
    public var customersWithoutHistory: Int
    public var rowsRead: Int
    public var rowsRejected: Int
    public var highValueLine: Double
    public var readSeconds: Double
    /// Feature computation and forward passes only.
    public var scoreSeconds: Double
    /// The forward passes alone: their time summed over the threads and divided by `threads`,
    /// the wall time they take when the threads run them side by side.
    public var modelSeconds: Double
    /// Threads that scored.
    public var threads: Int
    public var writeSeconds: Double
    /// Building the customer–product graph and the GraphSAGE forward; zero without a graph model.
    public var graphSeconds: Double
    /// Customers whose stage came from the graph model (the others' from the stage rule).
    public var customersWithGraphStage: Int
    public var actionCounts: [String: Int]

    public var customersPerSecond: Double { scoreSeconds > 0 ? Double(customers) / scoreSeconds : 0 }
    public var modelCustomersPerSecond: Double { modelSeconds > 0 ? Double(customers) / modelSeconds : 0 }
}

/// An output array's base address shared by threads that write disjoint ranges of it.
private struct SharedOutput<Element>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Element>
    init(_ pointer: UnsafeMutablePointer<Element>) { self.pointer = pointer }
}

/// Scores every customer of an event file and writes one row per customer.
public enum BatchScoring {
    /// Reads `events`, scores in batches of `batchSize` and writes `output` atomically; with a
    /// `graph` scorer, stages come from its GraphSAGE model instead of the stage rule.
    ///
    /// Memory is the importer's per-customer aggregates, one [batch, T, F] feature block and
    /// three numbers per customer (churn, spend, length); the high-value line (top fraction by
    /// expected spend) needs every customer's spend before the first action can be written.
    /// The graph model adds the customer–product graph and one [nodes, hidden] activation per layer.
    ///
    /// `threads` score batches in parallel. Batches are the same fixed ranges of customers
    /// whatever the thread count, and each customer's forward pass depends only on its own
    /// batch, so the output is byte for byte the same as with one thread.
    public static func run(
        scorer: LSTMScorer, events: String, options: EventFileOptions, asOf: Int?, rules: ScoringRules,
        output: String, batchSize: Int = 256, threads: Int = 1, graph: GraphStageScorer? = nil
    ) throws -> BatchSummary {
        guard batchSize >= 1 else { throw ScoringError.invalidInput("--batch-size must be at least 1, got \(batchSize)") }
        guard threads >= 1 else { throw ScoringError.invalidInput("--threads must be at least 1, got \(threads)") }
        let format = try ScoreFileFormat(path: output)
        let model = scorer.model
        let clock = ContinuousClock()
        var started = clock.now
        let input: EventFileFeatures
        do {
            input = try EventFileFeatures(
                path: events, options: options, asOf: asOf, trainedSpec: model.dataset.spec,
                normalisation: model.dataset.normalisation)
        } catch let error as DataError {
            throw ScoringError.invalidInput(error.description)
        }
        let readSeconds = seconds(clock.now - started)

        started = clock.now
        let count = input.customerCount
        var churn = [Float](repeating: 0, count: count)
        var spend = [Float](repeating: 0, count: count)
        let headStages = scorer.stageCount
        var lstmStages = [Float](repeating: 0, count: count * headStages)
        var lengths = [Int32](repeating: 0, count: count)
        let rowSize = model.historyLength * model.featureCount
        let batches = (count + batchSize - 1) / batchSize
        let workers = max(1, min(threads, batches))
        let modelDuration = Mutex(Duration.zero)
        lengths.withUnsafeMutableBufferPointer { lengthsOut in
            churn.withUnsafeMutableBufferPointer { churnOut in
                spend.withUnsafeMutableBufferPointer { spendOut in
                    lstmStages.withUnsafeMutableBufferPointer { stagesOut in
                        // Pointers, not the arrays: workers write disjoint ranges of them.
                        let lengths = SharedOutput(lengthsOut.baseAddress!), churn = SharedOutput(churnOut.baseAddress!)
                        let spend = SharedOutput(spendOut.baseAddress!)
                        let stages = headStages > 0 ? SharedOutput(stagesOut.baseAddress!) : nil
                        DispatchQueue.concurrentPerform(iterations: workers) { worker in
                            let features = UnsafeMutablePointer<Float>.allocate(capacity: min(batchSize, max(count, 1)) * rowSize)
                            defer { features.deallocate() }
                            var forward = Duration.zero
                            // Interleaved batches: a worker's share stays balanced when the
                            // customers' lengths vary along the file.
                            for batch in stride(from: worker, to: batches, by: workers) {
                                let start = batch * batchSize
                                let n = min(batchSize, count - start)
                                input.fill(start..<start + n, features: features, lengths: lengths.pointer + start)
                                let modelStarted = clock.now
                                scorer.score(features: features, lengths: lengths.pointer + start, count: n,
                                             churn: churn.pointer + start, spend: spend.pointer + start,
                                             stages: stages.map { $0.pointer + start * headStages })
                                forward += clock.now - modelStarted
                            }
                            modelDuration.withLock { $0 += forward }
                        }
                    }
                }
            }
        }
        let scoreSeconds = seconds(clock.now - started)

        started = clock.now
        let stages = try graph.map { try graphStages($0, input: input, events: events, options: options) }
        let graphSeconds = graph == nil ? 0 : seconds(clock.now - started)
        let classes = model.dataset.stageNames.count

        started = clock.now
        let line = rules.highValueLine(spends: spend)
        var actionCounts: [String: Int] = [:]
        let writer: AtomicFileWriter
        do {
            writer = try AtomicFileWriter(url: URL(fileURLWithPath: output))
        } catch {
            throw ScoringError.io(path: output, reason: "cannot create the output: \(error)")
        }
        do {
            if format == .csv {
                let stageColumns = model.dataset.stageNames.map { "p_\($0)" }.joined(separator: ",")
                try writer.write("customer_id,churn_probability,expected_spend,history_periods,stage,\(stageColumns),action,stage_source\n")
            }
            for index in 0..<count {
                let graphStage = stages.flatMap { stages -> ArraySlice<Float>? in
                    let row = Int(stages.rows[index])
                    return row < 0 ? nil : stages.probabilities[row * classes ..< (row + 1) * classes]
                }
                let score = scorer.customerScore(
                    input.customerID(index), index: index, churn: churn, spend: spend, lengths: lengths, headStages: lstmStages,
                    graphStage: graphStage, rules: rules, highValueLine: line)
                if let problem = score.nonFiniteScore {
                    throw ScoringError.invalidInput("customer \(score.customerID): \(problem); nothing was written")
                }
                actionCounts[score.action, default: 0] += 1
                try writer.write(format == .csv ? csvRow(score) : jsonLine(score, stageNames: model.dataset.stageNames) + "\n")
            }
            try writer.commit()
        } catch let error as FileSystemError {
            writer.abandon()
            throw ScoringError.io(path: output, reason: "\(error); nothing was written")
        } catch {
            writer.abandon()
            throw error
        }
        return BatchSummary(
            checkpoint: model.info, asOfDay: input.asOfDay, customers: count,
            customersWithoutHistory: input.customersWithoutHistory, rowsRead: input.stats.rows,
            rowsRejected: input.stats.rejected, highValueLine: line, readSeconds: readSeconds,
            scoreSeconds: scoreSeconds, modelSeconds: seconds(modelDuration.withLock { $0 }) / Double(workers),
            threads: workers, writeSeconds: seconds(clock.now - started),
            graphSeconds: graphSeconds, customersWithGraphStage: stages?.rows.filter { $0 >= 0 }.count ?? 0,
            actionCounts: actionCounts)
    }

    /// The graph model's stage probabilities for the customers of `input`: `rows[i]` is the
    /// probability row of `input`'s customer i, or -1 when the graph has no such customer.
    ///
    /// When the graph model was trained on the LSTM's window (period length and count), its
    /// graph comes from the same aggregates; otherwise the file is read again with the graph
    /// model's window, as of the same day, and customers are matched by id.
    static func graphStages(
        _ graph: GraphStageScorer, input: EventFileFeatures, events: String, options: EventFileOptions
    ) throws -> (probabilities: [Float], rows: [Int32]) {
        let trained = graph.model.dataset.spec
        let sameWindow = trained.periodDays == input.spec.periodDays && trained.historyPeriods == input.spec.historyPeriods
        let source: EventFileFeatures
        do {
            source = sameWindow ? input : try EventFileFeatures(
                path: events, options: options, asOf: input.asOfDay, trainedSpec: trained,
                normalisation: graph.model.dataset.normalisation)
            let probabilities = try graph.stageProbabilities(source.customerProductGraph(statistics: graph.model.graphStatistics))
            if sameWindow { return (probabilities, (0..<Int32(input.customerCount)).map { $0 }) }
            var graphRow: [String: Int32] = [:]
            graphRow.reserveCapacity(source.customerCount)
            for index in 0..<source.customerCount { graphRow[source.customerID(index)] = Int32(index) }
            return (probabilities, (0..<input.customerCount).map { graphRow[input.customerID($0)] ?? -1 })
        } catch let error as DataError {
            throw ScoringError.invalidInput("the gnn checkpoint cannot score \(events): \(error.description)")
        }
    }

    static func csvRow(_ score: CustomerScore) -> String {
        var row = csvField(score.customerID)
        row += ",\(formatNumber(score.churnProbability)),\(formatNumber(score.expectedSpend)),\(score.historyPeriods),\(score.stage)"
        for p in score.stageProbabilities { row += ",\(formatNumber(p))" }
        row += ",\(score.action),\(score.stageSource)\n"
        return row
    }

    /// One score as a JSON object, the same fields the service returns.
    public static func jsonLine(_ score: CustomerScore, stageNames: [String]) -> String {
        var text = "{\"customer_id\":\(jsonString(score.customerID)),\"churn_probability\":\(formatNumber(score.churnProbability))"
        text += ",\"expected_spend\":\(formatNumber(score.expectedSpend)),\"history_periods\":\(score.historyPeriods)"
        text += ",\"stage\":\(jsonString(score.stage)),\"stage_probabilities\":{"
        for (k, name) in stageNames.enumerated() where k < score.stageProbabilities.count {
            text += (k > 0 ? "," : "") + "\(jsonString(name)):\(formatNumber(score.stageProbabilities[k]))"
        }
        text += "},\"action\":\(jsonString(score.action)),\"stage_source\":\(jsonString(score.stageSource))}"
        return text
    }
}

/// Six decimals, trailing zeros trimmed: scores are float32, so more digits would be noise.
///
/// Integer arithmetic rather than `String(format:)`, which dominated writing millions of rows.
func formatNumber(_ value: Double) -> String {
    guard value.isFinite else { return "0" }
    guard abs(value) < 1e12 else { return String(value) }
    let scaled = Int64((abs(value) * 1e6).rounded())
    var fraction = scaled % 1_000_000
    var text = (value < 0 && scaled != 0 ? "-" : "") + String(scaled / 1_000_000) + "."
    guard fraction != 0 else { return text + "0" }
    var digits = 6
    while fraction % 10 == 0 {
        fraction /= 10
        digits -= 1
    }
    let body = String(fraction)
    text += String(repeating: "0", count: digits - body.count) + body
    return text
}

/// A duration in seconds, for timings and metrics.
public func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
}
