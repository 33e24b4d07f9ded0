import BitMixing
import Checkpoints
import Collectives
import CustomerData
import Foundation
import GradientBoosting

/// The gradient boosting baseline: XGBoost's churn classifier and spend regressor on each
/// customer's summary numbers, the model most churn teams ship.
///
/// Rank 0 fits both on a sample of every rank's training customers (all of them up to
/// `trainingCap`), with early stopping on a sample of the validation customers, and sends the
/// fitted models to every rank; each rank then scores its own validation and test customers.
/// The sample keeps a customer by a hash of its dataset row and rank 0 sorts it by that row, so
/// the fit is the same at any world size and no rank holds more than the cap.
enum BoostingBaseline {
    static let trainingCap = 250_000
    static let validationCap = 50_000

    /// One split's customers on this rank: their features (`featureNames` wide), labels and rows.
    struct Rows {
        var features: [Float] = []
        var churn: [Float] = []
        var spend: [Float] = []
        var datasetRows: [Int64] = []
        var count: Int { datasetRows.count }
    }

    struct Fitted {
        let churn: BoostedTrees
        let spend: BoostedTrees
        /// The shares of the training and validation customers the fit saw (1 below the caps).
        let trainFraction: Double
        let validationFraction: Double

        /// Churn probabilities and expected spends of `rows`.
        func predict(_ rows: Rows) throws -> (churn: [Double], spend: [Double]) {
            let matrix = FeatureRows(values: rows.features, width: featureNames.count)
            return (try churn.predict(matrix).map(Double.init), try spend.predict(matrix).map { max(Double($0), 0) })
        }
    }

    static func churnSettings() -> BoostingSettings {
        var settings = BoostingSettings(objective: "binary:logistic", evalMetric: "logloss")
        settings.threads = ProcessInfo.processInfo.activeProcessorCount
        return settings
    }

    /// Tweedie with variance power 1.2 had the lowest validation RMSE on CDNOW among squared
    /// error, Tweedie 1.2 and 1.5, pseudo-Huber and a two-part logistic × gamma (docs/models.md).
    static func spendSettings() -> BoostingSettings {
        var settings = BoostingSettings(objective: "reg:tweedie", evalMetric: "rmse")
        settings.extra = ["tweedie_variance_power": "1.2"]
        settings.threads = ProcessInfo.processInfo.activeProcessorCount
        return settings
    }

    /// Whether dataset row `row` is in a sample keeping `fraction` of the rows.
    static func sampled(_ row: Int64, fraction: Double) -> Bool {
        fraction >= 1 || Double(SplitMix64.mix(UInt64(bitPattern: row) ^ 0xB005_7ED7_2EE5) >> 11) / 9_007_199_254_740_992.0 < fraction
    }

    /// Fits on rank 0 and returns the models on every rank. With `runDirectory`, rank 0 also
    /// stores both models (XGBoost JSON) and how they were fitted (`xgboost_baseline.json`).
    static func fit(train: Rows, validation: Rows, world: any Communicator, runDirectory: URL?) throws -> Fitted {
        var totals = [Int64(train.count), Int64(validation.count)]
        try world.allreduce(&totals, op: .sum)
        let trainFraction = min(Double(trainingCap) / Double(max(totals[0], 1)), 1)
        let validationFraction = min(Double(validationCap) / Double(max(totals[1], 1)), 1)
        let trainSample = try gatherSample(train, fraction: trainFraction, world: world)
        let validationSample = try gatherSample(validation, fraction: validationFraction, world: world)

        var failure = ""
        var churnBytes: [UInt8] = [], spendBytes: [UInt8] = []
        if world.rank == 0 {
            do {
                let (trainRows, validationRows) = (trainSample!, validationSample!)
                let width = featureNames.count
                let churn = try BoostedTrees.fit(
                    train: FeatureRows(values: trainRows.features, width: width), labels: trainRows.churn,
                    validation: FeatureRows(values: validationRows.features, width: width), validationLabels: validationRows.churn,
                    settings: churnSettings())
                let spend = try BoostedTrees.fit(
                    train: FeatureRows(values: trainRows.features, width: width), labels: trainRows.spend,
                    validation: FeatureRows(values: validationRows.features, width: width), validationLabels: validationRows.spend,
                    settings: spendSettings())
                churnBytes = try churn.serialized()
                spendBytes = try spend.serialized()
                if let runDirectory {
                    try writeFileAtomically(try churn.serialized(format: "json"),
                                            to: runDirectory.appendingPathComponent("xgboost_churn.json"))
                    try writeFileAtomically(try spend.serialized(format: "json"),
                                            to: runDirectory.appendingPathComponent("xgboost_spend.json"))
                    try writeFileAtomically(
                        record(churn: churn, spend: spend, trainRows: trainRows.count, validationRows: validationRows.count,
                               trainFraction: trainFraction, validationFraction: validationFraction),
                        to: runDirectory.appendingPathComponent("xgboost_baseline.json"))
                }
            } catch {
                failure = "\(error)"
            }
        }
        failure = try world.broadcast(string: failure, root: 0)
        guard failure.isEmpty else { throw BoostingError(failure) }
        return Fitted(churn: try BoostedTrees(serialized: try world.broadcast(bytes: churnBytes, root: 0)),
                      spend: try BoostedTrees(serialized: try world.broadcast(bytes: spendBytes, root: 0)),
                      trainFraction: trainFraction, validationFraction: validationFraction)
    }

    /// Every rank's sampled rows, on rank 0 in dataset-row order (nil elsewhere).
    private static func gatherSample(_ rows: Rows, fraction: Double, world: any Communicator) throws -> Rows? {
        let width = featureNames.count
        var kept = Rows()
        for index in 0..<rows.count where sampled(rows.datasetRows[index], fraction: fraction) {
            kept.features += rows.features[index * width..<(index + 1) * width]
            kept.churn.append(rows.churn[index])
            kept.spend.append(rows.spend[index])
            kept.datasetRows.append(rows.datasetRows[index])
        }
        let counts = try world.allgather([Int64(kept.count)]).map { Int($0) }
        let total = counts.reduce(0, +)
        let isRoot = world.rank == 0
        var features = [Float](repeating: 0, count: isRoot ? total * width : 0)
        var labels = [Float](repeating: 0, count: isRoot ? total * 2 : 0)
        var datasetRows = [Int64](repeating: 0, count: isRoot ? total : 0)
        let pairs = zip(kept.churn, kept.spend).flatMap { [$0, $1] }
        try kept.features.withUnsafeBufferPointer { source in
            try features.withUnsafeMutableBufferPointer {
                try world.gatherv(source, into: isRoot ? $0 : nil, counts: counts.map { $0 * width }, root: 0)
            }
        }
        try pairs.withUnsafeBufferPointer { source in
            try labels.withUnsafeMutableBufferPointer {
                try world.gatherv(source, into: isRoot ? $0 : nil, counts: counts.map { $0 * 2 }, root: 0)
            }
        }
        try kept.datasetRows.withUnsafeBufferPointer { source in
            try datasetRows.withUnsafeMutableBufferPointer {
                try world.gatherv(source, into: isRoot ? $0 : nil, counts: counts, root: 0)
            }
        }
        guard isRoot else { return nil }
        var ordered = Rows()
        ordered.features.reserveCapacity(total * width)
        for index in datasetRows.indices.sorted(by: { datasetRows[$0] < datasetRows[$1] }) {
            ordered.features += features[index * width..<(index + 1) * width]
            ordered.churn.append(labels[2 * index])
            ordered.spend.append(labels[2 * index + 1])
            ordered.datasetRows.append(datasetRows[index])
        }
        return ordered
    }

    /// What `scripts/xgboost_reference.py` needs to fit the same models on the same rows.
    private static func record(churn: BoostedTrees, spend: BoostedTrees, trainRows: Int, validationRows: Int,
                               trainFraction: Double, validationFraction: Double) throws -> Data {
        func describe(_ model: BoostedTrees, _ settings: BoostingSettings) -> [String: Any] {
            ["parameters": Dictionary(uniqueKeysWithValues: settings.parameters.filter { $0.0 != "nthread" }),
             "max_rounds": settings.maxRounds, "early_stopping_rounds": settings.earlyStoppingRounds,
             "rounds_kept": model.rounds, "best_validation_metric": model.bestValidationMetric]
        }
        let object: [String: Any] = [
            "version": 1, "features": featureNames,
            "train_rows": trainRows, "validation_rows": validationRows,
            "train_fraction": trainFraction, "validation_fraction": validationFraction,
            "churn": describe(churn, churnSettings()), "spend": describe(spend, spendSettings()),
        ]
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }

    /// The summary numbers every customer is described by; the order of `HistorySummaries.boostingFeatures`.
    static let featureNames: [String] = customerFeatureNames.map { "last_period_" + $0 } + [
        "window_transactions", "window_items", "window_spend", "active_periods", "history_periods",
    ] + recentWindows.flatMap { ["transactions_last_\($0)", "spend_last_\($0)"] } + [
        "frequency", "recency", "age", "monetary_value",
        "bgnbd_probability_alive", "bgnbd_expected_transactions", "gamma_gamma_mean_spend",
    ]

    /// Recent windows, in periods, whose transaction counts and spend are features.
    static let recentWindows = [4, 8, 13, 26]

}
