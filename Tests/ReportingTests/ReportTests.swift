import Checkpoints
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import Reporting
import TestSupport

/// AUC by counting every (churned, retained) pair, ties as a half: slow, obvious, independent
/// of the code under test.
func pairCountAUC(_ rows: [ChurnRow]) -> Double {
    var wins = 0.0, pairs = 0.0
    for positive in rows where positive.label == 1 {
        for negative in rows where negative.label == 0 {
            pairs += 1
            if positive.probability > negative.probability { wins += 1 }
            if positive.probability == negative.probability { wins += 0.5 }
        }
    }
    return wins / pairs
}

@Suite struct ReportTests {
    /// A temporary root with an LSTM run, a GNN run and a scores file; the report of all three.
    struct Fixture {
        let root: TemporaryDirectory
        let lstm: URL
        let gnn: URL
        let scores: URL
        let html: String

        init(stageNames: [String] = ["churned", "occasional", "loyal"]) throws {
            root = try TemporaryDirectory()
            lstm = try makeRun(in: root.url, name: "lstm-run", model: .lstm, metricsLines: lstmMetricsLines,
                               predictionsCSV: churnCSV(handChurnRows), stageNames: stageNames)
            gnn = try makeRun(in: root.url, name: "gnn-run", model: .gnn, metricsLines: gnnMetricsLines(),
                              predictionsCSV: stageCSV(handStageRows), stageNames: stageNames, step: 14, epoch: 2)
            scores = root.url.appendingPathComponent("scores.csv")
            // A quoted id holding commas must not shift the stage and action columns.
            try scoresCSV([
                scoreRow("a,1", stage: stageNames[0], action: "winback_email", churn: 0.9, spend: 1, history: 3, source: "rule"),
                scoreRow("b2", stage: stageNames[2], action: "upsell", churn: 0.2, spend: 90, source: "gnn"),
                scoreRow("c3", stage: stageNames[1], action: "nurture", churn: 0.3, spend: 20),
                scoreRow("d4", stage: stageNames[2], action: "upsell", churn: 0.1, spend: 95, history: 12, source: "gnn"),
            ], stageNames: ["churned"]).write(to: scores, atomically: true, encoding: .utf8)
            let inputs = try ReportInputs.load(run: lstm, gnnRun: gnn, scores: scores)
            html = renderReport(inputs)
        }
    }

    @Test func documentIsOneSelfContainedHTMLPage() throws {
        let html = try Fixture().html
        #expect(html.hasPrefix("<!DOCTYPE html>"))
        #expect(occurrences(of: "<html", in: html) == 1)
        #expect(occurrences(of: "<head>", in: html) == 1)
        #expect(occurrences(of: "<body>", in: html) == 1)
        #expect(occurrences(of: "<meta charset=\"utf-8\">", in: html) == 1)
        #expect(occurrences(of: "<title>Training report: lstm-run, gnn-run</title>", in: html) == 1)
        #expect(!html.contains("<script"))
        // Nothing to fetch: no links, no sources, no URL other than the SVG namespace.
        #expect(!html.contains(" src="))
        #expect(!html.contains(" href="))
        #expect(!html.contains("@import"))
        #expect(html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").range(of: "http") == nil)
    }

    @Test func everyChartIsAnSVGWithAnIDAndIsWellFormed() throws {
        let html = try Fixture().html
        let ids = ["lstm-loss", "lstm-val-auc", "lstm-throughput", "lstm-allreduce", "roc", "calibration", "spend", "spend-deciles", "churn-gain",
                   "gnn-loss", "gnn-val-quality", "gnn-throughput", "gnn-allreduce", "confusion",
                   "stage-distribution", "action-distribution"]
        for id in ids {
            let svg = try #require(svgElement(html, id: id), "no <svg id=\"\(id)\">")
            #expect(svg.contains("<title"), "\(id) has no title")
            let parser = XMLParser(data: Data(svg.utf8))
            #expect(parser.parse(), "\(id) is not well-formed XML: \(String(describing: parser.parserError))")
        }
        #expect(occurrences(of: "<svg ", in: html) == ids.count)
        for id in ["lstm-loss", "roc", "calibration", "spend", "lstm-throughput"] {
            let svg = try #require(svgElement(html, id: id))
            #expect(svg.contains("class=\"axis x-axis\"") && svg.contains("class=\"axis y-axis\""), "\(id) lacks axes")
            #expect(occurrences(of: "class=\"tick-label\"", in: svg) >= 4, "\(id) has too few tick labels")
            #expect(occurrences(of: "class=\"axis-label\"", in: svg) == 2, "\(id) lacks axis labels")
        }
        // Several series, so a legend with both names.
        let loss = try #require(svgElement(html, id: "lstm-loss"))
        #expect(loss.contains("class=\"legend\"") && loss.contains(">training<") && loss.contains(">validation<"))
    }

    @Test func curvesHaveOnePointPerLoggedEpoch() throws {
        let html = try Fixture().html
        func points(_ chart: String, _ series: String) throws -> [String] {
            let svg = try #require(svgElement(html, id: chart))
            let start = try #require(svg.range(of: "data-series=\"\(series)\""))
            let polyline = try #require(attributeValues("points", in: String(svg[start.upperBound...])).first)
            return polyline.split(separator: " ").map(String.init)
        }
        #expect(try points("lstm-loss", "train_loss").count == 4)
        // Validated on epochs 2 and 4 only.
        #expect(try points("lstm-loss", "val_loss").count == 2)
        #expect(try points("lstm-val-auc", "val_auc").count == 2)
        #expect(try points("lstm-throughput", "samples_per_second").count == 4)
        #expect(try points("lstm-allreduce", "allreduce_share").count == 4)
        #expect(try points("gnn-loss", "train_loss").count == 2)
        #expect(try points("gnn-val-quality", "val_macro_f1").count == 2)
        // Larger loss is drawn higher (smaller y): epoch 1's 1.9 above epoch 4's 1.6.
        let train = try points("lstm-loss", "train_loss").map { Double($0.split(separator: ",")[1])! }
        #expect(train[0] < train[3])
        let x = try points("lstm-loss", "train_loss").map { Double($0.split(separator: ",")[0])! }
        #expect(x == x.sorted() && Set(x).count == 4)
    }

    @Test func printedAUCIsRecomputedFromThePredictions() throws {
        let html = try Fixture().html
        let expected = pairCountAUC(handChurnRows)
        let computed = try #require(elementText(html, containing: "id=\"auc-computed\""))
        #expect(computed == String(format: "%.4f", expected))
        let afterComputed = try #require(html.components(separatedBy: "id=\"auc-computed\"").last)
        let value = try #require(attributeValues("data-value", in: afterComputed).first)
        #expect(abs(Double(value)! - expected) < 1e-12)
        let logged = try #require(elementText(html, containing: "id=\"auc-logged\""))
        #expect(logged == "0.8600")
        // The AUC is also in the ROC chart's legend.
        #expect(try #require(svgElement(html, id: "roc")).contains("AUC \(String(format: "%.4f", expected))"))
        // The ROC polyline has one point per distinct score plus the origin.
        let roc = try #require(svgElement(html, id: "roc"))
        let start = try #require(roc.range(of: "data-series=\"roc\""))
        let polyline = try #require(attributeValues("points", in: String(roc[start.upperBound...])).first)
        #expect(polyline.split(separator: " ").count == Set(handChurnRows.map(\.probability)).count + 1)
    }

    @Test func logDisagreeingWithPredictionsIsSaid() throws {
        let root = try TemporaryDirectory()
        let lines = lstmMetricsLines.dropLast() + [#"{"event":"test","test_auc":0.5}"#]
        let run = try makeRun(in: root.url, name: "r", model: .lstm, metricsLines: Array(lines), predictionsCSV: churnCSV(handChurnRows))
        let html = renderReport(try ReportInputs.load(run: run, gnnRun: nil, scores: nil))
        #expect(html.contains("they differ by"))
        #expect(!html.contains("(they agree)"))
        let agreeing = try Fixture().html
        #expect(!agreeing.contains("they differ by"))
    }

    @Test func testMetricTableShowsTheLoggedValues() throws {
        let html = try Fixture().html
        let log = try MetricsLog(text: lstmMetricsLines.joined(separator: "\n"), source: "metrics.jsonl")
        let table = try #require(html.range(of: "id=\"lstm-test-metrics\"")).upperBound
        let tableText = String(html[table..<(try #require(html.range(of: "</table>", range: table..<html.endIndex)).lowerBound)])
        #expect(occurrences(of: "<tr data-metric=", in: tableText) == log.test.count)
        for (key, value) in log.test {
            let rowStart = try #require(tableText.range(of: "<tr data-metric=\"\(key)\">"), "no row for \(key)")
            let row = String(tableText[rowStart.upperBound...].prefix { $0 != "\n" })
            let shownValue = try #require(attributeValues("data-value", in: row).first)
            #expect(Double(shownValue) == value, "\(key)")
            #expect(row.contains(">\(formatMetric(key, value))</td>"), "\(key): \(row)")
        }
        #expect(tableText.contains(">10</td>"))  // test_customers printed as a count
        #expect(tableText.contains(">41.2500</td>"))
    }

    @Test func headerShowsTheManifest() throws {
        let html = try Fixture().html
        #expect(elementText(html, containing: "data-fact=\"step\"")?.hasPrefix("40 (step-000040, epoch 4)") == true)
        #expect(elementText(html, containing: "data-fact=\"world-size\"") == "3 ranks")
        #expect(elementText(html, containing: "data-fact=\"created\"") == CheckpointManifest.timestamp(Date(timeIntervalSince1970: 1_790_000_000)))
        #expect(elementText(html, containing: "data-fact=\"model\"") == "LSTM (churn + CLV)")
        #expect(html.contains("data-run=\"gnn-run\""))
    }

    @Test func calibrationCountsEveryCustomerOnce() throws {
        let html = try Fixture().html
        let svg = try #require(svgElement(html, id: "calibration"))
        let counts = attributeValues("data-count", in: svg).map { Int($0)! }
        #expect(counts.count == 10)
        var expected = [Int](repeating: 0, count: 10)
        for row in handChurnRows { expected[min(Int(row.probability * 10), 9)] += 1 }
        #expect(counts == expected)
        #expect(counts.reduce(0, +) == handChurnRows.count)
        // One point per non-empty bin.
        let start = try #require(svg.range(of: "data-series=\"calibration\""))
        let polyline = try #require(attributeValues("points", in: String(svg[start.upperBound...])).first)
        #expect(polyline.split(separator: " ").count == expected.filter { $0 > 0 }.count)
    }

    @Test func confusionMatrixComesFromTheCSVWithManifestStageNames() throws {
        let html = try Fixture(stageNames: ["lapsed", "casual <new>", "loyal & active"]).html
        let svg = try #require(svgElement(html, id: "confusion"))
        var expected = [[Int]](repeating: [0, 0, 0], count: 3)
        for row in handStageRows { expected[row.stage][row.predicted] += 1 }
        let actual = attributeValues("data-actual", in: svg).map { Int($0)! }
        let predicted = attributeValues("data-predicted", in: svg).map { Int($0)! }
        let counts = attributeValues("data-count", in: svg).map { Int($0)! }
        #expect(counts.count == 9)
        for index in counts.indices { #expect(counts[index] == expected[actual[index]][predicted[index]]) }
        #expect(svg.contains(">casual &lt;new&gt;<") && svg.contains(">loyal &amp; active<"))
        #expect(!html.contains("<new>"))
        #expect(html.contains("Equal to the logged test_confusion_* counts."))
    }

    @Test func scoresAreCountedByHeaderName() throws {
        let html = try Fixture().html
        let stages = try #require(svgElement(html, id: "stage-distribution"))
        #expect(attributeValues("data-label", in: stages) == ["churned", "occasional", "loyal"])
        #expect(attributeValues("data-count", in: stages) == ["1", "1", "2"])
        let actions = try #require(svgElement(html, id: "action-distribution"))
        #expect(attributeValues("data-label", in: actions) == ["upsell", "nurture", "winback_email"])
        #expect(attributeValues("data-count", in: actions) == ["2", "1", "1"])
        #expect(actions.contains("2 (50.0%)"))
    }

    @Test func aKnownStageWithoutCustomersShowsAsZero() throws {
        let root = try TemporaryDirectory()
        let scores = root.url.appendingPathComponent("scores.csv")
        try scoresCSV([scoreRow("x", stage: "gold", action: "upsell"), scoreRow("y", stage: "lapsed", action: "winback_email"),
                       scoreRow("z", stage: "mystery", action: "nurture")], stageNames: ["gold"])
            .write(to: scores, atomically: true, encoding: .utf8)
        let distribution = try ScoreDistribution.read(scores, stageOrder: ["lapsed", "silver", "gold"])
        #expect(distribution.stages.map { $0.0 } == ["lapsed", "silver", "gold", "mystery"])
        #expect(distribution.stages.map { $0.1 } == [1, 0, 1, 1])
        #expect(distribution.customers == 3)
    }

    @Test func withoutScoresTheChartIsReplacedByANote() throws {
        let fixture = try Fixture()
        let html = renderReport(try ReportInputs.load(run: fixture.lstm, gnnRun: nil, scores: nil))
        #expect(html.contains("id=\"scores-missing\""))
        #expect(svgElement(html, id: "stage-distribution") == nil)
        #expect(html.contains("id=\"stages-missing\""))
        #expect(svgElement(html, id: "confusion") == nil)
        #expect(svgElement(html, id: "roc") != nil)
    }

    /// A scores file with reason columns and a summary as `clm-score batch --explain --summary-out` write them.
    @Test func reasonsAndDriftComeFromTheSummaryAndTheReasonColumns() throws {
        let fixture = try Fixture()
        let scores = fixture.root.url.appendingPathComponent("explained.csv")
        try scoresCSV([
            scoreRow("a", stage: "churned", action: "winback_email", churnReasons: ["recency_weeks=14 (+)", "tenure_weeks=30 (-)"]),
            scoreRow("b", stage: "churned", action: "winback_email", churnReasons: ["recency_weeks=20 (+)", "spend_last4=3.00 (-)"]),
            scoreRow("c", stage: "churned", action: "winback_email", churnReasons: ["cumulative_transactions=2 (-)"]),
            scoreRow("d", stage: "loyal", action: "upsell", churnReasons: ["cumulative_transactions=9 (-)", "recency_weeks=1 (-)"]),
        ], stageNames: ["churned"], explain: true).write(to: scores, atomically: true, encoding: .utf8)
        let summary = fixture.root.url.appendingPathComponent("summary.json")
        try """
            {"run":"lstm-run","step":12,"customers":4,
             "drift":[{"kind":"feature","name":"transactions","psi":0.01},{"kind":"feature","name":"periods_since_last_purchase","psi":0.75},
                      {"kind":"score","name":"churn_probability","psi":0.15}],
             "explanation":{"steps":32,"baseline":"zeros","worst_completeness_error":0.0025,
               "mean_absolute_attribution":{"churn_logit":{"recency:last4":1.5,"tenure:earlier":0.25,"spend:last4":0.75},
                                            "expected_spend":{"recency:last4":4,"mean_order_value:last4":9}}}}
            """.write(to: summary, atomically: true, encoding: .utf8)
        let html = renderReport(try ReportInputs.load(run: fixture.lstm, gnnRun: nil, scores: scores, summary: summary))
        let churn = try #require(svgElement(html, id: "attribution-churn"))
        #expect(attributeValues("data-label", in: churn) == ["recency:last4", "spend:last4", "tenure:earlier"], "largest first")
        #expect(attributeValues("data-value", in: churn) == ["1.5", "0.75", "0.25"])
        let spend = try #require(svgElement(html, id: "attribution-spend"))
        #expect(attributeValues("data-label", in: spend) == ["mean_order_value:last4", "recency:last4"])
        #expect(html.contains("within 0.25%"))
        // First reasons per action, without the customers' values.
        #expect(html.contains("<td>winback_email</td><td>3</td><td>recency_weeks (+) 67%; cumulative_transactions (-) 33%</td>"))
        #expect(html.contains("<td>upsell</td><td>1</td><td>cumulative_transactions (-) 100%</td>"))
        // Drift: every index, the large one marked and named.
        #expect(html.contains("<tr class=\"worse\"><td>feature</td><td>periods_since_last_purchase</td><td>0.750</td><td>large shift</td></tr>"))
        #expect(html.contains("<td>score</td><td>churn_probability</td><td>0.150</td><td>moderate shift</td>"))
        #expect(html.contains("1 shifted a lot: periods_since_last_purchase."))
        #expect(!html.contains("id=\"reasons-missing\"") && !html.contains("id=\"drift-missing\""))

        // Without a summary, both sections say what to pass.
        let plain = renderReport(try ReportInputs.load(run: fixture.lstm, gnnRun: nil, scores: fixture.scores))
        #expect(plain.contains("id=\"reasons-missing\"") && plain.contains("id=\"drift-missing\""))
        #expect(svgElement(plain, id: "attribution-churn") == nil)
    }

    @Test func aSummaryThatIsNotOneIsRefusedByName() throws {
        let fixture = try Fixture()
        let summary = fixture.root.url.appendingPathComponent("not-a-summary.json")
        try "{\"drift\": 3}".write(to: summary, atomically: true, encoding: .utf8)
        #expect(throws: ReportError.self) { try ReportInputs.load(run: fixture.lstm, gnnRun: nil, scores: nil, summary: summary) }
        do {
            _ = try ReportInputs.load(run: fixture.lstm, gnnRun: nil, scores: nil, summary: summary)
        } catch {
            #expect("\(error)".contains("not-a-summary.json") && "\(error)".contains("is not a clm-score batch summary"))
        }
    }

    @Test func spendScatterIsSampledDeterministically() throws {
        let root = try TemporaryDirectory()
        let rows: [ChurnRow] = (0..<2600).map { index -> ChurnRow in
            let label = index % 3 == 0 ? 1 : 0
            let probability = Double(index % 97) / 97
            return (row: index * 7, label: label, probability: probability, spend: Double(index % 500), expected: Double(index % 450))
        }
        let run = try makeRun(in: root.url, name: "big", model: .lstm, metricsLines: lstmMetricsLines, predictionsCSV: churnCSV(rows))
        let first = renderReport(try ReportInputs.load(run: run, gnnRun: nil, scores: nil))
        let svg = try #require(svgElement(first, id: "spend"))
        #expect(occurrences(of: "<circle ", in: svg) == scatterLimit)
        #expect(first.contains("2,000 of 2,600 test customers"))
        // Same subset whatever order the ranks wrote the rows in.
        try churnCSV(rows.reversed()).write(to: run.appendingPathComponent("test_predictions.csv"), atomically: true, encoding: .utf8)
        let second = renderReport(try ReportInputs.load(run: run, gnnRun: nil, scores: nil))
        #expect(svgElement(second, id: "spend") == svg)
    }

    @Test func reportIsWrittenAtomically() throws {
        let root = try TemporaryDirectory()
        let target = root.url.appendingPathComponent("report.html")
        try "old".write(to: target, atomically: false, encoding: .utf8)
        try writeReport("<!DOCTYPE html>new", to: target)
        #expect(try String(contentsOf: target, encoding: .utf8) == "<!DOCTYPE html>new")
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.url.path) == ["report.html"])
        expectReportError(file: "report.html", line: nil, containing: "is not a directory") {
            try writeReport("x", to: root.url.appendingPathComponent("missing/report.html"))
        }
    }
}

@Suite struct AnalysisTests {
    @Test func rocAreaEqualsTheRankAUCWithTies() {
        let rows = handChurnRows
        let curve = rocCurve(scores: rows.map(\.probability), labels: rows.map { $0.label == 1 })
        #expect(abs(area(under: curve) - pairCountAUC(rows)) < 1e-12)
        #expect(curve.first?.falsePositiveRate == 0 && curve.first?.truePositiveRate == 0)
        #expect(curve.last?.falsePositiveRate == 1 && curve.last?.truePositiveRate == 1)
        #expect(rocCurve(scores: [0.1, 0.2], labels: [true, true]).isEmpty)
    }

    @Test func niceTicks() {
        #expect(niceStep(0.13) == 0.2)
        #expect(niceStep(3) == 5)
        #expect(niceStep(70) == 100)
        #expect(formatTick(290_000, 5000) == "290k")
        #expect(formatTick(5000, 5000) == "5k")
        #expect(formatTick(0, 5000) == "0")
        #expect(formatTick(2500, 500) == "2500")
        #expect(Axis.log1p("spend", maximum: 3000).ticks.map(\.label) == ["0", "10", "100", "1k"])
        #expect(Axis.log1p("spend", maximum: 50).ticks.map(\.label) == ["0", "1", "10"])
        #expect(formatTick(0.25, 0.05) == "0.25")
        let axis = Axis.linear("loss", values: [1.62, 1.91])
        #expect(axis.lower <= 1.62 && axis.upper >= 1.91)
        #expect(axis.ticks.count >= 3)
        // One value: the axis still has a range and ticks around it.
        let flat = Axis.linear("x", values: [0.5, 0.5])
        #expect(flat.lower < 0.5 && flat.upper > 0.5 && !flat.ticks.isEmpty)
        #expect(Axis.epochs(30).ticks.map(\.label).prefix(3) == ["1", "5", "10"])
    }

    @Test func escapesEveryMarkupCharacter() {
        #expect(escapeXML(#"<a href="x">Tom & 'Jerry'</a>"#) == "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;")
    }
}
