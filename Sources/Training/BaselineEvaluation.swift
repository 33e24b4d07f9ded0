import Baselines
import Checkpoints
import Collectives
import CustomerData
import DistributedMetrics
import Foundation
import GradientBoosting
import ModelMetrics

/// What the baselines scored on the model's own validation and test customers.
public struct BaselineReport: Sendable {
    /// `val_<baseline>_<metric>` and `test_<baseline>_<metric>`, baselines `bgnbd` (BG/NBD with
    /// Gamma-Gamma spend), `logistic` (the logistic floor, churn only) and `xgboost` (gradient
    /// boosting's churn classifier and spend regressor), plus the bootstrap
    /// intervals `test_auc_ci_low/high` and `test_auc_minus_<baseline>_ci_low/high`.
    public var validation: [String: Double] = [:]
    public var test: [String: Double] = [:]
    /// Fitted parameters, for the log: bgnbd_r, bgnbd_alpha, bgnbd_a, bgnbd_b, gg_p, gg_q, gg_v.
    public var parameters: [String: Double] = [:]
    /// Baselines that could not be fitted or gave unusable numbers on this data, and why.
    public var failures: [String] = []

    /// The model falls below its logistic floor on validation by more than this AUC: the run
    /// is then reported as failed to learn, however its loss looks.
    public static let floorTolerance = 0.02

    /// Loud lines for every place the model loses: its validation AUC below the logistic floor
    /// (beyond the tolerance), and every test metric where a baseline beats it.
    public func warnings(modelValidation: [String: Double], modelTest: [String: Double]) -> [String] {
        var warnings = failures
        if let model = modelValidation["val_auc"], let floor = validation["val_logistic_auc"],
           model < floor - Self.floorTolerance {
            warnings.append(String(
                format: "the LSTM's validation AUC %.4f is %.4f below the logistic floor's %.4f on the same customers: "
                    + "the sequence model did not learn what a regression on summary features does; do not ship it",
                model, floor - model, floor))
        }
        let higherIsBetter = ["auc", "spend_spearman", "spend_gini"]
        let lowerIsBetter = ["log_loss", "clv_rmse", "clv_rmse_without_top_0_1pct"]
        for baseline in Self.baselines {
            for metric in higherIsBetter + lowerIsBetter {
                guard let model = modelTest["test_" + metric], let other = test["test_\(baseline)_\(metric)"] else { continue }
                let loses = higherIsBetter.contains(metric) ? model < other : model > other
                if loses {
                    warnings.append(String(format: "test %@: the LSTM's %.4f is worse than %@'s %.4f",
                                           metric, model, Self.displayName(baseline), other))
                }
            }
        }
        return warnings
    }

    /// Every baseline's metric prefix, in the order reports list them.
    public static let baselines = ["bgnbd", "logistic", "xgboost"]

    static func displayName(_ baseline: String) -> String {
        switch baseline {
        case "bgnbd": return "BG/NBD + Gamma-Gamma"
        case "xgboost": return "XGBoost"
        default: return "the logistic floor"
        }
    }
}

/// Fits the classical baselines on the training split and scores the model's validation and
/// test customers with them, so that every LSTM run ends with its result next to theirs.
///
/// Everything comes from the dataset's stored per-period features (de-normalised), so the
/// baselines see exactly the history the LSTM saw, in the data set's period units:
/// - BG/NBD and Gamma-Gamma take lifetimes' calibration summary at period resolution:
///   frequency = active periods − 1, recency = last active period − first, T = periods from
///   the first purchase to the cut-off, monetary value = mean spend of the active periods after
///   the first. Purchases before the history window count one period each (their periods are
///   not stored; the transaction count is).
/// - The logistic floor reads a dozen summary numbers per customer (the last step's features,
///   sums over the sequence and its length) and predicts churn.
///
/// Every rank summarises its own customers from its shards, the fits add their likelihoods over
/// the ranks (`CustomerSums`) and the metrics come from the cross-rank states, so no rank reads
/// another's customers.
enum BaselineEvaluation {
    /// The customers of one split on this rank: their shard, and how many of its first rows are
    /// distinct customers (a balanced training shard repeats a few at its end).
    struct Split {
        let shard: LocalShard
        let distinct: Int
        /// Where each earlier cut-off's distinct examples sit in `shard`: XGBoost learns from
        /// them too, as the LSTM does; the likelihood baselines count each customer once.
        var earlierCutoffs: [Range<Int>] = []
    }

    /// Fits on the training split, scores `validation` and `test`; with `summaryFile`, also
    /// writes every customer's calibration summary there (CSV: dataset_row, split, frequency,
    /// recency, T, monetary_value; each rank its own customers), so lifetimes can be fitted on
    /// exactly the same numbers (`scripts/lifetimes_reference.py --summary`).
    static func run(train: Split, validationShard: LocalShard, validation: LSTMEvaluationRows,
                    testShard: LocalShard, test: LSTMEvaluationRows, normalisation: FeatureNormalisation,
                    horizonPeriods: Double, summaryFile: URL? = nil, world: any Communicator) throws -> BaselineReport {
        let sums = CustomerSums(
            sum: { values in var total = values; try world.allreduce(&total, op: .sum); return total },
            maximum: { values in var total = values; try world.allreduce(&total, op: .max); return total })
        let trainHistory = HistorySummaries(shard: train.shard, normalisation: normalisation)
        let summaries = (0..<train.distinct).map(trainHistory.summary)
        let validationHistory = HistorySummaries(shard: validationShard, normalisation: normalisation)
        let testHistory = HistorySummaries(shard: testShard, normalisation: normalisation)
        let splitSummaries = [(0..<validationShard.count).map(validationHistory.summary),
                              (0..<testShard.count).map(testHistory.summary)]
        if let summaryFile {
            var text = Data()
            for (split, shard, customers) in [(0, train.shard, summaries), (1, validationShard, splitSummaries[0]),
                                              (2, testShard, splitSummaries[1])] {
                for (index, summary) in customers.enumerated() {
                    text.append(contentsOf: "\(shard.datasetRows[index]),\(split),\(Int(summary.frequency)),\(Int(summary.recency)),\(Int(summary.age)),\(summary.monetaryValue)\n".utf8)
                }
            }
            try writeSharedRunFile(header: "dataset_row,split,frequency,recency,T,monetary_value\n", rows: [UInt8](text),
                                   to: summaryFile, world: world)
        }

        var report = BaselineReport()
        // A baseline that cannot be fitted on this data is reported as such; it must not cost
        // the run its own test metrics. Every rank reaches the same verdict (the fits agree).
        var bgnbd: BGNBDParameters? = nil
        do {
            let fitted = try BGNBDParameters.fit(summaries, across: sums)
            bgnbd = fitted
            report.parameters.merge(["bgnbd_r": fitted.r, "bgnbd_alpha": fitted.alpha, "bgnbd_a": fitted.a, "bgnbd_b": fitted.b]) { $1 }
        } catch let error as BaselineError {
            report.failures.append("BG/NBD could not be fitted on the training customers: \(error)")
        }
        var gammaGamma: GammaGammaParameters? = nil
        do {
            let fitted = try GammaGammaParameters.fit(summaries.filter { $0.frequency > 0 && $0.monetaryValue > 0 }, across: sums)
            report.parameters.merge(["gg_p": fitted.p, "gg_q": fitted.q, "gg_v": fitted.v]) { $1 }
            // q ≤ 1 leaves the Gamma-Gamma's mean spend undefined (infinite).
            if fitted.q > 1 { gammaGamma = fitted } else {
                report.failures.append(String(format: "Gamma-Gamma fitted q = %.4f ≤ 1, so its expected spend is infinite; no spend baseline", fitted.q))
            }
        } catch let error as BaselineError {
            report.failures.append("Gamma-Gamma could not be fitted on the repeat customers: \(error)")
        }
        var floor: LogisticRegression? = nil
        do {
            var floorFeatures: [Double] = []
            floorFeatures.reserveCapacity(train.distinct * HistorySummaries.floorFeatureCount)
            for customer in 0..<train.distinct { floorFeatures += trainHistory.floorFeatures(customer) }
            floor = try LogisticRegression.fit(
                features: floorFeatures, labels: (0..<train.distinct).map { train.shard.churn[$0] >= 0.5 },
                width: HistorySummaries.floorFeatureCount, across: sums)
        } catch let error as BaselineError {
            report.failures.append("the logistic floor could not be fitted: \(error)")
        }

        var boosting: BoostingBaseline.Fitted? = nil
        /// The customers at `indices` of `history`'s shard; `cutoff` 0 is the main cut-off, j the
        /// j-th earlier one, whose dataset rows are another dataset's and get j in their top bits
        /// to stay distinct sample keys.
        func boostingRows(_ history: HistorySummaries, _ indices: [Range<Int>], summary: (Int) -> CustomerSummary)
            -> BoostingBaseline.Rows {
            var rows = BoostingBaseline.Rows(width: BoostingBaseline.churnFeatureNames.count, targets: 2)
            for (cutoff, range) in indices.enumerated() {
                for customer in range {
                    rows.append(features: history.boostingFeatures(customer, summary: summary(customer), bgnbd: bgnbd,
                                                                   gammaGamma: gammaGamma, horizonPeriods: horizonPeriods),
                                labels: [history.shard.churn[customer], history.shard.spend[customer]],
                                datasetRow: Int64(cutoff) << 40 | Int64(history.shard.datasetRows[customer]))
                }
            }
            return rows
        }
        let boostingSplits = [boostingRows(trainHistory, [0..<train.distinct] + train.earlierCutoffs) {
                                  $0 < train.distinct ? summaries[$0] : trainHistory.summary($0)
                              },
                              boostingRows(validationHistory, [0..<validationShard.count]) { splitSummaries[0][$0] },
                              boostingRows(testHistory, [0..<testShard.count]) { splitSummaries[1][$0] }]
        do {
            boosting = try BoostingBaseline.fit(
                train: boostingSplits[0], validation: boostingSplits[1], heads: BoostingBaseline.churnAndSpendHeads,
                featureNames: BoostingBaseline.churnFeatureNames, filePrefix: "xgboost", world: world,
                runDirectory: summaryFile?.deletingLastPathComponent())
        } catch let error as BoostingError {
            report.failures.append("XGBoost could not be fitted on the training customers: \(error)")
        }
        let boostingPredictions = try boosting.map { fitted in
            try boostingSplits.map { rows in
                (churn: try fitted.predict(rows, head: 0).map(Double.init), spend: try fitted.predict(rows, head: 1).map(Double.init))
            }
        }
        if let summaryFile, let boosting, let boostingPredictions {
            try writeBoostingRows(boostingSplits, predictions: boostingPredictions, fitted: boosting,
                                  to: summaryFile.deletingLastPathComponent().appendingPathComponent("xgboost_features.csv"),
                                  world: world)
        }

        for (split, (rows, prefix)) in [(validation, "val_"), (test, "test_")].enumerated() {
            let history = split == 0 ? validationHistory : testHistory
            let customerSummaries = splitSummaries[split]
            let labels = rows.churnLabels, spend = rows.spend, ids = rows.ids
            var metrics: [String: Double] = [:]
            func keep(_ computed: [String: Double?], _ keys: [String]? = nil) {
                for (key, value) in computed {
                    guard let value, value.isFinite else { continue }
                    if let keys, !keys.contains(where: { key.hasSuffix("_" + $0) }) { continue }
                    metrics[key] = value
                }
            }
            /// Whether any rank saw a non-finite value, so that every rank drops the same baseline.
            func anywhere(_ found: Bool) throws -> Bool { try world.allreduce(value: Int64(found ? 1 : 0), op: .max) > 0 }
            var bgnbdChurn: [Double]? = nil
            var bgnbdSpend: [Double]? = nil
            if let bgnbd {
                let churn = customerSummaries.map { bgnbd.probabilityNoPurchase(t: horizonPeriods, customer: $0) }
                var expected = customerSummaries.map { summary in
                    gammaGamma.map { $0.expectedSpend(t: horizonPeriods, customer: summary, transactions: bgnbd) } ?? 0
                }
                if try anywhere(expected.contains(where: { !$0.isFinite })) {
                    report.failures.append("BG/NBD + Gamma-Gamma gave a non-finite expected spend on the \(prefix.dropLast()) customers; no spend baseline")
                    gammaGamma = nil
                    expected = spend
                }
                if gammaGamma != nil { bgnbdSpend = expected }
                if try !anywhere(!churn.allSatisfy(\.isFinite)) {
                    bgnbdChurn = churn
                    keep(try churnAndSpendMetrics(prefix: prefix + "bgnbd_", labels: labels, churnProbability: churn, spend: spend,
                                                  expectedSpend: expected, ids: ids, spendTail: gammaGamma != nil, world: world),
                         gammaGamma == nil ? ["auc", "log_loss", "f1", "brier", "accuracy"] : nil)
                } else {
                    report.failures.append("BG/NBD gave non-finite churn probabilities on the \(prefix.dropLast()) customers")
                }
            }
            var floorChurn: [Double]? = nil
            if let floor {
                let churn = (0..<rows.count).map { floor.probability(history.floorFeatures($0)[...]) }
                floorChurn = churn
                keep(try churnAndSpendMetrics(prefix: prefix + "logistic_", labels: labels, churnProbability: churn, spend: spend,
                                              expectedSpend: spend, ids: ids, world: world),
                     ["auc", "log_loss", "f1", "brier", "accuracy"])
            }
            var boostingChurn: [Double]? = nil
            var boostingSpend: [Double]? = nil
            if let predicted = boostingPredictions?[split + 1] {
                boostingChurn = predicted.churn
                boostingSpend = predicted.spend
                keep(try churnAndSpendMetrics(prefix: prefix + "xgboost_", labels: labels, churnProbability: predicted.churn,
                                              spend: spend, expectedSpend: predicted.spend, ids: ids, spendTail: true, world: world))
            }
            if prefix == "test_" {
                metrics.merge(try intervals(
                    model: rows.churnProbability, modelSpend: rows.expectedSpend, labels: labels, spend: spend, ids: ids,
                    baselines: [("bgnbd", bgnbdChurn, bgnbdSpend), ("logistic", floorChurn, nil),
                                ("xgboost", boostingChurn, boostingSpend)],
                    world: world)) { $1 }
                report.test = metrics
            } else {
                report.validation = metrics
            }
        }
        return report
    }

    /// 95% Poisson-bootstrap intervals over every rank's test customers (1,000 resamples, each
    /// customer's weight a hash of its dataset row, so the same at any world size): the model's
    /// AUC, and paired differences on the same resamples: its AUC minus each baseline's, and its
    /// spend RMSE minus each spend baseline's (negative: the model's error is smaller).
    static func intervals(model: [Double], modelSpend: [Double], labels: [Bool], spend: [Double], ids: [Int64],
                          baselines: [(name: String, churn: [Double]?, spend: [Double]?)],
                          world: any Communicator) throws -> [String: Double] {
        let resampling = PoissonResampling()
        var result: [String: Double] = [:]
        func put(_ name: String, _ resampled: [Double?]) {
            guard let interval = CrossRankMetrics.interval(resampled.dropFirst()) else { return }
            result["test_\(name)_ci_low"] = interval.lower
            result["test_\(name)_ci_high"] = interval.upper
        }
        let modelAUC = try CrossRankMetrics.rocAUC(scores: model, labels: labels, ids: ids, resampling: resampling, world: world)
        put("auc", modelAUC)
        for baseline in baselines {
            guard let scores = baseline.churn else { continue }
            let other = try CrossRankMetrics.rocAUC(scores: scores, labels: labels, ids: ids, resampling: resampling, world: world)
            put("auc_minus_\(baseline.name)", zip(modelAUC, other).map { a, b in a.flatMap { a in b.map { a - $0 } } })
        }
        for baseline in baselines {
            guard let baselineSpend = baseline.spend else { continue }
            // Per resample: total weight, the model's and the baseline's weighted squared errors.
            let copies = 1 + resampling.resamples
            var sums = [Double](repeating: 0, count: 3 * copies)
            for index in ids.indices {
                let modelError = (modelSpend[index] - spend[index]) * (modelSpend[index] - spend[index])
                let baselineError = (baselineSpend[index] - spend[index]) * (baselineSpend[index] - spend[index])
                for copy in 0..<copies {
                    let weight = resampling.weight(id: ids[index], resample: copy)
                    guard weight > 0 else { continue }
                    sums[3 * copy] += weight
                    sums[3 * copy + 1] += weight * modelError
                    sums[3 * copy + 2] += weight * baselineError
                }
            }
            try world.allreduce(&sums, op: .sum)
            put("clv_rmse_minus_\(baseline.name)", (0..<copies).map { copy -> Double? in
                let weight = sums[3 * copy]
                guard weight > 0 else { return nil }
                return (sums[3 * copy + 1] / weight).squareRoot() - (sums[3 * copy + 2] / weight).squareRoot()
            })
        }
        return result
    }

    /// Every customer's gradient boosting features, labels and XGBoost's predictions, one row
    /// each (split 0 training, 1 validation, 2 test; `cutoff` 0 the main cut-off, j the j-th
    /// earlier one; `sample_key` orders the fit's rows; `in_fit` marks the rows the fit saw), so that
    /// `scripts/xgboost_reference.py` can fit Python's XGBoost on exactly the same numbers.
    static func writeBoostingRows(_ splits: [BoostingBaseline.Rows], predictions: [(churn: [Double], spend: [Double])],
                                  fitted: BoostingBaseline.Fitted, to url: URL, world: any Communicator) throws {
        let width = BoostingBaseline.churnFeatureNames.count
        var text = ""
        for (split, rows) in splits.enumerated() {
            let fraction = split == 0 ? fitted.trainFraction : split == 1 ? fitted.validationFraction : 0
            for index in 0..<rows.count {
                let inFit = split < 2 && BoostingBaseline.sampled(rows.datasetRows[index], fraction: fraction)
                let key = rows.datasetRows[index]
                text += "\(key & 0xFF_FFFF_FFFF),\(key >> 40),\(key),\(split),\(inFit ? 1 : 0),\(rows.label(0, of: index)),\(rows.label(1, of: index))"
                for value in rows.features[index * width..<(index + 1) * width] { text += ",\(value)" }
                text += ",\(predictions[split].churn[index]),\(predictions[split].spend[index])\n"
            }
        }
        let header = (["dataset_row", "cutoff", "sample_key", "split", "in_fit", "churn", "spend"] + BoostingBaseline.churnFeatureNames
            + ["churn_probability", "expected_spend"]).joined(separator: ",") + "\n"
        try writeSharedRunFile(header: header, rows: Array(text.utf8), to: url, world: world)
    }
}

/// Per-customer history summaries read back from a shard's normalised feature sequences.
struct HistorySummaries {
    let shard: LocalShard
    let mean: [Double]
    let std: [Double]
    let width: Int
    let steps: Int

    /// Feature indices in `customerFeatureNames`.
    enum Feature: Int {
        case transactions = 0, items, log1pSpend, active, periodsSinceFirst, periodsSinceLast, log1pCumulativeTransactions,
             log1pMeanSpend
    }

    init(shard: LocalShard, normalisation: FeatureNormalisation) {
        self.shard = shard
        mean = normalisation.mean
        std = normalisation.std
        width = shard.featureCount
        steps = shard.steps
    }

    func raw(_ customer: Int, step: Int, _ feature: Feature) -> Double {
        let value = shard.features.pointer[(customer * steps + step) * width + feature.rawValue]
        return Double(value) * std[feature.rawValue] + mean[feature.rawValue]
    }

    func summary(_ customer: Int) -> CustomerSummary {
        let length = Int(shard.lengths[customer])
        let last = length - 1
        var activePeriods = 0
        var transactionsInWindow = 0.0
        var repeatSpend = 0.0
        var repeatPeriods = 0
        let firstInWindow = raw(customer, step: 0, .periodsSinceFirst).rounded() == 0
        for step in 0..<length where raw(customer, step: step, .active) > 0.5 {
            activePeriods += 1
            transactionsInWindow += raw(customer, step: step, .transactions).rounded()
            if !(firstInWindow && activePeriods == 1) {
                repeatSpend += expm1(raw(customer, step: step, .log1pSpend))
                repeatPeriods += 1
            }
        }
        let cumulative = expm1(raw(customer, step: last, .log1pCumulativeTransactions)).rounded()
        let before = max(cumulative - transactionsInWindow, 0)
        let age = raw(customer, step: last, .periodsSinceFirst).rounded()
        let sinceLast = raw(customer, step: last, .periodsSinceLast).rounded()
        let frequency = max(Double(activePeriods) + before - 1, 0)
        return CustomerSummary(
            frequency: frequency, recency: frequency > 0 ? max(age - sinceLast, 0) : 0, age: age,
            monetaryValue: frequency > 0 && repeatPeriods > 0 ? repeatSpend / Double(repeatPeriods) : 0)
    }

    static let floorFeatureCount = 8 + 4

    /// The last step's eight features, then the sums of transactions, log1p spend and active
    /// periods over the sequence, and its length.
    func floorFeatures(_ customer: Int) -> [Double] {
        let length = Int(shard.lengths[customer])
        var row = (0..<width).map { Double(shard.features.pointer[(customer * steps + length - 1) * width + $0]) }
        var transactions = 0.0, spend = 0.0, active = 0.0
        for step in 0..<length {
            transactions += raw(customer, step: step, .transactions)
            spend += raw(customer, step: step, .log1pSpend)
            active += raw(customer, step: step, .active)
        }
        row += [log1p(max(transactions, 0)), spend, active, Double(length)]
        return row
    }

    /// `BoostingBaseline.churnFeatureNames`, in order: the last period's stored features, the
    /// window's totals, recent windows' counts and spend, the RFM summary, and what BG/NBD and
    /// Gamma-Gamma make of it (NaN, a missing value to XGBoost, where they were not fitted).
    func boostingFeatures(_ customer: Int, summary: CustomerSummary, bgnbd: BGNBDParameters?,
                          gammaGamma: GammaGammaParameters?, horizonPeriods: Double) -> [Float] {
        let length = Int(shard.lengths[customer])
        var row: [Float] = []
        row.reserveCapacity(BoostingBaseline.churnFeatureNames.count)
        for feature in 0..<width { row.append(Float(raw(customer, step: length - 1, Feature(rawValue: feature)!))) }
        var transactions = 0.0, items = 0.0, spend = 0.0, active = 0.0
        var recent = [Double](repeating: 0, count: 2 * BoostingBaseline.recentWindows.count)
        for step in 0..<length {
            let stepTransactions = raw(customer, step: step, .transactions)
            let stepSpend = expm1(raw(customer, step: step, .log1pSpend))
            transactions += stepTransactions
            items += raw(customer, step: step, .items)
            spend += stepSpend
            active += raw(customer, step: step, .active)
            for (window, periods) in BoostingBaseline.recentWindows.enumerated() where length - step <= periods {
                recent[2 * window] += stepTransactions
                recent[2 * window + 1] += stepSpend
            }
        }
        row += [transactions, items, spend, active, Double(length)].map(Float.init) + recent.map(Float.init)
        row += [summary.frequency, summary.recency, summary.age, summary.monetaryValue].map(Float.init)
        let alive = bgnbd.map { $0.probabilityAlive(customer: summary) } ?? .nan
        let expected = bgnbd.map { $0.conditionalExpectedTransactions(t: horizonPeriods, customer: summary) } ?? .nan
        let meanSpend = gammaGamma.map { $0.conditionalExpectedAverageProfit(customer: summary) } ?? .nan
        row += [alive, expected, meanSpend].map { Float($0.isFinite ? $0 : .nan) }
        return row
    }
}

/// The LSTM's baselines as a run fits them at its end: the training customers and what reads
/// their histories back, bound before training so the task only adds the model's own rows.
struct LSTMBaselines {
    let train: BaselineEvaluation.Split
    let validationShard: LocalShard
    let testShard: LocalShard
    let normalisation: FeatureNormalisation
    let horizonPeriods: Double
    let summaryFile: URL?

    func run(validation: LSTMEvaluationRows, test: LSTMEvaluationRows, world: any Communicator) throws -> BaselineReport {
        try BaselineEvaluation.run(
            train: train, validationShard: validationShard, validation: validation, testShard: testShard, test: test,
            normalisation: normalisation, horizonPeriods: horizonPeriods, summaryFile: summaryFile, world: world)
    }
}
