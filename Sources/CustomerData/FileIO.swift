#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

func systemMessage(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// Writes a file through a buffer, hashing what it writes, and makes it durable on `close`.
final class HashingFileWriter {
    let path: String
    let name: String
    private var fd: Int32
    private var buffer: UnsafeMutableRawPointer
    private let capacity = 1 << 20
    /// Where the next flushed byte goes.
    private var fileOffset: Int
    // Touched by every write, a few per customer: see CustomerShard for why exclusivity is
    // unchecked.
    @exclusivity(unchecked) private var used = 0
    @exclusivity(unchecked) private var hasher = ContentHasher()
    @exclusivity(unchecked) private var partStart = 0
    @exclusivity(unchecked) private(set) var bytesWritten = 0
    private(set) var parts: [DatasetFile.Part] = []

    private let hashing: Bool

    /// `hashing` false skips the content hash, for a file that is rewritten before it counts.
    /// With `offset` nil the file is created (emptied if it exists); with an offset, the writer
    /// writes from there into an existing file that other writers (ranks) share.
    init(path: String, name: String, hashing: Bool = true, offset: Int? = nil) throws {
        self.path = path
        self.name = name
        self.hashing = hashing
        fileOffset = offset ?? 0
        fd = offset == nil ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) : open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError.io(path: path, operation: offset == nil ? "create" : "open", message: systemMessage()) }
        buffer = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit {
        if fd >= 0 { _ = Glibc.close(fd) }
        buffer.deallocate()
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0 else { return }
        if hashing { hasher.update(bytes) }
        bytesWritten += bytes.count
        if used + bytes.count > capacity { try flush() }
        if bytes.count >= capacity {
            try writeAll(bytes.baseAddress!, bytes.count)
        } else {
            (buffer + used).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            used += bytes.count
        }
    }

    func write<T: BitwiseCopyable>(_ values: UnsafeBufferPointer<T>) throws {
        try write(UnsafeRawBufferPointer(values))
    }

    /// Appends one value's bytes (a per-customer output file written in dataset order).
    @inline(__always)
    func write<T: BitwiseCopyable>(value: T) throws {
        try withUnsafeBytes(of: value) { try write($0) }
    }

    func write<T: BitwiseCopyable>(array values: [T]) throws {
        try values.withUnsafeBytes { try write($0) }
    }

    func write(_ text: String) throws {
        var copy = text
        try copy.withUTF8 { try write(UnsafeRawBufferPointer($0)) }
    }

    /// Closes the part written since the last one (`DatasetPartLayout`), empty or not.
    func endPart(splitSizes: [Int]? = nil) {
        parts.append(DatasetFile.Part(bytes: bytesWritten - partStart, hash: ContentHasher.hex(hasher.finalize()), splitSizes: splitSizes))
        hasher = ContentHasher()
        partStart = bytesWritten
    }

    private func flush() throws {
        if used > 0 { try writeAll(buffer, used) }
        used = 0
    }

    private func writeAll(_ base: UnsafeRawPointer, _ count: Int) throws {
        var done = 0
        while done < count {
            let n = pwrite(fd, base + done, count - done, off_t(fileOffset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw DataError.io(path: path, operation: "write", message: systemMessage())
            }
            done += n
        }
        fileOffset += count
    }

    /// Flushes, fsyncs and closes; returns the manifest entry of the parts this writer wrote.
    func close(dtype: String, shape: [Int]) throws -> DatasetFile {
        try flush()
        guard fsync(fd) == 0 else { throw DataError.io(path: path, operation: "fsync", message: systemMessage()) }
        let result = Glibc.close(fd)
        fd = -1
        guard result == 0 else { throw DataError.io(path: path, operation: "close", message: systemMessage()) }
        return DatasetFile(name: name, parts: parts, dtype: dtype, shape: shape)
    }
}

/// Makes a directory's entries (new files, renames) durable.
func fsyncDirectory(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw DataError.io(path: path, operation: "open directory", message: systemMessage()) }
    defer { _ = close(fd) }
    guard fsync(fd) == 0 else { throw DataError.io(path: path, operation: "fsync directory", message: systemMessage()) }
}

func parentDirectory(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    let parent = String(path[..<slash])
    return parent.isEmpty ? "/" : parent
}

func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

/// Size in bytes of the file at `path`, nil when it cannot be stat'ed.
func fileSize(_ path: String) -> Int? {
    var info = stat()
    return stat(path, &info) == 0 ? Int(info.st_size) : nil
}

func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}

/// Removes a directory with its files and subdirectories (a dataset holds those of its earlier
/// cut-offs, `DatasetManifest.Snapshots`).
func removeFlatDirectory(_ path: String) {
    guard let dir = opendir(path) else { return }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        // unlink refuses a directory: an earlier cut-off's dataset inside a dataset.
        if unlink(path + "/" + name) != 0 && (errno == EISDIR || errno == EPERM) { removeFlatDirectory(path + "/" + name) }
    }
    closedir(dir)
    _ = rmdir(path)
}

func renameItem(_ from: String, _ to: String) throws {
    guard rename(from, to) == 0 else {
        throw DataError.io(path: to, operation: "rename from \(from)", message: systemMessage())
    }
}

/// A read-only memory mapping of a whole file; unmapped when released.
final class MappedFile: @unchecked Sendable {
    let path: String
    let base: UnsafeRawPointer?
    let count: Int

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError.io(path: path, operation: "open", message: systemMessage()) }
        defer { _ = close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw DataError.io(path: path, operation: "stat", message: systemMessage()) }
        count = Int(info.st_size)
        if count == 0 {
            base = nil
            return
        }
        let mapped = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw DataError.io(path: path, operation: "mmap", message: systemMessage())
        }
        base = UnsafeRawPointer(mapped)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Lets the kernel drop the pages read so far from this process's resident set. The file
    /// stays mapped and unchanged (read-only), and a later read faults its page back in from
    /// the page cache. Pages a process has touched in a file mapping count in its RSS, so
    /// without this the coordinator, which reads every customer's row once to send it, held
    /// the whole 1.2 GB features file of a 1M-customer dataset.
    func releaseResidentPages() {
        guard let base else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base), count, MADV_DONTNEED)
    }

    /// The content hash of the whole file, read in 64 MiB pieces that leave the resident set
    /// as soon as they are hashed, so verifying a file costs 64 MiB of RSS, not its size.
    func contentHash() -> UInt64 { contentHash(of: 0..<count) }

    /// The content hash of `range` of the file, released from the resident set as it goes.
    func contentHash(of range: Range<Int>) -> UInt64 {
        var hasher = ContentHasher()
        let piece = 64 << 20  // a multiple of the page size
        var offset = range.lowerBound
        while offset < range.upperBound {
            let length = min(piece, range.upperBound - offset)
            hasher.update(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length]))
            // madvise wants a page-aligned start: release the whole pages this piece covers.
            let page = 4096
            let first = (offset + page - 1) / page * page, end = (offset + length) / page * page
            if end > first { _ = madvise(UnsafeMutableRawPointer(mutating: base! + first), end - first, MADV_DONTNEED) }
            offset += length
        }
        return hasher.finalize()
    }

    func buffer<T>(as type: T.Type) -> UnsafeBufferPointer<T> {
        guard let base else { return UnsafeBufferPointer(start: nil, count: 0) }
        return UnsafeBufferPointer(start: base.assumingMemoryBound(to: T.self), count: count / MemoryLayout<T>.stride)
    }
}

/// Peak resident set size of this process in bytes (Linux reports ru_maxrss in KiB).
public func peakResidentBytes() -> Int {
    var usage = rusage()
    guard getrusage(Int32(RUSAGE_SELF.rawValue), &usage) == 0 else { return 0 }
    return Int(usage.ru_maxrss) * 1024
}

/// Seconds on a monotonic clock, for throughput figures.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
