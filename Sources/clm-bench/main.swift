import ArgumentParser
import Benchmarks
import Foundation

@main
struct ClmBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-bench",
        abstract: "Benchmarks of the training cluster's building blocks.",
        subcommands: [Allreduce.self, Models.self])
}

struct Allreduce: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "All-reduce bus bandwidth through Collectives and raw MPI_Allreduce, side by side.",
        discussion: "Run under mpirun, e.g. scripts/bench.sh allreduce --np 2.")

    @Option(help: "Smallest message in bytes.") var minBytes = 4096
    @Option(help: "Largest message in bytes.") var maxBytes = 64 << 20
    @Option(help: "Timed rounds per size (the median is reported).") var rounds = 9

    func run() throws {
        let bench = AllreduceBandwidth(minimumBytes: minBytes, maximumBytes: maxBytes, rounds: rounds)
        var printedHeader = false
        try bench.run { row, ranks in
            guard ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"].map({ $0 == "0" }) ?? true else { return }
            if !printedHeader {
                print("all-reduce of float32, \(ranks) ranks; bus bandwidth = size/time x 2(p-1)/p, GB/s; median of \(rounds) rounds")
                print(pad("size", 10), pad("calls", 7), pad("raw MPI", 10), pad("Collectives", 12),
                      pad("vs raw", 7), pad("+agreement", 11), pad("vs raw", 7))
                printedHeader = true
            }
            func gigabytes(_ seconds: Double) -> String {
                ranks > 1 ? String(format: "%.3f", AllreduceBandwidth.busBandwidth(bytes: row.bytes, seconds: seconds, ranks: ranks) / 1e9)
                          : String(format: "%.1fus", seconds * 1e6)
            }
            print(pad(humanBytes(row.bytes), 10), pad("\(row.iterations)", 7), pad(gigabytes(row.raw), 10),
                  pad(gigabytes(row.wrapped), 12), pad(String(format: "%.3f", row.raw / row.wrapped), 7),
                  pad(gigabytes(row.checked), 11), pad(String(format: "%.3f", row.raw / row.checked), 7))
        }
    }
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}

private func humanBytes(_ bytes: Int) -> String {
    bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes >> 10) KiB"
}

struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "models",
        abstract: "Training throughput of the LSTM and GraphSAGE on one thread, next to cblas_sgemm's rate.")

    @Option(help: "Seconds to time each model.") var seconds = 3.0

    func run() throws {
        let sgemm = measureSgemm()
        print(String(format: "cblas_sgemm 512x512x512, 1 thread: %.1f GFLOP/s", sgemm / 1e9))

        var lstm = LSTMThroughput()
        lstm.minimumSeconds = seconds
        let lstmResult = lstm.run()
        print(String(
            format: "LSTM training (T=%d, %d features, hidden %d, %d layers, batch %d): %.0f samples/s, %.2f GFLOP/s = %.1f%% of sgemm",
            lstm.steps, lstm.inputSize, lstm.hiddenSize, lstm.layers, lstm.batchSize,
            lstmResult.samplesPerSecond, lstmResult.gflops, 100 * lstmResult.gflops * 1e9 / sgemm))
        print(String(
            format: "  time: forward %.0f%%, loss and backward %.0f%%, Adam %.0f%%",
            100 * lstmResult.forwardShare, 100 * lstmResult.backwardShare, 100 * lstmResult.optimizerShare))

        var sage = GraphSAGEThroughput()
        sage.minimumSeconds = seconds
        let sageResult = sage.run()
        print(String(
            format: "GraphSAGE training (fan-out %@, hidden %d, batch %d, %d+%d nodes): %.0f seed nodes/s, %.0f input nodes per batch",
            sage.fanouts.map(String.init).joined(separator: ","), sage.hiddenSize, sage.batchSize,
            sage.customers, sage.products, sageResult.seedNodesPerSecond, sageResult.meanInputNodes))
        print(String(
            format: "  time: sampling %.0f%%, gathering features %.0f%%, compute (forward, backward, Adam) %.0f%%",
            100 * sageResult.samplingShare, 100 * sageResult.gatherShare, 100 * sageResult.computeShare))
    }
}
