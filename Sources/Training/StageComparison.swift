import Collectives
import CustomerData
import DistributedMetrics
import Foundation
import GradientBoosting
import ModelMetrics

/// The graph model next to its no-graph ablation and the majority class, on the same customers,
/// with 95% intervals over 1,000 Poisson bootstrap resamples: the evidence that the graph earns
/// its place, or does not.
///
/// Each rank counts its own customers into one confusion matrix per resample and predictor
/// (weights from the customers' dataset rows, so resamples do not depend on the world size),
/// and one all-reduce adds them up.
enum StageComparison {
    static func metrics(
        validation: StageEvaluationRows, test: StageEvaluationRows, ablationValidation: StageEvaluationRows,
        ablationTest: StageEvaluationRows, boosting: (validation: [Int], test: [Int])? = nil, majorityStage: Int, classCount: Int,
        world: any Communicator
    ) throws -> [String: Double] {
        var metrics: [String: Double] = [:]
        let resampling = PoissonResampling()
        let copies = 1 + resampling.resamples
        let cells = classCount * classCount
        let predictors = ["", "nograph_", "majority_"] + (boosting == nil ? [] : ["xgboost_"])
        for (prefix, model, ablation, boosted) in [("val_", validation, ablationValidation, boosting?.validation),
                                                   ("test_", test, ablationTest, boosting?.test)] {
            // Both runs evaluate the same shards in the same order; anything else is a bug.
            try world.agreeing("comparing the graph model with its ablation") {
                guard model.datasetRows == ablation.datasetRows else {
                    throw AgreementError(message: "the no-graph ablation was evaluated on other customers than the model")
                }
            }
            let truth = model.truth, ids = model.datasetRows
            let guesses = [model.predicted, ablation.predicted, [Int](repeating: majorityStage, count: truth.count)]
                + (boosted.map { [$0] } ?? [])
            // [copy][predictor][true class][predicted class]
            var counts = [Double](repeating: 0, count: copies * predictors.count * cells)
            for index in truth.indices {
                for copy in 0..<copies {
                    let weight = resampling.weight(id: Int64(ids[index]), resample: copy)
                    guard weight > 0 else { continue }
                    for predictor in predictors.indices {
                        counts[(copy * predictors.count + predictor) * cells + truth[index] * classCount + guesses[predictor][index]] += weight
                    }
                }
            }
            try world.allreduce(&counts, op: .sum)
            func state(_ copy: Int, _ predictor: Int) -> MulticlassState {
                let start = (copy * predictors.count + predictor) * cells
                return MulticlassState(packed: Array(counts[start..<start + cells]))!
            }
            let ablated = state(0, 1)
            metrics[prefix + "nograph_accuracy"] = ablated.accuracy
            metrics[prefix + "nograph_macro_f1"] = ablated.macroF1
            func put(_ name: String, _ resampled: [Double?]) {
                guard let interval = CrossRankMetrics.interval(resampled) else { return }
                metrics["\(prefix)\(name)_ci_low"] = interval.lower
                metrics["\(prefix)\(name)_ci_high"] = interval.upper
            }
            let resamples = 1..<copies
            for (predictor, name) in predictors.enumerated() {
                put(name + "macro_f1", resamples.map { state($0, predictor).macroF1 })
                put(name + "accuracy", resamples.map { state($0, predictor).accuracy })
            }
            put("macro_f1_minus_nograph", resamples.map { copy in
                state(copy, 0).macroF1.flatMap { a in state(copy, 1).macroF1.map { a - $0 } }
            })
            put("macro_f1_minus_majority", resamples.map { copy in
                state(copy, 0).macroF1.flatMap { a in state(copy, 2).macroF1.map { a - $0 } }
            })
            put("accuracy_minus_nograph", resamples.map { copy in
                state(copy, 0).accuracy.flatMap { a in state(copy, 1).accuracy.map { a - $0 } }
            })
            if boosting != nil {
                let boosted = state(0, 3)
                metrics[prefix + "xgboost_accuracy"] = boosted.accuracy
                metrics[prefix + "xgboost_macro_f1"] = boosted.macroF1
                put("macro_f1_minus_xgboost", resamples.map { copy in
                    state(copy, 0).macroF1.flatMap { a in state(copy, 3).macroF1.map { a - $0 } }
                })
            }
        }
        return metrics
    }

    /// Loud lines where the graph model has not beaten its no-graph ablation or the majority
    /// class on the test customers: the paired 95% interval of its macro-F1 minus theirs does not
    /// lie above zero. The LSTM's floor warning is the same idea (`BaselineReport.warnings`).
    static func warnings(test metrics: [String: Double]) -> [String] {
        var warnings: [String] = []
        for (other, name, meaning) in [
            ("nograph", "its no-graph ablation", "the graph has not shown that it helps"),
            ("majority", "the majority class", "the model has not shown that it learnt the stages"),
        ] {
            guard let model = metrics["test_macro_f1"], let theirs = metrics["test_\(other)_macro_f1"],
                  let low = metrics["test_macro_f1_minus_\(other)_ci_low"], let high = metrics["test_macro_f1_minus_\(other)_ci_high"],
                  low <= 0 else { continue }
            warnings.append(String(
                format: "the graph model's test macro-F1 %.4f is not shown to beat %@'s %.4f on the same customers "
                    + "(difference 95%% CI %+.4f to %+.4f): %@; do not ship it",
                model, name, theirs, low, high, meaning))
        }
        if let model = metrics["test_macro_f1"], let theirs = metrics["test_xgboost_macro_f1"], theirs > model {
            var text = String(format: "XGBoost on the customer's and its products' summaries has test macro-F1 %.4f, above the graph model's %.4f",
                              theirs, model)
            if let low = metrics["test_macro_f1_minus_xgboost_ci_low"], let high = metrics["test_macro_f1_minus_xgboost_ci_high"] {
                text += String(format: " (model minus it, 95%% CI %+.4f to %+.4f)", low, high)
            }
            warnings.append(text + ": gradient boosting without the graph network does better on these customers")
        }
        return warnings
    }
}

/// The graph model's comparisons as a run makes them at its end: the no-graph ablation's rows,
/// trained first, and what the XGBoost stage baseline is fitted from.
struct StageComparisonPlan {
    let ablationValidation: StageEvaluationRows
    let ablationTest: StageEvaluationRows
    let graph: LocalGraph
    let train: LocalShard
    let trainDistinct: Int
    let validationShard: LocalShard
    let testShard: LocalShard
    let classCount: Int
    let majorityStage: Int
    let seed: UInt64
    let runDirectory: URL?

    /// The comparisons' metrics (`val_`/`test_` prefixed), and the baselines that could not be
    /// fitted and why.
    func run(validation: StageEvaluationRows, test: StageEvaluationRows,
             world: any Communicator) throws -> (metrics: [String: Double], failures: [String]) {
        var failures: [String] = []
        var boosting: (validation: [Int], test: [Int])? = nil
        do {
            boosting = try StageBoostingBaseline.predict(
                graph: graph, train: train, trainDistinct: trainDistinct, validation: validationShard,
                test: testShard, classCount: classCount, seed: seed, world: world, runDirectory: runDirectory)
        } catch let error as BoostingError {
            failures.append("XGBoost could not be fitted as the stage baseline: \(error)")
        }
        let metrics = try StageComparison.metrics(
            validation: validation, test: test, ablationValidation: ablationValidation, ablationTest: ablationTest,
            boosting: boosting, majorityStage: majorityStage, classCount: classCount, world: world)
        return (metrics, failures)
    }
}
