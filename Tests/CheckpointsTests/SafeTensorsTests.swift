import Foundation
import Testing
@testable import Checkpoints
import TestSupport

/// A file made of a length prefix, `header` verbatim and `buffer`, for hand-built bad inputs.
func rawFile(_ header: String, buffer: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    let headerBytes = Array(header.utf8)
    var file: [UInt8] = []
    withUnsafeBytes(of: (declaredLength ?? UInt64(headerBytes.count)).littleEndian) { file.append(contentsOf: $0) }
    return file + headerBytes + buffer
}

/// The error `body` throws, which must be a `SafeTensorsError`.
func safeTensorsError(
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> SafeTensorsError? {
    #expect(throws: SafeTensorsError.self, sourceLocation: sourceLocation) { try body() }
}

@Suite struct SafeTensorsRoundTripTests {
    @Test func everyTypedDTypeRoundTrips() throws {
        let floats: [Float] = [0, -1.5, .pi, .greatestFiniteMagnitude, -.leastNonzeroMagnitude, .infinity]
        let doubles: [Double] = [1e300, -0.0, 2.5, .pi]
        let int32s: [Int32] = [.min, -1, 0, 1, .max, 42]
        let int64s: [Int64] = [.min, -7, 0, 1 << 40, .max]
        let uint8s: [UInt8] = [0, 1, 127, 128, 255, 9, 8, 7]

        var writer = SafeTensorsWriter(metadata: ["format": "pt", "note": "quote \" and \\ and\nnewline é"])
        try writer.add("f32", shape: [2, 3], floats: floats)
        try writer.add("f64", shape: [4], doubles: doubles)
        try writer.add("i32", shape: [3, 2], int32s: int32s)
        try writer.add("i64", shape: [5, 1], int64s: int64s)
        try writer.add("u8", shape: [2, 2, 2], uint8s: uint8s)
        try writer.add("scalar", shape: [], floats: [7])
        try writer.add("empty", shape: [0, 3], floats: [])
        let bytes = try writer.serialized()

        let file = try SafeTensorsFile(bytes: bytes)
        #expect(file.names == ["f32", "f64", "i32", "i64", "u8", "scalar", "empty"])
        #expect(file.metadata == ["format": "pt", "note": "quote \" and \\ and\nnewline é"])
        #expect(try file.floats("f32") == floats)
        #expect(try file.doubles("f64").map(\.bitPattern) == doubles.map(\.bitPattern))
        #expect(try file.int32s("i32") == int32s)
        #expect(try file.int64s("i64") == int64s)
        #expect(try file.uint8s("u8") == uint8s)
        #expect(try file.floats("scalar") == [7])
        #expect(try file.floats("empty") == [])
        #expect(try file.shape("f32") == [2, 3])
        #expect(try file.shape("scalar") == [])
        #expect(try file.dtype("i64") == .i64)
        #expect(try file.info("u8").dataOffsets == 24 + 32 + 24 + 40 ..< 24 + 32 + 24 + 40 + 8)
    }

    @Test func layoutMatchesTheFormat() throws {
        var writer = SafeTensorsWriter()
        try writer.add("b", shape: [1], floats: [1])
        try writer.add("a", shape: [2], int32s: [2, 3])
        let bytes = try writer.serialized()
        let headerLength = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        #expect(headerLength % 8 == 0)
        let header = String(decoding: bytes[8..<(8 + headerLength)], as: UTF8.self)
        // Keys sorted, buffer in insertion order: "b" first at 0..<4, "a" at 4..<12.
        #expect(header.trimmingCharacters(in: .whitespaces) ==
            #"{"a":{"dtype":"I32","shape":[2],"data_offsets":[4,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#)
        #expect(Array(bytes[(8 + headerLength)...]) == [0, 0, 0x80, 0x3F, 2, 0, 0, 0, 3, 0, 0, 0])
    }

    @Test func writingIsDeterministic() throws {
        func build() throws -> [UInt8] {
            var writer = SafeTensorsWriter(metadata: ["z": "1", "a": "2", "m": "3"])
            try writer.add("x", shape: [2], floats: [1, 2])
            try writer.add("w", shape: [1], int64s: [3])
            return try writer.serialized()
        }
        #expect(try build() == build())
    }

    @Test func rawBytesAndOtherDTypesRoundTrip() throws {
        var writer = SafeTensorsWriter()
        for dtype in SafeTensorsDType.allCases {
            let bytes = (0..<(3 * dtype.byteSize)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ dtype.byteSize) }
            try writer.add("t_\(dtype)", dtype: dtype, shape: [3], bytes: bytes)
        }
        let file = try SafeTensorsFile(bytes: writer.serialized())
        for dtype in SafeTensorsDType.allCases {
            #expect(try file.dtype("t_\(dtype)") == dtype)
            #expect(try file.rawBytes("t_\(dtype)") == (0..<(3 * dtype.byteSize)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ dtype.byteSize) })
        }
    }

    @Test func fileWriteIsAtomicAndReadable() throws {
        let directory = try TemporaryDirectory()
        let url = directory.url.appendingPathComponent("model.safetensors")
        var writer = SafeTensorsWriter()
        try writer.add("w", shape: [2], floats: [1, 2])
        try writer.write(to: url)
        try writer.add("v", shape: [1], floats: [3])
        try writer.write(to: url)
        #expect(try SafeTensorsFile(contentsOf: url).names == ["w", "v"])
        // Only the file itself: the temporary used for the rename is gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.path) == ["model.safetensors"])
    }

    @Test func accessorsRejectWrongNameAndDType() throws {
        var writer = SafeTensorsWriter()
        try writer.add("w", shape: [1], floats: [1])
        let file = try SafeTensorsFile(bytes: writer.serialized())
        #expect(throws: SafeTensorsError.tensorNotFound("nope")) { try file.floats("nope") }
        #expect(throws: SafeTensorsError.dtypeMismatch(tensor: "w", requested: .i64, actual: .f32)) { try file.int64s("w") }
    }

    @Test func writerRejectsBadTensors() throws {
        var writer = SafeTensorsWriter()
        try writer.add("w", shape: [2], floats: [1, 2])
        #expect(throws: SafeTensorsError.duplicateTensorName("w")) { try writer.add("w", shape: [1], floats: [1]) }
        #expect(throws: SafeTensorsError.byteLengthMismatch(tensor: "v", expected: 12, actual: 8)) {
            try writer.add("v", shape: [3], floats: [1, 2])
        }
        #expect(throws: SafeTensorsError.self) { try writer.add("__metadata__", shape: [1], floats: [1]) }
        #expect(throws: SafeTensorsError.self) { try writer.add("", shape: [1], floats: [1]) }
        #expect(throws: SafeTensorsError.self) { try writer.add("n", shape: [-1], floats: []) }
        #expect(try SafeTensorsFile(bytes: writer.serialized()).names == ["w"])
    }
}

@Suite struct SafeTensorsRejectionTests {
    let oneTensor = #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
    let eightBytes: [UInt8] = [0, 0, 128, 63, 0, 0, 0, 64]

    @Test func validHandBuiltFileIsAccepted() throws {
        let file = try SafeTensorsFile(bytes: rawFile(oneTensor, buffer: eightBytes))
        #expect(try file.floats("w") == [1, 2])
    }

    @Test func fileShorterThanPrefix() {
        #expect(throws: SafeTensorsError.fileTooShort(byteCount: 0)) { try SafeTensorsFile(bytes: []) }
        #expect(throws: SafeTensorsError.fileTooShort(byteCount: 7)) { try SafeTensorsFile(bytes: [1, 2, 3, 4, 5, 6, 7]) }
    }

    @Test func headerLengthAboveLimit() {
        let declared = UInt64(SafeTensorsFile.maximumHeaderLength) + 1
        #expect(throws: SafeTensorsError.headerTooLarge(declared: declared, limit: 100 * 1024 * 1024)) {
            try SafeTensorsFile(bytes: rawFile("{}", declaredLength: declared))
        }
        #expect(throws: SafeTensorsError.headerTooLarge(declared: .max, limit: 100 * 1024 * 1024)) {
            try SafeTensorsFile(bytes: rawFile("{}", declaredLength: .max))
        }
    }

    @Test func headerLengthPastEndOfFile() {
        #expect(throws: SafeTensorsError.headerExceedsFile(declared: 3, available: 2)) {
            try SafeTensorsFile(bytes: rawFile("{}", declaredLength: 3))
        }
    }

    @Test func invalidUTF8() {
        var bytes = rawFile(#"{"w":1}"#)
        bytes[10] = 0xFF
        #expect(throws: SafeTensorsError.headerNotUTF8(headerOffset: 2)) { try SafeTensorsFile(bytes: bytes) }
        // An overlong encoding of '/' and an encoded surrogate are invalid too.
        #expect(throws: SafeTensorsError.headerNotUTF8(headerOffset: 1)) { try SafeTensorsFile(bytes: rawFileBytes([0x7B, 0xC0, 0xAF, 0x7D])) }
        #expect(throws: SafeTensorsError.headerNotUTF8(headerOffset: 1)) { try SafeTensorsFile(bytes: rawFileBytes([0x7B, 0xED, 0xA0, 0x80, 0x7D])) }
    }

    @Test func invalidJSON() {
        let cases: [(String, String)] = [
            (#"{"w": }"#, "expected a value"),
            (#"{"w":{"dtype":"F32"}"#, "unterminated object"),
            (#"{"a":1,"a":2}"#, "duplicate key \"a\""),
            (#"{"w":01}"#, "leading zero"),
            (#"{} x"#, "after the end of the JSON value"),
            (#"{"w":"\q"}"#, "invalid escape"),
            (#"{"w":"\ud800"}"#, "unpaired surrogate"),
            ("", "expected a value"),
            (String(repeating: "[", count: 100) + String(repeating: "]", count: 100), "nesting deeper"),
        ]
        for (header, fragment) in cases {
            let error = safeTensorsError { _ = try SafeTensorsFile(bytes: rawFile(header)) }
            guard case .invalidJSON(_, let reason) = error else {
                Issue.record("header \(header): expected invalidJSON, got \(String(describing: error))")
                continue
            }
            #expect(reason.contains(fragment), "header \(header): \(reason)")
        }
        let error = safeTensorsError { _ = try SafeTensorsFile(bytes: rawFile(#"{"w": }"#)) }
        #expect(error == .invalidJSON(headerOffset: 6, reason: "expected a value, found character '}'"))
        #expect(error?.description == "safetensors: header is not valid JSON at header byte 6: expected a value, found character '}'")
    }

    @Test func paddedHeaderIsAccepted() throws {
        let file = try SafeTensorsFile(bytes: rawFile(oneTensor + "      ", buffer: eightBytes))
        #expect(file.names == ["w"])
    }

    @Test func headerNotAnObject() {
        #expect(throws: SafeTensorsError.headerNotObject(found: "an array")) { try SafeTensorsFile(bytes: rawFile("[1,2]")) }
        #expect(throws: SafeTensorsError.headerNotObject(found: "a string")) { try SafeTensorsFile(bytes: rawFile(#""x""#)) }
    }

    @Test func badMetadata() {
        let error = safeTensorsError { _ = try SafeTensorsFile(bytes: rawFile(#"{"__metadata__":{"k":3}}"#)) }
        #expect(error == .invalidMetadata(reason: "value for \"k\" must be a string, found a number"))
        #expect(throws: SafeTensorsError.self) { try SafeTensorsFile(bytes: rawFile(#"{"__metadata__":[]}"#)) }
    }

    @Test func badTensorEntries() {
        #expect(throws: SafeTensorsError.invalidTensorEntry(tensor: "w", reason: "entry must be an object, found a number")) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":3}"#))
        }
        #expect(throws: SafeTensorsError.invalidTensorEntry(tensor: "w", reason: "missing \"shape\"")) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F32","data_offsets":[0,0]}}"#))
        }
        #expect(throws: SafeTensorsError.invalidTensorEntry(tensor: "w", reason: "unexpected key \"extra\"")) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"extra":1}}"#))
        }
    }

    @Test func unknownDType() {
        let error = safeTensorsError {
            _ = try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#, buffer: eightBytes))
        }
        #expect(error == .unknownDType(tensor: "w", dtype: "F33"))
        #expect(error?.description.contains("unknown dtype \"F33\" (known: BOOL, U8") == true)
        #expect(throws: SafeTensorsError.unknownDType(tensor: "w", dtype: "<a number>")) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}"#, buffer: eightBytes))
        }
    }

    @Test func badShapes() {
        func shapeError(_ shape: String) -> SafeTensorsError? {
            safeTensorsError {
                _ = try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F32","shape":"# + shape + #","data_offsets":[0,8]}}"#, buffer: eightBytes))
            }
        }
        #expect(shapeError("[-2]") == .invalidShape(tensor: "w", reason: "entry 0 is negative (-2)"))
        #expect(shapeError("[1, 2.5]") == .invalidShape(tensor: "w", reason: "entry 1 is not an integer (2.5)"))
        #expect(shapeError("[2e0]") == .invalidShape(tensor: "w", reason: "entry 0 is not an integer (2e0)"))
        #expect(shapeError("[\"2\"]") == .invalidShape(tensor: "w", reason: "entry 0 is a string, not an integer"))
        #expect(shapeError("2") == .invalidShape(tensor: "w", reason: "must be an array, found a number"))
        #expect(shapeError("[99999999999999999999]") == .invalidShape(tensor: "w", reason: "entry 0 is too large (99999999999999999999)"))
        // Each entry fits in Int, their product does not.
        #expect(shapeError("[4294967296, 4294967296]") == .invalidShape(tensor: "w", reason: "[4294967296, 4294967296] has more bytes than can be addressed"))
        // Product fits, times the 4-byte dtype size does not.
        #expect(shapeError("[4611686018427387904]") == .invalidShape(tensor: "w", reason: "[4611686018427387904] has more bytes than can be addressed"))
    }

    @Test func badDataOffsets() {
        func offsetsError(_ offsets: String) -> SafeTensorsError? {
            safeTensorsError {
                _ = try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F32","shape":[2],"data_offsets":"# + offsets + "}}", buffer: eightBytes))
            }
        }
        let shapeReason = "must be an array of two integers [begin, end]"
        #expect(offsetsError("[0]") == .invalidDataOffsets(tensor: "w", reason: shapeReason))
        #expect(offsetsError("[0,4,8]") == .invalidDataOffsets(tensor: "w", reason: shapeReason))
        #expect(offsetsError("8") == .invalidDataOffsets(tensor: "w", reason: shapeReason))
        #expect(offsetsError("[8,0]") == .invalidDataOffsets(tensor: "w", reason: "begin 8 is after end 0"))
        #expect(offsetsError("[-1,7]") == .invalidDataOffsets(tensor: "w", reason: "begin is negative (-1)"))
        #expect(offsetsError("[0,8.0]") == .invalidDataOffsets(tensor: "w", reason: "end is not an integer (8.0)"))
        #expect(offsetsError("[0,null]") == .invalidDataOffsets(tensor: "w", reason: "end is null, not an integer"))
        #expect(offsetsError("[0,18446744073709551616]") == .invalidDataOffsets(tensor: "w", reason: "end is too large (18446744073709551616)"))
    }

    @Test func tensorEndsPastBuffer() {
        #expect(throws: SafeTensorsError.tensorOutOfBounds(tensor: "w", end: 8, bufferLength: 7)) {
            try SafeTensorsFile(bytes: rawFile(oneTensor, buffer: Array(eightBytes.prefix(7))))
        }
        #expect(throws: SafeTensorsError.tensorOutOfBounds(tensor: "w", end: 9_223_372_036_854_775_807, bufferLength: 8)) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"U8","shape":[9223372036854775807],"data_offsets":[0,9223372036854775807]}}"#, buffer: eightBytes))
        }
    }

    @Test func byteLengthDisagreesWithShape() {
        #expect(throws: SafeTensorsError.byteLengthMismatch(tensor: "w", expected: 12, actual: 8)) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, buffer: eightBytes))
        }
        #expect(throws: SafeTensorsError.byteLengthMismatch(tensor: "w", expected: 16, actual: 8)) {
            try SafeTensorsFile(bytes: rawFile(#"{"w":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}"#, buffer: eightBytes))
        }
    }

    @Test func overlappingTensors() {
        let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        #expect(throws: SafeTensorsError.overlappingTensors(first: "a", second: "b")) {
            try SafeTensorsFile(bytes: rawFile(header, buffer: eightBytes))
        }
        let identical = #"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#
        #expect(throws: SafeTensorsError.overlappingTensors(first: "a", second: "b")) {
            try SafeTensorsFile(bytes: rawFile(identical, buffer: eightBytes))
        }
    }

    @Test func holesBetweenOrBeforeTensors() {
        let gap = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}"#
        #expect(throws: SafeTensorsError.uncoveredBytes(start: 2, end: 6)) { try SafeTensorsFile(bytes: rawFile(gap, buffer: eightBytes)) }
        let leading = #"{"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#
        #expect(throws: SafeTensorsError.uncoveredBytes(start: 0, end: 4)) { try SafeTensorsFile(bytes: rawFile(leading, buffer: eightBytes)) }
    }

    @Test func trailingGarbage() {
        let error = safeTensorsError { _ = try SafeTensorsFile(bytes: rawFile(oneTensor, buffer: eightBytes + [1, 2, 3])) }
        #expect(error == .trailingBytes(start: 8, count: 3))
        #expect(error?.description == "safetensors: 3 trailing bytes after the last tensor (from data buffer byte 8)")
        #expect(throws: SafeTensorsError.trailingBytes(start: 0, count: 1)) { try SafeTensorsFile(bytes: rawFile("{}", buffer: [0])) }
    }

    @Test func zeroLengthTensorsMayShareAnOffset() throws {
        let header = #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"I64","shape":[0,5],"data_offsets":[8,8]}}"#
        let file = try SafeTensorsFile(bytes: rawFile(header, buffer: eightBytes))
        #expect(file.names == ["w", "a", "z"])
        #expect(try file.int64s("z") == [])
    }

    @Test func missingFileIsAFileSystemError() {
        let error = #expect(throws: FileSystemError.self) {
            try SafeTensorsFile(contentsOf: URL(fileURLWithPath: "/nonexistent/model.safetensors"))
        }
        #expect(error?.operation == "open")
        #expect(error?.description.contains("/nonexistent/model.safetensors") == true)
    }
}

/// A file whose header is `header` given as raw bytes.
func rawFileBytes(_ header: [UInt8], buffer: [UInt8] = []) -> [UInt8] {
    var file: [UInt8] = []
    withUnsafeBytes(of: UInt64(header.count).littleEndian) { file.append(contentsOf: $0) }
    return file + header + buffer
}
