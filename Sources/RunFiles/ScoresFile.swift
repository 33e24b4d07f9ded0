import CustomerData
import Foundation

/// The CSV scores file of `clm-score batch` (and `clm-score-mpi`): one row per customer with its
/// churn probability, expected spend, stage and its probabilities, action and, with `--explain`,
/// three reasons for each score. Scoring writes rows with `csvHeader` and `csvRow`; the report
/// reads them with `read`.
public enum ScoresFile {
    /// The format this type writes and reads; the file has no version field of its own (its
    /// bytes are what earlier runs wrote), so a change to the columns is a new version here.
    public static let version = 1
    public static let reasonsPerScore = 3

    /// One customer's row.
    public struct Row: Sendable, Equatable {
        public var customerID: String
        public var churnProbability: Double
        public var expectedSpend: Double
        public var historyPeriods: Int
        public var stage: String
        /// In the header's stage order.
        public var stageProbabilities: [Double]
        public var action: String
        public var stageSource: String
        /// Reason codes, most important first; empty without `--explain`.
        public var churnReasons: [String]
        public var spendReasons: [String]

        public init(customerID: String, churnProbability: Double, expectedSpend: Double, historyPeriods: Int, stage: String,
                    stageProbabilities: [Double], action: String, stageSource: String,
                    churnReasons: [String] = [], spendReasons: [String] = []) {
            self.customerID = customerID
            self.churnProbability = churnProbability
            self.expectedSpend = expectedSpend
            self.historyPeriods = historyPeriods
            self.stage = stage
            self.stageProbabilities = stageProbabilities
            self.action = action
            self.stageSource = stageSource
            self.churnReasons = churnReasons
            self.spendReasons = spendReasons
        }
    }

    /// A whole file: the stage names of its probability columns and its rows with their lines.
    public struct Contents: Sendable {
        public var stageNames: [String]
        public var hasReasons: Bool
        public var rows: [(line: Int, row: Row)]
    }

    /// The header line, newline included: one `p_<stage>` column per stage, reason columns with `explain`.
    public static func csvHeader(stageNames: [String], explain: Bool) -> String {
        let stageColumns = stageNames.map { "p_\($0)" }.joined(separator: ",")
        let reasonColumns = explain ? "," + reasonColumnNames.joined(separator: ",") : ""
        return "customer_id,churn_probability,expected_spend,history_periods,stage,\(stageColumns),action,stage_source\(reasonColumns)\n"
    }

    static let reasonColumnNames = (1...reasonsPerScore).map { "churn_reason_\($0)" } + (1...reasonsPerScore).map { "spend_reason_\($0)" }

    /// One row under `csvHeader`, newline included. `churnReasons` and `spendReasons` are given
    /// exactly when the header has reason columns; missing ones are written empty.
    public static func csvRow(_ row: Row, explain: Bool) -> String {
        var text = csvField(row.customerID)
        text += ",\(formatNumber(row.churnProbability)),\(formatNumber(row.expectedSpend)),\(row.historyPeriods),\(row.stage)"
        for p in row.stageProbabilities { text += ",\(formatNumber(p))" }
        text += ",\(row.action),\(row.stageSource)"
        if explain {
            for list in [row.churnReasons, row.spendReasons] {
                for k in 0..<reasonsPerScore { text += "," + (k < list.count ? csvField(list[k]) : "") }
            }
        }
        return text + "\n"
    }

    /// Reads a scores file; every error names the file and line.
    public static func read(_ url: URL) throws(RunFileError) -> Contents {
        let table = try CSVTable.read(url)
        let id = try table.column("customer_id"), churn = try table.column("churn_probability")
        let spend = try table.column("expected_spend"), history = try table.column("history_periods")
        let stage = try table.column("stage"), action = try table.column("action"), source = try table.column("stage_source")
        guard stage < action else { throw RunFileError(file: table.source, line: 1, "the stage probability columns must lie between stage and action") }
        let stageColumns = Array(stage + 1..<action)
        for column in stageColumns where !table.header[column].hasPrefix("p_") {
            throw RunFileError(file: table.source, line: 1, "column \"\(table.header[column])\" between stage and action is not a stage probability (p_NAME)")
        }
        let hasReasons = table.header.contains(reasonColumnNames[0])
        let reasonColumns = hasReasons ? try reasonColumnNames.map { name throws(RunFileError) in try table.column(name) } : []
        var rows: [(line: Int, row: Row)] = []
        rows.reserveCapacity(table.rows.count)
        for fields in table.rows {
            func reasons(_ columns: ArraySlice<Int>) -> [String] { columns.map { fields.fields[$0] }.filter { !$0.isEmpty } }
            let row = Row(
                customerID: fields.fields[id], churnProbability: try table.number(fields, churn), expectedSpend: try table.number(fields, spend),
                historyPeriods: try table.integer(fields, history), stage: fields.fields[stage].trimmingCharacters(in: .whitespaces),
                stageProbabilities: try stageColumns.map { column throws(RunFileError) in try table.number(fields, column) },
                action: fields.fields[action].trimmingCharacters(in: .whitespaces), stageSource: fields.fields[source],
                churnReasons: reasons(reasonColumns.prefix(reasonsPerScore)), spendReasons: reasons(reasonColumns.dropFirst(reasonsPerScore)))
            rows.append((fields.line, row))
        }
        return Contents(stageNames: stageColumns.map { String(table.header[$0].dropFirst(2)) }, hasReasons: hasReasons, rows: rows)
    }

    /// Six decimals, trailing zeros trimmed: scores are float32, so more digits would be noise.
    ///
    /// Integer arithmetic rather than `String(format:)`, which dominated writing millions of rows.
    @inlinable
    public static func formatNumber(_ value: Double) -> String {
        guard value.isFinite else { return "0" }
        guard abs(value) < 1e12 else { return String(value) }
        let scaled = Int64((abs(value) * 1e6).rounded())
        var fraction = scaled % 1_000_000
        var text = (value < 0 && scaled != 0 ? "-" : "") + String(scaled / 1_000_000) + "."
        guard fraction != 0 else { return text + "0" }
        var digits = 6
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let body = String(fraction)
        text += String(repeating: "0", count: digits - body.count) + body
        return text
    }
}
