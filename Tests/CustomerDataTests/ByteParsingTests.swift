import Testing
@testable import CustomerData

func withBytes<T>(_ text: String, _ body: (UnsafePointer<UInt8>, Int) -> T) -> T {
    var copy = text
    return copy.withUTF8 { body($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
}

@Test func parsesDecimalNumbers() {
    #expect(withBytes("12", ByteParsing.parseDouble) == 12)
    #expect(withBytes("-3.5", ByteParsing.parseDouble) == -3.5)
    #expect(withBytes(".25", ByteParsing.parseDouble) == 0.25)
    #expect(withBytes("1e3", ByteParsing.parseDouble) == 1000)
    #expect(withBytes("+7.10E-2", ByteParsing.parseDouble) == 0.071)
    #expect(withBytes("11.77", ByteParsing.parseDouble) == 11.77)
    // Past 19 digits the result may be one unit in the last place off the correctly rounded value.
    let long = withBytes("123456789012345678901234", ByteParsing.parseDouble)!
    #expect(abs(long / 123456789012345678901234.0 - 1) < 3e-16)
    for bad in ["", "-", ".", "1e", "1.2.3", "nan", "inf", "1e999", "12a", "1 2", "0x10"] {
        #expect(withBytes(bad, ByteParsing.parseDouble) == nil, "\(bad)")
    }
}

@Test func parsesTimestampsInEveryFormat() {
    let day19970101 = 9862
    #expect(ByteParsing.daysFromCivil(year: 1970, month: 1, day: 1) == 0)
    #expect(ByteParsing.daysFromCivil(year: 1997, month: 1, day: 1) == day19970101)
    #expect(ByteParsing.isoDate(day19970101) == "1997-01-01")
    #expect(ByteParsing.isoDate(-1) == "1969-12-31")
    #expect(withBytes("1997-01-01", ByteParsing.parseISO) == day19970101)
    #expect(withBytes("1997-01-01T23:59:59Z", ByteParsing.parseISO) == day19970101)
    #expect(withBytes("1997-01-01T23:30:00-01:00", ByteParsing.parseISO) == day19970101 + 1)
    #expect(withBytes("1997-01-02T00:30:00.123+0100", ByteParsing.parseISO) == day19970101)
    #expect(withBytes("1997-01-01 08:00", ByteParsing.parseISO) == day19970101)
    #expect(withBytes("19970101", ByteParsing.parseCompactDate) == day19970101)
    #expect(withBytes("2000-02-29", ByteParsing.parseISO) != nil)
    for bad in ["1997-02-29", "1997-13-01", "1997-1-1", "1997-01-01T", "1997-01-01T25:00", "1997-01-01X"] {
        #expect(withBytes(bad, ByteParsing.parseISO) == nil, "\(bad)")
    }
    #expect(withBytes("19970230", ByteParsing.parseCompactDate) == nil)
    #expect(withBytes("852076800", ByteParsing.parseUnixSeconds) == day19970101)
    #expect(withBytes("-1", ByteParsing.parseUnixSeconds) == -1)
    #expect(withBytes("15.0", ByteParsing.parseDayNumber) == 15)
    #expect(withBytes("1997-01-01", TimeFormat.resolve) == .iso)
    #expect(withBytes("19970101", TimeFormat.resolve) == .yyyymmdd)
    #expect(withBytes("852076800", TimeFormat.resolve) == .unix)
    #expect(withBytes("42", TimeFormat.resolve) == .days)
    #expect(withBytes("yesterday", TimeFormat.resolve) == nil)
}

@Test func civilDatesRoundTrip() {
    for day in stride(from: -800_000, through: 800_000, by: 997) {
        let (y, m, d) = ByteParsing.civilFromDays(day)
        #expect(ByteParsing.daysFromCivil(year: y, month: m, day: d) == day)
    }
}

@Test func contentHashIsStreamingAndSensitive() {
    let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    let whole = bytes.withUnsafeBytes { ContentHasher.hash($0) }
    for split in [0, 1, 7, 8, 9, 500, 999] {
        var hasher = ContentHasher()
        bytes[..<split].withUnsafeBytes { hasher.update($0) }
        bytes[split...].withUnsafeBytes { hasher.update($0) }
        #expect(hasher.finalize() == whole)
    }
    var flipped = bytes
    flipped[500] ^= 1
    #expect(flipped.withUnsafeBytes { ContentHasher.hash($0) } != whole)
    #expect(bytes.withUnsafeBytes { ContentHasher.hash(UnsafeRawBufferPointer(rebasing: $0[..<999])) } != whole)
    #expect((bytes + [0]).withUnsafeBytes { ContentHasher.hash($0) } != whole)
}

@Test("the id table finds every id again, short or long, across rehashes and lengths past 65,535 bytes")
func byteInternerFindsEveryIDAgain() {
    let interner = ByteInterner(expectedIDs: 16)
    // Short ids (matched from the slot's inline prefix) through several table doublings, ids that
    // share their first 8 bytes, and long ids whose lengths the slot cannot hold exactly.
    var ids: [[UInt8]] = (0..<5_000).map { Array("c\($0)".utf8) }
    ids += (0..<50).map { Array("same-prefix-\($0)".utf8) }
    let long = [UInt8](repeating: 65, count: 65_535)
    ids += [long, long + [66], long + [66, 67], [UInt8](repeating: 65, count: 70_000)]
    let indices = ids.map { id in id.withUnsafeBytes { interner.intern($0.baseAddress!, $0.count) } }
    #expect(indices == (0..<Int32(ids.count)).map { $0 }, "every distinct id gets the next index")
    let again = ids.map { id in id.withUnsafeBytes { interner.intern($0.baseAddress!, $0.count) } }
    #expect(again == indices, "interning an id again finds it")
    #expect(interner.count == ids.count)
    #expect(Array(interner.bytes(Int(indices[5_051]))) == long + [66])
}
