import Crypto
import Foundation

/// A secret for signing checkpoints: an HMAC-SHA256 of `manifest.json`, written beside it as
/// `manifest.hmac`.
///
/// The manifest lists the SHA-256 of every other file, so its signature covers the whole
/// checkpoint: weights, optimizer state, training state, configuration and the dataset manifest
/// (window, normalisation, stages). The digests alone prove only that files were not damaged;
/// anyone who can write the checkpoint store can rewrite them. The signature proves that
/// whoever wrote the checkpoint held the key. It does not hide anything, and it cannot tell a
/// replayed older checkpoint of the same run from a new one (the manifest's run, step and time
/// say which it is).
public struct CheckpointSigningKey: Sendable {
    /// Fewer bytes than SHA-256's output would weaken the HMAC below its own strength.
    public static let minimumBytes = 32
    public static let signatureFileName = "manifest.hmac"

    // Kept as bytes (Crypto's SymmetricKey is not Sendable); a key is built for each use.
    private let secret: [UInt8]
    var key: SymmetricKey { SymmetricKey(data: secret) }

    public init(bytes: [UInt8]) throws(CheckpointError) {
        guard bytes.count >= Self.minimumBytes else {
            throw .invalidSigningKey(path: "key", reason: "has \(bytes.count) bytes; at least \(Self.minimumBytes) are needed (e.g. `head -c 32 /dev/urandom > key`)")
        }
        secret = bytes
    }

    /// Reads a key file: its bytes, less one trailing newline (so `echo … > key` works).
    public static func load(path: String) throws(CheckpointError) -> CheckpointSigningKey {
        var bytes: [UInt8]
        do throws(FileSystemError) {
            bytes = try DurableIO.readFile(URL(fileURLWithPath: path))
        } catch {
            throw .invalidSigningKey(path: path, reason: "cannot be read: \(error)")
        }
        if bytes.last == 0x0A { bytes.removeLast() }
        do throws(CheckpointError) {
            return try CheckpointSigningKey(bytes: bytes)
        } catch {
            if case .invalidSigningKey(_, let reason) = error { throw .invalidSigningKey(path: path, reason: reason) }
            throw error
        }
    }

    /// The signature of `manifest`, as lowercase hex.
    public func signature(of manifest: some DataProtocol) -> String {
        HMAC<SHA256>.authenticationCode(for: manifest, using: key).map { String(format: "%02x", $0) }.joined()
    }

    /// Whether `hex` is this key's signature of `manifest`, compared in constant time.
    public func isValid(signature hex: String, for manifest: some DataProtocol) -> Bool {
        guard let code = Self.bytes(hex: hex) else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(code, authenticating: manifest, using: key)
    }

    static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for index in stride(from: 0, to: 64, by: 2) {
            guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case 0x30...0x39: return digit - 0x30
        case 0x61...0x66: return digit - 0x61 + 10
        default: return nil
        }
    }
}

extension CheckpointStore {
    /// Refuses a checkpoint that `key` did not sign: no `manifest.hmac`, or one that does not
    /// match the manifest as it is on disk. Call after `load`, which has checked every other file
    /// against the manifest.
    public static func verifySignature(of checkpoint: LoadedCheckpoint, key: CheckpointSigningKey) throws(CheckpointError) {
        let signatureURL = checkpoint.directory.appendingPathComponent(CheckpointSigningKey.signatureFileName)
        let manifestURL = checkpoint.directory.appendingPathComponent(CheckpointManifest.fileName)
        let signature: [UInt8], manifest: [UInt8]
        do throws(FileSystemError) {
            signature = try DurableIO.readFile(named: CheckpointSigningKey.signatureFileName, in: checkpoint.directory)
        } catch {
            if error.code == ELOOP { throw .symbolicLink(path: signatureURL.path) }
            if error.code == ENOENT { throw .unsigned(directory: checkpoint.directory.path) }
            throw .fileSystem(error)
        }
        do throws(FileSystemError) {
            manifest = try DurableIO.readFile(named: CheckpointManifest.fileName, in: checkpoint.directory)
        } catch {
            if error.code == ELOOP { throw .symbolicLink(path: manifestURL.path) }
            throw .fileSystem(error)
        }
        let text = String(decoding: signature, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard key.isValid(signature: text, for: manifest) else {
            throw .badSignature(path: signatureURL.path)
        }
    }
}
