import Checkpoints
import CustomerData
import Foundation
import RunFiles
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
    public var highValueLine: HighValueLine
    public var readSeconds: Double
    /// Feature computation and forward passes only.
    public var scoreSeconds: Double
    /// The forward passes alone: their time summed over the threads and divided by `threads`,
    /// the wall time they take when the threads run them side by side.
    public var modelSeconds: Double
    /// Threads that scored (on each rank).
    public var threads: Int
    /// Ranks that scored (mpirun); 1 in one process.
    public var ranks = 1
    /// Bytes of the output each rank wrote, in rank order (empty in one process).
    public var rankBytesWritten: [Int] = []
    public var writeSeconds: Double
    /// Building the customer–product graph and the GraphSAGE forward; zero without a graph model.
    public var graphSeconds: Double
    /// Customers whose stage came from the graph model (the others' from the stage rule).
    public var customersWithGraphStage: Int
    public var actionCounts: [String: Int]
    /// With `--explain`: the integrated-gradients passes alone (their time summed over the
    /// threads, divided by `threads`), and the largest completeness error seen.
    public var explainSeconds: Double = 0
    public var explanation: ExplanationSettings?
    public var worstCompleteness: CompletenessError?
    /// Stability index of every feature, input and score of the scored customers against the
    /// checkpoint's training reference; empty when the checkpoint has none.
    public var drift: [DriftIndex] = []
    /// With `--explain`: the mean absolute attribution of each group (`Explainer.groupNames`)
    /// over the scored customers, for the churn logit and for the expected spend.
    public var meanAbsoluteAttribution: (churn: [Double], spend: [Double])?

    public var customersPerSecond: Double { scoreSeconds > 0 ? Double(customers) / scoreSeconds : 0 }
    public var modelCustomersPerSecond: Double { modelSeconds > 0 ? Double(customers) / modelSeconds : 0 }
}

/// How `--explain` explains.
public struct ExplanationSettings: Sendable {
    public var steps: Int
    public var baseline: ExplanationBaseline

    public init(steps: Int = 32, baseline: ExplanationBaseline = .zeros) {
        self.steps = steps
        self.baseline = baseline
    }
}

/// How far a customer's attributions are from adding up to its score change, relative to the
/// change (absolute below 1e-3, where a relative error means nothing).
public struct CompletenessError: Sendable {
    public var customerID: String
    public var target: String
    public var error: Double

    static func of(attributions: [Double], change: Double) -> Double {
        abs(attributions.reduce(0, +) - change) / max(abs(change), 1e-3)
    }
}

/// An output array's base address shared by threads that write disjoint ranges of it.
private struct SharedOutput<Element>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Element>
    init(_ pointer: UnsafeMutablePointer<Element>) { self.pointer = pointer }
}

/// The model's outputs for every customer of an `EventFileFeatures`, by customer index.
struct ScoredCustomers {
    var churn: [Float]
    var spend: [Float]
    /// [customers, stageWidth] stage-head probabilities; empty without a stage head.
    var lstmStages: [Float]
    var stageWidth: Int
    var lengths: [Int32]
    /// With `--explain`, one per customer; empty otherwise.
    var explanations: [Explanation?]
    var drift: DriftCounter?
    /// The forward passes (and explanations) alone, as the wall time the threads took side by side.
    var modelSeconds: Double
    var explainSeconds: Double
    var workers: Int

    /// Customer `index`'s output row and its action; a score that is not a finite number is an error.
    func row(_ index: Int, id: String, scorer: LSTMScorer, graphStage: ArraySlice<Float>?, rules: ScoringRules,
             highValueLine: Double, format: ScoreFileFormat) throws -> (row: String, action: String) {
        let score = scorer.customerScore(
            id, index: index, churn: churn, spend: spend, lengths: lengths, headStages: lstmStages,
            graphStage: graphStage, rules: rules, highValueLine: highValueLine)
        if let problem = score.nonFiniteScore {
            throw ScoringError.invalidInput("customer \(score.customerID): \(problem); nothing was written")
        }
        let reasons = explanations.isEmpty ? nil : explanations[index]
        let row = format == .csv ? BatchScoring.csvRow(score, reasons: reasons)
                                 : BatchScoring.jsonLine(score, stageNames: scorer.model.dataset.stageNames, reasons: reasons) + "\n"
        return (row, score.action)
    }

    /// With explanations: the summed absolute attribution of each group (churn logit and
    /// expected spend), and the customer whose attributions add up worst.
    func attributionSummary(customerID: (Int) -> String) -> (sums: (churn: [Double], spend: [Double])?, worst: CompletenessError?) {
        guard !explanations.isEmpty else { return (nil, nil) }
        var churnSums = [Double](repeating: 0, count: Explainer.groupNames.count), spendSums = churnSums
        var worst: CompletenessError?
        for (index, explanation) in explanations.enumerated() {
            guard let explanation else { continue }
            for k in churnSums.indices {
                churnSums[k] += abs(explanation.churnGroups[k])
                spendSums[k] += abs(explanation.spendGroups[k])
            }
            for (target, groups, change) in [("churn logit", explanation.churnGroups, explanation.churnLogitChange),
                                             ("expected spend", explanation.spendGroups, explanation.spendChange)] {
                let error = CompletenessError.of(attributions: groups, change: change)
                if error > worst?.error ?? -1 { worst = CompletenessError(customerID: customerID(index), target: target, error: error) }
            }
        }
        return ((churnSums, spendSums), worst)
    }
}

/// What a batch scoring run reads, how it scores and where it writes.
public struct BatchScoringJob: Sendable {
    public var events: String
    public var options: EventFileOptions
    /// The as-of day; nil for the file's last event day.
    public var asOf: Int?
    public var rules: ScoringRules
    /// `.csv` or `.jsonl` picks the format.
    public var output: String
    public var batchSize: Int
    public var threads: Int
    /// Stages from this GraphSAGE model instead of the LSTM's stage head or the stage rule; one
    /// process only, since the graph model needs the whole customer–product graph.
    public var graph: GraphStageScorer?
    public var explain: ExplanationSettings?
    public var highValue: HighValueSource

    public init(events: String, options: EventFileOptions, asOf: Int?, rules: ScoringRules, output: String, batchSize: Int = 256,
                threads: Int = 1, graph: GraphStageScorer? = nil, explain: ExplanationSettings? = nil,
                highValue: HighValueSource = .training) {
        self.events = events
        self.options = options
        self.asOf = asOf
        self.rules = rules
        self.output = output
        self.batchSize = batchSize
        self.threads = threads
        self.graph = graph
        self.explain = explain
        self.highValue = highValue
    }
}

/// Scores every customer of an event file and writes one row per customer.
public enum BatchScoring {
    /// Reads the job's `events`, scores in batches of `batchSize` and writes `output` atomically;
    /// with a `graph` scorer, stages come from its GraphSAGE model instead of the stage rule.
    ///
    /// Memory is the importer's per-customer aggregates, one [batch, T, F] feature block and
    /// three numbers per customer (churn, spend, length): with `highValue: .scored` the line (top
    /// fraction by expected spend) needs every customer's spend before the first action is written.
    /// The graph model adds the customer–product graph and one [nodes, hidden] activation per layer.
    ///
    /// `threads` score batches in parallel. Batches are the same fixed ranges of customers
    /// whatever the thread count, and each customer's forward pass depends only on its own
    /// batch, so the output is byte for byte the same as with one thread.
    public static func run(scorer: LSTMScorer, job: BatchScoringJob) throws -> BatchSummary {
        let (events, options, asOf, rules, output) = (job.events, job.options, job.asOf, job.rules, job.output)
        let (batchSize, threads, graph, explain, highValue) = (job.batchSize, job.threads, job.graph, job.explain, job.highValue)
        try checkSettings(batchSize: batchSize, threads: threads, explain: explain)
        let format = try ScoreFileFormat(path: output)
        let model = scorer.model
        let (input, readSeconds) = try timedRead {
            try EventFileFeatures(path: events, options: options, asOf: asOf, trainedSpec: model.dataset.spec,
                                  normalisation: model.dataset.normalisation, withGraph: graph != nil)
        }

        let clock = ContinuousClock()
        var started = clock.now
        let scored = scoreAll(scorer: scorer, input: input, batchSize: batchSize, threads: threads, explain: explain)
        let scoreSeconds = seconds(clock.now - started)

        started = clock.now
        let stages = try graph.map { try graphStages($0, input: input, events: events, options: options) }
        let graphSeconds = graph == nil ? 0 : seconds(clock.now - started)
        let classes = model.dataset.stageNames.count
        let count = input.customerCount
        let attribution = scored.attributionSummary(customerID: input.customerID)

        started = clock.now
        let line = HighValueLine.of(highValue, rules: rules, model: model, scoredCustomers: count) {
            rules.highValueLine(spends: scored.spend)
        }
        var actionCounts: [String: Int] = [:]
        try writeAtomically(output) { writer in
            if let header = header(format: format, stageNames: model.dataset.stageNames, explain: explain != nil) {
                try writer.write(header)
            }
            for index in 0..<count {
                let graphStage = stages.flatMap { stages -> ArraySlice<Float>? in
                    let row = Int(stages.rows[index])
                    return row < 0 ? nil : stages.probabilities[row * classes ..< (row + 1) * classes]
                }
                let (row, action) = try scored.row(index, id: input.customerID(index), scorer: scorer, graphStage: graphStage,
                                                   rules: rules, highValueLine: line.amount, format: format)
                actionCounts[action, default: 0] += 1
                try writer.write(row)
            }
        }
        var summary = BatchSummary(
            checkpoint: model.info, asOfDay: input.asOfDay, customers: count,
            customersWithoutHistory: input.customersWithoutHistory, rowsRead: input.stats.rows,
            rowsRejected: input.stats.rejected, highValueLine: line, readSeconds: readSeconds,
            scoreSeconds: scoreSeconds, modelSeconds: scored.modelSeconds,
            threads: scored.workers, writeSeconds: seconds(clock.now - started),
            graphSeconds: graphSeconds, customersWithGraphStage: stages?.rows.filter { $0 >= 0 }.count ?? 0,
            actionCounts: actionCounts)
        summary.explanation = explain
        summary.explainSeconds = scored.explainSeconds
        summary.worstCompleteness = attribution.worst
        summary.drift = scored.drift?.stabilityIndices() ?? []
        summary.meanAbsoluteAttribution = attribution.sums.map { sums in
            (sums.churn.map { $0 / Double(count) }, sums.spend.map { $0 / Double(count) })
        }
        return summary
    }

    /// Reads the scored customers' features, timed; the reader's errors become the scorer's.
    static func timedRead(_ read: () throws -> EventFileFeatures) throws -> (input: EventFileFeatures, seconds: Double) {
        let clock = ContinuousClock()
        let started = clock.now
        do {
            let input = try read()
            return (input, seconds(clock.now - started))
        } catch let error as DataError {
            throw ScoringError.invalidInput(error.description)
        }
    }

    static func checkSettings(batchSize: Int, threads: Int, explain: ExplanationSettings?) throws {
        if let explain, explain.steps < 1 || explain.steps > 1024 {
            throw ScoringError.invalidInput("--explain-steps must be from 1 to 1024, got \(explain.steps)")
        }
        guard batchSize >= 1 else { throw ScoringError.invalidInput("--batch-size must be at least 1, got \(batchSize)") }
        guard threads >= 1 else { throw ScoringError.invalidInput("--threads must be at least 1, got \(threads)") }
    }

    /// Runs `body` on an atomic writer of `output` and commits; on any failure nothing is left.
    static func writeAtomically(_ output: String, _ body: (AtomicFileWriter) throws -> Void) throws {
        let writer: AtomicFileWriter
        do {
            writer = try AtomicFileWriter(url: URL(fileURLWithPath: output))
        } catch {
            throw ScoringError.io(path: output, reason: "cannot create the output: \(error)")
        }
        do {
            try body(writer)
            try writer.commit()
        } catch let error as FileSystemError {
            writer.abandon()
            throw ScoringError.io(path: output, reason: "\(error); nothing was written")
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// The CSV header line; nil for JSON Lines.
    static func header(format: ScoreFileFormat, stageNames: [String], explain: Bool) -> String? {
        format == .csv ? ScoresFile.csvHeader(stageNames: stageNames, explain: explain) : nil
    }

    /// Runs the model (and with `explain`, the explainer) over every customer of `input` on
    /// `threads` threads.
    ///
    /// Batches are the same fixed ranges of customers whatever the thread count, and each
    /// customer's forward pass depends only on its own batch, so the results are the same
    /// numbers with any number of threads.
    static func scoreAll(
        scorer: LSTMScorer, input: EventFileFeatures, batchSize: Int, threads: Int, explain: ExplanationSettings?
    ) -> ScoredCustomers {
        let model = scorer.model
        let clock = ContinuousClock()
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
        let explainDuration = Mutex(Duration.zero)
        let drift = Mutex(model.drift.map { DriftCounter(reference: $0) })
        // Explanations by customer index; each worker fills its batches' entries.
        let explanations = Mutex([Explanation?](repeating: nil, count: explain == nil ? 0 : count))
        let historyLength = model.historyLength, featureCount = model.featureCount
        let tenureMeans: [Float] = explain?.baseline == .tenureMean
            ? Explainer.tenureMeans(count: count, historyLength: historyLength, featureCount: featureCount) { range, features, lengths in
                input.fill(range, features: features, lengths: lengths)
            }
            : []
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
                            let explainer = explain.map { Explainer(model: model, steps: $0.steps) }
                            var baselines = [Float](repeating: 0, count: tenureMeans.isEmpty ? 0 : min(batchSize, max(count, 1)) * rowSize)
                            var forward = Duration.zero, explaining = Duration.zero
                            var counter = model.drift.map { DriftCounter(reference: $0) }
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
                                if counter != nil {
                                    for b in start..<start + n {
                                        counter!.add(sequence: features + (b - start) * rowSize, length: Int(lengths.pointer[b]),
                                                     churn: churn.pointer[b], spend: spend.pointer[b])
                                    }
                                }
                                guard let explainer else { continue }
                                let explainStarted = clock.now
                                let explained = baselines.withUnsafeMutableBufferPointer { baseline -> [Explanation] in
                                    if tenureMeans.isEmpty {
                                        return explainer.explain(features: features, lengths: lengths.pointer + start, count: n)
                                    }
                                    for b in 0..<n {
                                        let length = Int(lengths.pointer[start + b])
                                        for i in 0..<rowSize { baseline[b * rowSize + i] = tenureMeans[length * rowSize + i] }
                                    }
                                    return explainer.explain(features: features, lengths: lengths.pointer + start, count: n,
                                                             baselines: UnsafePointer(baseline.baseAddress!))
                                }
                                explanations.withLock { list in
                                    for (k, explanation) in explained.enumerated() { list[start + k] = explanation }
                                }
                                explaining += clock.now - explainStarted
                            }
                            modelDuration.withLock { $0 += forward }
                            explainDuration.withLock { $0 += explaining }
                            if let counter { drift.withLock { $0!.merge(counter) } }
                        }
                    }
                }
            }
        }
        return ScoredCustomers(
            churn: churn, spend: spend, lstmStages: lstmStages, stageWidth: headStages, lengths: lengths,
            explanations: explanations.withLock { $0 }, drift: drift.withLock { $0 },
            modelSeconds: seconds(modelDuration.withLock { $0 }) / Double(workers),
            explainSeconds: seconds(explainDuration.withLock { $0 }) / Double(workers), workers: workers)
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

    static func csvRow(_ score: CustomerScore, reasons: Explanation? = nil) -> String {
        ScoresFile.csvRow(
            ScoresFile.Row(customerID: score.customerID, churnProbability: score.churnProbability, expectedSpend: score.expectedSpend,
                           historyPeriods: score.historyPeriods, stage: score.stage, stageProbabilities: score.stageProbabilities,
                           action: score.action, stageSource: score.stageSource,
                           churnReasons: reasons?.churn.map(\.code) ?? [], spendReasons: reasons?.spend.map(\.code) ?? []),
            explain: reasons != nil)
    }

    /// `"reasons":{"churn":[…],"spend":[…]}`, each reason with its code, group and contribution.
    public static func reasonsJSON(_ reasons: Explanation) -> String {
        func list(_ codes: [ReasonCode]) -> String {
            "[" + codes.map {
                "{\"code\":\(jsonString($0.code)),\"group\":\(jsonString($0.group)),\"contribution\":\(formatNumber($0.contribution))}"
            }.joined(separator: ",") + "]"
        }
        return "\"reasons\":{\"churn\":\(list(reasons.churn)),\"spend\":\(list(reasons.spend))}"
    }

    /// One score as a JSON object, the same fields the service returns.
    public static func jsonLine(_ score: CustomerScore, stageNames: [String], reasons: Explanation? = nil) -> String {
        var text = "{\"customer_id\":\(jsonString(score.customerID)),\"churn_probability\":\(formatNumber(score.churnProbability))"
        text += ",\"expected_spend\":\(formatNumber(score.expectedSpend)),\"history_periods\":\(score.historyPeriods)"
        text += ",\"stage\":\(jsonString(score.stage)),\"stage_probabilities\":{"
        for (k, name) in stageNames.enumerated() where k < score.stageProbabilities.count {
            text += (k > 0 ? "," : "") + "\(jsonString(name)):\(formatNumber(score.stageProbabilities[k]))"
        }
        text += "},\"action\":\(jsonString(score.action)),\"stage_source\":\(jsonString(score.stageSource))"
        if let reasons { text += "," + reasonsJSON(reasons) }
        return text + "}"
    }
}

/// Scores as the scores file writes them (`ScoresFile.formatNumber`), also in JSON.
@inline(__always)
func formatNumber(_ value: Double) -> String { ScoresFile.formatNumber(value) }

/// A duration in seconds, for timings and metrics.
public func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
}
