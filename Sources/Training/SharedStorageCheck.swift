import Collectives
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Proves, before the first step, that every rank sees the coordinator's checkpoint root and the
/// dataset at the same paths.
///
/// Only rank 0 writes checkpoints, so a checkpoint root that is local to each host does not fail
/// at once: the job trains for hours and then a resume on another host finds nothing, or a graph
/// worker maps a stale copy of the dataset. Checking a fresh random token is the cheapest way to
/// tell "the same file system" from "a directory with the same name".
public enum SharedStorageCheck {
    /// What one rank found. Bits, so that one rank can report several problems in one integer.
    public struct Finding: OptionSet, Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        /// The token file does not exist or cannot be read on this rank.
        public static let tokenMissing = Finding(rawValue: 1)
        /// A file with the token's name exists but holds other bytes (a copy, or a stale mirror).
        public static let tokenDiffers = Finding(rawValue: 2)
        /// The dataset directory does not exist on this rank.
        public static let datasetMissing = Finding(rawValue: 4)
    }

    /// Hostnames travel in fixed-size slots so a plain all-gather suffices (no count exchange).
    static let hostnameSlot = 64

    /// Runs the check on every rank and returns each rank's hostname, indexed by rank.
    /// Throws on every rank, with the same message, when any rank failed.
    @discardableResult
    public static func run(checkpointRoot: String, datasetPath: String, world: any Communicator,
                           report: ((String) -> Void)? = nil) throws -> [String] {
        let hosts = try gatherHostnames(world: world)

        // Rank 0 writes the token; an empty broadcast tells the others it could not, so they stop
        // with a message instead of waiting in the next collective.
        var written: (url: URL, content: String)? = nil
        var failure: Error? = nil
        var announcement = ""
        if world.rank == 0 {
            do {
                let token = try writeToken(into: checkpointRoot)
                written = token
                announcement = token.url.lastPathComponent + "\n" + token.content
            } catch {
                failure = error
            }
        }
        announcement = try world.broadcast(string: announcement, root: 0)
        if let failure { throw failure }
        let parts = announcement.split(separator: "\n", maxSplits: 1).map(String.init)
        guard parts.count == 2 else {
            throw AgreementError(message: "the coordinator (rank 0 on \(hosts[0])) could not write to the checkpoint root "
                + "\(absolute(checkpointRoot)) (its error is above); rank \(world.rank) stops")
        }

        let finding = inspect(checkpointRoot: checkpointRoot, tokenName: parts[0], expected: parts[1], datasetPath: datasetPath)
        let findings = try world.allgather(value: finding.rawValue).map(Finding.init(rawValue:))
        // Every rank has contributed to the all-gather, so every rank has finished reading.
        if let written { try? FileManager.default.removeItem(at: written.url) }

        if let message = describe(findings, hosts: hosts, checkpointRoot: checkpointRoot, datasetPath: datasetPath) {
            throw AgreementError(message: message)
        }
        if world.rank == 0, let report { report(placement(hosts)) }
        return hosts
    }

    /// Writes `.shared-check-<random>` holding random content into `root` (created if needed).
    static func writeToken(into root: String) throws -> (url: URL, content: String) {
        let directory = URL(fileURLWithPath: root, isDirectory: true)
        var generator = SystemRandomNumberGenerator()
        func randomHex() -> String {
            (0..<2).map { _ in String(generator.next() as UInt64, radix: 16) }.joined()
        }
        let url = directory.appendingPathComponent(".shared-check-" + randomHex())
        let content = randomHex() + randomHex()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try Data(content.utf8).write(to: url)
        } catch {
            throw AgreementError(message: "cannot write the shared-storage token \(url.path) into the checkpoint root: "
                + "\(error.localizedDescription)")
        }
        return (url, content)
    }

    /// What this rank sees at the paths rank 0 named.
    static func inspect(checkpointRoot: String, tokenName: String, expected: String, datasetPath: String) -> Finding {
        var finding: Finding = []
        let url = URL(fileURLWithPath: checkpointRoot, isDirectory: true).appendingPathComponent(tokenName)
        if let data = FileManager.default.contents(atPath: url.path) {
            if data != Data(expected.utf8) { finding.insert(.tokenDiffers) }
        } else {
            finding.insert(.tokenMissing)
        }
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: datasetPath, isDirectory: &isDirectory) || !isDirectory.boolValue {
            finding.insert(.datasetMissing)
        }
        return finding
    }

    /// The error every rank throws, or nil when every rank passed.
    public static func describe(_ findings: [Finding], hosts: [String], checkpointRoot: String, datasetPath: String) -> String? {
        func ranks(with finding: Finding) -> String? {
            let matching = findings.indices.filter { findings[$0].contains(finding) }
            guard !matching.isEmpty else { return nil }
            return "rank\(matching.count > 1 ? "s" : "") " + matching.map { "\($0) (\(hosts[$0]))" }.joined(separator: ", ")
        }
        var problems: [String] = []
        if let who = ranks(with: .tokenMissing) {
            problems.append("\(who) cannot read the token rank 0 (\(hosts[0])) wrote into the checkpoint root "
                + "\(absolute(checkpointRoot)): it is not one shared directory at the same path on every host")
        }
        if let who = ranks(with: .tokenDiffers) {
            problems.append("\(who) read different bytes from the token rank 0 (\(hosts[0])) wrote into "
                + "\(absolute(checkpointRoot)): that path holds a copy, not the shared directory")
        }
        if let who = ranks(with: .datasetMissing) {
            problems.append("\(who) cannot see the dataset directory \(absolute(datasetPath))")
        }
        guard !problems.isEmpty else { return nil }
        return "shared storage check failed: " + problems.joined(separator: "; ")
            + ". Mount the shared file system at the same path on every host (see docs/cluster.md)"
    }

    /// "placement: host-a ranks 0,1; host-b ranks 2,3", hosts in order of their first rank.
    public static func placement(_ hosts: [String]) -> String {
        var order: [String] = []
        var ranksByHost: [String: [Int]] = [:]
        for (rank, host) in hosts.enumerated() {
            if ranksByHost[host] == nil { order.append(host) }
            ranksByHost[host, default: []].append(rank)
        }
        return "placement: " + order.map { host in
            let ranks = ranksByHost[host]!
            return "\(host) rank\(ranks.count > 1 ? "s" : "") " + ranks.map(String.init).joined(separator: ",")
        }.joined(separator: "; ")
    }

    /// All-gathers every rank's hostname (truncated to the slot, which only shortens the message).
    static func gatherHostnames(world: any Communicator) throws -> [String] {
        var mine = [UInt8](repeating: 0, count: hostnameSlot)
        let name = Array(localHostname().utf8.prefix(hostnameSlot))
        mine.replaceSubrange(0..<name.count, with: name)
        var table = [UInt8](repeating: 0, count: hostnameSlot * world.size)
        try mine.withUnsafeBufferPointer { source in
            try table.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
        }
        return (0..<world.size).map { rank in
            let slot = table[rank * hostnameSlot..<(rank + 1) * hostnameSlot]
            let bytes = slot.prefix { $0 != 0 }
            return bytes.isEmpty ? "unknown host" : String(decoding: bytes, as: UTF8.self)
        }
    }

    /// gethostname(2) directly: Foundation's hostName may try name resolution, which can stall on
    /// a cluster node with a half-configured resolver.
    static func localHostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown host" }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }
}
