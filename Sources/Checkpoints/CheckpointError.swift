/// Why a checkpoint could not be saved or loaded; every case names the run, step, file or
/// directory concerned.
public enum CheckpointError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidRunName(String, reason: String)
    case invalidStep(Int)
    case invalidRetention(keep: Int)
    case invalidFileName(String, reason: String)
    /// The manifest handed to `save` disagrees with the store or the step being saved.
    case manifestMismatch(field: String, expected: String, found: String)
    /// A directory for this step exists already; checkpoints are never overwritten.
    case stepExists(step: Int, directory: String)
    case stepNotFound(step: Int, directory: String)
    /// The run has no `latest` pointer, so there is nothing to load by default.
    case noCheckpoint(run: String, directory: String)
    /// A pointer file (`latest`, `best`) does not name a step directory.
    case invalidPointer(path: String, content: String)
    /// A pointer file names a step directory that does not exist.
    case pointerTargetMissing(path: String, target: String)
    case manifestMissing(directory: String)
    case invalidManifest(path: String, reason: String)
    /// A file the manifest lists is absent from the checkpoint directory.
    case fileMissing(path: String)
    case sizeMismatch(path: String, expected: Int, actual: Int)
    case digestMismatch(path: String, expected: String, actual: String)
    /// A file in the checkpoint directory that the manifest does not list, so nothing vouches for it.
    case unlistedFile(path: String)
    /// The caller requires a file that the manifest does not list.
    case requiredFileMissing(name: String, directory: String)
    case fileSystem(FileSystemError)
    /// A checkpoint file, or the step directory itself, is a symbolic link: never followed.
    case symbolicLink(path: String)
    /// The checkpoint was saved and `latest` moved, but removing old steps failed.
    case retentionFailed(saved: String, reason: String)
    case invalidSigningKey(path: String, reason: String)
    /// A signature was required and the checkpoint has none.
    case unsigned(directory: String)
    /// The checkpoint's signature was not made with this key over this manifest.
    case badSignature(path: String)

    public var description: String {
        switch self {
        case .invalidRunName(let name, let reason):
            return "checkpoint: run name \"\(name)\" \(reason)"
        case .invalidStep(let step):
            return "checkpoint: step \(step) is negative"
        case .invalidRetention(let keep):
            return "checkpoint: keep must be at least 1 (got \(keep))"
        case .invalidFileName(let name, let reason):
            return "checkpoint: file name \"\(name)\" \(reason)"
        case .manifestMismatch(let field, let expected, let found):
            return "checkpoint: manifest \(field) is \(found), expected \(expected)"
        case .stepExists(let step, let directory):
            return "checkpoint: step \(step) already exists at \(directory); checkpoints are never overwritten (remove it or resume from it)"
        case .stepNotFound(let step, let directory):
            return "checkpoint: step \(step) not found (no directory \(directory))"
        case .noCheckpoint(let run, let directory):
            return "checkpoint: run \"\(run)\" has no checkpoint yet (no latest file in \(directory))"
        case .invalidPointer(let path, let content):
            return "checkpoint: \(path) should name a step directory like step-000123, but contains \"\(content)\""
        case .pointerTargetMissing(let path, let target):
            return "checkpoint: \(path) names \(target), which does not exist"
        case .manifestMissing(let directory):
            return "checkpoint: \(directory) has no manifest.json (incomplete or not a checkpoint)"
        case .invalidManifest(let path, let reason):
            return "checkpoint: invalid manifest \(path): \(reason)"
        case .symbolicLink(let path):
            return "checkpoint: \(path) is a symbolic link; a checkpoint's files must be regular files inside its step directory, and links are not followed"
        case .fileMissing(let path):
            return "checkpoint: \(path) is listed in the manifest but missing"
        case .sizeMismatch(let path, let expected, let actual):
            return "checkpoint: \(path) is \(actual) bytes, the manifest says \(expected) (truncated or replaced)"
        case .digestMismatch(let path, let expected, let actual):
            return "checkpoint: \(path) is damaged: SHA-256 \(actual), the manifest says \(expected)"
        case .unlistedFile(let path):
            return "checkpoint: \(path) is not listed in the manifest"
        case .requiredFileMissing(let name, let directory):
            return "checkpoint: \(directory) has no \(name) in its manifest"
        case .fileSystem(let error):
            return "checkpoint: \(error)"
        case .invalidSigningKey(let path, let reason):
            return "checkpoint: signing key \(path) \(reason)"
        case .unsigned(let directory):
            return "checkpoint: \(directory) is not signed (no \(CheckpointSigningKey.signatureFileName)), and a signature is required"
        case .badSignature(let path):
            return "checkpoint: \(path) is not a signature of this manifest with this key: the checkpoint was changed, or signed with another key"
        case .retentionFailed(let saved, let reason):
            return "checkpoint: \(saved) was saved, but removing old checkpoints failed: \(reason)"
        }
    }
}
