import Collectives
import Foundation
import MultiRankChecks
import RankTesting
import Testing

/// The multi-rank checks that clm-multirank-tests runs under mpirun, here on ranks that are
/// threads of this process: the in-process communicator must pass what MPI passes, and the
/// multi-rank import and batch scoring must equal one process at every world size.
@Suite struct InProcessRanksTests {
    /// Runs `checks` on `ranks` thread ranks and requires every rank to pass all it ran.
    private func expectEveryRankPasses(
        ranks: Int, sourceLocation: SourceLocation = #_sourceLocation, _ body: @escaping @Sendable (any Communicator, RankChecks) -> Void
    ) {
        let outcomes = InProcessRanks.run(ranks: ranks, timeout: .seconds(120)) { world in
            let checks = RankChecks(rank: world.rank, size: world.size)
            body(world, checks)
            return (passed: checks.passed, failed: checks.failed)
        }
        for (rank, outcome) in outcomes.enumerated() {
            switch outcome {
            case .success(let counts):
                #expect(counts.failed == 0, "rank \(rank) of \(ranks) failed \(counts.failed) checks (FAIL lines above)", sourceLocation: sourceLocation)
                #expect(counts.passed > 0, "rank \(rank) of \(ranks) ran no check", sourceLocation: sourceLocation)
            case .failure(let error):
                Issue.record("rank \(rank) of \(ranks) threw \(error)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test(arguments: [1, 2, 3, 4]) func everyCollectiveGivesExactResults(ranks: Int) {
        expectEveryRankPasses(ranks: ranks) { runCollectiveChecks($0, $1, largeBuffers: false) }
    }

    @Test(arguments: [1, 2, 3, 4]) func importAcrossRanksWritesOneProcessDataset(ranks: Int) {
        expectEveryRankPasses(ranks: ranks) { runImportChecks($0, $1) }
    }

    @Test(arguments: [1, 2, 3, 4]) func batchScoringAcrossRanksEqualsOneProcess(ranks: Int) {
        expectEveryRankPasses(ranks: ranks) { runScoringChecks($0, $1) }
    }

    @Test(arguments: [1, 2, 3, 4]) func graphSamplingAcrossRanksDrawsWhatOneProcessDraws(ranks: Int) {
        expectEveryRankPasses(ranks: ranks) { runGraphSamplingChecks($0, $1) }
    }

    @Test(arguments: [1, 2, 3, 4]) func metricsAndBaselineFitsAcrossRanksEqualOneProcess(ranks: Int) {
        expectEveryRankPasses(ranks: ranks) { runMetricChecks($0, $1) }
    }

    @Test func aRankThatNeverArrivesIsNamedWithinTheLimit() {
        let othersGaveUp = DispatchSemaphore(value: 0)
        let started = ContinuousClock.now
        let outcomes = InProcessRanks.run(ranks: 3, timeout: .milliseconds(300)) { world -> Void in
            // Rank 2 stays away from the barrier until the others have given up on it.
            if world.rank == 2 {
                for _ in 0..<2 { _ = othersGaveUp.wait(timeout: .now() + 30) }
                return
            }
            defer { othersGaveUp.signal() }
            try world.barrier()
        }
        let waited = ContinuousClock.now - started
        for rank in 0..<2 {
            guard case .failure(let error) = outcomes[rank] else {
                Issue.record("rank \(rank) passed a barrier rank 2 never reached")
                continue
            }
            #expect("\(error)".contains("ranks that did not arrive: 2"), "rank \(rank): \(error)")
        }
        #expect(waited < .seconds(10), "the group gave up after \(waited)")
    }

    @Test func aRankThatEndsEarlyFailsTheOthersAtOnce() {
        let outcomes = InProcessRanks.run(ranks: 2, timeout: .seconds(60)) { world -> Int in
            if world.rank == 1 { return 1 }
            try world.barrier()
            return 0
        }
        guard case .failure(let error) = outcomes[0] else {
            Issue.record("rank 0 passed a barrier that rank 1 left before reaching")
            return
        }
        #expect("\(error)".contains("rank 1 ended without reaching barrier"), "\(error)")
        #expect((try? outcomes[1].get()) == 1)
    }

    @Test func afterOneFailureEveryLaterCollectiveFailsToo() {
        let rankZeroGaveUp = DispatchSemaphore(value: 0)
        let outcomes = InProcessRanks.run(ranks: 2, timeout: .milliseconds(200)) { world -> String in
            if world.rank == 0 {
                _ = try? world.barrier()
                rankZeroGaveUp.signal()
            } else {
                // Rank 1 arrives only after rank 0 gave up: it must not wait for a partner that left.
                guard rankZeroGaveUp.wait(timeout: .now() + 30) == .success else { return "rank 0 never gave up" }
            }
            do { try world.barrier() } catch { return "\(error)" }
            return "passed"
        }
        for (rank, outcome) in outcomes.enumerated() {
            let text = (try? outcome.get()) ?? ""
            #expect(text.contains("ranks that did not arrive: 1"), "rank \(rank): \(text)")
        }
    }
}
