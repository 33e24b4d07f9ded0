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

/// The metrics log a training run appends to (`metrics.jsonl`): one record per epoch and one for
/// the test split. `line(_:event:warnings:time:)` writes a record and `init(text:source:)` reads
/// them, so the two cannot drift apart.
public struct MetricsLog: Sendable, Equatable {
    /// The format this type writes and reads. The lines carry no version field (their bytes are
    /// what earlier runs wrote); a change to the keys below is a new version, and the reader
    /// must then say which it reads.
    public static let version = 1
    public static let fileName = "metrics.jsonl"
    public static let eventKey = "event"
    public static let warningsKey = "warnings"
    public static let timeKey = "time"
    public static let epochEvent = "epoch"
    public static let testEvent = "test"

    /// One record as a JSON line (keys sorted, newline included): the finite metrics, the event,
    /// the warnings when there are any, and the time.
    public static func line(_ metrics: [String: Double], event: String, warnings: [String] = [], time: Date = Date()) -> Data? {
        var entry: [String: Any] = metrics.filter { $0.value.isFinite }
        entry[eventKey] = event
        if !warnings.isEmpty { entry[warningsKey] = warnings }
        entry[timeKey] = ISO8601DateFormatter().string(from: time)
        guard let data = try? JSONSerialization.data(withJSONObject: entry, options: [.sortedKeys]) else { return nil }
        return data + Data("\n".utf8)
    }

    /// Epoch records in ascending epoch order, one per epoch.
    public var epochs: [EpochRecord]
    /// The numeric fields of the `"event":"test"` line, empty when the run has none yet.
    public var test: [String: Double]
    /// Line of the test record, nil when there is none.
    public var testLine: Int?
    /// The trainer's warnings about the result (the model below a baseline), from the test record.
    public var testWarnings: [String] = []

    /// Reads and parses `url`; errors name the file and line.
    public static func read(_ url: URL) throws(RunFileError) -> MetricsLog {
        try MetricsLog(text: readText(url), source: url.relativePath)
    }

    /// Parses the text of a metrics log; `source` names it in errors.
    public init(text: String, source: String) throws(RunFileError) {
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
                    throw RunFileError(file: source, line: lineNumber, "expected a JSON object")
                }
                object = parsed
            } catch let error as RunFileError {
                throw error
            } catch {
                throw RunFileError(file: source, line: lineNumber, "not valid JSON (\(line.prefix(60))...)")
            }
            guard let event = object[Self.eventKey] as? String else {
                throw RunFileError(file: source, line: lineNumber, "missing the string field \"event\"")
            }
            var values: [String: Double] = [:]
            for (key, value) in object {
                // JSON booleans arrive as NSNumber too; the trainer never logs any, so they are
                // harmless here, and strings (event, time) are simply not metrics.
                if let number = value as? NSNumber, !(value is String) { values[key] = number.doubleValue }
            }
            switch event {
            case Self.epochEvent:
                guard let epoch = values["epoch"], epoch >= 1, epoch == epoch.rounded(), epoch < 1e9 else {
                    throw RunFileError(file: source, line: lineNumber, "epoch record without a positive integer \"epoch\"")
                }
                // A resumed run logs the epochs it repeats again; the later line describes the
                // model that was kept.
                byEpoch[Int(epoch)] = EpochRecord(epoch: Int(epoch), line: lineNumber, values: values)
            case Self.testEvent:
                values.removeValue(forKey: "epoch")
                test = values
                testLine = lineNumber
                testWarnings = object[Self.warningsKey] as? [String] ?? []
            default:
                // Other events may be added by later trainers; a report of what it knows beats none.
                continue
            }
        }
        epochs = byEpoch.keys.sorted().map { byEpoch[$0]! }
        if epochs.isEmpty {
            throw RunFileError(file: source, "no \"event\":\"epoch\" lines (has the run finished an epoch?)")
        }
    }
}

/// The whole of a UTF-8 text file, or an error naming it.
public func readText(_ url: URL) throws(RunFileError) -> String {
    guard FileManager.default.fileExists(atPath: url.path) else {
        throw RunFileError(file: url.relativePath, "does not exist")
    }
    let data: Data
    do {
        data = try Data(contentsOf: url)
    } catch {
        throw RunFileError(file: url.relativePath, "cannot be read (\(error.localizedDescription))")
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw RunFileError(file: url.relativePath, "is not UTF-8 text")
    }
    return text
}
