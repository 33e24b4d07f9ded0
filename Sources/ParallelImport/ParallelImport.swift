#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives
import CustomerData

/// `clm-data import` under mpirun: every rank parses a share of the event file and aggregates
/// the customers it owns, and rank 0 writes the same dataset a one-process import writes.
public enum ParallelImporter {
    /// Whether this process was started by mpirun (or srun) as one of several ranks.
    public static var launchedAcrossRanks: Bool {
        for name in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
            if let value = getenvString(name), let size = Int(value), size > 1 { return true }
        }
        return false
    }

    /// Runs the import on every rank of `world`; the summary comes back on rank 0, nil elsewhere.
    public static func run(input: String, output: String, options: ImportOptions, world: any Communicator) throws -> ImportSummary? {
        try Importer.run(input: input, output: output, options: options, exchange: CommunicatorExchange(world))
    }
}

private func getenvString(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}

/// The import's byte-level collectives on a `Communicator`, rank 0 as root.
final class CommunicatorExchange: RankExchange {
    let world: any Communicator
    init(_ world: any Communicator) { self.world = world }

    var rank: Int { world.rank }
    var size: Int { world.size }

    func allgather(_ values: [Int64]) throws -> [Int64] {
        var result = [Int64](repeating: 0, count: values.count * size)
        try values.withUnsafeBufferPointer { source in
            try result.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
        }
        return result
    }

    func allreduceSum(_ values: [Int64]) throws -> [Int64] {
        var result = values
        try world.allreduce(&result, op: .sum)
        return result
    }

    func allreduceMax(_ values: [Int64]) throws -> [Int64] {
        var result = values
        try world.allreduce(&result, op: .max)
        return result
    }

    func broadcast(_ values: inout [Int64]) throws {
        try world.broadcast(&values, root: 0)
    }

    func allgatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws {
        try world.allgatherv(bytes.bindMemory(to: UInt8.self), into: destination.bindMemory(to: UInt8.self), counts: counts)
    }

    func alltoallv(_ bytes: UnsafeRawBufferPointer, sendCounts: [Int], into destination: UnsafeMutableRawBufferPointer,
                   receiveCounts: [Int]) throws {
        try world.alltoallv(bytes.bindMemory(to: UInt8.self), sendCounts: sendCounts,
                            into: destination.bindMemory(to: UInt8.self), receiveCounts: receiveCounts)
    }

    func gatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer?) throws {
        try world.gatherv(bytes.bindMemory(to: UInt8.self), into: destination?.bindMemory(to: UInt8.self), counts: counts, root: 0)
    }

    func scatterv(_ source: UnsafeRawBufferPointer?, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws {
        try world.scatterv(source?.bindMemory(to: UInt8.self), counts: counts, into: destination.bindMemory(to: UInt8.self), root: 0)
    }
}
