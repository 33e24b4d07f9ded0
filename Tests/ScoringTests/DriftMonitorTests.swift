import CustomerData
@testable import ScoringService
import Testing

@Suite("Service drift monitor")
struct DriftMonitorTests {
    /// One feature binned at 0 (half the training values on each side), as are the input and scores.
    static let reference = DriftReference(
        population: "test",
        features: [BinnedDistribution(name: "f", edges: [0], fractions: [0.5, 0.5])],
        inputs: [BinnedDistribution(name: "history_periods", edges: [2], fractions: [0.5, 0.5])],
        scores: [BinnedDistribution(name: "churn_probability", edges: [0.5], fractions: [0.5, 0.5]),
                 BinnedDistribution(name: "expected_spend", edges: [10], fractions: [0.5, 0.5])])

    /// `customers` customers of 1 to 4 periods, feature value `value` in each, half of each
    /// score bin.
    static func counts(_ customers: Int, value: Float) -> DriftCounter {
        var counter = DriftCounter(reference: reference)
        let row = [Float](repeating: value, count: 4)
        for k in 0..<customers {
            counter.add(sequence: row, length: 1 + k % 4, churn: k % 2 == 0 ? 0.2 : 0.8, spend: k % 2 == 0 ? 5 : 20)
        }
        return counter
    }

    @Test("a shifted feature is reported once when it crosses, only after 100 customers, and again after it recovered")
    func crossing() {
        let monitor = DriftMonitor(threshold: 0.2, window: 400)
        // 60 customers all above 0: a large index, but too few customers to warn.
        var outcome = monitor.record(Self.counts(60, value: 1), step: 1)
        #expect(outcome.customers == 60 && outcome.crossed.isEmpty)
        #expect(outcome.indices.first { $0.name == "f" }!.psi > 0.2)
        outcome = monitor.record(Self.counts(60, value: 1), step: 1)
        #expect(outcome.crossed.map(\.name) == ["f"], "\(outcome.crossed)")
        outcome = monitor.record(Self.counts(10, value: 1), step: 1)
        #expect(outcome.crossed.isEmpty, "said once")
        // Balanced traffic brings it back under the threshold; a new shift is reported again.
        outcome = monitor.record(Self.counts(130, value: -1), step: 1)
        #expect(outcome.indices.first { $0.name == "f" }!.psi <= 0.2 && outcome.crossed.isEmpty)
        outcome = monitor.record(Self.counts(300, value: 1), step: 1)
        #expect(outcome.crossed.map(\.name) == ["f"])
        // The unshifted scores never cross.
        #expect(outcome.indices.filter { $0.kind == .score }.allSatisfy { $0.psi < 0.05 })
    }

    @Test("the indices cover the current window and the one before; another served step starts over")
    func windows() {
        let monitor = DriftMonitor(threshold: 0.2, window: 100)
        _ = monitor.record(Self.counts(100, value: 1), step: 1)    // fills window 1
        var outcome = monitor.record(Self.counts(50, value: -1), step: 1)
        #expect(outcome.customers == 150, "window 1 (full) and the current one")
        _ = monitor.record(Self.counts(50, value: -1), step: 1)    // window 2 full: window 1 drops out
        outcome = monitor.record(Self.counts(10, value: -1), step: 1)
        #expect(outcome.customers == 110)
        outcome = monitor.record(Self.counts(10, value: -1), step: 2)
        #expect(outcome.customers == 10, "a new model starts a new window")
    }
}
