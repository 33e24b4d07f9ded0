import CMemoryHints
/// One buffered event of a partition, its id bytes in the partition's byte queue.
struct PendingEvent {
    var hash: UInt64
    var orderHash: UInt64
    var amount: Int64
    var quantity: Int64
    var idOffset: UInt32
    var idLength: UInt32
    var day: Int32
    var product: Int32
}

/// The events of one partition waiting to be aggregated.
struct PendingQueue {
    var events = GrowableBuffer<PendingEvent>(
        capacity: 64, fill: PendingEvent(hash: 0, orderHash: 0, amount: 0, quantity: 0, idOffset: 0, idLength: 0, day: 0, product: 0))
    var idBytes = GrowableBuffer<UInt8>(capacity: 1024, fill: 0)
}

/// Per-customer aggregates of a stream of events, partitioned by a hash of the customer id.
///
/// Order exports come sorted by date, so consecutive rows name unrelated customers, and every
/// row used to touch a random place in each per-customer structure: several cache misses a
/// row, a million events/s. As partitioned hash aggregation does in analytical databases, rows
/// are instead appended to the queue of their partition (sequential writes) and, every
/// `chunkEvents` rows, aggregated one partition at a time, whose customers' structures
/// (`CustomerShard`) are small enough to stay in cache while its rows go through them.
///
/// Within a partition rows keep their file order, and a customer lives in exactly one
/// partition, so every per-customer result is what one unpartitioned pass gives. Products are
/// interned as rows arrive, in file order, so product indices do not change either; customer
/// indices are partition-major and never reach a dataset, which orders customers by id.
///
/// Reading (after `finishAdding`) goes through global customer indices in 0..<customerCount.
final class CustomerAggregates: EventSink {
    let spec: FeatureSpec
    let products = ByteInterner()
    /// Whether products and customer–product pairs are kept (see `init`).
    let countsPairs: Bool

    private let shards: [CustomerShard]
    /// An event with id hash h belongs to partition h >> partitionShift.
    let partitionShift: UInt64
    private let chunkEvents: Int
    // Touched once per event: see CustomerShard for why exclusivity is unchecked.
    @exclusivity(unchecked) private var queues: UnsafeMutablePointer<PendingQueue>
    /// With a `roundWorker`, the queues of the round it may be aggregating while `queues` fill.
    @exclusivity(unchecked) private var queuesInFlight: UnsafeMutablePointer<PendingQueue>?
    private let roundWorker: RoundWorker?
    @exclusivity(unchecked) private var queuedEvents = 0
    /// Where the last event's id was queued, so that a row of the same customer as the row
    /// before (grouped files, order lines) reuses its hash instead of hashing again.
    @exclusivity(unchecked) private var lastPartition = -1
    @exclusivity(unchecked) private var lastIDOffset = 0
    @exclusivity(unchecked) private var lastIDLength = 0
    @exclusivity(unchecked) private var lastHash: UInt64 = 0

    // Read for every customer while writing a dataset, written once by finishAdding.
    @exclusivity(unchecked) private var sealed = false
    /// First global index of each partition's customers; partition p holds
    /// bases[p]..<bases[p + 1].
    @exclusivity(unchecked) private var bases: [Int] = []
    /// Partition of each global customer index.
    @exclusivity(unchecked) private var partitionOfCustomer: [UInt16] = []
    @exclusivity(unchecked) private var customerRecordsReleased = false

    var partitionCount: Int { shards.count }

    /// Partitions for an input of `bytes`: one per 8 MiB, up to 256. More partitions keep each
    /// one's working set in cache while it aggregates, but past a few hundred the per-partition
    /// costs of a round outweigh that; a small file gains nothing from queueing.
    static func partitions(forInputBytes bytes: Int) -> Int {
        var partitions = 1
        while partitions < 256 && partitions << 23 < bytes { partitions *= 2 }
        return partitions
    }

    /// Rows per round of aggregation. The queue is about 52 bytes a row and the import's peak
    /// comes at the end of the parse, queue included, so smaller rounds lower the peak; below
    /// this size the per-round costs slow the parse more than the memory saved is worth.
    static let defaultChunkEvents = 1 << 19

    /// With a second thread aggregating, rounds are this many times smaller: two are in memory
    /// at once, and the thread pays their per-round costs beside the parse, where they cost no
    /// wall time.
    static let pipelinedRoundsPerChunk = 8

    /// `partitions` must be a power of two; 1 aggregates each event as it arrives (no queue),
    /// which suits a few customers, as in a scoring request.
    ///
    /// Without `countsPairs`, product ids are ignored: no products, no customer–product pairs
    /// (the largest structure of an import), for callers that need no graph.
    ///
    /// With `aggregatesWhileParsing` (and more than one partition), a thread of its own
    /// aggregates each round while `consume` queues the next, in rounds of an eighth of
    /// `chunkEvents` (see `pipelinedRoundsPerChunk`). Rounds are aggregated in order, so the
    /// aggregates are the same.
    init(spec: FeatureSpec, partitions: Int = 1, chunkEvents: Int = defaultChunkEvents, countsPairs: Bool = true,
         aggregatesWhileParsing: Bool = false) {
        precondition(partitions >= 1 && partitions <= 1 << 16 && partitions & (partitions - 1) == 0,
                     "partitions must be a power of two up to 65536")
        self.spec = spec
        self.countsPairs = countsPairs
        let pipelined = aggregatesWhileParsing && partitions > 1
        self.chunkEvents = pipelined ? max(1, chunkEvents / Self.pipelinedRoundsPerChunk) : chunkEvents
        partitionShift = UInt64(64 - partitions.trailingZeroBitCount)
        shards = (0..<partitions).map { _ in
            CustomerShard(spec: spec, expectedCustomers: partitions == 1 ? 1 << 12 : 64)
        }
        queues = Self.makeQueues(partitions)
        queuesInFlight = pipelined ? Self.makeQueues(partitions) : nil
        roundWorker = pipelined ? RoundWorker() : nil
    }

    private static func makeQueues(_ partitions: Int) -> UnsafeMutablePointer<PendingQueue> {
        let queues = UnsafeMutablePointer<PendingQueue>.allocate(capacity: partitions)
        for partition in 0..<partitions { (queues + partition).initialize(to: PendingQueue()) }
        return queues
    }

    deinit {
        // An import that failed mid-parse may leave a round in flight.
        roundWorker?.stop()
        for set in [queues, queuesInFlight].compactMap({ $0 }) {
            for p in 0..<shards.count {
                set[p].events.free()
                set[p].idBytes.free()
            }
            set.deinitialize(count: shards.count)
            set.deallocate()
        }
    }

    // MARK: Adding

    func consume(_ event: RawEvent) {
        precondition(!sealed, "events added after finishAdding")
        let n = event.customer.count
        let id = event.customer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        var product: Int32 = -1
        // As in an unpartitioned pass: products of history events only, interned in file order.
        if countsPairs && event.day <= spec.cutoffDay && event.product.count > 0 {
            product = products.intern(event.product.baseAddress!, event.product.count)
        }
        let amount = FixedPoint.from(event.amount)
        let quantity = FixedPoint.from(event.quantity)
        if shards.count == 1 {
            shards[0].consume(customer: id, length: n, hash: hashIdentifier(id, n), day: event.day, amount: amount,
                              quantity: quantity, product: product, orderHash: event.orderHash)
            return
        }
        var hash: UInt64
        var partition: Int
        if lastPartition >= 0 && lastIDLength == n
            && (n == 0 || memcmpBytes(queues[lastPartition].idBytes.pointer + lastIDOffset, id, n)) {
            hash = lastHash
            partition = lastPartition
        } else {
            hash = hashIdentifier(id, n)
            partition = Int(truncatingIfNeeded: hash >> partitionShift)
        }
        let queue = queues + partition
        let offset = queue.pointee.idBytes.grow(by: n)
        if n > 0 { UnsafeMutableRawPointer(queue.pointee.idBytes.pointer + offset).copyMemory(from: id, byteCount: n) }
        queue.pointee.events.append(PendingEvent(
            hash: hash, orderHash: event.orderHash, amount: amount, quantity: quantity, idOffset: UInt32(offset),
            idLength: UInt32(n), day: Int32(clamping: event.day), product: product))
        lastPartition = partition
        lastIDOffset = offset
        lastIDLength = n
        lastHash = hash
        queuedEvents += 1
        if queuedEvents >= chunkEvents { aggregateQueued() }
    }

    /// Aggregates `count` events of `partition` parsed elsewhere (an `EventRouter`), in their
    /// file order: hashed, amounts in fixed point, products as indices of `products`, each id
    /// at `idBytes + idOffset`. The same aggregates as `consume` on the rows they came from;
    /// the events' hashes are overwritten.
    func consumeRouted(partition: Int, _ events: UnsafeMutablePointer<PendingEvent>, count: Int, idBytes: UnsafeRawPointer) {
        precondition(!sealed, "events added after finishAdding")
        shards[partition].consumeQueued(events, count: count, idBytes: idBytes)
    }

    /// After a round of routed events: hands back the heap that the round's buffers leave
    /// resident (see `aggregateQueued`).
    func roundAggregated() {
        clm_release_free_memory()
    }

    /// Runs every queued event through its partition's shard, a partition at a time: here, or
    /// on the round worker once it has finished the round before (the shards are then touched
    /// by that thread only, until `finishAdding` waits for it).
    private func aggregateQueued() {
        // One partition queues nothing (a scoring request): no round, and no trim per call.
        guard shards.count > 1 else { return }
        queuedEvents = 0
        lastPartition = -1
        guard let roundWorker, let inFlight = queuesInFlight else {
            Self.aggregate(queues, into: shards)
            return
        }
        roundWorker.waitUntilIdle()
        queuesInFlight = queues
        queues = inFlight
        let round = queuesInFlight!, shards = self.shards
        roundWorker.submit { Self.aggregate(round, into: shards) }
    }

    private static func aggregate(_ queues: UnsafeMutablePointer<PendingQueue>, into shards: [CustomerShard]) {
        for partition in 0..<shards.count {
            let queue = queues + partition
            shards[partition].consumeQueued(queue.pointee.events.pointer, count: queue.pointee.events.count,
                                            idBytes: UnsafeRawPointer(queue.pointee.idBytes.pointer))
            queue.pointee.events.removeAll()
            queue.pointee.idBytes.removeAll()
        }
        // The partitions' buffers grow by reallocation in the heap, whose freed blocks glibc
        // keeps resident: on the 10M-row date-ordered file, about 20 MB by the end of the parse,
        // which is the import's peak.
        clm_release_free_memory()
    }

    /// Aggregates what is still queued, frees what only adding events needs (lookup tables,
    /// order hashes, queues, spare capacity) and numbers the customers; call once the last
    /// event is in, before reading. Calling it again does nothing.
    func finishAdding() {
        guard !sealed else { return }
        aggregateQueued()
        roundWorker?.stop()
        products.dropLookup()
        var total = 0
        bases = [0]
        for shard in shards {
            shard.finishAdding()
            total += shard.customerCount
            bases.append(total)
        }
        partitionOfCustomer = [UInt16](repeating: 0, count: total)
        for partition in 0..<shards.count {
            for c in bases[partition]..<bases[partition + 1] { partitionOfCustomer[c] = UInt16(partition) }
            for set in [queues, queuesInFlight].compactMap({ $0 }) {
                set[partition].events.removeAll()
                set[partition].events.shrinkToFit()
                set[partition].idBytes.removeAll()
                set[partition].idBytes.shrinkToFit()
            }
        }
        sealed = true
    }

    // MARK: Reading

    /// The shard of global customer `c` and its index there.
    @inline(__always)
    private func locate(_ c: Int) -> (shard: CustomerShard, local: Int) {
        precondition(sealed && !customerRecordsReleased, "aggregates are read before finishAdding or after releaseCustomerRecords")
        let partition = Int(partitionOfCustomer[c])
        return (shards[partition], c - bases[partition])
    }

    var customerCount: Int {
        sealed ? bases[shards.count] : shards.reduce(0) { $0 + $1.customerCount }
    }
    var eventsInHistory: Int { shards.reduce(0) { $0 + $1.eventsInHistory } }
    var eventsInHorizon: Int { shards.reduce(0) { $0 + $1.eventsInHorizon } }
    var eventsAfterHorizon: Int { shards.reduce(0) { $0 + $1.eventsAfterHorizon } }
    /// The day of the latest event aggregated, `Int.min` before any; after `finishAdding`.
    var lastEventDay: Int {
        precondition(sealed, "the last event day is read before finishAdding")
        return shards.reduce(Int.min) { max($0, $1.lastEventDay) }
    }

    func customerID(_ c: Int) -> UnsafeRawBufferPointer {
        let (shard, local) = locate(c)
        return shard.customers.bytes(local)
    }

    func customerIDString(_ c: Int) -> String { String(decoding: customerID(c), as: UTF8.self) }

    func hasHistory(_ c: Int) -> Bool {
        let (shard, local) = locate(c)
        return shard.hasHistory(local)
    }

    /// Asks for the memory `writeRecord` reads as a writer goes through dataset `order`:
    /// customer `order[k + 16]`'s record and, at every 16th customer, the period entries of
    /// this one and the next 15. In dataset order every record is a cache miss, and so is each
    /// of a customer's entries, one after the other down its list: they lie wherever its events
    /// fell in the file. Two loads of those entries took 75% of the feature computation's
    /// samples; walking 16 customers' lists side by side, a step of each in turn with a
    /// prefetch of its next entry, overlaps their misses.
    @inline(__always)
    func prefetchForWriting(_ order: UnsafeBufferPointer<Int32>, at k: Int) {
        if k &+ 16 < order.count {
            let (shard, local) = locate(Int(order[k &+ 16]))
            shard.prefetchRecord(local)
        }
        if k & 15 == 0 { walkEntryLists(order, k..<min(order.count, k &+ 16)) }
    }

    /// One customer's list being walked by `walkEntryLists`.
    private struct EntryWalk {
        var entries: UnsafeMutablePointer<PeriodEntry>
        var items: UnsafeMutablePointer<UInt32>?
        var next: Int
    }

    /// Touches the period entries of the customers at `order[range]` (at most 16), their lists
    /// walked side by side (see `prefetchForWriting`).
    private func walkEntryLists(_ order: UnsafeBufferPointer<Int32>, _ range: Range<Int>) {
        withUnsafeTemporaryAllocation(of: EntryWalk.self, capacity: 16) { walks in
            var live = 0
            for k in range {
                let (shard, local) = locate(Int(order[k]))
                let head = Int(shard.states[local].periodHead)
                guard head >= 0 else { continue }
                let walk = EntryWalk(entries: shard.periodEntries.pointer, items: shard.periodItems?.pointer, next: head)
                clm_prefetch_read(walk.entries + head)
                if let items = walk.items { clm_prefetch_read(items + head) }
                walks[live] = walk
                live += 1
            }
            while live > 0 {
                var i = 0
                while i < live {
                    let e = walks[i].next
                    let entry = walks[i].entries[e]
                    // As CustomerShard's lists go on: a link jumps, the oldest entry ends it.
                    let next = entry.isLink ? Int(entry.spend) : (entry.tag & PeriodEntry.end != 0 ? -1 : e - 1)
                    if next < 0 {
                        live -= 1
                        walks[i] = walks[live]
                        continue
                    }
                    walks[i].next = next
                    clm_prefetch_read(walks[i].entries + next)
                    if let items = walks[i].items { clm_prefetch_read(items + next) }
                    i += 1
                }
            }
        }
    }

    func rawFeatures(_ c: Int, into out: UnsafeMutablePointer<Float>) -> Int {
        let (shard, local) = locate(c)
        return shard.rawFeatures(local, into: out)
    }

    func historyTotals(_ c: Int) -> (transactions: Double, spend: Double) {
        let (shard, local) = locate(c)
        return shard.historyTotals(local)
    }

    func tenurePeriods(_ c: Int) -> Int {
        let (shard, local) = locate(c)
        return shard.tenurePeriods(local)
    }

    func recencyPeriods(_ c: Int) -> Int {
        let (shard, local) = locate(c)
        return shard.recencyPeriods(local)
    }

    func horizonTransactions(_ c: Int) -> Int {
        let (shard, local) = locate(c)
        return shard.horizonTransactions(local)
    }

    func horizonSpend(_ c: Int) -> Int64 {
        let (shard, local) = locate(c)
        return shard.horizonSpend(local)
    }

    /// Global indices of customers with history, in dataset order (shorter ids first, then
    /// bytewise): an order that never depends on the input's row order or the partitioning.
    func datasetOrder() -> [Int32] {
        finishAdding()
        // Ids of up to 7 bytes (a million numeric ids have 7 digits) sort by one integer:
        // length in the top byte, the bytes big-endian below it. Longer ids sort after every
        // such key and compare bytes among themselves; comparing bytes for every pair through
        // the partitions was an eighth of an import.
        var keyed: [(key: UInt64, customer: Int32)] = []
        keyed.reserveCapacity(customerCount)
        for partition in 0..<shards.count {
            let shard = shards[partition], base = bases[partition]
            for local in 0..<shard.customerCount where shard.hasHistory(local) {
                keyed.append((Self.sortKey(shard.customers.bytes(local)), Int32(base + local)))
            }
        }
        keyed.sort { a, b in
            if a.key != b.key { return a.key < b.key }
            return a.key == .max && identifierPrecedes(customerID(Int(a.customer)), customerID(Int(b.customer)))
        }
        return keyed.map(\.customer)
    }

    /// A key whose order is the dataset order for ids of up to 7 bytes; `.max` for longer ones.
    private static func sortKey(_ id: UnsafeRawBufferPointer) -> UInt64 {
        guard id.count <= 7 else { return .max }
        var key = UInt64(id.count) << 56
        for (position, byte) in id.enumerated() { key |= UInt64(byte) << UInt64(48 - 8 * position) }
        return key
    }

    /// Every customer–product pair with its purchase count, under global customer indices, in
    /// no particular order. With `releasing`, each partition's pairs are freed once read (the
    /// last read: whatever is built from them then never sits beside all of them).
    func forEachPair(releasing: Bool = false, _ body: (_ customer: Int32, _ product: Int32, _ count: Int32) -> Void) {
        finishAdding()
        for partition in 0..<shards.count {
            let base = Int32(bases[partition])
            shards[partition].pairs.forEach { c, p, count in body(base + c, p, count) }
            if releasing {
                shards[partition].pairs.release()
                clm_release_free_memory()
            }
        }
    }

    /// Frees every customer's record and id (not the pair tables, nor the counts): the customer
    /// files are written, and the graph, built next, reads only pairs. Reading a customer after
    /// this is a programming error.
    func releaseCustomerRecords() {
        finishAdding()
        customerRecordsReleased = true
        partitionOfCustomer = []
        for shard in shards { shard.releaseCustomerRecords() }
    }
}
