/// What one read of an event file finds, without writing anything: what `clm-data inspect`
/// prints before an import, so that a cut-off and horizon can be chosen from the data's dates.
public struct EventFileReport: Sendable {
    public var path: String
    /// Rows, imported, rejected and skipped counts, and the time format read with.
    public var stats: ReadStats
    /// Where the time format came from.
    public var timeFormatSource: TimeFormatSource
    public var customers: Int
    /// Distinct product ids; nil when the file has no product column.
    public var products: Int?
    /// Days of the first and last purchase (nil without one); calendar days when `calendarDays`.
    public var firstEventDay: Int?
    public var lastEventDay: Int?
    public var calendarDays: Bool
    public var smallestAmount: Double?
    public var largestAmount: Double?
    public var rejects: RejectSummary
    /// The horizon the suggestion starts from: the one asked for, else the preset's default.
    public var horizonAsked: Int
    /// A cut-off and horizon inside the data, or nil when the data spans too few days.
    public var suggestion: WindowSuggestion?

    public var spanDays: Int? { lastEventDay.flatMap { last in firstEventDay.map { last - $0 } } }

    /// A day as the import's summary prints it: a date for calendar formats, else `day N`.
    public func describe(day: Int) -> String { describeDay(day, calendar: calendarDays) }
}

public enum TimeFormatSource: String, Sendable {
    /// `--time-format auto`: from the first time value that parses.
    case detected = "detected from the rows"
    case given = "as given"
    case preset = "the preset's"
}

/// A cut-off and horizon that fit inside an event file's dates: the horizon ends on the last
/// event, and at least as many days of history come before the cut-off as the horizon has.
public struct WindowSuggestion: Sendable, Equatable {
    public var cutoffDay: Int
    public var horizonDays: Int
    /// True when the horizon asked for (or the default) was shortened to leave history before it.
    public var shortened: Bool
}

public enum EventFileInspection {
    /// Reads `input` once as an import with `options` would (the same parser, presets and
    /// checks), and reports what it found. Writes nothing.
    public static func run(input: String, options: ImportOptions) throws -> EventFileReport {
        guard fileExists(input) else { throw DataError.io(path: input, operation: "open", message: "No such file or directory") }
        let (source, _) = Importer.eventSource(input: input, options: options)
        let sink = InspectionSink()
        let rejects = RejectTally()
        let stats = try source.run(sink: sink, rejects: rejects)
        let window = options.resolvedWindow()
        let timeFormatSource: TimeFormatSource = options.preset != .canonical ? .preset
            : options.format.timeFormat == .auto ? .detected : .given
        var report = EventFileReport(
            path: input, stats: stats, timeFormatSource: timeFormatSource, customers: sink.customers.count,
            products: sink.sawProducts ? sink.products.count : nil,
            firstEventDay: sink.firstDay == .max ? nil : sink.firstDay, lastEventDay: sink.lastDay == .min ? nil : sink.lastDay,
            calendarDays: stats.timeFormat.isCalendar,
            smallestAmount: sink.firstDay == .max ? nil : sink.smallestAmount,
            largestAmount: sink.firstDay == .max ? nil : sink.largestAmount,
            rejects: rejects.summary, horizonAsked: window.horizon, suggestion: nil)
        if let first = report.firstEventDay, let last = report.lastEventDay {
            report.suggestion = suggestWindow(firstDay: first, lastDay: last, horizon: window.horizon, periodDays: window.period)
        }
        return report
    }

    /// The horizon `horizon` ending on the last event when at least as many days of history
    /// come before it; otherwise a third of the span in whole periods, leaving two thirds as
    /// history. Nil when the span holds fewer than two periods.
    public static func suggestWindow(firstDay: Int, lastDay: Int, horizon: Int, periodDays: Int) -> WindowSuggestion? {
        let span = lastDay - firstDay
        guard periodDays >= 1, span >= 2 * periodDays else { return nil }
        if 2 * horizon <= span {
            return WindowSuggestion(cutoffDay: lastDay - horizon, horizonDays: horizon, shortened: false)
        }
        let shorter = max(periodDays, span / 3 / periodDays * periodDays)
        return WindowSuggestion(cutoffDay: lastDay - shorter, horizonDays: shorter, shortened: true)
    }
}

/// Counts customers and products and finds the date and amount ranges of the events it is given.
final class InspectionSink: EventSink {
    let customers = ByteInterner()
    let products = ByteInterner()
    var sawProducts = false
    var firstDay = Int.max
    var lastDay = Int.min
    var smallestAmount = Double.infinity
    var largestAmount = -Double.infinity

    func consume(_ event: RawEvent) {
        _ = customers.intern(event.customer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, event.customer.count)
        if let product = event.product.baseAddress, event.product.count > 0 {
            sawProducts = true
            _ = products.intern(product, event.product.count)
        }
        firstDay = min(firstDay, event.day)
        lastDay = max(lastDay, event.day)
        smallestAmount = min(smallestAmount, event.amount)
        largestAmount = max(largestAmount, event.amount)
    }
}
