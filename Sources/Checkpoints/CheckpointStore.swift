import Crypto
import Foundation

/// A checkpoint read back from disk, with every file verified against the manifest.
public struct LoadedCheckpoint: Sendable {
    public let directory: URL
    public let manifest: CheckpointManifest
    /// Contents of every file the manifest lists, by name.
    public let files: [String: Data]

    /// The file `name` parsed and validated as safetensors.
    public func safeTensors(_ name: String) throws -> SafeTensorsFile {
        guard let data = files[name] else {
            throw CheckpointError.requiredFileMissing(name: name, directory: directory.relativePath)
        }
        return try SafeTensorsFile(data: data)
    }
}

/// The checkpoints of one training run: `<root>/<run>/step-NNNNNN/` directories, a `latest`
/// pointer, an optional `best` pointer, and retention of the newest few.
///
/// A step directory appears under its final name only when complete (it is built under a
/// hidden temporary name, fsynced, then renamed), and `latest` moves only after that rename, so
/// a reader following `latest` never sees a partial checkpoint. Only one process (rank 0) may
/// write to a run; nothing here locks against a second writer.
public struct CheckpointStore: Sendable {
    /// Names of the pointer files in the run directory.
    public static let latestFileName = "latest"
    public static let bestFileName = "best"
    /// Prefix of everything a writer creates before it is complete; never a checkpoint.
    public static let temporaryPrefix = ".tmp-"

    public let root: URL
    public let run: String
    /// How many of the newest step directories retention keeps (plus `latest` and `best`).
    public let keep: Int
    /// When set, every saved checkpoint is signed (`CheckpointSigningKey`).
    public var signingKey: CheckpointSigningKey?

    public var runDirectory: URL { root.appendingPathComponent(run, isDirectory: true) }

    public init(root: URL, run: String, keep: Int = 3) throws(CheckpointError) {
        if run.isEmpty { throw .invalidRunName(run, reason: "is empty") }
        if run.contains("/") || run.contains("\0") { throw .invalidRunName(run, reason: "must be a single path component") }
        if run.hasPrefix(".") { throw .invalidRunName(run, reason: "must not start with '.'") }
        if run.utf8.count > 255 { throw .invalidRunName(run, reason: "is longer than 255 bytes") }
        if keep < 1 { throw .invalidRetention(keep: keep) }
        self.root = root
        self.run = run
        self.keep = keep
    }

    /// `step-NNNNNN`: zero-padded to six digits so names sort like steps up to 999,999.
    public static func directoryName(step: Int) -> String {
        let digits = String(step)
        return "step-" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }

    /// The step a directory name stands for, or nil when the name is not exactly what
    /// `directoryName(step:)` produces (so `step-1` or `step-0000001` are not checkpoints).
    public static func step(directoryName name: String) -> Int? {
        guard name.hasPrefix("step-") else { return nil }
        let digits = name.dropFirst(5)
        guard digits.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let step = Int(digits) else { return nil }
        return directoryName(step: step) == name ? step : nil
    }

    public func directory(step: Int) -> URL {
        runDirectory.appendingPathComponent(Self.directoryName(step: step), isDirectory: true)
    }

    // MARK: Saving

    /// Saves a complete checkpoint and makes it `latest`, then applies retention.
    ///
    /// `manifest.files` is replaced by the digests of `files`. Throws `stepExists` (leaving
    /// `latest` untouched) when the step was saved before, and `retentionFailed` when the
    /// checkpoint was saved but an old one could not be removed.
    @discardableResult
    public func save(step: Int, files: [String: Data], manifest: CheckpointManifest) throws(CheckpointError) -> URL {
        guard step >= 0 else { throw .invalidStep(step) }
        guard manifest.step == step else {
            throw .manifestMismatch(field: "step", expected: "\(step)", found: "\(manifest.step)")
        }
        guard manifest.runName == run else {
            throw .manifestMismatch(field: "runName", expected: "\"\(run)\"", found: "\"\(manifest.runName)\"")
        }
        let final = directory(step: step)
        if try io(DurableIO.entryKind(final)) != .missing {
            throw .stepExists(step: step, directory: final.relativePath)
        }

        var manifest = manifest
        manifest.files = [:]
        for (name, data) in files {
            try checkCheckpointFileName(name)
            manifest.files[name] = FileDigest(sha256: Self.sha256Hex(data), bytes: data.count)
        }
        // Everything that can be refused is refused before the first byte is written.
        try manifest.validate(source: "manifest for step \(step)")
        let manifestData: Data
        do {
            manifestData = try manifest.jsonData()
        } catch {
            throw .invalidManifest(path: "manifest for step \(step)", reason: "\(error)")
        }

        try ensureRunDirectory()
        let temporary = runDirectory.appendingPathComponent(
            "\(Self.temporaryPrefix)\(Self.directoryName(step: step))-\(DurableIO.randomSuffix())", isDirectory: true)
        try io(DurableIO.makeDirectory(temporary))
        do throws(FileSystemError) {
            for name in files.keys.sorted() {
                try DurableIO.writeNewFile(files[name]!, to: temporary.appendingPathComponent(name))
            }
            if let signingKey {
                try DurableIO.writeNewFile(Data((signingKey.signature(of: manifestData) + "\n").utf8),
                                           to: temporary.appendingPathComponent(CheckpointSigningKey.signatureFileName))
            }
            // The manifest goes last: its presence marks the directory as complete.
            try DurableIO.writeNewFile(manifestData, to: temporary.appendingPathComponent(CheckpointManifest.fileName))
            try DurableIO.syncDirectory(temporary)
            try DurableIO.rename(temporary, to: final)
        } catch {
            try? DurableIO.removeTree(temporary)
            // rename(2) refuses to replace a non-empty directory, which catches a step that
            // appeared after the check above.
            if error.code == ENOTEMPTY || error.code == EEXIST {
                throw .stepExists(step: step, directory: final.relativePath)
            }
            throw .fileSystem(error)
        }
        try io(DurableIO.syncDirectory(runDirectory))
        try writePointer(Self.latestFileName, step: step)

        do {
            try applyRetention()
        } catch {
            throw .retentionFailed(saved: final.relativePath, reason: error.description)
        }
        return final
    }

    /// Points `best` at an existing step, which retention then never removes.
    public func markBest(step: Int) throws(CheckpointError) {
        let target = directory(step: step)
        guard try io(DurableIO.entryKind(target)) == .directory else {
            throw .stepNotFound(step: step, directory: target.relativePath)
        }
        try writePointer(Self.bestFileName, step: step)
    }

    /// Removes step directories beyond the newest `keep`, sparing those `latest` and `best` name.
    ///
    /// Returns the steps removed. Each is first renamed to a temporary name, so a crash part-way
    /// through a removal leaves a `.tmp-` leftover, never a half-deleted step that looks real.
    @discardableResult
    public func applyRetention() throws(CheckpointError) -> [Int] {
        let protected = Set([try pointerStep(Self.latestFileName), try pointerStep(Self.bestFileName)].compactMap { $0 })
        let doomed = try steps().dropLast(keep).filter { !protected.contains($0) }
        for step in doomed {
            let trash = runDirectory.appendingPathComponent(
                "\(Self.temporaryPrefix)delete-\(Self.directoryName(step: step))-\(DurableIO.randomSuffix())")
            try io(DurableIO.rename(directory(step: step), to: trash))
            try io(DurableIO.removeTree(trash))
        }
        if !doomed.isEmpty { try io(DurableIO.syncDirectory(runDirectory)) }
        return Array(doomed)
    }

    /// Removes everything a crashed writer left behind (names starting with `.tmp-`).
    ///
    /// Call it at start-up before the first save, never while another process writes this run.
    /// Returns the names removed.
    @discardableResult
    public func cleanStaleTemporaries() throws(CheckpointError) -> [String] {
        let stale = try io(DurableIO.listDirectory(runDirectory)).filter { $0.hasPrefix(Self.temporaryPrefix) }.sorted()
        for name in stale {
            try io(DurableIO.removeTree(runDirectory.appendingPathComponent(name)))
        }
        if !stale.isEmpty { try io(DurableIO.syncDirectory(runDirectory)) }
        return stale
    }

    // MARK: Listing

    /// Steps with a checkpoint directory, ascending; temporaries and other names are ignored.
    public func steps() throws(CheckpointError) -> [Int] {
        var result: [Int] = []
        for name in try io(DurableIO.listDirectory(runDirectory)) {
            guard let step = Self.step(directoryName: name) else { continue }
            if try io(DurableIO.entryKind(runDirectory.appendingPathComponent(name))) == .directory {
                result.append(step)
            }
        }
        return result.sorted()
    }

    /// The step `latest` names, nil when nothing was saved yet; throws when `latest` is
    /// malformed or names a directory that does not exist.
    public func latestStep() throws(CheckpointError) -> Int? { try existingPointerStep(Self.latestFileName) }

    /// The step `best` names, nil when none was marked; throws like `latestStep()`.
    public func bestStep() throws(CheckpointError) -> Int? { try existingPointerStep(Self.bestFileName) }

    /// The step a user of the run's model gets: `best` (the best validation, which training
    /// also scores the test split with), or `latest` when no step was marked best.
    public func servingStep() throws(CheckpointError) -> Int? {
        if let best = try bestStep() { return best }
        return try latestStep()
    }

    /// The runs under `root` with a checkpoint to serve (a `best` or `latest` pointer), sorted:
    /// what a tool lists when it is given a run name that has none.
    public static func runsWithCheckpoints(under root: URL) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return names.filter { name in
            [bestFileName, latestFileName].contains {
                FileManager.default.fileExists(atPath: root.appendingPathComponent(name).appendingPathComponent($0).path)
            }
        }.sorted()
    }

    // MARK: Loading

    /// Loads and verifies a step, or the one `latest` names when `step` is nil.
    ///
    /// `requiring` lists files the caller cannot do without (e.g. `model.safetensors`).
    public func load(step: Int? = nil, requiring: Set<String> = []) throws(CheckpointError) -> LoadedCheckpoint {
        let chosen: Int
        if let step {
            chosen = step
        } else if let latest = try latestStep() {
            chosen = latest
        } else {
            throw .noCheckpoint(run: run, directory: runDirectory.relativePath)
        }
        let target = directory(step: chosen)
        guard try io(DurableIO.entryKind(target)) == .directory else {
            throw .stepNotFound(step: chosen, directory: target.relativePath)
        }
        return try Self.load(directory: target, requiring: requiring)
    }

    /// Loads a checkpoint directory, checking every file against the manifest's size and SHA-256.
    ///
    /// Refuses a missing or invalid manifest, a listed file that is missing, short, long or
    /// altered, a file present but not listed, and a required file the manifest lacks.
    public static func load(directory: URL, requiring: Set<String> = []) throws(CheckpointError) -> LoadedCheckpoint {
        let manifestURL = directory.appendingPathComponent(CheckpointManifest.fileName)
        if try io(DurableIO.entryKind(directory)) == .other, (try? FileManager.default.destinationOfSymbolicLink(atPath: directory.path)) != nil {
            throw .symbolicLink(path: directory.relativePath)
        }
        let manifestBytes: [UInt8]
        do throws(FileSystemError) {
            manifestBytes = try DurableIO.readFile(named: CheckpointManifest.fileName, in: directory)
        } catch {
            if error.code == ELOOP { throw .symbolicLink(path: manifestURL.relativePath) }
            if error.code == ENOENT {
                // Distinguish "no such checkpoint" from "checkpoint without a manifest".
                if (try? DurableIO.entryKind(directory)) == .directory { throw .manifestMissing(directory: directory.path) }
            }
            throw .fileSystem(error)
        }
        let manifest = try CheckpointManifest(jsonData: Data(manifestBytes), source: manifestURL.relativePath)
        if let named = Self.step(directoryName: directory.lastPathComponent), named != manifest.step {
            throw .invalidManifest(path: manifestURL.relativePath, reason: "step \(manifest.step) does not match the directory name \(directory.lastPathComponent)")
        }
        for name in requiring.sorted() where manifest.files[name] == nil {
            throw .requiredFileMissing(name: name, directory: directory.relativePath)
        }

        var contents: [String: Data] = [:]
        for (name, digest) in manifest.files.sorted(by: { $0.key < $1.key }) {
            let url = directory.appendingPathComponent(name)
            let bytes: [UInt8]
            do throws(FileSystemError) {
                bytes = try DurableIO.readFile(named: name, in: directory)
            } catch {
                if error.code == ELOOP { throw .symbolicLink(path: url.relativePath) }
                if error.code == EINVAL && error.operation.hasPrefix("open (not a name") {
                    throw .invalidManifest(path: manifestURL.relativePath, reason: "file \"\(name)\" is not a name inside the step directory")
                }
                if error.code == ENOENT { throw .fileMissing(path: url.relativePath) }
                throw .fileSystem(error)
            }
            if bytes.count != digest.bytes {
                throw .sizeMismatch(path: url.relativePath, expected: digest.bytes, actual: bytes.count)
            }
            let actual = sha256Hex(bytes)
            if actual != digest.sha256 {
                throw .digestMismatch(path: url.relativePath, expected: digest.sha256, actual: actual)
            }
            contents[name] = Data(bytes)
        }
        // Hidden names are skipped: NFS parks deleted-but-open files as .nfsXXXX in the directory.
        let present = try io(DurableIO.listDirectory(directory))
        // The signature signs the manifest, so the manifest cannot list it.
        for name in present.sorted() where !name.hasPrefix(".") && name != CheckpointManifest.fileName
            && name != CheckpointSigningKey.signatureFileName && manifest.files[name] == nil {
            throw .unlistedFile(path: directory.appendingPathComponent(name).relativePath)
        }
        return LoadedCheckpoint(directory: directory, manifest: manifest, files: contents)
    }

    // MARK: Helpers

    private func ensureRunDirectory() throws(CheckpointError) {
        guard try io(DurableIO.entryKind(runDirectory)) == .missing else { return }
        try io(DurableIO.makeDirectories(runDirectory))
    }

    private func writePointer(_ name: String, step: Int) throws(CheckpointError) {
        let content = Self.directoryName(step: step) + "\n"
        try io(DurableIO.writeAtomically(Array(content.utf8), to: runDirectory.appendingPathComponent(name)))
    }

    /// The step a pointer file names, nil when the file does not exist; no check that it exists.
    private func pointerStep(_ name: String) throws(CheckpointError) -> Int? {
        let url = runDirectory.appendingPathComponent(name)
        let bytes: [UInt8]
        do throws(FileSystemError) {
            bytes = try DurableIO.readFile(url)
        } catch {
            if error.code == ENOENT { return nil }
            throw .fileSystem(error)
        }
        let text = String(decoding: bytes.prefix(64), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard bytes.count <= 64, let step = Self.step(directoryName: text) else {
            throw .invalidPointer(path: url.relativePath, content: text)
        }
        return step
    }

    private func existingPointerStep(_ name: String) throws(CheckpointError) -> Int? {
        guard let step = try pointerStep(name) else { return nil }
        guard try io(DurableIO.entryKind(directory(step: step))) == .directory else {
            throw .pointerTargetMissing(path: runDirectory.appendingPathComponent(name).relativePath, target: Self.directoryName(step: step))
        }
        return step
    }

    public static func sha256Hex(_ bytes: some DataProtocol) -> String {
        let hexDigits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in SHA256.hash(data: bytes) {
            text.append(hexDigits[Int(byte >> 4)])
            text.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

/// Runs a file-system step, reporting its failure as a checkpoint error.
private func io<T>(_ body: @autoclosure () throws(FileSystemError) -> T) throws(CheckpointError) -> T {
    do {
        return try body()
    } catch {
        throw .fileSystem(error)
    }
}
