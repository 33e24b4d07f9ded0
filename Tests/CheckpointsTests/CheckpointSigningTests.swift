import Foundation
import Testing
@testable import Checkpoints
import TestSupport

@Suite("Signed checkpoints")
struct CheckpointSigningTests {
    let key = try! CheckpointSigningKey(bytes: Array(repeating: 7, count: 32))
    let otherKey = try! CheckpointSigningKey(bytes: Array(repeating: 8, count: 32))

    func signedStore() throws -> StoreFixture {
        var fixture = try StoreFixture()
        fixture.signingKey = key
        return fixture
    }

    @Test("a signed checkpoint verifies with its key, and only with it")
    func signedCheckpointVerifies() throws {
        let fixture = try signedStore()
        let step = try fixture.save(1)
        #expect(FileManager.default.fileExists(atPath: step.appendingPathComponent("manifest.hmac").path))
        let loaded = try fixture.store.load()
        try CheckpointStore.verifySignature(of: loaded, key: key)
        #expect(throws: CheckpointError.badSignature(path: step.appendingPathComponent("manifest.hmac").path)) {
            try CheckpointStore.verifySignature(of: loaded, key: otherKey)
        }
    }

    @Test("an unsigned checkpoint is refused when a signature is required")
    func unsignedIsRefused() throws {
        let fixture = try StoreFixture()
        let step = try fixture.save(1)
        let loaded = try fixture.store.load()
        #expect(throws: CheckpointError.unsigned(directory: step.path)) { try CheckpointStore.verifySignature(of: loaded, key: key) }
    }

    @Test("two same-shape tensors swapped, with every digest rewritten to match, still fail the signature")
    func rewrittenDigestsDoNotForgeTheSignature() throws {
        let fixture = try signedStore()
        let step = try fixture.save(1)
        // The attacker's checkpoint: other weights, and a manifest whose digests match them.
        var forged = try CheckpointManifest(jsonData: Data(contentsOf: step.appendingPathComponent("manifest.json")))
        var model = SafeTensorsWriter(metadata: ["format": "pt"])
        try model.add("lstm.weight_ih_l0", shape: [8, 3], floats: (0..<24).map { Float(23 - $0) })
        try model.add("churn_head.bias", shape: [1], floats: [42])
        let bytes = Data(try model.serialized())
        try bytes.write(to: step.appendingPathComponent("model.safetensors"))
        forged.files["model.safetensors"] = FileDigest(sha256: CheckpointStore.sha256Hex(bytes), bytes: bytes.count)
        try forged.jsonData().write(to: step.appendingPathComponent("manifest.json"))
        let loaded = try fixture.store.load()
        #expect(try loaded.safeTensors("model.safetensors").floats("churn_head.bias") == [42], "the digests alone accept it")
        #expect(throws: CheckpointError.self) { try CheckpointStore.verifySignature(of: loaded, key: key) }
    }

    @Test("keys shorter than 32 bytes are refused; a key file's trailing newline is not part of the key")
    func keyFiles() throws {
        #expect(throws: CheckpointError.self) { try CheckpointSigningKey(bytes: Array(repeating: 1, count: 31)) }
        let directory = try TemporaryDirectory()
        let path = directory.url.appendingPathComponent("key").path
        try Data(Array(repeating: UInt8(ascii: "k"), count: 32) + [0x0A]).write(to: URL(fileURLWithPath: path))
        let fromFile = try CheckpointSigningKey.load(path: path)
        let direct = try CheckpointSigningKey(bytes: Array(repeating: UInt8(ascii: "k"), count: 32))
        #expect(fromFile.signature(of: Data("manifest".utf8)) == direct.signature(of: Data("manifest".utf8)))
        #expect(fromFile.isValid(signature: direct.signature(of: Data("m".utf8)), for: Data("m".utf8)))
        #expect(!fromFile.isValid(signature: direct.signature(of: Data("m".utf8)), for: Data("n".utf8)))
        #expect(throws: CheckpointError.self) { try CheckpointSigningKey.load(path: directory.url.appendingPathComponent("missing").path) }
    }
}
