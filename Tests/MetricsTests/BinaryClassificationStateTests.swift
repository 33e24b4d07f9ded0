import Foundation
import Testing
import ModelMetrics
import TestSupport

@Suite struct BinaryClassificationStateTests {
    static let probabilities = [0.9, 0.5, 0.4, 0.2, 0.7]
    static let labels = [true, false, true, false, false]

    @Test func countsAtTheDefaultThreshold() {
        var state = BinaryClassificationState()
        state.add(probabilities: Self.probabilities, labels: Self.labels)
        // 0.5 sits on the threshold and counts as predicted positive, so it is a false positive.
        #expect(state.truePositives == 1)
        #expect(state.falsePositives == 2)
        #expect(state.trueNegatives == 1)
        #expect(state.falseNegatives == 1)
        #expect(state.count == 5)
        expectClose(state.accuracy, 2.0 / 5.0)
        expectClose(state.precision, 1.0 / 3.0)
        expectClose(state.recall, 1.0 / 2.0)
        // Harmonic mean of ⅓ and ½.
        expectClose(state.f1, 0.4)
    }

    @Test func anotherThresholdMovesTheCounts() {
        var state = BinaryClassificationState(threshold: 0.7)
        state.add(probabilities: Self.probabilities, labels: Self.labels)
        #expect(state.truePositives == 1)
        #expect(state.falsePositives == 1)
        #expect(state.trueNegatives == 2)
        #expect(state.falseNegatives == 1)
        expectClose(state.precision, 0.5)
    }

    @Test func logLossAndBrierByHand() {
        var state = BinaryClassificationState()
        state.add(probabilities: [0.9, 0.2], labels: [true, false])
        // −(ln 0.9 + ln 0.8) / 2
        expectClose(state.logLoss, (0.10536051565782628 + 0.2231435513142097) / 2)
        // ((0.1)² + (0.2)²) / 2
        expectClose(state.brierScore, 0.025)
    }

    @Test func logLossIsClippedButBrierIsNot() {
        var confidentMistake = BinaryClassificationState()
        confidentMistake.add(probability: 0, label: true)
        // −ln(1e-15); without the clip this would be +∞.
        expectClose(confidentMistake.logLoss, 34.538776394910684, tolerance: 1e-9)
        expectClose(confidentMistake.brierScore, 1)

        var wrongTheOtherWay = BinaryClassificationState()
        wrongTheOtherWay.add(probability: 1, label: false)
        // The clip makes p 1 − 1e-15, and 1 − (1 − 1e-15) is not exactly 1e-15 in binary:
        // the expected value is that same expression.
        expectClose(wrongTheOtherWay.logLoss, -Foundation.log(1 - (1 - 1e-15)), tolerance: 1e-9)

        var confidentHit = BinaryClassificationState()
        confidentHit.add(probability: 1, label: true)
        let loss = confidentHit.logLoss ?? -1
        #expect(loss > 0 && loss < 1e-14)
    }

    @Test func emptyStateHasNoMetrics() {
        let state = BinaryClassificationState()
        #expect(state.count == 0)
        #expect(state.accuracy == nil)
        #expect(state.precision == nil)
        #expect(state.recall == nil)
        #expect(state.f1 == nil)
        #expect(state.logLoss == nil)
        #expect(state.brierScore == nil)
    }

    @Test func nothingPredictedPositiveWhilePositivesExist() {
        var state = BinaryClassificationState()
        state.add(probabilities: [0.1, 0.2, 0.3], labels: [true, false, true])
        #expect(state.precision == nil)
        expectClose(state.recall, 0)
        // The documented convention: F1 = 2TP/(2TP+FP+FN) is defined here and is 0.
        expectClose(state.f1, 0)
    }

    @Test func noPositivesAnywhere() {
        var state = BinaryClassificationState()
        state.add(probabilities: [0.1, 0.2], labels: [false, false])
        #expect(state.precision == nil)
        #expect(state.recall == nil)
        #expect(state.f1 == nil)
        expectClose(state.accuracy, 1)
    }

    @Test func onlyFalsePositives() {
        var state = BinaryClassificationState()
        state.add(probabilities: [0.8, 0.2], labels: [false, false])
        expectClose(state.precision, 0)
        #expect(state.recall == nil)
        expectClose(state.f1, 0)
    }

    @Test func mergeAndPackedSumEqualTheConcatenatedData() throws {
        var rng = SplitMix64(seed: 21)
        let (probabilities, labels) = randomScoredLabels(count: 500, levels: 50, rng: &rng)
        var whole = BinaryClassificationState(threshold: 0.6)
        whole.add(probabilities: probabilities, labels: labels)

        let ranks = unevenShards(count: probabilities.count, parts: 4, rng: &rng).map { shard in
            var state = BinaryClassificationState(threshold: 0.6)
            state.add(probabilities: Array(probabilities[shard]), labels: Array(labels[shard]))
            return state
        }
        var merged = BinaryClassificationState(threshold: 0.6)
        for state in ranks { merged.merge(state) }
        let reduced = try #require(ranks[0].rebuilt(fromPacked: allreduceSum(ranks.map(\.packed))))
        let logLoss = try #require(whole.logLoss)
        let brierScore = try #require(whole.brierScore)

        for combined in [merged, reduced] {
            #expect(combined.threshold == 0.6)
            #expect(combined.truePositives == whole.truePositives)
            #expect(combined.falsePositives == whole.falsePositives)
            #expect(combined.trueNegatives == whole.trueNegatives)
            #expect(combined.falseNegatives == whole.falseNegatives)
            // Sums of losses are added in a different order, so only equal up to rounding.
            expectClose(combined.logLoss, logLoss, tolerance: 1e-12)
            expectClose(combined.brierScore, brierScore, tolerance: 1e-12)
        }
    }

    @Test func packedRoundTripIsExact() throws {
        var state = BinaryClassificationState(threshold: 0.3)
        state.add(probabilities: Self.probabilities, labels: Self.labels)
        #expect(state.packed.count == BinaryClassificationState.packedCount)
        #expect(BinaryClassificationState(packed: state.packed, threshold: 0.3) == state)
        #expect(state.rebuilt(fromPacked: state.packed) == state)
        // The threshold is configuration, not data: it is not in the packed array.
        #expect(BinaryClassificationState(packed: state.packed) != state)
    }

    @Test func invalidPackedArraysAreRejected() {
        #expect(BinaryClassificationState(packed: []) == nil)
        #expect(BinaryClassificationState(packed: [1, 0, 0, 0, 0]) == nil)
        #expect(BinaryClassificationState(packed: [1, 0, 0, 0, 0, 0, 0]) == nil)
        #expect(BinaryClassificationState(packed: [-1, 0, 0, 0, 0, 0]) == nil)
        #expect(BinaryClassificationState(packed: [0.5, 0, 0, 0, 0, 0]) == nil)
        #expect(BinaryClassificationState(packed: [1, 0, 0, 0, .nan, 0]) == nil)
        #expect(BinaryClassificationState(packed: [1, 0, 0, 0, 0, .infinity]) == nil)
        #expect(BinaryClassificationState(packed: [1, 0, 0, 0, -0.1, 0]) == nil)
        #expect(BinaryClassificationState(packed: [1, 2, 3, 4, 0.25, 1.5]) != nil)
    }

    @Test func mergingDifferentThresholdsStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var state = BinaryClassificationState(threshold: 0.5)
            state.merge(BinaryClassificationState(threshold: 0.6))
        }
    }

    @Test func probabilityOutsideTheUnitIntervalStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var state = BinaryClassificationState()
            state.add(probability: 1.5, label: true)
        }
    }
}
