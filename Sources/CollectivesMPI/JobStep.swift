#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives
import Foundation

/// Whether this process was started by mpirun (or srun) as one of several ranks.
public var launchedAcrossRanks: Bool {
    for name in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
        if let value = getenv(name).map({ String(cString: $0) }), let size = Int(value), size > 1 { return true }
    }
    return false
}

/// Runs `body` on every rank of a new MPI world and ends the process as a job step should.
/// A failure the ranks agreed on, or an error `userMessage` describes for the person at the
/// command line, ends every rank with status 1 after MPI_Finalize: the failing rank says why
/// (rank 0 for the job, another rank when it failed alone), the others stay quiet. Anything
/// else aborts the whole job with a message.
public func runOnEveryRank(
    tool: String, watchdog: Duration = .seconds(600), userMessage: (any Error) -> String?,
    _ body: (any Communicator) throws -> Void
) throws {
    let world = try MPICommunicator(watchdogTimeout: watchdog)
    do {
        try body(world)
        try world.shutdown()
    } catch let failure as PeerRankFailure {
        if world.rank == 0 { FileHandle.standardError.write(Data("\(tool): error: \(failure)\n".utf8)) }
        try? world.shutdown()
        Foundation.exit(1)
    } catch {
        guard let message = userMessage(error) else { world.abort("\(tool): failed on rank \(world.rank): \(error)", code: 1) }
        FileHandle.standardError.write(Data("\(tool): error\(world.rank == 0 ? "" : " on rank \(world.rank)"): \(message)\n".utf8))
        try? world.shutdown()
        Foundation.exit(1)
    }
}
