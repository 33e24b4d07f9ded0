import Collectives
import Checkpoints
import CustomerData
import Foundation

extension BatchScoring {
    /// `run` across the ranks of `exchange` (mpirun): every rank parses a stripe of `events` at
    /// a time, keeps the customers it owns (a hash of the id picks the rank) and scores them on
    /// `threads` threads; rank 0 merges the ranks' rows by customer id into `output`. The file
    /// has the customers, order, stages and actions a one-process `run` writes; scores agree to
    /// float32 rounding, since a customer's forward sums in an order that depends on the batch it
    /// shares (at one rank the batches, and so the bytes, are the same). Rank 0's memory for the
    /// merge is `mergeBlock` rows per rank, whatever the population.
    ///
    /// Returns the job's summary on rank 0 and nil elsewhere. The event file must be readable
    /// at the same path on every rank; only rank 0 writes. Stages come from the LSTM's stage
    /// head or the rule: the graph model needs the whole customer–product graph in one process.
    package static func run(
        scorer: LSTMScorer, events: String, options: EventFileOptions, asOf: Int?, rules: ScoringRules,
        output: String, batchSize: Int = 256, threads: Int = 1, explain: ExplanationSettings? = nil,
        roundBytesPerRank: Int = 16 << 20, mergeBlock: Int = 16_384, exchange: any Communicator
    ) throws -> BatchSummary? {
        let rank = exchange.rank
        let model = scorer.model
        let format = try exchange.onEveryRank("checking the options") { () -> ScoreFileFormat in
            try checkSettings(batchSize: batchSize, threads: threads, explain: explain)
            guard mergeBlock >= 1 else { throw ScoringError.invalidInput("the merge block must hold at least one row") }
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
        try mergeRows(output: output, header: header(format: format, stageNames: model.dataset.stageNames, explain: explain != nil),
                      block: mergeBlock, localCount: count, exchange: exchange) { index in
            let id = input.customerID(index)
            let (row, action) = try scored.row(index, id: id, scorer: scorer, graphStage: nil, rules: rules,
                                               highValueLine: line, format: format)
            actionCounts[action, default: 0] += 1
            return (id, row)
        }
        let writeSeconds = seconds(clock.now - started)
        let jobActions = try gatherActionCounts(actionCounts, exchange: exchange)

        guard rank == 0 else { return nil }
        var summary = BatchSummary(
            checkpoint: model.info, asOfDay: input.asOfDay, customers: customers,
            customersWithoutHistory: input.customersWithoutHistory, rowsRead: input.stats.rows,
            rowsRejected: input.stats.rejected, highValueLine: line, readSeconds: readSeconds,
            scoreSeconds: scoreSeconds, modelSeconds: Double(slowest[0]) / 1e9, threads: scored.workers,
            writeSeconds: writeSeconds, graphSeconds: 0, customersWithGraphStage: 0, actionCounts: jobActions)
        summary.ranks = exchange.size
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

    /// Writes every rank's rows into `output` on rank 0, in dataset order (ids by length, then
    /// bytes), atomically. Each rank's rows already come in that order, so rank 0 merges them,
    /// asking a rank for its next `block` rows whenever it has none of that rank's left; `row`
    /// gives this rank's customer `index` as its id and its text.
    ///
    /// A failure anywhere stops every rank at the next block, and nothing is written.
    static func mergeRows(
        output: String, header: String?, block: Int, localCount: Int, exchange: any Communicator,
        row: (Int) throws -> (id: String, text: String)
    ) throws {
        let rank = exchange.rank, ranks = exchange.size
        let perRank = try exchange.allgather([Int64(localCount)]).map { Int($0) }
        let writer: AtomicFileWriter? = try exchange.agreeing("creating \(output)") {
            guard rank == 0 else { return nil }
            do {
                return try AtomicFileWriter(url: URL(fileURLWithPath: output))
            } catch {
                throw ScoringError.io(path: output, reason: "cannot create the output: \(error)")
            }
        }
        var merger = rank == 0 ? RowMerger(perRank: perRank, block: block) : nil
        var failure: Error?
        if let header, let writer {
            do { try writer.write(header) } catch { failure = ScoringError.io(path: output, reason: "\(error); nothing was written") }
        }
        var want = merger?.firstRequest() ?? [Int64](repeating: 0, count: ranks)
        if failure != nil { want = [Int64](repeating: -1, count: ranks) }
        var sent = 0
        while true {
            try exchange.broadcast(&want, root: 0)
            if want.contains(-1) {
                if let failure { throw failure }
                throw PeerRankFailure(ranks: [0], step: "writing \(output)")
            }
            if want.allSatisfy({ $0 == 0 }) { break }
            let outgoing = try exchange.agreeing("formatting the scores") { () -> [UInt8] in
                var bytes: [UInt8] = []
                for index in sent..<sent + Int(want[rank]) {
                    let (id, text) = try row(index)
                    RowMerger.append(id: id, text: text, to: &bytes)
                }
                return bytes
            }
            sent += Int(want[rank])
            let gathered = try outgoing.withUnsafeBytes { try exchange.gatherBytes($0) }
            guard let writer else { continue }
            merger!.receive(gathered.bytes, counts: gathered.counts)
            do {
                want = try merger!.emit { try writer.write($0) }
            } catch {
                failure = ScoringError.io(path: output, reason: "\(error); nothing was written")
                want = [Int64](repeating: -1, count: ranks)
            }
        }
        try exchange.agreeing("committing \(output)") {
            do {
                try writer?.commit()
            } catch {
                throw ScoringError.io(path: output, reason: "\(error); nothing was written")
            }
        }
    }
}

extension ScoredCustomers {
    /// Whether customer `index`'s model outputs are all finite numbers.
    func isFinite(_ index: Int) -> Bool {
        churn[index].isFinite && spend[index].isFinite
            && lstmStages[index * stageWidth ..< (index + 1) * stageWidth].allSatisfy(\.isFinite)
    }
}

/// Rank 0's side of `mergeRows`: one queue of received rows per rank, each as
/// [u32 id length][id][u32 text length][text], emitted smallest id first.
struct RowMerger {
    private var queues: [[UInt8]]
    private var heads: [Int]
    private var unrequested: [Int]
    private let block: Int

    init(perRank: [Int], block: Int) {
        queues = perRank.map { _ in [] }
        heads = perRank.map { _ in 0 }
        unrequested = perRank
        self.block = block
    }

    static func append(id: String, text: String, to bytes: inout [UInt8]) {
        var id = id, text = text
        id.withUTF8 { idBytes in
            withUnsafeBytes(of: UInt32(idBytes.count)) { bytes += $0 }
            bytes += idBytes
        }
        text.withUTF8 { textBytes in
            withUnsafeBytes(of: UInt32(textBytes.count)) { bytes += $0 }
            bytes += textBytes
        }
    }

    /// The first request: a block from every rank that has rows.
    mutating func firstRequest() -> [Int64] { request() }

    /// Takes the rows of one round, `counts` bytes from each rank in rank order.
    mutating func receive(_ bytes: [UInt8], counts: [Int]) {
        var offset = 0
        for (r, count) in counts.enumerated() {
            if count > 0 {
                queues[r] = Array(bytes[offset..<offset + count])
                heads[r] = 0
            }
            offset += count
        }
    }

    /// Writes rows while every rank that has rows left has one queued, then returns the next
    /// request (all zeros when every row is out).
    mutating func emit(_ write: (UnsafeRawBufferPointer) throws -> Void) throws -> [Int64] {
        while true {
            for r in queues.indices where heads[r] >= queues[r].count && unrequested[r] > 0 { return request() }
            var best = -1
            for r in queues.indices where heads[r] < queues[r].count {
                if best < 0 || precedes(r, best) { best = r }
            }
            guard best >= 0 else { return [Int64](repeating: 0, count: queues.count) }
            try queues[best].withUnsafeBytes { bytes in
                let head = heads[best]
                let idLength = Int(bytes.loadUnaligned(fromByteOffset: head, as: UInt32.self))
                let textStart = head + 4 + idLength
                let textLength = Int(bytes.loadUnaligned(fromByteOffset: textStart, as: UInt32.self))
                try write(UnsafeRawBufferPointer(rebasing: bytes[(textStart + 4)..<(textStart + 4 + textLength)]))
                heads[best] = textStart + 4 + textLength
            }
        }
    }

    /// A block from every rank whose queue is empty and that has rows not yet asked for.
    private mutating func request() -> [Int64] {
        var want = [Int64](repeating: 0, count: queues.count)
        for r in queues.indices where heads[r] >= queues[r].count && unrequested[r] > 0 {
            want[r] = Int64(min(block, unrequested[r]))
            unrequested[r] -= Int(want[r])
        }
        return want
    }

    private func precedes(_ a: Int, _ b: Int) -> Bool {
        queues[a].withUnsafeBytes { x in
            queues[b].withUnsafeBytes { y in
                identifierPrecedes(id(x, at: heads[a]), id(y, at: heads[b]))
            }
        }
    }

    private func id(_ bytes: UnsafeRawBufferPointer, at head: Int) -> UnsafeRawBufferPointer {
        let length = Int(bytes.loadUnaligned(fromByteOffset: head, as: UInt32.self))
        return UnsafeRawBufferPointer(rebasing: bytes[(head + 4)..<(head + 4 + length)])
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
