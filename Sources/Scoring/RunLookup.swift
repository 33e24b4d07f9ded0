import Checkpoints
import Foundation

/// Why run `run` under `root` has no checkpoint to score with, naming the runs there that have
/// one (so a misspelt name shows at once); nil when it has one. Paths are as the caller gave
/// them, relative if they were.
public func missingRunMessage(root: URL, run: String) -> String? {
    // A name the store refuses, or a pointer that is there but unreadable, gets the loader's own error.
    guard (try? CheckpointStore(root: root, run: run)) != nil else { return nil }
    let directory = root.appendingPathComponent(run)
    let pointers = [CheckpointStore.bestFileName, CheckpointStore.latestFileName]
    if pointers.contains(where: { FileManager.default.fileExists(atPath: directory.appendingPathComponent($0).path) }) { return nil }
    var isDirectory: ObjCBool = false
    let state = FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory) && isDirectory.boolValue
        ? "\(directory.relativePath) has no best or latest checkpoint yet"
        : "\(directory.relativePath) does not exist"
    let runs = CheckpointStore.runsWithCheckpoints(under: root)
    let existing = runs.isEmpty
        ? "no run under \(root.relativePath) has a checkpoint"
        : "runs with checkpoints under \(root.relativePath): \(runs.joined(separator: ", "))"
    return "run '\(run)' has no checkpoint to score with (\(state)); \(existing)"
}
