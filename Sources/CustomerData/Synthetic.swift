#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Tensors

/// Parameters of the synthetic event generator.
public struct SyntheticOptions: Sendable {
    public var customers: Int
    public var products: Int
    public var seed: UInt64
    /// First calendar day of the simulated period and its length in days.
    public var startDay = ByteParsing.daysFromCivil(year: 2022, month: 1, day: 1)
    public var spanDays = 730
    /// Product communities; each has its own purchase rate and drop-out level.
    public var communities = 8

    public init(customers: Int, products: Int, seed: UInt64) {
        self.customers = customers
        self.products = products
        self.seed = seed
    }
}

/// What the generator wrote.
public struct SyntheticSummary: Sendable {
    public var customers: Int
    public var rows: Int
    public var orders: Int
    public var bytes: Int
    public var seconds: Double
}

/// Writes a canonical event CSV with structure a model can learn, customer by customer.
///
/// BG/NBD-like: each customer has a Poisson purchase rate (gamma across customers) and after
/// every purchase drops out with a fixed probability; order values are lognormal around a
/// customer-specific mean. Customers belong to a product community: 85% of their lines come
/// from it, and the community sets their rate and drop-out, so churn and stage are predictable
/// both from the purchase history and from the graph. Every customer has its own random
/// stream (`SeededRandom(purpose: .synthesis).split(customer)`), so memory does not grow with
/// the number of customers and any customer's rows can be regenerated alone.
public func generateSyntheticEvents(options: SyntheticOptions, to path: String) throws -> SyntheticSummary {
    guard options.customers >= 1, options.products >= 1, options.communities >= 1, options.spanDays >= 1 else {
        throw DataError.invalidOption("synth needs at least one customer, product, community and day")
    }
    let started = monotonicSeconds()
    let communities = min(options.communities, options.products)
    let base = SeededRandom(seed: options.seed, purpose: .synthesis)
    var rows = 0, orders = 0
    let bytes = try writeEventCSV(to: path) { line, flush in
        for customer in 0..<options.customers {
            var random = base.split(customer)
            let community = random.nextIndex(below: communities)
            let level = communities > 1 ? Double(community) / Double(communities - 1) : 0.5
            // Higher communities buy more often and stay longer.
            let rate = gammaSample(shape: 2, scale: 1.0 / 60, random: &random) * (0.5 + 1.5 * level)
            let dropOut = min(0.9, (0.03 + 0.25 * (1 - level)) * Double(random.nextFloat(in: 0.5, 1.5)))
            let spendMean = 3.0 + 0.5 * normalSample(random: &random)
            var day = Double(random.nextIndex(below: max(1, options.spanDays * 7 / 10)))
            let communityStart = community * options.products / communities
            let communitySize = max(1, (community + 1) * options.products / communities - communityStart)
            var orderIndex = 0
            while Int(day) < options.spanDays && orderIndex < 1000 {
                orderIndex += 1
                let orderValue = exp(spendMean + 0.4 * normalSample(random: &random))
                let lines = 1 + random.nextIndex(below: 3)
                let cents = max(1, Int((orderValue * 100 / Double(lines)).rounded()))
                for _ in 0..<lines {
                    let product: Int
                    if random.nextUnitFloat() < 0.85 {
                        // Squaring a uniform makes a few products of each community popular.
                        let u = Double(random.nextUnitFloat())
                        product = communityStart + min(communitySize - 1, Int(u * u * Double(communitySize)))
                    } else {
                        product = random.nextIndex(below: options.products)
                    }
                    let quantity = random.nextUnitFloat() < 0.2 ? 2 : 1
                    appendEventFields(&line, customer: customer, day: options.startDay + Int(day), cents: cents,
                                      quantity: quantity, product: product)
                    appendInt(&line, customer + 1)
                    line.append(45)
                    appendInt(&line, orderIndex)
                    line.append(10)
                    rows += 1
                }
                if random.nextUnitFloat() < Float(dropOut) { break }
                day += max(1, (-log(1 - Double(random.nextUnitFloat())) / rate).rounded(.up))
            }
            orders += orderIndex
            if line.count >= 1 << 16 { try flush(&line) }
        }
    }
    return SyntheticSummary(customers: options.customers, rows: rows, orders: orders, bytes: bytes,
                            seconds: monotonicSeconds() - started)
}

/// Writes an order export as shops produce it: rows in date order with customers interleaved,
/// the realistic worst case for an importer that aggregates per customer (the benchmark input,
/// not a learnable data set).
///
/// `rows` lines over `spanDays` days from `startDay`; each order is 1...`maxLinesPerOrder` lines
/// on one day for one customer drawn uniformly from `customers`, with products skewed toward
/// low ids (u²) and lognormal line amounts. With one line per order no two neighbouring rows
/// share a customer, the hardest case for locality. Streams with constant memory.
public func generateDateOrderedEvents(
    rows: Int, customers: Int, products: Int, seed: UInt64, maxLinesPerOrder: Int = 1, to path: String,
    startDay: Int = ByteParsing.daysFromCivil(year: 2020, month: 1, day: 1), spanDays: Int = 731
) throws -> SyntheticSummary {
    guard rows >= 1, customers >= 1, products >= 1, spanDays >= 1, maxLinesPerOrder >= 1 else {
        throw DataError.invalidOption("synth --date-ordered needs at least one row, customer, product, day and line per order")
    }
    let started = monotonicSeconds()
    var random = SeededRandom(seed: seed, purpose: .synthesis)
    var written = 0, orders = 0
    var seen = [Bool](repeating: false, count: customers)
    var distinctCustomers = 0
    let bytes = try writeEventCSV(to: path) { line, flush in
        while written < rows {
            let day = startDay + written * spanDays / rows
            let customer = random.nextIndex(below: customers)
            if !seen[customer] { seen[customer] = true; distinctCustomers += 1 }
            orders += 1
            let lines = min(1 + random.nextIndex(below: maxLinesPerOrder), rows - written)
            for _ in 0..<lines {
                let u = Double(random.nextUnitFloat())
                let product = min(products - 1, Int(u * u * Double(products)))
                let cents = max(1, Int((exp(2.5 + 0.8 * normalSample(random: &random)) * 100).rounded()))
                appendEventFields(&line, customer: customer, day: day, cents: cents,
                                  quantity: random.nextUnitFloat() < 0.2 ? 2 : 1, product: product)
                line.append(79) // "O"
                appendInt(&line, orders)
                line.append(10)
                written += 1
            }
            if line.count >= 1 << 20 - 256 { try flush(&line) }
        }
    }
    return SyntheticSummary(customers: distinctCustomers, rows: written, orders: orders, bytes: bytes,
                            seconds: monotonicSeconds() - started)
}

/// Writes a canonical event CSV at `path` through a temporary file: `body` appends rows to a
/// line buffer and calls `flush` when it wants them written; the file is renamed into place
/// (and its directory fsynced) only when `body` returns. Returns the file's size.
private func writeEventCSV(to path: String, _ body: (inout [UInt8], _ flush: (inout [UInt8]) throws -> Void) throws -> Void) throws -> Int {
    let temporary = path + ".tmp-\(getpid())"
    let writer = try HashingFileWriter(path: temporary, name: lastPathComponent(path))
    var removeTemporary = true
    defer { if removeTemporary { unlink(temporary) } }
    try writer.write("customer_id,timestamp,amount,quantity,product_id,order_id\n")
    var line = [UInt8]()
    line.reserveCapacity(1 << 20)
    func flush(_ line: inout [UInt8]) throws {
        try line.withUnsafeBytes { try writer.write($0) }
        line.removeAll(keepingCapacity: true)
    }
    try body(&line, flush)
    try flush(&line)
    let file = try writer.close(dtype: "text", shape: [])
    try renameItem(temporary, path)
    removeTemporary = false
    try fsyncDirectory(parentDirectory(path))
    return file.bytes
}

/// Appends `customer,YYYY-MM-DD,amount,quantity,Pproduct,` (ids 1-based); the caller appends
/// the order id and the line break.
@inline(__always)
private func appendEventFields(_ line: inout [UInt8], customer: Int, day: Int, cents: Int, quantity: Int, product: Int) {
    appendInt(&line, customer + 1)
    line.append(44)
    appendISODate(&line, day)
    line.append(44)
    appendInt(&line, cents / 100)
    line.append(46)
    line.append(UInt8(48 + (cents % 100) / 10))
    line.append(UInt8(48 + cents % 10))
    line.append(44)
    appendInt(&line, quantity)
    line.append(44)
    line.append(80) // "P"
    appendInt(&line, product + 1)
    line.append(44)
}

@inline(__always)
private func appendInt(_ out: inout [UInt8], _ value: Int) {
    if value < 10 {
        out.append(UInt8(48 + value))
        return
    }
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var v = value
    var n = 0
    withUnsafeMutableBytes(of: &digits) { buffer in
        while v > 0 {
            buffer[n] = UInt8(48 + v % 10)
            v /= 10
            n += 1
        }
        for k in stride(from: n - 1, through: 0, by: -1) { out.append(buffer[k]) }
    }
}

private func appendISODate(_ out: inout [UInt8], _ day: Int) {
    let (y, m, d) = ByteParsing.civilFromDays(day)
    out.append(UInt8(48 + y / 1000 % 10)); out.append(UInt8(48 + y / 100 % 10))
    out.append(UInt8(48 + y / 10 % 10)); out.append(UInt8(48 + y % 10))
    out.append(45)
    out.append(UInt8(48 + m / 10)); out.append(UInt8(48 + m % 10))
    out.append(45)
    out.append(UInt8(48 + d / 10)); out.append(UInt8(48 + d % 10))
}

/// Standard normal by Box–Muller (one of the pair; simplicity over speed here).
func normalSample(random: inout SeededRandom) -> Double {
    let u1 = max(Double(random.nextUnitFloat()), 1e-12)
    let u2 = Double(random.nextUnitFloat())
    return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
}

/// Gamma(shape, scale) for shape >= 1 by Marsaglia and Tsang's squeeze method.
func gammaSample(shape: Double, scale: Double, random: inout SeededRandom) -> Double {
    let d = shape - 1.0 / 3
    let c = 1 / (9 * d).squareRoot()
    while true {
        let x = normalSample(random: &random)
        let v0 = 1 + c * x
        if v0 <= 0 { continue }
        let v = v0 * v0 * v0
        let u = max(Double(random.nextUnitFloat()), 1e-12)
        if log(u) < 0.5 * x * x + d - d * v + d * log(v) { return d * v * scale }
    }
}
