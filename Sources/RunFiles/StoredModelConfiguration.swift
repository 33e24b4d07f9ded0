import Checkpoints
import Foundation
import Models

/// A checkpoint manifest's `configuration`: the architecture scoring rebuilds the model from,
/// and the full training configuration beside it for provenance. Training writes it and scoring
/// reads it through this one type.
public struct StoredModelConfiguration: Codable, Sendable, Equatable {
    /// The format this type writes and reads, under the manifest's own version.
    public static let version = 1

    public var architecture: ModelArchitecture
    /// The training configuration as training encoded it; scoring does not read it.
    public var training: JSONValue?

    public init(architecture: ModelArchitecture, training: JSONValue?) {
        self.architecture = architecture
        self.training = training
    }

    /// The value the manifest stores.
    public func jsonValue() throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(self))
    }

    /// Reads it back from a manifest's `configuration`.
    public init(manifestValue: JSONValue) throws {
        self = try JSONDecoder().decode(StoredModelConfiguration.self, from: JSONEncoder().encode(manifestValue))
    }
}
