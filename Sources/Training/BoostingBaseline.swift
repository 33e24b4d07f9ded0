import BitMixing
import Checkpoints
import Collectives
import CustomerData
import Foundation
import GradientBoosting

/// Gradient boosting baselines: XGBoost boosters on each customer's summary numbers, the model
/// most churn teams ship; the LSTM run's churn classifier and spend regressor, the graph run's
/// stage classifier.
///
/// Rank 0 fits every head on a sample of every rank's training customers (all of them up to
/// `trainingCap`), with early stopping on a sample of the validation customers, and sends the
/// fitted models to every rank; each rank then scores its own validation and test customers.
/// The sample keeps a customer by a hash of its dataset row and rank 0 sorts it by that row, so
/// the fit sees the same rows in the same order at any world size (BG/NBD's outputs among the
/// features differ in their last bits, as that fit adds over the ranks) and no rank holds more
/// than the cap.
enum BoostingBaseline {
    static let trainingCap = 250_000
    static let validationCap = 50_000

    /// One split's customers on this rank: `width` features and `targets` labels each.
    struct Rows {
        let width: Int
        let targets: Int
        var features: [Float] = []
        var labels: [Float] = []
        var datasetRows: [Int64] = []
        var count: Int { datasetRows.count }

        init(width: Int, targets: Int) {
            self.width = width
            self.targets = targets
        }

        mutating func append(features row: some Collection<Float>, labels rowLabels: [Float], datasetRow: Int64) {
            precondition(row.count == width && rowLabels.count == targets, "a row of \(row.count) features and \(rowLabels.count) labels")
            features += row
            labels += rowLabels
            datasetRows.append(datasetRow)
        }

        func label(_ target: Int, of index: Int) -> Float { labels[index * targets + target] }
        func labelColumn(_ target: Int) -> [Float] { (0..<count).map { label(target, of: $0) } }
        var matrix: FeatureRows { FeatureRows(values: features, width: width) }
    }

    /// One booster: its name in files and records, how it is grown, and which label it learns.
    struct Head {
        let name: String
        let settings: BoostingSettings
        let target: Int
    }

    struct Fitted {
        let models: [BoostedTrees]
        /// The shares of the training and validation customers the fit saw (1 below the caps).
        let trainFraction: Double
        let validationFraction: Double

        /// Head `head`'s predictions for `rows` (probabilities per class for `multi:softprob`).
        func predict(_ rows: Rows, head: Int) throws -> [Float] { try models[head].predict(rows.matrix) }
    }

    static func settings(objective: String, evalMetric: String, extra: [String: String] = [:]) -> BoostingSettings {
        var settings = BoostingSettings(objective: objective, evalMetric: evalMetric)
        settings.extra = extra
        // One thread: the other ranks on rank 0's node poll for the models meanwhile, and OpenMP
        // threads competing with them for the cores made a 900-customer fit outlast a 20 s watchdog.
        settings.threads = 1
        return settings
    }

    /// Whether dataset row `row` is in a sample keeping `fraction` of the rows.
    static func sampled(_ row: Int64, fraction: Double) -> Bool {
        fraction >= 1 || Double(SplitMix64.mix(UInt64(bitPattern: row) ^ 0xB005_7ED7_2EE5) >> 11) / 9_007_199_254_740_992.0 < fraction
    }

    /// Fits every head on rank 0 and returns the models on every rank. With `runDirectory`,
    /// rank 0 also stores each model as `<prefix>_<head>.json` (XGBoost JSON) and how they were
    /// fitted as `<prefix>_baseline.json`.
    static func fit(train: Rows, validation: Rows, heads: [Head], featureNames: [String], filePrefix: String,
                    world: any Communicator, runDirectory: URL?) throws -> Fitted {
        var totals = [Int64(train.count), Int64(validation.count)]
        try world.allreduce(&totals, op: .sum)
        let trainFraction = min(Double(trainingCap) / Double(max(totals[0], 1)), 1)
        let validationFraction = min(Double(validationCap) / Double(max(totals[1], 1)), 1)
        let trainSample = try gatherSample(train, fraction: trainFraction, world: world)
        let validationSample = try gatherSample(validation, fraction: validationFraction, world: world)

        var failure = ""
        var serialized: [[UInt8]] = heads.map { _ in [] }
        if world.rank == 0 {
            do {
                let (trainRows, validationRows) = (trainSample!, validationSample!)
                var models: [BoostedTrees] = []
                let started = ContinuousClock.now
                for head in heads {
                    models.append(try BoostedTrees.fit(
                        train: trainRows.matrix, labels: trainRows.labelColumn(head.target),
                        validation: validationRows.matrix, validationLabels: validationRows.labelColumn(head.target),
                        settings: head.settings))
                }
                serialized = try models.map { try $0.serialized() }
                if let runDirectory {
                    for (head, model) in zip(heads, models) {
                        try writeFileAtomically(try model.serialized(format: "json"),
                                                to: runDirectory.appendingPathComponent("\(filePrefix)_\(head.name).json"))
                    }
                    try writeFileAtomically(
                        record(heads: heads, models: models, featureNames: featureNames, fitSeconds: started.duration(to: .now) / .seconds(1),
                               trainRows: trainRows.count,
                               validationRows: validationRows.count, trainFraction: trainFraction, validationFraction: validationFraction),
                        to: runDirectory.appendingPathComponent("\(filePrefix)_baseline.json"))
                }
            } catch {
                failure = "\(error)"
            }
        }
        failure = try world.broadcast(string: failure, root: 0)
        guard failure.isEmpty else { throw BoostingError(failure) }
        return Fitted(models: try serialized.map { try BoostedTrees(serialized: try world.broadcast(bytes: $0, root: 0)) },
                      trainFraction: trainFraction, validationFraction: validationFraction)
    }

    /// Every rank's sampled rows, on rank 0 in dataset-row order (nil elsewhere).
    private static func gatherSample(_ rows: Rows, fraction: Double, world: any Communicator) throws -> Rows? {
        let (width, targets) = (rows.width, rows.targets)
        var kept = Rows(width: width, targets: targets)
        for index in 0..<rows.count where sampled(rows.datasetRows[index], fraction: fraction) {
            kept.append(features: rows.features[index * width..<(index + 1) * width],
                        labels: Array(rows.labels[index * targets..<(index + 1) * targets]), datasetRow: rows.datasetRows[index])
        }
        let counts = try world.allgather([Int64(kept.count)]).map { Int($0) }
        let total = counts.reduce(0, +)
        let isRoot = world.rank == 0
        var features = [Float](repeating: 0, count: isRoot ? total * width : 0)
        var labels = [Float](repeating: 0, count: isRoot ? total * targets : 0)
        var datasetRows = [Int64](repeating: 0, count: isRoot ? total : 0)
        try kept.features.withUnsafeBufferPointer { source in
            try features.withUnsafeMutableBufferPointer {
                try world.gatherv(source, into: isRoot ? $0 : nil, counts: counts.map { $0 * width }, root: 0)
            }
        }
        try kept.labels.withUnsafeBufferPointer { source in
            try labels.withUnsafeMutableBufferPointer {
                try world.gatherv(source, into: isRoot ? $0 : nil, counts: counts.map { $0 * targets }, root: 0)
            }
        }
        try kept.datasetRows.withUnsafeBufferPointer { source in
            try datasetRows.withUnsafeMutableBufferPointer {
                try world.gatherv(source, into: isRoot ? $0 : nil, counts: counts, root: 0)
            }
        }
        guard isRoot else { return nil }
        var ordered = Rows(width: width, targets: targets)
        ordered.features.reserveCapacity(total * width)
        for index in datasetRows.indices.sorted(by: { datasetRows[$0] < datasetRows[$1] }) {
            ordered.append(features: features[index * width..<(index + 1) * width],
                           labels: Array(labels[index * targets..<(index + 1) * targets]), datasetRow: datasetRows[index])
        }
        return ordered
    }

    /// What `scripts/xgboost_reference.py` needs to fit the same models on the same rows.
    private static func record(heads: [Head], models: [BoostedTrees], featureNames: [String], fitSeconds: Double, trainRows: Int,
                               validationRows: Int, trainFraction: Double, validationFraction: Double) throws -> Data {
        var object: [String: Any] = [
            "version": 1, "features": featureNames, "fit_seconds": fitSeconds, "train_rows": trainRows, "validation_rows": validationRows,
            "train_fraction": trainFraction, "validation_fraction": validationFraction,
        ]
        for (head, model) in zip(heads, models) {
            object[head.name] = [
                "parameters": Dictionary(uniqueKeysWithValues: head.settings.parameters.filter { $0.0 != "nthread" }),
                "max_rounds": head.settings.maxRounds, "early_stopping_rounds": head.settings.earlyStoppingRounds,
                "rounds_kept": model.rounds, "best_validation_metric": model.bestValidationMetric,
                "label_column": head.target,
            ] as [String: Any]
        }
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }

    /// The LSTM run's heads: churn (label 0) and spend (label 1). Tweedie with variance power
    /// 1.2 had the lowest validation RMSE on CDNOW among squared error, Tweedie 1.2 and 1.5,
    /// pseudo-Huber and a two-part logistic × gamma (docs/models.md).
    static let churnAndSpendHeads = [
        Head(name: "churn", settings: settings(objective: "binary:logistic", evalMetric: "logloss"), target: 0),
        Head(name: "spend", settings: settings(objective: "reg:tweedie", evalMetric: "rmse",
                                               extra: ["tweedie_variance_power": "1.2"]), target: 1),
    ]

    /// The summary numbers the LSTM run's boosters describe a customer by, in the order of
    /// `HistorySummaries.boostingFeatures`.
    static let churnFeatureNames: [String] = customerFeatureNames.map { "last_period_" + $0 } + [
        "window_transactions", "window_items", "window_spend", "active_periods", "history_periods",
    ] + recentWindows.flatMap { ["transactions_last_\($0)", "spend_last_\($0)"] } + [
        "frequency", "recency", "age", "monetary_value",
        "bgnbd_probability_alive", "bgnbd_expected_transactions", "gamma_gamma_mean_spend",
    ]

    /// Recent windows, in periods, whose transaction counts and spend are features.
    static let recentWindows = [4, 8, 13, 26]

}
