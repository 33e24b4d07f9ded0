import Foundation
import StrictJSON

/// Size and SHA-256 of one file in a checkpoint directory.
public struct FileDigest: Codable, Hashable, Sendable {
    /// Lower-case hexadecimal SHA-256 of the file's contents.
    public var sha256: String
    public var bytes: Int

    public init(sha256: String, bytes: Int) {
        self.sha256 = sha256
        self.bytes = bytes
    }
}

/// The model family: what a checkpoint's manifest says it holds, what its architecture
/// (`Models.ModelArchitecture`) describes, and what a training configuration trains.
public enum ModelKind: String, Codable, Sendable, CaseIterable {
    case lstm
    case gnn
}

/// Everything needed to resume training from, or score with, a checkpoint, stored as
/// `manifest.json` next to the tensor files.
///
/// The manifest is written last: a directory with a valid manifest whose digests match is a
/// complete checkpoint.
public struct CheckpointManifest: Equatable, Sendable {
    /// The manifest layout this program writes and the only one it reads.
    public static let currentFormatVersion = 1
    /// Name of the manifest inside a checkpoint directory.
    public static let fileName = "manifest.json"

    public var formatVersion: Int
    public var runName: String
    public var step: Int
    public var epoch: Int
    /// Creation time as ISO-8601 with a UTC offset, e.g. `2025-03-01T12:00:00Z`.
    public var createdAt: String
    public var programVersion: String
    public var worldSize: Int
    public var modelKind: ModelKind
    /// The training configuration, as the training module defines it.
    public var configuration: JSONValue
    /// What scoring needs to rebuild features: names, period, normalisation statistics, stage
    /// thresholds.
    public var featureSpec: JSONValue
    public var datasetFingerprint: String
    /// Generator state to continue the random streams bit for bit; JSON carries it as a decimal
    /// string because JSON numbers lose precision above 2^53.
    public var randomState: UInt64
    public var metrics: [String: Double]
    /// Digest of every file in the checkpoint directory except the manifest; `save` fills it.
    public var files: [String: FileDigest]

    public init(
        runName: String,
        step: Int,
        epoch: Int,
        created: Date = Date(),
        programVersion: String,
        worldSize: Int,
        modelKind: ModelKind,
        configuration: JSONValue = .object([:]),
        featureSpec: JSONValue = .object([:]),
        datasetFingerprint: String,
        randomState: UInt64,
        metrics: [String: Double] = [:],
        files: [String: FileDigest] = [:]
    ) {
        self.formatVersion = Self.currentFormatVersion
        self.runName = runName
        self.step = step
        self.epoch = epoch
        self.createdAt = Self.timestamp(created)
        self.programVersion = programVersion
        self.worldSize = worldSize
        self.modelKind = modelKind
        self.configuration = configuration
        self.featureSpec = featureSpec
        self.datasetFingerprint = datasetFingerprint
        self.randomState = randomState
        self.metrics = metrics
        self.files = files
    }

    /// `date` as an ISO-8601 UTC timestamp with whole seconds.
    public static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    /// `createdAt` as a date, or nil when it is not ISO-8601.
    public var createdDate: Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: createdAt) { return date }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: createdAt)
    }

    /// Pretty-printed JSON with sorted keys, so equal manifests are equal bytes.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // A diverged run has NaN losses; its checkpoint must still be writable to be inspected.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        return try encoder.encode(self)
    }

    /// Decodes and validates a manifest; `source` names it in errors.
    public init(jsonData: Data, source: String = CheckpointManifest.fileName) throws(CheckpointError) {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        do {
            self = try decoder.decode(CheckpointManifest.self, from: jsonData)
        } catch {
            throw .invalidManifest(path: source, reason: describeDecodingFailure(decoding: CheckpointManifest.self, with: decoder, error, json: Data(jsonData)))
        }
        try validate(source: source)
    }

    /// Checks the values JSON's types cannot express.
    public func validate(source: String = CheckpointManifest.fileName) throws(CheckpointError) {
        func fail(_ reason: String) -> CheckpointError { .invalidManifest(path: source, reason: reason) }
        if formatVersion != Self.currentFormatVersion {
            throw fail("format version \(formatVersion) is not supported (this program reads version \(Self.currentFormatVersion))")
        }
        if step < 0 { throw fail("step \(step) is negative") }
        if epoch < 0 { throw fail("epoch \(epoch) is negative") }
        if worldSize < 1 { throw fail("world size \(worldSize) is not positive") }
        if createdDate == nil { throw fail("createdAt \"\(createdAt)\" is not an ISO-8601 timestamp") }
        for (name, digest) in files.sorted(by: { $0.key < $1.key }) {
            do {
                try checkCheckpointFileName(name)
            } catch {
                throw fail("files: \(error.description.replacingOccurrences(of: "checkpoint: ", with: ""))")
            }
            if digest.bytes < 0 { throw fail("files.\(name).bytes is negative (\(digest.bytes))") }
            let isHex = digest.sha256.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
            if digest.sha256.utf8.count != 64 || !isHex {
                throw fail("files.\(name).sha256 \"\(digest.sha256)\" is not 64 lower-case hex digits")
            }
        }
    }
}

extension CheckpointManifest: Codable {
    private enum CodingKeys: String, CodingKey {
        case formatVersion, runName, step, epoch, createdAt, programVersion, worldSize, modelKind
        case configuration, featureSpec, datasetFingerprint, randomState, metrics, files
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        formatVersion = try container.decode(Int.self, forKey: .formatVersion)
        runName = try container.decode(String.self, forKey: .runName)
        step = try container.decode(Int.self, forKey: .step)
        epoch = try container.decode(Int.self, forKey: .epoch)
        createdAt = try container.decode(String.self, forKey: .createdAt)
        programVersion = try container.decode(String.self, forKey: .programVersion)
        worldSize = try container.decode(Int.self, forKey: .worldSize)
        modelKind = try container.decode(ModelKind.self, forKey: .modelKind)
        configuration = try container.decode(JSONValue.self, forKey: .configuration)
        featureSpec = try container.decode(JSONValue.self, forKey: .featureSpec)
        datasetFingerprint = try container.decode(String.self, forKey: .datasetFingerprint)
        let state = try container.decode(String.self, forKey: .randomState)
        guard let parsed = UInt64(state) else {
            throw DecodingError.dataCorruptedError(
                forKey: .randomState, in: container,
                debugDescription: "\"\(state)\" is not an unsigned 64-bit decimal integer")
        }
        randomState = parsed
        metrics = try container.decode([String: Double].self, forKey: .metrics)
        files = try container.decode([String: FileDigest].self, forKey: .files)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(formatVersion, forKey: .formatVersion)
        try container.encode(runName, forKey: .runName)
        try container.encode(step, forKey: .step)
        try container.encode(epoch, forKey: .epoch)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(programVersion, forKey: .programVersion)
        try container.encode(worldSize, forKey: .worldSize)
        try container.encode(modelKind, forKey: .modelKind)
        try container.encode(configuration, forKey: .configuration)
        try container.encode(featureSpec, forKey: .featureSpec)
        try container.encode(datasetFingerprint, forKey: .datasetFingerprint)
        try container.encode(String(randomState), forKey: .randomState)
        try container.encode(metrics, forKey: .metrics)
        try container.encode(files, forKey: .files)
    }
}

/// Checks that `name` can be a file in a checkpoint directory: one plain path component that
/// cannot be mistaken for the manifest or for a temporary.
func checkCheckpointFileName(_ name: String) throws(CheckpointError) {
    if name.isEmpty { throw .invalidFileName(name, reason: "is empty") }
    if name == CheckpointManifest.fileName { throw .invalidFileName(name, reason: "is reserved for the manifest") }
    if name == CheckpointSigningKey.signatureFileName { throw .invalidFileName(name, reason: "is reserved for the signature") }
    if name.contains("/") || name.contains("\0") { throw .invalidFileName(name, reason: "must be a single path component") }
    // Hidden names are skipped when a directory is listed (NFS keeps .nfs* files there).
    if name.hasPrefix(".") { throw .invalidFileName(name, reason: "must not start with '.'") }
    if name.utf8.count > 255 { throw .invalidFileName(name, reason: "is longer than 255 bytes") }
}

/// Why `json` could not be decoded as a `Value`, in plain words naming the field. As the
/// untyped form, and a fraction where a whole number belongs is named too: Foundation reports it
/// as "not valid JSON" with no path, so it is found by decoding again with the fractions set to
/// 0, all but one at a time (only when decoding failed; manifests are small).
public func describeDecodingFailure<Value: Decodable>(decoding type: Value.Type, with decoder: JSONDecoder = JSONDecoder(),
                                                      _ error: any Error, json: Data) -> String {
    describeDecodingFailure(error, json: json) { candidate in (try? decoder.decode(Value.self, from: candidate)) != nil }
}

/// Why JSON could not be decoded, in plain words naming the field: the byte and reason when it
/// is not valid JSON (from the strict parser, given the bytes), else the field's path and what
/// it should have held. Never the raw `DecodingError` dump, whose "not valid JSON" has no position.
/// `decodes`, when given, tells whether other JSON text decodes as the type that failed.
public func describeDecodingFailure(_ error: any Error, json: Data? = nil, decodes: ((Data) -> Bool)? = nil) -> String {
    var tree: StrictJSON? = nil
    if let json {
        let bytes = [UInt8](json)
        if let offset = firstInvalidUTF8Offset(bytes, range: 0..<bytes.count) { return "not valid UTF-8 at byte \(offset)" }
        do {
            tree = try StrictJSONParser.parse(bytes, range: 0..<bytes.count)
        } catch {
            return "malformed JSON at byte \(error.offset): \(error.reason)"
        }
    }
    guard let error = error as? DecodingError else { return "\(error)" }
    // Foundation calls valid JSON "not valid JSON" when a number is beyond what it reads
    // (`"step": 1e30`): find that number, by its path.
    if case .dataCorrupted(let context) = error, context.codingPath.isEmpty, let tree {
        func unreadable(_ node: StrictJSON, _ path: String) -> (String, String)? {
            switch node {
            case let .number(literal):
                guard let value = Double(literal), value.isFinite, abs(value) < 9.2e18 || literal.contains(where: { $0 == "." }) else {
                    return (path.isEmpty ? "the top level" : path, literal)
                }
                return nil
            case let .array(items):
                for (index, item) in items.enumerated() { if let found = unreadable(item, "\(path)[\(index)]") { return found } }
                return nil
            case let .object(members):
                for member in members {
                    if let found = unreadable(member.value, path.isEmpty ? member.key : "\(path).\(member.key)") { return found }
                }
                return nil
            default:
                return nil
            }
        }
        if let (path, literal) = unreadable(tree, "") {
            return "\(path): the number \(literal) is too large to read (beyond ±9.2e18, a 64-bit integer's range)"
        }
        if let decodes, let (path, literal) = fractionWhereWholeNumberBelongs(tree, decodes: decodes) {
            return "\(path): expected a whole number, found \(literal)"
        }
        return "a number does not fit its field (a fraction, or a number beyond ±9.2e18, where a whole number belongs)"
    }
    func path(_ context: DecodingError.Context) -> String {
        var text = ""
        for key in context.codingPath {
            if let index = key.intValue { text += "[\(index)]" } else { text += (text.isEmpty ? "" : ".") + key.stringValue }
        }
        return text.isEmpty ? "the top level" : text
    }
    func kind(_ type: Any.Type) -> String {
        switch "\(type)" {
        case "Int", "Int32", "Int64", "UInt64", "UInt32", "UInt8": return "a whole number"
        case "Double", "Float": return "a number"
        case "String": return "a string"
        case "Bool": return "true or false"
        case let name where name.hasPrefix("Array") || name.hasPrefix("["): return "an array"
        case let name where name.hasPrefix("Dictionary") || name.contains(":"): return "an object"
        case let name: return "a value of \(name)"
        }
    }
    switch error {
    case .keyNotFound(let key, let context):
        return "missing key \"\(key.stringValue)\"" + (context.codingPath.isEmpty ? "" : " in \(path(context))")
    case .typeMismatch(let type, let context):
        return "\(path(context)): expected \(kind(type))"
    case .valueNotFound(let type, let context):
        return "\(path(context)): expected \(kind(type)), found null"
    case .dataCorrupted(let context):
        // The underlying error is Foundation's parser dump; the debug description says what matters.
        return "\(path(context)): \(context.debugDescription)"
    @unknown default:
        return "cannot be decoded"
    }
}

/// The path and literal of a fractional number that stops `tree` from decoding, or nil when
/// setting every fraction to 0 does not make it decode (the failure is something else).
private func fractionWhereWholeNumberBelongs(_ tree: StrictJSON, decodes: (Data) -> Bool) -> (String, String)? {
    var fractions: [(path: String, literal: String)] = []
    func collect(_ node: StrictJSON, _ path: String) {
        switch node {
        case let .number(literal) where IntegerLiteral(literal: literal) == .notInteger:
            fractions.append((path.isEmpty ? "the top level" : path, literal))
        case let .array(items):
            for (index, item) in items.enumerated() { collect(item, "\(path)[\(index)]") }
        case let .object(members):
            for member in members { collect(member.value, path.isEmpty ? member.key : "\(path).\(member.key)") }
        default:
            break
        }
    }
    collect(tree, "")
    guard !fractions.isEmpty else { return nil }
    // Every fraction but the one at `kept` (none when nil) becomes 0, in the order collected.
    func zeroed(keeping kept: Int?) -> Data {
        var next = 0
        func rewrite(_ node: StrictJSON) -> StrictJSON {
            switch node {
            case let .number(literal) where IntegerLiteral(literal: literal) == .notInteger:
                defer { next += 1 }
                return next == kept ? node : .number("0")
            case let .array(items):
                return .array(items.map(rewrite))
            case let .object(members):
                return .object(members.map { (key: $0.key, value: rewrite($0.value)) })
            default:
                return node
            }
        }
        return Data(rewrite(tree).text.utf8)
    }
    guard decodes(zeroed(keeping: nil)) else { return nil }
    for index in fractions.indices where !decodes(zeroed(keeping: index)) {
        return fractions[index]
    }
    return nil
}
