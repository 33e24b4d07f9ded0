import ArgumentParser
import Benchmarks
import Foundation
import Models
import Scoring

@main
struct ClmBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clm-bench",
        abstract: "Benchmarks of the training cluster's building blocks.",
        subcommands: [Allreduce.self, Models.self, ScoringForward.self])
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

    enum Model: String, ExpressibleByArgument, CaseIterable { case all, lstm, graphsage }

    @Option(help: "Seconds to time each model.") var seconds = 3.0
    @Option(help: "Which model to time (all, lstm, graphsage), e.g. to profile one alone.") var model = Model.all
    @Option(help: "LSTM element-wise step kernels: best (this CPU's widest), portable (the Swift loops), avx2, avx512, or all of this machine's in turn.")
    var kernel = KernelChoice.best

    enum KernelChoice: String, ExpressibleByArgument, CaseIterable { case best, portable, avx2, avx512, all }

    func run() throws {
        let sgemm = measureSgemm()
        print(String(format: "cblas_sgemm 512x512x512, 1 thread: %.1f GFLOP/s", sgemm / 1e9))
        if model != .graphsage { timeLSTM(sgemm: sgemm) }
        if model != .lstm { try timeGraphSAGE() }
    }

    private func timeLSTM(sgemm: Double) {
        let kernels: [ElementwiseKernel]
        switch kernel {
        case .best: kernels = [.best]
        case .all: kernels = ElementwiseKernel.available
        case .portable: kernels = [.portable]
        case .avx2, .avx512:
            let wanted: ElementwiseKernel = kernel == .avx2 ? .avx2 : .avx512
            guard ElementwiseKernel.available.contains(wanted) else {
                print("LSTM: this CPU cannot run the \(wanted) kernels (best: \(ElementwiseKernel.best))")
                return
            }
            kernels = [wanted]
        }
        for kernel in kernels { timeLSTM(sgemm: sgemm, kernel: kernel) }
    }

    private func timeLSTM(sgemm: Double, kernel: ElementwiseKernel) {
        var lstm = LSTMThroughput()
        lstm.minimumSeconds = seconds
        lstm.kernel = kernel
        let lstmResult = lstm.run()
        print(String(
            format: "LSTM training (T=%d, %d features, hidden %d, %d layers, batch %d, %@ element-wise): %.0f samples/s, %.2f GFLOP/s = %.1f%% of sgemm",
            lstm.steps, lstm.inputSize, lstm.hiddenSize, lstm.layers, lstm.batchSize, "\(kernel)",
            lstmResult.samplesPerSecond, lstmResult.gflops, 100 * lstmResult.gflops * 1e9 / sgemm))
        print(String(
            format: "  time: forward %.0f%%, loss and backward %.0f%%, Adam %.0f%%",
            100 * lstmResult.forwardShare, 100 * lstmResult.backwardShare, 100 * lstmResult.optimizerShare))
    }

    private func timeGraphSAGE() throws {
        var sage = GraphSAGEThroughput()
        sage.minimumSeconds = seconds
        let sageResult = try sage.run()
        print(String(
            format: "GraphSAGE training (fan-out %@, hidden %d, batch %d, %d+%d nodes): %.0f seed nodes/s, %.0f input nodes per batch",
            sage.fanouts.map(String.init).joined(separator: ","), sage.hiddenSize, sage.batchSize,
            sage.customers, sage.products, sageResult.seedNodesPerSecond, sageResult.meanInputNodes))
        print(String(
            format: "  time: sampling %.0f%%, gathering features %.0f%%, compute (forward, backward, Adam) %.0f%%",
            100 * sageResult.samplingShare, 100 * sageResult.gatherShare, 100 * sageResult.computeShare))
    }
}

struct ScoringForward: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scoring",
        abstract: "Scoring forward throughput (clm-score's LSTM) on one thread, next to cblas_sgemm's rate.",
        discussion: """
            Synthetic customers at the CDNOW model's size (T=39, 8 features, hidden 50, 2 layers) with \
            freshly initialised weights. Each length distribution is timed at each batch size: every \
            customer at the full T steps (as in the 200k synthetic file and CDNOW as of its last day), \
            uniform in 1...T, and optionally the lengths stored in a dataset's lengths.i32.
            """)

    @Option(help: "Seconds to time each row.") var seconds = 3.0
    @Option(help: "Comma-separated batch sizes.") var batchSizes = "256,1024"
    @Option(help: "A dataset's lengths.i32 (e.g. data/cdnow/lengths.i32) to draw lengths from as well.")
    var lengthsFile: String?
    @Option(help: "Comma-separated step versions to time side by side: portable, avx2, avx512 (default: every one this CPU runs).")
    var kernels: String?

    func run() throws {
        let chosenKernels: [ForwardKernel]
        if let kernels {
            chosenKernels = try kernels.split(separator: ",").map { name in
                let name = name.trimmingCharacters(in: .whitespaces)
                guard let kernel = ForwardKernel(name: name) else {
                    throw ValidationError("--kernels: unknown '\(name)' (portable, avx2 or avx512)")
                }
                guard kernel <= ForwardKernel.available else {
                    throw ValidationError("--kernels: this CPU does not run \(name) (best: \(ForwardKernel.available))")
                }
                return kernel
            }
        } else {
            chosenKernels = ForwardKernel.allCases.filter { $0 <= ForwardKernel.available }
        }
        let sizes = batchSizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("--batch-sizes needs positive integers, got '\(batchSizes)'")
        }
        var distributions: [ScoringThroughput.Lengths] = [.full, .uniform]
        if let lengthsFile {
            guard let data = FileManager.default.contents(atPath: lengthsFile) else {
                throw ValidationError("cannot read --lengths-file \(lengthsFile)")
            }
            let values = data.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
            guard !values.isEmpty else { throw ValidationError("\(lengthsFile) holds no lengths") }
            distributions.append(.sampled(name: URL(fileURLWithPath: lengthsFile).deletingLastPathComponent().lastPathComponent, values: values))
        }
        let sgemm = measureSgemm()
        var bench = ScoringThroughput()
        bench.minimumSeconds = seconds
        print(String(format: "cblas_sgemm 512x512x512, 1 thread: %.1f GFLOP/s", sgemm / 1e9))
        print("scoring forward, 1 thread (T=\(bench.steps), \(bench.inputSize) features, hidden \(bench.hiddenSize), \(bench.layers) layers); "
              + "GFLOP/s counts valid steps only")
        print(pad("kernel", 9), pad("lengths", 16), pad("mean", 6), pad("batch", 6), pad("customers/s", 12), pad("GFLOP/s", 8), "of sgemm")
        for distribution in distributions {
            for size in sizes {
                for kernel in chosenKernels {
                    bench.batchSize = size
                    bench.kernel = kernel
                    let result = bench.run(lengths: distribution)
                    print(pad(kernel.description, 9), pad(distribution.description, 16), pad(String(format: "%.1f", result.meanLength), 6), pad("\(size)", 6),
                          pad(String(format: "%.0f", result.customersPerSecond), 12), pad(String(format: "%.2f", result.usefulGflops), 8),
                          String(format: "%.1f%%", 100 * result.usefulGflops * 1e9 / sgemm))
                }
            }
        }
    }
}
