import BitMixing
import Collectives
import Foundation

/// The version every rank reports in the agreement check. `CLM_VERSION_SUFFIX` lets an operator
/// tag a build (and lets the tests give one rank a different build).
public var programVersion: String {
    "clm-0.1.0" + (ProcessInfo.processInfo.environment["CLM_VERSION_SUFFIX"].map { "+" + $0 } ?? "")
}

/// What every rank must agree on before the first step.
public struct JobFingerprint: Equatable, Sendable {
    public var configuration: UInt64
    public var parameterLayout: UInt64
    public var dataset: UInt64
    public var program: UInt64

    public init(configuration: Data, parameterLayout: UInt64, dataset: String, program: String) {
        self.configuration = fnv1a(Array(configuration))
        self.parameterLayout = parameterLayout
        self.dataset = fnv1a(Array(dataset.utf8))
        self.program = fnv1a(Array(program.utf8))
    }

    var fields: [Int64] {
        [configuration, parameterLayout, dataset, program].map { Int64(bitPattern: $0) }
    }

    static let fieldNames = ["configuration", "parameter layout", "dataset", "program version"]
}

public struct AgreementError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// All-gathers every rank's fingerprint and throws, on every rank, a message naming the ranks
/// that differ from rank 0 and in what.
public func checkAgreement(_ fingerprint: JobFingerprint, world: any Communicator) throws {
    let mine = fingerprint.fields
    var table = [Int64](repeating: 0, count: mine.count * world.size)
    try mine.withUnsafeBufferPointer { source in
        try table.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
    }
    var problems: [String] = []
    for (field, name) in JobFingerprint.fieldNames.enumerated() {
        let reference = table[field]
        let differing = (0..<world.size).filter { table[$0 * mine.count + field] != reference }
        if !differing.isEmpty {
            problems.append("\(name) differs from rank 0 on rank\(differing.count > 1 ? "s" : "") "
                + differing.map(String.init).joined(separator: ", "))
        }
    }
    if !problems.isEmpty {
        throw AgreementError(message: "ranks disagree before the first step: " + problems.joined(separator: "; "))
    }
}

/// 64-bit FNV-1a.
func fnv1a(_ bytes: [UInt8]) -> UInt64 {
    var hash = FNV1a()
    hash.combine(bytes: bytes)
    return hash.value
}

/// A checksum of the parameters that differs when any bit differs (a sum would hide swaps).
public func parameterChecksum(_ values: UnsafeBufferPointer<Float>) -> UInt64 {
    var hash = FNV1a()
    for value in values { hash.combine(word: UInt64(value.bitPattern)) }
    return hash.value
}

/// Compares parameter checksums across ranks; throws naming the ranks that diverged from rank 0.
public func checkParametersAgree(_ values: UnsafeBufferPointer<Float>, step: Int, world: any Communicator) throws {
    let checksums = try world.allgather(value: Int64(bitPattern: parameterChecksum(values)))
    let differing = checksums.indices.filter { checksums[$0] != checksums[0] }
    if !differing.isEmpty {
        throw AgreementError(
            message: "parameters diverged at step \(step): rank\(differing.count > 1 ? "s" : "") "
                + "\(differing.map(String.init).joined(separator: ", ")) differ\(differing.count > 1 ? "" : "s") from rank 0 "
                + "(non-deterministic arithmetic, a bad host, or a missed update)")
    }
}
