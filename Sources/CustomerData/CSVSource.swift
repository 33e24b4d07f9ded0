#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Whether the first non-blank line names the columns.
public enum HeaderMode: String, Sendable, Codable {
    case present, absent
    /// A header when the first line's time field does not parse as a timestamp.
    case auto
}

/// A column chosen by header name (case-insensitive, trimmed) or by zero-based position.
public enum ColumnRef: Sendable, Equatable, CustomStringConvertible {
    case name(String)
    case index(Int)

    /// Parses a command-line value: a number is a one-based position, anything else a name.
    public init(argument: String) {
        if let position = Int(argument), position >= 1 { self = .index(position - 1) } else { self = .name(argument) }
    }

    public var description: String {
        switch self {
        case let .name(name): return name
        case let .index(index): return "column \(index + 1)"
        }
    }
}

/// Which columns hold what; `customer`, `time` and `amount` are required.
public struct ColumnMapping: Sendable, Equatable {
    public var customer: ColumnRef
    public var time: ColumnRef
    public var amount: ColumnRef
    public var quantity: ColumnRef?
    public var product: ColumnRef?
    public var order: ColumnRef?
    public var eventType: ColumnRef?

    public init(customer: ColumnRef = .name("customer_id"), time: ColumnRef = .name("timestamp"),
                amount: ColumnRef = .name("amount"), quantity: ColumnRef? = nil, product: ColumnRef? = nil,
                order: ColumnRef? = nil, eventType: ColumnRef? = nil) {
        self.customer = customer
        self.time = time
        self.amount = amount
        self.quantity = quantity
        self.product = product
        self.order = order
        self.eventType = eventType
    }

    /// The canonical format: required columns by name, optional ones used when the header has them.
    public static let canonical = ColumnMapping()
    static let canonicalOptional = ["quantity", "product_id", "order_id", "event_type"]
}

/// How an event file is laid out.
public struct CSVFormat: Sendable, Equatable {
    public var delimiter: UInt8
    /// Fields separated by runs of spaces and tabs (no quoting), as in CDNOW.
    public var whitespace: Bool
    public var header: HeaderMode
    public var timeFormat: TimeFormat
    public var mapping: ColumnMapping
    /// When true, the optional canonical columns are picked up by name if the header has them.
    public var detectOptionalColumns: Bool
    /// Calendar days (ISO, `YYYYMMDD`, Unix time) outside this range are rejected: a year 1 or
    /// 9999 is a typo or a sentinel, and would stretch every customer's history.
    public var plausibleDays: ClosedRange<Int> = CSVFormat.defaultPlausibleDays
    /// Day numbers (`days`) have no epoch, so they may lie either side of zero, but no history
    /// spans more days than the plausible calendar range does: a larger number is a sentinel
    /// or a unit mix-up (seconds given as days).
    public var plausibleRelativeDays: ClosedRange<Int> {
        let span = plausibleDays.upperBound - plausibleDays.lowerBound
        return -span...span
    }
    /// 1970-01-01 through 2100-12-31.
    public static let defaultPlausibleDays = 0...ByteParsing.daysFromCivil(year: 2100, month: 12, day: 31)

    public init(delimiter: UInt8 = UInt8(ascii: ","), whitespace: Bool = false, header: HeaderMode = .present,
                timeFormat: TimeFormat = .auto, mapping: ColumnMapping = .canonical, detectOptionalColumns: Bool = true) {
        self.delimiter = delimiter
        self.whitespace = whitespace
        self.header = header
        self.timeFormat = timeFormat
        self.mapping = mapping
        self.detectOptionalColumns = detectOptionalColumns
    }
}

/// Counts of what a pass over an input did with its lines.
public struct ReadStats: Sendable, Equatable, Codable {
    /// Non-blank lines after the header: every one is imported, rejected or skipped.
    public var rows = 0
    public var imported = 0
    public var rejected = 0
    /// Rows whose event_type is not a purchase.
    public var skippedNonPurchase = 0
    public var blankLines = 0
    public var headerLines = 0
    public var bytes = 0
    public var seconds = 0.0
    public var timeFormat: TimeFormat = .auto

    public init() {}
}

/// What the start of an event file settles for all of its rows (`CSVEventSource.probeLayout`).
struct CSVLayout: Sendable, Equatable {
    /// Byte offset of the header line, nil without one.
    var headerOffset: Int?
    /// Fields of every row (-1 when the file has no data row).
    var expectedFields: Int
    var timeFormat: TimeFormat
    /// Byte offset of the row that resolved an automatic time format (`Int.max` when none did).
    var timeResolvedAt: Int
}

/// Receives rejected rows.
protocol RejectSink: AnyObject {
    func add(line: Int, reason: String, content: UnsafeRawBufferPointer) throws
}

/// Bytes of a rejected line the rejects file keeps: the file stays readable for huge garbage
/// lines, and the line number finds the rest.
let rejectShownBytes = 1000

/// A rejects-file line without its line number: `,reason,content\n`.
func rejectLineTail(reason: String, content: UnsafeRawBufferPointer) -> String {
    let shown = UnsafeRawBufferPointer(rebasing: content.prefix(rejectShownBytes))
    let text = String(decoding: shown, as: UTF8.self)
    return ",\(csvField(reason, alwaysQuoted: true)),\(csvField(text, alwaysQuoted: true))\n"
}

/// Writes rejected rows with their line number and reason to a CSV file, and counts them by
/// reason for the summary a failed import prints.
final class RejectsWriter: RejectSink {
    let path: String
    private let writer: HashingFileWriter
    private(set) var count = 0
    let tally = RejectTally()

    init(path: String) throws {
        self.path = path
        writer = try HashingFileWriter(path: path, name: "rejects.csv")
        try writer.write("line,reason,content\n")
    }

    func add(line: Int, reason: String, content: UnsafeRawBufferPointer) throws {
        count += 1
        tally.add(line: line, reason: reason, content: content)
        try writer.write("\(line)" + rejectLineTail(reason: reason, content: content))
    }

    func close() throws { _ = try writer.close(dtype: "text", shape: []) }
}


/// Why a row was rejected.
enum RowError: Error {
    case reject(String)
}

/// Reads a delimited event file in chunks and hands every valid row to a sink as a `RawEvent`.
///
/// Fields are located and parsed in place in the read buffer; no String is built for a row
/// that is accepted. Lines are split on `\n` (a trailing `\r` is dropped); a quoted field may
/// contain the delimiter and doubled quotes but not a line break.
final class CSVEventSource {
    let path: String
    let format: CSVFormat

    // Touched once or more per event: unchecked exclusivity keeps the runtime's access
    // tracking (a third of the parse time when checked) out of the loop. Single-threaded use only.
    @exclusivity(unchecked) private var customerColumn = -1, timeColumn = -1, amountColumn = -1
    @exclusivity(unchecked) private var quantityColumn = -1, productColumn = -1, orderColumn = -1, eventTypeColumn = -1
    @exclusivity(unchecked) private var columnNames: [String] = []
    @exclusivity(unchecked) private var expectedFields = -1
    @exclusivity(unchecked) private var maxColumn = 0
    @exclusivity(unchecked) private var fieldStart: UnsafeMutablePointer<Int>
    @exclusivity(unchecked) private var fieldEnd: UnsafeMutablePointer<Int>
    @exclusivity(unchecked) private var fieldEscaped: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) private var fieldCapacity = 0
    @exclusivity(unchecked) private var customerScratch = GrowableBuffer<UInt8>(capacity: 256, fill: 0)
    @exclusivity(unchecked) private var productScratch = GrowableBuffer<UInt8>(capacity: 256, fill: 0)
    @exclusivity(unchecked) private var timeFormat: TimeFormat

    init(path: String, format: CSVFormat) {
        self.path = path
        self.format = format
        timeFormat = format.timeFormat
        fieldStart = .allocate(capacity: 1)
        fieldEnd = .allocate(capacity: 1)
        fieldEscaped = .allocate(capacity: 1)
    }

    deinit {
        fieldStart.deallocate()
        fieldEnd.deallocate()
        fieldEscaped.deallocate()
        customerScratch.free()
        productScratch.free()
    }

    /// Reads the whole file once. `rejects` receives every rejected row; pass nil for a
    /// preliminary pass whose rejects the real pass will report.
    func run<Sink: EventSink>(sink: Sink, rejects: RejectSink?) throws -> ReadStats {
        var stats = ReadStats()
        let started = monotonicSeconds()
        timeFormat = format.timeFormat
        expectedFields = -1
        var headerHandled = format.header == .absent
        if format.header == .absent { try resolveColumns(header: nil) }

        try forEachLine(path: path) { line, count, lineNumber in
            if count == 0 || isBlank(line, count) {
                stats.blankLines += 1
                return
            }
            if !headerHandled {
                headerHandled = true
                if try takeHeader(line, count, stats: &stats) { return }
            }
            try takeRow(line, count, lineNumber, stats: &stats, sink: sink, rejects: rejects)
        } bytesRead: { stats.bytes = $0 }

        if !headerHandled || (stats.rows == 0 && stats.headerLines == 0 && stats.blankLines == 0) {
            throw DataError.emptyFile(path: path)
        }
        stats.seconds = monotonicSeconds() - started
        stats.timeFormat = timeFormat
        return stats
    }

    /// Reads the start of the file as one pass would, up to the first row that fixes the row
    /// width and the time format, and leaves the columns resolved; `run(range:…)` needs it.
    func probeLayout() throws -> CSVLayout {
        timeFormat = format.timeFormat
        expectedFields = -1
        var headerHandled = format.header == .absent
        if format.header == .absent { try resolveColumns(header: nil) }
        var stats = ReadStats()
        var headerOffset: Int?
        var resolvedAt = Int.max
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError.io(path: path, operation: "open", message: systemMessage()) }
        defer { _ = close(fd) }
        struct Settled: Error {}
        let discard = LastDayTracker()
        do {
            try forEachLine(fd: fd, path: path, range: 0..<Int.max) { line, count, _, offset in
                if count == 0 || isBlank(line, count) { return }
                if !headerHandled {
                    headerHandled = true
                    if try takeHeader(line, count, stats: &stats) {
                        headerOffset = offset
                        return
                    }
                }
                do { _ = try parseRow(line, count, sink: discard) } catch RowError.reject(_) {}
                if timeFormat != .auto {
                    resolvedAt = format.timeFormat == .auto ? offset : 0
                    throw Settled()
                }
            }
        } catch is Settled {}
        guard headerHandled else { throw DataError.emptyFile(path: path) }
        return CSVLayout(headerOffset: headerOffset, expectedFields: expectedFields, timeFormat: timeFormat,
                         timeResolvedAt: resolvedAt)
    }

    /// Reads the lines that start in `range` (aligned to line starts) of the open file `fd`
    /// after `probeLayout()`, treating each row exactly as one pass over the whole file does.
    /// Reject line numbers count from 1 at the range's start; returns the lines read.
    func run<Sink: EventSink>(
        fd: Int32, range: Range<Int>, layout: CSVLayout, sink: Sink, rejects: RejectSink?
    ) throws -> (stats: ReadStats, lines: Int) {
        var stats = ReadStats()
        let started = monotonicSeconds()
        // Before the row that resolved it, one pass still reads with the format unresolved.
        timeFormat = range.lowerBound <= layout.timeResolvedAt ? format.timeFormat : layout.timeFormat
        expectedFields = layout.expectedFields
        var lines = 0
        stats.bytes = try forEachLine(fd: fd, path: path, range: range) { line, count, lineNumber, offset in
            lines = lineNumber
            if count == 0 || isBlank(line, count) {
                stats.blankLines += 1
                return
            }
            if offset == layout.headerOffset {
                stats.headerLines = 1
                return
            }
            try takeRow(line, count, lineNumber, stats: &stats, sink: sink, rejects: rejects)
        }
        stats.seconds = monotonicSeconds() - started
        stats.timeFormat = layout.timeFormat
        return (stats, lines)
    }

    /// Counts one data row as imported, skipped or rejected (with its reason, to `rejects`).
    @inline(__always)
    private func takeRow<Sink: EventSink>(
        _ line: UnsafePointer<UInt8>, _ count: Int, _ lineNumber: Int, stats: inout ReadStats, sink: Sink, rejects: RejectSink?
    ) throws {
        stats.rows += 1
        do {
            let imported = try parseRow(line, count, sink: sink)
            if imported { stats.imported += 1 } else { stats.skippedNonPurchase += 1 }
        } catch RowError.reject(let reason) {
            stats.rejected += 1
            try rejects?.add(line: lineNumber, reason: reason, content: UnsafeRawBufferPointer(start: line, count: count))
        }
    }

    /// Handles the first non-blank line; returns true when it was a header.
    private func takeHeader(_ line: UnsafePointer<UInt8>, _ count: Int, stats: inout ReadStats) throws -> Bool {
        let names = splitAll(line, count)
        var isHeader = format.header == .present
        if format.header == .auto {
            try resolveColumns(header: nil)
            var timeParses = false
            if timeColumn < names.count {
                var copy = names[timeColumn]
                timeParses = copy.withUTF8 { timeFormat.parseDay($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) } != nil
            }
            isHeader = !timeParses
        }
        if isHeader {
            stats.headerLines = 1
            if format.header == .present { try resolveColumns(header: names) }
            expectedFields = names.count
            return true
        }
        return false
    }

    /// Turns the mapping into field positions, by header name or index.
    private func resolveColumns(header: [String]?) throws {
        let normalised = header?.map { $0.lowercased() }
        func find(_ ref: ColumnRef, required: Bool) throws -> Int {
            switch ref {
            case let .index(index): return index
            case let .name(name):
                guard let normalised else {
                    throw DataError.invalidOption("column '\(name)' is given by name but \(path) has no header; give its position (1-based) instead")
                }
                if let position = normalised.firstIndex(of: name.lowercased()) { return position }
                if required { throw DataError.missingColumn(path: path, column: name, header: header ?? []) }
                return -1
            }
        }
        let m = format.mapping
        customerColumn = try find(m.customer, required: true)
        timeColumn = try find(m.time, required: true)
        amountColumn = try find(m.amount, required: true)
        quantityColumn = try m.quantity.map { try find($0, required: true) } ?? -1
        productColumn = try m.product.map { try find($0, required: true) } ?? -1
        orderColumn = try m.order.map { try find($0, required: true) } ?? -1
        eventTypeColumn = try m.eventType.map { try find($0, required: true) } ?? -1
        if format.detectOptionalColumns, let normalised {
            let optional = ColumnMapping.canonicalOptional.map { normalised.firstIndex(of: $0) ?? -1 }
            if quantityColumn < 0 { quantityColumn = optional[0] }
            if productColumn < 0 { productColumn = optional[1] }
            if orderColumn < 0 { orderColumn = optional[2] }
            if eventTypeColumn < 0 { eventTypeColumn = optional[3] }
        }
        columnNames = header ?? []
        maxColumn = [customerColumn, timeColumn, amountColumn, quantityColumn, productColumn, orderColumn, eventTypeColumn].max()!
        if fieldCapacity < maxColumn + 1 {
            fieldStart.deallocate(); fieldEnd.deallocate(); fieldEscaped.deallocate()
            fieldCapacity = maxColumn + 1
            fieldStart = .allocate(capacity: fieldCapacity)
            fieldEnd = .allocate(capacity: fieldCapacity)
            fieldEscaped = .allocate(capacity: fieldCapacity)
        }
    }

    private func name(ofColumn index: Int) -> String {
        index < columnNames.count && !columnNames[index].isEmpty ? columnNames[index] : "column \(index + 1)"
    }

    /// All fields of a line as Strings (header and auto-detection only).
    func splitAll(_ line: UnsafePointer<UInt8>, _ count: Int) -> [String] {
        var fields: [String] = []
        var i = 0
        if format.whitespace {
            while i < count {
                while i < count && (line[i] == 32 || line[i] == 9) { i += 1 }
                if i >= count { break }
                let start = i
                while i < count && line[i] != 32 && line[i] != 9 { i += 1 }
                fields.append(String(decoding: UnsafeBufferPointer(start: line + start, count: i - start), as: UTF8.self))
            }
            return fields
        }
        let delimiter = format.delimiter
        var field: [UInt8] = []
        var inQuotes = false
        while i < count {
            let b = line[i]
            if inQuotes {
                if b == 34 {
                    if i + 1 < count && line[i + 1] == 34 { field.append(34); i += 1 } else { inQuotes = false }
                } else {
                    field.append(b)
                }
            } else if b == 34 && field.allSatisfy({ $0 == 32 || $0 == 9 }) {
                inQuotes = true
                field.removeAll()
            } else if b == delimiter {
                fields.append(trimmed(field))
                field.removeAll()
            } else {
                field.append(b)
            }
            i += 1
        }
        fields.append(trimmed(field))
        return fields
    }

    private func trimmed(_ bytes: [UInt8]) -> String {
        var slice = bytes[...]
        while let first = slice.first, first == 32 || first == 9 { slice = slice.dropFirst() }
        while let last = slice.last, last == 32 || last == 9 { slice = slice.dropLast() }
        return String(decoding: slice, as: UTF8.self)
    }

    @inline(__always)
    private func isBlank(_ line: UnsafePointer<UInt8>, _ count: Int) -> Bool {
        for i in 0..<count where line[i] != 32 && line[i] != 9 { return false }
        return true
    }

    /// Locates the fields of a line, recording positions of those the mapping needs; returns
    /// the number of fields.
    @inline(__always)
    private func splitFields(_ line: UnsafePointer<UInt8>, _ count: Int) throws -> Int {
        var n = 0
        var i = 0
        if format.whitespace {
            while true {
                while i < count && (line[i] == 32 || line[i] == 9) { i += 1 }
                if i >= count { return n }
                let start = i
                while i < count && line[i] != 32 && line[i] != 9 { i += 1 }
                if n <= maxColumn {
                    fieldStart[n] = start
                    fieldEnd[n] = i
                    fieldEscaped[n] = false
                }
                n += 1
            }
        }
        let delimiter = format.delimiter
        while true {
            while i < count && (line[i] == 32 || line[i] == 9) && line[i] != delimiter { i += 1 }
            var start = i
            var end = i
            var escaped = false
            if i < count && line[i] == 34 {
                i += 1
                start = i
                var closed = false
                while i < count {
                    if line[i] == 34 {
                        if i + 1 < count && line[i + 1] == 34 {
                            escaped = true
                            i += 2
                            continue
                        }
                        closed = true
                        break
                    }
                    i += 1
                }
                guard closed else { throw RowError.reject("unterminated quoted field in \(name(ofColumn: n))") }
                end = i
                i += 1
                while i < count && (line[i] == 32 || line[i] == 9) && line[i] != delimiter { i += 1 }
                if i < count && line[i] != delimiter {
                    throw RowError.reject("unexpected text after the closing quote in \(name(ofColumn: n))")
                }
            } else {
                while i < count && line[i] != delimiter { i += 1 }
                end = i
                while end > start && (line[end - 1] == 32 || line[end - 1] == 9) { end -= 1 }
            }
            if n <= maxColumn {
                fieldStart[n] = start
                fieldEnd[n] = end
                fieldEscaped[n] = escaped
            }
            n += 1
            if i >= count { return n }
            i += 1 // past the delimiter
        }
    }

    /// The bytes of a field with doubled quotes collapsed (ids only; numbers never have them).
    @inline(__always)
    private func fieldBytes(_ line: UnsafePointer<UInt8>, _ column: Int, scratch: inout GrowableBuffer<UInt8>) -> UnsafeRawBufferPointer {
        let start = fieldStart[column], end = fieldEnd[column]
        if !fieldEscaped[column] { return UnsafeRawBufferPointer(start: line + start, count: end - start) }
        scratch.removeAll()
        var i = start
        while i < end {
            scratch.append(line[i])
            i += line[i] == 34 ? 2 : 1
        }
        // The scratch buffer is owned by the source and left alone until the next row.
        return UnsafeRawBufferPointer(start: scratch.pointer, count: scratch.count)
    }

    @inline(__always)
    private func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var ascii = true
        for b in bytes where b >= 0x80 { ascii = false; break }
        if ascii { return true }
        return String(validating: bytes.bindMemory(to: UInt8.self), as: UTF8.self) != nil
    }

    private func numberReason(_ column: Int, _ p: UnsafePointer<UInt8>, _ n: Int) -> String {
        let text = String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
        let lower = text.lowercased()
        let nonFinite = ["nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"].contains(lower)
            || (Double(text).map { !$0.isFinite } ?? false)
        let shown = text.count > 40 ? String(text.prefix(40)) + "…" : text
        return nonFinite ? "non-finite \(name(ofColumn: column)) '\(shown)'" : "unparsable \(name(ofColumn: column)) '\(shown)'"
    }

    /// Parses one data row and hands it to the sink; returns false for a non-purchase event.
    @inline(__always)
    private func parseRow<Sink: EventSink>(_ line: UnsafePointer<UInt8>, _ count: Int, sink: Sink) throws -> Bool {
        let n = try splitFields(line, count)
        if expectedFields < 0 { expectedFields = n }
        guard n == expectedFields else {
            throw RowError.reject("expected \(expectedFields) fields, found \(n)")
        }
        if eventTypeColumn >= 0 {
            let p = line + fieldStart[eventTypeColumn]
            let len = fieldEnd[eventTypeColumn] - fieldStart[eventTypeColumn]
            if !isPurchaseType(p, len) { return false }
        }
        let customer = fieldBytes(line, customerColumn, scratch: &customerScratch)
        guard customer.count > 0 else { throw RowError.reject("empty \(name(ofColumn: customerColumn))") }
        guard isValidUTF8(customer) else { throw RowError.reject("invalid UTF-8 in \(name(ofColumn: customerColumn))") }
        if let problem = IdentifierRules.problem(customer) { throw RowError.reject("\(name(ofColumn: customerColumn)) \(problem)") }

        let tp = line + fieldStart[timeColumn], tn = fieldEnd[timeColumn] - fieldStart[timeColumn]
        if timeFormat == .auto, let resolved = TimeFormat.resolve(tp, tn) { timeFormat = resolved }
        guard let day = timeFormat.parseDay(tp, tn), abs(day) < 100_000_000 else {
            let text = String(decoding: UnsafeBufferPointer(start: tp, count: min(tn, 40)), as: UTF8.self)
            throw RowError.reject(tn == 0 ? "empty \(name(ofColumn: timeColumn))" : "unparsable \(name(ofColumn: timeColumn)) '\(text)' (format \(timeFormat.rawValue))")
        }
        if timeFormat.isCalendar {
            guard format.plausibleDays.contains(day) else {
                let text = String(decoding: UnsafeBufferPointer(start: tp, count: min(tn, 40)), as: UTF8.self)
                throw RowError.reject("\(name(ofColumn: timeColumn)) '\(text)' is outside the plausible dates \(ByteParsing.isoDate(format.plausibleDays.lowerBound)) to \(ByteParsing.isoDate(format.plausibleDays.upperBound))")
            }
        } else {
            guard format.plausibleRelativeDays.contains(day) else {
                let text = String(decoding: UnsafeBufferPointer(start: tp, count: min(tn, 40)), as: UTF8.self)
                throw RowError.reject("\(name(ofColumn: timeColumn)) '\(text)' is outside the plausible day numbers \(format.plausibleRelativeDays.lowerBound) to \(format.plausibleRelativeDays.upperBound)")
            }
        }

        let ap = line + fieldStart[amountColumn], an = fieldEnd[amountColumn] - fieldStart[amountColumn]
        guard an > 0 else { throw RowError.reject("empty \(name(ofColumn: amountColumn))") }
        guard let amount = ByteParsing.parseDouble(ap, an) else { throw RowError.reject(numberReason(amountColumn, ap, an)) }
        guard amount >= 0 else { throw RowError.reject("negative \(name(ofColumn: amountColumn)) (returns are not supported)") }
        guard amount <= FixedPoint.limit else { throw RowError.reject("\(name(ofColumn: amountColumn)) \(amount) is larger than \(FixedPoint.limit)") }

        var quantity = 1.0
        if quantityColumn >= 0 {
            let qp = line + fieldStart[quantityColumn], qn = fieldEnd[quantityColumn] - fieldStart[quantityColumn]
            if qn > 0 {
                guard let value = ByteParsing.parseDouble(qp, qn) else { throw RowError.reject(numberReason(quantityColumn, qp, qn)) }
                guard value >= 0 else { throw RowError.reject("negative \(name(ofColumn: quantityColumn))") }
                guard value <= FixedPoint.limit else { throw RowError.reject("\(name(ofColumn: quantityColumn)) \(value) is larger than \(FixedPoint.limit)") }
                quantity = value
            }
        }
        var product = UnsafeRawBufferPointer(start: nil, count: 0)
        if productColumn >= 0 {
            product = fieldBytes(line, productColumn, scratch: &productScratch)
            guard isValidUTF8(product) else { throw RowError.reject("invalid UTF-8 in \(name(ofColumn: productColumn))") }
            if let problem = IdentifierRules.problem(product) { throw RowError.reject("\(name(ofColumn: productColumn)) \(problem)") }
        }
        var orderHash: UInt64 = 0
        if orderColumn >= 0 {
            let op = line + fieldStart[orderColumn], on = fieldEnd[orderColumn] - fieldStart[orderColumn]
            if on > 0 { orderHash = hashIdentifier(op, on) | 1 }
        }
        sink.consume(RawEvent(customer: customer, day: day, amount: amount, quantity: quantity, product: product, orderHash: orderHash))
        return true
    }

    @inline(__always)
    private func isPurchaseType(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        if n == 0 { return true }
        guard n <= 12 else { return false }
        var lower = [UInt8](repeating: 0, count: n)
        for i in 0..<n { lower[i] = p[i] | (p[i] >= 65 && p[i] <= 90 ? 0x20 : 0) }
        let word = String(decoding: lower, as: UTF8.self)
        return word == "purchase" || word == "order" || word == "transaction" || word == "sale"
    }
}

/// What an identifier (customer or product id) may be, in an event file and in a scoring
/// request alike: at most 256 bytes, no control characters (a NUL or an escape sequence in an id
/// ends up in output files and logs).
public enum IdentifierRules {
    public static let maximumBytes = 256

    /// Why `bytes` cannot be an identifier, or nil.
    @inline(__always)
    public static func problem(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard bytes.count <= maximumBytes else { return "is \(bytes.count) bytes long; the limit is \(maximumBytes)" }
        for byte in bytes where byte < 0x20 || byte == 0x7F {
            return "holds the control character 0x\(String(byte, radix: 16)); identifiers are printable text"
        }
        return nil
    }

    public static func problem(_ text: String) -> String? {
        var copy = text
        return copy.withUTF8 { problem(UnsafeRawBufferPointer($0)) }
    }
}

/// The longest line an event file may have: far beyond any real row, far below what a binary
/// file or one without line breaks would make the reader hold.
let maximumLineBytes = 8 << 20

/// Calls `body(line, count, lineNumber)` for every line of the file at `path`.
func forEachLine(path: String, _ body: (UnsafePointer<UInt8>, Int, Int) throws -> Void, bytesRead: (Int) -> Void) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw DataError.io(path: path, operation: "open", message: systemMessage()) }
    defer { _ = close(fd) }
    let total = try forEachLine(fd: fd, path: path, range: 0..<Int.max) { line, count, number, _ in
        try body(line, count, number)
    }
    bytesRead(total)
}

/// Calls `body(line, count, lineNumber, lineStart)` for every line that starts in `range` of
/// the open file `fd`, reading in 4 MiB chunks, and returns the bytes read. Line numbers count
/// from 1 at the range's start; `lineStart` is the line's byte offset in the file. A UTF-8 byte
/// order mark at offset 0 and a `\r` before each `\n` are removed. The range must start at a
/// line start (see `lineStart(atOrAfter:)`), so that its lines are whole.
@discardableResult
func forEachLine(
    fd: Int32, path: String, range: Range<Int>,
    _ body: (UnsafePointer<UInt8>, Int, Int, Int) throws -> Void
) throws -> Int {
    var capacity = 4 << 20
    var buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
    defer { buffer.deallocate() }
    var filled = 0
    var lineNumber = 0
    var total = 0
    /// File offset of buffer[0].
    var bufferStart = range.lowerBound
    var atStart = range.lowerBound == 0
    var eof = range.isEmpty
    while !eof {
        if filled == capacity {
            // One line fills the whole buffer. Growing without bound made a 2 GiB file with no
            // line break cost 4 GB of memory before it failed anyway; no event row is this long.
            guard capacity < maximumLineBytes else {
                throw DataError.lineTooLong(path: path, line: lineNumber + 1, limit: maximumLineBytes)
            }
            let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: min(capacity * 2, maximumLineBytes))
            bigger.update(from: buffer, count: filled)
            buffer.deallocate()
            buffer = bigger
            capacity = min(capacity * 2, maximumLineBytes)
        }
        let wanted = min(capacity - filled, range.upperBound - (bufferStart + filled))
        let n = wanted > 0 ? pread(fd, buffer + filled, wanted, off_t(bufferStart + filled)) : 0
        if n < 0 {
            if errno == EINTR { continue }
            throw DataError.io(path: path, operation: "read", message: systemMessage())
        }
        if n == 0 { eof = true }
        filled += n
        total += n
        var position = 0
        if atStart && filled >= 3 || eof && atStart {
            atStart = false
            if filled >= 3 && buffer[0] == 0xEF && buffer[1] == 0xBB && buffer[2] == 0xBF { position = 3 }
        }
        while position < filled {
            let remaining = filled - position
            guard let found = memchr(buffer + position, 10, remaining) else {
                if !eof { break }
                lineNumber += 1
                var length = remaining
                if length > 0 && buffer[position + length - 1] == 13 { length -= 1 }
                try body(buffer + position, length, lineNumber, bufferStart + position)
                position = filled
                break
            }
            let newline = found.assumingMemoryBound(to: UInt8.self) - buffer
            var length = newline - position
            if length > 0 && buffer[newline - 1] == 13 { length -= 1 }
            lineNumber += 1
            try body(buffer + position, length, lineNumber, bufferStart + position)
            position = newline + 1
        }
        if position < filled && position > 0 {
            (buffer).update(from: buffer + position, count: filled - position)
        }
        filled -= position
        bufferStart += position
        if atStart && eof { atStart = false }
    }
    return total
}

/// The offset of the first line that starts at or after `offset` in `fd` (the file size when
/// none does): where a byte range handed to one rank may begin so that it holds whole lines.
func lineStart(atOrAfter offset: Int, fd: Int32, path: String, fileSize: Int) throws -> Int {
    guard offset > 0 else { return 0 }
    guard offset < fileSize else { return fileSize }
    var chunk = [UInt8](repeating: 0, count: 64 << 10)
    var position = offset - 1
    while position < fileSize {
        let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(position)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw DataError.io(path: path, operation: "read", message: systemMessage())
        }
        if n == 0 { break }
        if let newline = chunk[0..<n].firstIndex(of: 10) { return position + newline + 1 }
        position += n
    }
    return fileSize
}
