import ArgumentParser
import Checkpoints
import Foundation
import Reporting
import ToolSupport

extension ReportError: UserFacingError {}

@main
struct CLMReport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-report",
        abstract: "Write a self-contained HTML report (inline SVG charts) of a training run, or compare runs side by side.",
        discussion: """
            A run is named as clm-score names it, --checkpoints ROOT --run NAME, or by its directory, --run-dir ROOT/NAME.
            --compare DIR DIR... sets several runs' headline test metrics and baselines side by side: a table on stdout and an HTML page.
            """)

    @Option(help: "Root of the checkpoint store (the training config's `checkpoints`), where --run and --gnn-run are looked up.")
    var checkpoints: String?
    @Option(name: .customLong("run"), help: "Run name in --checkpoints, as for clm-score: an LSTM or graph-model run.") var runName: String?
    @Option(help: "Run directory (<checkpoints>/<run>), instead of --checkpoints and --run.") var runDir: String?
    @Option(help: "Graph-model run name in --checkpoints, for the lifecycle-stage confusion matrix.") var gnnRun: String?
    @Option(help: "Graph-model run directory, instead of --gnn-run.") var gnnRunDir: String?
    @Option(help: "Scores CSV from batch scoring (needs 'stage' and 'action' columns; reasons per action when scored with --explain).") var scores: String?
    @Option(help: "Summary JSON from clm-score batch --summary-out: the drift table, and the attribution charts when scored with --explain.") var summary: String?
    @Option(parsing: .upToNextOption, help: "Two or more run directories: their headline test metrics and baselines side by side.")
    var compare: [String] = []
    @Option(help: "The HTML file to write (replaced atomically). Default: report.html, or compare.html with --compare.") var out: String?

    func run() throws {
        try reportingUserErrors(tool: "clm-report") {
            if !compare.isEmpty {
                guard runName == nil, runDir == nil, gnnRun == nil, gnnRunDir == nil, scores == nil, summary == nil else {
                    throw ValidationError("--compare takes run directories only; make a single run's report without --compare")
                }
                let comparison = try RunComparison.load(paths: compare)
                let path = out ?? "compare.html"
                try writeReport(comparison.html(), to: URL(fileURLWithPath: path))
                print(comparison.text(), terminator: "")
                print("wrote \(path)")
                return
            }
            guard let runDirectory = try directory(name: runName, directory: runDir, flag: "run") else {
                throw ValidationError("name the run: --checkpoints ROOT --run NAME, or --run-dir DIR (or compare runs with --compare DIR DIR...)")
            }
            let gnnDirectory = try directory(name: gnnRun, directory: gnnRunDir, flag: "gnn-run")
            let inputs = try ReportInputs.load(
                run: URL(fileURLWithPath: runDirectory), gnnRun: gnnDirectory.map { URL(fileURLWithPath: $0) },
                scores: scores.map { URL(fileURLWithPath: $0) }, summary: summary.map { URL(fileURLWithPath: $0) })
            let path = out ?? "report.html"
            try writeReport(renderReport(inputs), to: URL(fileURLWithPath: path))
            print("wrote \(path)")
        }
    }

    /// The run directory `--FLAG NAME` (under --checkpoints) or `--FLAG-dir DIR` names, as given
    /// (relative stays relative); a name that is not a run there is refused with the runs that are.
    func directory(name: String?, directory: String?, flag: String) throws -> String? {
        switch (name, directory) {
        case (nil, nil):
            return nil
        case (.some, .some):
            throw ValidationError("give --\(flag) NAME (with --checkpoints) or --\(flag)-dir DIR, not both")
        case let (nil, directory?):
            return directory
        case let (name?, nil):
            guard let checkpoints else {
                throw ValidationError("--\(flag) takes a run name, as clm-score's does: add --checkpoints ROOT, or give the run's directory as --\(flag)-dir \(name)")
            }
            let root = URL(fileURLWithPath: checkpoints)
            let path = root.appendingPathComponent(name).relativePath
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
                let runs = CheckpointStore.runsWithCheckpoints(under: root)
                throw ReportError(file: path, "no such run; " + (runs.isEmpty
                    ? "no run under \(checkpoints) has a checkpoint"
                    : "runs with checkpoints under \(checkpoints): \(runs.joined(separator: ", "))"))
            }
            return path
        }
    }
}
