/// A growable buffer of trivial values addressed by pointer.
///
/// The aggregation loop updates a random customer's counters per event; going through a
/// pointer avoids the uniqueness and bounds checks that a Swift array stored in a class pays
/// on every write.
struct GrowableBuffer<Element: BitwiseCopyable> {
    private(set) var pointer: UnsafeMutablePointer<Element>
    private(set) var count = 0
    private(set) var capacity: Int
    let fill: Element

    init(capacity: Int = 1024, fill: Element) {
        self.capacity = max(capacity, 16)
        self.fill = fill
        pointer = .allocate(capacity: self.capacity)
    }

    func free() { pointer.deallocate() }

    /// Appends `n` copies of `fill`, returning the index of the first.
    @inline(__always)
    mutating func grow(by n: Int) -> Int {
        let first = count
        if count + n > capacity {
            var newCapacity = capacity * 2
            while newCapacity < count + n { newCapacity *= 2 }
            let fresh = UnsafeMutablePointer<Element>.allocate(capacity: newCapacity)
            fresh.update(from: pointer, count: count)
            pointer.deallocate()
            pointer = fresh
            capacity = newCapacity
        }
        (pointer + count).initialize(repeating: fill, count: n)
        count += n
        return first
    }

    @inline(__always)
    mutating func append(_ value: Element) {
        let index = grow(by: 1)
        pointer[index] = value
    }

    @inline(__always)
    subscript(index: Int) -> Element {
        get { pointer[index] }
        nonmutating set { pointer[index] = newValue }
    }

    mutating func removeAll() { count = 0 }
}

/// Hash of a short byte string (an id): whole words at a time, then the tail.
@inline(__always)
func hashIdentifier(_ p: UnsafeRawPointer, _ n: Int, seed: UInt64 = 0) -> UInt64 {
    var h: UInt64 = 0x9AE1_6A3B_2F90_404F ^ seed ^ UInt64(truncatingIfNeeded: n)
    var i = 0
    while i + 8 <= n {
        h = (h ^ p.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 31
        i += 8
    }
    if i < n {
        var word: UInt64 = 0
        var shift: UInt64 = 0
        while i < n {
            word |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << shift
            shift += 8
            i += 1
        }
        h = (h ^ word) &* 0x9E37_79B9_7F4A_7C15
    }
    h ^= h >> 29
    h &*= 0xBF58_476D_1CE4_E5B9
    return h ^ (h >> 32)
}

/// Maps byte strings (customer or product ids) to dense indices in first-seen order.
///
/// Open addressing with linear probing over a power-of-two table; the bytes of every id live
/// once in a single arena, so a million ids cost a few allocations rather than a million
/// Strings.
final class ByteInterner {
    // Touched once or more per event: unchecked exclusivity keeps the runtime's access
    // tracking (a third of the parse time when checked) out of the loop. Single-threaded use only.
    @exclusivity(unchecked) private var arena: GrowableBuffer<UInt8>
    @exclusivity(unchecked) private var starts: GrowableBuffer<Int>
    @exclusivity(unchecked) private var hashes: GrowableBuffer<UInt64>
    @exclusivity(unchecked) private var slots: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var mask: Int

    var count: Int { hashes.count }

    init() {
        arena = GrowableBuffer(capacity: 1 << 16, fill: 0)
        starts = GrowableBuffer(capacity: 1 << 12, fill: 0)
        starts.append(0)
        hashes = GrowableBuffer(capacity: 1 << 12, fill: 0)
        mask = (1 << 12) - 1
        slots = .allocate(capacity: mask + 1)
        slots.initialize(repeating: -1, count: mask + 1)
    }

    deinit {
        arena.free()
        starts.free()
        hashes.free()
        slots.deallocate()
    }

    /// The index of the id, adding it when it is new.
    @inline(__always)
    func intern(_ p: UnsafeRawPointer, _ n: Int) -> Int32 {
        let h = hashIdentifier(p, n)
        var slot = Int(truncatingIfNeeded: h) & mask
        while true {
            let index = slots[slot]
            if index < 0 { break }
            let i = Int(index)
            if hashes[i] == h {
                let start = starts[i]
                if starts[i + 1] - start == n && memcmpBytes(arena.pointer + start, p, n) { return index }
            }
            slot = (slot + 1) & mask
        }
        let index = Int32(count)
        let start = arena.grow(by: n)
        if n > 0 { UnsafeMutableRawPointer(arena.pointer + start).copyMemory(from: p, byteCount: n) }
        starts.append(start + n)
        hashes.append(h)
        slots[slot] = index
        // Keep the load under one half so probes stay short.
        if count * 2 > mask + 1 { rehash() }
        return index
    }

    /// The index of the id, or nil when it was never interned.
    func find(_ p: UnsafeRawPointer, _ n: Int) -> Int32? {
        let h = hashIdentifier(p, n)
        var slot = Int(truncatingIfNeeded: h) & mask
        while true {
            let index = slots[slot]
            if index < 0 { return nil }
            let i = Int(index)
            if hashes[i] == h && starts[i + 1] - starts[i] == n && memcmpBytes(arena.pointer + starts[i], p, n) {
                return index
            }
            slot = (slot + 1) & mask
        }
    }

    private func rehash() {
        let newSize = (mask + 1) * 2
        slots.deallocate()
        slots = .allocate(capacity: newSize)
        slots.initialize(repeating: -1, count: newSize)
        mask = newSize - 1
        for i in 0..<count {
            var slot = Int(truncatingIfNeeded: hashes[i]) & mask
            while slots[slot] >= 0 { slot = (slot + 1) & mask }
            slots[slot] = Int32(i)
        }
    }

    /// The bytes of id `index`, valid until the next `intern`.
    func bytes(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: arena.pointer + starts[index], count: starts[index + 1] - starts[index])
    }

    func string(_ index: Int) -> String {
        String(decoding: bytes(index), as: UTF8.self)
    }

    /// Whether id `a` sorts before id `b`: shorter ids first, then bytewise, so unpadded
    /// integer ids come out in numeric order and the order never depends on the input's.
    func precedes(_ a: Int, _ b: Int) -> Bool {
        let la = starts[a + 1] - starts[a]
        let lb = starts[b + 1] - starts[b]
        if la != lb { return la < lb }
        let pa = arena.pointer + starts[a]
        let pb = arena.pointer + starts[b]
        for k in 0..<la where pa[k] != pb[k] { return pa[k] < pb[k] }
        return false
    }
}

@inline(__always)
func memcmpBytes(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
        i += 8
    }
    while i < n {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}
