import CMPI
import Collectives
import CollectivesMPI
import Foundation

/// All-reduce bus bandwidth through `Collectives` and through raw `MPI_Allreduce`, measured in
/// the same run on the same buffer, so their ratio is the wrapper's cost.
///
/// Each size is timed in several rounds; a round times `iterations` raw calls and `iterations`
/// wrapper calls back to back, alternating which goes first, and the time of a call is the
/// slowest rank's (as in nccl-tests). The median over rounds is reported.
public struct AllreduceBandwidth {
    public struct Row: Sendable {
        public let bytes: Int
        public let iterations: Int
        /// Seconds per call: raw MPI, the wrapper without and with the agreement check.
        public let raw: Double
        public let wrapped: Double
        public let checked: Double
    }

    public let minimumBytes: Int
    public let maximumBytes: Int
    public let rounds: Int

    public init(minimumBytes: Int = 4096, maximumBytes: Int = 64 << 20, rounds: Int = 9) {
        self.minimumBytes = minimumBytes
        self.maximumBytes = maximumBytes
        self.rounds = rounds
    }

    /// Bus bandwidth in bytes per second: algorithm bandwidth scaled by 2(p-1)/p, the share of
    /// the data each link carries in a ring all-reduce.
    public static func busBandwidth(bytes: Int, seconds: Double, ranks: Int) -> Double {
        Double(bytes) / seconds * 2 * Double(ranks - 1) / Double(ranks)
    }

    public func run(report: (Row, Int) -> Void) throws {
        let fast = try MPICommunicator(watchdogTimeout: .seconds(120), verifyAgreement: false)
        let checked = try MPICommunicator(watchdogTimeout: .seconds(120), verifyAgreement: true)
        let capacity = maximumBytes / MemoryLayout<Float>.stride
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: capacity)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: 1)

        var bytes = minimumBytes
        while bytes <= maximumBytes {
            let count = bytes / MemoryLayout<Float>.stride
            let slice = UnsafeMutableBufferPointer(rebasing: buffer[0..<count])
            // Enough calls that one timing spans well over the clock's and the scheduler's noise.
            let iterations = max(30, min(2000, (256 << 20) / bytes))
            let rawCall = {
                _ = MPI_Allreduce(cmpi_in_place(), slice.baseAddress, Int32(count), cmpi_float(), cmpi_op_sum(), fast.mpiHandle)
            }
            let wrappedCall = { try fast.allreduce(slice, op: .sum) }
            let checkedCall = { try checked.allreduce(slice, op: .sum) }
            // Warm-up: connection set-up and first-touch page faults stay out of the timings.
            for _ in 0..<3 { rawCall(); try wrappedCall(); try checkedCall() }

            var raw: [Double] = [], wrapped: [Double] = [], withCheck: [Double] = []
            for round in 0..<rounds {
                let order = round % 2 == 0 ? [0, 1, 2] : [2, 1, 0]
                for variant in order {
                    let seconds = try time(fast, iterations) {
                        switch variant {
                        case 0: rawCall()
                        case 1: try wrappedCall()
                        default: try checkedCall()
                        }
                    }
                    switch variant {
                    case 0: raw.append(seconds)
                    case 1: wrapped.append(seconds)
                    default: withCheck.append(seconds)
                    }
                }
            }
            report(Row(bytes: bytes, iterations: iterations, raw: median(raw), wrapped: median(wrapped),
                       checked: median(withCheck)), fast.size)
            bytes *= 4
        }
        try fast.shutdown()
    }

    /// Seconds per call, as seen by the slowest rank.
    private func time(_ world: MPICommunicator, _ iterations: Int, _ call: () throws -> Void) throws -> Double {
        try world.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<iterations { try call() }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 / Double(iterations)
        return try world.allreduce(value: elapsed, op: .max)
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }
}
