import ModelMetrics

/// The graph model next to its no-graph ablation and the majority class, on the same customers,
/// with 95% bootstrap intervals (1,000 seeded resamples over customers): the evidence that the
/// graph earns its place, or does not.
enum StageComparison {
    static func metrics(
        validation: StageEvaluationRows, test: StageEvaluationRows, ablationValidation: StageEvaluationRows,
        ablationTest: StageEvaluationRows, majorityStage: Int, classCount: Int
    ) throws -> [String: Double] {
        var metrics: [String: Double] = [:]
        for (prefix, model, ablation) in [("val_", validation, ablationValidation), ("test_", test, ablationTest)] {
            // Both runs evaluate the same shards in the same order; anything else is a bug.
            guard model.datasetRows == ablation.datasetRows else {
                throw AgreementError(message: "the no-graph ablation was evaluated on other customers than the model")
            }
            let truth = model.truth, predicted = model.predicted, ablated = ablation.predicted
            let majority = [Int](repeating: majorityStage, count: truth.count)
            func score(_ guesses: [Int], _ indices: [Int]) -> (accuracy: Double?, macroF1: Double?) {
                var state = MulticlassState(classCount: classCount)
                for index in indices { state.add(trueClass: truth[index], predictedClass: guesses[index]) }
                return (state.accuracy, state.macroF1)
            }
            let everyone = Array(truth.indices)
            let ablationScores = score(ablated, everyone)
            metrics[prefix + "nograph_accuracy"] = ablationScores.accuracy
            metrics[prefix + "nograph_macro_f1"] = ablationScores.macroF1
            func put(_ name: String, _ interval: BootstrapInterval?) {
                guard let interval else { return }
                metrics["\(prefix)\(name)_ci_low"] = interval.lower
                metrics["\(prefix)\(name)_ci_high"] = interval.upper
            }
            for (name, guesses) in [("", predicted), ("nograph_", ablated), ("majority_", majority)] {
                put(name + "macro_f1", bootstrapInterval(count: truth.count) { score(guesses, $0).macroF1 })
                put(name + "accuracy", bootstrapInterval(count: truth.count) { score(guesses, $0).accuracy })
            }
            put("macro_f1_minus_nograph", bootstrapInterval(count: truth.count) { indices in
                guard let a = score(predicted, indices).macroF1, let b = score(ablated, indices).macroF1 else { return nil }
                return a - b
            })
            put("accuracy_minus_nograph", bootstrapInterval(count: truth.count) { indices in
                guard let a = score(predicted, indices).accuracy, let b = score(ablated, indices).accuracy else { return nil }
                return a - b
            })
        }
        return metrics
    }
}
