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
    /// More rows were rejected than the allowed fraction; no dataset was written. `reasons`
    /// holds the rejects by reason (empty on the ranks of a multi-rank import other than 0).
    case tooManyRejects(rejected: Int, rows: Int, limit: Double, rejectsPath: String, reasons: RejectSummary)
    /// Nothing usable was imported.
    case noCustomers(path: String, reason: String)
    /// No row could be read, so no cut-off can be derived from the last event; `reasons` says why.
    case noEventForCutoff(path: String, reasons: RejectSummary)
    /// The cut-off plus the horizon ends after the last event, so every customer would look
    /// churned for want of data; nothing was written. Days as the manifest prints them.
    case horizonPastData(cutoff: String, horizonDays: Int, horizonEnd: String, lastEvent: String, latestCutoff: String)
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
        case let .tooManyRejects(rejected, rows, limit, rejectsPath, reasons):
            let fraction = rows > 0 ? Double(rejected) / Double(rows) : 1
            return "rejected \(rejected) of \(rows) rows (\(formatPercent(fraction))), more than --max-reject-fraction \(limit); no dataset was written"
                + describeReasons(reasons) + "\nevery rejected row and its reason is in \(rejectsPath)"
        case let .noCustomers(path, reason):
            return "\(path): \(reason)"
        case let .noEventForCutoff(path, reasons):
            return "\(path): no row could be imported, so no cut-off can be derived from the last event; nothing was written"
                + describeReasons(reasons)
        case let .horizonPastData(cutoff, horizonDays, horizonEnd, lastEvent, latestCutoff):
            return "the cut-off \(cutoff) plus the horizon of \(horizonDays) days ends on \(horizonEnd), after the last event (\(lastEvent)): "
                + "customers would count as churned for want of data; nothing was written. Give --cutoff \(latestCutoff) or earlier "
                + "or a shorter --horizon (`clm-data inspect` suggests both), or --allow-partial-horizon to import it anyway"
        case let .lineTooLong(path, line, limit):
            return "\(path): line \(line) is longer than \(limit) bytes; an event row is a few hundred at most, so this is not a text event file of the expected layout (binary data, or a file with no line breaks)"
        case let .damagedDataset(file, reason):
            return "damaged dataset: \(file): \(reason)"
        case let .notADataset(path, reason):
            return "no dataset at \(path): \(reason); import one with `clm-data import --input EVENTS --out \(path)`"
        }
    }
}

/// The most frequent reasons, a line each with the first row rejected for it, after a colon.
func describeReasons(_ reasons: RejectSummary) -> String {
    guard !reasons.reasons.isEmpty else { return "" }
    return "; the most frequent reasons:\n" + reasons.lines().joined(separator: "\n")
}

func formatPercent(_ fraction: Double) -> String {
    let scaled = (fraction * 10_000).rounded() / 100
    return "\(scaled)%"
}
