import Foundation

/// A CSV file held as header and rows of fields, each row with its line number, so every
/// complaint about a value can point at it.
public struct CSVTable: Sendable {
    public let source: String
    public let header: [String]
    /// Data rows with their 1-based line numbers in the file (the header is line 1).
    public let rows: [(line: Int, fields: [String])]

    /// Parses RFC 4180 text: quoted fields may hold commas and doubled quotes (customer ids in
    /// a scores file can); blank lines are skipped; every row must be as wide as the header.
    public init(text: String, source: String) throws(RunFileError) {
        self.source = source
        var parsed: [(line: Int, fields: [String])] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if line.hasSuffix("\r") { line = line.dropLast() }
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            parsed.append((index + 1, try Self.fields(of: line, source: source, line: index + 1)))
        }
        guard let first = parsed.first else { throw RunFileError(file: source, "is empty (no header line)") }
        header = first.fields.map { $0.trimmingCharacters(in: .whitespaces) }
        rows = Array(parsed.dropFirst())
        for row in rows where row.fields.count != header.count {
            throw RunFileError(file: source, line: row.line,
                              "\(row.fields.count) fields, but the header on line \(first.line) has \(header.count)")
        }
    }

    public static func read(_ url: URL) throws(RunFileError) -> CSVTable {
        try CSVTable(text: readText(url), source: url.relativePath)
    }

    /// Index of the column named `name`, or an error naming the file, its header line and the columns it has.
    public func column(_ name: String) throws(RunFileError) -> Int {
        guard let index = header.firstIndex(of: name) else {
            throw RunFileError(file: source, line: 1, "no column \"\(name)\" (columns: \(header.joined(separator: ", ")))")
        }
        return index
    }

    /// The field of `row` in `column` as a finite number.
    public func number(_ row: (line: Int, fields: [String]), _ column: Int) throws(RunFileError) -> Double {
        let text = row.fields[column].trimmingCharacters(in: .whitespaces)
        guard let value = Double(text), value.isFinite else {
            throw RunFileError(file: source, line: row.line, "\(header[column]): \"\(text)\" is not a finite number")
        }
        return value
    }

    /// The field of `row` in `column` as an integer (written as `3` or `3.0`).
    public func integer(_ row: (line: Int, fields: [String]), _ column: Int) throws(RunFileError) -> Int {
        let value = try number(row, column)
        guard value == value.rounded(), abs(value) < 1e15 else {
            throw RunFileError(file: source, line: row.line, "\(header[column]): \"\(row.fields[column])\" is not an integer")
        }
        return Int(value)
    }

    private static func fields(of line: Substring, source: String, line number: Int) throws(RunFileError) -> [String] {
        var fields: [String] = []
        var current = ""
        var quoted = false
        var index = line.startIndex
        while index < line.endIndex {
            let character = line[index]
            if quoted {
                if character == "\"" {
                    let next = line.index(after: index)
                    if next < line.endIndex, line[next] == "\"" {
                        current.append("\"")
                        index = next
                    } else {
                        quoted = false
                    }
                } else {
                    current.append(character)
                }
            } else if character == "\"" && current.isEmpty {
                quoted = true
            } else if character == "," {
                fields.append(current)
                current = ""
            } else {
                current.append(character)
            }
            index = line.index(after: index)
        }
        if quoted { throw RunFileError(file: source, line: number, "a quoted field is not closed") }
        fields.append(current)
        return fields
    }
}
