import Checkpoints
import Collectives
import CustomerData
import Foundation
import Testing
import TestSupport
import Training
@testable import Reporting

/// Three runs trained for real in one process on one synthetic dataset (two LSTMs of different
/// sizes and a GraphSAGE run), so the comparison reads the files training writes, not copies.
final class TrainedRuns: @unchecked Sendable {
    static let shared = Result { try TrainedRuns() }

    let directory: TemporaryDirectory
    var checkpoints: URL { directory.url.appendingPathComponent("checkpoints") }
    let names = ["small-lstm", "wide-lstm", "stages-gnn"]

    private init() throws {
        directory = try TemporaryDirectory(prefix: "compare")
        // A static is never deinitialised, so its directory is removed when the test process ends.
        atexit { if case .success(let runs) = TrainedRuns.shared { try? FileManager.default.removeItem(at: runs.directory.url) } }
        let events = directory.path("events.csv")
        _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 400, products: 30, seed: 23), to: events)
        var options = ImportOptions()
        options.format.mapping.product = .name("product_id")
        _ = try Importer.run(input: events, output: directory.path("data"), options: options)
        let common = """
            data: \(directory.path("data"))
            checkpoints: \(checkpoints.path)
            epochs: 2
            min_steps: 0
            batch_size: 32
            learning_rate: 0.01
            early_stopping:
              metric: val_loss
              patience: 0

            """
        let configurations = [
            "model: lstm\nrun: small-lstm\n" + common + "lstm:\n  hidden: 4\n  layers: 1\n",
            "model: lstm\nrun: wide-lstm\n" + common + "lstm:\n  hidden: 12\n  layers: 1\n",
            "model: gnn\nrun: stages-gnn\n" + common + "gnn:\n  hidden: 8\n  layers: 2\n  fanouts: [4, 2]\n",
        ]
        for (index, yaml) in configurations.enumerated() {
            let path = directory.path("run-\(index).yaml")
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            _ = try TrainingJob.coordinate(JobRequest(configurationPath: path), world: SingleProcessCommunicator())
        }
    }

    /// The test record of a run's metrics.jsonl, read here without the report's reader.
    func testRecord(_ run: String) throws -> [String: Double] {
        let text = try String(contentsOf: checkpoints.appendingPathComponent(run).appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        for line in text.split(separator: "\n").reversed() {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            if object["event"] as? String == "test" { return object.compactMapValues { $0 as? Double } }
        }
        throw ReportError(file: run, "no test record")
    }
}

@Suite("Comparing runs", .serialized)
struct ComparisonTests {
    @Test("runs trained for real are set side by side: every headline metric and baseline as logged, the best marked, in text and HTML")
    func realRunsSideBySide() throws {
        let runs = try TrainedRuns.shared.get()
        let paths = runs.names.map { runs.checkpoints.appendingPathComponent($0).path }
        let comparison = try RunComparison.load(paths: paths)
        let records = try runs.names.map(runs.testRecord)
        let text = comparison.text()
        let html = comparison.html()
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("test metric") && runs.names.allSatisfy { lines[0].contains($0) }, "\(lines[0])")

        // Each row's cells are the logged values, formatted as the report formats them. The stage
        // rows hold the LSTM stage head's `test_stage_*` and the graph model's `test_*` side by side.
        let kinds = comparison.runs.map(\.manifest.modelKind)
        #expect(kinds == [.lstm, .lstm, .gnn])
        var checked = 0
        for (row, label, lstmKey, gnnKey) in [
            ("test_auc", "churn ROC AUC", "test_auc", nil), ("test_bgnbd_auc", "  BG/NBD + Gamma-Gamma", "test_bgnbd_auc", nil),
            ("test_logistic_auc", "  logistic floor", "test_logistic_auc", nil),
            ("test_xgboost_auc", "  XGBoost", "test_xgboost_auc", nil), ("test_clv_rmse", "spend RMSE", "test_clv_rmse", nil),
            ("test_stage_macro_f1", "stage macro-F1", "test_stage_macro_f1", "test_macro_f1"),
            ("test_stage_nograph_macro_f1", "  without the graph", nil, "test_nograph_macro_f1"),
            ("test_stage_majority_macro_f1", "  majority class", "test_stage_majority_macro_f1", "test_majority_macro_f1"),
            ("test_stage_accuracy", "stage accuracy", "test_stage_accuracy", "test_accuracy"),
        ] as [(String, String, String?, String?)] {
            let found = try #require(comparison.rows.first { $0.key == row }, "no row \(row)")
            #expect(found.label == label)
            let expected = zip(kinds, records).map { kind, record in
                (kind == .lstm ? lstmKey : gnnKey).flatMap { record[$0] }.map { String(format: "%.4f", $0) }
            }
            #expect(expected.contains { $0 != nil }, "\(row): nothing logged")
            #expect(found.cells == expected, "\(row): \(found.cells) vs logged \(expected)")
            let line = try #require(lines.first { $0.hasPrefix(label + " ") }, "no line for \(label)")
            for cell in expected.compactMap({ $0 }) { #expect(line.contains(cell), "\(line) lacks \(cell)") }
            #expect(html.contains("<tr data-key=\"\(row)\""), "\(row) not in the HTML")
            checked += 1
        }
        #expect(checked == 9)
        // The LSTMs' churn accuracy is not the graph model's stage accuracy: no row mixes them.
        #expect(!comparison.rows.contains { $0.key == "test_accuracy" })

        // The better LSTM by AUC is marked, and only it; the graph run has no AUC.
        let aucs = records.map { $0["test_auc"] }
        #expect(aucs[0] != nil && aucs[1] != nil && aucs[2] == nil)
        let auc = try #require(comparison.rows.first { $0.key == "test_auc" })
        let better = aucs[0]! >= aucs[1]! ? 0 : 1
        #expect(auc.best.contains(better) && !auc.best.contains(2))
        #expect(auc.cells[2] == nil)
        let aucLine = try #require(lines.first { $0.hasPrefix("churn ROC AUC") })
        #expect(aucLine.contains(String(format: "%.4f *", aucs[better]!)), "\(aucLine)")
        #expect(html.contains("data-value=\"\(aucs[better]!)\">\(String(format: "%.4f", aucs[better]!)) ★"))

        // One dataset: no caveat. The sources are the paths as given.
        #expect(comparison.caveat == nil && !text.contains("different datasets"))
        for path in paths { #expect(html.contains("<code>\(escapeXML(path))</code>")) }
        let fingerprints = try #require(comparison.rows.first { $0.key == "dataset" }).cells
        #expect(Set(fingerprints).count == 1)
    }

    @Test("runs on different datasets carry the caveat; fewer than two runs, or a directory that is no run, are refused by name")
    func caveatsAndRefusals() throws {
        let root = try TemporaryDirectory(prefix: "compare-hand")
        let first = try makeRun(in: root.url, name: "a", model: .lstm, metricsLines: lstmMetricsLines, predictionsCSV: churnCSV(handChurnRows))
        let second = try makeRun(in: root.url, name: "b", model: .lstm, metricsLines: lstmMetricsLines, predictionsCSV: churnCSV(handChurnRows),
                                 datasetFingerprint: "fedcba9876543210")
        let comparison = try RunComparison.load(paths: [first.path, second.path])
        #expect(comparison.caveat?.contains("2 different datasets") == true)
        #expect(comparison.text().contains("2 different datasets"))
        #expect(comparison.html().contains("id=\"comparison-caveat\""))
        // Equal values: both are the best.
        #expect(comparison.rows.first { $0.key == "test_auc" }?.best == [0, 1])

        expectReportError(file: "a", line: nil, containing: "at least two run directories") {
            _ = try RunComparison.load(paths: [first.path])
        }
        expectReportError(file: "missing", line: nil, containing: "is not a run directory") {
            _ = try RunComparison.load(paths: [first.path, root.path("missing")])
        }
    }
}

/// Runs the `clm-report` that `swift build --build-tests` builds beside the tests, in `directory`.
func runReportTool(_ arguments: [String], in directory: URL) throws -> (status: Int32, output: String, errors: String) {
    let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let tool = [products, Bundle.main.bundleURL.deletingLastPathComponent()].map { $0.appendingPathComponent("clm-report").path }
        .first { FileManager.default.isExecutableFile(atPath: $0) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try #require(tool, "clm-report is not built next to the tests; run swift build --build-tests"))
    process.arguments = arguments
    process.currentDirectoryURL = directory
    let output = Pipe(), errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    // Read before waiting: a full pipe would otherwise stop the tool.
    let out = output.fileHandleForReading.readDataToEndOfFile(), err = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

@Suite("clm-report's run flags", .serialized)
struct ReportToolTests {
    @Test("--run is a run name under --checkpoints as in clm-score, --run-dir a directory; a wrong name lists the runs; paths print as given")
    func runMeansARunName() throws {
        let runs = try TrainedRuns.shared.get()
        let here = runs.directory.url
        let byName = try runReportTool(["--checkpoints", "checkpoints", "--run", "small-lstm", "--out", "by-name.html"], in: here)
        #expect(byName.status == 0 && byName.output == "wrote by-name.html\n", "\(byName)")
        let byDirectory = try runReportTool(["--run-dir", "checkpoints/small-lstm", "--out", "by-dir.html"], in: here)
        #expect(byDirectory.status == 0 && byDirectory.output == "wrote by-dir.html\n", "\(byDirectory)")
        // The same run either way, and the sources named as given.
        let html = try String(contentsOfFile: runs.directory.path("by-name.html"), encoding: .utf8)
        #expect(html.contains("<code>checkpoints/small-lstm/metrics.jsonl</code>"))
        #expect(!html.contains(here.path), "an absolute path in the report")
        #expect(html == (try String(contentsOfFile: runs.directory.path("by-dir.html"), encoding: .utf8)))

        let misspelt = try runReportTool(["--checkpoints", "checkpoints", "--run", "smal-lstm"], in: here)
        #expect(misspelt.status == 1 && misspelt.errors == "clm-report: error: checkpoints/smal-lstm: no such run; runs with checkpoints under checkpoints: small-lstm, stages-gnn, wide-lstm\n",
                "\(misspelt)")
        let directoryAsName = try runReportTool(["--run", "checkpoints/small-lstm"], in: here)
        #expect(directoryAsName.status != 0 && directoryAsName.errors.contains("--run-dir checkpoints/small-lstm"), "\(directoryAsName)")
    }

    @Test("a trained run's report shows XGBoost beside the model and every spend predictor's deciles as logged")
    func boostingAndSpendDecilesAsLogged() throws {
        let runs = try TrainedRuns.shared.get()
        let made = try runReportTool(["--run-dir", "checkpoints/small-lstm", "--out", "deciles.html"], in: runs.directory.url)
        #expect(made.status == 0, "\(made)")
        let html = try String(contentsOfFile: runs.directory.path("deciles.html"), encoding: .utf8)
        let record = try runs.testRecord("small-lstm")
        let boostedAUC = try #require(record["test_xgboost_auc"])
        #expect(html.contains("data-baseline=\"xgboost\" data-value=\"\(boostedAUC)\""))
        let table = try #require(html.range(of: "id=\"spend-decile-table\"").map { String(html[$0.upperBound...]) })
        let body = String(table[..<table.range(of: "</table>")!.lowerBound])
        // Every decile row holds the model's and each spend baseline's logged means, in that order.
        for decile in 1...10 {
            let cells = ["", "bgnbd_", "xgboost_"].compactMap { prefix -> String? in
                guard let predicted = record["test_\(prefix)spend_decile_\(decile)_predicted"],
                      let actual = record["test_\(prefix)spend_decile_\(decile)_actual"] else { return nil }
                return String(format: "%.1f / %.1f", predicted, actual)
            }
            #expect(cells.count >= 2, "decile \(decile): \(cells)")
            let row = "<tr><td>\(decile)</td>" + cells.map { "<td class=\"number\">\($0)</td>" }.joined() + "</tr>"
            #expect(body.contains(row), "no row \(row)")
        }
    }

    @Test("--compare prints the table and writes compare.html, both naming the runs as given")
    func compareFromTheCommandLine() throws {
        let runs = try TrainedRuns.shared.get()
        let compared = try runReportTool(["--compare", "checkpoints/small-lstm", "checkpoints/wide-lstm"], in: runs.directory.url)
        #expect(compared.status == 0, "\(compared)")
        let lines = compared.output.split(separator: "\n")
        #expect(lines.first?.hasPrefix("test metric") == true && lines.first?.contains("wide-lstm") == true, "\(compared.output)")
        #expect(lines.contains { $0.hasPrefix("churn ROC AUC") })
        #expect(lines.last == "wrote compare.html")
        let html = try String(contentsOfFile: runs.directory.path("compare.html"), encoding: .utf8)
        #expect(html.contains("<code>checkpoints/wide-lstm</code>"))
        let mixed = try runReportTool(["--compare", "checkpoints/small-lstm", "checkpoints/wide-lstm", "--scores", "s.csv"], in: runs.directory.url)
        #expect(mixed.status != 0 && mixed.errors.contains("--compare takes run directories only"), "\(mixed)")
    }
}
