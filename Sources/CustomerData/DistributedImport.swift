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
    private(set) var tails: [String] = []
    private var firstUnnumbered = 0

    func add(line: Int, reason: String, content: UnsafeRawBufferPointer) throws {
        lines.append(line)
        tails.append(rejectLineTail(reason: reason, content: content))
    }

    /// Adds `offset` to the line numbers of the rows added since the last call.
    func number(from offset: Int) {
        for k in firstUnnumbered..<lines.count { lines[k] += offset }
        firstUnnumbered = lines.count
    }

    /// `line` (8 bytes), tail length (8 bytes), tail bytes; per reject.
    func serialised() -> [UInt8] {
        var bytes: [UInt8] = []
        for (line, tail) in zip(lines, tails) {
            withUnsafeBytes(of: Int64(line)) { bytes += $0 }
            let utf8 = Array(tail.utf8)
            withUnsafeBytes(of: Int64(utf8.count)) { bytes += $0 }
            bytes += utf8
        }
        return bytes
    }

    static func deserialise(_ bytes: UnsafeRawBufferPointer) -> [(line: Int, tail: String)] {
        var result: [(Int, String)] = []
        var position = 0
        while position < bytes.count {
            let line = bytes.loadUnaligned(fromByteOffset: position, as: Int64.self)
            let length = Int(bytes.loadUnaligned(fromByteOffset: position + 8, as: Int64.self))
            let tail = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(position + 16)..<(position + 16 + length)]), as: UTF8.self)
            result.append((Int(line), tail))
            position += 16 + length
        }
        return result
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
    /// file and aggregating the customers it owns; rank 0 writes the dataset, byte for byte
    /// the one a one-process `run` writes (same fingerprint). Returns the summary on rank 0,
    /// nil on the others. The input must be readable at the same path on every rank; only
    /// rank 0 writes.
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
        let (spec, passes) = try exchange.onEveryRank("deriving the window") {
            try options.featureSpec(input: input) { try file.lastEventDay(exchange: exchange) }
        }
        let temporary: String? = try exchange.agreeing("creating the output directory") {
            rank == 0 ? try makeTemporaryDirectory(for: output) : nil
        }
        var keepTemporary = false
        defer { if let temporary, !keepTemporary { removeFlatDirectory(temporary) } }

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

        let gatheredRejects = try rejects.serialised().withUnsafeBytes { try exchange.gatherBytes($0) }
        try exchange.agreeing("writing the rejected rows") {
            guard let temporary else { return }
            let writer = try RejectsWriter(path: temporary + "/rejects.csv")
            var all = gatheredRejects.bytes.withUnsafeBytes { RejectsCollector.deserialise($0) }
            all.sort { $0.line < $1.line }
            for reject in all { try writer.add(line: reject.line, tail: reject.tail) }
            try writer.close()
        }
        // Every rank reaches the same verdict from the same totals; rank 0 keeps the rejects.
        try exchange.onEveryRank("checking the rejected rows") {
            try checkRejects(stats, options: options, temporary: temporary, output: output, input: input)
        }

        let datasetSource = sourceInfo(input: input, options: options, stats: stats,
                                       amountMeaning: "spend in the input's currency")
        let manifest = try writeAcrossRanks(aggregates: aggregates, counts: counts, stats: stats, source: datasetSource,
                                            options: options, temporary: temporary, exchange: exchange)
        try exchange.agreeing("moving the dataset into place") {
            if let temporary { try publish(temporary, as: output) }
        }
        keepTemporary = true
        let peaks = try exchange.allgather([Int64(peakResidentBytes())]).map { Int($0) }
        guard rank == 0, let manifest else { return nil }
        var summary = ImportSummary(
            manifest: manifest, stats: stats, outputPath: output, rejectsPath: output + "/rejects.csv",
            seconds: monotonicSeconds() - started, parseSeconds: parseSeconds, passes: passes,
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

    /// The writing half: the ranks agree on the dataset order (rank 0 merges every rank's
    /// sorted ids), stream their customers' records to rank 0 in that order a block at a time,
    /// and send their customer–product pairs for the graph. Returns the manifest on rank 0.
    private static func writeAcrossRanks(
        aggregates: CustomerAggregates, counts: AggregateCounts, stats: ReadStats, source: DatasetManifest.Source,
        options: ImportOptions, temporary: String?, exchange: any Communicator
    ) throws -> DatasetManifest? {
        let rank = exchange.rank, ranks = exchange.size
        let spec = aggregates.spec
        let localOrder = aggregates.datasetOrder()
        let customersPerRank = try exchange.allgather([Int64(localOrder.count)]).map { Int($0) }
        let n = customersPerRank.reduce(0, +)
        try exchange.onEveryRank("counting the customers") {
            guard n > 0 else { throw noHistory(spec: spec, source: source) }
        }
        // Rank 0: the dataset order, as the rank of each position's customer.
        let owner = try mergeOwners(
            localIDs: { aggregates.customerID(Int(localOrder[$0])) }, customersPerRank: customersPerRank,
            idsPerGather: options.idsPerGather, exchange: exchange)

        let withGraph = options.buildGraph && aggregates.products.count > 0
        let assembler: DatasetAssembler? = try exchange.agreeing("creating the dataset files") {
            guard let temporary else { return nil }
            return try DatasetAssembler(spec: spec, split: options.split, directory: temporary, expectedCustomers: n,
                                        keepGraphTotals: withGraph)
        }

        // Records, a block of dataset positions at a time: rank 0 says how many each rank sends.
        let recordBytes = CustomerRecordHeader.recordBytes(spec)
        let block = 4096
        let outgoing = UnsafeMutableRawPointer.allocate(byteCount: block * recordBytes, alignment: 16)
        defer { outgoing.deallocate() }
        var incoming = [UInt8](repeating: 0, count: rank == 0 ? block * recordBytes : 0)
        var sent = 0
        // The block's customer ids go with its records: rank 0 never holds every id.
        var ids: [UInt8] = []
        var start = 0
        while start < n {
            let end = min(n, start + block)
            let take = try customersByRank(at: start..<end, owner: owner, exchange: exchange)
            let mineNow = Int(take[rank])
            ids.removeAll(keepingCapacity: true)
            localOrder.withUnsafeBufferPointer { order in
                for k in 0..<mineNow {
                    let c = Int(order[sent + k])
                    aggregates.prefetchForWriting(order, at: sent + k)
                    aggregates.writeRecord(c, into: outgoing + k * recordBytes)
                    appendLengthPrefixed(aggregates.customerID(c), to: &ids)
                }
            }
            sent += mineNow
            let byteCounts = take.map { Int($0) * recordBytes }
            try incoming.withUnsafeMutableBytes { destination in
                try exchange.gatherv(UnsafeRawBufferPointer(start: outgoing, count: mineNow * recordBytes), counts: byteCounts,
                                     into: rank == 0 ? destination : nil)
            }
            let gatheredIDs = try ids.withUnsafeBytes { try exchange.gatherBytes($0) }
            try exchange.agreeing("writing the customer files") {
                guard let assembler else { return }
                var segment = [Int](repeating: 0, count: ranks), idCursor = [Int](repeating: 0, count: ranks)
                for r in 1..<max(1, ranks) {
                    segment[r] = segment[r - 1] + byteCounts[r - 1]
                    idCursor[r] = idCursor[r - 1] + gatheredIDs.counts[r - 1]
                }
                var used = [Int](repeating: 0, count: ranks)
                try incoming.withUnsafeBytes { records in
                    try gatheredIDs.bytes.withUnsafeBytes { idBytes in
                        for position in start..<end {
                            let r = Int(owner[position])
                            let id = readLengthPrefixed(idBytes, at: &idCursor[r])
                            try assembler.add(id: id, record: records.baseAddress! + segment[r] + used[r] * recordBytes)
                            used[r] += 1
                        }
                    }
                }
            }
            start = end
        }

        // Every rank's records are out: only the pairs are read from here on.
        aggregates.releaseCustomerRecords()
        let totals = assembler?.graphTotals
        // Rank 0 finishes the customer files on a thread of its own while the graph's
        // collectives run on this one; a failure there is reported with the ranks' agreement below.
        let (customerFiles, (graphFiles, graphInfo)) = try runAlongside({ Result { try assembler?.finish() } }) {
            () throws -> ([DatasetFile], DatasetManifest.Graph?) in
            guard withGraph else { return ([], nil) }
            return try writeGraph(
                aggregates: aggregates, localOrder: localOrder, customersPerRank: customersPerRank, owner: owner,
                directory: temporary, totals: totals, pairsPerGather: options.pairsPerGather, exchange: exchange)
        }
        return try exchange.agreeing("writing the dataset") {
            guard let assembler, let customerFiles = try customerFiles.get() else { return nil }
            return try finishDataset(assembler: assembler, customerFiles: customerFiles, graphFiles: graphFiles,
                                     graphInfo: graphInfo, counts: counts, stats: stats, source: source)
        }
    }

    /// A customer–product pair held by the rank that owns the customer: a sort key of the two
    /// node positions (customer-major for the customers' rows, product-major for the products').
    private struct RankPair {
        var key: UInt64
        var count: Int32

        var high: Int32 { Int32(truncatingIfNeeded: key >> 32) }
        var low: Int32 { Int32(truncatingIfNeeded: key) }
        static func key(_ high: Int32, _ low: Int32) -> UInt64 { UInt64(UInt32(bitPattern: high)) << 32 | UInt64(UInt32(bitPattern: low)) }
    }

    /// The graph files, written by rank 0 (`directory` and `totals` given there only) from rows
    /// the ranks send in node order, so that no rank holds the graph: each rank sorts its own
    /// pairs, sends its customers' rows a block of dataset positions at a time (the records'
    /// merge order, `owner`), then its pairs of a block of products at a time, which rank 0 merges
    /// by customer. A block of products holds at most `pairsPerGather` pairs across all ranks (or
    /// one product), and no gather grows with the graph. Returns the files and manifest entry on
    /// rank 0, nothing elsewhere.
    private static func writeGraph(
        aggregates: CustomerAggregates, localOrder: [Int32], customersPerRank: [Int], owner: [UInt16], directory: String?,
        totals: GraphCustomerTotals?, pairsPerGather: Int, exchange: any Communicator
    ) throws -> (files: [DatasetFile], info: DatasetManifest.Graph?) {
        let rank = exchange.rank, ranks = exchange.size
        let n = customersPerRank.reduce(0, +)
        // Every rank learns where its customers landed.
        var positionsByRank = [Int32](repeating: 0, count: rank == 0 ? n : 0)
        if rank == 0 {
            var next = [Int](repeating: 0, count: ranks)
            var base = [Int](repeating: 0, count: ranks)
            for r in 1..<max(1, ranks) { base[r] = base[r - 1] + customersPerRank[r - 1] }
            for position in 0..<n {
                let r = Int(owner[position])
                positionsByRank[base[r] + next[r]] = Int32(position)
                next[r] += 1
            }
        }
        // Ascending: the local order is the dataset's.
        var myPositions = [Int32](repeating: 0, count: localOrder.count)
        try positionsByRank.withUnsafeBytes { source in
            try myPositions.withUnsafeMutableBytes {
                try exchange.scatterv(rank == 0 ? source : nil, counts: customersPerRank.map { $0 * 4 }, into: $0)
            }
        }
        positionsByRank = []
        // Every rank interned the same products at the same indices (`announceProducts`).
        let productPosition = productPositions(aggregates.products).position
        let productCount = productPosition.count
        var pairs = try customerMajorPairs(aggregates: aggregates, localOrder: localOrder, myPositions: myPositions,
                                           productPosition: productPosition)

        let writer: StreamedGraphWriter? = try exchange.agreeing("creating the graph files") {
            guard let directory else { return nil }
            return try StreamedGraphWriter(directory: directory, customerCount: n, productCount: productCount)
        }
        var message: [Int32] = []
        // Rank 0 adds every row of a gathered block, each rank's part read from its own cursor.
        func addRows(_ gathered: (bytes: [UInt8], counts: [Int]), _ rows: (UnsafeBufferPointer<Int32>, inout [Int]) throws -> Void) throws {
            try exchange.agreeing("writing the graph") {
                guard writer != nil else { return }
                var cursor = [Int](repeating: 0, count: ranks)
                for r in 1..<max(1, ranks) { cursor[r] = cursor[r - 1] + gathered.counts[r - 1] / 4 }
                try gathered.bytes.withUnsafeBytes { raw in try rows(raw.bindMemory(to: Int32.self), &cursor) }
            }
        }

        // Customers' rows, a block of dataset positions at a time: [degree, (product, count)…]
        // per customer, in each rank's (ascending) order. Each rank knows its positions now, so
        // it finds its customers of the block itself.
        let block = 4096
        var nextPair = 0, nextCustomer = 0
        var start = 0
        while start < n {
            let end = min(n, start + block)
            message.removeAll(keepingCapacity: true)
            while nextCustomer < myPositions.count && Int(myPositions[nextCustomer]) < end {
                let customer = myPositions[nextCustomer]
                nextCustomer += 1
                let first = nextPair
                while nextPair < pairs.count && pairs[nextPair].high == customer { nextPair += 1 }
                message.append(Int32(nextPair - first))
                for k in first..<nextPair {
                    message.append(pairs[k].low)
                    message.append(pairs[k].count)
                }
            }
            let gathered = try message.withUnsafeBytes { try exchange.gatherBytes($0) }
            try addRows(gathered) { values, cursor in
                for position in start..<end {
                    let r = Int(owner[position])
                    let degree = Int(values[cursor[r]])
                    try writer!.addRow(UnsafeBufferPointer(rebasing: values[cursor[r] + 1 ..< cursor[r] + 1 + 2 * degree]))
                    cursor[r] += 1 + 2 * degree
                }
            }
            start = end
        }
        myPositions = []

        // Products' rows: every rank's pairs of a block of products, (product, customer, count),
        // sorted by product then customer; rank 0 merges each product's customers.
        // A counting sort by product of the pairs' indices: walking the pairs in customer order
        // leaves each product's customers sorted.
        var productStarts = [Int](repeating: 0, count: productCount + 1)
        for pair in pairs { productStarts[Int(pair.low) + 1] += 1 }
        let productDegrees = try exchange.allreduceSum(productStarts.dropFirst().map { Int64($0) })
        for p in 0..<productCount { productStarts[p + 1] += productStarts[p] }
        var byProduct = [UInt32](unsafeUninitializedCapacity: pairs.count) { _, count in count = pairs.count }
        for (k, pair) in pairs.enumerated() {
            byProduct[productStarts[Int(pair.low)]] = UInt32(k)
            productStarts[Int(pair.low)] += 1
        }
        productStarts = []
        var firstProduct = 0
        nextPair = 0
        while firstProduct < productCount {
            // The same blocks on every rank, from the summed degrees.
            var endProduct = firstProduct + 1
            var blockPairs = productDegrees[firstProduct]
            while endProduct < productCount && blockPairs + productDegrees[endProduct] <= Int64(max(1, pairsPerGather)) {
                blockPairs += productDegrees[endProduct]
                endProduct += 1
            }
            message.removeAll(keepingCapacity: true)
            while nextPair < byProduct.count && Int(pairs[Int(byProduct[nextPair])].low) < endProduct {
                let pair = pairs[Int(byProduct[nextPair])]
                message.append(pair.low)
                message.append(pair.high)
                message.append(pair.count)
                nextPair += 1
            }
            let gathered = try message.withUnsafeBytes { try exchange.gatherBytes($0) }
            try addRows(gathered) { values, cursor in
                // Declared here, not captured: a captured variable is checked for exclusive
                // access at run time on every use, which cost rank 0 several percent.
                var row: [(customer: Int32, count: Int32)] = []
                var interleaved: [Int32] = []
                var ends = [Int](repeating: 0, count: ranks)
                for r in 0..<ranks { ends[r] = cursor[r] + gathered.counts[r] / 4 }
                for product in Int32(firstProduct)..<Int32(endProduct) {
                    row.removeAll(keepingCapacity: true)
                    for r in 0..<ranks {
                        while cursor[r] < ends[r] && values[cursor[r]] == product {
                            row.append((values[cursor[r] + 1], values[cursor[r] + 2]))
                            cursor[r] += 3
                        }
                    }
                    // Each rank's customers come sorted; across ranks they interleave.
                    row.sort { $0.customer < $1.customer }
                    interleaved.removeAll(keepingCapacity: true)
                    for entry in row {
                        interleaved.append(entry.customer)
                        interleaved.append(entry.count)
                    }
                    try interleaved.withUnsafeBufferPointer { try writer!.addRow($0) }
                }
            }
            firstProduct = endProduct
        }
        pairs = []
        byProduct = []
        return try exchange.agreeing("writing the graph") {
            guard let writer, let totals else { return ([], nil) }
            let (files, info) = try writer.finish(totals: totals)
            return (files, info)
        }
    }

    /// This rank's customer–product pairs keyed (dataset position, product node), sorted by
    /// that key without a comparison sort: each customer's pairs go to its slots in dataset
    /// order (counted by a first read of the pairs), and each customer's few pairs are then
    /// sorted by product node in place. The second read frees the pairs as it goes.
    private static func customerMajorPairs(
        aggregates: CustomerAggregates, localOrder: [Int32], myPositions: [Int32], productPosition: [Int32]
    ) throws -> [RankPair] {
        var localIndex = [Int32](repeating: -1, count: aggregates.customerCount)
        for (k, c) in localOrder.enumerated() { localIndex[Int(c)] = Int32(k) }
        var starts = [Int](repeating: 0, count: localOrder.count + 1)
        aggregates.forEachPair { c, _, _ in starts[Int(localIndex[Int(c)]) + 1] += 1 }
        for k in 0..<localOrder.count { starts[k + 1] += starts[k] }
        let total = starts[localOrder.count]
        guard total <= Int(UInt32.max) else {
            throw DataError.invalidOption("this rank holds \(total) customer–product pairs, more than a rank can index (4,294,967,295); run the import on more ranks")
        }
        // Every slot is written once below.
        var pairs = [RankPair](unsafeUninitializedCapacity: total) { _, count in count = total }
        pairs.withUnsafeMutableBufferPointer { pairs in
            var cursor = starts
            aggregates.forEachPair(releasing: true) { c, p, count in
                let k = Int(localIndex[Int(c)])
                pairs[cursor[k]] = RankPair(key: RankPair.key(myPositions[k], productPosition[Int(p)]), count: count)
                cursor[k] += 1
            }
            for k in 0..<localOrder.count {
                let first = starts[k], end = starts[k + 1]
                if end - first > 32 {
                    var long = UnsafeMutableBufferPointer(rebasing: pairs[first..<end])
                    long.sort { $0.key < $1.key }
                    continue
                }
                var i = first + 1
                while i < end {
                    let pair = pairs[i]
                    var j = i
                    while j > first && pairs[j - 1].key > pair.key {
                        pairs[j] = pairs[j - 1]
                        j -= 1
                    }
                    pairs[j] = pair
                    i += 1
                }
            }
        }
        return pairs
    }

    /// How many of each rank's customers come at dataset `positions`: counted by rank 0 from the
    /// merge order (`owner`, rank 0's only), then known to every rank.
    private static func customersByRank(at positions: Range<Int>, owner: [UInt16], exchange: any Communicator) throws -> [Int64] {
        var take = [Int64](repeating: 0, count: exchange.size)
        if exchange.rank == 0 { for position in positions { take[Int(owner[position])] += 1 } }
        try exchange.broadcast(&take, root: 0)
        return take
    }

    /// For each dataset position, the rank whose next customer comes there (on rank 0; empty
    /// elsewhere): a merge of every rank's ids, each list already in dataset order. The ids
    /// reach rank 0 `idsPerGather` at a time from a rank whenever it has used up that rank's
    /// last block, so rank 0 holds a block per rank, not every id, and no gather grows with the
    /// customers (one `MPI_Gatherv` of every id stopped near 2 GiB of ids, its count limit).
    private static func mergeOwners(
        localIDs: (Int) -> UnsafeRawBufferPointer, customersPerRank: [Int], idsPerGather: Int, exchange: any Communicator
    ) throws -> [UInt16] {
        let rank = exchange.rank, ranks = exchange.size
        let blockSize = max(1, idsPerGather)
        var owner: [UInt16] = []
        if rank == 0 { owner.reserveCapacity(customersPerRank.reduce(0, +)) }
        // Rank 0's view: each rank's current block and the id at its cursor.
        let blocks = (0..<(rank == 0 ? ranks : 0)).map { _ in IDBlock() }
        defer { blocks.forEach { $0.free() } }
        var received = [Int](repeating: 0, count: ranks)
        var sent = 0
        var outgoing: [UInt8] = []
        while true {
            // Rank 0 asks for a block from every rank it has none of left; nothing asked ends it.
            var asked = [Int64](repeating: 0, count: ranks)
            if rank == 0 {
                for r in 0..<ranks where blocks[r].left == 0 && received[r] < customersPerRank[r] { asked[r] = 1 }
            }
            try exchange.broadcast(&asked, root: 0)
            guard asked.contains(1) else { break }
            outgoing.removeAll(keepingCapacity: true)
            if asked[rank] == 1 {
                let end = min(customersPerRank[rank], sent + blockSize)
                for k in sent..<end { appendLengthPrefixed(localIDs(k), to: &outgoing) }
                sent = end
            }
            let gathered = try outgoing.withUnsafeBytes { try exchange.gatherBytes($0) }
            guard rank == 0 else { continue }
            gathered.bytes.withUnsafeBytes { bytes in
                var offset = 0
                for r in 0..<ranks {
                    if asked[r] == 1 {
                        let count = min(blockSize, customersPerRank[r] - received[r])
                        blocks[r].fill(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + gathered.counts[r]]), ids: count)
                        received[r] += count
                    }
                    offset += gathered.counts[r]
                }
            }
            // Merge until a rank that has more ids runs out of its block.
            while true {
                var best = -1
                var needsBlock = false
                for r in 0..<ranks {
                    if blocks[r].left == 0 {
                        if received[r] < customersPerRank[r] { needsBlock = true }
                        continue
                    }
                    if best < 0 || identifierPrecedes(blocks[r].current, blocks[best].current) { best = r }
                }
                guard !needsBlock, best >= 0 else { break }
                blocks[best].advance()
                owner.append(UInt16(best))
            }
        }
        return owner
    }
}

/// A block of one rank's ids on rank 0 during the merge, in storage of its own so that the
/// current id can be compared where it lies.
private final class IDBlock {
    private var storage = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var cursor = 0
    /// Ids not yet merged, the first of them `current`.
    private(set) var left = 0
    private(set) var current = UnsafeRawBufferPointer(start: nil, count: 0)

    func fill(_ bytes: UnsafeRawBufferPointer, ids: Int) {
        if storage.count < bytes.count {
            storage.deallocate()
            storage = .allocate(byteCount: bytes.count, alignment: 8)
        }
        if !bytes.isEmpty { storage.copyMemory(from: bytes) }
        cursor = 0
        left = ids
        if left > 0 { current = readLengthPrefixed(UnsafeRawBufferPointer(storage), at: &cursor) }
    }

    func advance() {
        left -= 1
        if left > 0 { current = readLengthPrefixed(UnsafeRawBufferPointer(storage), at: &cursor) }
    }

    func free() { storage.deallocate() }
}

/// Appends `id` to `bytes` as a 4-byte length and the id's bytes.
private func appendLengthPrefixed(_ id: UnsafeRawBufferPointer, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: UInt32(id.count).littleEndian) { bytes.append(contentsOf: $0) }
    bytes.append(contentsOf: id)
}

/// Reads an id written by `appendLengthPrefixed` at `offset`, and moves `offset` past it.
private func readLengthPrefixed(_ bytes: UnsafeRawBufferPointer, at offset: inout Int) -> UnsafeRawBufferPointer {
    let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
    let id = UnsafeRawBufferPointer(rebasing: bytes[offset + 4 ..< offset + 4 + length])
    offset += 4 + length
    return id
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
