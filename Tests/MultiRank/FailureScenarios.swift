import Collectives
import CollectivesMPI
import RankTesting
import Foundation

/// Jobs that must fail, fast and with a message; scripts/test.sh runs each under mpirun and
/// checks the exit status, the elapsed time and the text.
func runFailureScenario(named name: String) -> Never {
    switch name {
    case "missing-rank":
        // The last rank never reaches the barrier in time (stuck in its own work); the others'
        // watchdogs must end the job and name it.
        let world = joinWorld(watchdog: .seconds(2))
        if world.rank == world.size - 1 {
            Thread.sleep(forTimeInterval: 60)
        }
        try? world.barrier()
        print("scenario missing-rank: rank \(world.rank) passed the barrier, which must not happen")
        exit(0)

    case "failing-rank":
        // A rank whose check fails: proves that the test command notices one bad rank.
        let world = joinWorld(watchdog: .seconds(30))
        let checks = RankChecks(rank: world.rank, size: world.size)
        checks.check("deliberate failure on rank 1") {
            checks.expect(world.rank != 1, "rank 1 fails on purpose")
        }
        print(checks.summaryLine)
        try? world.shutdown()
        exit(checks.failed == 0 ? 0 : 1)

    default:
        print("unknown scenario \(name); known: missing-rank, failing-rank")
        exit(64)
    }
}

private func joinWorld(watchdog: Duration) -> MPICommunicator {
    do {
        return try MPICommunicator(watchdogTimeout: watchdog)
    } catch {
        print("could not join the MPI world: \(error)")
        exit(2)
    }
}
