@testable import CollectivesMPI
import Testing
@testable import Collectives

@Suite struct SingleProcessCommunicatorTests {
    let world = SingleProcessCommunicator()

    @Test func reductionsOfOneRankLeaveTheDataAsItWas() throws {
        var values: [Float] = [1.5, -2, 3]
        try world.allreduce(&values, op: .sum)
        #expect(values == [1.5, -2, 3])
        try values.withUnsafeMutableBufferPointer { try world.allreduceAverage($0) }
        #expect(values == [1.5, -2, 3])
        #expect(try world.allreduce(value: Int64(7), op: .max) == 7)
    }

    @Test func outOfPlaceReductionCopies() throws {
        let source: [Int32] = [4, 5, 6]
        var destination = [Int32](repeating: 0, count: 3)
        try source.withUnsafeBufferPointer { sourcePointer in
            try destination.withUnsafeMutableBufferPointer { try world.allreduce(sourcePointer, into: $0, op: .min) }
        }
        #expect(destination == source)
    }

    @Test func scatterAndGatherCopyTheWholeTable() throws {
        let source: [Double] = [1, 2, 3, 4]
        var received = [Double](repeating: 0, count: 4)
        try source.withUnsafeBufferPointer { sourcePointer in
            try received.withUnsafeMutableBufferPointer {
                try world.scatterv(sourcePointer, counts: [4], into: $0, root: 0)
            }
        }
        #expect(received == source)
        var gathered = [Double](repeating: 0, count: 4)
        try received.withUnsafeBufferPointer { receivedPointer in
            try gathered.withUnsafeMutableBufferPointer {
                try world.allgatherv(receivedPointer, into: $0, counts: [4])
            }
        }
        #expect(gathered == source)
    }

    @Test func aRootOutsideTheWorldIsRefused() {
        var buffer: [Float] = [0]
        #expect(throws: CollectiveError.self) { try world.broadcast(&buffer, root: 1) }
    }

    @Test func aCountThatDisagreesWithTheBufferIsRefused() {
        let source: [Float] = [1, 2]
        var destination = [Float](repeating: 0, count: 4)
        let error = #expect(throws: CollectiveError.self) {
            try source.withUnsafeBufferPointer { sourcePointer in
                try destination.withUnsafeMutableBufferPointer {
                    try world.allgatherv(sourcePointer, into: $0, counts: [3])
                }
            }
        }
        #expect(error?.message.contains("counts[0] is 3") == true)
    }

    @Test func nonBlockingReductionCompletesAtOnce() throws {
        var buffer: [Float] = [1, 2]
        let request = try buffer.withUnsafeMutableBufferPointer { try world.startAllreduce($0, op: .sum) }
        #expect(try request.test())
        try request.wait()
    }

    @Test func broadcastOfTextWithOneRankIsTheText() throws {
        #expect(try world.broadcast(string: "épicerie", root: 0) == "épicerie")
    }
}

@Suite struct DiagnosticsTests {
    @Test func disagreementNamesEveryGroupOfRanks() {
        let allreduceOf = { (count: Int64) -> [Int64] in
            CallSignature(Float.self, count: Int(count), op: .sum).fields(kind: .allreduce)
        }
        let text = CallSignature.describe([allreduceOf(100), allreduceOf(10), allreduceOf(10)])
        #expect(text == "count differs (ranks 0: 100; ranks 1,2: 10)")
    }

    @Test func disagreementOnTheCollectiveItselfIsNamed() {
        let barrier = CallSignature().fields(kind: .barrier)
        let reduce = CallSignature(Float.self, count: 4, op: .sum).fields(kind: .allreduce)
        let text = CallSignature.describe([reduce, barrier])
        #expect(text.hasPrefix("collective differs (ranks 0: allreduce; ranks 1: barrier)"))
    }

    @Test func countTablesWithTheSameTotalStillDiffer() {
        let first = CallSignature(Int32.self, counts: [1, 3]).fields(kind: .allgatherv)
        let second = CallSignature(Int32.self, counts: [3, 1]).fields(kind: .allgatherv)
        #expect(first != second)
    }

    @Test func watchdogVerdictSeparatesLateSilentAndStrayRanks() {
        let verdict = CollectiveWatchdog.verdict(
            rank: 0, sequence: 5, kind: .allreduce, waited: .seconds(3), limit: .seconds(2), peers: [1, 2, 3],
            answered: [true, true, false, true],
            answers: [[0, 0, 0], [4, 0, 0], [0, 0, 0], [5, 5, Int64(CollectiveKind.barrier.rawValue)]])
        #expect(verdict.contains("allreduce #5 has not completed after 3.0 s (limit 2.0 s)"))
        #expect(verdict.contains("ranks that did not arrive: 1 (entered 4 collectives, busy outside any collective)"))
        #expect(verdict.contains("ranks that did not answer (dead or wedged): 2"))
        #expect(verdict.contains("ranks in a different collective at the same point: 3 (in barrier #5)"))
    }

    @Test func watchdogVerdictWhenEveryoneArrived() {
        let verdict = CollectiveWatchdog.verdict(
            rank: 1, sequence: 2, kind: .broadcast, waited: .seconds(9), limit: .seconds(8), peers: [0],
            answered: [true, true], answers: [[2, 2, Int64(CollectiveKind.broadcast.rawValue)], [0, 0, 0]])
        #expect(verdict.contains("every rank arrived"))
    }
}

/// MPI started as a singleton (no mpirun): the same wrapper must work with one rank.
@Suite struct SingletonMPITests {
    @Test func aSingletonWorldReducesAndGathers() throws {
        let world = try MPICommunicator(watchdogTimeout: .seconds(30))
        #expect(world.size == 1)
        #expect(world.rank == 0)
        var values: [Double] = [1, 2, 3]
        try world.allreduce(&values, op: .sum)
        #expect(values == [1, 2, 3])
        #expect(try world.allgather(value: Int64(42)) == [42])
        try world.barrier()
    }
}
