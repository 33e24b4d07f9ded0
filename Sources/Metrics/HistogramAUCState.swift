/// Mergeable approximate ROC AUC from fixed-bin histograms of positive and negative scores.
///
/// Scores must be probabilities in [0, 1]. Bin `i` of `binCount` holds the scores in
/// [i/binCount, (i+1)/binCount), the last bin also holding 1.0. The exact AUC needs every score
/// of every rank; this state needs `2 · binCount` numbers whatever the data size, and merges by
/// addition.
///
/// ## Error bound
///
/// The AUC is the fraction of (positive, negative) pairs ordered correctly, ties counting 0.5.
/// Binning is monotone, so a pair in different bins is ordered by the bins exactly as by the
/// scores and contributes the same as in the exact AUC. A pair in the same bin is scored 0.5,
/// while its exact contribution is 0, 0.5 or 1: an error of at most 0.5 per pair. Hence
///
///     |histogram AUC − exact AUC| ≤ 0.5 · (pairs sharing a bin) / (positives · negatives)
///
/// and the state knows the right-hand side exactly, Σᵢ positivesᵢ · negativesᵢ being the pairs
/// sharing a bin; `aucErrorBound` returns it. The bound is reached when every same-bin pair is
/// ordered the same way (e.g. all positives just above all negatives within one bin); it is
/// loose when scores within a bin are mixed.
///
/// Packed layout (2 · binCount values): the positive counts by bin, then the negative counts.
public struct HistogramAUCState: MergeableMetricState {
    /// Number of equal-width bins over [0, 1].
    public let binCount: Int
    /// Positives per bin.
    public private(set) var positives: [Int]
    /// Negatives per bin.
    public private(set) var negatives: [Int]

    /// An empty state with `binCount` ≥ 1 bins.
    public init(binCount: Int = 10_000) {
        precondition(binCount >= 1, "HistogramAUCState: binCount \(binCount) must be at least 1")
        self.binCount = binCount
        self.positives = [Int](repeating: 0, count: binCount)
        self.negatives = [Int](repeating: 0, count: binCount)
    }

    /// Rebuilds a state from `packed` (e.g. after a sum all-reduce); the bin count is half its
    /// length. `nil` when the length is not a positive even number or a value is not a
    /// non-negative integer.
    public init?(packed: [Double]) {
        guard packed.count >= 2, packed.count % 2 == 0 else { return nil }
        let binCount = packed.count / 2
        var positives = [Int]()
        var negatives = [Int]()
        positives.reserveCapacity(binCount)
        negatives.reserveCapacity(binCount)
        for bin in 0..<binCount {
            guard let positive = countFromPacked(packed[bin]),
                  let negative = countFromPacked(packed[binCount + bin]) else { return nil }
            positives.append(positive)
            negatives.append(negative)
        }
        self.binCount = binCount
        self.positives = positives
        self.negatives = negatives
    }

    /// The bin of `score`, which must be in [0, 1] (NaN is a precondition failure).
    public func bin(of score: Double) -> Int {
        precondition((0.0...1.0).contains(score), "HistogramAUCState: score \(score) is outside [0, 1]")
        // Multiplying by a positive constant and truncating are both monotone, so the bin order
        // never contradicts the score order; the clamp only moves 1.0 into the last bin.
        return min(Int(score * Double(binCount)), binCount - 1)
    }

    /// Records one score; it must be in [0, 1].
    public mutating func add(score: Double, label: Bool) {
        let index = bin(of: score)
        if label { positives[index] += 1 } else { negatives[index] += 1 }
    }

    /// Records one score per label; the counts must match.
    public mutating func add(scores: [Double], labels: [Bool]) {
        precondition(
            scores.count == labels.count,
            "HistogramAUCState: \(scores.count) scores but \(labels.count) labels"
        )
        for index in scores.indices {
            add(score: scores[index], label: labels[index])
        }
    }

    /// Adds `other`'s observations; the bin counts must be equal.
    public mutating func merge(_ other: HistogramAUCState) {
        precondition(
            binCount == other.binCount,
            "HistogramAUCState: cannot merge \(other.binCount) bins into \(binCount)"
        )
        for bin in 0..<binCount {
            positives[bin] += other.positives[bin]
            negatives[bin] += other.negatives[bin]
        }
    }

    public var packed: [Double] {
        var values = [Double]()
        values.reserveCapacity(2 * binCount)
        for count in positives { values.append(Double(count)) }
        for count in negatives { values.append(Double(count)) }
        return values
    }

    public func rebuilt(fromPacked packed: [Double]) -> HistogramAUCState? {
        guard packed.count == 2 * binCount else { return nil }
        return HistogramAUCState(packed: packed)
    }

    /// Number of positive observations.
    public var positiveCount: Int { positives.reduce(0, +) }
    /// Number of negative observations.
    public var negativeCount: Int { negatives.reduce(0, +) }
    /// Number of observations.
    public var count: Int { positiveCount + negativeCount }

    /// ROC AUC with same-bin pairs counted as ties; `nil` without both a positive and a negative.
    public var rocAUC: Double? {
        guard let (correctlyOrdered, _, pairs) = pairCounts() else { return nil }
        return correctlyOrdered / pairs
    }

    /// The most `rocAUC` can differ from the exact AUC of the same scores; `nil` when `rocAUC` is.
    ///
    /// Half the fraction of positive–negative pairs that share a bin (see the type's documentation).
    public var aucErrorBound: Double? {
        guard let (_, sameBin, pairs) = pairCounts() else { return nil }
        return 0.5 * sameBin / pairs
    }

    /// Pairs ordered correctly (same-bin pairs as 0.5), pairs sharing a bin, and all
    /// positive–negative pairs; `nil` when there are no such pairs.
    ///
    /// Kept in `Double`: the pair counts can exceed `Int.max` long before the counts themselves.
    private func pairCounts() -> (correctlyOrdered: Double, sameBin: Double, pairs: Double)? {
        var correctlyOrdered = 0.0
        var sameBin = 0.0
        var negativesBelow = 0.0
        var positiveTotal = 0.0
        for bin in 0..<binCount {
            let positive = Double(positives[bin])
            let negative = Double(negatives[bin])
            correctlyOrdered += positive * (negativesBelow + 0.5 * negative)
            sameBin += positive * negative
            negativesBelow += negative
            positiveTotal += positive
        }
        let pairs = positiveTotal * negativesBelow
        return pairs == 0 ? nil : (correctlyOrdered, sameBin, pairs)
    }
}
