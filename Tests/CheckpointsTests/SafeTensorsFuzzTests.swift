import Foundation
import Testing
@testable import Checkpoints
import TestSupport


/// Random valid files and mutations of them, checked against the reader's contract.
@Suite struct SafeTensorsFuzzTests {
    static let dtypes = SafeTensorsDType.allCases

    /// A small valid file with a few random tensors and, sometimes, metadata.
    static func validFile(_ random: inout SplitMix64) throws -> [UInt8] {
        var metadata: [String: String] = [:]
        for index in 0..<random.below(3) { metadata["k\(index)"] = String(random.next(), radix: 36) }
        var writer = SafeTensorsWriter(metadata: metadata)
        for index in 0..<random.below(5) {
            let dtype = dtypes[random.below(dtypes.count)]
            let shape = (0..<random.below(4)).map { _ in random.below(4) }
            let count = shape.reduce(1, *)
            try writer.add("t\(index).\(random.below(100))", dtype: dtype, shape: shape, bytes: random.bytes(count * dtype.byteSize))
        }
        return try writer.serialized()
    }

    /// Number literals worth splicing into a header: boundaries, negatives, non-integers.
    static let interestingNumbers = [
        "0", "1", "-1", "7", "8", "9", "64", "2.0", "1e2", "-0", "255", "4294967296",
        "9223372036854775807", "9223372036854775808", "18446744073709551615", "99999999999999999999999",
    ]
    static let jsonAlphabet = Array("{}[]\":,0123456789-.eE \\utnfl_".utf8)

    static func mutate(_ original: [UInt8], _ random: inout SplitMix64) -> [UInt8] {
        var bytes = original
        let headerEnd = min(bytes.count, 8 + (bytes.count >= 8 ? Int(bytes[0]) | Int(bytes[1]) << 8 : 0))
        switch random.below(8) {
        case 0: // bit flips anywhere
            for _ in 0...random.below(4) where !bytes.isEmpty {
                bytes[random.below(bytes.count)] ^= 1 << UInt8(random.below(8))
            }
        case 1: // truncation
            bytes.removeLast(random.below(bytes.count + 1))
        case 2: // trailing garbage
            bytes += random.bytes(1 + random.below(16))
        case 3: // length prefix edits: small deltas and wild values
            var length = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            switch random.below(3) {
            case 0: length = length &+ UInt64(bitPattern: Int64(random.below(17) - 8))
            case 1: length = random.next()
            default: length = UInt64(random.below(bytes.count + 8))
            }
            withUnsafeBytes(of: length.littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
        case 4: // header character edits: replace, insert or delete, keeping the prefix honest
            guard headerEnd > 8 else { break }
            let position = 8 + random.below(headerEnd - 8)
            let replacement = jsonAlphabet[random.below(jsonAlphabet.count)]
            switch random.below(3) {
            case 0: bytes[position] = replacement
            case 1: bytes.insert(replacement, at: position); setHeaderLength(&bytes, headerEnd - 8 + 1)
            default: bytes.remove(at: position); setHeaderLength(&bytes, headerEnd - 8 - 1)
            }
        case 5: // replace one number in the header
            guard headerEnd > 8 else { break }
            let digits = (8..<headerEnd).filter { bytes[$0] >= 0x30 && bytes[$0] <= 0x39 }
            guard let start = digits.isEmpty ? nil : digits[random.below(digits.count)] else { break }
            var end = start
            while end < headerEnd && bytes[end] >= 0x30 && bytes[end] <= 0x39 { end += 1 }
            let literal = Array(interestingNumbers[random.below(interestingNumbers.count)].utf8)
            bytes.replaceSubrange(start..<end, with: literal)
            setHeaderLength(&bytes, headerEnd - 8 + literal.count - (end - start))
        case 6: // swap a dtype name
            guard let header = String(validating: bytes[8..<max(8, headerEnd)], as: UTF8.self) else { break }
            let names = dtypes.map(\.rawValue) + ["F8", "I128", "f32", ""]
            let edited = header.replacingOccurrences(of: names[random.below(dtypes.count)], with: names[random.below(names.count)])
            let editedBytes = Array(edited.utf8)
            bytes.replaceSubrange(8..<headerEnd, with: editedBytes)
            setHeaderLength(&bytes, editedBytes.count)
        default: // pure noise, sometimes with a plausible prefix
            bytes = random.bytes(random.below(48))
            if bytes.count >= 8 && random.below(2) == 0 {
                setHeaderLength(&bytes, random.below(bytes.count - 7))
            }
        }
        return bytes
    }

    static func setHeaderLength(_ bytes: inout [UInt8], _ length: Int) {
        guard bytes.count >= 8, length >= 0 else { return }
        withUnsafeBytes(of: UInt64(length).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
    }

    /// What any accepted file must satisfy, whatever bytes it came from.
    static func checkAccepted(_ file: SafeTensorsFile, bytes: [UInt8]) throws {
        var end = 0
        for info in file.tensors {
            #expect(info.dataOffsets.lowerBound == end, "tensors must tile the buffer")
            end = info.dataOffsets.upperBound
            let raw = try file.rawBytes(info.name)
            #expect(raw.count == info.elementCount * info.dtype.byteSize)
            switch info.dtype {
            case .f32: #expect(try file.floats(info.name).count == info.elementCount)
            case .f64: #expect(try file.doubles(info.name).count == info.elementCount)
            case .i32: #expect(try file.int32s(info.name).count == info.elementCount)
            case .i64: #expect(try file.int64s(info.name).count == info.elementCount)
            case .u8: #expect(try file.uint8s(info.name) == raw)
            default: break
            }
        }
        let headerLength = bytes.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        #expect(8 + headerLength + end == bytes.count, "the buffer must end where the last tensor does")
    }

    @Test func unmutatedRandomFilesRoundTrip() throws {
        var random = SplitMix64(seed: 0xC0FFEE)
        for _ in 0..<500 {
            let bytes = try Self.validFile(&random)
            let file = try SafeTensorsFile(bytes: bytes)
            try Self.checkAccepted(file, bytes: bytes)
            // Re-encoding what was read reproduces the file byte for byte.
            var writer = SafeTensorsWriter(metadata: file.metadata)
            for info in file.tensors {
                try writer.add(info.name, dtype: info.dtype, shape: info.shape, bytes: file.rawBytes(info.name))
            }
            #expect(try writer.serialized() == bytes)
        }
    }

    @Test(arguments: [1 as UInt64, 2, 3, 4])
    func mutatedFilesAreAcceptedOrRejectedCleanly(seed: UInt64) throws {
        var random = SplitMix64(seed: seed &* 0x5851_F42D_4C95_7F2D)
        let deadline = ContinuousClock.now + .seconds(20)
        var accepted = 0
        var rejected = 0
        var rejectionKinds = Set<String>()
        for _ in 0..<2_500 where ContinuousClock.now < deadline {
            let input = Self.mutate(try Self.validFile(&random), &random)
            do {
                let file = try SafeTensorsFile(bytes: input)
                accepted += 1
                try Self.checkAccepted(file, bytes: input)
            } catch let error as SafeTensorsError {
                rejected += 1
                #expect(!error.description.isEmpty)
                rejectionKinds.insert(Mirror(reflecting: error).children.first?.label ?? "\(error)")
            }
        }
        // Both outcomes and many distinct rejections show the mutations reach past the prefix.
        #expect(accepted + rejected >= 1_000, "the time limit cut the run short: \(accepted + rejected) inputs")
        #expect(accepted > 0)
        #expect(rejected > accepted / 4)
        #expect(rejectionKinds.count >= 8, "only \(rejectionKinds.sorted()) were hit")
    }
}
