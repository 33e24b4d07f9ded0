#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import CMemoryHints

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

/// One slot of `ByteInterner`'s lookup table: the id's first 8 bytes (zero-padded) and
/// `meta` = 16 hash bits << 48 | length << 32 | (index + 1), 0 when empty.
struct InternerSlot {
    var prefix: UInt64
    var meta: UInt64
}

/// Maps byte strings (customer or product ids) to dense indices in first-seen order.
///
/// The bytes of every id live once in a single arena, addressed by 32-bit end offsets (so
/// the distinct ids of one interner may total at most 4 GiB). Lookups go through an
/// open-addressing table with linear probing whose 16-byte slots hold the id's first 8 bytes,
/// its length, 16 bits of its hash and its index: an id of up to 8 bytes (most customer ids)
/// is found, or known new, from the slot alone. Reading the arena on every lookup, as an
/// earlier 8-byte slot did, cost two more cache misses per row of a date-ordered file. About
/// 4 + 16/load bytes per id on top of its bytes; `dropLookup()` frees the table once no more
/// ids will be added.
final class ByteInterner {
    // Touched once or more per event: unchecked exclusivity keeps the runtime's access
    // tracking (a third of the parse time when checked) out of the loop. Single-threaded use only.
    @exclusivity(unchecked) private var arena: GrowableBuffer<UInt8>
    /// ends[i] is the arena offset just past id i; ends[-1] is taken as 0 (ends[0] is 0, ids start at 1).
    @exclusivity(unchecked) private var ends: GrowableBuffer<UInt32>
    @exclusivity(unchecked) private var slots: UnsafeMutablePointer<InternerSlot>?
    @exclusivity(unchecked) private var mask: Int
    @exclusivity(unchecked) private(set) var count = 0

    /// `expectedIDs` sizes the first allocation (a power of two is used); the partitions of a
    /// large import start small, since there are hundreds of them.
    init(expectedIDs: Int = 1 << 12) {
        var size = 16
        while size < expectedIDs { size *= 2 }
        arena = GrowableBuffer(capacity: size * 16, fill: 0)
        ends = GrowableBuffer(capacity: size, fill: 0)
        ends.append(0)
        mask = size - 1
        slots = ByteInterner.table(mask + 1)
    }

    deinit {
        arena.free()
        ends.free()
        if let slots { Glibc.free(slots) }
    }

    private static func table(_ size: Int) -> UnsafeMutablePointer<InternerSlot> {
        // calloc: a large table comes zeroed from fresh pages, only touched slots become resident.
        guard let raw = calloc(size, MemoryLayout<InternerSlot>.stride) else { fatalError("out of memory for an id table of \(size) slots") }
        return raw.bindMemory(to: InternerSlot.self, capacity: size)
    }

    @inline(__always) private func start(_ index: Int) -> Int { Int(ends[index]) }
    @inline(__always) private func length(_ index: Int) -> Int { Int(ends[index + 1]) - Int(ends[index]) }

    /// The first min(n, 8) bytes of an id as a little-endian word, zero-padded.
    @inline(__always)
    private static func prefix(_ p: UnsafeRawPointer, _ n: Int) -> UInt64 {
        if n >= 8 { return p.loadUnaligned(as: UInt64.self) }
        var word: UInt64 = 0
        for i in 0..<n { word |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << UInt64(i &* 8) }
        return word
    }

    /// The slot's meta word without the index, for an id of `n` bytes with hash `h`. Lengths
    /// from 65,535 up share one value; their matches compare the stored length too.
    @inline(__always)
    private static func key(_ h: UInt64, _ n: Int) -> UInt64 { (h >> 32) << 48 | UInt64(min(n, 0xFFFF)) << 32 }

    /// Asks for the slot where a lookup of an id with hash `h` starts.
    @inline(__always)
    func prefetchSlot(hash h: UInt64) {
        clm_prefetch_write(slots! + (Int(truncatingIfNeeded: h) & mask))
    }

    /// The index of the id, adding it when it is new.
    @inline(__always)
    func intern(_ p: UnsafeRawPointer, _ n: Int) -> Int32 {
        intern(p, n, hash: hashIdentifier(p, n))
    }

    /// `intern` with the id's `hashIdentifier` already computed (the partitioned importer
    /// hashes each id once, to pick its partition).
    @inline(__always)
    func intern(_ p: UnsafeRawPointer, _ n: Int, hash h: UInt64) -> Int32 {
        let slots = self.slots!
        let key = Self.key(h, n)
        let prefix = Self.prefix(p, n)
        var slot = Int(truncatingIfNeeded: h) & mask
        while true {
            let entry = slots[slot]
            if entry.meta == 0 { break }
            if entry.meta & 0xFFFF_FFFF_0000_0000 == key && entry.prefix == prefix {
                let i = Int(truncatingIfNeeded: entry.meta & 0xFFFF_FFFF) - 1
                if n <= 8 || ((n < 0xFFFF || length(i) == n) && memcmpBytes(arena.pointer + start(i) + 8, p + 8, n - 8)) {
                    return Int32(i)
                }
            }
            slot = (slot + 1) & mask
        }
        let index = count
        let at = arena.grow(by: n)
        precondition(at + n <= Int(UInt32.max), "more than 4 GiB of distinct ids")
        if n > 0 { UnsafeMutableRawPointer(arena.pointer + at).copyMemory(from: p, byteCount: n) }
        ends.append(UInt32(at + n))
        slots[slot] = InternerSlot(prefix: prefix, meta: key | UInt64(index + 1))
        count += 1
        // Keep the load under three quarters; the slot's prefix and hash bits keep probes cheap.
        if count * 4 > (mask + 1) * 3 { rehash() }
        return Int32(index)
    }

    /// Doubles the table. The slots keep only 16 hash bits, so positions come from hashing the
    /// ids again, read in index order from the arena (sequential, unlike the slots).
    private func rehash() {
        let newSize = (mask + 1) * 2
        Glibc.free(slots!)
        let fresh = ByteInterner.table(newSize)
        mask = newSize - 1
        for index in 0..<count {
            let p = UnsafeRawPointer(arena.pointer + start(index)), n = length(index)
            let h = hashIdentifier(p, n)
            var slot = Int(truncatingIfNeeded: h) & mask
            while fresh[slot].meta != 0 { slot = (slot + 1) & mask }
            fresh[slot] = InternerSlot(prefix: Self.prefix(p, n), meta: Self.key(h, n) | UInt64(index + 1))
        }
        slots = fresh
    }

    /// Frees the lookup table: ids keep their indices and bytes, but `intern` may no longer be called.
    func dropLookup() {
        if let slots { Glibc.free(slots) }
        slots = nil
        arena.shrinkToFit()
        ends.shrinkToFit()
    }

    /// Frees the ids' bytes too; only `count` is left. For an interner whose ids have all been
    /// written out (a dataset's customers, before its graph is built).
    func releaseBytes() {
        dropLookup()
        arena.free()
        ends.free()
        arena = GrowableBuffer(capacity: 1, fill: 0)
        ends = GrowableBuffer(capacity: 1, fill: 0)
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
    func precedes(_ a: Int, _ b: Int) -> Bool { identifierPrecedes(bytes(a), bytes(b)) }
}

/// The order of ids in datasets: shorter first, then bytewise.
package func identifierPrecedes(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    if a.count != b.count { return a.count < b.count }
    for k in 0..<a.count where a[k] != b[k] { return a[k] < b[k] }
    return false
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
