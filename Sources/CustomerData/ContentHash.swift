/// A 64-bit streaming content hash for dataset files and customer ids.
///
/// Not a cryptographic hash: it guards against truncation, bit rot and partial copies, not
/// against an adversary. Each 8-byte little-endian word is folded in with a multiply and an
/// xor-shift, which runs at several GB/s (verifying a dataset must not cost more than reading
/// it); the length is mixed in at the end so that trailing zero bytes change the value.
public struct ContentHasher: Sendable {
    private var state: UInt64
    private var length: UInt64 = 0
    private var tail: UInt64 = 0
    private var tailCount = 0

    public init(seed: UInt64 = 0) { state = 0x2545_F491_4F6C_DD1D ^ seed }

    @inline(__always)
    private static func fold(_ state: UInt64, _ word: UInt64) -> UInt64 {
        var h = (state ^ word) &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 29
        return h
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        length &+= UInt64(bytes.count)
        var index = 0
        let count = bytes.count
        // Finish a word left over from the previous call before taking the fast path.
        while tailCount > 0 && tailCount < 8 && index < count {
            tail |= UInt64(base.load(fromByteOffset: index, as: UInt8.self)) << (8 * UInt64(tailCount))
            tailCount += 1
            index += 1
        }
        if tailCount == 8 {
            state = Self.fold(state, tail)
            tail = 0
            tailCount = 0
        }
        var h = state
        while index + 8 <= count {
            h = Self.fold(h, UInt64(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt64.self)))
            index += 8
        }
        state = h
        while index < count {
            tail |= UInt64(base.load(fromByteOffset: index, as: UInt8.self)) << (8 * UInt64(tailCount))
            tailCount += 1
            index += 1
        }
    }

    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    public mutating func update(_ string: String) {
        var copy = string
        copy.withUTF8 { update(UnsafeRawBufferPointer($0)) }
    }

    /// The hash of everything fed so far; the hasher can keep going afterwards.
    public func finalize() -> UInt64 {
        var h = state
        if tailCount > 0 { h = Self.fold(h, tail ^ 0xFF) }
        h = Self.fold(h, length)
        h ^= h >> 32
        h &*= 0xD6E8_FEB8_6659_FD93
        h ^= h >> 32
        return h
    }

    /// Hashes one buffer in a single call.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        var hasher = ContentHasher(seed: seed)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// Sixteen lower-case hex digits, as stored in manifests.
    public static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
