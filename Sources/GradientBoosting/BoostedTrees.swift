import CXGBoost
import Foundation

/// XGBoost refused a call; `message` is its own explanation, prefixed with what was asked.
public struct BoostingError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Rows of float features, row-major, `width` per row. NaN marks a value the customer lacks
/// (XGBoost learns a default branch for it).
public struct FeatureRows: Sendable, Equatable {
    public var values: [Float]
    public let width: Int

    public init(values: [Float], width: Int) {
        precondition(width > 0 && values.count % width == 0, "rows of \(width) features cannot hold \(values.count) values")
        self.values = values
        self.width = width
    }

    public var count: Int { values.count / width }
}

/// How one booster is grown. The defaults are the small, well-regularised trees churn teams
/// fit on summary features; `objective` and its `extra` settings choose the task.
public struct BoostingSettings: Sendable, Equatable {
    /// XGBoost's objective, e.g. `binary:logistic`, `reg:squarederror`, `reg:tweedie`, `multi:softprob`.
    public var objective: String
    /// The validation metric early stopping watches (lower is better for every one used here).
    public var evalMetric: String
    public var learningRate = 0.05
    public var maxDepth = 4
    public var minChildWeight = 1.0
    public var l2 = 1.0
    /// Upper bound on boosting rounds; early stopping usually ends far sooner.
    public var maxRounds = 1000
    /// Rounds without a better validation metric before growing stops.
    public var earlyStoppingRounds = 50
    /// Threads XGBoost may use; the ranks waiting for the fit are idle meanwhile.
    public var threads = 0
    /// Further parameters, e.g. `num_class`, `tweedie_variance_power`.
    public var extra: [String: String] = [:]

    public init(objective: String, evalMetric: String) {
        self.objective = objective
        self.evalMetric = evalMetric
    }

    /// Every parameter as XGBoost's Python package would take them, for the run's record and
    /// the reference script.
    public var parameters: [(String, String)] {
        var list: [(String, String)] = [
            ("objective", objective), ("eval_metric", evalMetric), ("eta", "\(learningRate)"),
            ("max_depth", "\(maxDepth)"), ("min_child_weight", "\(minChildWeight)"), ("lambda", "\(l2)"),
            ("tree_method", "hist"), ("seed", "0"), ("verbosity", "0"),
        ]
        if threads > 0 { list.append(("nthread", "\(threads)")) }
        for key in extra.keys.sorted() { list.append((key, extra[key]!)) }
        return list
    }
}

/// A dense matrix handed to XGBoost; freed with the value.
final class BoostingMatrix {
    let handle: DMatrixHandle

    init(_ rows: FeatureRows, labels: [Float]? = nil) throws {
        var made: DMatrixHandle? = nil
        try check("building a \(rows.count)×\(rows.width) matrix") {
            rows.values.withUnsafeBufferPointer {
                XGDMatrixCreateFromMat($0.baseAddress, bst_ulong(rows.count), bst_ulong(rows.width), Float.nan, &made)
            }
        }
        handle = made!
        if let labels {
            guard labels.count == rows.count else {
                throw BoostingError("\(labels.count) labels for \(rows.count) rows")
            }
            try check("setting labels") {
                labels.withUnsafeBufferPointer { XGDMatrixSetFloatInfo(handle, "label", $0.baseAddress, bst_ulong(labels.count)) }
            }
        }
    }

    deinit { XGDMatrixFree(handle) }
}

/// A fitted gradient-boosted tree ensemble, cut to the round early stopping chose.
public final class BoostedTrees: @unchecked Sendable {
    private let handle: BoosterHandle
    /// Rounds kept (the best validation round + 1).
    public let rounds: Int
    /// The validation metric at the kept round.
    public let bestValidationMetric: Double

    private init(handle: BoosterHandle, rounds: Int, bestValidationMetric: Double) {
        self.handle = handle
        self.rounds = rounds
        self.bestValidationMetric = bestValidationMetric
    }

    deinit { XGBoosterFree(handle) }

    /// Grows trees on `train` until `validation`'s metric has not improved for
    /// `settings.earlyStoppingRounds` rounds, and keeps the rounds up to its best, as the Python
    /// package's `early_stopping_rounds` does (a round counts as better only if strictly lower).
    public static func fit(train: FeatureRows, labels: [Float], validation: FeatureRows, validationLabels: [Float],
                           settings: BoostingSettings) throws -> BoostedTrees {
        guard train.count > 0, validation.count > 0 else {
            throw BoostingError("gradient boosting needs training and validation rows (got \(train.count) and \(validation.count))")
        }
        let trainMatrix = try BoostingMatrix(train, labels: labels)
        let validationMatrix = try BoostingMatrix(validation, labels: validationLabels)
        var booster: BoosterHandle? = nil
        try check("creating a booster") {
            var matrices: [DMatrixHandle?] = [trainMatrix.handle, validationMatrix.handle]
            return XGBoosterCreate(&matrices, 2, &booster)
        }
        defer { XGBoosterFree(booster) }
        for (name, value) in settings.parameters {
            try check("setting \(name)=\(value)") { XGBoosterSetParam(booster, name, value) }
        }
        var best = (round: -1, metric: Double.infinity)
        for round in 0..<settings.maxRounds {
            try check("boosting round \(round)") { XGBoosterUpdateOneIter(booster, Int32(round), trainMatrix.handle) }
            let metric = try evaluate(booster!, round: round, on: validationMatrix)
            if metric < best.metric { best = (round, metric) }
            if round - best.round >= settings.earlyStoppingRounds { break }
        }
        guard best.round >= 0 else {
            throw BoostingError("the validation \(settings.evalMetric) was never finite; nothing to keep")
        }
        var sliced: BoosterHandle? = nil
        try check("keeping rounds 0...\(best.round)") { XGBoosterSlice(booster, 0, Int32(best.round + 1), 1, &sliced) }
        return BoostedTrees(handle: sliced!, rounds: best.round + 1, bestValidationMetric: best.metric)
    }

    /// The validation metric after `round`, read from XGBoost's own evaluation line
    /// (`[12]\tvalidation-logloss:0.47811`), the number Python's early stopping compares.
    private static func evaluate(_ booster: BoosterHandle, round: Int, on matrix: BoostingMatrix) throws -> Double {
        var line: UnsafePointer<CChar>? = nil
        try check("evaluating round \(round)") {
            var matrices: [DMatrixHandle?] = [matrix.handle]
            return "validation".withCString { name in
                var names: [UnsafePointer<CChar>?] = [name]
                return XGBoosterEvalOneIter(booster, Int32(round), &matrices, &names, 1, &line)
            }
        }
        let text = String(cString: line!)
        guard let colon = text.lastIndex(of: ":"), let value = Double(text[text.index(after: colon)...]
            .trimmingCharacters(in: .whitespaces)) else {
            throw BoostingError("XGBoost's evaluation line \"\(text)\" has no metric value")
        }
        return value.isNaN ? .infinity : value
    }

    /// Restores a model from `serialized()`'s bytes (XGBoost's UBJSON).
    public init(serialized bytes: [UInt8]) throws {
        var booster: BoosterHandle? = nil
        try check("creating a booster") { XGBoosterCreate(nil, 0, &booster) }
        do {
            try check("loading a \(bytes.count)-byte model") {
                bytes.withUnsafeBytes { XGBoosterLoadModelFromBuffer(booster, $0.baseAddress, bst_ulong(bytes.count)) }
            }
        } catch {
            XGBoosterFree(booster)
            throw error
        }
        handle = booster!
        var boosted: Int32 = 0
        XGBoosterBoostedRounds(handle, &boosted)
        rounds = Int(boosted)
        bestValidationMetric = .nan
    }

    /// The model as bytes (`ubj`, compact, to send to other ranks) or `json` (to store beside
    /// the run, readable by `xgboost.Booster(model_file=…)`).
    public func serialized(format: String = "ubj") throws -> [UInt8] {
        var length: bst_ulong = 0
        var bytes: UnsafePointer<CChar>? = nil
        try check("saving the model as \(format)") {
            XGBoosterSaveModelToBuffer(handle, "{\"format\": \"\(format)\"}", &length, &bytes)
        }
        return UnsafeRawBufferPointer(start: bytes, count: Int(length)).map { $0 }
    }

    /// Predictions for every row: probabilities for `binary:logistic`, `classes` probabilities
    /// per row for `multi:softprob`, the response for regressions.
    public func predict(_ rows: FeatureRows) throws -> [Float] {
        guard rows.count > 0 else { return [] }
        let matrix = try BoostingMatrix(rows)
        var shape: UnsafePointer<bst_ulong>? = nil
        var dimensions: bst_ulong = 0
        var result: UnsafePointer<Float>? = nil
        try check("predicting \(rows.count) rows") {
            XGBoosterPredictFromDMatrix(
                handle, matrix.handle, "{\"type\": 0, \"training\": false, \"iteration_begin\": 0, \"iteration_end\": 0, \"strict_shape\": false}",
                &shape, &dimensions, &result)
        }
        var count = 1
        for dimension in 0..<Int(dimensions) { count *= Int(shape![dimension]) }
        return Array(UnsafeBufferPointer(start: result, count: count))
    }
}

/// Runs an XGBoost call and turns its -1 into an error carrying XGBoost's last message.
func check(_ what: String, _ call: () -> Int32) throws {
    guard call() != 0 else { return }
    throw BoostingError("XGBoost failed \(what): \(String(cString: XGBGetLastError()))")
}
