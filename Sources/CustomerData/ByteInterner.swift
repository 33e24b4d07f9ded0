#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// A growable buffer of trivial values addressed by pointer.
///
/// The aggregation loop updates a random customer's counters per event; going through a
/// pointer avoids the uniqueness and bounds checks that a Swift array stored in a class pays
/// on every write. Growth goes through `realloc`, which for large buffers remaps pages
/// instead of copying them, so doubling never holds the old and the new copy at once.
struct GrowableBuffer<Element: BitwiseCopyable> {
    private(set) var pointer: UnsafeMutablePointer<Element>
    private(set) var count = 0
    private(set) var capacity: Int
    let fill: Element

    init(capacity: Int = 1024, fill: Element) {
        self.capacity = max(capacity, 16)
        self.fill = fill
        pointer = GrowableBuffer.reallocate(nil, capacity: self.capacity)
    }

    private static func reallocate(_ old: UnsafeMutablePointer<Element>?, capacity: Int) -> UnsafeMutablePointer<Element> {
        precondition(MemoryLayout<Element>.alignment <= 16)
        guard let raw = realloc(old.map { UnsafeMutableRawPointer($0) }, capacity * MemoryLayout<Element>.stride) else {
            fatalError("out of memory growing a buffer to \(capacity) elements of \(MemoryLayout<Element>.stride) bytes")
        }
        return raw.bindMemory(to: Element.self, capacity: capacity)
    }

    func free() { Glibc.free(UnsafeMutableRawPointer(pointer)) }

    /// Appends `n` copies of `fill`, returning the index of the first.
    @inline(__always)
    mutating func grow(by n: Int) -> Int {
        let first = count
        if count + n > capacity {
            var newCapacity = capacity * 2
            while newCapacity < count + n { newCapacity *= 2 }
            pointer = GrowableBuffer.reallocate(pointer, capacity: newCapacity)
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

    /// Gives back the memory beyond `count` (after the last append).
    mutating func shrinkToFit() {
        let wanted = max(count, 16)
        guard wanted < capacity else { return }
        pointer = GrowableBuffer.reallocate(pointer, capacity: wanted)
        capacity = wanted
    }
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
/// The bytes of every id live once in a single arena, addressed by 32-bit end offsets (so
/// the distinct ids of one interner may total at most 4 GiB). Lookups go through an
/// open-addressing table with linear probing whose 64-bit slots hold the index and 32 bits of
/// the hash, so a probe compares bytes only on a likely match and a rehash needs no bytes at
/// all. About 4 + 8/load bytes per id on top of its bytes; `dropLookup()` frees the table
/// once no more ids will be added.
final class ByteInterner {
    // Touched once or more per event: unchecked exclusivity keeps the runtime's access
    // tracking (a third of the parse time when checked) out of the loop. Single-threaded use only.
    @exclusivity(unchecked) private var arena: GrowableBuffer<UInt8>
    /// ends[i] is the arena offset just past id i; ends[-1] is taken as 0 (ends[0] is 0, ids start at 1).
    @exclusivity(unchecked) private var ends: GrowableBuffer<UInt32>
    /// 0 for empty, else (hash low 32 bits) << 32 | (index + 1).
    @exclusivity(unchecked) private var slots: UnsafeMutablePointer<UInt64>?
    @exclusivity(unchecked) private var mask: Int
    @exclusivity(unchecked) private(set) var count = 0

    init() {
        arena = GrowableBuffer(capacity: 1 << 16, fill: 0)
        ends = GrowableBuffer(capacity: 1 << 12, fill: 0)
        ends.append(0)
        mask = (1 << 12) - 1
        slots = ByteInterner.table(mask + 1)
    }

    deinit {
        arena.free()
        ends.free()
        if let slots { Glibc.free(slots) }
    }

    private static func table(_ size: Int) -> UnsafeMutablePointer<UInt64> {
        // calloc: a large table comes zeroed from fresh pages, only touched slots become resident.
        guard let raw = calloc(size, MemoryLayout<UInt64>.stride) else { fatalError("out of memory for an id table of \(size) slots") }
        return raw.bindMemory(to: UInt64.self, capacity: size)
    }

    @inline(__always) private func start(_ index: Int) -> Int { Int(ends[index]) }
    @inline(__always) private func length(_ index: Int) -> Int { Int(ends[index + 1]) - Int(ends[index]) }

    /// The index of the id, adding it when it is new.
    @inline(__always)
    func intern(_ p: UnsafeRawPointer, _ n: Int) -> Int32 {
        let slots = self.slots!
        let h = hashIdentifier(p, n)
        let tag = h << 32
        var slot = Int(truncatingIfNeeded: h) & mask
        while true {
            let entry = slots[slot]
            if entry == 0 { break }
            if entry & 0xFFFF_FFFF_0000_0000 == tag {
                let i = Int(truncatingIfNeeded: entry & 0xFFFF_FFFF) - 1
                if length(i) == n && memcmpBytes(arena.pointer + start(i), p, n) { return Int32(i) }
            }
            slot = (slot + 1) & mask
        }
        let index = count
        let at = arena.grow(by: n)
        precondition(at + n <= Int(UInt32.max), "more than 4 GiB of distinct ids")
        if n > 0 { UnsafeMutableRawPointer(arena.pointer + at).copyMemory(from: p, byteCount: n) }
        ends.append(UInt32(at + n))
        slots[slot] = tag | UInt64(index + 1)
        count += 1
        // Keep the load under three quarters; the hash tag in the slot keeps probes cheap.
        if count * 4 > (mask + 1) * 3 { rehash() }
        return Int32(index)
    }

    private func rehash() {
        let old = slots!, oldSize = mask + 1
        let newSize = oldSize * 2
        let fresh = ByteInterner.table(newSize)
        mask = newSize - 1
        for k in 0..<oldSize where old[k] != 0 {
            // The tag is the hash's low 32 bits, which is all a table of up to 2³² slots uses.
            var slot = Int(truncatingIfNeeded: old[k] >> 32) & mask
            while fresh[slot] != 0 { slot = (slot + 1) & mask }
            fresh[slot] = old[k]
        }
        Glibc.free(old)
        slots = fresh
    }

    /// Frees the lookup table: ids keep their indices and bytes, but `intern` may no longer be called.
    func dropLookup() {
        if let slots { Glibc.free(slots) }
        slots = nil
        arena.shrinkToFit()
        ends.shrinkToFit()
    }

    /// The bytes of id `index`, valid until the next `intern`.
    @inline(__always)
    func bytes(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: arena.pointer + start(index), count: length(index))
    }

    func string(_ index: Int) -> String {
        String(decoding: bytes(index), as: UTF8.self)
    }

    /// Whether id `a` sorts before id `b`: shorter ids first, then bytewise, so unpadded
    /// integer ids come out in numeric order and the order never depends on the input's.
    func precedes(_ a: Int, _ b: Int) -> Bool {
        let la = length(a)
        let lb = length(b)
        if la != lb { return la < lb }
        let pa = arena.pointer + start(a)
        let pb = arena.pointer + start(b)
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
