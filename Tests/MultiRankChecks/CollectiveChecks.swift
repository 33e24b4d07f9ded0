import Collectives
import RankTesting

// What every Communicator must do at any world size: exact results of each collective, and
// the errors that name the ranks when the ranks disagree. Run under mpirun on MPICommunicator
// (clm-multirank-tests) and on threads on InProcessCommunicator (swift test).

/// Scalars the checks can build from small integers, which every type represents exactly.
protocol ExactScalar: CollectiveScalar, Equatable {
    init(exactly small: Int)
}
extension Float: ExactScalar { init(exactly small: Int) { self.init(small) } }
extension Double: ExactScalar { init(exactly small: Int) { self.init(small) } }
extension Int32: ExactScalar { init(exactly small: Int) { self.init(truncatingIfNeeded: small) } }
extension Int64: ExactScalar { init(exactly small: Int) { self.init(small) } }
extension UInt8: ExactScalar { init(exactly small: Int) { self.init(truncatingIfNeeded: small) } }

/// The value rank `rank` holds at `index` before a reduction; differs by rank and by index.
func contribution<T: ExactScalar>(_: T.Type, rank: Int, index: Int) -> T {
    T(exactly: rank * 7 + index % 13 + 1)
}

/// What a correct reduction over `size` ranks yields at `index`, computed without MPI.
func expectedReduction<T: ExactScalar>(_: T.Type, size: Int, index: Int, op: ReduceOperation) -> T {
    var result = contribution(T.self, rank: 0, index: index)
    for rank in 1..<max(size, 1) {
        result = T.combine(result, contribution(T.self, rank: rank, index: index), op)
    }
    return result
}

func checkAllreduce<T: ExactScalar>(_ type: T.Type, _ world: any Communicator, _ checks: RankChecks) {
    let count = 1031  // odd and prime so no algorithm's even split hides an off-by-one
    for op in ReduceOperation.allCases {
        checks.check("allreduce in place \(T.self) \(op)") {
            var buffer = (0..<count).map { contribution(T.self, rank: world.rank, index: $0) }
            try world.allreduce(&buffer, op: op)
            let expected = (0..<count).map { expectedReduction(T.self, size: world.size, index: $0, op: op) }
            checks.expectElementsEqual(buffer, expected, "reduced values")
        }
        checks.check("allreduce out of place \(T.self) \(op)") {
            let source = (0..<count).map { contribution(T.self, rank: world.rank, index: $0) }
            var destination = [T](repeating: T(exactly: 0), count: count)
            try source.withUnsafeBufferPointer { sourcePointer in
                try destination.withUnsafeMutableBufferPointer {
                    try world.allreduce(sourcePointer, into: $0, op: op)
                }
            }
            let expected = (0..<count).map { expectedReduction(T.self, size: world.size, index: $0, op: op) }
            checks.expectElementsEqual(destination, expected, "reduced values")
            checks.expectElementsEqual(
                source, (0..<count).map { contribution(T.self, rank: world.rank, index: $0) }, "source untouched")
        }
    }
}

/// `largeBuffers` adds a 64 MiB all-reduce and broadcast: MPI moves such messages by other
/// protocols than small ones, so they matter under mpirun; on threads they only take time.
public func runCollectiveChecks(_ world: any Communicator, _ checks: RankChecks, largeBuffers: Bool = true) {
    let rank = world.rank
    let size = world.size

    checkAllreduce(Float.self, world, checks)
    checkAllreduce(Double.self, world, checks)
    checkAllreduce(Int32.self, world, checks)
    checkAllreduce(Int64.self, world, checks)
    checkAllreduce(UInt8.self, world, checks)

    checks.check("allreduce of an empty buffer") {
        var empty: [Float] = []
        try world.allreduce(&empty, op: .sum)
        checks.expect(empty.isEmpty, "empty buffer stays empty")
    }

    checks.check("allreduce average") {
        var gradient = (0..<100).map { Float($0 + rank * 100) }
        try gradient.withUnsafeMutableBufferPointer { try world.allreduceAverage($0) }
        // mean over ranks of (i + 100 r) = i + 50 (size - 1): exact in float for these sizes
        let expected = (0..<100).map { Float($0) + 50 * Float(size - 1) }
        checks.expectElementsEqual(gradient, expected, "averaged values")
    }

    checks.check("alltoallv: rank r sends r + d + 1 values to rank d") {
        // Value r * 1000 + d * 100 + k, so a misplaced segment shows where it came from.
        let sendCounts = (0..<size).map { rank + $0 + 1 }
        var source: [Int64] = []
        for d in 0..<size { for k in 0..<sendCounts[d] { source.append(Int64(rank * 1000 + d * 100 + k)) } }
        let receiveCounts = (0..<size).map { $0 + rank + 1 }
        var received = [Int64](repeating: -1, count: receiveCounts.reduce(0, +))
        try source.withUnsafeBufferPointer { send in
            try received.withUnsafeMutableBufferPointer {
                try world.alltoallv(send, sendCounts: sendCounts, into: $0, receiveCounts: receiveCounts)
            }
        }
        var expected: [Int64] = []
        for r in 0..<size { for k in 0..<receiveCounts[r] { expected.append(Int64(r * 1000 + rank * 100 + k)) } }
        checks.expectElementsEqual(received, expected, "received segments")
    }

    checks.check("broadcast from every root") {
        for root in 0..<size {
            var buffer = rank == root ? (0..<777).map { Int64(root * 1000 + $0) } : [Int64](repeating: -1, count: 777)
            try world.broadcast(&buffer, root: root)
            checks.expectElementsEqual(buffer, (0..<777).map { Int64(root * 1000 + $0) }, "root \(root)")
        }
    }

    checks.check("broadcast string") {
        let text = rank == 0 ? "model: lstm\nhidden: 50\n" : "ignored on workers"
        let received = try world.broadcast(string: text, root: 0)
        checks.expectEqual(received, "model: lstm\nhidden: 50\n", "broadcast text")
    }

    // Uneven counts with zeros: (3r + 1) mod 5 gives 1, 4, 2, 0 at four ranks.
    let unevenCounts = (0..<size).map { ($0 * 3 + 1) % 5 }
    let countTables: [(String, [Int])] = [
        ("uneven", unevenCounts),
        ("only the last rank", (0..<size).map { $0 == size - 1 ? 5 : 0 }),
        ("all empty", [Int](repeating: 0, count: size)),
    ]

    for (label, counts) in countTables {
        let offsets = counts.indices.map { counts[..<$0].reduce(0, +) }
        let total = counts.reduce(0, +)
        for root in 0..<size {
            checks.check("scatterv \(label) from root \(root)") {
                let source = (0..<total).map { Double($0 * 3 + root) }
                var destination = [Double](repeating: -1, count: counts[rank])
                try destination.withUnsafeMutableBufferPointer { destinationPointer in
                    if rank == root {
                        try source.withUnsafeBufferPointer {
                            try world.scatterv($0, counts: counts, into: destinationPointer, root: root)
                        }
                    } else {
                        try world.scatterv(nil, counts: counts, into: destinationPointer, root: root)
                    }
                }
                let expected = Array(source[offsets[rank]..<offsets[rank] + counts[rank]])
                checks.expectElementsEqual(destination, expected, "slice of rank \(rank)")
            }
            checks.check("gatherv \(label) to root \(root)") {
                let mine = (0..<counts[rank]).map { Int32(rank * 100 + $0) }
                var gathered = [Int32](repeating: -1, count: rank == root ? total : 0)
                try mine.withUnsafeBufferPointer { minePointer in
                    try gathered.withUnsafeMutableBufferPointer {
                        try world.gatherv(minePointer, into: rank == root ? $0 : nil, counts: counts, root: root)
                    }
                }
                if rank == root {
                    let expected = (0..<size).flatMap { peer in (0..<counts[peer]).map { Int32(peer * 100 + $0) } }
                    checks.expectElementsEqual(gathered, expected, "gathered at root")
                }
            }
        }
        checks.check("allgatherv \(label)") {
            let mine = (0..<counts[rank]).map { Float(rank * 10 + $0) }
            var everything = [Float](repeating: -1, count: total)
            try mine.withUnsafeBufferPointer { minePointer in
                try everything.withUnsafeMutableBufferPointer {
                    try world.allgatherv(minePointer, into: $0, counts: counts)
                }
            }
            let expected = (0..<size).flatMap { peer in (0..<counts[peer]).map { Float(peer * 10 + $0) } }
            checks.expectElementsEqual(everything, expected, "gathered everywhere")
        }
    }

    checks.check("allgather") {
        let mine: [Int64] = [Int64(rank), Int64(rank * rank), -Int64(rank)]
        var everything = [Int64](repeating: 0, count: 3 * size)
        try mine.withUnsafeBufferPointer { minePointer in
            try everything.withUnsafeMutableBufferPointer { try world.allgather(minePointer, into: $0) }
        }
        let expected = (0..<size).flatMap { [Int64($0), Int64($0 * $0), -Int64($0)] }
        checks.expectElementsEqual(everything, expected, "gathered everywhere")
        checks.expectElementsEqual(try world.allgather(value: Int32(rank + 5)), (0..<size).map { Int32($0 + 5) }, "one value each")
    }

    checks.check("barrier") { try world.barrier() }

    checks.check("non-blocking allreduce, several in flight, waited out of order") {
        let buffers = (0..<3).map { bucket in
            UnsafeMutableBufferPointer<Float>.allocate(capacity: 4099 + bucket)
        }
        defer { buffers.forEach { $0.deallocate() } }
        for (bucket, buffer) in buffers.enumerated() {
            for index in buffer.indices { buffer[index] = Float(rank + bucket + index % 7) }
        }
        let requests = try buffers.map { try world.startAllreduce($0, op: .sum) }
        var polls = 0
        while try !requests[0].test() { polls += 1 }
        for request in requests.reversed() { try request.wait() }
        for (bucket, buffer) in buffers.enumerated() {
            let expected = (0..<buffer.count).map { index in
                (0..<size).reduce(Float(0)) { $0 + Float($1 + bucket + index % 7) }
            }
            checks.expectElementsEqual(Array(buffer), expected, "bucket \(bucket)")
        }
    }

    if largeBuffers {
        checks.check("64 MiB allreduce") {
            let count = 16 * 1024 * 1024
            var buffer = [Float](unsafeUninitializedCapacity: count) { storage, initialized in
                for index in 0..<count { storage[index] = Float(index % 1024 + rank) }
                initialized = count
            }
            try world.allreduce(&buffer, op: .sum)
            let rankSum = Float(size * (size - 1) / 2)
            var wrong = 0
            var firstWrong = -1
            for index in 0..<count where buffer[index] != Float(size) * Float(index % 1024) + rankSum {
                if firstWrong < 0 { firstWrong = index }
                wrong += 1
            }
            checks.expect(wrong == 0, "\(wrong) wrong elements, first at \(firstWrong)")
        }

        checks.check("64 MiB broadcast") {
            let count = 64 * 1024 * 1024
            var bytes = [UInt8](repeating: rank == 0 ? 0 : 0xEE, count: count)
            if rank == 0 { for index in 0..<count { bytes[index] = UInt8(truncatingIfNeeded: index &* 31) } }
            try world.broadcast(&bytes, root: 0)
            let wrong = (0..<count).first { bytes[$0] != UInt8(truncatingIfNeeded: $0 &* 31) }
            checks.expect(wrong == nil, "first wrong byte at \(wrong ?? -1)")
        }
    }

    checks.check("invalid arguments are refused on every rank before any rank waits") {
        var buffer = [Float](repeating: 0, count: 4)
        let badRoot = checks.expectThrows("root outside the world") { try world.broadcast(&buffer, root: size) }
        checks.expect(badRoot?.message.contains("root \(size)") == true, "message names the root: \(String(describing: badRoot))")
        var destination = [Float](repeating: 0, count: 1)
        let badCounts = checks.expectThrows("counts table of the wrong length") {
            try destination.withUnsafeMutableBufferPointer {
                try world.scatterv(nil, counts: [Int](repeating: 1, count: size + 1), into: $0, root: 0)
            }
        }
        checks.expect(badCounts?.message.contains("entries for \(size) ranks") == true, "message: \(String(describing: badCounts))")
        let small = checks.expectThrows("destination too small") {
            try destination.withUnsafeMutableBufferPointer {
                try world.allgather(UnsafeBufferPointer(start: nil, count: 0), into: $0)
                try world.scatterv(nil, counts: [Int](repeating: 3, count: size), into: $0, root: 0)
            }
        }
        checks.expect(small?.message.contains("holds 1 elements but 3 are needed") == true, "message: \(String(describing: small))")
    }

    checks.check("ranks that disagree on a count get an error naming them, not corrupted memory") {
        guard size > 1 else { return checks.skip("needs two ranks to disagree") }
        var buffer = [Float](repeating: 1, count: rank == 0 ? 100_000 : 10)
        let error = checks.expectThrows("mismatched counts") { try world.allreduce(&buffer, op: .sum) }
        let message = error?.message ?? ""
        let others = (1..<size).map(String.init).joined(separator: ",")
        checks.expect(message.contains("count differs (ranks 0: 100000; ranks \(others): 10)"), "message: \(message)")
        checks.expect(buffer.allSatisfy { $0 == 1 }, "buffer left as it was")
    }

    checks.check("ranks in different collectives get an error naming them") {
        guard size > 1 else { return checks.skip("needs two ranks to disagree") }
        var buffer = [Float](repeating: 1, count: 4)
        let error = checks.expectThrows("mismatched collectives") {
            if rank == size - 1 { try world.barrier() } else { try world.allreduce(&buffer, op: .sum) }
        }
        let message = error?.message ?? ""
        checks.expect(message.contains("ranks \(size - 1): barrier"), "message: \(message)")
        try world.barrier()
    }
}
