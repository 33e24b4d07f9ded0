import Baselines
import Checkpoints
import CustomerData
import Foundation
import ModelMetrics

/// What the baselines scored on the model's own validation and test customers.
public struct BaselineReport: Sendable {
    /// `val_<baseline>_<metric>` and `test_<baseline>_<metric>`, baselines `bgnbd` (BG/NBD with
    /// Gamma-Gamma spend) and `logistic` (the logistic floor, churn only), plus the bootstrap
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
        let lowerIsBetter = ["log_loss", "clv_rmse"]
        for baseline in ["bgnbd", "logistic"] {
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

    static func displayName(_ baseline: String) -> String {
        baseline == "bgnbd" ? "BG/NBD + Gamma-Gamma" : "the logistic floor"
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
enum BaselineEvaluation {
    /// Fits on the training split, scores `validation` and `test`; with `summaryFile`, also
    /// writes every customer's calibration summary there (CSV: dataset_row, split, frequency,
    /// recency, T, monetary_value), so lifetimes can be fitted on exactly the same numbers
    /// (`scripts/lifetimes_reference.py --summary`).
    static func run(dataset: CustomerDataset, validation: LSTMEvaluationRows, test: LSTMEvaluationRows,
                    summaryFile: URL? = nil) throws -> BaselineReport {
        let horizonPeriods = Double(dataset.manifest.spec.horizonDays) / Double(dataset.manifest.spec.periodDays)
        let train = dataset.indices(in: .train)
        let history = HistorySummaries(dataset: dataset)
        // Every customer is in one of the three splits, so each summary is needed once anyway.
        // Both passes read every customer's features once, in order, through the mapping; the
        // pages they read are released as they go, so that the coordinator's resident set stays
        // what it holds rather than the whole features file (1.2 GB at 1M customers).
        let releaseEvery = 1 << 16
        var allSummaries: [CustomerSummary] = []
        allSummaries.reserveCapacity(dataset.customerCount)
        for customer in 0..<dataset.customerCount {
            allSummaries.append(history.summary(customer))
            if customer % releaseEvery == releaseEvery - 1 { dataset.releaseResidentPages() }
        }
        dataset.releaseResidentPages()
        if let summaryFile {
            // Built as bytes, not a String converted at the end: one copy of ~40 bytes a customer
            // instead of three on the coordinator.
            var text = Data("dataset_row,split,frequency,recency,T,monetary_value\n".utf8)
            text.reserveCapacity(dataset.customerCount * 48)
            for customer in 0..<dataset.customerCount {
                let summary = allSummaries[customer]
                text.append(contentsOf: "\(customer),\(dataset.split[customer]),\(Int(summary.frequency)),\(Int(summary.recency)),\(Int(summary.age)),\(summary.monetaryValue)\n".utf8)
            }
            try writeFileAtomically(text, to: summaryFile)
        }

        let summaries = train.map { allSummaries[$0] }
        var report = BaselineReport()
        // A baseline that cannot be fitted on this data is reported as such; it must not cost
        // the run its own test metrics.
        var bgnbd: BGNBDParameters? = nil
        do {
            let fitted = try BGNBDParameters.fit(summaries)
            bgnbd = fitted
            report.parameters.merge(["bgnbd_r": fitted.r, "bgnbd_alpha": fitted.alpha, "bgnbd_a": fitted.a, "bgnbd_b": fitted.b]) { $1 }
        } catch {
            report.failures.append("BG/NBD could not be fitted on the training customers: \(error)")
        }
        var gammaGamma: GammaGammaParameters? = nil
        do {
            let fitted = try GammaGammaParameters.fit(summaries.filter { $0.frequency > 0 && $0.monetaryValue > 0 })
            report.parameters.merge(["gg_p": fitted.p, "gg_q": fitted.q, "gg_v": fitted.v]) { $1 }
            // q ≤ 1 leaves the Gamma-Gamma's mean spend undefined (infinite).
            if fitted.q > 1 { gammaGamma = fitted } else {
                report.failures.append(String(format: "Gamma-Gamma fitted q = %.4f ≤ 1, so its expected spend is infinite; no spend baseline", fitted.q))
            }
        } catch {
            report.failures.append("Gamma-Gamma could not be fitted on the repeat customers: \(error)")
        }
        var floor: LogisticRegression? = nil
        do {
            var floorFeatures: [Double] = []
            floorFeatures.reserveCapacity(train.count * HistorySummaries.floorFeatureCount)
            for (position, customer) in train.enumerated() {
                floorFeatures += history.floorFeatures(customer)
                if position % releaseEvery == releaseEvery - 1 { dataset.releaseResidentPages() }
            }
            dataset.releaseResidentPages()
            floor = try LogisticRegression.fit(
                features: floorFeatures, labels: train.map { dataset.churn[$0] >= 0.5 },
                width: HistorySummaries.floorFeatureCount)
        } catch {
            report.failures.append("the logistic floor could not be fitted: \(error)")
        }

        for (rows, prefix) in [(validation, "val_"), (test, "test_")] {
            let customers = rows.datasetRows
            let labels = rows.churnLabels, spend = rows.spend
            let customerSummaries = customers.map { allSummaries[$0] }
            var metrics: [String: Double] = [:]
            func keep(_ computed: [String: Double?], _ keys: [String]? = nil) {
                for (key, value) in computed {
                    guard let value, value.isFinite else { continue }
                    if let keys, !keys.contains(where: { key.hasSuffix("_" + $0) }) { continue }
                    metrics[key] = value
                }
            }
            var bgnbdChurn: [Double]? = nil
            var bgnbdSpend: [Double]? = nil
            if let bgnbd {
                let churn = customerSummaries.map { bgnbd.probabilityNoPurchase(t: horizonPeriods, customer: $0) }
                var expected = customerSummaries.map { summary in
                    gammaGamma.map { $0.expectedSpend(t: horizonPeriods, customer: summary, transactions: bgnbd) } ?? 0
                }
                if expected.contains(where: { !$0.isFinite }) {
                    report.failures.append("BG/NBD + Gamma-Gamma gave a non-finite expected spend on the \(prefix.dropLast()) customers; no spend baseline")
                    gammaGamma = nil
                    expected = spend
                }
                if gammaGamma != nil { bgnbdSpend = expected }
                if churn.allSatisfy(\.isFinite) {
                    bgnbdChurn = churn
                    keep(churnAndSpendMetrics(prefix: prefix + "bgnbd_", labels: labels, churnProbability: churn, spend: spend,
                                              expectedSpend: expected),
                         gammaGamma == nil ? ["auc", "log_loss", "f1", "brier", "accuracy"] : nil)
                } else {
                    report.failures.append("BG/NBD gave non-finite churn probabilities on the \(prefix.dropLast()) customers")
                }
            }
            var floorChurn: [Double]? = nil
            if let floor {
                let churn = customers.map { floor.probability(history.floorFeatures($0)[...]) }
                floorChurn = churn
                keep(churnAndSpendMetrics(prefix: prefix + "logistic_", labels: labels, churnProbability: churn, spend: spend,
                                          expectedSpend: spend),
                     ["auc", "log_loss", "f1", "brier", "accuracy"])
            }
            if prefix == "test_" {
                metrics.merge(intervals(model: rows.churnProbability, bgnbd: bgnbdChurn, floor: floorChurn, labels: labels,
                                        spend: spend, modelSpend: rows.expectedSpend, bgnbdSpend: bgnbdSpend)) { $1 }
                report.test = metrics
            } else {
                report.validation = metrics
            }
        }
        return report
    }

    /// Test splits up to this size get bootstrap intervals: each interval costs 1,000 sorts of
    /// the split, and above this size the sampling error of an AUC is already below 0.005.
    static let bootstrapLimit = 20_000

    /// 95% bootstrap intervals over test customers (1,000 seeded resamples): the model's AUC,
    /// and paired differences on the same resamples: its AUC minus each baseline's, and its
    /// spend RMSE minus BG/NBD + Gamma-Gamma's (negative: the model's error is smaller).
    static func intervals(model: [Double], bgnbd: [Double]?, floor: [Double]?, labels: [Bool],
                          spend: [Double], modelSpend: [Double], bgnbdSpend: [Double]?) -> [String: Double] {
        guard labels.count <= bootstrapLimit else { return [:] }
        func auc(_ scores: [Double], _ indices: [Int]) -> Double? {
            rocAUC(scores: indices.map { scores[$0] }, labels: indices.map { labels[$0] })
        }
        func rmse(_ predicted: [Double], _ indices: [Int]) -> Double {
            (indices.reduce(0) { $0 + (predicted[$1] - spend[$1]) * (predicted[$1] - spend[$1]) } / Double(indices.count)).squareRoot()
        }
        var result: [String: Double] = [:]
        func put(_ name: String, _ interval: BootstrapInterval?) {
            guard let interval else { return }
            result["test_\(name)_ci_low"] = interval.lower
            result["test_\(name)_ci_high"] = interval.upper
        }
        put("auc", bootstrapInterval(count: labels.count) { auc(model, $0) })
        for (name, scores) in [("bgnbd", bgnbd), ("logistic", floor)] {
            guard let scores else { continue }
            put("auc_minus_\(name)", bootstrapInterval(count: labels.count) { indices in
                guard let a = auc(model, indices), let b = auc(scores, indices) else { return nil }
                return a - b
            })
        }
        if let bgnbdSpend {
            put("clv_rmse_minus_bgnbd", bootstrapInterval(count: labels.count) { rmse(modelSpend, $0) - rmse(bgnbdSpend, $0) })
        }
        return result
    }
}

/// Per-customer history summaries read back from a dataset's normalised feature sequences.
struct HistorySummaries {
    let dataset: CustomerDataset
    let mean: [Double]
    let std: [Double]
    let width: Int
    let steps: Int

    /// Feature indices in `customerFeatureNames`.
    private enum Feature: Int {
        case transactions = 0, items, log1pSpend, active, periodsSinceFirst, periodsSinceLast, log1pCumulativeTransactions,
             log1pMeanSpend
    }

    init(dataset: CustomerDataset) {
        self.dataset = dataset
        mean = dataset.manifest.normalisation.mean
        std = dataset.manifest.normalisation.std
        width = dataset.featureCount
        steps = dataset.historyLength
        precondition(dataset.manifest.featureNames == customerFeatureNames, "the baselines read the standard per-period features")
    }

    private func raw(_ customer: Int, step: Int, _ feature: Feature) -> Double {
        let value = dataset.features[(customer * steps + step) * width + feature.rawValue]
        return Double(value) * std[feature.rawValue] + mean[feature.rawValue]
    }

    func summary(_ customer: Int) -> CustomerSummary {
        let length = Int(dataset.lengths[customer])
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
        let length = Int(dataset.lengths[customer])
        var row = (0..<width).map { Double(dataset.features[(customer * steps + length - 1) * width + $0]) }
        var transactions = 0.0, spend = 0.0, active = 0.0
        for step in 0..<length {
            transactions += raw(customer, step: step, .transactions)
            spend += raw(customer, step: step, .log1pSpend)
            active += raw(customer, step: step, .active)
        }
        row += [log1p(max(transactions, 0)), spend, active, Double(length)]
        return row
    }
}
