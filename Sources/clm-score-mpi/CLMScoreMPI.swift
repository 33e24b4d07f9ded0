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
        abstract: "clm-score batch under mpirun: every rank reads a share of the event file and scores the customers it owns; rank 0 writes one file with clm-score batch's customers, order, stages and actions, scores equal to float rounding.",
        discussion: "Run it as `mpirun -np N clm-score-mpi --checkpoints DIR --run NAME --events FILE --out FILE`. The checkpoint and the event file must be readable at the same paths on every host; only rank 0 writes. --threads counts threads per rank. Stages come from the LSTM's stage head or the rule (--gnn-run needs clm-score batch).")

    @OptionGroup var batch: BatchOptions
    @Option(help: ArgumentHelp("Bytes of the event file each rank parses per round.", visibility: .hidden))
    var roundBytesPerRank: Int = 16 << 20
    @Option(help: ArgumentHelp("Rows rank 0 asks a rank for at a time while merging.", visibility: .hidden))
    var mergeBlock: Int = 16_384

    func run() throws {
        try runOnEveryRank(tool: "clm-score-mpi", userMessage: userFacingMessage) { exchange in
            let prepared = try exchange.agreeing("loading the checkpoint") { () -> BatchOptions.Prepared in
                guard !batch.model.namesGraphModel else {
                    throw ScoringError.invalidInput("--gnn-run and --gnn-checkpoint need the whole customer–product graph in one process; use clm-score batch for graph stages")
                }
                return try batch.prepare()
            }
            let summary = try BatchScoring.run(
                scorer: LSTMScorer(model: prepared.model), events: batch.events, options: prepared.options,
                asOf: prepared.asOfDay, rules: prepared.rules, output: batch.out, batchSize: batch.batchSize,
                threads: batch.threads, explain: prepared.explanation, roundBytesPerRank: roundBytesPerRank,
                mergeBlock: mergeBlock, exchange: exchange)
            if let summary { try batch.report(summary, prepared) }
        }
    }
}

extension ScoringError: UserFacingError {}
extension DataError: UserFacingError {}
