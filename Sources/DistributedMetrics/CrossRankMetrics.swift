import Collectives
import Foundation
import ModelMetrics

/// Metrics over the customers of every rank, each rank passing only its own. Equal to the
/// one-process functions of ModelMetrics on the concatenated inputs: exactly for the ROC AUC
/// (its sums are of integers and halves), to rounding for Spearman and the Gini, whose sums are
/// added in another order. `ids` name the customers (unique across ranks): they break ties for an
/// even split of the sorts and key the bootstrap weights.
public enum CrossRankMetrics {
    /// The ROC AUC of the data (element 0) and of each Poisson resample (elements 1…), ties
    /// counting one half; nil where a resample has no positive or no negative.
    public static func rocAUC(
        scores: [Double], labels: [Bool], ids: [Int64], resampling: PoissonResampling? = nil, world: any Communicator
    ) throws -> [Double?] {
        precondition(scores.count == labels.count && scores.count == ids.count, "one score, label and id per customer")
        let width = 3
        var rows = [Double](repeating: 0, count: scores.count * width)
        for index in scores.indices {
            precondition(!scores[index].isNaN, "rocAUC: score at index \(index) is NaN")
            rows[index * width] = scores[index]
            rows[index * width + 1] = labels[index] ? 1 : 0
            rows[index * width + 2] = Double(ids[index])
        }
        let share = try DistributedSort.sort(rows, width: width, keyColumns: [0, 2], world: world)
        let groups = try share.tieGroups(column: 0, world: world)
        let copies = 1 + (resampling?.resamples ?? 0)

        // Memory stays O(resamples): each group's weighted counts are summed into one reused
        // pair of arrays, once for the totals the other ranks need and once for the pairs.
        var groupPositives = [Double](repeating: 0, count: copies)
        var groupNegatives = [Double](repeating: 0, count: copies)
        func count(_ group: TieGroup) {
            for copy in 0..<copies { groupPositives[copy] = 0; groupNegatives[copy] = 0 }
            for row in group.localRows {
                let id = Int64(share.value(row, 2))
                if share.value(row, 1) == 1 {
                    for copy in 0..<copies { groupPositives[copy] += resampling?.weight(id: id, resample: copy) ?? 1 }
                } else {
                    for copy in 0..<copies { groupNegatives[copy] += resampling?.weight(id: id, resample: copy) ?? 1 }
                }
            }
        }
        // Every rank's totals and the negatives of its first and last groups, for the groups and
        // the prefix that cross rank boundaries.
        var summary = [Double](repeating: 0, count: 4 * copies)
        for (index, group) in groups.enumerated() {
            count(group)
            for copy in 0..<copies {
                summary[copy] += groupNegatives[copy]
                summary[copies + copy] += groupPositives[copy]
                if index == 0 { summary[2 * copies + copy] = groupNegatives[copy] }
                if index == groups.count - 1 { summary[3 * copies + copy] = groupNegatives[copy] }
            }
        }
        var every = [Double](repeating: 0, count: summary.count * world.size)
        try summary.withUnsafeBufferPointer { source in
            try every.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
        }
        func negatives(_ rank: Int, _ copy: Int) -> Double { every[rank * 4 * copies + copy] }
        func positives(_ rank: Int, _ copy: Int) -> Double { every[rank * 4 * copies + copies + copy] }
        func firstNegatives(_ rank: Int, _ copy: Int) -> Double { every[rank * 4 * copies + 2 * copies + copy] }
        func lastNegatives(_ rank: Int, _ copy: Int) -> Double { every[rank * 4 * copies + 3 * copies + copy] }

        var correctlyOrdered = [Double](repeating: 0, count: copies)
        var below = (0..<copies).map { copy in (0..<world.rank).reduce(0.0) { $0 + negatives($1, copy) } }
        for group in groups {
            count(group)
            for copy in 0..<copies {
                let local = groupNegatives[copy]
                var groupBelow = below[copy]
                var groupTotal = local
                if group.firstRank != world.rank || group.lastRank != world.rank {
                    let first = group.firstRank, last = group.lastRank
                    if first != world.rank {
                        groupBelow = (0..<first).reduce(0.0) { $0 + negatives($1, copy) }
                            + negatives(first, copy) - lastNegatives(first, copy)
                    }
                    groupTotal = first == world.rank ? local : lastNegatives(first, copy)
                    for rank in (first + 1)..<max(last, first + 1) { groupTotal += negatives(rank, copy) }
                    if last != first { groupTotal += last == world.rank ? local : firstNegatives(last, copy) }
                }
                correctlyOrdered[copy] += groupPositives[copy] * (groupBelow + 0.5 * groupTotal)
                below[copy] += local
            }
        }
        try world.allreduce(&correctlyOrdered, op: .sum)
        return (0..<copies).map { copy in
            let allPositives = (0..<world.size).reduce(0.0) { $0 + positives($1, copy) }
            let allNegatives = (0..<world.size).reduce(0.0) { $0 + negatives($1, copy) }
            let pairs = allPositives * allNegatives
            return pairs > 0 ? correctlyOrdered[copy] / pairs : nil
        }
    }

    /// Spearman's rank correlation over every rank's pairs (tie-averaged ranks, as scipy's).
    public static func spearman(_ x: [Double], _ y: [Double], ids: [Int64], world: any Communicator) throws -> Double? {
        precondition(x.count == y.count && x.count == ids.count, "one x, y and id per customer")
        var rows = [Double](repeating: 0, count: x.count * 3)
        for index in x.indices {
            rows[index * 3] = x[index]
            rows[index * 3 + 1] = y[index]
            rows[index * 3 + 2] = Double(ids[index])
        }
        // Ranks of x, carried with y to the sort by y.
        let byX = try DistributedSort.sort(rows, width: 3, keyColumns: [0, 2], world: world)
        var ranked = [Double](repeating: 0, count: byX.rows.count)
        for group in try byX.tieGroups(column: 0, world: world) {
            for row in group.localRows {
                ranked[row * 3] = byX.value(row, 1)
                ranked[row * 3 + 1] = group.averageRank
                ranked[row * 3 + 2] = byX.value(row, 2)
            }
        }
        let byY = try DistributedSort.sort(ranked, width: 3, keyColumns: [0, 2], world: world)
        let count = Double(byY.total)
        guard count > 1 else { return nil }
        // Tie-averaged ranks of n values always average (n + 1)/2.
        let mean = (count + 1) / 2
        var sums = [0.0, 0.0, 0.0]
        for group in try byY.tieGroups(column: 0, world: world) {
            let dy = group.averageRank - mean
            for row in group.localRows {
                let dx = byY.value(row, 1) - mean
                sums[0] += dx * dy
                sums[1] += dx * dx
                sums[2] += dy * dy
            }
        }
        try world.allreduce(&sums, op: .sum)
        guard sums[1] > 0, sums[2] > 0 else { return nil }
        return sums[0] / (sums[1] * sums[2]).squareRoot()
    }

    /// The normalized Gini of `predicted` against `actual` over every rank's customers, as
    /// `normalizedGini` (ties in the prediction broken against the model).
    public static func normalizedGini(
        predicted: [Double], actual: [Double], ids: [Int64], world: any Communicator
    ) throws -> Double? {
        precondition(predicted.count == actual.count && predicted.count == ids.count, "one prediction, value and id per customer")
        var byPrediction = [Double](repeating: 0, count: actual.count * 3)
        var byActual = [Double](repeating: 0, count: actual.count * 2)
        for index in actual.indices {
            byPrediction[index * 3] = -predicted[index]
            byPrediction[index * 3 + 1] = actual[index]
            byPrediction[index * 3 + 2] = Double(ids[index])
            byActual[index * 2] = -actual[index]
            byActual[index * 2 + 1] = Double(ids[index])
        }
        let model = try gini(DistributedSort.sort(byPrediction, width: 3, keyColumns: [0, 1, 2], world: world),
                             valueColumn: 1, negated: false, world: world)
        let best = try gini(DistributedSort.sort(byActual, width: 2, keyColumns: [0, 1], world: world),
                            valueColumn: 0, negated: true, world: world)
        guard let model, let best, best > 0 else { return nil }
        return model / best
    }

    /// The Gini of the values in `valueColumn` in the share's global order: the area under
    /// their Lorenz curve from the first row, against the diagonal.
    private static func gini(_ share: SortedShare, valueColumn: Int, negated: Bool, world: any Communicator) throws -> Double? {
        var local = 0.0
        for row in 0..<share.count { local += negated ? -share.value(row, valueColumn) : share.value(row, valueColumn) }
        var totals = [Double](repeating: 0, count: world.size)
        try [local].withUnsafeBufferPointer { source in
            try totals.withUnsafeMutableBufferPointer { try world.allgather(source, into: $0) }
        }
        let total = totals.reduce(0, +)
        var cumulative = totals[..<world.rank].reduce(0, +)
        var area = [0.0]
        guard total > 0 else { return nil }
        for row in 0..<share.count {
            cumulative += negated ? -share.value(row, valueColumn) : share.value(row, valueColumn)
            area[0] += cumulative / total
        }
        try world.allreduce(&area, op: .sum)
        let n = Double(share.total)
        return area[0] / n - (n + 1) / (2 * n)
    }

    /// The 95% percentile interval of a statistic's values over the resamples (nil ones skipped).
    public static func interval(_ resampled: some Sequence<Double?>) -> BootstrapInterval? {
        percentileInterval(resampled.compactMap { $0 }.filter(\.isFinite))
    }
}

extension MergeableMetricState {
    /// This rank's state merged with every other rank's.
    public func mergedAcross(_ world: any Communicator) throws -> Self {
        var values = packed
        try world.allreduce(&values, op: .sum)
        guard let merged = rebuilt(fromPacked: values) else {
            preconditionFailure("a sum of valid \(Self.self) states is valid")
        }
        return merged
    }
}
