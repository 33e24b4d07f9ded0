/// Parsers for the numeric and time fields of an event row, working on raw bytes.
///
/// The importer calls these once per field on millions of rows, so none of them builds a
/// String or touches Foundation's date machinery; each returns nil instead of throwing, and the
/// caller turns nil into a reject with a reason.
public enum ByteParsing {
    /// A decimal number such as `12`, `-3.5`, `.25`, `1e3` or `+7.10E-2`; nil for anything
    /// else, including `nan`, `inf` and values that overflow to infinity.
    ///
    /// Up to 19 significant digits are exact; the result is within one unit in the last place
    /// of the correctly rounded value, which is ample for money and quantities.
    @inline(__always)
    public static func parseDouble(_ p: UnsafePointer<UInt8>, _ count: Int) -> Double? {
        var i = 0
        var negative = false
        if i < count && (p[i] == UInt8(ascii: "-") || p[i] == UInt8(ascii: "+")) {
            negative = p[i] == UInt8(ascii: "-")
            i += 1
        }
        var mantissa: UInt64 = 0
        var digits = 0
        var droppedExponent = 0
        var sawDigit = false
        while i < count {
            let d = p[i] &- 48
            if d > 9 { break }
            sawDigit = true
            if digits < 19 {
                mantissa = mantissa &* 10 &+ UInt64(d)
                if mantissa != 0 { digits += 1 }
            } else {
                droppedExponent += 1
            }
            i += 1
        }
        var fractionExponent = 0
        if i < count && p[i] == UInt8(ascii: ".") {
            i += 1
            while i < count {
                let d = p[i] &- 48
                if d > 9 { break }
                sawDigit = true
                if digits < 19 {
                    mantissa = mantissa &* 10 &+ UInt64(d)
                    if mantissa != 0 { digits += 1 }
                    fractionExponent -= 1
                }
                i += 1
            }
        }
        guard sawDigit else { return nil }
        var exponent = 0
        if i < count && (p[i] | 0x20) == UInt8(ascii: "e") {
            i += 1
            var expNegative = false
            if i < count && (p[i] == UInt8(ascii: "-") || p[i] == UInt8(ascii: "+")) {
                expNegative = p[i] == UInt8(ascii: "-")
                i += 1
            }
            var sawExpDigit = false
            while i < count {
                let d = p[i] &- 48
                if d > 9 { break }
                sawExpDigit = true
                // Clamp: anything past 10^400 is already out of Double's range either way.
                if exponent < 100_000 { exponent = exponent * 10 + Int(d) }
                i += 1
            }
            guard sawExpDigit else { return nil }
            if expNegative { exponent = -exponent }
        }
        guard i == count else { return nil }
        let total = exponent + fractionExponent + droppedExponent
        var value = Double(mantissa)
        if mantissa != 0 && total != 0 {
            if total > 0 && total <= 22 {
                value *= powersOfTen[total]
            } else if total < 0 && total >= -22 {
                value /= powersOfTen[-total]
            } else {
                value = scaleByPowerOfTen(value, total)
            }
        }
        guard value.isFinite else { return nil }
        return negative ? -value : value
    }

    private static let powersOfTen: [Double] = (0...22).map { exponent in
        var v = 1.0
        for _ in 0..<exponent { v *= 10 }
        return v
    }

    private static func scaleByPowerOfTen(_ value: Double, _ exponent: Int) -> Double {
        var v = value
        var e = exponent
        while e > 22 && v.isFinite { v *= 1e22; e -= 22 }
        while e < -22 && v != 0 { v /= 1e22; e += 22 }
        if !v.isFinite || v == 0 { return v }
        if e > 0 { v *= powersOfTen[e] } else if e < 0 { v /= powersOfTen[-e] }
        return v
    }

    /// An optionally signed decimal integer that fits in Int64; nil otherwise.
    @inline(__always)
    public static func parseInt(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int64? {
        var i = 0
        var negative = false
        if i < count && (p[i] == UInt8(ascii: "-") || p[i] == UInt8(ascii: "+")) {
            negative = p[i] == UInt8(ascii: "-")
            i += 1
        }
        guard i < count, count - i <= 18 else { return nil }
        var value: Int64 = 0
        while i < count {
            let d = p[i] &- 48
            if d > 9 { return nil }
            value = value * 10 + Int64(d)
            i += 1
        }
        return negative ? -value : value
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (valid for any year Int can hold).
    @inline(__always)
    public static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        // Shift the year to start in March so the leap day is the last day of the year.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The (year, month, day) of a day number counted from 1970-01-01.
    public static func civilFromDays(_ days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// `YYYY-MM-DD` for a day number, the form manifests and summaries use.
    public static func isoDate(_ days: Int) -> String {
        let (y, m, d) = civilFromDays(days)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))"
    }

    @inline(__always)
    private static func digits(_ p: UnsafePointer<UInt8>, _ at: Int, _ n: Int) -> Int? {
        var v = 0
        for k in 0..<n {
            let d = p[at + k] &- 48
            if d > 9 { return nil }
            v = v * 10 + Int(d)
        }
        return v
    }

    @inline(__always)
    private static func validDate(_ y: Int, _ m: Int, _ d: Int) -> Bool {
        guard m >= 1 && m <= 12 && d >= 1 else { return false }
        switch m {
        case 2:
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
            return d <= (leap ? 29 : 28)
        case 4, 6, 9, 11: return d <= 30
        default: return d <= 31
        }
    }

    /// `YYYYMMDD`, validated as a calendar date.
    @inline(__always)
    public static func parseCompactDate(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int? {
        guard count == 8, let y = digits(p, 0, 4), let m = digits(p, 4, 2), let d = digits(p, 6, 2),
              validDate(y, m, d) else { return nil }
        return daysFromCivil(year: y, month: m, day: d)
    }

    /// ISO 8601 `YYYY-MM-DD`, optionally followed by `T` or a space, `HH:MM[:SS[.fraction]]`
    /// and a zone (`Z`, `±HH`, `±HH:MM`, `±HHMM`); the day is taken in UTC.
    public static func parseISO(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int? {
        guard count >= 10, let y = digits(p, 0, 4), p[4] == UInt8(ascii: "-"), let m = digits(p, 5, 2),
              p[7] == UInt8(ascii: "-"), let d = digits(p, 8, 2), validDate(y, m, d) else { return nil }
        let day = daysFromCivil(year: y, month: m, day: d)
        if count == 10 { return day }
        guard p[10] == UInt8(ascii: "T") || p[10] == UInt8(ascii: " "), count >= 16,
              let hour = digits(p, 11, 2), p[13] == UInt8(ascii: ":"), let minute = digits(p, 14, 2),
              hour <= 24, minute <= 59 else { return nil }
        var i = 16
        var second = 0
        if i < count && p[i] == UInt8(ascii: ":") {
            guard count >= i + 3, let s = digits(p, i + 1, 2), s <= 60 else { return nil }
            second = s
            i += 3
            if i < count && (p[i] == UInt8(ascii: ".") || p[i] == UInt8(ascii: ",")) {
                i += 1
                let start = i
                while i < count && p[i] &- 48 <= 9 { i += 1 }
                guard i > start else { return nil }
            }
        }
        var offsetMinutes = 0
        if i < count {
            if p[i] == UInt8(ascii: "Z") && i + 1 == count {
                i += 1
            } else if p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-") {
                let sign = p[i] == UInt8(ascii: "-") ? -1 : 1
                i += 1
                guard count >= i + 2, let oh = digits(p, i, 2), oh <= 23 else { return nil }
                i += 2
                var om = 0
                if i < count && p[i] == UInt8(ascii: ":") { i += 1 }
                if i < count {
                    guard count == i + 2, let value = digits(p, i, 2), value <= 59 else { return nil }
                    om = value
                    i += 2
                }
                offsetMinutes = sign * (oh * 60 + om)
            } else {
                return nil
            }
        }
        guard i == count else { return nil }
        // Local time minus the zone offset is UTC; floor division keeps days before 1970 right.
        let seconds = ((day * 24 + hour) * 60 + minute - offsetMinutes) * 60 + second
        return seconds >= 0 ? seconds / 86_400 : -((-seconds + 86_399) / 86_400)
    }

    /// Unix seconds (integer or decimal), floored to the UTC day.
    public static func parseUnixSeconds(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int? {
        if let whole = parseInt(p, count) {
            let s = Int(whole)
            return s >= 0 ? s / 86_400 : -((-s + 86_399) / 86_400)
        }
        guard let value = parseDouble(p, count), abs(value) < 1e15 else { return nil }
        return Int((value / 86_400).rounded(.down))
    }

    /// A relative day number (integer or decimal such as `15.0`), floored.
    public static func parseDayNumber(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int? {
        if let whole = parseInt(p, count) {
            guard abs(whole) < 1_000_000_000 else { return nil }
            return Int(whole)
        }
        guard let value = parseDouble(p, count), abs(value) < 1e9 else { return nil }
        return Int(value.rounded(.down))
    }
}

/// How the time column is written.
public enum TimeFormat: String, Sendable, Codable, CaseIterable {
    case iso, yyyymmdd, unix, days, auto

    /// Parses one field in this format into a day number; nil when it does not parse. `auto`
    /// is resolved before rows are parsed (see `resolve`), so it never reaches here.
    @inline(__always)
    public func parseDay(_ p: UnsafePointer<UInt8>, _ count: Int) -> Int? {
        switch self {
        case .iso: return ByteParsing.parseISO(p, count)
        case .yyyymmdd: return ByteParsing.parseCompactDate(p, count)
        case .unix: return ByteParsing.parseUnixSeconds(p, count)
        case .days: return ByteParsing.parseDayNumber(p, count)
        case .auto: return TimeFormat.resolve(p, count)?.parseDay(p, count)
        }
    }

    /// The format a sample value is written in: ISO when it has dashes, `YYYYMMDD` for eight
    /// digits that form a date, Unix seconds for integers of nine or more digits, otherwise
    /// day numbers. Nil when it parses in none of them.
    public static func resolve(_ p: UnsafePointer<UInt8>, _ count: Int) -> TimeFormat? {
        if ByteParsing.parseISO(p, count) != nil { return .iso }
        if ByteParsing.parseCompactDate(p, count) != nil { return .yyyymmdd }
        if let whole = ByteParsing.parseInt(p, count), whole >= 100_000_000 { return .unix }
        if ByteParsing.parseDayNumber(p, count) != nil { return .days }
        return nil
    }

    /// Whether day numbers in this format are calendar days (printable as dates).
    public var isCalendar: Bool { self != .days }
}
