/// A parsed JSON value, as strict readers need it: the safetensors header and the service's
/// request bodies both go through `StrictJSONParser`.
///
/// Numbers keep their literal text so that offsets up to 2^64 are read exactly (a `Double` would
/// round them), and objects keep their key order so errors can name the first bad entry.
public indirect enum StrictJSON: Sendable {
    case object([(key: String, value: StrictJSON)])
    case array([StrictJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    public var kindName: String {
        switch self {
        case .object: "an object"
        case .array: "an array"
        case .string: "a string"
        case .number: "a number"
        case .bool: "a boolean"
        case .null: "null"
        }
    }
}

extension StrictJSON {
    /// Compact JSON text of the value; numbers are written as their literals.
    public var text: String {
        switch self {
        case let .object(members):
            return "{" + members.map { "\(StrictJSON.string($0.key).text):\($0.value.text)" }.joined(separator: ",") + "}"
        case let .array(items):
            return "[" + items.map(\.text).joined(separator: ",") + "]"
        case let .string(value):
            var escaped = "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": escaped += "\\\""
                case "\\": escaped += "\\\\"
                case _ where scalar.value < 0x20: escaped += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                default: escaped.unicodeScalars.append(scalar)
                }
            }
            return escaped + "\""
        case let .number(literal): return literal
        case let .bool(value): return value ? "true" : "false"
        case .null: return "null"
        }
    }
}

/// What a JSON number literal means as an integer.
public enum IntegerLiteral: Equatable, Sendable {
    case value(Int)
    case negative
    case notInteger
    case tooLarge
}

extension IntegerLiteral {
    /// Interprets a number literal already checked against the JSON grammar.
    public init(literal: String) {
        if literal.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) {
            self = .notInteger
            return
        }
        let negative = literal.hasPrefix("-")
        let digits = negative ? literal.dropFirst() : Substring(literal)
        if negative {
            self = digits.allSatisfy({ $0 == "0" }) ? .value(0) : .negative
            return
        }
        if let value = Int(digits) {
            self = .value(value)
        } else {
            self = .tooLarge
        }
    }
}

/// Where and why parsing stopped.
public struct StrictJSONError: Error, Sendable {
    /// Byte offset from the start of the parsed range.
    public let offset: Int
    public let reason: String
}

/// A strict JSON parser over UTF-8 bytes (RFC 8259), with a nesting limit and errors that
/// name the byte.
///
/// Foundation's parser accepts duplicate keys (keeping one silently), converts numbers to
/// floating point, and answers any syntax error with "not valid JSON"; in a header that
/// decides which bytes a tensor owns the first two would hide a malformed file, and a client
/// fixing a request needs the position. The bytes must already be valid UTF-8
/// (`firstInvalidUTF8Offset`).
public struct StrictJSONParser {
    private let maximumDepth: Int

    private let bytes: [UInt8]
    private let end: Int
    private let base: Int
    private var position: Int
    private var depth = 0

    /// Parses `bytes[range]` as one JSON value followed only by whitespace. Containers nested
    /// deeper than `maximumDepth` are refused: hostile input must not exhaust the stack.
    public static func parse(_ bytes: [UInt8], range: Range<Int>, maximumDepth: Int = 64) throws(StrictJSONError) -> StrictJSON {
        var parser = StrictJSONParser(bytes: bytes, end: range.upperBound, base: range.lowerBound, position: range.lowerBound,
                                      maximumDepth: maximumDepth)
        parser.skipWhitespace()
        let value = try parser.parseValue()
        parser.skipWhitespace()
        if parser.position < parser.end {
            throw parser.failure("unexpected \(parser.describeCurrent()) after the end of the JSON value")
        }
        return value
    }

    private init(bytes: [UInt8], end: Int, base: Int, position: Int, maximumDepth: Int) {
        self.bytes = bytes
        self.end = end
        self.base = base
        self.position = position
        self.maximumDepth = maximumDepth
    }

    private func failure(_ reason: String, at offset: Int? = nil) -> StrictJSONError {
        StrictJSONError(offset: (offset ?? position) - base, reason: reason)
    }

    private func describeCurrent() -> String {
        guard position < end else { return "the end of the input" }
        let byte = bytes[position]
        if byte >= 0x21 && byte < 0x7F { return "character '\(Character(Unicode.Scalar(byte)))'" }
        return "byte 0x\(String(byte, radix: 16))"
    }

    private mutating func skipWhitespace() {
        while position < end {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws(StrictJSONError) -> StrictJSON {
        guard position < end else { throw failure("expected a value, found the end of the input") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectWord("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectWord("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectWord("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw failure("expected a value, found \(describeCurrent())")
        }
    }

    private mutating func enterContainer() throws(StrictJSONError) {
        depth += 1
        if depth > maximumDepth {
            throw failure("nesting deeper than \(maximumDepth) levels")
        }
    }

    private mutating func parseObject() throws(StrictJSONError) -> StrictJSON {
        try enterContainer()
        position += 1
        var members: [(key: String, value: StrictJSON)] = []
        var seen = Set<String>()
        skipWhitespace()
        if position < end && bytes[position] == UInt8(ascii: "}") {
            position += 1
            depth -= 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard position < end, bytes[position] == UInt8(ascii: "\"") else {
                throw failure("expected a string key, found \(describeCurrent())")
            }
            let keyStart = position
            let key = try parseString()
            if !seen.insert(key).inserted {
                throw failure("duplicate key \"\(key)\"", at: keyStart)
            }
            skipWhitespace()
            guard position < end, bytes[position] == UInt8(ascii: ":") else {
                throw failure("expected ':' after key \"\(key)\", found \(describeCurrent())")
            }
            position += 1
            skipWhitespace()
            members.append((key, try parseValue()))
            skipWhitespace()
            guard position < end else { throw failure("unterminated object") }
            if bytes[position] == UInt8(ascii: ",") {
                position += 1
                continue
            }
            if bytes[position] == UInt8(ascii: "}") {
                position += 1
                depth -= 1
                return .object(members)
            }
            throw failure("expected ',' or '}' in object, found \(describeCurrent())")
        }
    }

    private mutating func parseArray() throws(StrictJSONError) -> StrictJSON {
        try enterContainer()
        position += 1
        var elements: [StrictJSON] = []
        skipWhitespace()
        if position < end && bytes[position] == UInt8(ascii: "]") {
            position += 1
            depth -= 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue())
            skipWhitespace()
            guard position < end else { throw failure("unterminated array") }
            if bytes[position] == UInt8(ascii: ",") {
                position += 1
                continue
            }
            if bytes[position] == UInt8(ascii: "]") {
                position += 1
                depth -= 1
                return .array(elements)
            }
            throw failure("expected ',' or ']' in array, found \(describeCurrent())")
        }
    }

    private mutating func expectWord(_ word: StaticString) throws(StrictJSONError) {
        let count = word.utf8CodeUnitCount
        let matches = position + count <= end && word.withUTF8Buffer { expected in
            expected.indices.allSatisfy { bytes[position + $0] == expected[$0] }
        }
        guard matches else { throw failure("expected '\(word)'") }
        position += count
    }

    private mutating func parseNumber() throws(StrictJSONError) -> String {
        let start = position
        func isDigit(_ index: Int) -> Bool {
            index < end && bytes[index] >= UInt8(ascii: "0") && bytes[index] <= UInt8(ascii: "9")
        }
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        guard isDigit(position) else { throw failure("expected a digit in number") }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
            if isDigit(position) { throw failure("number has a leading zero", at: start) }
        } else {
            while isDigit(position) { position += 1 }
        }
        if position < end && bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard isDigit(position) else { throw failure("expected a digit after the decimal point") }
            while isDigit(position) { position += 1 }
        }
        if position < end && (bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E")) {
            position += 1
            if position < end && (bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-")) {
                position += 1
            }
            guard isDigit(position) else { throw failure("expected a digit in the exponent") }
            while isDigit(position) { position += 1 }
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    /// Parses a string literal; the bytes are already known to be valid UTF-8.
    private mutating func parseString() throws(StrictJSONError) -> String {
        let start = position
        position += 1
        var scalars = String.UnicodeScalarView()
        var runStart = position
        func flushRun(upTo index: Int) {
            scalars.append(contentsOf: String(decoding: bytes[runStart..<index], as: UTF8.self).unicodeScalars)
        }
        while true {
            guard position < end else { throw failure("unterminated string", at: start) }
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                flushRun(upTo: position)
                position += 1
                return String(scalars)
            }
            if byte < 0x20 {
                throw failure("control character 0x\(String(byte, radix: 16)) inside a string")
            }
            if byte != UInt8(ascii: "\\") {
                position += 1
                continue
            }
            flushRun(upTo: position)
            position += 1
            guard position < end else { throw failure("unterminated escape sequence") }
            let escape = bytes[position]
            position += 1
            switch escape {
            case UInt8(ascii: "\""): scalars.append("\"")
            case UInt8(ascii: "\\"): scalars.append("\\")
            case UInt8(ascii: "/"): scalars.append("/")
            case UInt8(ascii: "b"): scalars.append("\u{08}")
            case UInt8(ascii: "f"): scalars.append("\u{0C}")
            case UInt8(ascii: "n"): scalars.append("\n")
            case UInt8(ascii: "r"): scalars.append("\r")
            case UInt8(ascii: "t"): scalars.append("\t")
            case UInt8(ascii: "u"):
                let first = try parseHexQuad()
                var value = UInt32(first)
                if (0xD800..<0xDC00).contains(first) {
                    // A high surrogate is only meaningful followed by an escaped low surrogate.
                    guard position + 1 < end, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") else {
                        throw failure("unpaired surrogate \\u\(String(first, radix: 16))")
                    }
                    position += 2
                    let second = try parseHexQuad()
                    guard (0xDC00..<0xE000).contains(second) else {
                        throw failure("unpaired surrogate \\u\(String(first, radix: 16))")
                    }
                    value = 0x10000 + ((UInt32(first) - 0xD800) << 10) + (UInt32(second) - 0xDC00)
                } else if (0xDC00..<0xE000).contains(first) {
                    throw failure("unpaired surrogate \\u\(String(first, radix: 16))")
                }
                // Surrogates were handled above, so every remaining value is a scalar.
                scalars.append(Unicode.Scalar(value)!)
            default:
                throw failure("invalid escape sequence '\\\(Character(Unicode.Scalar(escape)))'", at: position - 2)
            }
            runStart = position
        }
    }

    private mutating func parseHexQuad() throws(StrictJSONError) -> UInt16 {
        guard position + 4 <= end else { throw failure("truncated \\u escape") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let byte = bytes[position]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw failure("invalid hex digit in \\u escape")
            }
            value = value << 4 | UInt16(digit)
            position += 1
        }
        return value
    }
}

/// The offset of the first byte that is not part of a valid UTF-8 sequence, or nil when all are.
///
/// Rejects overlong forms, encoded surrogates and values above U+10FFFF, as RFC 3629 requires.
public func firstInvalidUTF8Offset(_ bytes: [UInt8], range: Range<Int>) -> Int? {
    var index = range.lowerBound
    let end = range.upperBound
    while index < end {
        let lead = bytes[index]
        if lead < 0x80 {
            index += 1
            continue
        }
        let length: Int
        var lowest: UInt8 = 0x80
        var highest: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; lowest = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; highest = 0x9F
        case 0xF0: length = 4; lowest = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; highest = 0x8F
        default: return index
        }
        guard index + length <= end else { return index }
        // Only the second byte has a narrowed range; later continuation bytes are plain 80...BF.
        guard (lowest...highest).contains(bytes[index + 1]) else { return index }
        for offset in 2..<max(length, 2) where !(0x80...0xBF).contains(bytes[index + offset]) {
            return index
        }
        index += length
    }
    return nil
}
