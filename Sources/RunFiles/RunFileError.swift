/// Why a run file could not be read (or a report made from it): the file, the line when one is
/// to blame, and the reason.
public struct RunFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Path of the file at fault (or of the output being written).
    public var file: String
    /// 1-based line in `file`, nil when the fault is not on one line (a missing file, say).
    public var line: Int?
    public var reason: String

    public init(file: String, line: Int? = nil, _ reason: String) {
        self.file = file
        self.line = line
        self.reason = reason
    }

    public var description: String {
        if let line { return "\(file):\(line): \(reason)" }
        return "\(file): \(reason)"
    }
}
