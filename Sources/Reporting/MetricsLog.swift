import Foundation

/// One `"event":"epoch"` line of a run's `metrics.jsonl`.
public struct EpochRecord: Sendable, Equatable {
    /// 1-based epoch number as logged.
    public var epoch: Int
    /// Line of `metrics.jsonl` the record came from.
    public var line: Int
    /// Every numeric field of the line, keyed as logged (`train_loss`, `val_auc`, ...).
    public var values: [String: Double]

    public subscript(key: String) -> Double? { values[key] }
}

/// The metrics log a training run appends to: one record per epoch and one for the test split.
public struct MetricsLog: Sendable, Equatable {
    /// Epoch records in ascending epoch order, one per epoch.
    public var epochs: [EpochRecord]
    /// The numeric fields of the `"event":"test"` line, empty when the run has none yet.
    public var test: [String: Double]
    /// Line of the test record, nil when there is none.
    public var testLine: Int?
    /// The trainer's warnings about the result (the model below a baseline), from the test record.
    public var testWarnings: [String] = []

    /// Reads and parses `url`; errors name the file and line.
    public static func read(_ url: URL) throws(ReportError) -> MetricsLog {
        try MetricsLog(text: readText(url), source: url.relativePath)
    }

    /// Parses the text of a metrics log; `source` names it in errors.
    public init(text: String, source: String) throws(ReportError) {
        var byEpoch: [Int: EpochRecord] = [:]
        test = [:]
        testLine = nil
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty { continue }
            let object: [String: Any]
            do {
                guard let parsed = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                    throw ReportError(file: source, line: lineNumber, "expected a JSON object")
                }
                object = parsed
            } catch let error as ReportError {
                throw error
            } catch {
                throw ReportError(file: source, line: lineNumber, "not valid JSON (\(line.prefix(60))...)")
            }
            guard let event = object["event"] as? String else {
                throw ReportError(file: source, line: lineNumber, "missing the string field \"event\"")
            }
            var values: [String: Double] = [:]
            for (key, value) in object {
                // JSON booleans arrive as NSNumber too; the trainer never logs any, so they are
                // harmless here, and strings (event, time) are simply not metrics.
                if let number = value as? NSNumber, !(value is String) { values[key] = number.doubleValue }
            }
            switch event {
            case "epoch":
                guard let epoch = values["epoch"], epoch >= 1, epoch == epoch.rounded(), epoch < 1e9 else {
                    throw ReportError(file: source, line: lineNumber, "epoch record without a positive integer \"epoch\"")
                }
                // A resumed run logs the epochs it repeats again; the later line describes the
                // model that was kept.
                byEpoch[Int(epoch)] = EpochRecord(epoch: Int(epoch), line: lineNumber, values: values)
            case "test":
                values.removeValue(forKey: "epoch")
                test = values
                testLine = lineNumber
                testWarnings = object["warnings"] as? [String] ?? []
            default:
                // Other events may be added by later trainers; a report of what it knows beats none.
                continue
            }
        }
        epochs = byEpoch.keys.sorted().map { byEpoch[$0]! }
        if epochs.isEmpty {
            throw ReportError(file: source, "no \"event\":\"epoch\" lines (has the run finished an epoch?)")
        }
    }
}

/// The whole of a UTF-8 text file, or an error naming it.
func readText(_ url: URL) throws(ReportError) -> String {
    guard FileManager.default.fileExists(atPath: url.path) else {
        throw ReportError(file: url.relativePath, "does not exist")
    }
    let data: Data
    do {
        data = try Data(contentsOf: url)
    } catch {
        throw ReportError(file: url.relativePath, "cannot be read (\(error.localizedDescription))")
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw ReportError(file: url.relativePath, "is not UTF-8 text")
    }
    return text
}
