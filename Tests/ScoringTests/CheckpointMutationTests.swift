import Checkpoints
import CustomerData
import Foundation
import Models
@testable import Scoring
import ScoringTestSupport
import Tensors
import Testing

/// A seeded fuzz test of what scoring does with a checkpoint someone rewrote consistently: the
/// manifest's values changed (the manifest is not hashed), or the safetensors header changed with
/// the file's digest updated to match. Each mutant must be refused or give exactly the original
/// scores; it must never crash the process, hang, or be served with different scores.
@Suite("Checkpoint mutations")
struct CheckpointMutationTests {
    /// Customers to compare scores on: the fixture's stored features.
    static func scores(_ model: ScoringModel, _ dataset: CustomerDataset, count: Int) -> [Float] {
        let scorer = LSTMScorer(model: model)
        var churn = [Float](repeating: 0, count: count), spend = churn
        var stages = [Float](repeating: 0, count: count * max(scorer.stageCount, 1))
        stages.withUnsafeMutableBufferPointer { stageBuffer in
            scorer.score(features: dataset.features.baseAddress!, lengths: dataset.lengths.baseAddress!, count: count,
                         churn: &churn, spend: &spend, stages: scorer.stageCount > 0 ? stageBuffer.baseAddress! : nil)
        }
        return churn + spend + (scorer.stageCount > 0 ? stages : [])
    }

    /// Every path to a value in `value`, for picking one to change.
    static func paths(_ value: JSONValue, _ prefix: [String] = []) -> [[String]] {
        switch value {
        case .object(let members):
            return [prefix] + members.keys.sorted().flatMap { paths(members[$0]!, prefix + [$0]) }
        case .array(let items):
            return [prefix] + items.indices.flatMap { paths(items[$0], prefix + ["\($0)"]) }
        default:
            return [prefix]
        }
    }

    static func replacing(_ value: JSONValue, at path: ArraySlice<String>, with replacement: JSONValue?) -> JSONValue {
        guard let key = path.first else { return replacement ?? .null }
        switch value {
        case .object(var members):
            if path.count == 1 && replacement == nil {
                members.removeValue(forKey: key)
            } else if let member = members[key] {
                members[key] = replacing(member, at: path.dropFirst(), with: replacement)
            }
            return .object(members)
        case .array(var items):
            if let index = Int(key), items.indices.contains(index) {
                if path.count == 1 && replacement == nil { items.remove(at: index) } else {
                    items[index] = replacing(items[index], at: path.dropFirst(), with: replacement)
                }
            }
            return .array(items)
        default:
            return value
        }
    }

    static let replacements: [JSONValue?] = [
        nil, .null, .number(0), .number(-1), .number(1), .number(2), .number(1e9), .number(-1e9), .number(1e300),
        .number(0.5), .string(""), .string("ziln"), .string("gnn"), .string("x"), .bool(true), .array([]), .object([:]),
    ]

    @Test("300 consistent rewrites of the manifest and the safetensors header: refused, or the same scores")
    func mutantsAreRefusedOrHarmless() throws {
        let fixture = try ScoringFixture(customers: 60)
        let heads = fixture.architecture(clvLoss: .ziln, stageCount: 4)
        let original = try fixture.saveCheckpoint(step: 1, seed: 5, heads: heads)
        let baseline = Self.scores(try ScoringModel.load(directory: original), fixture.dataset, count: 40)
        let manifestURL = original.appendingPathComponent("manifest.json")
        let modelURL = original.appendingPathComponent("model.safetensors")
        let manifestBytes = try Data(contentsOf: manifestURL)
        let modelBytes = try Data(contentsOf: modelURL)
        let manifestTree = try JSONDecoder().decode(JSONValue.self, from: manifestBytes)
        let headerLength = Int(modelBytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        var random = SeededRandom(seed: 20261201, purpose: .synthesis)
        var refused = 0, harmless = 0
        var changed: [String] = []
        var rawDumps: [String] = []
        let started = ContinuousClock.now

        for mutant in 0..<300 {
            var manifest = manifestTree
            var model = modelBytes
            let description: String
            if mutant % 3 != 2 {
                let paths = Self.paths(manifestTree).filter { !$0.isEmpty && $0.first != "files" }
                let path = paths[random.nextIndex(below: paths.count)]
                let replacement = Self.replacements[random.nextIndex(below: Self.replacements.count)]
                manifest = Self.replacing(manifest, at: path[...], with: replacement)
                description = "manifest \(path.joined(separator: ".")) = \(replacement.map { "\($0)" } ?? "removed")"
            } else {
                // A byte of the header changed, and the digest rewritten to match the new file.
                let offset = 8 + random.nextIndex(below: headerLength)
                let byte = UInt8(truncatingIfNeeded: random.next())
                model[offset] = byte
                let digest = FileDigest(sha256: CheckpointStore.sha256Hex(model), bytes: model.count)
                manifest = Self.replacing(manifest, at: ["files", "model.safetensors"], with: try JSONDecoder().decode(
                    JSONValue.self, from: JSONEncoder().encode(digest)))
                description = "header byte \(offset) = \(byte)"
            }
            try model.write(to: modelURL)
            try JSONEncoder().encode(manifest).write(to: manifestURL)
            do {
                let loaded = try ScoringModel.load(directory: original)
                if Self.scores(loaded, fixture.dataset, count: 40) == baseline { harmless += 1 } else { changed.append(description) }
            } catch let error as ScoringError {
                refused += 1
                // A refusal says what and where in words, not as Foundation's decoding dump.
                let text = "\(error)"
                if ["DecodingError", "Context(", "codingPath", "NSCocoaErrorDomain", "The given data was not valid JSON"].contains(where: text.contains) {
                    rawDumps.append("\(description): \(text.prefix(300))")
                }
            }
        }
        try modelBytes.write(to: modelURL)
        try manifestBytes.write(to: manifestURL)
        #expect(changed.isEmpty, "accepted with other scores: \(changed.prefix(10))")
        #expect(rawDumps.isEmpty, "\(rawDumps.count) refusals print a raw decoding error: \(rawDumps.prefix(5))")
        #expect(refused + harmless == 300)
        #expect(refused > 100 && harmless > 10, "refused \(refused), harmless \(harmless): the mutants should exercise both")
        #expect(ContinuousClock.now - started < .seconds(60))
    }
}
