import BitMixing

/// Bootstrap resamples that every rank can draw for its own customers without asking the others:
/// customer i appears w(i, b) ~ Poisson(1) times in resample b (the Poisson bootstrap of Hanley
/// & MacGibbon, and of Chamandy et al. for data split over machines), with w a hash of the
/// customer's id and b. Resample b is the same multiset of customers on 1 or 32 ranks, so the
/// intervals do not depend on the world size, and a metric over a resample merges like the
/// metric itself.
public struct PoissonResampling: Sendable {
    public let resamples: Int
    public let seed: UInt64
    /// P(w ≤ k) scaled to 2⁶⁴, k = 0, 1, …; a draw above the last is the last index + 1.
    private let thresholds: [UInt64]

    public init(resamples: Int = 1000, seed: UInt64 = 0x5EED) {
        precondition(resamples >= 1, "at least one resample")
        self.resamples = resamples
        self.seed = seed
        var cumulative = 0.0
        var term = 0.36787944117144233  // e⁻¹ = P(w = 0)
        var thresholds: [UInt64] = []
        for k in 0..<16 {
            cumulative += term
            term /= Double(k + 1)
            thresholds.append(cumulative >= 1 ? UInt64.max : UInt64(cumulative * 18_446_744_073_709_551_616.0))
        }
        self.thresholds = thresholds
    }

    /// How many times customer `id` is drawn in resample `resample` (1-based; resample 0 is the
    /// data itself, where every customer counts once).
    @inline(__always)
    public func weight(id: Int64, resample: Int) -> Double {
        if resample == 0 { return 1 }
        let draw = SplitMix64.mix(seed ^ SplitMix64.mix(UInt64(bitPattern: id) &* SplitMix64.increment &+ UInt64(resample)))
        var k = 0
        while k < thresholds.count, draw >= thresholds[k] { k += 1 }
        return Double(k)
    }
}
