#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives
import CustomerData
import Foundation
import ToolSupport

/// Whether this process was started by mpirun (or srun) as one of several ranks.
public var launchedAcrossRanks: Bool {
    for name in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
        if let value = getenvString(name), let size = Int(value), size > 1 { return true }
    }
    return false
}

/// `clm-data import` under mpirun: every rank parses a share of the event file and aggregates
/// the customers it owns, and rank 0 writes the same dataset a one-process import writes.
public enum ParallelImporter {
    /// Runs the import on every rank of `world`; the summary comes back on rank 0, nil elsewhere.
    public static func run(input: String, output: String, options: ImportOptions, world: any Communicator) throws -> ImportSummary? {
        try Importer.run(input: input, output: output, options: options, exchange: CommunicatorExchange(world))
    }
}

/// Runs `body` on every rank of a new MPI world and ends the process as a job step should.
/// A failure the ranks agreed on, or a user-facing error, ends every rank with status 1 after
/// MPI_Finalize: the failing rank says why (rank 0 for the job, another rank when it failed
/// alone), the others stay quiet. Anything else aborts the whole job with a message.
package func runOnEveryRank(tool: String, watchdog: Duration = .seconds(600), _ body: (any RankExchange) throws -> Void) throws {
    let world = try MPICommunicator(watchdogTimeout: watchdog)
    do {
        try body(CommunicatorExchange(world))
        try world.shutdown()
    } catch let failure as PeerRankFailure {
        if world.rank == 0 { FileHandle.standardError.write(Data("\(tool): error: \(failure)\n".utf8)) }
        try? world.shutdown()
        Foundation.exit(1)
    } catch let error as UserFacingError {
        FileHandle.standardError.write(Data("\(tool): error\(world.rank == 0 ? "" : " on rank \(world.rank)"): \(error)\n".utf8))
        try? world.shutdown()
        Foundation.exit(1)
    } catch {
        world.abort("\(tool): failed on rank \(world.rank): \(error)", code: 1)
    }
}

private func getenvString(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}

/// The byte-level collectives of the multi-rank import and batch scoring on a `Communicator`, rank 0 as root.
package final class CommunicatorExchange: RankExchange {
    let world: any Communicator
    package init(_ world: any Communicator) { self.world = world }

    package var rank: Int { world.rank }
    package var size: Int { world.size }

    package func allgather(_ values: [Int64]) throws -> [Int64] {
        var result = [Int64](repeating: 0, count: values.count * size)
        try values.withUnsafeBufferPointer { source in
            try result.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
        }
        return result
    }

    package func allreduceSum(_ values: [Int64]) throws -> [Int64] {
        var result = values
        try world.allreduce(&result, op: .sum)
        return result
    }

    package func allreduceMax(_ values: [Int64]) throws -> [Int64] {
        var result = values
        try world.allreduce(&result, op: .max)
        return result
    }

    package func broadcast(_ values: inout [Int64]) throws {
        try world.broadcast(&values, root: 0)
    }

    package func allgatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws {
        try world.allgatherv(bytes.bindMemory(to: UInt8.self), into: destination.bindMemory(to: UInt8.self), counts: counts)
    }

    package func alltoallv(_ bytes: UnsafeRawBufferPointer, sendCounts: [Int], into destination: UnsafeMutableRawBufferPointer,
                           receiveCounts: [Int]) throws {
        try world.alltoallv(bytes.bindMemory(to: UInt8.self), sendCounts: sendCounts,
                            into: destination.bindMemory(to: UInt8.self), receiveCounts: receiveCounts)
    }

    package func gatherv(_ bytes: UnsafeRawBufferPointer, counts: [Int], into destination: UnsafeMutableRawBufferPointer?) throws {
        try world.gatherv(bytes.bindMemory(to: UInt8.self), into: destination?.bindMemory(to: UInt8.self), counts: counts, root: 0)
    }

    package func scatterv(_ source: UnsafeRawBufferPointer?, counts: [Int], into destination: UnsafeMutableRawBufferPointer) throws {
        try world.scatterv(source?.bindMemory(to: UInt8.self), counts: counts, into: destination.bindMemory(to: UInt8.self), root: 0)
    }
}
