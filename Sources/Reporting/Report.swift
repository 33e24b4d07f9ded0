import Checkpoints
import Foundation
import ModelMetrics
import TextFormatting

/// What one report is made of: a training run, optionally a graph-model run, optionally the
/// stage and action counts of a batch-scoring output.
public struct ReportInputs: Sendable {
    public var run: TrainingRun
    public var gnnRun: TrainingRun?
    public var scores: ScoreDistribution?
    /// The scores file's path, shown as the source of its charts.
    public var scoresPath: String?
    /// A batch-scoring summary: drift and, when explained, the attributions.
    public var summary: ScoringSummary?
    public var summaryPath: String?

    public init(run: TrainingRun, gnnRun: TrainingRun? = nil, scores: ScoreDistribution? = nil, scoresPath: String? = nil,
                summary: ScoringSummary? = nil, summaryPath: String? = nil) {
        self.run = run
        self.gnnRun = gnnRun
        self.scores = scores
        self.scoresPath = scoresPath
        self.summary = summary
        self.summaryPath = summaryPath
    }

    /// Loads every input, checking that the second run really is a graph model.
    public static func load(run: URL, gnnRun: URL?, scores: URL?, summary: URL? = nil) throws(ReportError) -> ReportInputs {
        let first = try TrainingRun.load(directory: run)
        var second: TrainingRun? = nil
        if let gnnRun {
            let loaded = try TrainingRun.load(directory: gnnRun)
            guard loaded.manifest.modelKind == .gnn else {
                throw ReportError(file: gnnRun.relativePath, "the graph-model run (--gnn-run) is a \(loaded.manifest.modelKind.rawValue) run; it must be a graph-model (gnn) run")
            }
            guard first.manifest.modelKind != .gnn else {
                throw ReportError(file: run.relativePath, "the run (--run) is a graph-model run too; name an LSTM run there, or leave out --gnn-run")
            }
            second = loaded
        }
        let stageOrder = second?.stageNames ?? first.stageNames
        var distribution: ScoreDistribution? = nil
        if let scores { distribution = try ScoreDistribution.read(scores, stageOrder: stageOrder) }
        let scoring = try summary.map { url throws(ReportError) in try ScoringSummary.read(url) }
        return ReportInputs(run: first, gnnRun: second, scores: distribution, scoresPath: scores?.relativePath,
                            summary: scoring, summaryPath: summary?.relativePath)
    }

    var runs: [TrainingRun] { [run] + (gnnRun.map { [$0] } ?? []) }
    var lstmRun: TrainingRun? { runs.first { $0.manifest.modelKind == .lstm } }
    var graphRun: TrainingRun? { runs.first { $0.manifest.modelKind == .gnn } }
}

/// Most points a scatter shows; more make a blot and a large file.
public let scatterLimit = 2000

/// Stable id prefix of a run's elements: its model kind (a report holds at most one of each).
func prefix(_ run: TrainingRun) -> String { run.manifest.modelKind.rawValue }

func modelDescription(_ kind: ModelKind) -> String {
    switch kind {
    case .lstm: return "LSTM (churn + CLV)"
    case .gnn: return "GraphSAGE (lifecycle stage)"
    }
}

/// A metric value as the report prints it: counts whole, everything else to four decimals.
public func formatMetric(_ key: String, _ value: Double) -> String {
    if key.hasSuffix("customers") || key.contains("confusion") || key == "epoch" || key == "step" || key.contains("evaluated_") {
        return formatCount(Int(value.rounded()))
    }
    return String(format: "%.4f", value)
}

/// Test metrics in reading order: the headline ones first, the rest alphabetically;
/// confusion counts are left to the matrix.
func orderedTestMetrics(_ metrics: [String: Double]) -> [(String, Double)] {
    let preferred = ["test_auc", "test_log_loss", "test_brier", "test_f1", "test_accuracy", "test_macro_f1", "test_loss",
                     "test_clv_rmse", "test_clv_rmse_log", "test_clv_mae", "test_customers"]
    // The test record also holds the final validation and the baselines; those have their own table.
    let rest = metrics.keys.filter { key in
        key.hasPrefix("test_") && !preferred.contains(key) && !key.contains("confusion") && !key.contains("_ci_")
            && !key.contains("_bgnbd_") && !key.contains("_logistic_") && !key.contains("_xgboost_") && !key.contains("_decile_")
    }.sorted()
    return (preferred + rest).compactMap { key in metrics[key].map { (key, $0) } }
}

/// The whole report as one HTML document: inline CSS and SVG, no script, nothing fetched.
public func renderReport(_ inputs: ReportInputs) -> String {
    let names = inputs.runs.map(\.manifest.runName).joined(separator: ", ")
    var body = "<header>\n<h1>Training report: \(escapeXML(names))</h1>\n"
    body += "<p class=\"sources\">Every number below is read or computed from these files: "
    var sources = inputs.runs.flatMap { run in
        [TrainingRun.metricsLogName, TrainingRun.predictionsName, run.pointerName, run.checkpointName + "/manifest.json"]
            .map { run.directory.appendingPathComponent($0).relativePath }
    }
    if let path = inputs.scoresPath { sources.append(path) }
    if let path = inputs.summaryPath { sources.append(path) }
    body += sources.map { "<code>\(escapeXML($0))</code>" }.joined(separator: ", ") + ".</p>\n</header>\n"

    body += "<section id=\"runs\" class=\"cards\">\n" + inputs.runs.map(runCard).joined() + "</section>\n"
    for run in inputs.runs { body += trainingSection(run) }
    body += churnSection(inputs.lstmRun)
    body += baselineSection(inputs.lstmRun)
    body += lstmStageSection(inputs.lstmRun)
    body += stageSection(inputs.graphRun)
    body += graphEvidenceSection(inputs.graphRun)
    body += scoresSection(inputs)
    body += reasonsSection(inputs)
    body += driftSection(inputs)
    body += "<footer>Made by clm-report. Charts are SVG drawn into this file; it needs no network and no script.</footer>\n"

    return htmlPage(title: "Training report: \(names)", body: body)
}

/// A self-contained page: the report's stylesheet, then `extraStyle`, and `body` as it is.
func htmlPage(title: String, extraStyle: String = "", body: String) -> String {
    """
    <!DOCTYPE html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>\(escapeXML(title))</title>
    <style>
    \(stylesheet)
    \(extraStyle)</style>
    </head>
    <body>
    \(body)</body>
    </html>

    """
}

/// Header facts and the test-metric table of one run.
func runCard(_ run: TrainingRun) -> String {
    let id = prefix(run)
    let manifest = run.manifest
    var html = "<article class=\"card\" id=\"\(id)-run\" data-run=\"\(escapeXML(manifest.runName))\">\n"
    html += "<h2>\(escapeXML(manifest.runName))</h2>\n<table class=\"facts\" id=\"\(id)-facts\">\n"
    let facts: [(String, String, String)] = [
        ("model", "model", modelDescription(manifest.modelKind)),
        ("step", "checkpoint step", "\(formatCount(manifest.step)) (\(run.checkpointName), epoch \(manifest.epoch)), named by \(run.pointerName)"),
        ("world-size", "world size", "\(manifest.worldSize) rank\(manifest.worldSize == 1 ? "" : "s")"),
        ("created", "created", manifest.createdAt),
        ("epochs", "epochs logged", formatCount(run.log.epochs.count)),
        ("test-rows", "test predictions", formatCount(run.predictions.count)),
    ]
    for (key, label, value) in facts {
        html += "<tr><th>\(escapeXML(label))</th><td data-fact=\"\(key)\">\(escapeXML(value))</td></tr>\n"
    }
    html += "</table>\n"
    let metrics = orderedTestMetrics(run.log.test)
    if metrics.isEmpty {
        html += "<p class=\"note\">The metrics log has no test record (the run has not finished).</p>\n"
    } else {
        html += "<table class=\"metrics\" id=\"\(id)-test-metrics\">\n<thead><tr><th>test metric</th><th>value</th></tr></thead>\n<tbody>\n"
        for (key, value) in metrics {
            html += "<tr data-metric=\"\(escapeXML(key))\"><td>\(escapeXML(key))</td><td class=\"number\" data-value=\"\(value)\">\(formatMetric(key, value))</td></tr>\n"
        }
        html += "</tbody>\n</table>\n"
    }
    return html + "</article>\n"
}

/// Per-epoch curves from the metrics log: losses, validation quality, throughput, all-reduce share.
func trainingSection(_ run: TrainingRun) -> String {
    let id = prefix(run)
    let epochs = run.log.epochs
    let xAxis = Axis.epochs(epochs.map(\.epoch).max() ?? 1)
    func series(_ key: String, _ name: String, _ color: String, scale: Double = 1, dashed: Bool = false) -> Series {
        Series(name: name, key: key, points: epochs.compactMap { record in record[key].map { (x: Double(record.epoch), y: $0 * scale) } },
               color: color, dashed: dashed)
    }
    func chart(_ suffix: String, _ title: String, _ yLabel: String, _ lines: [Series], includeZero: Bool = false) -> String {
        let values = lines.flatMap { $0.points.map(\.y) }
        let chartID = "\(id)-\(suffix)"
        guard !values.isEmpty else {
            return figure(placeholderChart(id: chartID, title: title, message: "not in \(TrainingRun.metricsLogName)"), caption: nil)
        }
        return figure(lineChart(id: chartID, title: title, x: xAxis, y: .linear(yLabel, values: values, includeZero: includeZero),
                                series: lines), caption: nil)
    }
    var html = "<section class=\"training\" id=\"\(id)-training\">\n<h2>Training: \(escapeXML(run.manifest.runName))</h2>\n<div class=\"grid\">\n"
    html += chart("loss", "Loss per epoch", "loss",
                  [series("train_loss", "training", palette[0]), series("val_loss", "validation", palette[1], dashed: true)])
    switch run.manifest.modelKind {
    case .lstm:
        html += chart("val-auc", "Validation ROC AUC per epoch", "AUC", [series("val_auc", "validation AUC", palette[2])])
    case .gnn:
        html += chart("val-quality", "Validation accuracy and macro-F1 per epoch", "score",
                      [series("val_accuracy", "accuracy", palette[2]), series("val_macro_f1", "macro-F1", palette[3], dashed: true)])
    }
    html += chart("throughput", "Throughput per epoch (all ranks)", "samples per second",
                  [series("samples_per_second", "samples/s", palette[4])], includeZero: true)
    html += chart("allreduce", "Share of epoch time in gradient all-reduce", "% of epoch time (rank 0)",
                  [series("allreduce_share", "all-reduce", palette[5], scale: 100)], includeZero: true)
    return html + "</div>\n</section>\n"
}

/// ROC, calibration and spend charts from the LSTM run's test predictions.
func churnSection(_ run: TrainingRun?) -> String {
    var html = "<section id=\"churn\">\n<h2>Churn and spend on the test split</h2>\n"
    guard let run, case .churn(let rows) = run.predictions else {
        return html + "<p class=\"note\" id=\"churn-missing\">No LSTM run was given, so there is no churn or spend chart.</p>\n</section>\n"
    }
    let analysis = ChurnAnalysis(rows)
    let logged = run.log.test["test_auc"]
    html += "<p class=\"auc\" id=\"auc-comparison\">ROC AUC recomputed from <code>\(TrainingRun.predictionsName)</code> "
        + "(\(formatCount(analysis.count)) customers, \(formatCount(analysis.positives)) churned): "
    if let auc = analysis.auc {
        html += "<strong id=\"auc-computed\" data-value=\"\(auc)\">\(String(format: "%.4f", auc))</strong>"
    } else {
        html += "<strong id=\"auc-computed\">undefined (the test split has only one class)</strong>"
    }
    if let logged {
        html += "; logged <code>test_auc</code>: <strong id=\"auc-logged\" data-value=\"\(logged)\">\(String(format: "%.4f", logged))</strong>"
        if let auc = analysis.auc {
            let difference = abs(auc - logged)
            html += difference < 1e-6 ? " (they agree)." : " (they differ by \(String(format: "%.2g", difference)): the CSV and the log are not from the same evaluation)."
        }
    } else {
        html += "; the log has no <code>test_auc</code>."
    }
    html += "</p>\n<div class=\"grid\">\n"

    if analysis.roc.isEmpty {
        html += figure(placeholderChart(id: "roc", title: "ROC curve (test split)", message: "needs churned and retained customers"), caption: nil)
    } else {
        let aucText = analysis.auc.map { String(format: "%.4f", $0) } ?? "n/a"
        let curve = Series(name: "test split, AUC \(aucText)", key: "roc",
                           points: analysis.roc.map { (x: $0.falsePositiveRate, y: $0.truePositiveRate) }, color: palette[0])
        html += figure(lineChart(id: "roc", title: "ROC curve, churn (test split)",
                                 x: .linear("false-positive rate", values: [], fixed: 0...1),
                                 y: .linear("true-positive rate", values: [], fixed: 0...1),
                                 series: [curve], diagonal: "chance"),
                       caption: "One point per distinct predicted probability; ties move the curve diagonally.")
    }
    html += figure(calibrationChart(id: "calibration", title: "Calibration, churn (test split, 10 bins)", bins: analysis.calibration),
                   caption: "Bins of width 0.1 by predicted probability; empty bins have no point.")
    let sample = deterministicSample(rows, limit: scatterLimit)
    let shown = sample.count == rows.count
        ? "All \(formatCount(rows.count)) test customers."
        : "\(formatCount(sample.count)) of \(formatCount(rows.count)) test customers, chosen by a hash of their dataset row (the same ones every time)."
    html += figure(spendScatter(id: "spend", title: "Predicted vs actual spend (test split)", rows: sample),
                   caption: shown + " Customers with no spend sit on the left edge.")

    let deciles = spendDeciles(rows)
    let decileValues = deciles.flatMap { [$0.meanPredicted, $0.meanActual] }
    html += figure(lineChart(
        id: "spend-deciles", title: "Mean spend per decile of predicted spend (test split)",
        x: .linear("decile of predicted spend (1 = lowest)", values: [], fixed: 1...10),
        y: .linear("mean spend over the horizon", values: decileValues, includeZero: true),
        series: [Series(name: "predicted", key: "decile-predicted", points: deciles.map { (x: Double($0.decile), y: $0.meanPredicted) }, color: palette[0]),
                 Series(name: "actual", key: "decile-actual", points: deciles.map { (x: Double($0.decile), y: $0.meanActual) }, color: palette[1], dashed: true)]),
        caption: "Customers sorted by predicted spend into ten equal groups. Where the lines meet, the expected spend is right on average; budgets sized from it add up.")

    let gain = cumulativeGain(scores: rows.map(\.probability), labels: rows.map(\.churned))
    if gain.isEmpty {
        html += figure(placeholderChart(id: "churn-gain", title: "Cumulative gain, churn (test split)", message: "needs churned customers"), caption: nil)
    } else {
        html += figure(lineChart(
            id: "churn-gain", title: "Cumulative gain, churn (test split)",
            x: .linear("share of customers targeted, highest churn probability first", values: [], fixed: 0...1),
            y: .linear("share of churners reached", values: [], fixed: 0...1),
            series: [Series(name: "model", key: "gain", points: gain.map { (x: $0.targeted, y: $0.reached) }, color: palette[2])],
            diagonal: "random targeting"),
            caption: "How many of the customers who churned a retention campaign reaches when it targets the riskiest share first.")
    }
    let gini = normalizedGini(predicted: rows.map(\.expectedSpend), actual: rows.map(\.spend))
    html += "</div>\n<p id=\"spend-gini\">Normalized Gini of predicted spend against actual spend (1 ranks customers perfectly by value, 0 is chance): "
    html += gini.map { "<strong data-value=\"\($0)\">\(String(format: "%.4f", $0))</strong>" } ?? "undefined (no customer spent anything)"
    if let logged = run.log.test["test_spend_gini"] { html += "; logged <code>test_spend_gini</code>: \(String(format: "%.4f", logged))" }
    return html + ".</p>\n</section>\n"
}

/// The model against its baselines on the same test customers, with the bootstrap intervals
/// and every warning the trainer logged: a weak result is shown as plainly as a strong one.
func baselineSection(_ run: TrainingRun?) -> String {
    var html = "<section id=\"baselines\">\n<h2>The model against its baselines (same test customers)</h2>\n"
    guard let run else { return html + "<p class=\"note\">No LSTM run was given.</p>\n</section>\n" }
    let test = run.log.test
    let baselines = [("bgnbd", "BG/NBD + Gamma-Gamma"), ("logistic", "logistic floor"), ("xgboost", "XGBoost")]
    guard baselines.contains(where: { name, _ in test["test_\(name)_auc"] != nil }) else {
        return html + "<p class=\"note\" id=\"baselines-missing\">The metrics log has no baseline metrics (a run from before they were added, or not finished).</p>\n</section>\n"
    }
    let metrics: [(String, String, Bool)] = [
        ("auc", "churn ROC AUC", true), ("log_loss", "churn log loss", false), ("brier", "churn Brier score", false),
        ("clv_rmse", "spend RMSE", false), ("clv_rmse_without_top_0_1pct", "spend RMSE without the top 0.1% spenders", false),
        ("spend_spearman", "spend Spearman", true), ("spend_gini", "spend normalized Gini", true),
    ]
    html += "<table class=\"metrics\" id=\"baseline-table\">\n<thead><tr><th>test metric</th><th>LSTM</th>"
    html += baselines.map { "<th>\(escapeXML($0.1))</th>" }.joined() + "</tr></thead>\n<tbody>\n"
    for (key, label, higherIsBetter) in metrics {
        guard let model = test["test_" + key] else { continue }
        html += "<tr data-metric=\"\(key)\"><td>\(escapeXML(label))</td><td class=\"number\" data-value=\"\(model)\">\(String(format: "%.4f", model))</td>"
        for (name, _) in baselines {
            guard let value = test["test_\(name)_\(key)"] else {
                html += "<td class=\"number\">—</td>"
                continue
            }
            let beatsModel = higherIsBetter ? value > model : value < model
            html += "<td class=\"number\(beatsModel ? " worse" : "")\" data-baseline=\"\(name)\" data-value=\"\(value)\">\(String(format: "%.4f", value))\(beatsModel ? " ▲" : "")</td>"
        }
        html += "</tr>\n"
    }
    html += "</tbody>\n</table>\n<p class=\"note\">▲ marks a baseline that beats the LSTM on that metric.</p>\n"
    // Calibration of the spend head: the test customers in tenths by predicted spend.
    let predictors = [("", "LSTM")] + baselines.map { ($0.0 + "_", $0.1) }
    let calibrated = predictors.filter { prefix, _ in test["test_\(prefix)spend_decile_1_predicted"] != nil }
    if !calibrated.isEmpty {
        html += "<table class=\"metrics\" id=\"spend-decile-table\">\n<thead><tr><th>decile of predicted spend</th>"
            + calibrated.map { "<th>\(escapeXML($0.1)): mean predicted / actual</th>" }.joined() + "</tr></thead>\n<tbody>\n"
        for decile in 1...10 {
            html += "<tr><td>\(decile)</td>"
            for (prefix, _) in calibrated {
                let predicted = test["test_\(prefix)spend_decile_\(decile)_predicted"], actual = test["test_\(prefix)spend_decile_\(decile)_actual"]
                html += "<td class=\"number\">" + (predicted.flatMap { p in actual.map { String(format: "%.1f / %.1f", p, $0) } } ?? "—") + "</td>"
            }
            html += "</tr>\n"
        }
        html += "</tbody>\n</table>\n"
    }
    var intervals: [String] = []
    func interval(_ key: String, _ text: String, signed: Bool = true) {
        guard let low = test["test_\(key)_ci_low"], let high = test["test_\(key)_ci_high"] else { return }
        let format = signed ? "%+.4f" : "%.4f"
        intervals.append("<li data-interval=\"\(key)\">\(escapeXML(text)): \(String(format: format, low)) to \(String(format: format, high))</li>")
    }
    interval("auc", "LSTM churn AUC", signed: false)
    interval("auc_minus_bgnbd", "LSTM AUC minus BG/NBD's, paired")
    interval("auc_minus_logistic", "LSTM AUC minus the logistic floor's, paired")
    interval("auc_minus_xgboost", "LSTM AUC minus XGBoost's, paired")
    interval("clv_rmse_minus_bgnbd", "LSTM spend RMSE minus BG/NBD + Gamma-Gamma's, paired (negative: the LSTM errs less)")
    interval("clv_rmse_minus_xgboost", "LSTM spend RMSE minus XGBoost's, paired (negative: the LSTM errs less)")
    if !intervals.isEmpty {
        html += "<p>95% bootstrap intervals over the \(formatCount(Int(test["test_customers"] ?? 0))) test customers (1,000 Poisson resamples); an interval that spans 0 is no evidence of a difference:</p>\n<ul id=\"intervals\">\n"
            + intervals.joined(separator: "\n") + "\n</ul>\n"
    }
    if !run.log.testWarnings.isEmpty {
        html += "<div class=\"warnings\" id=\"warnings\"><strong>Warnings the run logged:</strong>\n<ul>\n"
            + run.log.testWarnings.map { "<li>\(escapeXML($0))</li>" }.joined(separator: "\n") + "\n</ul>\n</div>\n"
    }
    return html + "</section>\n"
}

/// The graph model next to its no-graph ablation and the majority class, with intervals.
func graphEvidenceSection(_ run: TrainingRun?) -> String {
    guard let run, run.manifest.modelKind == .gnn else { return "" }
    let test = run.log.test
    var html = "<section id=\"graph-evidence\">\n<h2>Does the graph help? The model, without the graph, and the majority class (test split)</h2>\n"
    let warnings = run.log.testWarnings.isEmpty ? ""
        : "<div class=\"warnings\" id=\"graph-warnings\"><strong>Warnings the run logged:</strong>\n<ul>\n"
            + run.log.testWarnings.map { "<li>\(escapeXML($0))</li>" }.joined(separator: "\n") + "\n</ul>\n</div>\n"
    guard test["test_nograph_macro_f1"] != nil else {
        return html + "<p class=\"note\" id=\"graph-evidence-missing\">The run trained no ablation (<code>gnn.ablation: false</code>, or a run from before it existed).</p>\n"
            + warnings + "</section>\n"
    }
    func cell(_ key: String) -> String {
        guard let value = test["test_" + key] else { return "<td class=\"number\">—</td>" }
        var text = String(format: "%.4f", value)
        if let low = test["test_\(key)_ci_low"], let high = test["test_\(key)_ci_high"] {
            text += String(format: " (%.4f–%.4f)", low, high)
        }
        return "<td class=\"number\" data-metric=\"\(key)\" data-value=\"\(value)\">\(text)</td>"
    }
    html += "<table class=\"metrics\" id=\"graph-evidence-table\">\n<thead><tr><th>test metric (95% CI)</th><th>GraphSAGE</th><th>no graph</th><th>XGBoost</th><th>majority class</th></tr></thead>\n<tbody>\n"
    for (key, label) in [("macro_f1", "macro-F1"), ("accuracy", "accuracy")] {
        html += "<tr><td>\(label)</td>" + cell(key) + cell("nograph_" + key) + cell("xgboost_" + key) + cell("majority_" + key) + "</tr>\n"
    }
    html += "</tbody>\n</table>\n"
    if let low = test["test_macro_f1_minus_nograph_ci_low"], let high = test["test_macro_f1_minus_nograph_ci_high"] {
        let verdict = low > 0 ? "the graph helps: the interval is above zero"
            : high < 0 ? "the graph hurts: the interval is below zero" : "no evidence either way: the interval spans zero"
        html += "<p id=\"graph-verdict\">Macro-F1 of the model minus the no-graph ablation on the same customers, paired 95% bootstrap interval: "
            + String(format: "%+.4f to %+.4f", low, high) + " — \(verdict).</p>\n"
    }
    if let low = test["test_macro_f1_minus_xgboost_ci_low"], let high = test["test_macro_f1_minus_xgboost_ci_high"] {
        let verdict = low > 0 ? "the graph model wins: the interval is above zero"
            : high < 0 ? "XGBoost wins: the interval is below zero" : "no evidence either way: the interval spans zero"
        html += "<p id=\"graph-versus-boosting\">Macro-F1 of the model minus XGBoost on the customer's and its products' summaries, paired 95% bootstrap interval: "
            + String(format: "%+.4f to %+.4f", low, high) + " — \(verdict).</p>\n"
    }
    return html + warnings + "</section>\n"
}

/// The LSTM stage head's confusion matrix, when the run has one.
func lstmStageSection(_ run: TrainingRun?) -> String {
    guard let run, case .churn(let rows) = run.predictions, rows.first?.stage != nil else { return "" }
    let staged = rows.compactMap { row in row.stage.flatMap { stage in row.predictedStage.map { (stage, $0) } } }
    let classCount = max(run.stageNames.count, (staged.map { max($0.0, $0.1) }.max() ?? 0) + 1)
    let stageRows = staged.enumerated().map { StagePrediction(datasetRow: $0.offset, stage: $0.element.0, predicted: $0.element.1) }
    return stageConfusionSection(run: run, rows: stageRows, classCount: classCount, id: "lstm-stages",
                                 heading: "Lifecycle stages from the LSTM's stage head (test split)", loggedPrefix: "test_stage_confusion_")
}

/// The confusion matrix of the graph run's test predictions, checked against the logged counts.
func stageSection(_ run: TrainingRun?) -> String {
    var html = "<section id=\"stages\">\n<h2>Lifecycle stages from the graph model (test split)</h2>\n"
    guard let run, case .stages(let rows, let classCount) = run.predictions else {
        return html + "<p class=\"note\" id=\"stages-missing\">No graph-model run was given (<code>--gnn-run DIR</code>), so there is no graph confusion matrix.</p>\n</section>\n"
    }
    return stageConfusionSection(run: run, rows: rows, classCount: classCount, id: "stages",
                                 heading: "Lifecycle stages from the graph model (test split)", loggedPrefix: "test_confusion_", chartID: "confusion")
}

/// A confusion matrix of `rows`, checked against the counts logged under `loggedPrefix`.
func stageConfusionSection(run: TrainingRun, rows: [StagePrediction], classCount: Int, id: String, heading: String,
                           loggedPrefix: String, chartID: String? = nil) -> String {
    var html = "<section id=\"\(id)\">\n<h2>\(escapeXML(heading))</h2>\n"
    let matrix = confusionMatrix(rows, classCount: classCount)
    let names = (0..<classCount).map { $0 < run.stageNames.count ? run.stageNames[$0] : "stage \($0)" }
    var mismatches: [String] = []
    var logged = 0
    for actual in 0..<classCount {
        for predicted in 0..<classCount {
            guard let value = run.log.test["\(loggedPrefix)\(actual)_\(predicted)"] else { continue }
            logged += 1
            if Int(value) != matrix[actual][predicted] { mismatches.append("\(names[actual])→\(names[predicted])") }
        }
    }
    let correct = (0..<classCount).reduce(0) { $0 + matrix[$1][$1] }
    html += "<div class=\"grid\">\n"
    var caption = "Rows: actual stage; columns: predicted; shading and percentages: share of the row. "
        + "\(formatCount(rows.count)) test customers of \(escapeXML(run.manifest.runName)); "
        + "\(formatCount(correct)) on the diagonal (accuracy \(String(format: "%.4f", Double(correct) / Double(max(rows.count, 1))))). "
    if logged == 0 {
        caption += "The log has no \(loggedPrefix)* counts to compare with."
    } else if mismatches.isEmpty {
        caption += "Equal to the logged \(loggedPrefix)* counts."
    } else {
        caption += "Differs from the logged counts at \(escapeXML(mismatches.joined(separator: ", ")))."
    }
    html += figure(confusionChart(id: chartID ?? "\(id)-confusion", title: "Confusion matrix, lifecycle stage (test split)", matrix: matrix, names: names),
                   caption: caption, escaped: true)
    return html + "</div>\n</section>\n"
}

/// Distribution of scored customers over stages and actions, or a note when no scores were given.
func scoresSection(_ inputs: ReportInputs) -> String {
    var html = "<section id=\"scored\">\n<h2>Scored customers: lifecycle stages and actions</h2>\n"
    guard let scores = inputs.scores else {
        return html + "<p class=\"note\" id=\"scores-missing\">No scores file was given (<code>--scores scores.csv</code>, written by batch scoring), so the distribution over stages and actions is not shown.</p>\n</section>\n"
    }
    html += "<p>\(formatCount(scores.customers)) customers in <code>\(escapeXML(inputs.scoresPath ?? "scores"))</code>.</p>\n<div class=\"grid\">\n"
    html += figure(barChart(id: "stage-distribution", title: "Customers per lifecycle stage", axisLabel: "customers",
                            items: scores.stages, color: palette[0]), caption: nil)
    html += figure(barChart(id: "action-distribution", title: "Customers per recommended action", axisLabel: "customers",
                            items: scores.actions, color: palette[2]), caption: nil)
    return html + "</div>\n</section>\n"
}

/// Which inputs drive the scores: mean absolute attribution per reason group, and the first
/// churn reason of the customers of each action.
func reasonsSection(_ inputs: ReportInputs) -> String {
    var html = "<section id=\"reasons\">\n<h2>Why customers got their scores: reason codes</h2>\n"
    guard let summary = inputs.summary, let explanation = summary.explanation else {
        return html + "<p class=\"note\" id=\"reasons-missing\">No explained scoring summary was given (<code>clm-score batch --explain --summary-out summary.json</code>, then <code>--summary summary.json</code>), so the attribution charts are not shown.</p>\n</section>\n"
    }
    html += "<p>Integrated gradients over the \(formatCount(summary.customers)) customers scored with step \(summary.step) of run <code>\(escapeXML(summary.run))</code>, "
        + "\(explanation.steps) points from the \(escapeXML(explanation.baseline)) baseline; every customer's attributions add up to its score change within "
        + "\(String(format: "%.2g", explanation.worstCompletenessError * 100))%. A group is one input over the customer's last 4 periods or over the periods before them.</p>\n<div class=\"grid\">\n"
    for (target, title, id, color) in [("churn_logit", "Mean |attribution| to the churn logit", "attribution-churn", palette[0]),
                                      ("expected_spend", "Mean |attribution| to the expected spend", "attribution-spend", palette[2])] {
        let groups = (explanation.meanAbsoluteAttribution[target] ?? [:]).sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        html += figure(valueBarChart(id: id, title: title, axisLabel: target == "churn_logit" ? "logit" : "spend",
                                     items: Array(groups.prefix(8)).map { ($0.key, $0.value) }, color: color) { String(format: "%.3g", $0) },
                       caption: nil)
    }
    html += "</div>\n"
    if let reasons = inputs.scores?.firstReasons, !reasons.isEmpty {
        html += "<table class=\"metrics\" id=\"reasons-by-action\">\n<tr><th>action</th><th>customers</th><th>most common first churn reasons (share of the action's customers)</th></tr>\n"
        for (action, count) in inputs.scores!.actions {
            let top = (reasons[action] ?? []).prefix(3).map { "\(escapeXML($0.0)) \(String(format: "%.0f", 100 * Double($0.1) / Double(max(count, 1))))%" }
            html += "<tr><td>\(escapeXML(action))</td><td>\(formatCount(count))</td><td>\(top.joined(separator: "; "))</td></tr>\n"
        }
        html += "</table>\n"
    } else {
        html += "<p class=\"note\" id=\"reasons-by-action-missing\">The scores file has no reason columns (score with <code>--explain</code>), so reasons per action are not shown.</p>\n"
    }
    return html + "</section>\n"
}

/// Population stability index of every input and score of the scored customers against the
/// training customers.
func driftSection(_ inputs: ReportInputs) -> String {
    var html = "<section id=\"drift\">\n<h2>Drift: scored customers against the training customers</h2>\n"
    guard let summary = inputs.summary, !summary.drift.isEmpty else {
        return html + "<p class=\"note\" id=\"drift-missing\">No scoring summary with stability indices was given (<code>clm-score batch --summary-out summary.json</code> with a checkpoint that has <code>drift.json</code>, then <code>--summary summary.json</code>).</p>\n</section>\n"
    }
    let large = summary.drift.filter { $0.psi > 0.2 }
    html += "<p>Population stability index (PSI) over decile bins of the training customers; below 0.1 is stable, 0.1–0.2 a moderate shift, above 0.2 a large one. "
        + (large.isEmpty ? "Nothing shifted much." : "<strong>\(large.count) shifted a lot: \(large.map { escapeXML($0.name) }.joined(separator: ", ")).</strong>") + "</p>\n"
    html += "<table class=\"metrics\" id=\"drift-table\">\n<tr><th>kind</th><th>name</th><th>PSI</th><th>reading</th></tr>\n"
    for index in summary.drift {
        let reading = index.psi < 0.1 ? "stable" : index.psi <= 0.2 ? "moderate shift" : "large shift"
        html += "<tr\(index.psi > 0.2 ? " class=\"worse\"" : "")><td>\(escapeXML(index.kind))</td><td>\(escapeXML(index.name))</td>"
            + "<td>\(String(format: "%.3f", index.psi))</td><td>\(reading)</td></tr>\n"
    }
    return html + "</table>\n</section>\n"
}

func figure(_ svg: String, caption: String?, escaped: Bool = false) -> String {
    var html = "<figure>\n" + svg
    if let caption { html += "<figcaption>\(escaped ? caption : escapeXML(caption))</figcaption>\n" }
    return html + "</figure>\n"
}

let stylesheet = """
    body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1a1a1a;
           background: #f6f7f9; margin: 0; padding: 24px; }
    header, section, footer { max-width: 1160px; margin: 0 auto 28px; }
    h1 { font-size: 24px; margin: 0 0 6px; }
    h2 { font-size: 18px; margin: 0 0 12px; }
    .sources, footer, figcaption, .note { color: #555; font-size: 13px; }
    .sources code { font-size: 12px; }
    .cards { display: flex; gap: 24px; flex-wrap: wrap; }
    .card { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 14px 18px; flex: 1 1 440px; }
    table { border-collapse: collapse; font-size: 13px; margin-bottom: 10px; }
    th, td { text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #eef0f3; }
    .facts th { color: #555; font-weight: normal; }
    .metrics thead th { color: #555; font-weight: 600; }
    td.number { text-align: right; font-variant-numeric: tabular-nums; }
    .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 18px; }
    figure { margin: 0; background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 8px; }
    figcaption { padding: 4px 6px 2px; }
    .auc { font-size: 14px; }
    td.worse, tr.worse td { color: #a32020; font-weight: 600; }
    .warnings { background: #fff4f2; border: 1px solid #e3a79c; border-radius: 6px; padding: 8px 14px; color: #7a1a0d; font-size: 13px; }
    svg.chart { display: block; max-width: 100%; height: auto; font-family: inherit; }
    .chart-title { font-size: 14px; font-weight: 600; fill: #1a1a1a; }
    .plot { fill: #ffffff; stroke: #b9bfc7; }
    .gridline { stroke: #eceff2; }
    .tick, .axis-line { stroke: #8a9099; }
    .tick-label { font-size: 11px; fill: #444; }
    .axis-label { font-size: 12px; fill: #333; }
    .legend-box { fill: #ffffff; fill-opacity: 0.92; stroke: #d0d4da; }
    .legend-label { font-size: 11px; fill: #333; }
    .reference { stroke: #888888; stroke-width: 1.2; stroke-dasharray: 5 4; }
    .count-bar { fill: #c9d3df; }
    .count-label { font-size: 10px; fill: #555; }
    .bar-label, .bar-value { font-size: 12px; fill: #333; }
    .cell-count { font-size: 14px; font-weight: 600; }
    .cell-share { font-size: 11px; }
    .note-text { font-size: 12px; fill: #666; }
    """

/// Writes `html` to `url` durably and atomically (`writeFileAtomically`: temporary file,
/// fsync, rename, directory fsync), so a reader (or a browser reloading) never sees half a
/// report, and a crash never leaves a renamed file whose bytes did not reach the disk.
public func writeReport(_ html: String, to url: URL) throws(ReportError) {
    let directory = url.deletingLastPathComponent()
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
        throw ReportError(file: url.relativePath, "cannot be written: \(directory.relativePath) is not a directory")
    }
    do {
        try writeFileAtomically(Data(html.utf8), to: url)
    } catch {
        throw ReportError(file: url.relativePath, "cannot be written (\(error))")
    }
}
