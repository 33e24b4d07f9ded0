import Collectives
import CustomerData
import Foundation
import RankTesting
import Scoring
import ScoringTestSupport
import TestSupport

// `clm-score-mpi`'s library half: batch scoring across ranks must score the customers one
// process scores, in the same order, with the same scores. Each rank scores its own customers
// in its own batches. The fused forward kernels (AVX2, AVX-512) give a customer the same bits
// whatever batch it is in, so the files are the same bytes; the portable path's GEMM sums in
// an order that depends on how many customers share a batch, so there scores agree to float32
// rounding across rank counts and byte for byte at one rank. Reading rounds of 2 KiB per rank
// and exchange rounds of 900 bytes make customers cross many round and rank boundaries and the
// rows be dealt out over many rounds.

public func runScoringChecks(_ world: any Communicator, _ checks: RankChecks) {
    let rank = world.rank
    let exchange = world
    // Rank 0 makes the events and checkpoints; every rank reads them at the same paths.
    var fixture: ScoringFixture?
    let paths: [String]
    do {
        if rank == 0 {
            fixture = try ScoringFixture(customers: 400)
            try fixture!.saveCheckpoint(step: 1, seed: 9, heads: fixture!.architecture(clvLoss: .ziln, stageCount: 4),
                                        withDriftReference: true)
        }
        paths = try [fixture?.eventsPath ?? "", fixture?.root.path ?? "", fixture?.directory.path("") ?? ""].map {
            try world.broadcast(string: $0, root: 0)
        }
    } catch {
        checks.check("scoring fixture") { throw error }
        return
    }
    defer { try? world.barrier() }
    // `path("")` has no trailing slash; the checks name their files `directory + name`.
    let (events, root, directory) = (paths[0], paths[1], paths[2] + "/")

    checks.check("the high-value line across ranks is the k-th largest spend of all of them") {
        var random = SplitMix64(seed: UInt64(17 + rank))
        // Ties, zeros, negatives and a rank with no customers at all.
        var spends: [Float] = []
        if rank != 1 {
            for k in 0..<(300 + 37 * rank) {
                let drawn = Float(Int(random.next() % 20_000)) / 100 - 20
                spends.append(k % 5 == 0 ? 0 : k % 7 == 0 ? 12.5 : drawn)
            }
        }
        let counts = try world.allgather(value: Int64(spends.count)).map { Int($0) }
        var everyone = [Float](repeating: 0, count: counts.reduce(0, +))
        try spends.withUnsafeBufferPointer { source in
            try everyone.withUnsafeMutableBufferPointer { try world.allgatherv(source, into: $0, counts: counts) }
        }
        for fraction in [0.2, 0.01, 1.0, 0.5] {
            var rules = ScoringRules()
            rules.highValueTopFraction = fraction
            let line = try BatchScoring.highValueLine(rules: rules, spends: spends, customers: everyone.count, exchange: exchange)
            checks.expectEqual(line, rules.highValueLine(spends: everyone), "line at top fraction \(fraction)")
        }
    }

    checks.check("scoring across ranks: the customers of one process in its order, scores to float rounding") {
        let scorer = LSTMScorer(model: try ScoringModel.load(root: URL(fileURLWithPath: root), run: "test"))
        let single = directory + "single.csv", ranks = directory + "ranks-\(world.size).csv"
        let reference = rank == 0
            ? try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: events, options: EventFileOptions(), asOf: nil, rules: ScoringRules(),
                                   output: single, batchSize: 7, threads: 2, highValue: .scored))
            : nil
        // The line from the scored customers: the one that needs every rank's spends.
        let summary = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: events, options: EventFileOptions(), asOf: nil, rules: ScoringRules(), output: ranks,
            batchSize: 7, threads: 2, highValue: .scored), roundBytesPerRank: 2048, exchangeBytesPerRound: 900, exchange: exchange)
        guard rank == 0 else {
            checks.expect(summary == nil, "only rank 0 returns a summary")
            return
        }
        guard let reference, let summary else { return checks.expect(false, "rank 0 returned no summary") }
        checks.expect(reference.customers > 300, "\(reference.customers) customers scored")
        checks.expectEqual(summary.customers, reference.customers, "customers")
        checks.expectEqual(summary.customersWithoutHistory, reference.customersWithoutHistory, "customers without history")
        checks.expectEqual(summary.rowsRead, reference.rowsRead, "rows read")
        checks.expectEqual(summary.asOfDay, reference.asOfDay, "as-of day")
        checks.expectEqual(summary.actionCounts, reference.actionCounts, "actions")
        checks.expectEqual(summary.ranks, world.size, "ranks")
        // Every rank writes its share of the file, rank 0 the header besides.
        checks.expectEqual(summary.rankBytesWritten.reduce(0, +), try fileSize(ranks), "bytes written by the ranks together")
        if world.size > 1 {
            let others = summary.rankBytesWritten.dropFirst()
            let average = Double(others.reduce(0, +)) / Double(others.count)
            checks.expect(others.allSatisfy { $0 > 0 }, "every rank wrote rows: \(summary.rankBytesWritten)")
            checks.expect(Double(summary.rankBytesWritten[0]) <= 1.5 * average,
                          "rank 0 wrote \(summary.rankBytesWritten[0]) bytes, the others \(Int(average)) on average")
        }
        let (line, expected) = (summary.highValueLine.amount, reference.highValueLine.amount)
        checks.expect(abs(line - expected) <= 1e-5 * max(1, expected), "high-value line \(line) vs \(expected)")
        checks.expect(!reference.drift.isEmpty, "the checkpoint has a drift reference")
        // Bins of the features count the same customers' same values; the scores' may move a
        // customer across a bin edge only by rounding.
        for (a, b) in zip(summary.drift, reference.drift) where a.kind != .score {
            checks.expectEqual(a.psi, b.psi, "PSI of \(a.name)")
        }
        try compareScoreFiles(ranks, single, exact: world.size == 1 || ForwardKernel.available != .portable, checks: checks)
    }

    checks.check("explanations across ranks: the same reasons as one process") {
        let scorer = LSTMScorer(model: try ScoringModel.load(root: URL(fileURLWithPath: root), run: "test"))
        let single = directory + "explained.jsonl", ranks = directory + "explained-\(world.size).jsonl"
        let settings = ExplanationSettings(steps: 8, baseline: .zeros)
        let reference = rank == 0
            ? try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: events, options: EventFileOptions(), asOf: nil, rules: ScoringRules(),
                                   output: single, batchSize: 16, threads: 1, explain: settings))
            : nil
        let summary = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: events, options: EventFileOptions(), asOf: nil, rules: ScoringRules(), output: ranks,
            batchSize: 16, threads: 1, explain: settings), roundBytesPerRank: 4096, exchangeBytesPerRound: 20_000, exchange: exchange)
        guard rank == 0 else { return checks.expect(summary == nil, "only rank 0 returns a summary") }
        guard let reference, let summary else { return checks.expect(false, "rank 0 returned no summary") }
        let a = try String(contentsOfFile: ranks, encoding: .utf8).split(separator: "\n")
        let b = try String(contentsOfFile: single, encoding: .utf8).split(separator: "\n")
        checks.expectEqual(a.count, b.count, "lines")
        func codes(_ line: Substring) throws -> [String] {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            let reasons = object["reasons"] as! [String: [[String: Any]]]
            return [object["customer_id"] as! String] + (reasons["churn"]! + reasons["spend"]!).map { $0["code"] as! String }
        }
        var differing = 0
        for (x, y) in zip(a, b) where try codes(x) != codes(y) { differing += 1 }
        checks.expectEqual(differing, 0, "customers whose reasons differ")
        guard let mine = summary.meanAbsoluteAttribution, let theirs = reference.meanAbsoluteAttribution else {
            return checks.expect(false, "no attribution summary")
        }
        for (x, y) in zip(mine.churn + mine.spend, theirs.churn + theirs.spend) {
            checks.expect(abs(x - y) <= 1e-4 * max(1e-3, abs(y)), "mean attribution \(x) vs \(y)")
        }
    }

    checks.check("ranks that own no customer still take part: two customers at any rank count, with reasons") {
        let scorer = LSTMScorer(model: try ScoringModel.load(root: URL(fileURLWithPath: root), run: "test"))
        let few = directory + "two-customers.csv"
        if rank == 0 {
            // The fixture's rows of its first two customers.
            let lines = try String(contentsOfFile: events, encoding: .utf8).split(separator: "\n")
            let ids = Array(Set(lines.dropFirst().prefix(40).map { $0.split(separator: ",")[0] })).sorted().prefix(2)
            let kept = lines.dropFirst().filter { ids.contains($0.split(separator: ",")[0]) }
            try ([String(lines[0])] + kept.map(String.init)).joined(separator: "\n").appending("\n")
                .write(toFile: few, atomically: true, encoding: .utf8)
        }
        try world.barrier()
        let settings = ExplanationSettings(steps: 4, baseline: .zeros)
        let single = directory + "two-single.csv", ranks = directory + "two-ranks-\(world.size).csv"
        let reference = rank == 0
            ? try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: few, options: EventFileOptions(), asOf: nil, rules: ScoringRules(),
                                   output: single, explain: settings))
            : nil
        let summary = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: few, options: EventFileOptions(), asOf: nil, rules: ScoringRules(),
                                           output: ranks, explain: settings), exchange: exchange)
        guard rank == 0 else { return checks.expect(summary == nil, "only rank 0 returns a summary") }
        guard let reference, let summary else { return checks.expect(false, "rank 0 returned no summary") }
        checks.expectEqual(summary.customers, 2, "customers")
        checks.expectEqual(reference.customers, 2, "customers in one process")
        checks.expect(summary.meanAbsoluteAttribution != nil, "attributions summarised")
        try compareScoreFiles(ranks, single, exact: world.size == 1 || ForwardKernel.available != .portable, checks: checks)
    }

    checks.check("a refused option stops every rank, rank 0 says why, and nothing is written") {
        let scorer = LSTMScorer(model: try ScoringModel.load(root: URL(fileURLWithPath: root), run: "test"))
        let output = directory + "refused-\(world.size).csv"
        do {
            _ = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: events, options: EventFileOptions(), asOf: nil, rules: ScoringRules(), output: output,
                explain: ExplanationSettings(steps: 8, baseline: .tenureMean)), exchange: exchange)
            checks.expect(false, "tenure-mean explanations were accepted across ranks")
        } catch let error as ScoringError {
            checks.expect(rank == 0 && "\(error)".contains("tenure-mean"), "rank \(rank) threw \(error)")
        } catch is PeerRankFailure {
            checks.expect(rank != 0, "rank 0 must report the reason itself")
        }
        checks.expect(!FileManager.default.fileExists(atPath: output), "no output written")
    }

    checks.check("an output rank 0 cannot create stops every rank with its path named") {
        let scorer = LSTMScorer(model: try ScoringModel.load(root: URL(fileURLWithPath: root), run: "test"))
        let output = directory + "missing-directory/scores.csv"
        do {
            _ = try BatchScoring.run(scorer: scorer, job: BatchScoringJob(events: events, options: EventFileOptions(), asOf: nil, rules: ScoringRules(),
                                     output: output), exchange: exchange)
            checks.expect(false, "scoring into a missing directory succeeded")
        } catch let error as ScoringError {
            checks.expect(rank == 0 && "\(error)".contains("missing-directory"), "rank \(rank) threw \(error)")
        } catch let failure as PeerRankFailure {
            checks.expect(rank != 0 && failure.ranks == [0], "rank \(rank): \(failure)")
        }
    }
}

private func fileSize(_ path: String) throws -> Int {
    (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? -1
}

/// Compares two batch score CSVs: the same header, customers, order, periods, stages and
/// actions, and numbers equal to float32 rounding (or byte for byte with `exact`).
private func compareScoreFiles(_ actualPath: String, _ expectedPath: String, exact: Bool, checks: RankChecks) throws {
    let actual = try String(contentsOfFile: actualPath, encoding: .utf8)
    let expected = try String(contentsOfFile: expectedPath, encoding: .utf8)
    if exact { return checks.expect(actual == expected, "the ranks write one process's bytes") }
    let a = actual.split(separator: "\n"), b = expected.split(separator: "\n")
    checks.expectEqual(a.count, b.count, "rows")
    checks.expectEqual(a.first, b.first, "header")
    let header = b.first!.split(separator: ",")
    var worst = 0.0, mismatches: [String] = []
    for (x, y) in zip(a.dropFirst(), b.dropFirst()) {
        let u = x.split(separator: ",", omittingEmptySubsequences: false)
        let v = y.split(separator: ",", omittingEmptySubsequences: false)
        for (column, (p, q)) in zip(header, zip(u, v)) {
            if let p = Double(p), let q = Double(q), column != "history_periods", column != "customer_id" {
                worst = max(worst, abs(p - q) / max(1, abs(q)))
            } else if p != q {
                mismatches.append("\(column): \(p) vs \(q)")
            }
        }
    }
    checks.expect(mismatches.isEmpty, "ids, order, periods, stages and actions equal: \(mismatches.prefix(5))")
    checks.expect(worst <= 1e-5, "scores equal to float rounding (worst relative difference \(worst))")
}
