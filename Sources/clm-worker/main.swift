import Collectives
import CollectivesMPI
import Foundation
import Training

// A worker rank of a training job: it takes everything from the coordinator (rank 0).
let world: MPICommunicator
do {
    world = try MPICommunicator(watchdogTimeout: .seconds(300))
} catch {
    FileHandle.standardError.write(Data("clm-worker: error: could not join the MPI job: \(error)\n".utf8))
    exit(2)
}
do {
    try TrainingJob.work(world: world)
    try world.shutdown()
} catch is JobDidNotStart {
    // The coordinator says why; a worker only leaves, without aborting (see JobDidNotStart).
    try? world.shutdown()
    exit(1)
} catch {
    world.abort("training failed: \(error)", code: 1)
}
