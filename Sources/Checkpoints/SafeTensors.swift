import Foundation
import StrictJSON

/// Element type of a safetensors tensor, spelled as in the header.
public enum SafeTensorsDType: String, CaseIterable, Sendable, CustomStringConvertible {
    case bool = "BOOL"
    case u8 = "U8"
    case i8 = "I8"
    case u16 = "U16"
    case i16 = "I16"
    case f16 = "F16"
    case bf16 = "BF16"
    case u32 = "U32"
    case i32 = "I32"
    case f32 = "F32"
    case u64 = "U64"
    case i64 = "I64"
    case f64 = "F64"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .bool, .u8, .i8: 1
        case .u16, .i16, .f16, .bf16: 2
        case .u32, .i32, .f32: 4
        case .u64, .i64, .f64: 8
        }
    }

    public var description: String { rawValue }
}

/// Name, element type, shape and location of one tensor in a safetensors file.
public struct SafeTensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data buffer (the `data_offsets` of the header).
    public let dataOffsets: Range<Int>

    /// Number of elements (1 for a scalar, whose shape is `[]`).
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A scalar type that typed accessors and the writer convert to and from little-endian bytes.
protocol SafeTensorsElement {
    static var dtype: SafeTensorsDType { get }
    static func load(from raw: UnsafeRawBufferPointer, at offset: Int) -> Self
    func appendLittleEndian(to bytes: inout [UInt8])
}

extension Float: SafeTensorsElement {
    static var dtype: SafeTensorsDType { .f32 }
    static func load(from raw: UnsafeRawBufferPointer, at offset: Int) -> Float {
        Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
    }
    func appendLittleEndian(to bytes: inout [UInt8]) {
        withUnsafeBytes(of: bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

extension Double: SafeTensorsElement {
    static var dtype: SafeTensorsDType { .f64 }
    static func load(from raw: UnsafeRawBufferPointer, at offset: Int) -> Double {
        Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
    }
    func appendLittleEndian(to bytes: inout [UInt8]) {
        withUnsafeBytes(of: bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

extension Int32: SafeTensorsElement {
    static var dtype: SafeTensorsDType { .i32 }
    static func load(from raw: UnsafeRawBufferPointer, at offset: Int) -> Int32 {
        Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int32.self))
    }
    func appendLittleEndian(to bytes: inout [UInt8]) {
        withUnsafeBytes(of: littleEndian) { bytes.append(contentsOf: $0) }
    }
}

extension Int64: SafeTensorsElement {
    static var dtype: SafeTensorsDType { .i64 }
    static func load(from raw: UnsafeRawBufferPointer, at offset: Int) -> Int64 {
        Int64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int64.self))
    }
    func appendLittleEndian(to bytes: inout [UInt8]) {
        withUnsafeBytes(of: littleEndian) { bytes.append(contentsOf: $0) }
    }
}

extension UInt8: SafeTensorsElement {
    static var dtype: SafeTensorsDType { .u8 }
    static func load(from raw: UnsafeRawBufferPointer, at offset: Int) -> UInt8 { raw[offset] }
    func appendLittleEndian(to bytes: inout [UInt8]) { bytes.append(self) }
}

/// A validated safetensors file held in memory.
///
/// Construction checks everything a consumer relies on — header syntax, dtypes, shapes, that
/// every tensor's bytes lie inside the buffer with the right length, and that tensors tile the
/// buffer exactly — so accessors never need to re-check and never read out of bounds.
public struct SafeTensorsFile: Sendable {
    /// Largest header accepted, so a corrupt length prefix cannot make the reader allocate or
    /// parse gigabytes (the reference implementation uses the same limit).
    public static let maximumHeaderLength = 100 * 1024 * 1024

    /// The `__metadata__` map (empty when the header has none).
    public let metadata: [String: String]
    /// Every tensor, in data-buffer order.
    public let tensors: [SafeTensorInfo]

    private let storage: [UInt8]
    private let bufferStart: Int
    private let indexByName: [String: Int]

    /// Tensor names in data-buffer order.
    public var names: [String] { tensors.map(\.name) }

    /// Reads and validates the file at `url`.
    public init(contentsOf url: URL) throws {
        try self.init(bytes: DurableIO.readFile(url))
    }

    /// Validates `data` as a safetensors file.
    public init(data: Data) throws(SafeTensorsError) {
        try self.init(bytes: [UInt8](data))
    }

    /// Validates `bytes` as a safetensors file.
    public init(bytes: [UInt8]) throws(SafeTensorsError) {
        guard bytes.count >= 8 else { throw .fileTooShort(byteCount: bytes.count) }
        let declared = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard declared <= UInt64(Self.maximumHeaderLength) else {
            throw .headerTooLarge(declared: declared, limit: Self.maximumHeaderLength)
        }
        let headerLength = Int(declared)
        guard headerLength <= bytes.count - 8 else {
            throw .headerExceedsFile(declared: declared, available: bytes.count - 8)
        }
        let headerRange = 8..<(8 + headerLength)
        if let bad = firstInvalidUTF8Offset(bytes, range: headerRange) {
            throw .headerNotUTF8(headerOffset: bad - 8)
        }
        let header: StrictJSON
        do {
            header = try StrictJSONParser.parse(bytes, range: headerRange)
        } catch {
            throw .invalidJSON(headerOffset: error.offset, reason: error.reason)
        }
        guard case .object(let members) = header else { throw .headerNotObject(found: header.kindName) }

        let bufferLength = bytes.count - headerRange.upperBound
        var metadata: [String: String] = [:]
        var infos: [SafeTensorInfo] = []
        for (key, value) in members {
            if key == "__metadata__" {
                metadata = try Self.parseMetadata(value)
            } else {
                let info = try Self.parseTensor(name: key, value)
                guard info.dataOffsets.upperBound <= bufferLength else {
                    throw .tensorOutOfBounds(tensor: key, end: info.dataOffsets.upperBound, bufferLength: bufferLength)
                }
                infos.append(info)
            }
        }
        infos.sort {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        try Self.checkCoverage(infos, bufferLength: bufferLength)

        self.metadata = metadata
        self.tensors = infos
        self.storage = bytes
        self.bufferStart = headerRange.upperBound
        self.indexByName = Dictionary(uniqueKeysWithValues: infos.enumerated().map { ($1.name, $0) })
    }

    private static func parseMetadata(_ value: StrictJSON) throws(SafeTensorsError) -> [String: String] {
        guard case .object(let entries) = value else {
            throw .invalidMetadata(reason: "must be an object of strings, found \(value.kindName)")
        }
        var result: [String: String] = [:]
        for (key, entry) in entries {
            guard case .string(let text) = entry else {
                throw .invalidMetadata(reason: "value for \"\(key)\" must be a string, found \(entry.kindName)")
            }
            result[key] = text
        }
        return result
    }

    private static func parseTensor(name: String, _ value: StrictJSON) throws(SafeTensorsError) -> SafeTensorInfo {
        guard case .object(let fields) = value else {
            throw .invalidTensorEntry(tensor: name, reason: "entry must be an object, found \(value.kindName)")
        }
        var dtypeValue: StrictJSON?
        var shapeValue: StrictJSON?
        var offsetsValue: StrictJSON?
        for (key, field) in fields {
            switch key {
            case "dtype": dtypeValue = field
            case "shape": shapeValue = field
            case "data_offsets": offsetsValue = field
            default: throw .invalidTensorEntry(tensor: name, reason: "unexpected key \"\(key)\"")
            }
        }
        guard let dtypeValue else { throw .invalidTensorEntry(tensor: name, reason: "missing \"dtype\"") }
        guard let shapeValue else { throw .invalidTensorEntry(tensor: name, reason: "missing \"shape\"") }
        guard let offsetsValue else { throw .invalidTensorEntry(tensor: name, reason: "missing \"data_offsets\"") }

        guard case .string(let dtypeName) = dtypeValue else {
            throw .unknownDType(tensor: name, dtype: "<\(dtypeValue.kindName)>")
        }
        guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
            throw .unknownDType(tensor: name, dtype: dtypeName)
        }

        guard case .array(let dimensions) = shapeValue else {
            throw .invalidShape(tensor: name, reason: "must be an array, found \(shapeValue.kindName)")
        }
        var shape: [Int] = []
        var elements = 1
        var elementsOverflowed = false
        for (axis, dimension) in dimensions.enumerated() {
            guard case .number(let literal) = dimension else {
                throw .invalidShape(tensor: name, reason: "entry \(axis) is \(dimension.kindName), not an integer")
            }
            switch IntegerLiteral(literal: literal) {
            case .value(let size):
                shape.append(size)
                let (product, overflow) = elements.multipliedReportingOverflow(by: size)
                elementsOverflowed = elementsOverflowed || overflow
                elements = product
            case .negative:
                throw .invalidShape(tensor: name, reason: "entry \(axis) is negative (\(literal))")
            case .notInteger:
                throw .invalidShape(tensor: name, reason: "entry \(axis) is not an integer (\(literal))")
            case .tooLarge:
                throw .invalidShape(tensor: name, reason: "entry \(axis) is too large (\(literal))")
            }
        }
        // A zero anywhere makes the product 0 even after an intermediate overflow, which is a
        // valid empty tensor; only a nonzero product that overflowed is unrepresentable.
        let hasZero = shape.contains(0)
        let (byteCount, byteOverflow) = elements.multipliedReportingOverflow(by: dtype.byteSize)
        if !hasZero && (elementsOverflowed || byteOverflow) {
            throw .invalidShape(tensor: name, reason: "\(shape) has more bytes than can be addressed")
        }
        let expectedBytes = hasZero ? 0 : byteCount

        guard case .array(let offsets) = offsetsValue, offsets.count == 2 else {
            throw .invalidDataOffsets(tensor: name, reason: "must be an array of two integers [begin, end]")
        }
        var bounds: [Int] = []
        for (position, offset) in offsets.enumerated() {
            let label = position == 0 ? "begin" : "end"
            guard case .number(let literal) = offset else {
                throw .invalidDataOffsets(tensor: name, reason: "\(label) is \(offset.kindName), not an integer")
            }
            switch IntegerLiteral(literal: literal) {
            case .value(let value): bounds.append(value)
            case .negative: throw .invalidDataOffsets(tensor: name, reason: "\(label) is negative (\(literal))")
            case .notInteger: throw .invalidDataOffsets(tensor: name, reason: "\(label) is not an integer (\(literal))")
            case .tooLarge: throw .invalidDataOffsets(tensor: name, reason: "\(label) is too large (\(literal))")
            }
        }
        guard bounds[0] <= bounds[1] else {
            throw .invalidDataOffsets(tensor: name, reason: "begin \(bounds[0]) is after end \(bounds[1])")
        }
        let actualBytes = bounds[1] - bounds[0]
        guard actualBytes == expectedBytes else {
            throw .byteLengthMismatch(tensor: name, expected: expectedBytes, actual: actualBytes)
        }
        return SafeTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: bounds[0]..<bounds[1])
    }

    /// Checks that `sorted` tensors tile `0..<bufferLength` with no gap, overlap or leftover.
    private static func checkCoverage(_ sorted: [SafeTensorInfo], bufferLength: Int) throws(SafeTensorsError) {
        var covered = 0
        var previous: String?
        for info in sorted {
            let range = info.dataOffsets
            if range.lowerBound < covered, let previous {
                throw .overlappingTensors(first: previous, second: info.name)
            }
            if range.lowerBound > covered {
                throw .uncoveredBytes(start: covered, end: range.lowerBound)
            }
            covered = range.upperBound
            previous = info.name
        }
        if covered < bufferLength {
            throw .trailingBytes(start: covered, count: bufferLength - covered)
        }
    }

    /// Description of the tensor called `name`.
    public func info(_ name: String) throws(SafeTensorsError) -> SafeTensorInfo {
        guard let index = indexByName[name] else { throw .tensorNotFound(name) }
        return tensors[index]
    }

    public func dtype(_ name: String) throws(SafeTensorsError) -> SafeTensorsDType { try info(name).dtype }

    public func shape(_ name: String) throws(SafeTensorsError) -> [Int] { try info(name).shape }

    /// The tensor's bytes exactly as stored (little-endian elements).
    public func rawBytes(_ name: String) throws(SafeTensorsError) -> [UInt8] {
        let range = try info(name).dataOffsets
        return Array(storage[(bufferStart + range.lowerBound)..<(bufferStart + range.upperBound)])
    }

    /// Elements of an `F32` tensor in row-major order.
    public func floats(_ name: String) throws(SafeTensorsError) -> [Float] { try elements(name) }

    /// Elements of an `F64` tensor in row-major order.
    public func doubles(_ name: String) throws(SafeTensorsError) -> [Double] { try elements(name) }

    /// Elements of an `I32` tensor in row-major order.
    public func int32s(_ name: String) throws(SafeTensorsError) -> [Int32] { try elements(name) }

    /// Elements of an `I64` tensor in row-major order.
    public func int64s(_ name: String) throws(SafeTensorsError) -> [Int64] { try elements(name) }

    /// Elements of a `U8` tensor in row-major order.
    public func uint8s(_ name: String) throws(SafeTensorsError) -> [UInt8] { try elements(name) }

    private func elements<T: SafeTensorsElement>(_ name: String) throws(SafeTensorsError) -> [T] {
        let info = try info(name)
        guard info.dtype == T.dtype else {
            throw .dtypeMismatch(tensor: name, requested: T.dtype, actual: info.dtype)
        }
        let start = bufferStart + info.dataOffsets.lowerBound
        let size = T.dtype.byteSize
        return storage.withUnsafeBytes { raw in
            (0..<(info.dataOffsets.count / size)).map { T.load(from: raw, at: start + $0 * size) }
        }
    }
}

/// Builds a safetensors file: tensors are laid out in the order they are added.
///
/// The header lists tensors with sorted keys (after `__metadata__`), so the same tensors give the
/// same bytes, which keeps checkpoint digests reproducible.
public struct SafeTensorsWriter: Sendable {
    /// The `__metadata__` map; omitted from the header when empty.
    public var metadata: [String: String]

    private var infos: [SafeTensorInfo] = []
    private var buffer: [UInt8] = []
    private var names = Set<String>()

    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Appends a tensor given as raw little-endian bytes.
    public mutating func add(_ name: String, dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) throws(SafeTensorsError) {
        try checkNew(name: name, dtype: dtype, shape: shape, byteCount: bytes.count)
        infos.append(SafeTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: buffer.count..<(buffer.count + bytes.count)))
        buffer.append(contentsOf: bytes)
        names.insert(name)
    }

    /// Appends an `F32` tensor.
    public mutating func add(_ name: String, shape: [Int], floats: [Float]) throws(SafeTensorsError) {
        try add(name, shape: shape, elements: floats)
    }

    /// Appends an `F64` tensor.
    public mutating func add(_ name: String, shape: [Int], doubles: [Double]) throws(SafeTensorsError) {
        try add(name, shape: shape, elements: doubles)
    }

    /// Appends an `I32` tensor.
    public mutating func add(_ name: String, shape: [Int], int32s: [Int32]) throws(SafeTensorsError) {
        try add(name, shape: shape, elements: int32s)
    }

    /// Appends an `I64` tensor.
    public mutating func add(_ name: String, shape: [Int], int64s: [Int64]) throws(SafeTensorsError) {
        try add(name, shape: shape, elements: int64s)
    }

    /// Appends a `U8` tensor.
    public mutating func add(_ name: String, shape: [Int], uint8s: [UInt8]) throws(SafeTensorsError) {
        try add(name, shape: shape, elements: uint8s)
    }

    private mutating func add<T: SafeTensorsElement>(_ name: String, shape: [Int], elements: [T]) throws(SafeTensorsError) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(elements.count * T.dtype.byteSize)
        for element in elements { element.appendLittleEndian(to: &bytes) }
        try add(name, dtype: T.dtype, shape: shape, bytes: bytes)
    }

    private func checkNew(name: String, dtype: SafeTensorsDType, shape: [Int], byteCount: Int) throws(SafeTensorsError) {
        if name.isEmpty { throw .invalidTensorName(name: name, reason: "is empty") }
        if name == "__metadata__" { throw .invalidTensorName(name: name, reason: "is reserved for the metadata map") }
        if names.contains(name) { throw .duplicateTensorName(name) }
        if let axis = shape.firstIndex(where: { $0 < 0 }) {
            throw .invalidShape(tensor: name, reason: "entry \(axis) is negative (\(shape[axis]))")
        }
        var expected = dtype.byteSize
        if !shape.contains(0) {
            for size in shape {
                let (product, overflow) = expected.multipliedReportingOverflow(by: size)
                if overflow { throw .invalidShape(tensor: name, reason: "\(shape) has more bytes than can be addressed") }
                expected = product
            }
        } else {
            expected = 0
        }
        guard expected == byteCount else {
            throw .byteLengthMismatch(tensor: name, expected: expected, actual: byteCount)
        }
    }

    /// The complete file: length prefix, space-padded header, data buffer.
    public func serialized() throws(SafeTensorsError) -> [UInt8] {
        var header = "{"
        var parts: [String] = []
        if !metadata.isEmpty {
            let entries = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            parts.append("\"__metadata__\":{\(entries.joined(separator: ","))}")
        }
        for info in infos.sorted(by: { $0.name < $1.name }) {
            let shape = info.shape.map(String.init).joined(separator: ",")
            parts.append("\(jsonString(info.name)):{\"dtype\":\"\(info.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(info.dataOffsets.lowerBound),\(info.dataOffsets.upperBound)]}")
        }
        header += parts.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        // Padding to 8 bytes keeps the buffer aligned for readers that map the file and view
        // tensors in place; the format allows trailing spaces in the header for this.
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        guard headerBytes.count <= SafeTensorsFile.maximumHeaderLength else {
            throw .headerTooLarge(declared: UInt64(headerBytes.count), limit: SafeTensorsFile.maximumHeaderLength)
        }
        var file: [UInt8] = []
        file.reserveCapacity(8 + headerBytes.count + buffer.count)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(contentsOf: headerBytes)
        file.append(contentsOf: buffer)
        return file
    }

    /// Writes the file atomically (temporary name, fsync, rename, fsync of the directory).
    public func write(to url: URL) throws {
        try DurableIO.writeAtomically(serialized(), to: url)
    }
}
