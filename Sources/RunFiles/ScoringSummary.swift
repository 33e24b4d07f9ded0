import Checkpoints
import Foundation

/// What `clm-score batch --summary-out` writes and `clm-report --summary` reads: stability
/// indices against the training customers and, with `--explain`, the mean absolute attribution
/// of each reason group.
public struct ScoringSummary: Sendable, Equatable, Decodable {
    /// The format this type writes and reads; the file has no version field of its own (its
    /// bytes are what earlier runs wrote), so a change to the keys is a new version here.
    public static let version = 1

    public struct Index: Sendable, Equatable, Decodable {
        public var kind: String
        public var name: String
        public var psi: Double

        public init(kind: String, name: String, psi: Double) {
            self.kind = kind
            self.name = name
            self.psi = psi
        }
    }
    public struct Explanation: Sendable, Equatable, Decodable {
        public var steps: Int
        public var baseline: String
        public var worstCompletenessError: Double
        /// Target (`churn_logit`, `expected_spend`) → group → mean |attribution|.
        public var meanAbsoluteAttribution: [String: [String: Double]]

        public init(steps: Int, baseline: String, worstCompletenessError: Double, meanAbsoluteAttribution: [String: [String: Double]]) {
            self.steps = steps
            self.baseline = baseline
            self.worstCompletenessError = worstCompletenessError
            self.meanAbsoluteAttribution = meanAbsoluteAttribution
        }
    }
    public var run: String
    public var step: Int
    public var customers: Int
    public var drift: [Index]
    public var explanation: Explanation?

    public init(run: String, step: Int, customers: Int, drift: [Index], explanation: Explanation? = nil) {
        self.run = run
        self.step = step
        self.customers = customers
        self.drift = drift
        self.explanation = explanation
    }

    /// The attribution targets in the order they are written.
    public static let attributionTargets = ["churn_logit", "expected_spend"]

    /// The summary as one line of JSON: numbers to six significant digits (scores are float32),
    /// attribution groups in `groupOrder` (then any others by name).
    public func jsonText(groupOrder: [String]) -> String {
        func number(_ value: Double) -> String { value.isFinite ? String(format: "%.6g", value) : "null" }
        var text = "{\"run\":\(jsonString(run)),\"step\":\(step),\"customers\":\(customers)"
        text += ",\"drift\":[" + drift.map {
            "{\"kind\":\(jsonString($0.kind)),\"name\":\(jsonString($0.name)),\"psi\":\(number($0.psi))}"
        }.joined(separator: ",") + "]"
        if let explanation {
            func groups(_ values: [String: Double]) -> String {
                let names = groupOrder.filter { values[$0] != nil } + values.keys.filter { !groupOrder.contains($0) }.sorted()
                return "{" + names.map { "\(jsonString($0)):\(number(values[$0]!))" }.joined(separator: ",") + "}"
            }
            text += ",\"explanation\":{\"steps\":\(explanation.steps),\"baseline\":\(jsonString(explanation.baseline))"
            text += ",\"worst_completeness_error\":\(number(explanation.worstCompletenessError))"
            let targets = Self.attributionTargets.filter { explanation.meanAbsoluteAttribution[$0] != nil }
            text += ",\"mean_absolute_attribution\":{"
                + targets.map { "\(jsonString($0)):\(groups(explanation.meanAbsoluteAttribution[$0]!))" }.joined(separator: ",") + "}}"
        }
        return text + "}\n"
    }

    /// Writes `jsonText(groupOrder:)` atomically.
    public func write(to url: URL, groupOrder: [String]) throws {
        try writeFileAtomically(Data(jsonText(groupOrder: groupOrder).utf8), to: url)
    }

    public static func read(_ url: URL) throws(RunFileError) -> ScoringSummary {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw RunFileError(file: url.relativePath, "cannot read: \(error.localizedDescription)") }
        do {
            return try decode(data)
        } catch {
            throw RunFileError(file: url.relativePath, "is not a clm-score batch summary (--summary-out): \(error)")
        }
    }

    static func decode(_ data: Data) throws -> ScoringSummary {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(ScoringSummary.self, from: data)
    }
}
