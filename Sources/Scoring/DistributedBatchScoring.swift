import Collectives
import Checkpoints
import CustomerData
import Foundation

extension BatchScoring {
    /// `run` across the ranks of `exchange` (mpirun): every rank parses a stripe of `events` at
    /// a time, keeps the customers it owns (a hash of the id picks the rank) and scores them on
    /// `threads` threads. Rank r then writes the r-th run of the output's order at its own
    /// offset of `output`, merging it from blocks of rows the other ranks format for it
    /// (`writeRowsInParallel`). The file has the customers, order, stages and actions a
    /// one-process `run` writes; scores agree to float32 rounding, since a customer's forward
    /// sums in an order that depends on the batch it shares (at one rank the batches, and so the
    /// bytes, are the same). No rank holds or writes more than about its share of the rows.
    ///
    /// Returns the job's summary on rank 0 and nil elsewhere. The event file must be readable,
    /// and the output's directory writable, at the same paths on every rank (shared storage).
    /// Stages come from the LSTM's stage head or the rule: the graph model needs the whole
    /// customer–product graph in one process.
    package static func run(
        scorer: LSTMScorer, job: BatchScoringJob, roundBytesPerRank: Int = 16 << 20, exchangeBytesPerRound: Int = 16 << 20,
        exchange: any Communicator
    ) throws -> BatchSummary? {
        let (events, options, asOf, rules, output) = (job.events, job.options, job.asOf, job.rules, job.output)
        let (batchSize, threads, explain, highValue) = (job.batchSize, job.threads, job.explain, job.highValue)
        let rank = exchange.rank
        let model = scorer.model
        let format = try exchange.onEveryRank("checking the options") { () -> ScoreFileFormat in
            try checkSettings(batchSize: batchSize, threads: threads, explain: explain)
            guard exchangeBytesPerRound >= 1 else { throw ScoringError.invalidInput("the bytes exchanged per round must be at least 1") }
            guard job.graph == nil else {
                throw ScoringError.invalidInput("graph stages need the whole customer–product graph in one process; score them with one process")
            }
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

        let line = try HighValueLine.of(highValue, rules: rules, model: model, scoredCustomers: customers) {
            try highValueLine(rules: rules, spends: scored.spend, customers: customers, exchange: exchange)
        }
        var drift = scored.drift
        if let counter = drift {
            drift!.setCounts(try exchange.allreduceSum(counter.flattenedCounts.map { Int64($0) }).map { Int($0) })
        }
        let attribution = try jobAttribution(scored.attributionSummary(customerID: input.customerID), explaining: explain != nil,
                                             exchange: exchange)

        started = clock.now
        let (bytesWritten, actionCounts) = try writeRowsInParallel(
            output: output, header: header(format: format, stageNames: model.dataset.stageNames, explain: explain != nil),
            localCount: count, customers: customers, bytesPerRound: exchangeBytesPerRound, exchange: exchange,
            id: input.customerIDBytes) { index in
            let (text, action) = try scored.row(index, id: input.customerID(index), scorer: scorer, graphStage: nil, rules: rules,
                                                highValueLine: line.amount, format: format)
            return (text, action)
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
    /// atomically, each rank writing one run of that order at its own offset, with no rank
    /// holding more than a few blocks of rows. `row` formats this rank's customer `index` (the
    /// text and its action; `id` gives its id), and the customers come in dataset order already.
    ///
    /// The ranks cut the id order into one run per rank at splitters sampled from every rank's
    /// ids. A first pass formats each row to learn its length, so that every rank knows, from a
    /// table of bytes per (sender, run), where its run starts in the file. Then, in rounds, each
    /// rank asks each sender for the next rows of its run whenever it has none of that sender's
    /// left (rows of about `bytesPerRound` a round from each rank), merges what it holds while it
    /// holds a row of every sender with rows to come, and writes the merged text at its offset;
    /// rank 0 adds the header and renames the finished file into place. Returns the bytes this
    /// rank wrote and the actions of its customers.
    ///
    /// A failure anywhere stops every rank, and nothing is written.
    static func writeRowsInParallel(
        output: String, header: String?, localCount: Int, customers: Int, bytesPerRound: Int, exchange: any Communicator,
        id: (Int) -> UnsafeRawBufferPointer, row: (Int) throws -> (text: String, action: String)
    ) throws -> (bytes: Int, actions: [String: Int]) {
        let rank = exchange.rank, ranks = exchange.size
        let splitters = try runSplitters(localCount: localCount, id: id, customers: customers, exchange: exchange)
        let runStarts = runBoundaries(localCount: localCount, id: id, splitters: splitters, runs: ranks)

        // The first pass: the actions, and the bytes each run gets from here.
        var actions: [String: Int] = [:]
        var bytesPerRun = [Int64](repeating: 0, count: ranks)
        try exchange.agreeing("formatting the scores") {
            for run in 0..<ranks {
                for index in runStarts[run]..<runStarts[run + 1] {
                    let (text, action) = try row(index)
                    bytesPerRun[run] += Int64(text.utf8.count)
                    actions[action, default: 0] += 1
                }
            }
        }
        let bytesTable = try exchange.allgather(bytesPerRun)
        let rowsTable = try exchange.allgather((0..<ranks).map { Int64(runStarts[$0 + 1] - runStarts[$0]) })
        let headerBytes = Array((header ?? "").utf8)
        let runBytes = (0..<ranks).map { run in (0..<ranks).reduce(0) { $0 + Int(bytesTable[$1 * ranks + run]) } }
        let offset = headerBytes.count + runBytes[..<rank].reduce(0, +)
        let totalRows = rowsTable.reduce(0) { $0 + Int($1) }
        let meanRowBytes = max(1, runBytes.reduce(0, +) / max(1, totalRows))
        let rowsPerRequest = max(1, bytesPerRound / ranks / meanRowBytes)

        let target = URL(fileURLWithPath: output)
        let created: SharedFileWriter? = try exchange.agreeing("creating \(output)") {
            guard rank == 0 else { return nil }
            do { return try SharedFileWriter.create(for: target) } catch {
                throw ScoringError.io(path: output, reason: "cannot create the output: \(error)")
            }
        }
        let temporary = try exchange.broadcast(string: created?.temporary.path ?? "", root: 0)
        do {
            let writer = try exchange.agreeing("opening \(output)") { () -> SharedFileWriter in
                do { return try created ?? SharedFileWriter.join(URL(fileURLWithPath: temporary), for: target) } catch {
                    throw ScoringError.io(path: output, reason: "\(error); nothing was written")
                }
            }
            var merger = RunMerger(rowsFromSender: (0..<ranks).map { Int(rowsTable[$0 * ranks + rank]) }, rowsPerRequest: rowsPerRequest)
            var cursors = Array(runStarts.dropLast())
            var failure: Error?
            var rowBytesWritten = 0
            if rank == 0 {
                do { try headerBytes.withUnsafeBytes { try writer.write($0, at: 0) } } catch { failure = error }
            }
            while true {
                // What each rank asks each sender for; a rank that failed to write asks -1 of all.
                let asks = failure == nil ? merger.requests() : [Int](repeating: -1, count: ranks)
                let table = try exchange.allgather(asks.map { Int64($0) })
                if let failed = (0..<ranks).first(where: { table[$0 * ranks] < 0 }) {
                    if let failure { throw ScoringError.io(path: output, reason: "\(failure); nothing was written") }
                    throw PeerRankFailure(ranks: [failed], step: "writing \(output)")
                }
                if table.allSatisfy({ $0 == 0 }) { break }
                var outgoing = RowRecords()
                var sendCounts = [Int](repeating: 0, count: ranks)
                try exchange.agreeing("formatting the scores") {
                    for destination in 0..<ranks {
                        let before = outgoing.bytes.count
                        let wanted = Int(table[destination * ranks + rank])
                        for index in cursors[destination]..<cursors[destination] + wanted {
                            outgoing.append(id: id(index), text: try row(index).text)
                        }
                        cursors[destination] += wanted
                        sendCounts[destination] = outgoing.bytes.count - before
                    }
                }
                let byteTable = try exchange.allgather(sendCounts.map { Int64($0) })
                let receiveCounts = (0..<ranks).map { Int(byteTable[$0 * ranks + rank]) }
                var incoming = [UInt8](repeating: 0, count: receiveCounts.reduce(0, +))
                try outgoing.bytes.withUnsafeBytes { source in
                    try incoming.withUnsafeMutableBytes {
                        try exchange.alltoallv(source, sendCounts: sendCounts, into: $0, receiveCounts: receiveCounts)
                    }
                }
                merger.receive(incoming, counts: receiveCounts)
                guard failure == nil else { continue }
                do {
                    try merger.emit { text in
                        try writer.write(text, at: offset + rowBytesWritten)
                        rowBytesWritten += text.count
                    }
                } catch {
                    failure = error
                }
            }
            try exchange.agreeing("writing \(output)") {
                do { if created == nil { try writer.finish() } } catch {
                    throw ScoringError.io(path: output, reason: "\(error); nothing was written")
                }
            }
            try exchange.agreeing("committing \(output)") {
                do { try created?.commit() } catch {
                    throw ScoringError.io(path: output, reason: "\(error); nothing was written")
                }
            }
            return (rowBytesWritten + (rank == 0 ? headerBytes.count : 0), actions)
        } catch {
            created?.abandon()
            throw error
        }
    }

    /// `runs - 1` ids that cut the dataset order into runs of nearly equal numbers of rows:
    /// every rank samples its sorted ids at one stride over the whole population (so each rank
    /// contributes in proportion to its rows), every rank receives all samples and picks the
    /// same quantiles. About `samplesPerRun` samples fall in each run, so a run's size is off
    /// its share by a few percent at most.
    static func runSplitters(
        localCount: Int, id: (Int) -> UnsafeRawBufferPointer, customers: Int, samplesPerRun: Int = 512, exchange: any Communicator
    ) throws -> [[UInt8]] {
        let runs = exchange.size
        guard runs > 1 else { return [] }
        let stride = max(1, customers / (runs * samplesPerRun))
        var samples = RowRecords()
        for index in Swift.stride(from: 0, to: localCount, by: stride) { samples.append(id: id(index), text: UnsafeRawBufferPointer(start: nil, count: 0)) }
        let counts = try exchange.allgather([Int64(samples.bytes.count)]).map { Int($0) }
        var everyone = [UInt8](repeating: 0, count: counts.reduce(0, +))
        try samples.bytes.withUnsafeBytes { mine in
            try everyone.withUnsafeMutableBytes { try exchange.allgatherv(mine, counts: counts, into: $0) }
        }
        var ids = RowRecords(bytes: everyone[...]).ids()
        ids.sort { a, b in a.withUnsafeBytes { x in b.withUnsafeBytes { y in identifierPrecedes(x, y) } } }
        guard !ids.isEmpty else { return [] }
        return (1..<runs).map { ids[min(ids.count - 1, $0 * ids.count / runs)] }
    }

    /// Where each run starts among this rank's customers (sorted by id), and the count at the end.
    static func runBoundaries(localCount: Int, id: (Int) -> UnsafeRawBufferPointer, splitters: [[UInt8]], runs: Int) -> [Int] {
        var starts = [Int](repeating: localCount, count: runs + 1)
        starts[0] = 0
        var run = 0
        for index in 0..<localCount {
            while run < splitters.count, !splitters[run].withUnsafeBytes({ identifierPrecedes(id(index), $0) }) {
                run += 1
                starts[run] = index
            }
        }
        return starts
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
/// ranks send one another when they deal the output's rows out by id.
struct RowRecords {
    private(set) var bytes: [UInt8] = []
    /// Where each record starts.
    private(set) var starts: [Int] = []

    init() {}

    /// Records from their bytes, as another rank sent them.
    init(bytes: ArraySlice<UInt8>) {
        self.bytes = Array(bytes)
        self.bytes.withUnsafeBytes { raw in
            var at = 0
            while at < raw.count {
                starts.append(at)
                let idLength = Int(raw.loadUnaligned(fromByteOffset: at, as: UInt32.self))
                let textLength = Int(raw.loadUnaligned(fromByteOffset: at + 4 + idLength, as: UInt32.self))
                at += 8 + idLength + textLength
            }
        }
    }

    var count: Int { starts.count }

    mutating func append(id: UnsafeRawBufferPointer, text: String) {
        var text = text
        text.withUTF8 { append(id: id, text: UnsafeRawBufferPointer($0)) }
    }

    mutating func append(id: UnsafeRawBufferPointer, text: UnsafeRawBufferPointer) {
        starts.append(bytes.count)
        for field in [id, text] {
            withUnsafeBytes(of: UInt32(field.count)) { bytes += $0 }
            bytes += field
        }
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
}

/// One rank's side of `writeRowsInParallel`: the rows of its run still to come from each
/// sender, a queue of received rows per sender, and the merge of those queues by id.
struct RunMerger {
    private var queues: [RowRecords]
    private var heads: [Int]
    /// Rows of each sender not yet asked for.
    private var unrequested: [Int]
    private let rowsPerRequest: Int
    private var buffer: [UInt8] = []

    init(rowsFromSender: [Int], rowsPerRequest: Int) {
        queues = rowsFromSender.map { _ in RowRecords() }
        heads = rowsFromSender.map { _ in 0 }
        unrequested = rowsFromSender
        self.rowsPerRequest = rowsPerRequest
        buffer.reserveCapacity(1 << 20)
    }

    /// Rows to ask of each sender: a block from every sender whose queue is empty and that has
    /// rows not yet asked for.
    mutating func requests() -> [Int] {
        queues.indices.map { sender in
            guard heads[sender] >= queues[sender].count, unrequested[sender] > 0 else { return 0 }
            let wanted = min(rowsPerRequest, unrequested[sender])
            unrequested[sender] -= wanted
            return wanted
        }
    }

    /// Takes one round's rows, `counts` bytes from each sender in rank order.
    mutating func receive(_ bytes: [UInt8], counts: [Int]) {
        var offset = 0
        for (sender, count) in counts.enumerated() {
            if count > 0 {
                queues[sender] = RowRecords(bytes: bytes[offset..<offset + count])
                heads[sender] = 0
            }
            offset += count
        }
    }

    /// Hands out merged text, a buffer at a time, while every sender with rows to come has one
    /// queued; the rest waits for the next round.
    mutating func emit(_ write: (UnsafeRawBufferPointer) throws -> Void) throws {
        while true {
            var best = -1
            var blocked = false
            for sender in queues.indices {
                if heads[sender] < queues[sender].count {
                    if best < 0 || precedes(sender, best) { best = sender }
                } else if unrequested[sender] > 0 {
                    blocked = true
                }
            }
            guard best >= 0, !blocked else { break }
            queues[best].bytes.withUnsafeBytes { raw in buffer += queues[best].text(heads[best], in: raw) }
            heads[best] += 1
            if buffer.count >= 1 << 20 { try flush(write) }
        }
        try flush(write)
    }

    private mutating func flush(_ write: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try write($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func precedes(_ a: Int, _ b: Int) -> Bool {
        queues[a].bytes.withUnsafeBytes { x in
            queues[b].bytes.withUnsafeBytes { y in
                identifierPrecedes(queues[a].id(heads[a], in: x), queues[b].id(heads[b], in: y))
            }
        }
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
