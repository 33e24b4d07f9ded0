import BitMixing

/// What a random stream is used for; part of the stream's key so that, say, dropout masks and
/// shuffles never share numbers.
public enum RandomPurpose: UInt64, Sendable {
    case initialisation = 1, shuffle, dropout, neighbourSampling, split, synthesis
}

/// A seeded, splittable generator whose stream depends only on (seed, purpose, epoch, step, rank).
///
/// SplitMix64: the key is hashed into the 64-bit state with the generator's own finaliser, so a
/// resumed run recreates exactly the stream of the step it resumes at without replaying any.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64, purpose: RandomPurpose, epoch: Int = 0, step: Int = 0, rank: Int = 0) {
        var key = Self.mix(seed ^ 0x6A09_E667_F3BC_C908)
        key = Self.mix(key ^ purpose.rawValue)
        key = Self.mix(key ^ UInt64(truncatingIfNeeded: epoch))
        key = Self.mix(key ^ UInt64(truncatingIfNeeded: step))
        key = Self.mix(key ^ UInt64(truncatingIfNeeded: rank))
        state = key
    }

    /// Restores a generator from a saved `state` (checkpoints store it).
    public init(state: UInt64) { self.state = state }

    /// A child stream keyed by `index`, independent of this one and of its other children.
    public func split(_ index: Int) -> SeededRandom {
        SeededRandom(state: Self.mix(state ^ Self.mix(UInt64(truncatingIfNeeded: index) &+ SplitMix64.increment)))
    }

    @inline(__always)
    static func mix(_ value: UInt64) -> UInt64 { SplitMix64.mix(value) }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= SplitMix64.increment
        return SplitMix64.mix(state)
    }

    /// Uniform in [0, 1) with 24 random bits, every value exactly representable.
    @inline(__always)
    public mutating func nextUnitFloat() -> Float {
        Float(next() >> 40) * (1.0 / 16_777_216.0)
    }

    /// Uniform in [low, high).
    @inline(__always)
    public mutating func nextFloat(in low: Float, _ high: Float) -> Float {
        low + (high - low) * nextUnitFloat()
    }

    /// Uniform integer in 0..<bound (bound > 0), without modulo bias (Lemire's method).
    @inline(__always)
    public mutating func nextIndex(below bound: Int) -> Int {
        let range = UInt64(bound)
        var product = next().multipliedFullWidth(by: range)
        if product.low < range {
            let threshold = (0 &- range) % range
            while product.low < threshold { product = next().multipliedFullWidth(by: range) }
        }
        return Int(product.high)
    }

    /// Fisher–Yates shuffle, reproducible for a given stream.
    public mutating func shuffle<C: MutableCollection & RandomAccessCollection>(_ collection: inout C) where C.Index == Int {
        var index = collection.count - 1
        while index > 0 {
            let other = nextIndex(below: index + 1)
            collection.swapAt(collection.startIndex + index, collection.startIndex + other)
            index -= 1
        }
    }
}
