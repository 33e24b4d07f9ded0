import ArgumentParser
import Foundation
import Reporting
import ToolSupport

extension ReportError: UserFacingError {}

@main
struct CLMReport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-report",
        abstract: "Write a self-contained HTML report (inline SVG charts) of a training run.")

    @Option(name: .customLong("run"), help: "Run directory (<checkpoints>/<run>) of an LSTM or graph-model run.") var runDirectory: String
    @Option(help: "Run directory of a graph-model run, for the lifecycle-stage confusion matrix.") var gnnRun: String?
    @Option(help: "Scores CSV from batch scoring (needs 'stage' and 'action' columns; reasons per action when scored with --explain).") var scores: String?
    @Option(help: "Summary JSON from clm-score batch --summary-out: the drift table, and the attribution charts when scored with --explain.") var summary: String?
    @Option(help: "The HTML file to write (replaced atomically).") var out: String = "report.html"

    func run() throws {
        try reportingUserErrors(tool: "clm-report") {
            let inputs = try ReportInputs.load(
                run: URL(fileURLWithPath: runDirectory), gnnRun: gnnRun.map { URL(fileURLWithPath: $0) },
                scores: scores.map { URL(fileURLWithPath: $0) }, summary: summary.map { URL(fileURLWithPath: $0) })
            let url = URL(fileURLWithPath: out)
            try writeReport(renderReport(inputs), to: url)
            print("wrote \(url.path)")
        }
    }
}
