import Testing
import ModelMetrics
import TestSupport

@Suite struct HistogramAUCStateTests {
    @Test func sameBinPairsCountAsTiesByHand() {
        var state = HistogramAUCState(binCount: 10)
        // Bins: negative 0.05 → 0; positive 0.15 and negative 0.12 → 1; positive 0.95 → 9.
        state.add(scores: [0.05, 0.15, 0.12, 0.95], labels: [false, true, false, true])
        // Of 4 pairs only (0.15, 0.12) shares a bin and is scored ½ instead of its exact 1.
        expectClose(state.rocAUC, 3.5 / 4)
        expectClose(state.aucErrorBound, 0.5 * 1 / 4)
        #expect(rocAUC(scores: [0.05, 0.15, 0.12, 0.95], labels: [false, true, false, true]) == 1)
    }

    @Test func boundIsReachedWhenOneBinHidesAPerfectRanking() {
        var state = HistogramAUCState(binCount: 4)
        state.add(scores: [0.51, 0.52, 0.6, 0.7], labels: [false, false, true, true])
        expectClose(state.rocAUC, 0.5)
        expectClose(state.aucErrorBound, 0.5)
        expectClose(rocAUC(scores: [0.51, 0.52, 0.6, 0.7], labels: [false, false, true, true]), 1)
    }

    @Test func binEdges() {
        let state = HistogramAUCState(binCount: 10)
        #expect(state.bin(of: 0) == 0)
        #expect(state.bin(of: 0.0999) == 0)
        #expect(state.bin(of: 0.5) == 5)
        #expect(state.bin(of: 0.9999) == 9)
        // 1.0 would be bin 10; it belongs to the last bin, not past the end.
        #expect(state.bin(of: 1) == 9)
        #expect(HistogramAUCState().binCount == 10_000)
    }

    @Test func undefinedWithoutBothClasses() {
        var state = HistogramAUCState()
        #expect(state.rocAUC == nil)
        #expect(state.aucErrorBound == nil)
        state.add(score: 0.3, label: true)
        state.add(score: 0.9, label: true)
        #expect(state.rocAUC == nil)
        #expect(state.aucErrorBound == nil)
        state.add(score: 0.2, label: false)
        expectClose(state.rocAUC, 1)
    }

    @Test(arguments: [
        (UInt64(51), 10_000, nil as Int?), (52, 10_000, 400), (53, 100, nil), (54, 20, nil), (55, 7, 13),
    ])
    func staysWithinItsBoundOfTheExactAUC(seed: UInt64, binCount: Int, levels: Int?) throws {
        var rng = SplitMix64(seed: seed)
        for count in [10, 200, 5000] {
            let (scores, labels) = randomScoredLabels(count: count, levels: levels, rng: &rng)
            var state = HistogramAUCState(binCount: binCount)
            state.add(scores: scores, labels: labels)
            let exact = try #require(rocAUC(scores: scores, labels: labels))
            let approximate = try #require(state.rocAUC)
            let bound = try #require(state.aucErrorBound)
            // The slack only absorbs rounding in the two divisions.
            #expect(abs(approximate - exact) <= bound + 1e-12, "|\(approximate) − \(exact)| > \(bound)")
            if binCount <= 20 && count >= 200 {
                // Coarse bins must produce a bound that is actually exercised.
                #expect(bound > 0.001)
            }
        }
    }

    @Test func fineBinsGiveATightBoundOnContinuousScores() throws {
        var rng = SplitMix64(seed: 57)
        let (scores, labels) = randomScoredLabels(count: 20_000, rng: &rng)
        var state = HistogramAUCState()
        state.add(scores: scores, labels: labels)
        let bound = try #require(state.aucErrorBound)
        // About 1/(2·10,000) of the pairs' weight per bin; far below any difference that matters.
        #expect(bound < 1e-3)
        expectClose(state.rocAUC, try #require(rocAUC(scores: scores, labels: labels)), tolerance: bound + 1e-12)
    }

    @Test func mergeAndPackedSumEqualTheConcatenatedData() throws {
        var rng = SplitMix64(seed: 59)
        let (scores, labels) = randomScoredLabels(count: 3000, rng: &rng)
        var whole = HistogramAUCState(binCount: 256)
        whole.add(scores: scores, labels: labels)

        let ranks = unevenShards(count: scores.count, parts: 4, rng: &rng).map { shard in
            var state = HistogramAUCState(binCount: 256)
            state.add(scores: Array(scores[shard]), labels: Array(labels[shard]))
            return state
        }
        var merged = HistogramAUCState(binCount: 256)
        for state in ranks { merged.merge(state) }
        let reduced = try #require(ranks[0].rebuilt(fromPacked: allreduceSum(ranks.map(\.packed))))

        // Histograms are counts, so merging is exact: equal states, equal AUC to the last bit.
        #expect(merged == whole)
        #expect(reduced == whole)
        #expect(reduced.rocAUC == whole.rocAUC)
        #expect(reduced.positiveCount + reduced.negativeCount == scores.count)
    }

    @Test func packedRoundTripRecoversTheBinCount() throws {
        var state = HistogramAUCState(binCount: 3)
        state.add(scores: [0.1, 0.5, 0.9, 0.95], labels: [false, true, true, false])
        #expect(state.packed == [0, 1, 1, 1, 0, 1])
        let rebuilt = try #require(HistogramAUCState(packed: state.packed))
        #expect(rebuilt.binCount == 3)
        #expect(rebuilt == state)
        #expect(HistogramAUCState().packed.count == 20_000)
    }

    @Test func invalidPackedArraysAreRejected() {
        #expect(HistogramAUCState(packed: []) == nil)
        #expect(HistogramAUCState(packed: [1, 2, 3]) == nil)
        #expect(HistogramAUCState(packed: [1, -2]) == nil)
        #expect(HistogramAUCState(packed: [1, .infinity]) == nil)
        #expect(HistogramAUCState(packed: [1, 2]) != nil)
        #expect(HistogramAUCState(binCount: 4).rebuilt(fromPacked: [1, 2]) == nil)
    }

    @Test func scoreOutsideTheUnitIntervalStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var state = HistogramAUCState()
            state.add(score: -0.1, label: false)
        }
    }
}
