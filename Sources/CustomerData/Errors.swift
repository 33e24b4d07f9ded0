/// Everything that can go wrong while importing, writing or reading a dataset; each case says
/// what went wrong and where.
public enum DataError: Error, CustomStringConvertible, Equatable {
    /// A system call failed: the path, the operation and the system's own message.
    case io(path: String, operation: String, message: String)
    /// The input has no bytes, or only blank lines.
    case emptyFile(path: String)
    /// A required column is not in the header.
    case missingColumn(path: String, column: String, header: [String])
    /// A command-line value is out of range or inconsistent.
    case invalidOption(String)
    /// More rows were rejected than the allowed fraction; no dataset was written.
    case tooManyRejects(rejected: Int, rows: Int, limit: Double, rejectsPath: String)
    /// Nothing usable was imported.
    case noCustomers(path: String, reason: String)
    /// A dataset file is missing, has the wrong size, or its contents do not match the manifest.
    case damagedDataset(file: String, reason: String)
    /// A line too long to be an event: the file is not the text it should be (or not this layout).
    case lineTooLong(path: String, line: Int, limit: Int)
    /// The path given as a dataset holds none: it does not exist, or it has no manifest.json.
    case notADataset(path: String, reason: String)

    public var description: String {
        switch self {
        case let .io(path, operation, message):
            return "\(path): \(operation) failed: \(message)"
        case let .emptyFile(path):
            return "\(path): the file is empty (expected a header or event rows)"
        case let .missingColumn(path, column, header):
            return "\(path): line 1: no column '\(column)' in the header; the header has \(header.map { "'\($0)'" }.joined(separator: ", "))"
        case let .invalidOption(message):
            return message
        case let .tooManyRejects(rejected, rows, limit, rejectsPath):
            let fraction = rows > 0 ? Double(rejected) / Double(rows) : 1
            return "rejected \(rejected) of \(rows) rows (\(formatPercent(fraction))), more than --max-reject-fraction \(limit); no dataset was written; the rejected rows and reasons are in \(rejectsPath)"
        case let .noCustomers(path, reason):
            return "\(path): \(reason)"
        case let .lineTooLong(path, line, limit):
            return "\(path): line \(line) is longer than \(limit) bytes; an event row is a few hundred at most, so this is not a text event file of the expected layout (binary data, or a file with no line breaks)"
        case let .damagedDataset(file, reason):
            return "damaged dataset: \(file): \(reason)"
        case let .notADataset(path, reason):
            return "no dataset at \(path): \(reason); import one with `clm-data import --input EVENTS --out \(path)`"
        }
    }
}

func formatPercent(_ fraction: Double) -> String {
    let scaled = (fraction * 10_000).rounded() / 100
    return "\(scaled)%"
}
