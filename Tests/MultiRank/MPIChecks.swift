import Collectives
import CollectivesMPI
import RankTesting

/// The checks only an MPI world can make: MPI's 32-bit counts and the errors MPI itself detects.
func runMPIChecks(_ world: MPICommunicator, _ checks: RankChecks) {
    let rank = world.rank
    let size = world.size

    checks.check("buffers larger than one MPI call are split") {
        let small = try MPICommunicator(watchdogTimeout: nil, maxElementsPerCall: 1000)
        var buffer = (0..<4567).map { Int64($0 + rank) }
        try small.allreduce(&buffer, op: .max)
        checks.expectElementsEqual(buffer, (0..<4567).map { Int64($0 + size - 1) }, "split allreduce")
        var broadcastBuffer = rank == 0 ? (0..<2500).map { Double($0) } : [Double](repeating: 0, count: 2500)
        try small.broadcast(&broadcastBuffer, root: 0)
        checks.expectElementsEqual(broadcastBuffer, (0..<2500).map { Double($0) }, "split broadcast")
        // Vector collectives cannot be split; every rank must refuse the same way, before MPI.
        let counts = [Int](repeating: 600, count: size)
        let source = [Float](repeating: 1, count: 600)
        var destination = [Float](repeating: 0, count: 600 * size)
        if size > 1 {
            let error = checks.expectThrows("oversized allgatherv") {
                try source.withUnsafeBufferPointer { sourcePointer in
                    try destination.withUnsafeMutableBufferPointer {
                        try small.allgatherv(sourcePointer, into: $0, counts: counts)
                    }
                }
            }
            checks.expectEqual(error?.kind, .invalidArgument, "error kind")
        }
    }

    checks.check("an error MPI itself detects becomes a CollectiveError with MPI's text") {
        // MPI forbids the same buffer as send and receive outside MPI_IN_PLACE; every rank
        // detects it locally, so the check cannot leave ranks out of step.
        let shared = UnsafeMutableBufferPointer<Double>.allocate(capacity: 8)
        defer { shared.deallocate() }
        shared.initialize(repeating: 1)
        let error = checks.expectThrows("aliased buffers") {
            try world.allreduce(UnsafeBufferPointer(shared), into: shared, op: .sum)
        }
        if case .mpi(let code)? = error?.kind {
            checks.expect(code != 0, "non-zero MPI code")
            checks.expect(error?.message.isEmpty == false, "MPI's error string is carried")
            checks.expect(error?.description.contains("MPI_Allreduce") == true, "names the call: \(error!)")
        } else {
            checks.expect(false, "expected an MPI error, got \(String(describing: error))")
        }
        try world.barrier()
    }
}
