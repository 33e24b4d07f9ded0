#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import CMemoryHints

/// One validated event as the importer hands it on: pointers into the reader's buffer, valid
/// only for the duration of the call.
struct RawEvent {
    var customer: UnsafeRawBufferPointer
    var day: Int
    var amount: Double
    var quantity: Double
    /// Empty when the source has no product for this event.
    var product: UnsafeRawBufferPointer
    /// Hash of the order id; 0 when there is none, which makes every event its own transaction.
    var orderHash: UInt64
}

/// Receives the events of a source, one call per event.
protocol EventSink: AnyObject {
    func consume(_ event: RawEvent)
}

/// Finds the last event day, to derive a cut-off before the real pass.
final class LastDayTracker: EventSink {
    var lastDay = Int.min
    func consume(_ event: RawEvent) {
        if event.day > lastDay { lastDay = event.day }
    }
}

/// Totals of one customer in one period of the history window, or a link between two runs of them.
///
/// 8 bytes. A customer's entries form runs of neighbours in one array, newest at the highest
/// index: from an entry the list goes on at the entry below it, unless it is flagged `end`
/// (the customer's oldest) or is a `link` (whose `spend` holds the index to go on at). When
/// rows come grouped by customer, a customer's entries are appended back to back and need no
/// links; otherwise a new entry costs one more (a link) where the list breaks.
///
/// Sums keep their low bits here and carry the rest into `CustomerAggregates`'s sparse carry
/// table, so they stay exact (and equal to 64-bit sums) however large they get. Items live in
/// a parallel array that exists only once some event had a quantity other than 1 or did not
/// open a transaction; until then every entry's items are exactly its transactions.
struct PeriodEntry {
    var spend: UInt32 = 0
    var transactions: UInt16 = 0
    /// The period (below 2¹⁴) and the flags.
    var tag: UInt16 = 0

    static let end: UInt16 = 0x8000
    static let link: UInt16 = 0x4000
    static let periodMask: UInt16 = 0x3FFF

    init() {}
    init(tag: UInt16) { self.tag = tag }
    init(linkTo index: Int) {
        spend = UInt32(index)
        tag = PeriodEntry.link
    }

    var isLink: Bool { tag & PeriodEntry.link != 0 }
    var period: Int { Int(tag & PeriodEntry.periodMask) }
}

/// The counters of one customer, one fixed-size record per customer in one contiguous buffer
/// (40 bytes). Spend sums keep their low 32 bits here, like `PeriodEntry`. Everything an event
/// reads about its customer sits in this record, so that in a date-ordered file, where the
/// customer of the next row is anyone's, a row costs one miss here rather than one per array.
struct CustomerState {
    /// Hash of the customer's last order id (0 before any), to see whether a row opens a
    /// new transaction: lines of one order arrive together.
    var lastOrder: UInt64 = 0
    var firstDay: Int32 = .max
    /// Last purchase day before the history window (.min for none).
    var preLastDay: Int32 = .min
    var preTransactions: Int32 = 0
    var horizonTransactions: Int32 = 0
    var preSpend: UInt32 = 0
    var horizonSpend: UInt32 = 0
    /// First entry of the customer's list of active periods in `periodEntries`, -1 for none.
    var periodHead: Int32 = -1
    /// The newest period in that list (-1 for none): a row of a newer period, which in a
    /// date-ordered file is nearly every row that opens a period, adds its entry without
    /// walking the list.
    var newestPeriod: Int16 = -1
}

/// Which narrow counter a carry belongs to (the high byte of a carry key).
enum CarryKind: UInt64 {
    case preSpend = 1, horizonSpend, periodSpend, periodItems, periodTransactions
}

/// Money and quantities as integers of 1/10,000, so that sums are exact and order-free.
enum FixedPoint {
    static let scale = 10_000.0
    /// Largest magnitude accepted for one amount or quantity; rows above it are rejected so
    /// that no sum can overflow.
    static let limit = 1e11

    @inline(__always) static func from(_ value: Double) -> Int64 {
        // Half away from zero without a libm call; |value| <= limit keeps this in range.
        let scaled = value * scale
        return Int64(scaled + (scaled < 0 ? -0.5 : 0.5))
    }
    @inline(__always) static func value(_ fixed: Int64) -> Double { Double(fixed) / scale }
}

@inline(__always)
func floorDiv(_ a: Int, _ b: Int) -> Int {
    let q = a / b
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
}

/// Per-customer aggregates of the customers of one partition (all of them when the import is
/// not partitioned): exactly what features, labels and the graph need, so memory grows with
/// customers (and customer–product pairs), not with events. `CustomerAggregates` routes events
/// here and reads the results back under global customer indices.
///
/// Per customer (`CustomerState`, 40 bytes): first purchase day and last one before the
/// history window, totals before the window, horizon totals, and the head of a short list of
/// the window's periods in which the customer bought something (`PeriodEntry`, 8 bytes each,
/// plus 4 for items when the input has real quantities: a customer active in 3 of 39 periods
/// costs 3 entries, not 39). The last
/// purchase day is not stored: its period is the newest active one (or the one of the last
/// purchase before the window).
///
/// Amounts and quantities are summed in fixed point (`FixedPoint`), so the sums, and with
/// them every stored byte, do not depend on the order of the rows. The stored counters are
/// narrow; whatever overflows them goes into a sparse carry table, so every sum equals the
/// 64-bit one exactly while typical data never touches the table.
final class CustomerShard {
    let spec: FeatureSpec
    let periods: Int
    let periodDays: Int
    let cutoff: Int
    let windowStart: Int
    let horizonEnd: Int

    let customers: ByteInterner

    // Touched once or more per event: unchecked exclusivity keeps the runtime's access
    // tracking (a third of the parse time when checked) out of the loop. Single-threaded use only.
    @exclusivity(unchecked) var states: GrowableBuffer<CustomerState>
    @exclusivity(unchecked) var periodEntries: GrowableBuffer<PeriodEntry>
    /// Items of each period entry (low 32 bits), parallel to `periodEntries`; nil while every
    /// entry's items equal its transactions (every event so far had quantity 1 and opened a
    /// transaction, as in files without quantity and order columns).
    @exclusivity(unchecked) var periodItems: GrowableBuffer<UInt32>?
    private let oneItem = FixedPoint.from(1)
    /// High parts of narrow counters that overflowed, by `CarryKind` << 56 | index.
    @exclusivity(unchecked) private var carries: [UInt64: UInt64] = [:]
    let pairs: PairCounter

    @exclusivity(unchecked) private(set) var eventsInHistory = 0
    @exclusivity(unchecked) private(set) var eventsInHorizon = 0
    @exclusivity(unchecked) private(set) var eventsAfterHorizon = 0
    /// The day of the latest event added (`Int.min` before any): the import refuses a horizon
    /// that ends after it.
    @exclusivity(unchecked) private(set) var lastEventDay = Int.min
    @exclusivity(unchecked) private var lastCustomer: Int32 = -1
    @exclusivity(unchecked) private var lastCustomerHash: UInt64 = 0


    /// `expectedCustomers` sizes the first allocations; buffers grow as needed.
    init(spec: FeatureSpec, expectedCustomers: Int = 1 << 12) {
        precondition(spec.historyPeriods <= Int(PeriodEntry.periodMask) + 1, "a period index must fit 14 bits")
        self.spec = spec
        customers = ByteInterner(expectedIDs: expectedCustomers)
        states = GrowableBuffer(capacity: expectedCustomers, fill: CustomerState())
        periodEntries = GrowableBuffer(capacity: expectedCustomers * 16, fill: PeriodEntry())
        pairs = PairCounter(expectedPairs: expectedCustomers * 4)
        periods = spec.historyPeriods
        periodDays = spec.periodDays
        cutoff = spec.cutoffDay
        windowStart = spec.windowStartDay
        horizonEnd = spec.cutoffDay + spec.horizonDays
    }

    deinit {
        states.free(); periodEntries.free(); periodItems?.free()
    }

    var customerCount: Int { customers.count }

    // MARK: Narrow counters with carries

    @inline(__always)
    private func addWide(_ low: inout UInt32, _ value: Int64, _ kind: CarryKind, _ index: Int) {
        let v = UInt64(bitPattern: value)
        let (sum, overflow) = low.addingReportingOverflow(UInt32(truncatingIfNeeded: v))
        low = sum
        let high = (v >> 32) &+ (overflow ? 1 : 0)
        if high != 0 { addCarry(kind, index, high) }
    }

    @inline(never)
    private func addCarry(_ kind: CarryKind, _ index: Int, _ amount: UInt64) {
        carries[kind.rawValue << 56 | UInt64(index), default: 0] &+= amount
    }

    /// The full value of a narrow counter whose carries count units of 2^`shift`.
    @inline(__always)
    private func wide(_ low: UInt64, _ kind: CarryKind, _ index: Int, shift: UInt64 = 32) -> Int64 {
        if carries.isEmpty { return Int64(bitPattern: low) }
        let high = carries[kind.rawValue << 56 | UInt64(index)] ?? 0
        return Int64(bitPattern: low &+ (high &<< shift))
    }

    func preSpend(_ c: Int) -> Int64 { wide(UInt64(states[c].preSpend), .preSpend, c) }
    func horizonSpend(_ c: Int) -> Int64 { wide(UInt64(states[c].horizonSpend), .horizonSpend, c) }
    func horizonTransactions(_ c: Int) -> Int { Int(states[c].horizonTransactions) }

    /// Transactions, items and spend of period entry `e`.
    @inline(__always)
    private func entryTotals(_ e: Int) -> (transactions: Int64, items: Int64, spend: Int64) {
        let entry = periodEntries[e]
        let transactions = wide(UInt64(entry.transactions), .periodTransactions, e, shift: 16)
        let items = periodItems.map { wide(UInt64($0[e]), .periodItems, e) } ?? transactions &* oneItem
        return (transactions, items, wide(UInt64(entry.spend), .periodSpend, e))
    }

    /// Calls `body` with the index of each of customer `c`'s period entries, newest first for
    /// time-ordered input.
    @inline(__always)
    private func forEachEntry(_ c: Int, _ body: (Int) -> Void) {
        var e = Int(states[c].periodHead)
        while e >= 0 {
            let entry = periodEntries[e]
            if entry.isLink { e = Int(entry.spend); continue }
            body(e)
            if entry.tag & PeriodEntry.end != 0 { return }
            e -= 1
        }
    }

    /// The entry of `period` in the list starting at `head`, or -1.
    @inline(__always)
    private func findEntry(_ head: Int32, _ period: UInt16) -> Int {
        var e = Int(head)
        while e >= 0 {
            let entry = periodEntries[e]
            if entry.isLink { e = Int(entry.spend); continue }
            if entry.tag & PeriodEntry.periodMask == period { return e }
            if entry.tag & PeriodEntry.end != 0 { return -1 }
            e -= 1
        }
        return -1
    }

    /// Adds an entry for `period` in front of customer `s`'s list and returns its index.
    @inline(__always)
    private func addEntry(_ s: UnsafeMutablePointer<CustomerState>, _ period: UInt16) -> Int {
        let head = Int(s.pointee.periodHead)
        if head < 0 {
            periodEntries.append(PeriodEntry(tag: period | PeriodEntry.end))
        } else {
            if head != periodEntries.count - 1 { periodEntries.append(PeriodEntry(linkTo: head)) }
            periodEntries.append(PeriodEntry(tag: period))
        }
        precondition(periodEntries.count <= Int(Int32.max), "more than 2³¹ customer-period entries")
        if periodItems != nil { _ = periodItems!.grow(by: periodEntries.count - periodItems!.count) }
        let e = periodEntries.count - 1
        s.pointee.periodHead = Int32(e)
        s.pointee.newestPeriod = max(s.pointee.newestPeriod, Int16(period))
        return e
    }

    /// Gives every entry its own items count, equal to its transactions so far.
    @inline(never)
    private func materialiseItems() {
        var items = GrowableBuffer<UInt32>(capacity: periodEntries.capacity, fill: 0)
        _ = items.grow(by: periodEntries.count)
        let pointer = items.pointer
        for e in 0..<periodEntries.count where !periodEntries[e].isLink {
            let transactions = wide(UInt64(periodEntries[e].transactions), .periodTransactions, e, shift: 16)
            addWide(&pointer[e], transactions &* oneItem, .periodItems, e)
        }
        periodItems = items
    }

    // MARK: Aggregation

    @inline(__always)
    private func customerIndex(_ p: UnsafeRawPointer, _ n: Int, hash: UInt64) -> Int {
        // Event files are usually grouped by customer: compare with the previous one first
        // (its hash, then its bytes, so that another customer costs no read of the arena).
        if lastCustomer >= 0 && hash == lastCustomerHash {
            let previous = customers.bytes(Int(lastCustomer))
            if previous.count == n && (n == 0 || memcmpBytes(previous.baseAddress!, p, n)) { return Int(lastCustomer) }
        }
        let index = customers.intern(p, n, hash: hash)
        lastCustomer = index
        lastCustomerHash = hash
        if Int(index) == states.count { _ = states.grow(by: 1) }
        return Int(index)
    }

    /// Whether event `orderHash` of customer `s` opens a transaction: lines of one order
    /// arrive together, so only the first of them does.
    @inline(__always)
    private func opensTransaction(_ s: UnsafeMutablePointer<CustomerState>, _ orderHash: UInt64) -> Bool {
        let previous = s.pointee.lastOrder
        s.pointee.lastOrder = orderHash
        return orderHash == 0 || orderHash != previous
    }

    /// Adds one event of a customer of this shard. `customer` and `length` are the id's bytes,
    /// `hash` their `hashIdentifier`; `amount` and `quantity` are fixed point; `product` is the
    /// product's global index, or -1 for none.
    @inline(__always)
    func consume(
        customer: UnsafeRawPointer, length: Int, hash: UInt64, day: Int, amount: Int64, quantity: Int64,
        product: Int32, orderHash: UInt64
    ) {
        add(customerIndex(customer, length, hash: hash), day: day, amount: amount, quantity: quantity,
            product: product, orderHash: orderHash)
    }

    /// Adds `count` queued events of this shard's customers, in their file order, with the
    /// same result as `consume` on each. Two passes, each asking for the memory of the event
    /// `lookahead` places ahead while it works on this one: first every id is looked up (the
    /// index replaces the event's hash), then every event is added. In a date-ordered file
    /// each of those is a cache miss; overlapped this way they cost a fraction of one each.
    func consumeQueued(_ events: UnsafeMutablePointer<PendingEvent>, count: Int, idBytes: UnsafeRawPointer) {
        let lookahead = 16
        for index in 0..<count {
            if index &+ lookahead < count { customers.prefetchSlot(hash: events[index &+ lookahead].hash) }
            let event = events[index]
            events[index].hash = UInt64(customerIndex(idBytes + Int(event.idOffset), Int(event.idLength), hash: event.hash))
        }
        for index in 0..<count {
            if index &+ lookahead < count {
                let ahead = events[index &+ lookahead]
                clm_prefetch_write(states.pointer + Int(ahead.hash))
            }
            let event = events[index]
            add(Int(event.hash), day: Int(event.day), amount: event.amount, quantity: event.quantity,
                product: event.product, orderHash: event.orderHash)
        }
    }

    @inline(__always)
    private func add(_ c: Int, day: Int, amount: Int64, quantity: Int64, product: Int32, orderHash: UInt64) {
        if day > lastEventDay { lastEventDay = day }
        if day > horizonEnd {
            eventsAfterHorizon += 1
            return
        }
        let s = states.pointer + c
        let newTransaction = opensTransaction(s, orderHash)
        if day > cutoff {
            eventsInHorizon += 1
            if newTransaction { s.pointee.horizonTransactions += 1 }
            addWide(&s.pointee.horizonSpend, amount, .horizonSpend, c)
            return
        }
        eventsInHistory += 1
        let day32 = Int32(truncatingIfNeeded: day)
        if day32 < s.pointee.firstDay { s.pointee.firstDay = day32 }
        if day < windowStart {
            if newTransaction { s.pointee.preTransactions += 1 }
            addWide(&s.pointee.preSpend, amount, .preSpend, c)
            if day32 > s.pointee.preLastDay { s.pointee.preLastDay = day32 }
        } else {
            // The newest period sits at the head, so time-ordered rows find theirs at once.
            let period = UInt16(truncatingIfNeeded: (day - windowStart) / periodDays)
            if periodItems == nil && (quantity != oneItem || !newTransaction) { materialiseItems() }
            var e = Int16(period) > s.pointee.newestPeriod ? -1 : findEntry(s.pointee.periodHead, period)
            if e < 0 { e = addEntry(s, period) }
            let p = periodEntries.pointer + e
            if newTransaction {
                if p.pointee.transactions == .max {
                    p.pointee.transactions = 0
                    addCarry(.periodTransactions, e, 1)
                } else {
                    p.pointee.transactions += 1
                }
            }
            if let items = periodItems { addWide(&items.pointer[e], quantity, .periodItems, e) }
            addWide(&p.pointee.spend, amount, .periodSpend, e)
        }
        if product >= 0 { pairs.add(customer: Int32(c), product: product) }
    }

    /// Frees what only adding events needs (the id lookup tables, order hashes and spare
    /// capacity); call once the last event is in.
    func finishAdding() {
        customers.dropLookup()
        lastCustomer = -1
        states.shrinkToFit()
        periodEntries.shrinkToFit()
        periodItems?.shrinkToFit()
    }

    /// Frees every per-customer record and id, keeping the pair table and the counts: once a
    /// dataset's customer files are written only the graph still reads this shard.
    func releaseCustomerRecords() {
        states.free()
        periodEntries.free()
        periodItems?.free()
        states = GrowableBuffer(capacity: 1, fill: CustomerState())
        periodEntries = GrowableBuffer(capacity: 1, fill: PeriodEntry())
        periodItems = nil
        carries = [:]
        customers.releaseBytes()
    }

    // MARK: Reading

    /// Whether customer `c` bought anything up to the cut-off (and so belongs in the dataset).
    func hasHistory(_ c: Int) -> Bool { states[c].firstDay != .max }

    /// Writes customer `c`'s raw (unnormalised) feature sequence into `out` [T, F], zero-padded,
    /// and returns its length. Safe to call from several threads at once once adding is over:
    /// its scratch lives on the caller's stack.
    func rawFeatures(_ c: Int, into out: UnsafeMutablePointer<Float>) -> Int {
        withUnsafeTemporaryAllocation(of: Int64.self, capacity: 3 * periods) { scratch in
            rawFeatures(c, into: out, scratch: scratch.baseAddress!)
        }
    }

    private func rawFeatures(_ c: Int, into out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Int64>) -> Int {
        let width = customerFeatureNames.count
        let state = states[c]
        out.update(repeating: 0, count: periods * width)
        let firstPeriod = floorDiv(Int(state.firstDay) - windowStart, periodDays)
        let start = max(0, firstPeriod)
        var lastPeriod = state.preLastDay == .min ? Int.min : floorDiv(Int(state.preLastDay) - windowStart, periodDays)
        var cumulativeTransactions = Double(state.preTransactions)
        var cumulativeSpend = FixedPoint.value(preSpend(c))
        let periodTransactions = scratch, periodItems = scratch + periods, periodSpend = scratch + 2 * periods
        scratch.update(repeating: 0, count: 3 * periods)
        forEachEntry(c) { e in
            let period = periodEntries[e].period
            let totals = entryTotals(e)
            periodTransactions[period] = totals.transactions
            periodItems[period] = totals.items
            periodSpend[period] = totals.spend
        }
        // The cumulative features change only in active periods: their logarithms are computed
        // there and carried through the quiet ones (libm's log1p was a tenth of an import).
        var logTransactions = Float(log1p(cumulativeTransactions))
        var logMeanSpend = cumulativeTransactions > 0 ? Float(log1p(max(0, cumulativeSpend / cumulativeTransactions))) : 0
        for k in start..<periods {
            let transactions = Double(periodTransactions[k])
            let items = FixedPoint.value(periodItems[k])
            let spend = FixedPoint.value(periodSpend[k])
            let active = transactions > 0 || items > 0 || spend > 0
            let row = out + (k - start) * width
            if active {
                lastPeriod = k
                cumulativeTransactions += transactions
                cumulativeSpend += spend
                logTransactions = Float(log1p(cumulativeTransactions))
                logMeanSpend = cumulativeTransactions > 0 ? Float(log1p(max(0, cumulativeSpend / cumulativeTransactions))) : 0
                row[0] = Float(transactions)
                row[1] = Float(items)
                row[2] = Float(log1p(max(spend, 0)))
                row[3] = 1
            }
            row[4] = Float(k - firstPeriod)
            // lastPeriod is set by now: the first purchase is either before the window or in
            // period `start` itself.
            row[5] = Float(k - lastPeriod)
            row[6] = logTransactions
            row[7] = logMeanSpend
        }
        return periods - start
    }

    @inline(__always)
    func prefetchRecord(_ c: Int) { clm_prefetch_read(states.pointer + c) }

    /// Total transactions and spend up to the cut-off.
    func historyTotals(_ c: Int) -> (transactions: Double, spend: Double) {
        var transactions = Int64(states[c].preTransactions)
        var spend = preSpend(c)
        forEachEntry(c) { e in
            let totals = entryTotals(e)
            transactions += totals.transactions
            spend &+= totals.spend
        }
        return (Double(transactions), FixedPoint.value(spend))
    }

    /// Whole periods from customer `c`'s first purchase to the cut-off.
    func tenurePeriods(_ c: Int) -> Int { floorDiv(cutoff - Int(states[c].firstDay), periodDays) }

    /// Whole periods from customer `c`'s last purchase up to the cut-off to the cut-off:
    /// `floorDiv(cutoff - lastDay, periodDays)`, which for a day in window period k is
    /// `periods - 1 - k` (the window ends on the cut-off), so the newest active period says it.
    func recencyPeriods(_ c: Int) -> Int {
        var newest = -1
        forEachEntry(c) { e in newest = max(newest, periodEntries[e].period) }
        if newest >= 0 { return periods - 1 - newest }
        return floorDiv(cutoff - Int(states[c].preLastDay), periodDays)
    }

}

/// Counts purchases per (customer, product) pair: the edge weights of the bipartite graph.
///
/// Each purchase appends its pair to a log, a sequential write of 8 bytes, and the log is
/// collapsed into counts once, when the pairs are first read: a counting sort by customer
/// (customer indices are dense), then each customer's few products sorted and counted. A hash
/// table would take a cache miss per row and 16–32 bytes per pair; collapsed, a pair costs 8
/// bytes (product and count) and a customer 4 (its offset).
final class PairCounter {
    /// (customer << 32 | product) per purchase, until collapsed.
    @exclusivity(unchecked) private var log: GrowableBuffer<UInt64>
    @exclusivity(unchecked) private var customerLimit: Int32 = 0
    /// After collapsing: customer c's pairs are `products[offsets[c]..<offsets[c + 1]]`, each
    /// product once and in increasing order, with its purchases in `counts`.
    private var offsets: [Int32] = []
    private var products: [Int32] = []
    private var counts: [Int32] = []
    private var collapsed = false

    init(expectedPairs: Int = 1 << 11) {
        log = GrowableBuffer(capacity: expectedPairs, fill: 0)
    }

    deinit { log.free() }

    @inline(__always)
    func add(customer: Int32, product: Int32) {
        precondition(!collapsed, "a pair added after the pairs were read")
        log.append(UInt64(UInt32(bitPattern: customer)) << 32 | UInt64(UInt32(bitPattern: product)))
        if customer >= customerLimit { customerLimit = customer &+ 1 }
    }

    /// Distinct pairs.
    var count: Int {
        collapse()
        return products.count
    }

    /// Frees the pairs; the counter is empty afterwards.
    func release() {
        collapse()
        offsets = []
        products = []
        counts = []
    }

    /// Every pair with its count, customer by customer, products in increasing order.
    func forEach(_ body: (_ customer: Int32, _ product: Int32, _ count: Int32) -> Void) {
        collapse()
        guard !offsets.isEmpty else { return }
        for customer in 0..<Int(customerLimit) {
            for k in Int(offsets[customer])..<Int(offsets[customer + 1]) {
                body(Int32(customer), products[k], counts[k])
            }
        }
    }

    private func collapse() {
        guard !collapsed else { return }
        collapsed = true
        let n = log.count, customers = Int(customerLimit)
        var starts = [Int32](repeating: 0, count: customers + 1)
        for k in 0..<n { starts[Int(log[k] >> 32) + 1] += 1 }
        for c in 0..<customers { starts[c + 1] += starts[c] }
        var byCustomer = [Int32](repeating: 0, count: n)
        var cursor = starts
        for k in 0..<n {
            let key = log[k], c = Int(key >> 32)
            byCustomer[Int(cursor[c])] = Int32(truncatingIfNeeded: key & 0xFFFF_FFFF)
            cursor[c] += 1
        }
        log.free()
        log = GrowableBuffer(capacity: 16, fill: 0)
        // Each customer's products sorted (a customer has a handful) and collapsed in place.
        var write = 0
        var pairCounts = [Int32](repeating: 0, count: n)
        byCustomer.withUnsafeMutableBufferPointer { products in
            for c in 0..<customers {
                let first = Int(starts[c]), end = Int(starts[c + 1])
                starts[c] = Int32(write)
                guard first < end else { continue }
                var segment = UnsafeMutableBufferPointer(rebasing: products[first..<end])
                segment.sort()
                var k = first
                while k < end {
                    var run = k + 1
                    while run < end && products[run] == products[k] { run += 1 }
                    products[write] = products[k]
                    pairCounts[write] = Int32(run - k)
                    write += 1
                    k = run
                }
            }
        }
        starts[customers] = Int32(write)
        byCustomer.removeLast(n - write)
        pairCounts.removeLast(n - write)
        offsets = starts
        products = byCustomer
        counts = pairCounts
    }
}
