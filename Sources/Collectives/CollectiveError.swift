/// A collective that failed: which operation, on which rank, and why.
///
/// MPI failures carry MPI's own error string; argument checks made before calling MPI carry a
/// description of the mismatch, so a caller never has to guess which buffer was wrong.
public struct CollectiveError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Equatable, Sendable {
        /// MPI returned an error code (its class and text are in the message).
        case mpi(code: Int32)
        /// The arguments were rejected before reaching MPI.
        case invalidArgument
    }

    public let operation: String
    public let rank: Int
    public let kind: Kind
    public let message: String

    public init(operation: String, rank: Int, kind: Kind, message: String) {
        self.operation = operation
        self.rank = rank
        self.kind = kind
        self.message = message
    }

    public var description: String {
        switch kind {
        case .mpi(let code):
            return "\(operation) failed on rank \(rank): MPI error \(code): \(message)"
        case .invalidArgument:
            return "\(operation) on rank \(rank): \(message)"
        }
    }
}
