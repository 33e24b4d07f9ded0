import Foundation
import RunFiles

/// Rank 0's view of progress: a bar that redraws itself on a terminal, plain lines elsewhere
/// (logs, CI), and a JSON-lines metrics log in the run directory.
public final class ProgressReporter {
    private let interactive: Bool
    private let log: FileHandle?
    private let enabled: Bool
    private var lastPlainLine = 0.0

    public init(enabled: Bool, metricsLog: URL?) throws {
        self.enabled = enabled
        // mpirun hands ranks a pseudo-terminal even when its own output goes to a file, so a
        // terminal on stdout is not enough: also require a real TERM, and let CLM_PROGRESS=plain
        // (or bar) decide outright.
        let environment = ProcessInfo.processInfo.environment
        let term = environment["TERM"] ?? ""
        switch environment["CLM_PROGRESS"] {
        case "plain": interactive = false
        case "bar": interactive = enabled
        default: interactive = enabled && isatty(STDOUT_FILENO) != 0 && !term.isEmpty && term != "dumb"
        }
        if enabled, let metricsLog {
            try FileManager.default.createDirectory(at: metricsLog.deletingLastPathComponent(), withIntermediateDirectories: true)
            if !FileManager.default.fileExists(atPath: metricsLog.path) {
                _ = FileManager.default.createFile(atPath: metricsLog.path, contents: nil)
            }
            log = try FileHandle(forWritingTo: metricsLog)
            log?.seekToEndOfFile()
        } else {
            log = nil
        }
    }

    func step(epoch: Int, epochs: Int, step: Int, steps: Int, loss: Double, samplesPerSecond: Double, etaSeconds: Double) {
        guard enabled else { return }
        let text = String(format: "epoch %d/%d  step %d/%d  loss %.4f  %.0f samples/s  ETA %@",
                          epoch + 1, epochs, step, steps, loss, samplesPerSecond, formatDuration(etaSeconds))
        if interactive {
            let width = 24
            let filled = steps > 0 ? width * step / steps : width
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            print("\r\u{1B}[2K[\(bar)] \(text)", terminator: "")
            fflush(nil)
        } else {
            let now = Date().timeIntervalSince1970
            if now - lastPlainLine >= 10 || step == steps {
                lastPlainLine = now
                print(text)
            }
        }
    }

    func line(_ text: String) {
        guard enabled else { return }
        if interactive { print("\r\u{1B}[2K", terminator: "") }
        print(text)
        fflush(nil)
    }

    func record(_ metrics: [String: Double], event: String, warnings: [String] = []) {
        guard let log, let line = MetricsLog.line(metrics, event: event, warnings: warnings) else { return }
        log.write(line)
    }
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite && seconds >= 0 else { return "--" }
    let total = Int(seconds.rounded())
    return total >= 3600 ? String(format: "%d:%02d:%02d", total / 3600, total / 60 % 60, total % 60)
                         : String(format: "%d:%02d", total / 60, total % 60)
}
