/// SplitMix64 (Steele, Lea and Flood): a 64-bit state stepped by the golden ratio and a
/// finaliser that mixes every bit. The one implementation of the generator and its finaliser
/// behind the training streams, bootstrap resampling, samples and test cases, so every rank
/// and machine draws the same numbers.
@frozen
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    @inlinable
    public init(seed: UInt64) { state = seed }

    @inlinable @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= SplitMix64.increment
        return SplitMix64.mix(state)
    }

    /// The step between states: 2^64 divided by the golden ratio, odd, so the period is 2^64.
    public static let increment: UInt64 = 0x9E37_79B9_7F4A_7C15

    /// The finaliser: neighbouring inputs get unrelated outputs.
    @inlinable @inline(__always)
    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// 64-bit FNV-1a (Fowler, Noll, Vo): the checksum ranks compare to agree on layouts,
/// configurations, call arguments and parameters.
@frozen
public struct FNV1a: Sendable {
    /// The offset basis, then each input mixed in.
    @usableFromInline
    internal var state: UInt64 = 0xcbf2_9ce4_8422_2325
    public var value: UInt64 { state }

    @inlinable
    public init() {}

    @inlinable @inline(__always)
    public mutating func combine(byte: UInt8) {
        state = (state ^ UInt64(byte)) &* 0x100_0000_01b3
    }

    public mutating func combine<Bytes: Sequence>(bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes { combine(byte: byte) }
    }

    /// The eight bytes of `word`, least significant first.
    @inlinable
    public mutating func combine(littleEndianBytesOf word: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { combine(byte: UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
    }

    /// A whole word in one step: FNV-1a's shape on words instead of bytes, eight times fewer
    /// multiplications for long buffers whose checksum only needs to differ when a bit does.
    @inlinable @inline(__always)
    public mutating func combine(word: UInt64) {
        state = (state ^ word) &* 0x100_0000_01b3
    }
}
