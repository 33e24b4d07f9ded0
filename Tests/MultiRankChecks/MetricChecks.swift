import Baselines
import Collectives
import DistributedMetrics
import Foundation
import ModelMetrics
import RankTesting
import TestSupport

// Metrics and baseline fits over customers spread across the ranks must equal the one-process
// ones on all the customers: the AUC exactly, Spearman and the Gini to rounding, a Poisson
// resample's AUC exactly as the AUC of the customers repeated by their weights, and the three
// baseline fits to 1e-6 relative. Every rank makes the same customers from one seed and keeps
// its share: an uneven one, so that a rank can hold none, with scores drawn from a few values
// so that ties run across rank boundaries.

/// Customer `id`'s share: rank 0 gets none when there are several ranks, rank 1 twice the others'.
private func owner(of id: Int, ranks: Int) -> Int {
    guard ranks > 1 else { return 0 }
    let slot = id % ranks
    return slot == 0 ? 1 : slot
}

public func runMetricChecks(_ world: any Communicator, _ checks: RankChecks) {
    let customers = 3_001
    var random = SplitMix64(seed: 77)
    var scores: [Double] = [], labels: [Bool] = [], spend: [Double] = [], predicted: [Double] = []
    for _ in 0..<customers {
        let score = Double(random.next() % 40) / 40
        scores.append(score)
        labels.append(Double(random.next() % 1000) / 1000 < 0.3 + 0.5 * score)
        let zero = random.next() % 3 == 0
        spend.append(zero ? 0 : Double(random.next() % 500) / 7)
        predicted.append(Double(random.next() % 25) + (zero ? 0 : 3))
    }
    let mine = (0..<customers).filter { owner(of: $0, ranks: world.size) == world.rank }
    let ids = mine.map { Int64($0) }

    checks.check("ROC AUC across ranks equals one process exactly, ties across rank boundaries included") {
        let auc = try CrossRankMetrics.rocAUC(scores: mine.map { scores[$0] }, labels: mine.map { labels[$0] }, ids: ids, world: world)
        checks.expectEqual(auc.count, 1, "one value without resampling")
        checks.expectEqual(auc[0], rocAUC(scores: scores, labels: labels), "AUC")
    }
    checks.check("a Poisson resample's AUC is the AUC of every customer repeated by its weight, at any world size") {
        let resampling = PoissonResampling(resamples: 20, seed: 11)
        let auc = try CrossRankMetrics.rocAUC(scores: mine.map { scores[$0] }, labels: mine.map { labels[$0] }, ids: ids,
                                              resampling: resampling, world: world)
        checks.expectEqual(auc.count, 21, "the data and 20 resamples")
        for resample in [1, 7, 20] {
            var repeatedScores: [Double] = [], repeatedLabels: [Bool] = []
            for id in 0..<customers {
                let weight = Int(resampling.weight(id: Int64(id), resample: resample))
                repeatedScores += repeatElement(scores[id], count: weight)
                repeatedLabels += repeatElement(labels[id], count: weight)
            }
            checks.expectEqual(auc[resample], rocAUC(scores: repeatedScores, labels: repeatedLabels), "AUC of resample \(resample)")
        }
        let weights = (1...20).map { resample in (0..<customers).reduce(0.0) { $0 + resampling.weight(id: Int64($1), resample: resample) } }
        let meanWeight = weights.reduce(0, +) / Double(20 * customers)
        checks.expect(abs(meanWeight - 1) < 0.02, "Poisson(1) weights average \(meanWeight), not 1")
    }
    checks.check("Spearman and the normalized Gini across ranks equal one process") {
        let rho = try CrossRankMetrics.spearman(mine.map { predicted[$0] }, mine.map { spend[$0] }, ids: ids, world: world)
        let expectedRho = spearmanCorrelation(predicted, spend)!
        checks.expect(rho.map { abs($0 - expectedRho) < 1e-12 } ?? false, "Spearman \(String(describing: rho)), one process \(expectedRho)")
        let gini = try CrossRankMetrics.normalizedGini(predicted: mine.map { predicted[$0] }, actual: mine.map { spend[$0] },
                                                       ids: ids, world: world)
        let expectedGini = normalizedGini(predicted: predicted, actual: spend)!
        checks.expect(gini.map { abs($0 - expectedGini) < 1e-12 } ?? false, "Gini \(String(describing: gini)), one process \(expectedGini)")
    }
    checks.check("a sample sort leaves every rank's rows in order and below the next rank's") {
        let rows = mine.flatMap { [scores[$0], Double($0)] }
        let share = try DistributedSort.sort(rows, width: 2, keyColumns: [0, 1], world: world)
        checks.expectEqual(share.total, customers, "rows after the sort")
        let keys = (0..<share.count).map { (share.value($0, 0), share.value($0, 1)) }
        checks.expect(zip(keys, keys.dropFirst()).allSatisfy { $0 <= $1 }, "rows out of order on rank \(world.rank)")
        let everyFirst = try world.allgather([share.count > 0 ? Int64(share.value(0, 1)) : -1])
        checks.expectEqual(everyFirst[world.rank], share.count > 0 ? Int64(share.value(0, 1)) : -1, "own first row")
    }
    runBaselineFitChecks(world, checks, owner: { owner(of: $0, ranks: world.size) })
}

/// Customer summaries drawn from the BG/NBD story in whole periods, and a logistic problem.
private func runBaselineFitChecks(_ world: any Communicator, _ checks: RankChecks, owner: (Int) -> Int) {
    var random = SplitMix64(seed: 5)
    func uniform() -> Double { Double(random.next() >> 11) / Double(1 << 53) }
    var summaries: [CustomerSummary] = []
    for _ in 0..<4_000 {
        let age = 5 + Int(uniform() * 48)
        let rate = -log(max(uniform(), 1e-12)) * 0.25
        let dropout = 0.05 + 0.4 * uniform()
        // Mean spends vary between customers (as Gamma-Gamma assumes) far more than within one.
        let typicalSpend = 5 + 40 * -log(max(uniform(), 1e-12))
        var last = 0, repeats = 0, spend = 0.0
        for period in 1...age {
            if uniform() < dropout * 0.2 { break }
            if uniform() < 1 - exp(-rate) {
                repeats += 1
                last = period
                spend += typicalSpend * (0.5 + uniform())
            }
        }
        summaries.append(CustomerSummary(frequency: Double(repeats), recency: Double(last), age: Double(age),
                                         monetaryValue: repeats > 0 ? spend / Double(repeats) : 0))
    }
    let width = 3
    var features: [Double] = [], labels: [Bool] = []
    for _ in 0..<3_000 {
        let row = (0..<width).map { _ in uniform() * 4 - 2 }
        features += row
        labels.append(uniform() < 1 / (1 + exp(-(0.8 * row[0] - 1.2 * row[1] + 0.3))))
    }
    let sums = CustomerSums(
        sum: { values in var total = values; try world.allreduce(&total, op: .sum); return total },
        maximum: { values in var total = values; try world.allreduce(&total, op: .max); return total })
    let mine = summaries.indices.filter { owner($0) == world.rank }
    func close(_ a: [Double], _ b: [Double]) -> Bool {
        zip(a, b).allSatisfy { abs($0 - $1) <= 1e-6 * max(abs($1), 1e-12) }
    }
    checks.check("BG/NBD and Gamma-Gamma fitted across ranks equal the one-process fits") {
        let alone = try BGNBDParameters.fit(summaries)
        let together = try BGNBDParameters.fit(mine.map { summaries[$0] }, across: sums)
        checks.expect(close([together.r, together.alpha, together.a, together.b], [alone.r, alone.alpha, alone.a, alone.b]),
                      "BG/NBD \(together) across \(world.size) ranks, \(alone) in one process")
        let repeaters = summaries.filter { $0.frequency > 0 }
        let spendAlone = try GammaGammaParameters.fit(repeaters)
        let spendTogether = try GammaGammaParameters.fit(mine.map { summaries[$0] }.filter { $0.frequency > 0 }, across: sums)
        checks.expect(close([spendTogether.p, spendTogether.q, spendTogether.v], [spendAlone.p, spendAlone.q, spendAlone.v]),
                      "Gamma-Gamma \(spendTogether) across \(world.size) ranks, \(spendAlone) in one process")
    }
    checks.check("the logistic floor fitted across ranks equals the one-process fit") {
        let alone = try LogisticRegression.fit(features: features, labels: labels, width: width)
        let rows = labels.indices.filter { owner($0) == world.rank }
        let together = try LogisticRegression.fit(
            features: rows.flatMap { features[($0 * width)..<(($0 + 1) * width)] }, labels: rows.map { labels[$0] },
            width: width, across: sums)
        checks.expect(close(together.coefficients + [together.intercept], alone.coefficients + [alone.intercept]),
                      "coefficients \(together.coefficients) + \(together.intercept) across ranks, \(alone.coefficients) + \(alone.intercept) alone")
    }
    checks.check("a rank whose customers cannot be fitted stops every rank with a message") {
        var broken = mine.map { summaries[$0] }
        if world.rank == world.size - 1 { broken.append(CustomerSummary(frequency: 2, recency: 9, age: 3)) }
        do {
            _ = try BGNBDParameters.fit(broken, across: sums)
            checks.expect(false, "a recency above the age was accepted")
        } catch {
            let message = "\(error)"
            checks.expect(message.contains(world.rank == world.size - 1 ? "recency 9.0 outside" : "another rank's customers"),
                          "unexpected message: \(message)")
        }
    }
}
