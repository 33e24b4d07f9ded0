import Collectives
import Checkpoints
import CustomerData
import Foundation

extension BatchScoring {
    /// `run` across the ranks of `exchange` (mpirun): every rank parses a stripe of `events` at
    /// a time, keeps the customers it owns (a hash of the id picks the rank) and scores them on
    /// `threads` threads. The ranks then deal their rows out by customer id, so that rank r holds
    /// the r-th run of the output's order (`writeRowsInParallel`), and each writes its run into
    /// `output` at its own offset. The file has the customers, order, stages and actions a
    /// one-process `run` writes; scores agree to float32 rounding, since a customer's forward
    /// sums in an order that depends on the batch it shares (at one rank the batches, and so the
    /// bytes, are the same). No rank holds or writes more than about its share of the rows.
    ///
    /// Returns the job's summary on rank 0 and nil elsewhere. The event file must be readable,
    /// and the output's directory writable, at the same paths on every rank (shared storage).
    /// Stages come from the LSTM's stage head or the rule: the graph model needs the whole
    /// customer–product graph in one process.
    package static func run(
        scorer: LSTMScorer, events: String, options: EventFileOptions, asOf: Int?, rules: ScoringRules,
        output: String, batchSize: Int = 256, threads: Int = 1, explain: ExplanationSettings? = nil,
        roundBytesPerRank: Int = 16 << 20, exchangeBytesPerRound: Int = 64 << 20, exchange: any Communicator
    ) throws -> BatchSummary? {
        let rank = exchange.rank
        let model = scorer.model
        let format = try exchange.onEveryRank("checking the options") { () -> ScoreFileFormat in
            try checkSettings(batchSize: batchSize, threads: threads, explain: explain)
            guard exchangeBytesPerRound >= 1 else { throw ScoringError.invalidInput("the bytes exchanged per round must be at least 1") }
            if explain?.baseline == .tenureMean {
                throw ScoringError.invalidInput("--explain-baseline tenure-mean averages every scored customer's features in one process; under mpirun use --explain-baseline zeros")
            }
            return try ScoreFileFormat(path: output)
        }
        let (input, readSeconds) = try timedRead {
            try EventFileFeatures(path: events, options: options, asOf: asOf, trainedSpec: model.dataset.spec,
                                  normalisation: model.dataset.normalisation, roundBytesPerRank: roundBytesPerRank,
                                  exchange: exchange)
        }

        let clock = ContinuousClock()
        var started = clock.now
        let scored = scoreAll(scorer: scorer, input: input, batchSize: batchSize, threads: threads, explain: explain)
        let count = input.customerCount
        try exchange.agreeing("checking the scores") {
            for index in 0..<count where !scored.isFinite(index) {
                _ = try scored.row(index, id: input.customerID(index), scorer: scorer, graphStage: nil, rules: rules,
                                   highValueLine: 0, format: format)
            }
        }
        let totals = try exchange.allreduceSum([Int64(count)])
        let customers = Int(totals[0])
        let scoreSeconds = seconds(clock.now - started)
        let slowest = try exchange.allreduceMax([scored.modelSeconds, scored.explainSeconds].map { Int64($0 * 1e9) })

        let line = try highValueLine(rules: rules, spends: scored.spend, customers: customers, exchange: exchange)
        var drift = scored.drift
        if let counter = drift {
            drift!.setCounts(try exchange.allreduceSum(counter.flattenedCounts.map { Int64($0) }).map { Int($0) })
        }
        let attribution = try jobAttribution(scored.attributionSummary(customerID: input.customerID), explaining: explain != nil,
                                             exchange: exchange)

        started = clock.now
        var actionCounts: [String: Int] = [:]
        let bytesWritten = try writeRowsInParallel(
            output: output, header: header(format: format, stageNames: model.dataset.stageNames, explain: explain != nil),
            localCount: count, customers: customers, bytesPerRound: exchangeBytesPerRound, exchange: exchange) { index in
            let id = input.customerID(index)
            let (row, action) = try scored.row(index, id: id, scorer: scorer, graphStage: nil, rules: rules,
                                               highValueLine: line, format: format)
            actionCounts[action, default: 0] += 1
            return (id, row)
        }
        let writeSeconds = seconds(clock.now - started)
        let jobActions = try gatherActionCounts(actionCounts, exchange: exchange)
        let rankBytesWritten = try exchange.allgather([Int64(bytesWritten)]).map { Int($0) }

        guard rank == 0 else { return nil }
        var summary = BatchSummary(
            checkpoint: model.info, asOfDay: input.asOfDay, customers: customers,
            customersWithoutHistory: input.customersWithoutHistory, rowsRead: input.stats.rows,
            rowsRejected: input.stats.rejected, highValueLine: line, readSeconds: readSeconds,
            scoreSeconds: scoreSeconds, modelSeconds: Double(slowest[0]) / 1e9, threads: scored.workers,
            writeSeconds: writeSeconds, graphSeconds: 0, customersWithGraphStage: 0, actionCounts: jobActions)
        summary.ranks = exchange.size
        summary.rankBytesWritten = rankBytesWritten
        summary.explanation = explain
        summary.explainSeconds = Double(slowest[1]) / 1e9
        summary.worstCompleteness = attribution.worst
        summary.drift = drift?.stabilityIndices() ?? []
        summary.meanAbsoluteAttribution = attribution.sums.map { sums in
            (sums.churn.map { $0 / Double(customers) }, sums.spend.map { $0 / Double(customers) })
        }
        return summary
    }

    /// `ScoringRules.highValueLine` over every rank's spends without gathering them: the value
    /// of the k-th largest spend, found by three rounds of histograms over the bits of the
    /// spends' order-preserving keys (11, 11 and 10 bits), each summed across the ranks.
    package static func highValueLine(rules: ScoringRules, spends: [Float], customers: Int, exchange: any Communicator) throws -> Double {
        if let amount = rules.highValueAmount { return amount }
        guard customers > 0 else { return .infinity }
        // The k-th largest is the (customers - k)-th smallest, counting from 0.
        let key = try orderedKey(atRank: customers - rules.highValueRank(of: customers), of: spends.map(orderKey), exchange: exchange)
        return Double(floatOf(orderKey: key))
    }

    /// The key at position `position` (from 0) of every rank's `keys` sorted together.
    static func orderedKey(atRank position: Int, of keys: [UInt32], exchange: any Communicator) throws -> UInt32 {
        var prefix: UInt32 = 0
        var remaining = position
        var shift = 32
        for width in [11, 11, 10] {
            shift -= width
            let known = 32 - shift - width
            var histogram = [Int64](repeating: 0, count: 1 << width)
            for key in keys where known == 0 || key >> (32 - known) == prefix >> (32 - known) {
                histogram[Int((key >> UInt32(shift)) & UInt32((1 << width) - 1))] += 1
            }
            histogram = try exchange.allreduceSum(histogram)
            var digit = 0
            while remaining >= Int(histogram[digit]) {
                remaining -= Int(histogram[digit])
                digit += 1
            }
            prefix |= UInt32(digit) << UInt32(shift)
        }
        return prefix
    }

    /// The mean attributions and the worst completeness of the whole job: rank 0 sums every
    /// rank's group sums in rank order and keeps the worst customer. `explaining` must be the
    /// same on every rank (a rank without customers has no sums but still takes part).
    static func jobAttribution(
        _ local: (sums: (churn: [Double], spend: [Double])?, worst: CompletenessError?), explaining: Bool,
        exchange: any Communicator
    ) throws -> (sums: (churn: [Double], spend: [Double])?, worst: CompletenessError?) {
        guard explaining else { return (nil, nil) }
        let groups = Explainer.groupNames.count
        let none = [Double](repeating: 0, count: groups)
        let sums = local.sums ?? (none, none)
        let everyRank = try exchange.allgather((sums.churn + sums.spend).map { Int64(bitPattern: $0.bitPattern) })
        var churn = [Double](repeating: 0, count: groups), spend = churn
        for r in 0..<exchange.size {
            for k in 0..<groups {
                churn[k] += Double(bitPattern: UInt64(bitPattern: everyRank[r * 2 * groups + k]))
                spend[k] += Double(bitPattern: UInt64(bitPattern: everyRank[r * 2 * groups + groups + k]))
            }
        }
        var packed: [UInt8] = []
        if let worst = local.worst {
            packed = Array("\(worst.error.bitPattern)\t\(worst.target)\t\(worst.customerID)".utf8)
        }
        let gathered = try packed.withUnsafeBytes { try exchange.gatherBytes($0) }
        var worst: CompletenessError?
        var offset = 0
        for count in exchange.rank == 0 ? gathered.counts : [] {
            defer { offset += count }
            guard count > 0 else { continue }
            let fields = String(decoding: gathered.bytes[offset..<offset + count], as: UTF8.self)
                .split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, let bits = UInt64(fields[0]) else { continue }
            let error = Double(bitPattern: bits)
            if error > worst?.error ?? -1 { worst = CompletenessError(customerID: String(fields[2]), target: String(fields[1]), error: error) }
        }
        return ((churn, spend), worst)
    }

    /// Every rank's action counts, summed on rank 0 (empty elsewhere).
    static func gatherActionCounts(_ counts: [String: Int], exchange: any Communicator) throws -> [String: Int] {
        let packed = Array(counts.map { "\($0.key)\t\($0.value)\n" }.joined().utf8)
        let gathered = try packed.withUnsafeBytes { try exchange.gatherBytes($0) }
        var total: [String: Int] = [:]
        for line in String(decoding: gathered.bytes, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: "\t")
            if fields.count == 2, let n = Int(fields[1]) { total[String(fields[0]), default: 0] += n }
        }
        return total
    }

    /// Writes every rank's rows into `output` in dataset order (ids by length, then bytes),
    /// atomically, with no rank holding or writing much more than its share. Each rank formats
    /// its own rows (`row` gives customer `index` as its id and text; they come in dataset order
    /// already), the ranks cut the id order into one run per rank at splitters sampled from
    /// every rank's ids, and deal the rows out by run in rounds of at most `bytesPerRound` bytes
    /// sent per rank (`alltoallv`). Each rank then merges the rows it received and writes them at
    /// the offset the earlier ranks' byte counts give; rank 0 adds the header and renames the
    /// finished file into place. Returns the bytes this rank wrote.
    ///
    /// A failure anywhere stops every rank, and nothing is written.
    static func writeRowsInParallel(
        output: String, header: String?, localCount: Int, customers: Int, bytesPerRound: Int, exchange: any Communicator,
        row: (Int) throws -> (id: String, text: String)
    ) throws -> Int {
        let rank = exchange.rank, ranks = exchange.size
        let local = try exchange.agreeing("formatting the scores") { () -> RowRecords in
            var records = RowRecords()
            records.reserve(rows: localCount)
            for index in 0..<localCount {
                let (id, text) = try row(index)
                records.append(id: id, text: text)
            }
            return records
        }
        let splitters = try runSplitters(local, customers: customers, exchange: exchange)
        let received = try dealRows(local.byRun(splitters: splitters, runs: ranks), bytesPerRound: bytesPerRound, exchange: exchange)

        let headerBytes = Array((header ?? "").utf8)
        let myBytes = received.reduce(0) { $0 + $1.textBytes }
        let everyRank = try exchange.allgather([Int64(myBytes)]).map { Int($0) }
        let offset = headerBytes.count + everyRank[..<rank].reduce(0, +)

        let target = URL(fileURLWithPath: output)
        let created: SharedFileWriter? = try exchange.agreeing("creating \(output)") {
            guard rank == 0 else { return nil }
            do { return try SharedFileWriter.create(for: target) } catch {
                throw ScoringError.io(path: output, reason: "cannot create the output: \(error)")
            }
        }
        let temporary = try exchange.broadcast(string: created?.temporary.path ?? "", root: 0)
        var written = 0
        do {
            try exchange.agreeing("writing \(output)") {
                do {
                    let writer = try created ?? SharedFileWriter.join(URL(fileURLWithPath: temporary), for: target)
                    if rank == 0 { try headerBytes.withUnsafeBytes { try writer.write($0, at: 0) } }
                    written = try RowRecords.merge(received) { bytes, at in try writer.write(bytes, at: offset + at) }
                    if rank == 0 { written += headerBytes.count }
                    if created == nil { try writer.finish() }
                } catch {
                    throw ScoringError.io(path: output, reason: "\(error); nothing was written")
                }
            }
            try exchange.agreeing("committing \(output)") {
                do { try created?.commit() } catch {
                    throw ScoringError.io(path: output, reason: "\(error); nothing was written")
                }
            }
        } catch {
            created?.abandon()
            throw error
        }
        return written
    }

    /// `runs - 1` ids that cut the dataset order into runs of nearly equal numbers of rows:
    /// every rank samples its sorted ids at one stride over the whole population (so each rank
    /// contributes in proportion to its rows), every rank receives all samples and picks the
    /// same quantiles. About `samplesPerRun` samples fall in each run, so a run's size is off
    /// its share by a few percent at most.
    static func runSplitters(_ local: RowRecords, customers: Int, samplesPerRun: Int = 512, exchange: any Communicator) throws -> [[UInt8]] {
        let runs = exchange.size
        guard runs > 1 else { return [] }
        let stride = max(1, customers / (runs * samplesPerRun))
        var samples = RowRecords()
        for index in Swift.stride(from: 0, to: local.count, by: stride) { samples.append(idOf: local, index) }
        let counts = try exchange.allgather([Int64(samples.bytes.count)]).map { Int($0) }
        var everyone = [UInt8](repeating: 0, count: counts.reduce(0, +))
        try samples.bytes.withUnsafeBytes { mine in
            try everyone.withUnsafeMutableBytes { try exchange.allgatherv(mine, counts: counts, into: $0) }
        }
        var ids = RowRecords(bytes: everyone).ids()
        ids.sort { a, b in a.withUnsafeBytes { x in b.withUnsafeBytes { y in identifierPrecedes(x, y) } } }
        guard !ids.isEmpty else { return [] }
        return (1..<runs).map { ids[min(ids.count - 1, $0 * ids.count / runs)] }
    }

    /// Sends each run of `outgoing` (one byte range of records per rank) to its rank, in rounds
    /// of at most `bytesPerRound` bytes from each rank (at least one record per destination per
    /// round, so a long row still moves), and returns what came from each rank, in rank order.
    static func dealRows(_ outgoing: (records: RowRecords, runs: [Range<Int>]), bytesPerRound: Int, exchange: any Communicator) throws -> [RowRecords] {
        let ranks = exchange.size, rank = exchange.rank
        let perDestination = max(1, bytesPerRound / ranks)
        var cursors = outgoing.runs.map(\.lowerBound)
        var received = [RowRecords](repeating: RowRecords(), count: ranks)
        while true {
            var sendCounts = [Int](repeating: 0, count: ranks)
            var ends = cursors
            for destination in 0..<ranks {
                ends[destination] = outgoing.records.end(from: cursors[destination], limit: outgoing.runs[destination].upperBound,
                                                         budget: perDestination)
                sendCounts[destination] = ends[destination] - cursors[destination]
            }
            let table = try exchange.allgather(sendCounts.map { Int64($0) })
            if table.allSatisfy({ $0 == 0 }) { break }
            let receiveCounts = (0..<ranks).map { Int(table[$0 * ranks + rank]) }
            var sendBuffer = [UInt8]()
            sendBuffer.reserveCapacity(sendCounts.reduce(0, +))
            for destination in 0..<ranks { sendBuffer += outgoing.records.bytes[cursors[destination]..<ends[destination]] }
            var receiveBuffer = [UInt8](repeating: 0, count: receiveCounts.reduce(0, +))
            try sendBuffer.withUnsafeBytes { source in
                try receiveBuffer.withUnsafeMutableBytes {
                    try exchange.alltoallv(source, sendCounts: sendCounts, into: $0, receiveCounts: receiveCounts)
                }
            }
            var at = 0
            for sender in 0..<ranks {
                received[sender].append(records: receiveBuffer[at..<at + receiveCounts[sender]])
                at += receiveCounts[sender]
            }
            cursors = ends
        }
        return received
    }
}

extension ScoredCustomers {
    /// Whether customer `index`'s model outputs are all finite numbers.
    func isFinite(_ index: Int) -> Bool {
        churn[index].isFinite && spend[index].isFinite
            && lstmStages[index * stageWidth ..< (index + 1) * stageWidth].allSatisfy(\.isFinite)
    }
}

/// Rows as records of [u32 id length][id][u32 text length][text], back to back: what the
/// ranks exchange when they deal the output's rows out by id.
struct RowRecords {
    private(set) var bytes: [UInt8] = []
    /// Where each record starts.
    private(set) var starts: [Int] = []
    /// The text bytes of all records: what this rank writes of them.
    private(set) var textBytes = 0

    init() {}

    /// Records from their bytes, as another rank sent them.
    init(bytes: [UInt8]) { append(records: bytes[...]) }

    var count: Int { starts.count }

    mutating func reserve(rows: Int) { starts.reserveCapacity(rows) }

    mutating func append(id: String, text: String) {
        var id = id, text = text
        starts.append(bytes.count)
        id.withUTF8 { appendField($0) }
        text.withUTF8 {
            textBytes += $0.count
            appendField($0)
        }
    }

    /// Record `index` of `other`'s id alone, as a record with empty text (a splitter sample).
    mutating func append(idOf other: RowRecords, _ index: Int) {
        starts.append(bytes.count)
        other.bytes.withUnsafeBytes { appendField(other.id(index, in: $0).assumingMemoryBound(to: UInt8.self)) }
        appendField(UnsafeBufferPointer(start: nil, count: 0))
    }

    mutating func append(records: ArraySlice<UInt8>) {
        var at = bytes.count
        bytes += records
        bytes.withUnsafeBytes { raw in
            while at < raw.count {
                starts.append(at)
                let idLength = Int(raw.loadUnaligned(fromByteOffset: at, as: UInt32.self))
                let textLength = Int(raw.loadUnaligned(fromByteOffset: at + 4 + idLength, as: UInt32.self))
                textBytes += textLength
                at += 8 + idLength + textLength
            }
        }
    }

    private mutating func appendField(_ field: UnsafeBufferPointer<UInt8>) {
        withUnsafeBytes(of: UInt32(field.count)) { bytes += $0 }
        bytes += field
    }

    func id(_ index: Int, in raw: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        let at = starts[index]
        let length = Int(raw.loadUnaligned(fromByteOffset: at, as: UInt32.self))
        return UnsafeRawBufferPointer(rebasing: raw[(at + 4)..<(at + 4 + length)])
    }

    func text(_ index: Int, in raw: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        let idEnd = starts[index] + 4 + Int(raw.loadUnaligned(fromByteOffset: starts[index], as: UInt32.self))
        let length = Int(raw.loadUnaligned(fromByteOffset: idEnd, as: UInt32.self))
        return UnsafeRawBufferPointer(rebasing: raw[(idEnd + 4)..<(idEnd + 4 + length)])
    }

    /// Every record's id, as bytes.
    func ids() -> [[UInt8]] {
        bytes.withUnsafeBytes { raw in (0..<count).map { Array(id($0, in: raw)) } }
    }

    /// The byte range of each run: the records (sorted by id) before the first splitter, then
    /// those from each splitter to the next.
    func byRun(splitters: [[UInt8]], runs: Int) -> (records: RowRecords, runs: [Range<Int>]) {
        var boundaries = [Int](repeating: bytes.count, count: runs + 1)
        boundaries[0] = 0
        bytes.withUnsafeBytes { raw in
            var run = 0
            for index in 0..<count {
                let id = self.id(index, in: raw)
                while run < splitters.count, !splitters[run].withUnsafeBytes({ identifierPrecedes(id, $0) }) {
                    run += 1
                    boundaries[run] = starts[index]
                }
            }
        }
        return (self, (0..<runs).map { boundaries[$0]..<boundaries[$0 + 1] })
    }

    /// The end of the whole records from byte `start` that fit in `budget` bytes (at least one
    /// when any is left before `limit`).
    func end(from start: Int, limit: Int, budget: Int) -> Int {
        guard start < limit else { return start }
        var index = recordIndex(at: start)
        var end = start
        while index < count, starts[index] < limit {
            let next = index + 1 < count ? starts[index + 1] : bytes.count
            if end > start && next - start > budget { break }
            end = next
            index += 1
        }
        return end
    }

    private func recordIndex(at offset: Int) -> Int {
        var low = 0, high = starts.count
        while low < high {
            let middle = (low + high) / 2
            if starts[middle] < offset { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Merges runs that are each sorted by id and hands out their texts in id order, a buffer
    /// at a time with its offset from the first text; returns the bytes handed out.
    static func merge(_ runs: [RowRecords], write: (UnsafeRawBufferPointer, Int) throws -> Void) throws -> Int {
        var buffer = [UInt8]()
        let capacity = 1 << 20
        buffer.reserveCapacity(capacity)
        var flushed = 0
        func flush() throws {
            guard !buffer.isEmpty else { return }
            try buffer.withUnsafeBytes { try write($0, flushed) }
            flushed += buffer.count
            buffer.removeAll(keepingCapacity: true)
        }
        var heads = runs.map { _ in 0 }
        // One run per rank: a linear scan for the smallest head, O(ranks) a row.
        while true {
            var best = -1
            for run in runs.indices where heads[run] < runs[run].count {
                if best < 0 || runs[run].bytes.withUnsafeBytes({ x in runs[best].bytes.withUnsafeBytes { y in
                    identifierPrecedes(runs[run].id(heads[run], in: x), runs[best].id(heads[best], in: y))
                } }) {
                    best = run
                }
            }
            guard best >= 0 else { break }
            runs[best].bytes.withUnsafeBytes { raw in buffer += runs[best].text(heads[best], in: raw) }
            heads[best] += 1
            if buffer.count >= capacity { try flush() }
        }
        try flush()
        return flushed
    }
}

/// A key whose unsigned order is the order of finite floats (negative values flipped whole,
/// positive ones with the sign bit set).
func orderKey(_ value: Float) -> UInt32 {
    let bits = value.bitPattern
    return bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000
}

func floatOf(orderKey key: UInt32) -> Float {
    Float(bitPattern: key & 0x8000_0000 != 0 ? key & 0x7FFF_FFFF : ~key)
}
