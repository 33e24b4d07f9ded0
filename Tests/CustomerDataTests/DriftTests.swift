import Foundation
@testable import CustomerData
import Testing

@Suite("Drift: decile bins and the population stability index")
struct DriftTests {
    @Test("deciles of a uniform sample give ten equal bins; the same population has index 0")
    func uniformDeciles() {
        let values = (0..<1000).map { Float($0) }
        let bins = BinnedDistribution.fit(name: "x", values: values)
        #expect(bins.edges.count == 9)
        #expect(bins.fractions.allSatisfy { abs($0 - 0.1) < 1e-9 }, "\(bins.fractions)")
        var counts = [Int](repeating: 0, count: 10)
        for value in values { counts[bins.bin(of: Double(value))] += 1 }
        #expect(bins.stabilityIndex(counts: counts)! < 1e-12)
        // Everything moved up by a fifth of the range: a large shift.
        var shifted = [Int](repeating: 0, count: 10)
        for value in values { shifted[bins.bin(of: Double(value) + 200)] += 1 }
        #expect(bins.stabilityIndex(counts: shifted)! > 0.2)
        #expect(bins.stabilityIndex(counts: [Int](repeating: 0, count: 10)) == nil, "nothing counted, no index")
    }

    @Test("a feature that is 0 for 70% of customers: one bin for the zeros, deciles of the rest")
    func zeroInflated() {
        let values = [Float](repeating: 0, count: 700) + (0..<300).map { Float($0 + 1) }
        let bins = BinnedDistribution.fit(name: "x", values: values)
        #expect(bins.edges.first == 0)
        #expect(abs(bins.fractions[0] - 0.7) < 1e-9)
        #expect(bins.fractions.count == 11 && bins.fractions.dropFirst().allSatisfy { abs($0 - 0.03) < 1e-9 }, "\(bins.fractions)")
        #expect(Set(bins.edges).count == bins.edges.count, "no repeated edge: \(bins.edges)")
        // The non-zero values ten times larger: the zeros' bin is unchanged, the index still large.
        var counts = [Int](repeating: 0, count: bins.fractions.count)
        for value in values { counts[bins.bin(of: Double(value) * 10)] += 1 }
        #expect(bins.stabilityIndex(counts: counts)! > 0.2)
    }

    @Test("ties in the middle merge bins instead of repeating an edge")
    func tiedValues() {
        let values = (0..<300).map { Float($0) } + [Float](repeating: 500, count: 400) + (0..<300).map { Float(1000 + $0) }
        let bins = BinnedDistribution.fit(name: "x", values: values)
        #expect(Set(bins.edges).count == bins.edges.count, "no repeated edge: \(bins.edges)")
        #expect(bins.edges.contains(500))
        #expect(abs(bins.fractions.reduce(0, +) - 1) < 1e-9)
    }

    @Test("the index is Σ (a − e) ln(a / e) with empty bins floored, and a verdict at 0.1 and 0.2")
    func indexFormula() {
        let bins = BinnedDistribution(name: "x", edges: [1], fractions: [0.5, 0.5])
        let index = bins.stabilityIndex(counts: [80, 20])!
        #expect(abs(index - ((0.8 - 0.5) * log(0.8 / 0.5) + (0.2 - 0.5) * log(0.2 / 0.5))) < 1e-12)
        let empty = bins.stabilityIndex(counts: [100, 0])!
        #expect(abs(empty - ((1 - 0.5) * log(1 / 0.5) + (1e-4 - 0.5) * log(1e-4 / 0.5))) < 1e-12)
        #expect(DriftIndex(kind: .feature, name: "x", psi: 0.05).verdict == "stable")
        #expect(DriftIndex(kind: .feature, name: "x", psi: 0.15).verdict == "moderate shift")
        #expect(DriftIndex(kind: .feature, name: "x", psi: 0.25).verdict == "large shift")
    }
}
