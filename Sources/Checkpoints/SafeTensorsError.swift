/// Why a safetensors file was rejected (reading) or could not be built (writing).
///
/// Byte offsets named `headerOffset` count from the first byte of the JSON header; offsets into
/// the data buffer count from the first byte after the header, as `data_offsets` do.
public enum SafeTensorsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Fewer than the 8 bytes of the length prefix.
    case fileTooShort(byteCount: Int)
    /// The declared header length is above `SafeTensorsFile.maximumHeaderLength`.
    case headerTooLarge(declared: UInt64, limit: Int)
    /// The declared header length runs past the end of the file.
    case headerExceedsFile(declared: UInt64, available: Int)
    case headerNotUTF8(headerOffset: Int)
    case invalidJSON(headerOffset: Int, reason: String)
    /// The header parsed, but its top level is not a JSON object.
    case headerNotObject(found: String)
    /// `__metadata__` is present but not an object of strings.
    case invalidMetadata(reason: String)
    /// A tensor entry is not an object, lacks a key, or has a key the format does not define.
    case invalidTensorEntry(tensor: String, reason: String)
    case invalidTensorName(name: String, reason: String)
    case duplicateTensorName(String)
    case unknownDType(tensor: String, dtype: String)
    case invalidShape(tensor: String, reason: String)
    case invalidDataOffsets(tensor: String, reason: String)
    /// `data_offsets` end past the data buffer.
    case tensorOutOfBounds(tensor: String, end: Int, bufferLength: Int)
    /// The byte range does not match the shape and dtype.
    case byteLengthMismatch(tensor: String, expected: Int, actual: Int)
    case overlappingTensors(first: String, second: String)
    /// Bytes between (or before) tensors that no tensor covers.
    case uncoveredBytes(start: Int, end: Int)
    /// Bytes after the last tensor; the format requires the buffer to end where the data does.
    case trailingBytes(start: Int, count: Int)
    case tensorNotFound(String)
    /// A typed accessor was called on a tensor of another dtype.
    case dtypeMismatch(tensor: String, requested: SafeTensorsDType, actual: SafeTensorsDType)

    public var description: String {
        switch self {
        case .fileTooShort(let count):
            return "safetensors: file is \(count) bytes long, shorter than the 8-byte header length prefix"
        case .headerTooLarge(let declared, let limit):
            return "safetensors: header length \(declared) bytes exceeds the limit of \(limit) bytes"
        case .headerExceedsFile(let declared, let available):
            return "safetensors: header length \(declared) bytes runs past the end of the file (\(available) bytes follow the prefix)"
        case .headerNotUTF8(let offset):
            return "safetensors: header is not valid UTF-8 (invalid sequence at header byte \(offset))"
        case .invalidJSON(let offset, let reason):
            return "safetensors: header is not valid JSON at header byte \(offset): \(reason)"
        case .headerNotObject(let found):
            return "safetensors: header must be a JSON object, found \(found)"
        case .invalidMetadata(let reason):
            return "safetensors: __metadata__ \(reason)"
        case .invalidTensorEntry(let tensor, let reason):
            return "safetensors: tensor \"\(tensor)\": \(reason)"
        case .invalidTensorName(let name, let reason):
            return "safetensors: tensor name \"\(name)\" \(reason)"
        case .duplicateTensorName(let name):
            return "safetensors: tensor \"\(name)\" is given twice"
        case .unknownDType(let tensor, let dtype):
            let known = SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
            return "safetensors: tensor \"\(tensor)\": unknown dtype \"\(dtype)\" (known: \(known))"
        case .invalidShape(let tensor, let reason):
            return "safetensors: tensor \"\(tensor)\": invalid shape: \(reason)"
        case .invalidDataOffsets(let tensor, let reason):
            return "safetensors: tensor \"\(tensor)\": invalid data_offsets: \(reason)"
        case .tensorOutOfBounds(let tensor, let end, let length):
            return "safetensors: tensor \"\(tensor)\": data ends at byte \(end), past the end of the \(length)-byte data buffer"
        case .byteLengthMismatch(let tensor, let expected, let actual):
            return "safetensors: tensor \"\(tensor)\": shape and dtype need \(expected) bytes, but it has \(actual)"
        case .overlappingTensors(let first, let second):
            return "safetensors: tensors \"\(first)\" and \"\(second)\" overlap in the data buffer"
        case .uncoveredBytes(let start, let end):
            return "safetensors: data buffer bytes \(start)..<\(end) belong to no tensor"
        case .trailingBytes(let start, let count):
            return "safetensors: \(count) trailing bytes after the last tensor (from data buffer byte \(start))"
        case .tensorNotFound(let name):
            return "safetensors: no tensor named \"\(name)\""
        case .dtypeMismatch(let tensor, let requested, let actual):
            return "safetensors: tensor \"\(tensor)\" has dtype \(actual), not \(requested)"
        }
    }
}
