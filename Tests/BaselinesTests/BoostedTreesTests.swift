import BitMixing
import Foundation
import GradientBoosting
import Testing

/// Rows whose label depends on the first two features through an interaction a linear model
/// cannot see (the XOR of two thresholds), plus a third feature of pure noise, some of it missing.
private func interactionRows(count: Int, seed: UInt64) -> (rows: FeatureRows, labels: [Float]) {
    var generator = SplitMix64(seed: seed)
    var values: [Float] = []
    var labels: [Float] = []
    for _ in 0..<count {
        let a = Float.random(in: 0..<1, using: &generator)
        let b = Float.random(in: 0..<1, using: &generator)
        let noise = Float.random(in: 0..<1, using: &generator)
        values += [a, b, noise < 0.2 ? .nan : noise]
        let signal = (a > 0.5) != (b > 0.5)
        // 10% of labels flipped, so the best validation loss is reached well before the cap.
        labels.append((signal != (Float.random(in: 0..<1, using: &generator) < 0.1)) ? 1 : 0)
    }
    return (FeatureRows(values: values, width: 3), labels)
}

private func accuracy(_ probabilities: [Float], _ labels: [Float]) -> Double {
    Double(zip(probabilities, labels).filter { ($0 >= 0.5) == ($1 == 1) }.count) / Double(labels.count)
}

@Suite struct BoostedTreesTests {
    @Test func learnsAnInteractionAndStopsEarlyOnValidation() throws {
        let train = interactionRows(count: 2_000, seed: 1)
        let validation = interactionRows(count: 1_000, seed: 2)
        let test = interactionRows(count: 1_000, seed: 3)
        var settings = BoostingSettings(objective: "binary:logistic", evalMetric: "logloss")
        settings.maxRounds = 2_000
        settings.learningRate = 0.3
        let model = try BoostedTrees.fit(train: train.rows, labels: train.labels, validation: validation.rows,
                                         validationLabels: validation.labels, settings: settings)
        // 90% is the ceiling (10% of labels are flipped); a logistic regression would stay near 50%.
        #expect(accuracy(try model.predict(test.rows), test.labels) > 0.85)
        #expect(model.rounds < settings.maxRounds - settings.earlyStoppingRounds)
        #expect(model.bestValidationMetric < 0.45)
    }

    @Test func aModelSentAsBytesPredictsTheSame() throws {
        let train = interactionRows(count: 500, seed: 4)
        let validation = interactionRows(count: 200, seed: 5)
        var settings = BoostingSettings(objective: "reg:squarederror", evalMetric: "rmse")
        settings.maxRounds = 40
        let model = try BoostedTrees.fit(train: train.rows, labels: train.labels, validation: validation.rows,
                                         validationLabels: validation.labels, settings: settings)
        let restored = try BoostedTrees(serialized: try model.serialized())
        #expect(restored.rounds == model.rounds)
        #expect(try restored.predict(validation.rows) == model.predict(validation.rows))
        let json = try model.serialized(format: "json")
        #expect(String(decoding: json.prefix(1), as: UTF8.self) == "{")
    }

    @Test func badInputIsRefusedWithXGBoostsReason() throws {
        let train = interactionRows(count: 50, seed: 6)
        var settings = BoostingSettings(objective: "binary:logistic", evalMetric: "logloss")
        settings.maxRounds = 5
        // binary:logistic refuses labels outside [0, 1]; the error must carry XGBoost's words.
        let error = #expect(throws: BoostingError.self) {
            try BoostedTrees.fit(train: train.rows, labels: train.labels.map { $0 * 3 }, validation: train.rows,
                                 validationLabels: train.labels, settings: settings)
        }
        #expect(error?.message.contains("label") == true)
        #expect(throws: BoostingError.self) {
            try BoostedTrees.fit(train: train.rows, labels: Array(train.labels.dropLast()), validation: train.rows,
                                 validationLabels: train.labels, settings: settings)
        }
        #expect(throws: BoostingError.self) { try BoostedTrees(serialized: Array("not a model".utf8)) }
    }
}
