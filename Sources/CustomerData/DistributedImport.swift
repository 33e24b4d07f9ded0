#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives

/// The rank that owns a customer, from its id hash. The hash's low bits place the id in the
/// interner and its top bits pick the partition, so the owner comes from a remix of all of
/// them: each rank's customers still spread evenly over both.
@inline(__always)
func ownerRank(hash: UInt64, ranks: Int) -> Int {
    var h = hash ^ (hash >> 31)
    h = h &* 0xBF58_476D_1CE4_E5B9
    return Int(truncatingIfNeeded: (h >> 32) % UInt64(ranks))
}

/// Parsed events sorted by the rank that owns their customer and, within that, by the
/// partition of the owner's `CustomerAggregates` that aggregates it, so that an owner
/// aggregates what arrives where it lands instead of queueing it again (on 2 ranks that second
/// queueing took an eighth of the parse). Products are interned here, in this rank's file
/// order, and renumbered to the job-wide index before the events leave.
final class EventRouter: EventSink {
    let cutoff: Int
    let countsPairs: Bool
    let ranks: Int
    let partitions: Int
    private let partitionShift: UInt64
    let localProducts = ByteInterner()
    /// Job-wide product index of each local one, for those already announced.
    // Touched for every event: see CustomerShard for why exclusivity is unchecked.
    @exclusivity(unchecked) private(set) var globalProduct: [Int32] = []
    /// Bucket `owner * partitions + partition`; each owner's ids in `ids[owner]`.
    @exclusivity(unchecked) private var buckets: UnsafeMutablePointer<GrowableBuffer<PendingEvent>>
    @exclusivity(unchecked) private var ids: UnsafeMutablePointer<GrowableBuffer<UInt8>>

    /// Routes for `aggregates` (its cut-off, partitions and whether it keeps products) on
    /// every one of `ranks`, which all aggregate with the same partitions.
    init(for aggregates: CustomerAggregates, ranks: Int) {
        cutoff = aggregates.spec.cutoffDay
        countsPairs = aggregates.countsPairs
        self.ranks = ranks
        partitions = aggregates.partitionCount
        partitionShift = aggregates.partitionShift
        let empty = PendingEvent(hash: 0, orderHash: 0, amount: 0, quantity: 0, idOffset: 0, idLength: 0, day: 0, product: 0)
        // Small to start: there are ranks × partitions buckets, and they grow to a round's share.
        buckets = .allocate(capacity: ranks * partitions)
        for b in 0..<ranks * partitions { (buckets + b).initialize(to: GrowableBuffer(capacity: 64, fill: empty)) }
        ids = .allocate(capacity: ranks)
        for r in 0..<ranks { (ids + r).initialize(to: GrowableBuffer(capacity: 1 << 12, fill: 0)) }
    }

    deinit {
        for b in 0..<ranks * partitions { buckets[b].free() }
        for r in 0..<ranks { ids[r].free() }
        buckets.deinitialize(count: ranks * partitions)
        buckets.deallocate()
        ids.deinitialize(count: ranks)
        ids.deallocate()
    }

    func consume(_ event: RawEvent) {
        let n = event.customer.count
        let id = event.customer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        let hash = hashIdentifier(id, n)
        let owner = ownerRank(hash: hash, ranks: ranks)
        var product: Int32 = -1
        // As CustomerAggregates.consume: products of history events only.
        if countsPairs && event.day <= cutoff && event.product.count > 0 {
            product = localProducts.intern(event.product.baseAddress!, event.product.count)
        }
        let ownerIDs = ids + owner
        let offset = ownerIDs.pointee.grow(by: n)
        if n > 0 { UnsafeMutableRawPointer(ownerIDs.pointee.pointer + offset).copyMemory(from: id, byteCount: n) }
        let bucket = buckets + (owner &* partitions &+ Int(truncatingIfNeeded: hash >> partitionShift))
        bucket.pointee.append(PendingEvent(
            hash: hash, orderHash: event.orderHash, amount: FixedPoint.from(event.amount),
            quantity: FixedPoint.from(event.quantity), idOffset: UInt32(offset), idLength: UInt32(n),
            day: Int32(clamping: event.day), product: product))
    }

    /// The events queued for `owner` in its `partition`, in file order; their id offsets
    /// count from `ids(owner)`.
    func bucket(owner: Int, partition: Int) -> GrowableBuffer<PendingEvent> { buckets[owner * partitions + partition] }
    func ids(owner: Int) -> GrowableBuffer<UInt8> { ids[owner] }

    /// Local products not yet announced to the other ranks.
    var unannouncedProducts: Range<Int> { globalProduct.count..<localProducts.count }

    /// Records the job-wide indices of the products just announced and renumbers the queued
    /// events' products with them.
    func announced(_ indices: [Int32]) {
        globalProduct += indices
        for b in 0..<ranks * partitions {
            let queued = buckets[b].pointer
            for e in 0..<buckets[b].count where queued[e].product >= 0 {
                queued[e].product = globalProduct[Int(queued[e].product)]
            }
        }
    }

    func removeAll() {
        for b in 0..<ranks * partitions { buckets[b].removeAll() }
        for r in 0..<ranks { ids[r].removeAll() }
    }
}

/// Rejected rows of one rank, held until their line numbers in the whole file are known.
final class RejectsCollector: RejectSink {
    private(set) var lines: [Int] = []
    private(set) var reasons: [String] = []
    /// Each line's bytes up to what the rejects file shows of it.
    private(set) var contents: [[UInt8]] = []
    private var firstUnnumbered = 0

    func add(line: Int, reason: String, content: UnsafeRawBufferPointer) throws {
        lines.append(line)
        reasons.append(reason)
        contents.append(Array(content.prefix(rejectShownBytes)))
    }

    /// Adds `offset` to the line numbers of the rows added since the last call.
    func number(from offset: Int) {
        for k in firstUnnumbered..<lines.count { lines[k] += offset }
        firstUnnumbered = lines.count
    }

    /// Per reject: `line` (8 bytes), then the reason and the content, each as a length (8
    /// bytes) and its bytes.
    func serialised() -> [UInt8] {
        var bytes: [UInt8] = []
        for k in lines.indices {
            withUnsafeBytes(of: Int64(lines[k])) { bytes += $0 }
            for field in [Array(reasons[k].utf8), contents[k]] {
                withUnsafeBytes(of: Int64(field.count)) { bytes += $0 }
                bytes += field
            }
        }
        return bytes
    }

    /// Every rank's rejects on rank 0, in line order (empty on the other ranks).
    static func gathered(_ collector: RejectsCollector, exchange: any Communicator) throws -> [(line: Int, reason: String, content: [UInt8])] {
        let gathered = try collector.serialised().withUnsafeBytes { try exchange.gatherBytes($0) }
        var result: [(line: Int, reason: String, content: [UInt8])] = []
        gathered.bytes.withUnsafeBytes { bytes in
            var position = 0
            func field() -> [UInt8] {
                let length = Int(bytes.loadUnaligned(fromByteOffset: position, as: Int64.self))
                defer { position += 8 + length }
                return Array(bytes[(position + 8)..<(position + 8 + length)])
            }
            while position < bytes.count {
                let line = Int(bytes.loadUnaligned(fromByteOffset: position, as: Int64.self))
                position += 8
                let reason = String(decoding: field(), as: UTF8.self)
                result.append((line, reason, field()))
            }
        }
        result.sort { $0.line < $1.line }
        return result
    }

    /// The rejects of every rank counted by reason, on rank 0 (empty on the other ranks).
    static func gatheredSummary(_ collector: RejectsCollector, exchange: any Communicator) throws -> RejectSummary {
        let tally = RejectTally()
        for reject in try gathered(collector, exchange: exchange) {
            reject.content.withUnsafeBytes { tally.add(line: reject.line, reason: reject.reason, content: $0) }
        }
        return tally.summary
    }
}

/// Byte offsets where each rank's share of each round starts, so that every rank's ranges
/// hold whole lines and round k covers the file's k-th stripe in rank order: the events reach
/// their owners in file order, which keeps per-customer results (and transaction counting,
/// which compares consecutive order ids) exactly those of one pass.
struct StripePlan {
    let fileSize: Int
    let ranks: Int
    let bytesPerRank: Int
    var rounds: Int { max(1, (fileSize + ranks * bytesPerRank - 1) / (ranks * bytesPerRank)) }

    func range(round: Int, rank: Int, fd: Int32, path: String) throws -> Range<Int> {
        let stripe = round * ranks * bytesPerRank
        let lower = try lineStart(atOrAfter: min(fileSize, stripe + rank * bytesPerRank), fd: fd, path: path, fileSize: fileSize)
        let upper = try lineStart(atOrAfter: min(fileSize, stripe + (rank + 1) * bytesPerRank), fd: fd, path: path, fileSize: fileSize)
        return lower..<max(lower, upper)
    }
}

extension Importer {
    /// Imports `input` into `output` with every rank of `exchange` parsing its share of the
    /// file and aggregating the customers it owns; every rank then writes its share of the
    /// dataset (`writeInParallel`), byte for byte the one a one-process `run` writes (same
    /// fingerprint). Returns the summary on rank 0, nil on the others. The input and the output
    /// must be at the same paths on every rank (shared storage).
    package static func run(input: String, output: String, options: ImportOptions, exchange: any Communicator) throws -> ImportSummary? {
        let started = monotonicSeconds()
        let rank = exchange.rank, ranks = exchange.size
        let format: CSVFormat = try exchange.onEveryRank("checking the options") {
            guard ranks <= Int(UInt16.max) else { throw DataError.invalidOption("an import runs on at most 65,535 ranks, not \(ranks)") }
            return try options.preset.stripedFormat(custom: options.format, task: "run")
        }
        let file = try StripedEventFile(path: input, format: format, bytesPerRank: options.roundBytesPerRank, exchange: exchange) {
            try validate(input: input, output: output, options: options)
        }
        let fileBytes = file.fileBytes

        // Every rank reaches the same cut-off (the last day is reduced) and the same verdict on it.
        // The first pass's rejects are dropped once the window is known: the real pass holds its own.
        let (spec, passes) = try { () throws -> (FeatureSpec, Int) in
            let firstPassRejects = RejectsCollector()
            return try exchange.onEveryRank("deriving the window") {
                // The last day is reduced, so every rank gathers the rejects together or none does.
                try options.featureSpec(input: input, lastDay: { try file.lastEventDay(exchange: exchange, rejects: firstPassRejects) },
                                        rejectsWithoutEvents: { try RejectsCollector.gatheredSummary(firstPassRejects, exchange: exchange) })
            }
        }()
        let newParents = rank == 0 ? missingParents(of: output) : []
        let temporary: String? = try exchange.agreeing("creating the output directory") {
            rank == 0 ? try makeTemporaryDirectory(for: output) : nil
        }
        var keepTemporary = false
        defer {
            if let temporary, !keepTemporary {
                removeFlatDirectory(temporary)
                removeEmptyDirectories(newParents)
            }
        }

        // Parse, route, aggregate: one round per stripe.
        let parseStarted = monotonicSeconds()
        let partitions = try options.resolvedPartitions(inputBytes: fileBytes / ranks)
        let aggregates = CustomerAggregates(spec: spec, partitions: partitions, chunkEvents: options.aggregationChunkEvents)
        let rejects = RejectsCollector()
        var stats = try file.aggregateOwnedCustomers(into: aggregates, rejects: rejects, exchange: exchange)
        let parseSeconds = monotonicSeconds() - parseStarted

        let totals = try exchange.allreduceSum([
            stats.rows, stats.imported, stats.rejected, stats.skippedNonPurchase, stats.blankLines, stats.headerLines,
            aggregates.eventsInHistory, aggregates.eventsInHorizon, aggregates.eventsAfterHorizon, aggregates.customerCount,
        ].map { Int64($0) }).map { Int($0) }
        stats = ReadStats()
        (stats.rows, stats.imported, stats.rejected, stats.skippedNonPurchase, stats.blankLines, stats.headerLines) =
            (totals[0], totals[1], totals[2], totals[3], totals[4], totals[5])
        stats.bytes = fileBytes
        stats.timeFormat = file.layout.timeFormat
        stats.seconds = parseSeconds
        let counts = AggregateCounts(eventsInHistory: totals[6], eventsInHorizon: totals[7], eventsAfterHorizon: totals[8],
                                     customersSeen: totals[9])
        try exchange.onEveryRank("counting the rows") {
            if stats.rows == 0 && stats.headerLines == 0 && stats.blankLines == 0 { throw DataError.emptyFile(path: input) }
        }

        let gatheredRejects = try RejectsCollector.gathered(rejects, exchange: exchange)
        let rejectSummary = try exchange.agreeing("writing the rejected rows") { () -> RejectSummary in
            guard let temporary else { return RejectSummary() }
            let writer = try RejectsWriter(path: temporary + "/rejects.csv")
            for reject in gatheredRejects {
                try reject.content.withUnsafeBytes { try writer.add(line: reject.line, reason: reject.reason, content: $0) }
            }
            try writer.close()
            return writer.tally.summary
        }
        // Every rank reaches the same verdict from the same totals; rank 0 keeps the rejects
        // and reports them.
        try exchange.onEveryRank("checking the rejected rows") {
            try checkRejects(stats, rejectSummary, options: options, temporary: temporary, output: output, input: input)
        }
        let lastEventDay = Int(try exchange.allreduceMax([Int64(aggregates.lastEventDay)])[0])
        try exchange.onEveryRank("checking the horizon") {
            try checkHorizon(spec, lastEventDay: lastEventDay, calendar: stats.timeFormat.isCalendar, options: options)
        }

        let datasetSource = sourceInfo(input: input, options: options, stats: stats,
                                       amountMeaning: "spend in the input's currency")
        let written = try writeInParallel(aggregates: aggregates, counts: counts, stats: stats, source: datasetSource,
                                          options: options, temporary: temporary, exchange: exchange)
        var manifest = written.manifest
        let normalisation = written.normalisation
        let plan = try options.snapshotPlan()
        if !plan.isEmpty {
            // As in one process: a pass over the file per earlier cut-off, each rank aggregating
            // the customers it owns, then every rank writing its share of that cut-off's dataset.
            var entries: [DatasetManifest.Snapshots.Entry] = []
            for (j, back) in plan.enumerated() {
                let earlier = ImportOptions.snapshotSpec(spec, periodsBack: back)
                let snapshotAggregates = CustomerAggregates(spec: earlier, partitions: partitions, chunkEvents: options.aggregationChunkEvents,
                                                            countsPairs: false)
                // The same rows as the first pass, so its read counts stand; the event counts are per window.
                _ = try file.aggregateOwnedCustomers(into: snapshotAggregates, rejects: nil, exchange: exchange)
                let windowCounts = try exchange.allreduceSum([
                    snapshotAggregates.eventsInHistory, snapshotAggregates.eventsInHorizon, snapshotAggregates.eventsAfterHorizon,
                    snapshotAggregates.customerCount,
                ].map { Int64($0) }).map { Int($0) }
                let name = DatasetManifest.Snapshots.directoryName(j + 1)
                let directory: String? = try exchange.agreeing("creating the directory of an earlier cut-off") {
                    try temporary.map { try makeSnapshotDirectory(name, in: $0) }
                }
                var earlierOptions = options
                earlierOptions.buildGraph = false
                let (written, _) = try writeInParallel(
                    aggregates: snapshotAggregates,
                    counts: AggregateCounts(eventsInHistory: windowCounts[0], eventsInHorizon: windowCounts[1],
                                            eventsAfterHorizon: windowCounts[2], customersSeen: windowCounts[3]),
                    stats: stats, source: datasetSource,
                    options: earlierOptions, temporary: directory, exchange: exchange,
                    snapshot: SnapshotRows(normalisation: normalisation, periodsBack: back))
                try exchange.agreeing("syncing the directory of an earlier cut-off") { try directory.map(fsyncDirectory) }
                if let written { entries.append(.init(written, directory: name)) }
            }
            try exchange.agreeing("rewriting the manifest") {
                guard let temporary, manifest != nil else { return }
                manifest!.snapshots = .init(count: options.snapshots, everyPeriods: plan[0], datasets: entries)
                try writeManifest(&manifest!, directory: temporary)
            }
        }
        try exchange.agreeing("moving the dataset into place") {
            if let temporary { try publish(temporary, as: output) }
        }
        keepTemporary = true
        let peaks = try exchange.allgather([Int64(peakResidentBytes())]).map { Int($0) }
        guard rank == 0, let manifest else { return nil }
        var summary = ImportSummary(
            manifest: manifest, stats: stats, outputPath: output, rejectsPath: output + "/rejects.csv",
            seconds: monotonicSeconds() - started, parseSeconds: parseSeconds, passes: passes + plan.count,
            peakResidentBytes: peaks.max() ?? 0)
        summary.rankPeakResidentBytes = peaks
        return summary
    }

    /// Announces this round's new products of every rank, in rank order, so that every rank
    /// interns the same products at the same indices into `products`; the router renumbers its
    /// queued events to those indices. (The index order never reaches a dataset: the graph
    /// orders products by id.)
    static func announceProducts(router: EventRouter, into products: ByteInterner, exchange: any Communicator) throws {
        var packed: [UInt8] = []
        for p in router.unannouncedProducts {
            let bytes = router.localProducts.bytes(p)
            withUnsafeBytes(of: UInt32(bytes.count)) { packed += $0 }
            packed += bytes
        }
        let counts = try exchange.allgather([Int64(packed.count)]).map { Int($0) }
        guard counts.contains(where: { $0 > 0 }) else {
            router.announced([])
            return
        }
        var all = [UInt8](repeating: 0, count: counts.reduce(0, +))
        try packed.withUnsafeBytes { source in
            try all.withUnsafeMutableBytes { try exchange.allgatherv(source, counts: counts, into: $0) }
        }
        var mine: [Int32] = []
        try all.withUnsafeBytes { bytes in
            var position = 0
            for sender in 0..<exchange.size {
                let end = position + counts[sender]
                while position < end {
                    let length = Int(bytes.loadUnaligned(fromByteOffset: position, as: UInt32.self))
                    guard position + 4 + length <= end else {
                        throw DataError.invalidOption("rank \(sender) announced a malformed product list")
                    }
                    let index = products.intern(bytes.baseAddress! + position + 4, length)
                    if sender == exchange.rank { mine.append(index) }
                    position += 4 + length
                }
            }
        }
        router.announced(mine)
    }

    /// Sends each queued event to the rank that owns its customer and aggregates what arrives,
    /// a partition at a time and within it sender by sender in rank order (which is file order
    /// within the round). This rank's own events are aggregated where the router queued them.
    static func exchangeEvents(router: EventRouter, into aggregates: CustomerAggregates, exchange: any Communicator) throws {
        let ranks = exchange.size, me = exchange.rank, partitions = router.partitions
        let stride = MemoryLayout<PendingEvent>.stride
        // To each owner: the id bytes it will receive, then the events of each of its partitions.
        let header = 1 + partitions
        var sending = [Int64](repeating: 0, count: ranks * header)
        for owner in 0..<ranks where owner != me {
            sending[owner * header] = Int64(router.ids(owner: owner).count)
            for p in 0..<partitions { sending[owner * header + 1 + p] = Int64(router.bucket(owner: owner, partition: p).count) }
        }
        var arriving = [Int64](repeating: 0, count: ranks * header)
        let headerBytes = [Int](repeating: header * 8, count: ranks)
        try sending.withUnsafeBytes { outgoing in
            try arriving.withUnsafeMutableBytes { incoming in
                try exchange.alltoallv(outgoing, sendCounts: headerBytes, into: incoming, receiveCounts: headerBytes)
            }
        }
        func eventBytes(_ counts: [Int64], _ rank: Int) -> Int {
            counts[(rank * header + 1)..<((rank + 1) * header)].reduce(0) { $0 + Int($1) } * stride
        }
        let sendEventBytes = (0..<ranks).map { eventBytes(sending, $0) }
        let sendIDBytes = (0..<ranks).map { Int(sending[$0 * header]) }
        let receiveEventBytes = (0..<ranks).map { eventBytes(arriving, $0) }
        let receiveIDBytes = (0..<ranks).map { Int(arriving[$0 * header]) }

        let sendEvents = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, sendEventBytes.reduce(0, +)), alignment: 16)
        let sendIDs = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, sendIDBytes.reduce(0, +)), alignment: 16)
        let receivedEvents = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, receiveEventBytes.reduce(0, +)), alignment: 16)
        let receivedIDs = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, receiveIDBytes.reduce(0, +)), alignment: 16)
        defer { sendEvents.deallocate(); sendIDs.deallocate(); receivedEvents.deallocate(); receivedIDs.deallocate() }
        var eventOffset = 0, idOffset = 0
        for owner in 0..<ranks where owner != me {
            for p in 0..<partitions {
                let bucket = router.bucket(owner: owner, partition: p)
                let bytes = bucket.count * stride
                if bytes > 0 { (sendEvents.baseAddress! + eventOffset).copyMemory(from: bucket.pointer, byteCount: bytes) }
                eventOffset += bytes
            }
            let ownerIDs = router.ids(owner: owner)
            if ownerIDs.count > 0 { (sendIDs.baseAddress! + idOffset).copyMemory(from: ownerIDs.pointer, byteCount: ownerIDs.count) }
            idOffset += ownerIDs.count
        }
        try exchange.alltoallv(UnsafeRawBufferPointer(rebasing: sendEvents[..<eventOffset]), sendCounts: sendEventBytes,
                               into: receivedEvents, receiveCounts: receiveEventBytes)
        try exchange.alltoallv(UnsafeRawBufferPointer(rebasing: sendIDs[..<idOffset]), sendCounts: sendIDBytes,
                               into: receivedIDs, receiveCounts: receiveIDBytes)

        // Where each sender's events of each partition start, and each sender's ids (their
        // offsets count from the start of the sender's own segment).
        var partitionStart = [Int](repeating: 0, count: ranks * partitions)
        var idStart = [Int](repeating: 0, count: ranks)
        var nextEvent = 0, nextID = 0
        for sender in 0..<ranks where sender != me {
            for p in 0..<partitions {
                partitionStart[sender * partitions + p] = nextEvent
                nextEvent += Int(arriving[sender * header + 1 + p])
            }
            idStart[sender] = nextID
            nextID += receiveIDBytes[sender]
        }
        let events = receivedEvents.baseAddress!.assumingMemoryBound(to: PendingEvent.self)
        for p in 0..<partitions {
            for sender in 0..<ranks {
                if sender == me {
                    let own = router.bucket(owner: me, partition: p)
                    aggregates.consumeRouted(partition: p, own.pointer, count: own.count,
                                             idBytes: UnsafeRawPointer(router.ids(owner: me).pointer))
                } else {
                    aggregates.consumeRouted(partition: p, events + partitionStart[sender * partitions + p],
                                             count: Int(arriving[sender * header + 1 + p]),
                                             idBytes: UnsafeRawPointer(receivedIDs.baseAddress! + idStart[sender]))
                }
            }
        }
        router.removeAll()
        aggregates.roundAggregated()
    }
}

extension ReadStats {
    mutating func add(_ other: ReadStats) {
        rows += other.rows
        imported += other.imported
        rejected += other.rejected
        skippedNonPurchase += other.skippedNonPurchase
        blankLines += other.blankLines
        headerLines += other.headerLines
        bytes += other.bytes
        seconds += other.seconds
    }
}
