import Checkpoints
import Foundation
import TextFormatting

/// Several runs side by side: each run's headline test metrics with its baselines' on the same
/// test customers, read from the runs' own files (`TrainingRun.load`). `clm-report --compare`
/// prints `text()` and writes `html()`.
public struct RunComparison: Sendable {
    public var runs: [TrainingRun]
    /// How each run was named on the command line, in `runs` order: its column heading's source
    /// note and the page's list of sources.
    public var givenPaths: [String]
    public var rows: [Row]

    /// One line of the table: a fact, a model metric or a baseline's value of that metric.
    public struct Row: Sendable, Equatable {
        public enum Kind: Sendable, Equatable {
            case fact
            /// A model's own metric; `higherIsBetter` picks the best run to mark.
            case metric(higherIsBetter: Bool)
            /// A baseline's value of the metric in the row above it.
            case baseline
        }
        /// `test_auc`, `test_bgnbd_auc`; the fact's name for facts.
        public var key: String
        public var label: String
        public var kind: Kind
        /// Per run, in `runs` order; nil where the run has no such value.
        public var cells: [String?]
        /// Per run, the number behind the cell (metrics and baselines only).
        public var values: [Double?]
        /// Runs whose value is the best of the row (model metrics only).
        public var best: Set<Int>
    }

    /// A headline metric: the row's id, its label, the better direction, the key each model
    /// kind logs it under, and the baselines each kind scored on the same test customers.
    struct Headline {
        var id: String
        var label: String
        var higherIsBetter: Bool
        var keys: [ModelKind: String]
        var baselines: [(id: String, label: String, keys: [ModelKind: String])]
    }

    static let headlines: [Headline] = {
        let bgnbd = "BG/NBD + Gamma-Gamma", floor = "logistic floor", boosting = "XGBoost"
        /// An LSTM churn or spend metric, with the baselines that scored it.
        func lstm(_ name: String, _ label: String, _ higherIsBetter: Bool, _ baselines: [(String, String)]) -> Headline {
            Headline(id: "test_" + name, label: label, higherIsBetter: higherIsBetter, keys: [.lstm: "test_" + name],
                     baselines: baselines.map { ("test_\($0.0)_\(name)", $0.1, [.lstm: "test_\($0.0)_\(name)"]) })
        }
        /// A stage metric: the LSTM's stage head logs it as `test_stage_*`, the graph model as `test_*`.
        func stage(_ name: String, _ label: String) -> Headline {
            Headline(id: "test_stage_" + name, label: label, higherIsBetter: true,
                     keys: [.lstm: "test_stage_" + name, .gnn: "test_" + name],
                     baselines: [("test_stage_nograph_" + name, "without the graph", [.gnn: "test_nograph_" + name]),
                                 ("test_stage_majority_" + name, "majority class",
                                  [.lstm: "test_stage_majority_" + name, .gnn: "test_majority_" + name])])
        }
        return [
            lstm("auc", "churn ROC AUC", true, [("bgnbd", bgnbd), ("logistic", floor), ("xgboost", boosting)]),
            lstm("log_loss", "churn log loss", false, [("bgnbd", bgnbd), ("logistic", floor), ("xgboost", boosting)]),
            lstm("brier", "churn Brier score", false, [("bgnbd", bgnbd), ("logistic", floor), ("xgboost", boosting)]),
            lstm("f1", "churn F1", true, [("bgnbd", bgnbd), ("logistic", floor), ("xgboost", boosting)]),
            lstm("clv_rmse", "spend RMSE", false, [("bgnbd", bgnbd), ("xgboost", boosting)]),
            lstm("spend_spearman", "spend Spearman", true, [("bgnbd", bgnbd), ("xgboost", boosting)]),
            lstm("spend_gini", "spend normalized Gini", true, [("bgnbd", bgnbd), ("xgboost", boosting)]),
            stage("macro_f1", "stage macro-F1"),
            stage("accuracy", "stage accuracy"),
        ]
    }()

    /// Loads every run directory (each error names the file at fault) and lays out the table.
    /// `paths` are shown as given, so a relative path stays relative.
    public static func load(paths: [String]) throws(ReportError) -> RunComparison {
        guard paths.count >= 2 else {
            throw ReportError(file: paths.first ?? "--compare", "--compare needs at least two run directories to set side by side")
        }
        var runs: [TrainingRun] = []
        for path in paths { runs.append(try TrainingRun.load(directory: URL(fileURLWithPath: path))) }
        return RunComparison(runs: runs, givenPaths: paths)
    }

    public init(runs: [TrainingRun], givenPaths: [String]) {
        self.runs = runs
        self.givenPaths = givenPaths
        var rows: [Row] = []
        func fact(_ key: String, _ label: String, _ value: (TrainingRun) -> String) {
            rows.append(Row(key: key, label: label, kind: .fact, cells: runs.map(value), values: runs.map { _ in nil }, best: []))
        }
        fact("model", "model") { $0.manifest.modelKind.rawValue }
        fact("checkpoint", "checkpoint") { "\($0.checkpointName) (\($0.pointerName))" }
        fact("epochs", "epochs logged") { formatCount($0.log.epochs.count) }
        fact("dataset", "dataset fingerprint") { String($0.manifest.datasetFingerprint.prefix(12)) }
        fact("test_customers", "test customers") { run in run.log.test["test_customers"].map { formatCount(Int($0.rounded())) } ?? "—" }
        /// A run's value of the metric a kind logs under `keys`.
        func values(_ keys: [ModelKind: String]) -> [Double?] {
            runs.map { run in keys[run.manifest.modelKind].flatMap { run.log.test[$0] } }
        }
        for headline in Self.headlines {
            let metric = values(headline.keys)
            guard metric.contains(where: { $0 != nil }) else { continue }
            let present = metric.enumerated().compactMap { index, value in value.map { (index, $0) } }
            let top = headline.higherIsBetter ? present.map(\.1).max() : present.map(\.1).min()
            rows.append(Row(key: headline.id, label: headline.label, kind: .metric(higherIsBetter: headline.higherIsBetter),
                            cells: metric.map { $0.map { formatMetric(headline.id, $0) } }, values: metric,
                            best: present.count > 1 ? Set(present.filter { $0.1 == top }.map(\.0)) : []))
            for baseline in headline.baselines {
                let baselineValues = values(baseline.keys)
                guard baselineValues.contains(where: { $0 != nil }) else { continue }
                rows.append(Row(key: baseline.id, label: "  " + baseline.label, kind: .baseline,
                                cells: baselineValues.map { $0.map { formatMetric(baseline.id, $0) } }, values: baselineValues, best: []))
            }
        }
        self.rows = rows
    }

    /// Why the numbers do not compare customer for customer, if they do not: runs trained on
    /// different datasets were tested on different customers.
    public var caveat: String? {
        let fingerprints = Set(runs.map(\.manifest.datasetFingerprint))
        guard fingerprints.count > 1 else { return nil }
        return "The runs were trained on \(fingerprints.count) different datasets (see the fingerprints): their test customers differ, so a difference between runs is not measured on the same customers."
    }

    /// Column headings: the run names, made unique with the checkpoint when two runs share one.
    var headings: [String] {
        let names = runs.map(\.manifest.runName)
        return runs.enumerated().map { index, run in
            names.filter { $0 == run.manifest.runName }.count > 1 ? "\(run.manifest.runName) \(run.checkpointName)" : run.manifest.runName
        }
    }

    /// The table as plain text, one row a line, columns padded; `*` marks the best run of a row.
    public func text() -> String {
        let headings = headings
        let cells = rows.map { row in
            // Every value cell ends in two characters, so the numbers stay aligned with a mark or without.
            row.cells.enumerated().map { index, cell in (cell ?? "—") + (row.kind == .fact ? "" : row.best.contains(index) ? " *" : "  ") }
        }
        let labelWidth = max("test metric".count, rows.map(\.label.count).max() ?? 0)
        let widths = headings.indices.map { column in
            max(headings[column].count, cells.map { $0[column].count }.max() ?? 0)
        }
        func line(_ label: String, _ columns: [String], rightAligned: Bool) -> String {
            var text = label.padding(toLength: labelWidth, withPad: " ", startingAt: 0)
            for (column, value) in columns.enumerated() {
                let padding = String(repeating: " ", count: widths[column] - value.count)
                text += "  " + (rightAligned ? padding + value : value + padding)
            }
            return text.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        var lines = [line("test metric", headings, rightAligned: false)]
        for (row, values) in zip(rows, cells) { lines.append(line(row.label, values, rightAligned: row.kind != .fact)) }
        lines.append("* the best run of the row; indented rows are that run's baselines on its own test customers")
        if let caveat { lines.append(caveat) }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The comparison as one self-contained HTML page, in the run report's style.
    public func html() -> String {
        let headings = headings
        var body = "<header>\n<h1>Runs compared: \(escapeXML(headings.joined(separator: ", ")))</h1>\n"
        body += "<p class=\"sources\">Every number below is read from these run directories' <code>\(TrainingRun.metricsLogName)</code> test records and checkpoint manifests: "
        body += givenPaths.map { "<code>\(escapeXML($0))</code>" }.joined(separator: ", ") + ".</p>\n</header>\n"
        body += "<section id=\"comparison\">\n<table class=\"metrics\" id=\"comparison-table\">\n<thead><tr><th>test metric</th>"
        body += zip(runs, headings).map { "<th data-run=\"\(escapeXML($0.manifest.runName))\">\(escapeXML($1))</th>" }.joined()
        body += "</tr></thead>\n<tbody>\n"
        for row in rows {
            let rowClass = row.kind == .baseline ? " class=\"baseline\"" : ""
            body += "<tr data-key=\"\(escapeXML(row.key))\"\(rowClass)><td>\(escapeXML(row.label.trimmingCharacters(in: .whitespaces)))</td>"
            for (index, cell) in row.cells.enumerated() {
                guard let cell else {
                    body += "<td class=\"number\">—</td>"
                    continue
                }
                if row.kind == .fact {
                    body += "<td>\(escapeXML(cell))</td>"
                } else {
                    let best = row.best.contains(index)
                    body += "<td class=\"number\(best ? " best" : "")\" data-value=\"\(row.values[index]!)\">\(escapeXML(cell))\(best ? " ★" : "")</td>"
                }
            }
            body += "</tr>\n"
        }
        body += "</tbody>\n</table>\n<p class=\"note\">★ marks the best run of a row. Indented grey rows are the baselines each run scored on its own test customers; the run report (<code>clm-report --run-dir DIR</code>) has their intervals and warnings.</p>\n"
        if let caveat { body += "<p class=\"warnings\" id=\"comparison-caveat\">\(escapeXML(caveat))</p>\n" }
        body += "</section>\n<footer>Made by clm-report --compare.</footer>\n"
        return htmlPage(title: "Runs compared: \(headings.joined(separator: ", "))", extraStyle: """
            tr.baseline td { color: #666; }
            tr.baseline td:first-child { padding-left: 18px; }
            td.best { font-weight: 600; }

            """, body: body)
    }
}
