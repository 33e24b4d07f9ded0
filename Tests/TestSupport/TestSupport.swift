import BitMixing
import Foundation

/// A fresh directory under the system temporary directory, removed when the value is released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let url: URL

    public init(prefix: String = "clm-tests") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    /// The path of `name` inside the directory.
    public func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// The project's SplitMix64, so random cases fail the same way on every run and machine.
public typealias SplitMix64 = BitMixing.SplitMix64

extension SplitMix64 {

    /// An index in 0..<bound (modulo bias is irrelevant at test sizes).
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    public mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }

    /// Uniform in (0, 1).
    public mutating func uniform() -> Double { (Double(next() >> 11) + 0.5) / 9_007_199_254_740_992 }

    /// Standard normal by Box–Muller.
    public mutating func normal() -> Double { (-2 * Foundation.log(uniform())).squareRoot() * cos(2 * .pi * uniform()) }
}

#if canImport(Glibc)
import Glibc
#endif

/// What a child process did.
public struct ChildResult: Sendable {
    public var status: Int32
    public var output: String
    public var errors: String
}

/// Runs `executable` with `arguments` to completion with `posix_spawn` and reaps it with
/// `waitpid`, its output and errors captured through files.
///
/// Not Foundation's `Process`: in the test process, swift-testing's exit-test monitor waits on
/// every child (`waitid(P_ALL, WNOWAIT)`), and a `Process` whose exit that monitor saw first
/// waited forever in `waitUntilExit` (seen once in CI, a hang of the whole unit-test run).
/// Reaping our own child by pid leaves nothing to race on.
public func runChild(_ executable: String, _ arguments: [String]) throws -> ChildResult {
    let directory = try TemporaryDirectory(prefix: "child")
    let outputPath = directory.path("stdout"), errorPath = directory.path("stderr")
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
    guard spawned == 0 else {
        throw CocoaError(.executableNotLoadable, userInfo: [NSFilePathErrorKey: executable, "errno": spawned])
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // WIFEXITED / WEXITSTATUS: the exit code is the second byte when the low 7 bits are 0.
    let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    let read = { (path: String) in (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    return ChildResult(status: code, output: read(outputPath), errors: read(errorPath))
}

/// A process id that was alive and is not any more (reaped, so no process has it).
public func deadProcessID() throws -> pid_t {
    var pid: pid_t = 0
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
    defer { free(argv[0]) }
    guard posix_spawn(&pid, "/bin/true", nil, nil, argv, environ) == 0 else {
        throw CocoaError(.executableNotLoadable)
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return pid
}
