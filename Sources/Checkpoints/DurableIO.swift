#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A system call that failed: what was attempted, on which path, and the system's own message.
public struct FileSystemError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The call or step that failed, e.g. `"fsync"` or `"rename"`.
    public let operation: String
    public let path: String
    /// The `errno` value reported by the system.
    public let code: Int32
    public let message: String

    public init(operation: String, path: String, code: Int32) {
        self.operation = operation
        self.path = path
        self.code = code
        self.message = String(cString: strerror(code))
    }

    public var description: String { "\(operation) \(path): \(message) (errno \(code))" }
}

/// Writes `bytes` to `url` so that readers see either the old file or the whole new one, and the
/// new one survives a crash (temporary name, fsync, rename, fsync of the directory).
public func writeFileAtomically(_ bytes: some ContiguousBytes, to url: URL) throws {
    try DurableIO.writeAtomically(bytes, to: url)
}

/// A file written piece by piece under a temporary name in its directory and renamed into
/// place only by `commit` (after fsync, then the directory's fsync), so a reader sees the old
/// file or the whole new one: `writeFileAtomically` for output too large to hold at once.
/// `abandon` (or releasing it uncommitted) removes the temporary file.
public final class AtomicFileWriter {
    public let url: URL
    public let temporary: URL
    private var file: UnsafeMutablePointer<FILE>?

    public init(url: URL) throws(FileSystemError) {
        self.url = url
        temporary = DurableIO.temporaryURL(beside: url)
        let fd = DurableIO.retryingOnInterrupt { open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
        guard fd >= 0, let file = fdopen(fd, "w") else { throw FileSystemError(operation: "create", path: temporary.path, code: errno) }
        self.file = file
        // A large stdio buffer: output rows are short and many.
        setvbuf(file, nil, _IOFBF, 1 << 20)
    }

    deinit { abandon() }

    public func write(_ text: String) throws(FileSystemError) {
        var text = text
        let ok = text.withUTF8 { bytes in fwrite(bytes.baseAddress, 1, bytes.count, file) == bytes.count }
        if !ok { throw FileSystemError(operation: "write", path: temporary.path, code: errno) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(FileSystemError) {
        guard bytes.count > 0 else { return }
        if fwrite(bytes.baseAddress, 1, bytes.count, file) != bytes.count {
            throw FileSystemError(operation: "write", path: temporary.path, code: errno)
        }
    }

    /// Flushes, fsyncs and renames the file into place; nothing to do when already committed.
    public func commit() throws(FileSystemError) {
        guard let file else { return }
        self.file = nil
        if fflush(file) != 0 || DurableIO.retryingOnInterrupt({ fsync(fileno(file)) }) != 0 {
            let failure = FileSystemError(operation: "flush", path: temporary.path, code: errno)
            fclose(file)
            unlink(temporary.path)
            throw failure
        }
        // close can report a deferred write error (NFS does this), so its result counts too.
        if fclose(file) != 0 {
            let failure = FileSystemError(operation: "close", path: temporary.path, code: errno)
            unlink(temporary.path)
            throw failure
        }
        try DurableIO.moveIntoPlace(temporary, url)
    }

    /// Drops the unfinished file.
    public func abandon() {
        guard let file else { return }
        fclose(file)
        self.file = nil
        unlink(temporary.path)
    }
}

/// A file that several processes write together, each its own byte range at an offset it
/// computed, under a temporary name that one of them creates and, once every writer has
/// finished, renames into place: the ranks of a job write one output in parallel, and a reader
/// still sees the old file or the whole new one.
public final class SharedFileWriter {
    public let url: URL
    public let temporary: URL
    private var fd: Int32

    /// Creates the temporary file beside `url` (one process only; the others `join` it).
    public static func create(for url: URL) throws(FileSystemError) -> SharedFileWriter {
        let temporary = DurableIO.temporaryURL(beside: url)
        let fd = DurableIO.retryingOnInterrupt { open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
        guard fd >= 0 else { throw FileSystemError(operation: "create", path: temporary.path, code: errno) }
        return SharedFileWriter(url: url, temporary: temporary, fd: fd)
    }

    /// Opens the temporary file another process created for `url`.
    public static func join(_ temporary: URL, for url: URL) throws(FileSystemError) -> SharedFileWriter {
        let fd = DurableIO.retryingOnInterrupt { open(temporary.path, O_WRONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw FileSystemError(operation: "open", path: temporary.path, code: errno) }
        return SharedFileWriter(url: url, temporary: temporary, fd: fd)
    }

    private init(url: URL, temporary: URL, fd: Int32) {
        self.url = url
        self.temporary = temporary
        self.fd = fd
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Writes all of `bytes` at `offset`, however many calls that takes.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(FileSystemError) {
        var done = 0
        while done < bytes.count {
            let written = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if written < 0 {
                if errno == EINTR { continue }
                throw FileSystemError(operation: "write", path: temporary.path, code: errno)
            }
            done += written
        }
    }

    /// Fsyncs and closes this process's handle; every writer finishes before one commits.
    public func finish() throws(FileSystemError) {
        guard fd >= 0 else { return }
        defer { fd = -1 }
        if DurableIO.retryingOnInterrupt({ fsync(fd) }) != 0 {
            let failure = FileSystemError(operation: "fsync", path: temporary.path, code: errno)
            close(fd)
            throw failure
        }
        // close can report a deferred write error (NFS does this), so its result counts too.
        if close(fd) != 0 { throw FileSystemError(operation: "close", path: temporary.path, code: errno) }
    }

    /// Renames the finished file into place and fsyncs its directory (the creator only, after
    /// every writer's `finish`).
    public func commit() throws(FileSystemError) {
        try finish()
        try DurableIO.moveIntoPlace(temporary, url)
    }

    /// Removes the temporary file (the creator, when any writer failed).
    public func abandon() {
        if fd >= 0 { close(fd) }
        fd = -1
        unlink(temporary.path)
    }
}

/// Durable file operations built on POSIX calls, so every failure keeps its `errno`.
///
/// Foundation's `Data.write(options: .atomic)` renames but never fsyncs, which on a crash can
/// leave a renamed file whose contents never reached the disk; checkpoints on shared storage
/// must not have that window.
enum DurableIO {
    /// Writes `bytes` to `url` so that readers see either the old file or the whole new one.
    ///
    /// Temp name in the same directory, fsync the file, rename over the target, fsync the directory
    /// (the rename itself lives in the directory's metadata).
    static func writeAtomically(_ bytes: some ContiguousBytes, to url: URL) throws(FileSystemError) {
        let temporary = temporaryURL(beside: url)
        do throws(FileSystemError) {
            try writeNewFile(bytes, to: temporary)
        } catch {
            unlink(temporary.path)
            throw error
        }
        try moveIntoPlace(temporary, url)
    }

    /// Creates a file that must not exist yet, writes `bytes` and fsyncs it.
    static func writeNewFile(_ bytes: some ContiguousBytes, to url: URL) throws(FileSystemError) {
        let path = url.path
        let fd = retryingOnInterrupt { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
        guard fd >= 0 else { throw FileSystemError(operation: "open", path: path, code: errno) }
        var failure: FileSystemError?
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    failure = FileSystemError(operation: "write", path: path, code: errno)
                    return
                }
                offset += written
            }
        }
        if failure == nil, retryingOnInterrupt({ fsync(fd) }) != 0 {
            failure = FileSystemError(operation: "fsync", path: path, code: errno)
        }
        // close can report a deferred write error (NFS does this), so its result counts too.
        if close(fd) != 0, failure == nil {
            failure = FileSystemError(operation: "close", path: path, code: errno)
        }
        if let failure { throw failure }
    }

    /// Reads a whole regular file.
    ///
    /// Opened non-blocking: a FIFO (or a device) put where a checkpoint file belongs would
    /// otherwise block `open` until a writer appears, before the regular-file check below could
    /// refuse it, and wedge whatever is loading (the service's reload). Reads of a regular file
    /// ignore the flag.
    static func readFile(_ url: URL) throws(FileSystemError) -> [UInt8] {
        let path = url.path
        let fd = retryingOnInterrupt { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
        guard fd >= 0 else { throw FileSystemError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        return try readOpenFile(fd, path: path)
    }

    /// Reads the regular file `name` of `directory`, following no symbolic link: neither the
    /// directory's last component nor the file may be one (ELOOP, or ENOTDIR for the directory),
    /// so what is read lies inside the directory, whatever the links in it point at.
    static func readFile(named name: String, in directory: URL) throws(FileSystemError) -> [UInt8] {
        let path = directory.appendingPathComponent(name).path
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else {
            throw FileSystemError(operation: "open (not a name inside the directory)", path: path, code: EINVAL)
        }
        let directoryFD = retryingOnInterrupt { open(directory.path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard directoryFD >= 0 else { throw FileSystemError(operation: "open directory", path: directory.path, code: errno) }
        defer { close(directoryFD) }
        let fd = retryingOnInterrupt { openat(directoryFD, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK) }
        guard fd >= 0 else { throw FileSystemError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        return try readOpenFile(fd, path: path)
    }

    private static func readOpenFile(_ fd: Int32, path: String) throws(FileSystemError) -> [UInt8] {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FileSystemError(operation: "fstat", path: path, code: errno) }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw FileSystemError(operation: "read (not a regular file)", path: path, code: EINVAL)
        }
        var result: [UInt8] = []
        result.reserveCapacity(Int(info.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw FileSystemError(operation: "read", path: path, code: errno)
            }
            if count == 0 { break }
            result.append(contentsOf: chunk[0..<count])
        }
        return result
    }

    /// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
    static func syncDirectory(_ url: URL) throws(FileSystemError) {
        let path = url.path
        let fd = retryingOnInterrupt { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw FileSystemError(operation: "open directory", path: path, code: errno) }
        defer { close(fd) }
        // Some file systems cannot fsync a directory and say EINVAL; their renames are already
        // as durable as they will get, so that is not a failure of the checkpoint.
        if retryingOnInterrupt({ fsync(fd) }) != 0, errno != EINVAL {
            throw FileSystemError(operation: "fsync directory", path: path, code: errno)
        }
    }

    /// Renames a finished, fsynced temporary file over `url` and fsyncs the directory (the
    /// rename lives in its metadata); the temporary file is removed when the rename fails.
    static func moveIntoPlace(_ temporary: URL, _ url: URL) throws(FileSystemError) {
        do throws(FileSystemError) {
            try rename(temporary, to: url)
        } catch {
            unlink(temporary.path)
            throw error
        }
        try syncDirectory(url.deletingLastPathComponent())
    }

    static func rename(_ source: URL, to destination: URL) throws(FileSystemError) {
        if posixRename(source.path, destination.path) != 0 {
            throw FileSystemError(operation: "rename to \(destination.path)", path: source.path, code: errno)
        }
    }

    static func makeDirectory(_ url: URL) throws(FileSystemError) {
        if mkdir(url.path, 0o755) != 0 {
            throw FileSystemError(operation: "mkdir", path: url.path, code: errno)
        }
    }

    /// Creates `url` and any missing parents, fsyncing each parent that gained an entry.
    static func makeDirectories(_ url: URL) throws(FileSystemError) {
        if try entryKind(url) == .directory { return }
        let parent = url.deletingLastPathComponent()
        if parent.path != url.path { try makeDirectories(parent) }
        if mkdir(url.path, 0o755) != 0 && errno != EEXIST {
            throw FileSystemError(operation: "mkdir", path: url.path, code: errno)
        }
        try syncDirectory(parent)
    }

    enum EntryKind { case missing, regularFile, directory, other }

    /// The kind of entry at `url`, without following a symbolic link.
    static func entryKind(_ url: URL) throws(FileSystemError) -> EntryKind {
        var info = stat()
        if lstat(url.path, &info) != 0 {
            if errno == ENOENT || errno == ENOTDIR { return .missing }
            throw FileSystemError(operation: "lstat", path: url.path, code: errno)
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return .regularFile
        case S_IFDIR: return .directory
        default: return .other
        }
    }

    /// Names in a directory (without `.` and `..`), or an empty list when it does not exist.
    static func listDirectory(_ url: URL) throws(FileSystemError) -> [String] {
        guard let handle = opendir(url.path) else {
            if errno == ENOENT { return [] }
            throw FileSystemError(operation: "opendir", path: url.path, code: errno)
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes a file or a directory tree, without following symbolic links.
    ///
    /// POSIX calls rather than FileManager, whose errors on Linux do not always carry the errno.
    static func removeTree(_ url: URL) throws(FileSystemError) {
        if try entryKind(url) == .directory {
            for name in try listDirectory(url) {
                try removeTree(url.appendingPathComponent(name))
            }
            if rmdir(url.path) != 0 && errno != ENOENT {
                throw FileSystemError(operation: "rmdir", path: url.path, code: errno)
            }
        } else if unlink(url.path) != 0 && errno != ENOENT {
            throw FileSystemError(operation: "unlink", path: url.path, code: errno)
        }
    }

    /// A hidden name beside `url` that no other writer picks, for a file renamed over `url` once
    /// it is complete (the same directory, so the rename is atomic).
    static func temporaryURL(beside url: URL) -> URL {
        url.deletingLastPathComponent().appendingPathComponent(".tmp-\(url.lastPathComponent)-\(randomSuffix())")
    }

    /// 64 random bits in hex, so two crashed writers never pick the same temporary name.
    static func randomSuffix() -> String {
        let value = UInt64.random(in: .min ... .max)
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    static func retryingOnInterrupt(_ call: () -> Int32) -> Int32 {
        while true {
            let result = call()
            if result >= 0 || errno != EINTR { return result }
        }
    }
}

/// The C `rename`, reachable from inside `DurableIO` whose own `rename` shadows it.
@inline(__always)
private func posixRename(_ source: String, _ destination: String) -> Int32 {
    rename(source, destination)
}
