import ArgumentParser
import Collectives
import CollectivesMPI
import Foundation
import Training

/// Rank 0 of a training job: `mpirun -np 1 clm-coordinator --config cluster/lstm.yaml : -np 3 clm-worker`.
@main
struct Coordinator: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-coordinator",
        abstract: "Coordinates a data-parallel training job (rank 0); workers are started with clm-worker.",
        discussion: "Runs alone (one process) or under mpirun as the first application context.")

    @Option(help: "Training configuration (YAML, keys documented in cluster/README.md).")
    var config: String

    @Option(name: .customLong("set"), help: "Override a configuration key: --set epochs=3 --set lstm.hidden=32 (repeatable).")
    var overrides: [String] = []

    @Option(help: "Shorthand for --set epochs=N.") var epochs: Int?
    @Option(name: .customLong("run"), help: "Shorthand for --set run=NAME.") var runName: String?
    @Option(help: "Shorthand for --set data=DIR.") var data: String?
    @Option(help: "Shorthand for --set checkpoints=DIR.") var checkpoints: String?

    @Option(help: "Continue from a checkpoint: 'latest' (refused, naming the file, when it is damaged), 'latest-valid' (the newest step that verifies; damaged newer ones are skipped, said and moved aside), a step number, or a checkpoint directory.")
    var resume: String?

    @Option(help: "Sign every checkpoint with this key file (at least 32 bytes; clm-score --verify-key-file checks it).")
    var signingKeyFile: String?

    @Option(help: .hidden) var stopAfterSteps: Int?

    func run() throws {
        var all = overrides
        if let epochs { all.append("epochs=\(epochs)") }
        if let runName { all.append("run=\(runName)") }
        if let data { all.append("data=\(data)") }
        if let checkpoints { all.append("checkpoints=\(checkpoints)") }
        let world = try MPICommunicator(watchdogTimeout: .seconds(300))
        do {
            _ = try TrainingJob.coordinate(
                JobRequest(configurationPath: config, overrides: all, resume: resume, stopAfterSteps: stopAfterSteps,
                           signingKeyPath: signingKeyFile),
                world: world)
            try world.shutdown()
        } catch let error as JobDidNotStart {
            // Nothing started, so nothing waits: leave cleanly, with the reason as the last word.
            FileHandle.standardError.write(Data("clm-coordinator: error: \(error)\n".utf8))
            try? world.shutdown()
            throw ExitCode.failure
        } catch {
            // One rank's failure must end every rank, not leave them waiting in a collective.
            world.abort("training failed: \(error)", code: 1)
        }
    }
}
