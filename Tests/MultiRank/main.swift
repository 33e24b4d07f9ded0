import Collectives
import CollectivesMPI
import MultiRankChecks
import RankTesting
import Foundation

// Multi-rank checks of `Collectives`, run by scripts/test.sh under `mpirun -np N`.
//
//   clm-multirank-tests                    every collective, exact results, this world size
//   clm-multirank-tests --scenario NAME    one failure scenario (see FailureScenarios.swift)

let arguments = CommandLine.arguments
if let flag = arguments.firstIndex(of: "--scenario"), flag + 1 < arguments.count {
    runFailureScenario(named: arguments[flag + 1])
}

let world: MPICommunicator
do {
    world = try MPICommunicator(watchdogTimeout: .seconds(120))
} catch {
    print("FAIL: could not join the MPI world: \(error)")
    exit(2)
}

let checks = RankChecks(rank: world.rank, size: world.size)
runCollectiveChecks(world, checks)
runMPIChecks(world, checks)
runImportChecks(world, checks)
runScoringChecks(world, checks)
runMetricChecks(world, checks)
runGraphSamplingChecks(world, checks)

print(checks.summaryLine)
do {
    let failuresEverywhere = try world.allreduce(value: Int64(checks.failed), op: .sum)
    let passesEverywhere = try world.allreduce(value: Int64(checks.passed), op: .sum)
    let skipsEverywhere = try world.allreduce(value: Int64(checks.skipped), op: .sum)
    if world.rank == 0 {
        print("multirank world size=\(world.size): \(passesEverywhere) passed, \(failuresEverywhere) failed, \(skipsEverywhere) skipped")
    }
    try world.shutdown()
} catch {
    print("FAIL rank \(world.rank): closing collectives threw \(error)")
    exit(1)
}
exit(checks.failed == 0 ? 0 : 1)
