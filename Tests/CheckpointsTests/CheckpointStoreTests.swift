import Foundation
import Synchronization
import Testing
@testable import Checkpoints
import TestSupport

/// Model and optimizer files as the trainer would write them, varying with `step`.
func checkpointFiles(step: Int) throws -> [String: Data] {
    var model = SafeTensorsWriter(metadata: ["format": "pt"])
    try model.add("lstm.weight_ih_l0", shape: [8, 3], floats: (0..<24).map { Float($0 + step) / 8 })
    try model.add("churn_head.bias", shape: [1], floats: [Float(step)])
    var optimizer = SafeTensorsWriter()
    try optimizer.add("adam.step", shape: [], int64s: [Int64(step)])
    return [
        "model.safetensors": Data(try model.serialized()),
        "optimizer.safetensors": Data(try optimizer.serialized()),
    ]
}

struct StoreFixture {
    let temporary: TemporaryDirectory
    var store: CheckpointStore
    var signingKey: CheckpointSigningKey? {
        get { store.signingKey }
        set { store.signingKey = newValue }
    }

    init(keep: Int = 3) throws {
        temporary = try TemporaryDirectory()
        store = try CheckpointStore(root: temporary.url.appendingPathComponent("checkpoints"), run: "churn", keep: keep)
    }

    @discardableResult
    func save(_ step: Int) throws -> URL {
        try store.save(step: step, files: checkpointFiles(step: step), manifest: sampleManifest(step: step))
    }

    func runEntries() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: store.runDirectory.path).sorted()
    }

    func latestText() throws -> String {
        try String(contentsOf: store.runDirectory.appendingPathComponent("latest"), encoding: .utf8)
    }
}

@Suite struct CheckpointStoreTests {
    @Test func saveThenLoadRoundTrips() throws {
        let fixture = try StoreFixture()
        let url = try fixture.save(120)
        #expect(url.lastPathComponent == "step-000120")
        #expect(try fixture.runEntries() == ["latest", "step-000120"])
        #expect(try fixture.latestText() == "step-000120\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: url.path).sorted() ==
            ["manifest.json", "model.safetensors", "optimizer.safetensors"])

        let loaded = try fixture.store.load(requiring: ["model.safetensors"])
        let expectedFiles = try checkpointFiles(step: 120)
        #expect(loaded.files == expectedFiles)
        #expect(loaded.manifest.step == 120)
        #expect(loaded.manifest.featureSpec == sampleManifest().featureSpec)
        #expect(loaded.manifest.files["model.safetensors"]?.bytes == expectedFiles["model.safetensors"]!.count)
        #expect(loaded.manifest.files["model.safetensors"]?.sha256 == CheckpointStore.sha256Hex(expectedFiles["model.safetensors"]!))
        #expect(try loaded.safeTensors("model.safetensors").floats("churn_head.bias") == [120])
        #expect(try CheckpointStore.load(directory: url).files == expectedFiles)
    }

    @Test func sha256MatchesAKnownVector() {
        #expect(CheckpointStore.sha256Hex(Data("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func directoryNamesAreCanonical() {
        #expect(CheckpointStore.directoryName(step: 7) == "step-000007")
        #expect(CheckpointStore.directoryName(step: 1_234_567) == "step-1234567")
        #expect(CheckpointStore.step(directoryName: "step-000007") == 7)
        #expect(CheckpointStore.step(directoryName: "step-1234567") == 1_234_567)
        for name in ["step-7", "step-0000007", "step-00000x", "step--00001", "step-+00001", ".tmp-step-000007-ab", "latest"] {
            #expect(CheckpointStore.step(directoryName: name) == nil, "\(name)")
        }
    }

    @Test func latestFollowsTheNewestSaveAndStepsAreSorted() throws {
        let fixture = try StoreFixture(keep: 10)
        #expect(try fixture.store.latestStep() == nil)
        #expect(try fixture.store.steps() == [])
        for step in [5, 1_000_000, 40, 300] { try fixture.save(step) }
        #expect(try fixture.store.steps() == [5, 40, 300, 1_000_000])
        // `latest` is the last save, not the highest step.
        #expect(try fixture.store.latestStep() == 300)
        #expect(try fixture.store.load().manifest.step == 300)
        #expect(try fixture.store.load(step: 40).files == checkpointFiles(step: 40))
    }

    @Test func retentionKeepsNewestPlusLatestAndBest() throws {
        let fixture = try StoreFixture(keep: 2)
        try fixture.save(10)
        try fixture.store.markBest(step: 10)
        #expect(try fixture.store.bestStep() == 10)
        for step in [20, 30, 40] { try fixture.save(step) }
        #expect(try fixture.store.steps() == [10, 30, 40], "best survives, 20 is gone")
        try fixture.store.markBest(step: 40)
        try fixture.save(50)
        #expect(try fixture.store.steps() == [40, 50])
        #expect(try fixture.runEntries() == ["best", "latest", "step-000040", "step-000050"], "no removal leftovers")

        // Saving an older step makes it latest, which keeps it although two newer ones exist.
        try fixture.save(30)
        #expect(try fixture.store.latestStep() == 30)
        #expect(try fixture.store.steps() == [30, 40, 50])
    }

    @Test func markBestRequiresAnExistingStep() throws {
        let fixture = try StoreFixture()
        try fixture.save(1)
        #expect(throws: CheckpointError.stepNotFound(step: 2, directory: fixture.store.directory(step: 2).path)) {
            try fixture.store.markBest(step: 2)
        }
        #expect(try fixture.store.bestStep() == nil)
    }

    @Test func savingAnExistingStepFailsWithoutTouchingLatest() throws {
        let fixture = try StoreFixture()
        try fixture.save(1)
        try fixture.save(2)
        let before = try fixture.runEntries()
        let manifestBefore = try Data(contentsOf: fixture.store.directory(step: 1).appendingPathComponent("manifest.json"))
        let error = #expect(throws: CheckpointError.self) { try fixture.save(1) }
        #expect(error == .stepExists(step: 1, directory: fixture.store.directory(step: 1).path))
        #expect(error?.description.contains("already exists") == true)
        #expect(try fixture.latestText() == "step-000002\n")
        #expect(try fixture.runEntries() == before, "no temporary left behind")
        #expect(try Data(contentsOf: fixture.store.directory(step: 1).appendingPathComponent("manifest.json")) == manifestBefore)
    }

    @Test func crashLeftoversAreIgnoredThenCleaned() throws {
        let fixture = try StoreFixture()
        try fixture.save(1)
        // A writer that died mid-save at step 2, one mid-removal, and one mid-pointer-update.
        let run = fixture.store.runDirectory
        let crashed = run.appendingPathComponent(".tmp-step-000002-0123456789abcdef")
        try FileManager.default.createDirectory(at: crashed, withIntermediateDirectories: false)
        try Data("partial".utf8).write(to: crashed.appendingPathComponent("model.safetensors"))
        try FileManager.default.createDirectory(at: run.appendingPathComponent(".tmp-delete-step-000000-00"), withIntermediateDirectories: false)
        try Data("step-000002\n".utf8).write(to: run.appendingPathComponent(".tmp-latest-feedbeef"))
        // Names that look close to step directories but are not.
        try Data().write(to: run.appendingPathComponent("step-000003"))
        try FileManager.default.createDirectory(at: run.appendingPathComponent("step-4"), withIntermediateDirectories: false)

        #expect(try fixture.store.steps() == [1])
        #expect(try fixture.store.latestStep() == 1)
        #expect(try fixture.store.load().manifest.step == 1)

        let removed = try fixture.store.cleanStaleTemporaries()
        #expect(removed == [".tmp-delete-step-000000-00", ".tmp-latest-feedbeef", ".tmp-step-000002-0123456789abcdef"])
        #expect(try fixture.runEntries() == ["latest", "step-000001", "step-000003", "step-4"])
        #expect(try fixture.store.cleanStaleTemporaries() == [])
        // The crashed step can now be saved for real.
        try fixture.save(2)
        #expect(try fixture.store.latestStep() == 2)
    }

    @Test func latestPointingNowhereIsAClearError() throws {
        let fixture = try StoreFixture()
        try fixture.save(1)
        let latest = fixture.store.runDirectory.appendingPathComponent("latest")
        try Data("step-000009\n".utf8).write(to: latest)
        let error = #expect(throws: CheckpointError.self) { try fixture.store.load() }
        #expect(error == .pointerTargetMissing(path: latest.path, target: "step-000009"))
        #expect(error?.description == "checkpoint: \(latest.path) names step-000009, which does not exist")
        #expect(throws: CheckpointError.pointerTargetMissing(path: latest.path, target: "step-000009")) { try fixture.store.latestStep() }

        try Data("garbage".utf8).write(to: latest)
        #expect(throws: CheckpointError.invalidPointer(path: latest.path, content: "garbage")) { try fixture.store.latestStep() }
    }

    @Test("a FIFO where a checkpoint file or the latest pointer belongs is refused at once, not waited on")
    func fifosAreRefusedWithoutBlocking() throws {
        let fixture = try StoreFixture()
        let step = try fixture.save(1)
        let model = step.appendingPathComponent("model.safetensors")
        let latest = fixture.store.runDirectory.appendingPathComponent("latest")
        for target in [model, latest] {
            let original = try Data(contentsOf: target)
            try FileManager.default.removeItem(at: target)
            #expect(mkfifo(target.path, 0o644) == 0)
            // Without a writer, a blocking open of a FIFO never returns: load on another thread
            // and give it a deadline, so a regression fails this test instead of hanging it.
            let finished = DispatchSemaphore(value: 0)
            let outcome = Mutex<Result<Void, any Error>?>(nil)
            let store = fixture.store
            Thread.detachNewThread {
                let result = Result<Void, any Error> { _ = try store.load(step: nil) }
                outcome.withLock { $0 = result }
                finished.signal()
            }
            #expect(finished.wait(timeout: .now() + 10) == .success, "loading with a FIFO at \(target.lastPathComponent) blocked")
            let result = outcome.withLock { $0 }
            if case .success = result { Issue.record("a FIFO at \(target.lastPathComponent) was accepted") }
            if case .failure(let error) = result {
                #expect("\(error)".contains("not a regular file"), "\(error)")
            }
            try FileManager.default.removeItem(at: target)
            try original.write(to: target)
        }
        #expect(try fixture.store.load().manifest.step == 1)
    }

    @Test func emptyRunHasNoCheckpoint() throws {
        let fixture = try StoreFixture()
        let error = #expect(throws: CheckpointError.self) { try fixture.store.load() }
        #expect(error == .noCheckpoint(run: "churn", directory: fixture.store.runDirectory.path))
        #expect(throws: CheckpointError.stepNotFound(step: 3, directory: fixture.store.directory(step: 3).path)) {
            try fixture.store.load(step: 3)
        }
    }

    @Test func invalidArgumentsAreRefusedBeforeWriting() throws {
        let fixture = try StoreFixture()
        #expect(throws: CheckpointError.invalidRunName("a/b", reason: "must be a single path component")) {
            try CheckpointStore(root: fixture.temporary.url, run: "a/b")
        }
        #expect(throws: CheckpointError.invalidRunName(".hidden", reason: "must not start with '.'")) {
            try CheckpointStore(root: fixture.temporary.url, run: ".hidden")
        }
        #expect(throws: CheckpointError.invalidRetention(keep: 0)) { try CheckpointStore(root: fixture.temporary.url, run: "r", keep: 0) }
        #expect(throws: CheckpointError.manifestMismatch(field: "step", expected: "2", found: "0")) {
            try fixture.store.save(step: 2, files: [:], manifest: sampleManifest(step: 0))
        }
        #expect(throws: CheckpointError.manifestMismatch(field: "runName", expected: "\"churn\"", found: "\"other\"")) {
            try fixture.store.save(step: 0, files: [:], manifest: sampleManifest(run: "other"))
        }
        for name in ["manifest.json", "../x", ".hidden", ""] {
            let error = #expect(throws: CheckpointError.self) {
                try fixture.store.save(step: 0, files: [name: Data()], manifest: sampleManifest())
            }
            guard case .invalidFileName(let rejected, _) = error else {
                Issue.record("\(name): \(String(describing: error))")
                continue
            }
            #expect(rejected == name)
        }
        #expect(!FileManager.default.fileExists(atPath: fixture.store.runDirectory.path), "nothing was created")
    }
}

@Suite struct DamagedCheckpointTests {
    /// A saved step 7 and the path of its model file.
    func savedCheckpoint() throws -> (StoreFixture, URL) {
        let fixture = try StoreFixture()
        let directory = try fixture.save(7)
        return (fixture, directory.appendingPathComponent("model.safetensors"))
    }

    @Test func flippedByteIsDetected() throws {
        let (fixture, model) = try savedCheckpoint()
        var bytes = try Data(contentsOf: model)
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: model)
        let error = #expect(throws: CheckpointError.self) { try fixture.store.load() }
        guard case .digestMismatch(let path, let expected, let actual) = error else {
            Issue.record("expected digestMismatch, got \(String(describing: error))")
            return
        }
        #expect(path == model.path)
        #expect(expected != actual)
        #expect(error?.description.contains("model.safetensors is damaged: SHA-256") == true)
    }

    @Test("a symbolic link in a step directory is never followed, even to identical bytes: outside the run, to another run's weights, as the manifest or as the step itself")
    func symbolicLinksAreRefused() throws {
        let (fixture, model) = try savedCheckpoint()
        let step = model.deletingLastPathComponent()
        let bytes = try Data(contentsOf: model)
        // The same bytes outside the run, so only the link itself can be what is refused.
        let outside = fixture.temporary.url.appendingPathComponent("copy.safetensors")
        try bytes.write(to: outside)
        let other = try CheckpointStore(root: fixture.store.root, run: "other-run", keep: 3)
        let otherStep = try other.save(step: 7, files: checkpointFiles(step: 7), manifest: sampleManifest(run: "other-run", step: 7))
        let otherModel = otherStep.appendingPathComponent("model.safetensors")
        #expect(try Data(contentsOf: otherModel) == bytes)
        for target in ["/etc/passwd", outside.path, otherModel.path] {
            try FileManager.default.removeItem(at: model)
            try FileManager.default.createSymbolicLink(atPath: model.path, withDestinationPath: target)
            let error = #expect(throws: CheckpointError.self, "model.safetensors -> \(target)") { try fixture.store.load() }
            #expect(error == .symbolicLink(path: model.path), "\(target): \(String(describing: error))")
            #expect(error?.description.contains("\(model.path) is a symbolic link; a checkpoint's files must be regular files inside its step directory") == true)
        }
        try FileManager.default.removeItem(at: model)
        try bytes.write(to: model)
        #expect(throws: Never.self) { try fixture.store.load() }

        let manifest = step.appendingPathComponent("manifest.json")
        let manifestCopy = fixture.temporary.url.appendingPathComponent("manifest.json")
        try FileManager.default.moveItem(at: manifest, to: manifestCopy)
        try FileManager.default.createSymbolicLink(at: manifest, withDestinationURL: manifestCopy)
        #expect(throws: CheckpointError.symbolicLink(path: manifest.path)) { try fixture.store.load() }

        // A step directory that is a link to another run's step.
        let linkedStep = step.deletingLastPathComponent().appendingPathComponent("step-000008")
        try FileManager.default.createSymbolicLink(at: linkedStep, withDestinationURL: otherStep)
        #expect(throws: CheckpointError.symbolicLink(path: linkedStep.path)) { try CheckpointStore.load(directory: linkedStep) }
    }

    @Test func truncatedFileIsDetected() throws {
        let (fixture, model) = try savedCheckpoint()
        let bytes = try Data(contentsOf: model)
        try bytes.prefix(bytes.count - 4).write(to: model)
        #expect(throws: CheckpointError.sizeMismatch(path: model.path, expected: bytes.count, actual: bytes.count - 4)) {
            try fixture.store.load()
        }
    }

    @Test func deletedFileIsDetected() throws {
        let (fixture, model) = try savedCheckpoint()
        try FileManager.default.removeItem(at: model)
        let error = #expect(throws: CheckpointError.self) { try fixture.store.load() }
        #expect(error == .fileMissing(path: model.path))
        #expect(error?.description == "checkpoint: \(model.path) is listed in the manifest but missing")
    }

    @Test func unlistedFileIsRefused() throws {
        let (fixture, model) = try savedCheckpoint()
        let extra = model.deletingLastPathComponent().appendingPathComponent("extra.bin")
        try Data([1]).write(to: extra)
        // Hidden files (NFS's .nfsXXXX) do not count.
        try Data([1]).write(to: model.deletingLastPathComponent().appendingPathComponent(".nfs0001"))
        #expect(throws: CheckpointError.unlistedFile(path: extra.path)) { try fixture.store.load() }
    }

    @Test func requiredFileNotInManifestIsRefused() throws {
        let (fixture, model) = try savedCheckpoint()
        #expect(throws: CheckpointError.requiredFileMissing(name: "graph.safetensors", directory: model.deletingLastPathComponent().path)) {
            try fixture.store.load(requiring: ["model.safetensors", "graph.safetensors"])
        }
    }

    @Test func missingOrBadManifestIsRefused() throws {
        let (fixture, model) = try savedCheckpoint()
        let directory = model.deletingLastPathComponent()
        let manifest = directory.appendingPathComponent("manifest.json")
        let original = try Data(contentsOf: manifest)

        try Data(original.prefix(original.count / 2)).write(to: manifest)
        let error = #expect(throws: CheckpointError.self) { try fixture.store.load() }
        guard case .invalidManifest(let path, _) = error else {
            Issue.record("expected invalidManifest, got \(String(describing: error))")
            return
        }
        #expect(path == manifest.path)

        // A manifest moved to another step's directory disagrees with the directory name.
        let text = String(decoding: original, as: UTF8.self).replacingOccurrences(of: "\"step\" : 7", with: "\"step\" : 8")
        try Data(text.utf8).write(to: manifest)
        #expect(throws: CheckpointError.invalidManifest(path: manifest.path, reason: "step 8 does not match the directory name step-000007")) {
            try fixture.store.load()
        }

        try FileManager.default.removeItem(at: manifest)
        #expect(throws: CheckpointError.manifestMissing(directory: directory.path)) { try fixture.store.load() }
    }
}
