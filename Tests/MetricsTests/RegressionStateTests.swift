import Testing
import ModelMetrics
import TestSupport

@Suite struct RegressionStateTests {
    @Test func errorsByHand() {
        var state = RegressionState()
        // Errors 1, 0, −3: squared 1 + 0 + 9 = 10, absolute 1 + 0 + 3 = 4.
        state.add(predictions: [2, 3, 5], targets: [1, 3, 8])
        #expect(state.count == 3)
        expectClose(state.meanSquaredError, 10.0 / 3.0)
        expectClose(state.rmse, (10.0 / 3.0).squareRoot())
        expectClose(state.mae, 4.0 / 3.0)
    }

    @Test func perfectPredictionsHaveZeroError() {
        var state = RegressionState()
        state.add(prediction: 12.5, target: 12.5)
        expectClose(state.rmse, 0)
        expectClose(state.mae, 0)
    }

    @Test func emptyStateHasNoMetrics() {
        let state = RegressionState()
        #expect(state.meanSquaredError == nil)
        #expect(state.rmse == nil)
        #expect(state.mae == nil)
    }

    @Test func mergeAndPackedSumEqualTheConcatenatedData() throws {
        var rng = SplitMix64(seed: 31)
        let targets = (0..<400).map { _ in Double.random(in: 0...500, using: &rng) }
        let predictions = targets.map { $0 + Double.random(in: -40...40, using: &rng) }
        var whole = RegressionState()
        whole.add(predictions: predictions, targets: targets)

        let ranks = unevenShards(count: targets.count, parts: 3, rng: &rng).map { shard in
            var state = RegressionState()
            state.add(predictions: Array(predictions[shard]), targets: Array(targets[shard]))
            return state
        }
        let merged = ranks.dropFirst().reduce(ranks[0]) { $0.merging($1) }
        let reduced = try #require(RegressionState(packed: allreduceSum(ranks.map(\.packed))))
        let rmse = try #require(whole.rmse)
        let mae = try #require(whole.mae)

        for combined in [merged, reduced] {
            #expect(combined.count == whole.count)
            expectClose(combined.rmse, rmse, tolerance: 1e-9)
            expectClose(combined.mae, mae, tolerance: 1e-9)
        }
    }

    @Test func packedRoundTripIsExact() {
        var state = RegressionState()
        state.add(predictions: [1.25, -3, 7], targets: [0.5, 2, 7.125])
        #expect(state.packed.count == RegressionState.packedCount)
        #expect(RegressionState(packed: state.packed) == state)
        #expect(state.rebuilt(fromPacked: state.packed) == state)
    }

    @Test func invalidPackedArraysAreRejected() {
        #expect(RegressionState(packed: [1, 2]) == nil)
        #expect(RegressionState(packed: [1.5, 2, 1]) == nil)
        #expect(RegressionState(packed: [1, -2, 1]) == nil)
        #expect(RegressionState(packed: [1, 2, .nan]) == nil)
        #expect(RegressionState(packed: [2, 8, 4]) != nil)
    }

    @Test func nonFinitePredictionStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var state = RegressionState()
            state.add(prediction: .nan, target: 1)
        }
    }
}
