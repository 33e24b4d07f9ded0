import ArgumentParser
import BatchScoringArguments
import CustomerData
import CollectivesMPI
import Scoring
import ToolSupport

@main
struct CLMScoreMPI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-score-mpi",
        abstract: "clm-score batch under mpirun: every rank reads a share of the event file, scores the customers it owns and writes its share of one file with clm-score batch's customers, order, stages and actions, scores equal to float rounding.",
        discussion: "Run it as `mpirun -np N clm-score-mpi --checkpoints DIR --run NAME --events FILE --out FILE`. The checkpoint and the event file must be readable, and the output's directory writable, at the same paths on every host (shared storage): every rank writes its share of the output. --threads counts threads per rank. Stages come from the LSTM's stage head or the rule (--gnn-run needs clm-score batch).")

    @OptionGroup var batch: BatchOptions
    @Option(help: ArgumentHelp("Bytes of the event file each rank parses per round.", visibility: .hidden))
    var roundBytesPerRank: Int = 16 << 20
    @Option(help: ArgumentHelp("Bytes of output rows a rank sends per round while the ranks deal the rows out by id.", visibility: .hidden))
    var exchangeBytesPerRound: Int = 16 << 20

    func run() throws {
        try runOnEveryRank(tool: "clm-score-mpi", userMessage: userFacingMessage) { exchange in
            let prepared = try exchange.agreeing("loading the checkpoint") { () -> BatchOptions.Prepared in
                guard !batch.model.namesGraphModel else {
                    throw ScoringError.invalidInput("--gnn-run and --gnn-checkpoint need the whole customer–product graph in one process; use clm-score batch for graph stages")
                }
                return try batch.prepare()
            }
            let summary = try BatchScoring.run(
                scorer: LSTMScorer(model: prepared.model), job: batch.job(prepared), roundBytesPerRank: roundBytesPerRank,
                exchangeBytesPerRound: exchangeBytesPerRound, exchange: exchange)
            if let summary { try batch.report(summary, prepared) }
        }
    }
}

extension ScoringError: UserFacingError {}
extension DataError: UserFacingError {}
