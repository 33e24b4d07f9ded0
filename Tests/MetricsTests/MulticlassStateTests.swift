import Testing
import ModelMetrics
import TestSupport

@Suite struct MulticlassStateTests {
    static let truth = [0, 0, 1, 1, 2, 2]
    static let predicted = [0, 1, 1, 1, 0, 2]

    @Test func confusionMatrixAndScoresByHand() {
        var state = MulticlassState(classCount: 3)
        state.add(trueClasses: Self.truth, predictedClasses: Self.predicted)
        // Rows are true classes: the true 2 predicted as 0 lands in row 2, column 0.
        #expect(state.confusionMatrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
        #expect(state.count(trueClass: 2, predictedClass: 0) == 1)
        #expect(state.count(trueClass: 0, predictedClass: 2) == 0)
        #expect(state.count == 6)
        expectClose(state.accuracy, 4.0 / 6.0)
        // Class 0: TP 1, FP 1, FN 1 → ½. Class 1: TP 2, FP 1 → ⅘. Class 2: TP 1, FN 1 → ⅔.
        let f1 = state.perClassF1
        #expect(f1.count == 3)
        expectClose(f1[0], 0.5)
        expectClose(f1[1], 0.8)
        expectClose(f1[2], 2.0 / 3.0)
        expectClose(state.macroF1, (0.5 + 0.8 + 2.0 / 3.0) / 3)
    }

    @Test func classesAbsentFromTruthAndPredictionAreExcluded() {
        var state = MulticlassState(classCount: 5)
        state.add(trueClasses: Self.truth, predictedClasses: Self.predicted)
        #expect(state.perClassF1[3] == nil)
        #expect(state.perClassF1[4] == nil)
        // Same as with three declared classes; averaging the zeros in would give 0.393.
        expectClose(state.macroF1, (0.5 + 0.8 + 2.0 / 3.0) / 3)
    }

    @Test func classesOnOneSideOnlyCountAsZero() {
        var state = MulticlassState(classCount: 3)
        // Class 1 is predicted once but never true; class 2 never appears.
        state.add(trueClasses: [0, 0], predictedClasses: [0, 1])
        expectClose(state.perClassF1[0], 2.0 / 3.0)
        expectClose(state.perClassF1[1], 0)
        #expect(state.perClassF1[2] == nil)
        expectClose(state.macroF1, (2.0 / 3.0 + 0) / 2)
    }

    @Test func twoClassesAgreeWithTheBinaryState() {
        // Class 1 against class 0 is the binary problem; its F1 must follow the same convention.
        var rng = SplitMix64(seed: 41)
        let (probabilities, labels) = randomScoredLabels(count: 300, rng: &rng)
        var binary = BinaryClassificationState()
        var multiclass = MulticlassState(classCount: 2)
        for index in probabilities.indices {
            binary.add(probability: probabilities[index], label: labels[index])
            multiclass.add(trueClass: labels[index] ? 1 : 0, predictedClass: probabilities[index] >= 0.5 ? 1 : 0)
        }
        #expect(multiclass.count(trueClass: 1, predictedClass: 1) == binary.truePositives)
        #expect(multiclass.count(trueClass: 0, predictedClass: 1) == binary.falsePositives)
        #expect(multiclass.perClassF1[1] == binary.f1)
        #expect(multiclass.accuracy == binary.accuracy)
    }

    @Test func emptyStateHasNoMetrics() {
        let state = MulticlassState(classCount: 3)
        #expect(state.accuracy == nil)
        #expect(state.macroF1 == nil)
        #expect(state.perClassF1 == [nil, nil, nil])
        #expect(state.confusionMatrix == [[0, 0, 0], [0, 0, 0], [0, 0, 0]])
    }

    @Test func mergeAndPackedSumEqualTheConcatenatedData() throws {
        var rng = SplitMix64(seed: 43)
        let truth = (0..<600).map { _ in Int.random(in: 0..<4, using: &rng) }
        let predicted = truth.map { Bool.random(using: &rng) ? $0 : Int.random(in: 0..<4, using: &rng) }
        var whole = MulticlassState(classCount: 4)
        whole.add(trueClasses: truth, predictedClasses: predicted)

        let ranks = unevenShards(count: truth.count, parts: 3, rng: &rng).map { shard in
            var state = MulticlassState(classCount: 4)
            state.add(trueClasses: Array(truth[shard]), predictedClasses: Array(predicted[shard]))
            return state
        }
        var merged = MulticlassState(classCount: 4)
        for state in ranks { merged.merge(state) }
        let reduced = try #require(MulticlassState(packed: allreduceSum(ranks.map(\.packed))))

        // Counts add exactly, so the whole state, not just the metrics, must be equal.
        #expect(merged == whole)
        #expect(reduced == whole)
        #expect(reduced.macroF1 == whole.macroF1)
    }

    @Test func packedRoundTripRecoversTheClassCount() throws {
        var state = MulticlassState(classCount: 3)
        state.add(trueClasses: Self.truth, predictedClasses: Self.predicted)
        #expect(state.packed == [1, 1, 0, 0, 2, 0, 1, 0, 1])
        let rebuilt = try #require(MulticlassState(packed: state.packed))
        #expect(rebuilt.classCount == 3)
        #expect(rebuilt == state)
        #expect(state.rebuilt(fromPacked: state.packed) == state)
    }

    @Test func invalidPackedArraysAreRejected() {
        #expect(MulticlassState(packed: []) == nil)
        #expect(MulticlassState(packed: [1, 2, 3]) == nil)
        #expect(MulticlassState(packed: [1, 2, 3, 4, 5, 6, 7, 8]) == nil)
        #expect(MulticlassState(packed: [1, -2, 3, 4]) == nil)
        #expect(MulticlassState(packed: [1, 2.5, 3, 4]) == nil)
        #expect(MulticlassState(packed: [7]) != nil)
        // A 2×2 array is valid on its own but does not fit a 3-class state.
        #expect(MulticlassState(classCount: 3).rebuilt(fromPacked: [1, 2, 3, 4]) == nil)
    }

    @Test func classOutOfRangeStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var state = MulticlassState(classCount: 3)
            state.add(trueClass: 3, predictedClass: 0)
        }
    }
}
