import Testing
import ModelMetrics
import TestSupport

@Suite struct RankingMetricsTests {
    @Test func smallExampleByHand() {
        let scores = [0.1, 0.4, 0.35, 0.8]
        let labels = [false, false, true, true]
        // Pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 → 3 of 4.
        expectClose(rocAUC(scores: scores, labels: labels), 0.75)
        // Thresholds 0.8 (P=1, ΔR=½), 0.4 (no new positive), 0.35 (P=⅔, ΔR=½) → ½ + ⅓.
        expectClose(prAUC(scores: scores, labels: labels), 5.0 / 6.0)
    }

    @Test func tiedScoresFormOneThreshold() {
        let scores = [0.2, 0.5, 0.5, 0.5, 0.9]
        let labels = [false, true, false, true, true]
        // Each 0.5 positive: beats 0.2, ties 0.5 → 1.5; 0.9 beats both → 2; (1.5+1.5+2)/6.
        expectClose(rocAUC(scores: scores, labels: labels), 5.0 / 6.0)
        // 0.9: P=1, ΔR=⅓; the 0.5 group together: P=¾, ΔR=⅔ → ⅓ + ½. Splitting the group by
        // input order would give 0.806 or 0.917 instead.
        expectClose(prAUC(scores: scores, labels: labels), 5.0 / 6.0)
    }

    @Test func allScoresTiedGivesChanceAUCAndPrevalenceAP() {
        let scores = [0.3, 0.3, 0.3, 0.3]
        let labels = [true, false, false, false]
        expectClose(rocAUC(scores: scores, labels: labels), 0.5)
        expectClose(prAUC(scores: scores, labels: labels), 0.25)
    }

    @Test func inputOrderDoesNotMatter() {
        // The sort is not stable; grouping ties must make the result independent of input order.
        var rng = SplitMix64(seed: 11)
        let (scores, labels) = randomScoredLabels(count: 200, levels: 7, rng: &rng)
        let order = Array(scores.indices).shuffled(using: &rng)
        let shuffledScores = order.map { scores[$0] }
        let shuffledLabels = order.map { labels[$0] }
        #expect(rocAUC(scores: scores, labels: labels) == rocAUC(scores: shuffledScores, labels: shuffledLabels))
        #expect(prAUC(scores: scores, labels: labels) == prAUC(scores: shuffledScores, labels: shuffledLabels))
    }

    @Test func perfectAndReversedRankings() {
        expectClose(rocAUC(scores: [0.1, 0.2, 0.8, 0.9], labels: [false, false, true, true]), 1)
        expectClose(prAUC(scores: [0.1, 0.2, 0.8, 0.9], labels: [false, false, true, true]), 1)
        expectClose(rocAUC(scores: [0.9, 0.1], labels: [false, true]), 0)
        // The only positive is found at the last threshold, with one negative above it.
        expectClose(prAUC(scores: [0.9, 0.1], labels: [false, true]), 0.5)
    }

    @Test func infiniteScoresAreOrderedLikeAnyOther() {
        // Logits can saturate to ±∞; they still rank, unlike NaN.
        expectClose(rocAUC(scores: [-.infinity, .infinity, 0], labels: [false, true, false]), 1)
    }

    @Test func undefinedWithoutBothClasses() {
        #expect(rocAUC(scores: [], labels: []) == nil)
        #expect(prAUC(scores: [], labels: []) == nil)
        #expect(rocAUC(scores: [0.2, 0.7], labels: [true, true]) == nil)
        #expect(prAUC(scores: [0.2, 0.7], labels: [true, true]) == nil)
        #expect(rocAUC(scores: [0.2, 0.7], labels: [false, false]) == nil)
        #expect(prAUC(scores: [0.2, 0.7], labels: [false, false]) == nil)
    }

    @Test(arguments: [(UInt64(1), 3), (2, 20), (3, 1000), (4, 1)])
    func agreesWithPairwiseDefinitions(seed: UInt64, levels: Int) throws {
        var rng = SplitMix64(seed: seed)
        for count in [2, 5, 37, 300] {
            let (scores, labels) = randomScoredLabels(count: count, levels: levels, rng: &rng)
            let exact = pairwiseAUC(scores: scores, labels: labels)
            let ap = averagePrecisionByPositives(scores: scores, labels: labels)
            // Both oracles are nil on the same one-class draws as the functions under test.
            #expect((rocAUC(scores: scores, labels: labels) == nil) == (exact == nil))
            #expect((prAUC(scores: scores, labels: labels) == nil) == (ap == nil))
            if let exact { expectClose(rocAUC(scores: scores, labels: labels), exact, tolerance: 1e-12) }
            if let ap { expectClose(prAUC(scores: scores, labels: labels), ap, tolerance: 1e-12) }
        }
    }

    @Test func mismatchedLengthsStopTheProcess() async {
        await #expect(processExitsWith: .failure) {
            _ = rocAUC(scores: [0.1, 0.2], labels: [true])
        }
    }

    @Test func nanScoreStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            _ = rocAUC(scores: [0.1, .nan], labels: [true, false])
        }
    }
}
