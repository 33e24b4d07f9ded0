#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

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

/// Totals of one customer in one period of the history window; a node of a per-customer list.
struct PeriodEntry {
    var spend: Int64 = 0
    var items: Int64 = 0
    var transactions: Int32 = 0
    var period: Int32 = 0
    var next: Int32 = -1

    init() {}
    init(period: Int32, next: Int32) {
        self.period = period
        self.next = next
    }
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

/// Per-customer aggregates of a stream of events: exactly what features, labels and the graph
/// need, so memory grows with customers (and customer–product pairs), not with events.
///
/// Per customer: first and last purchase day up to the cut-off, totals before the history
/// window, horizon totals, and transactions/items/spend for each period of the window in which
/// the customer bought something (a short linked list, so a customer active in 3 of 39 periods
/// costs 3 entries, not 39).
///
/// Amounts and quantities are summed in fixed point (`FixedPoint`), so the sums, and with
/// them every stored byte, do not depend on the order of the rows.
final class CustomerAggregates: EventSink {
    let spec: FeatureSpec
    let periods: Int
    let periodDays: Int
    let cutoff: Int
    let windowStart: Int
    let horizonEnd: Int

    let customers = ByteInterner()
    let products = ByteInterner()

    // Touched once or more per event: unchecked exclusivity keeps the runtime's access
    // tracking (a third of the parse time when checked) out of the loop. Single-threaded use only.
    @exclusivity(unchecked) var firstDay = GrowableBuffer<Int32>(fill: .max)
    @exclusivity(unchecked) var lastDay = GrowableBuffer<Int32>(fill: .min)
    @exclusivity(unchecked) var preTransactions = GrowableBuffer<Int32>(fill: 0)
    @exclusivity(unchecked) var preSpend = GrowableBuffer<Int64>(fill: 0)
    @exclusivity(unchecked) var preLastDay = GrowableBuffer<Int32>(fill: .min)
    @exclusivity(unchecked) var horizonTransactions = GrowableBuffer<Int32>(fill: 0)
    @exclusivity(unchecked) var horizonSpend = GrowableBuffer<Int64>(fill: 0)
    @exclusivity(unchecked) var lastOrder = GrowableBuffer<UInt64>(fill: 0)
    /// First entry of the customer's list of active periods in `periodEntries`, -1 for none.
    @exclusivity(unchecked) var periodHead = GrowableBuffer<Int32>(fill: -1)
    @exclusivity(unchecked) var periodEntries = GrowableBuffer<PeriodEntry>(capacity: 1 << 16, fill: PeriodEntry())
    let pairs = PairCounter()

    @exclusivity(unchecked) private(set) var eventsInHistory = 0
    @exclusivity(unchecked) private(set) var eventsInHorizon = 0
    @exclusivity(unchecked) private(set) var eventsAfterHorizon = 0
    @exclusivity(unchecked) private var lastCustomer: Int32 = -1

    private let scratchTransactions: UnsafeMutablePointer<Int32>
    private let scratchItems: UnsafeMutablePointer<Int64>
    private let scratchSpend: UnsafeMutablePointer<Int64>

    init(spec: FeatureSpec) {
        self.spec = spec
        scratchTransactions = .allocate(capacity: spec.historyPeriods)
        scratchItems = .allocate(capacity: spec.historyPeriods)
        scratchSpend = .allocate(capacity: spec.historyPeriods)
        periods = spec.historyPeriods
        periodDays = spec.periodDays
        cutoff = spec.cutoffDay
        windowStart = spec.windowStartDay
        horizonEnd = spec.cutoffDay + spec.horizonDays
    }

    deinit {
        firstDay.free(); lastDay.free(); preTransactions.free(); preSpend.free(); preLastDay.free()
        horizonTransactions.free(); horizonSpend.free(); lastOrder.free(); periodHead.free()
        periodEntries.free(); scratchTransactions.deallocate(); scratchItems.deallocate(); scratchSpend.deallocate()
    }

    var customerCount: Int { customers.count }

    @inline(__always)
    private func customerIndex(_ id: UnsafeRawBufferPointer) -> Int {
        let n = id.count
        let p = id.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        // Event files are usually grouped by customer: compare with the previous one first.
        if lastCustomer >= 0 {
            let previous = customers.bytes(Int(lastCustomer))
            if previous.count == n && (n == 0 || memcmpBytes(previous.baseAddress!, p, n)) { return Int(lastCustomer) }
        }
        let index = customers.intern(p, n)
        lastCustomer = index
        if Int(index) == firstDay.count {
            _ = firstDay.grow(by: 1); _ = lastDay.grow(by: 1); _ = preTransactions.grow(by: 1)
            _ = preSpend.grow(by: 1); _ = preLastDay.grow(by: 1); _ = horizonTransactions.grow(by: 1)
            _ = horizonSpend.grow(by: 1); _ = lastOrder.grow(by: 1); _ = periodHead.grow(by: 1)
        }
        return Int(index)
    }

    func consume(_ event: RawEvent) {
        let c = customerIndex(event.customer)
        let day = event.day
        if day > horizonEnd {
            eventsAfterHorizon += 1
            return
        }
        // Lines of one order arrive together; only the first of them opens a transaction.
        let newTransaction = event.orderHash == 0 || event.orderHash != lastOrder[c]
        lastOrder[c] = event.orderHash
        if day > cutoff {
            eventsInHorizon += 1
            if newTransaction { horizonTransactions[c] += 1 }
            horizonSpend[c] &+= FixedPoint.from(event.amount)
            return
        }
        eventsInHistory += 1
        let day32 = Int32(truncatingIfNeeded: day)
        if day32 < firstDay[c] { firstDay[c] = day32 }
        if day32 > lastDay[c] { lastDay[c] = day32 }
        if day < windowStart {
            if newTransaction { preTransactions[c] += 1 }
            preSpend[c] &+= FixedPoint.from(event.amount)
            if day32 > preLastDay[c] { preLastDay[c] = day32 }
        } else {
            // The newest period sits at the head, so time-ordered rows find theirs at once.
            let period = Int32((day - windowStart) / periodDays)
            var entry = periodHead[c]
            while entry >= 0 && periodEntries[Int(entry)].period != period { entry = periodEntries[Int(entry)].next }
            if entry < 0 {
                entry = Int32(periodEntries.count)
                periodEntries.append(PeriodEntry(period: period, next: periodHead[c]))
                periodHead[c] = entry
            }
            let p = periodEntries.pointer + Int(entry)
            if newTransaction { p.pointee.transactions += 1 }
            p.pointee.items &+= FixedPoint.from(event.quantity)
            p.pointee.spend &+= FixedPoint.from(event.amount)
        }
        if event.product.count > 0 {
            let product = products.intern(event.product.baseAddress!, event.product.count)
            pairs.add(customer: Int32(c), product: product)
        }
    }

    /// Whether customer `c` bought anything up to the cut-off (and so belongs in the dataset).
    func hasHistory(_ c: Int) -> Bool { firstDay[c] != .max }

    /// Writes customer `c`'s raw (unnormalised) feature sequence into `out` [T, F], zero-padded,
    /// and returns its length.
    func rawFeatures(_ c: Int, into out: UnsafeMutablePointer<Float>) -> Int {
        let width = customerFeatureNames.count
        out.update(repeating: 0, count: periods * width)
        let firstPeriod = floorDiv(Int(firstDay[c]) - windowStart, periodDays)
        let start = max(0, firstPeriod)
        var lastPeriod = preLastDay[c] == .min ? Int.min : floorDiv(Int(preLastDay[c]) - windowStart, periodDays)
        var cumulativeTransactions = Double(preTransactions[c])
        var cumulativeSpend = FixedPoint.value(preSpend[c])
        scratchTransactions.update(repeating: 0, count: periods)
        scratchItems.update(repeating: 0, count: periods)
        scratchSpend.update(repeating: 0, count: periods)
        var entry = periodHead[c]
        while entry >= 0 {
            let e = periodEntries[Int(entry)]
            scratchTransactions[Int(e.period)] = e.transactions
            scratchItems[Int(e.period)] = e.items
            scratchSpend[Int(e.period)] = e.spend
            entry = e.next
        }
        for k in start..<periods {
            let transactions = Double(scratchTransactions[k])
            let items = FixedPoint.value(scratchItems[k])
            let spend = FixedPoint.value(scratchSpend[k])
            let active = transactions > 0 || items > 0 || spend > 0
            if active { lastPeriod = k }
            cumulativeTransactions += transactions
            cumulativeSpend += spend
            let row = out + (k - start) * width
            row[0] = Float(transactions)
            row[1] = Float(items)
            row[2] = Float(log1p(max(spend, 0)))
            row[3] = active ? 1 : 0
            row[4] = Float(k - firstPeriod)
            // lastPeriod is set by now: the first purchase is either before the window or in
            // period `start` itself.
            row[5] = Float(k - lastPeriod)
            row[6] = Float(log1p(cumulativeTransactions))
            row[7] = cumulativeTransactions > 0 ? Float(log1p(max(0, cumulativeSpend / cumulativeTransactions))) : 0
        }
        return periods - start
    }

    /// Total transactions and spend up to the cut-off.
    func historyTotals(_ c: Int) -> (transactions: Double, spend: Double) {
        var transactions = Int64(preTransactions[c])
        var spend = preSpend[c]
        var entry = periodHead[c]
        while entry >= 0 {
            let e = periodEntries[Int(entry)]
            transactions += Int64(e.transactions)
            spend &+= e.spend
            entry = e.next
        }
        return (Double(transactions), FixedPoint.value(spend))
    }

    /// Indices of customers with history, in dataset order (shorter ids first, then bytewise).
    func datasetOrder() -> [Int32] {
        var order: [Int32] = []
        order.reserveCapacity(customerCount)
        for c in 0..<customerCount where hasHistory(c) { order.append(Int32(c)) }
        order.sort { customers.precedes(Int($0), Int($1)) }
        return order
    }
}

/// Counts purchases per (customer, product) pair: the edge weights of the bipartite graph.
final class PairCounter {
    @exclusivity(unchecked) private var keys: UnsafeMutablePointer<UInt64>
    @exclusivity(unchecked) private var values: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var mask: Int
    @exclusivity(unchecked) private(set) var count = 0
    private static let empty = UInt64.max

    init() {
        mask = (1 << 12) - 1
        keys = .allocate(capacity: mask + 1)
        keys.initialize(repeating: Self.empty, count: mask + 1)
        values = .allocate(capacity: mask + 1)
        values.initialize(repeating: 0, count: mask + 1)
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    /// Home slot of a pair: a random base per customer plus a small offset per product.
    ///
    /// Rows come grouped by customer, so keeping one customer's pairs within 64 neighbouring
    /// slots turns a cache miss per row into one per customer; across customers the bases are
    /// still spread uniformly, which is all linear probing needs.
    @inline(__always)
    static func home(_ key: UInt64) -> Int {
        let customerHash = ((key >> 32) &* 0x9E37_79B9_7F4A_7C15) >> 16
        let productHash = ((key & 0xFFFF_FFFF) &* 0xBF58_476D_1CE4_E5B9) >> 58
        return Int(truncatingIfNeeded: customerHash &+ productHash)
    }

    @inline(__always)
    func add(customer: Int32, product: Int32) {
        let key = UInt64(UInt32(bitPattern: customer)) << 32 | UInt64(UInt32(bitPattern: product))
        var slot = Self.home(key) & mask
        while true {
            let k = keys[slot]
            if k == key {
                values[slot] &+= 1
                return
            }
            if k == Self.empty { break }
            slot = (slot + 1) & mask
        }
        keys[slot] = key
        values[slot] = 1
        count += 1
        if count * 2 > mask + 1 { grow() }
    }

    private func grow() {
        let oldKeys = keys, oldValues = values, oldSize = mask + 1
        mask = oldSize * 2 - 1
        keys = .allocate(capacity: mask + 1)
        keys.initialize(repeating: Self.empty, count: mask + 1)
        values = .allocate(capacity: mask + 1)
        values.initialize(repeating: 0, count: mask + 1)
        for i in 0..<oldSize where oldKeys[i] != Self.empty {
            var slot = Self.home(oldKeys[i]) & mask
            while keys[slot] != Self.empty { slot = (slot + 1) & mask }
            keys[slot] = oldKeys[i]
            values[slot] = oldValues[i]
        }
        oldKeys.deallocate()
        oldValues.deallocate()
    }

    /// Every pair with its count, in no particular order.
    func forEach(_ body: (_ customer: Int32, _ product: Int32, _ count: Int32) -> Void) {
        for i in 0...mask where keys[i] != Self.empty {
            body(Int32(truncatingIfNeeded: keys[i] >> 32), Int32(truncatingIfNeeded: keys[i] & 0xFFFF_FFFF), values[i])
        }
    }
}
