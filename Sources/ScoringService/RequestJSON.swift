import Checkpoints
import Foundation
import StrictJSON

/// Request bodies go through the project's one strict JSON parser (`StrictJSONParser`, which
/// also reads safetensors headers); this turns its tree into `JSONValue` and its errors into
/// 400s that say what is wrong and at which byte.
enum RequestJSON {
    /// Requests are a few levels deep; deeper is hostile.
    static let maximumDepth = 32

    static func parse(_ data: Data) throws(ClientError) -> JSONValue {
        let bytes = [UInt8](data)
        if let offset = firstInvalidUTF8Offset(bytes, range: 0..<bytes.count) {
            throw ClientError(400, "malformed JSON at byte \(offset): not valid UTF-8")
        }
        let tree: StrictJSON
        do {
            tree = try StrictJSONParser.parse(bytes, range: 0..<bytes.count, maximumDepth: maximumDepth)
        } catch {
            throw ClientError(400, "malformed JSON at byte \(error.offset): \(error.reason)")
        }
        return try value(tree)
    }

    private static func value(_ tree: StrictJSON) throws(ClientError) -> JSONValue {
        switch tree {
        case .null: return .null
        case let .bool(flag): return .bool(flag)
        case let .string(text): return .string(text)
        case let .number(literal):
            // The grammar was checked; what is left is a literal beyond Double's range.
            guard let number = Double(literal), number.isFinite else {
                throw ClientError(400, "malformed JSON: number \(literal) is too large")
            }
            return .number(number)
        case let .array(items):
            var values: [JSONValue] = []
            values.reserveCapacity(items.count)
            for item in items { values.append(try value(item)) }
            return .array(values)
        case let .object(members):
            // Keys are unique: the parser refuses a duplicate, naming it.
            var fields: [String: JSONValue] = [:]
            for member in members { fields[member.key] = try value(member.value) }
            return .object(fields)
        }
    }
}
