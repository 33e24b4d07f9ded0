import Checkpoints
import CustomerData
import Foundation

/// Every customer of an event file scored once as of one day, looked up by id: what the
/// service's `GET /v1/customers/{id}` answers from.
///
/// Built by batch scoring's own reading and scoring (`EventFileFeatures`, `BatchScoring.scoreAll`
/// on every core, the same batches), so a customer's answer is batch scoring's row for the same
/// file, model, rules and day. What stays is the model's outputs (churn, spend, stage-head
/// probabilities, periods) and the id index; the per-customer aggregates and the features are
/// dropped once scored, which is what keeps a million customers in memory cheap. A lookup then
/// costs only applying the rules to one customer's stored outputs.
public final class ScoredEventFile: @unchecked Sendable {
    public let path: String
    public let asOfDay: Int
    /// The checkpoint whose outputs these are.
    public let model: CheckpointInfo
    public let stageNames: [String]
    public let rowsRead: Int
    public let rowsRejected: Int
    /// Customers seen only after the as-of day: no row, as in batch scoring.
    public let customersWithoutHistory: Int
    public let buildSeconds: Double
    private let scorer: LSTMScorer
    private let rules: ScoringRules
    private let highValueLine: Double
    private let scored: ScoredCustomers
    private let index: [String: Int32]

    /// Reads and scores `path` with `scorer`'s model on `threads` threads; `asOf` nil means the
    /// file's last event day; `threads` nil means every core
    /// the process may run on. Errors name the file.
    public init(path: String, options: EventFileOptions, asOf: Int?, scorer: LSTMScorer, rules: ScoringRules,
                batchSize: Int = 256, threads: Int? = nil) throws {
        let threads = threads ?? usableProcessorCount()
        try BatchScoring.checkSettings(batchSize: batchSize, threads: threads, explain: nil)
        let clock = ContinuousClock()
        let started = clock.now
        let model = scorer.model
        // Product ids only feed a graph model, which this table does not use.
        let (input, _) = try BatchScoring.timedRead {
            try EventFileFeatures(path: path, options: options, asOf: asOf, trainedSpec: model.dataset.spec,
                                  normalisation: model.dataset.normalisation, withGraph: false)
        }
        scored = BatchScoring.scoreAll(scorer: scorer, input: input, batchSize: batchSize, threads: threads, explain: nil)
        // Batch scoring refuses the whole file for one such customer; so does the table.
        for k in 0..<input.customerCount where !scored.churn[k].isFinite || !scored.spend[k].isFinite {
            throw ScoringError.invalidInput("\(path): customer \(input.customerID(k)): the churn probability or expected spend is not a finite number; its features are outside what the model can score")
        }
        var index: [String: Int32] = [:]
        index.reserveCapacity(input.customerCount)
        for k in 0..<input.customerCount { index[input.customerID(k)] = Int32(k) }
        self.index = index
        self.path = path
        self.scorer = scorer
        self.rules = rules
        highValueLine = HighValueLine.fromCheckpoint(rules: rules, model: model).amount
        asOfDay = input.asOfDay
        self.model = model.info
        stageNames = model.dataset.stageNames
        rowsRead = input.stats.rows
        rowsRejected = input.stats.rejected
        customersWithoutHistory = input.customersWithoutHistory
        buildSeconds = seconds(clock.now - started)
    }

    public var customerCount: Int { index.count }

    /// The customer's score as batch scoring gives it, or nil for an id the file does not have
    /// (or whose first purchase is after the as-of day).
    public func score(of id: String) -> CustomerScore? {
        guard let k = index[id] else { return nil }
        return scorer.customerScore(id, index: Int(k), churn: scored.churn, spend: scored.spend, lengths: scored.lengths,
                                    headStages: scored.lstmStages, graphStage: nil, rules: rules, highValueLine: highValueLine)
    }
}
