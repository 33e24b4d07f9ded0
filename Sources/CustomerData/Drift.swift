import Foundation

/// A distribution reduced to fixed bins: cut points at the reference population's deciles
/// and the share of that population in each bin. Scored populations are counted into the same
/// bins and compared by the population stability index.
public struct BinnedDistribution: Codable, Sendable, Equatable {
    public var name: String
    /// Ascending cut points; bin k holds values in (edges[k-1], edges[k]], the last bin the rest.
    public var edges: [Double]
    /// Share of the reference population per bin (edges.count + 1 of them, summing to 1).
    public var fractions: [Double]

    public init(name: String, edges: [Double], fractions: [Double]) {
        self.name = name
        self.edges = edges
        self.fractions = fractions
    }

    /// Bins at the deciles of `values`. Ties merge bins (a value held by 30% of the population
    /// fills one bin, not three identical edges). Per-period counts and spend are zero in most
    /// periods, and deciles of all periods would leave the periods with a purchase one or two
    /// bins, where a changed export (cents for dollars) hardly shows: so when the smallest value
    /// holds a tenth or more of the population it gets a bin of its own, and the deciles are
    /// taken over the rest.
    public static func fit(name: String, values: [Float], bins: Int = 10) -> BinnedDistribution {
        guard !values.isEmpty else { return BinnedDistribution(name: name, edges: [], fractions: [1]) }
        let sorted = values.sorted()
        var edges: [Double] = []
        var rest = sorted[...]
        let smallest = sorted[0]
        let tied = sorted.prefix { $0 == smallest }.count
        if tied * 10 >= sorted.count && tied < sorted.count {
            edges.append(Double(smallest))
            rest = sorted[tied...]
        }
        for k in 1..<bins {
            // The largest value of the lowest k tenths: values up to it fill k bins.
            let edge = Double(rest[rest.startIndex + max(0, k * rest.count / bins - 1)])
            if edge != edges.last && edge < Double(sorted.last!) { edges.append(edge) }
        }
        var counts = [Int](repeating: 0, count: edges.count + 1)
        for value in sorted { counts[bin(of: Double(value), edges: edges)] += 1 }
        return BinnedDistribution(name: name, edges: edges, fractions: counts.map { Double($0) / Double(sorted.count) })
    }

    @inline(__always)
    public static func bin(of value: Double, edges: [Double]) -> Int {
        var low = 0, high = edges.count
        while low < high {
            let middle = (low + high) / 2
            if value <= edges[middle] { high = middle } else { low = middle + 1 }
        }
        return low
    }

    public func bin(of value: Double) -> Int { Self.bin(of: value, edges: edges) }

    /// Population stability index of `counts` (one per bin) against the reference:
    /// Σ (a − e) ln(a / e) over the bins' shares, each floored at 0.0001 so an empty bin counts
    /// as very different rather than infinitely. Nil when nothing was counted.
    public func stabilityIndex(counts: [Int]) -> Double? {
        let total = counts.reduce(0, +)
        guard total > 0, counts.count == fractions.count else { return nil }
        var index = 0.0
        for (k, count) in counts.enumerated() {
            let actual = max(Double(count) / Double(total), 1e-4)
            let expected = max(fractions[k], 1e-4)
            index += (actual - expected) * log(actual / expected)
        }
        return index
    }
}

/// What training saw, for comparing scored populations with it: every sequence feature (its
/// normalised value at each valid period), the customer-level input (history length), and the
/// model's two scores, binned at the training customers' deciles. Stored in each LSTM checkpoint
/// as `drift.json`.
public struct DriftReference: Codable, Sendable, Equatable {
    public static let fileName = "drift.json"
    /// 2 adds `trainingSpends`; a version 1 reference (an older checkpoint) has none.
    public var version = 2
    public var population: String
    public var features: [BinnedDistribution]
    public var inputs: [BinnedDistribution]
    /// `churn_probability` and `expected_spend`.
    public var scores: [BinnedDistribution]
    /// The model's expected spend of each sampled training customer, ascending: scoring draws
    /// the high-value line from these, so that every scored population (a batch file, one
    /// request) meets the same line. Nil in checkpoints written before it was stored.
    public var trainingSpends: [Float]?

    public static let inputNames = ["history_periods"]
    public static let scoreNames = ["churn_probability", "expected_spend"]

    public init(population: String, features: [BinnedDistribution], inputs: [BinnedDistribution], scores: [BinnedDistribution],
                trainingSpends: [Float]? = nil) {
        self.population = population
        self.features = features
        self.inputs = inputs
        self.scores = scores
        self.trainingSpends = trainingSpends
    }

    /// Feature and input bins over `customers` of `dataset` (its training customers), reading at
    /// most `limit` of them, evenly spaced: every valid period's values are held to sort them
    /// (4 bytes × periods × features a customer, 25 MB for 20,000 CDNOW-length customers), and
    /// deciles need far fewer values than a large dataset has.
    public static func features(of dataset: CustomerDataset, customers: [Int], limit: Int = 20_000) throws -> (features: [BinnedDistribution], inputs: [BinnedDistribution]) {
        let sample = evenlySpaced(customers, limit: limit)
        let width = dataset.featureCount
        var values = [[Float]](repeating: [], count: width)
        var lengths: [Float] = []
        let row = UnsafeMutablePointer<Float>.allocate(capacity: dataset.historyLength * width)
        defer { row.deallocate() }
        for index in sample {
            // pread, not the mapping: the coordinator keeps the features it does not send unmapped.
            try dataset.readFeatures(of: index, into: row)
            let length = Int(dataset.lengths[index])
            lengths.append(Float(length))
            for t in 0..<length { for f in 0..<width { values[f].append(row[t * width + f]) } }
        }
        let names = dataset.manifest.featureNames
        return (values.enumerated().map { BinnedDistribution.fit(name: names[$0.offset], values: $0.element) },
                [BinnedDistribution.fit(name: inputNames[0], values: lengths)])
    }

    /// The reference of a model over `customers` (the training customers): `features` from
    /// `features(of:customers:)` (computed once per run by the caller), and the scores `score`
    /// gives to up to `scoreSample` of the customers, evenly spaced. `score(features, lengths,
    /// count, churn, spend)` scores a block of at most 256 customers.
    public static func make(
        dataset: CustomerDataset, customers: [Int], features: (features: [BinnedDistribution], inputs: [BinnedDistribution]),
        scoreSample: Int = 2_000,
        score: (UnsafePointer<Float>, UnsafePointer<Int32>, Int, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) -> Void
    ) throws -> DriftReference {
        let sample = evenlySpaced(customers, limit: scoreSample)
        let rowSize = dataset.historyLength * dataset.featureCount, block = 256
        var rows = [Float](repeating: 0, count: block * rowSize)
        var lengths = [Int32](repeating: 0, count: block)
        var churn = [Float](repeating: 0, count: sample.count), spend = churn
        var start = 0
        while start < sample.count {
            let n = min(block, sample.count - start)
            try rows.withUnsafeMutableBufferPointer { out in
                for k in 0..<n {
                    try dataset.readFeatures(of: sample[start + k], into: out.baseAddress! + k * rowSize)
                    lengths[k] = dataset.lengths[sample[start + k]]
                }
            }
            churn.withUnsafeMutableBufferPointer { c in
                spend.withUnsafeMutableBufferPointer { s in
                    score(rows, lengths, n, c.baseAddress! + start, s.baseAddress! + start)
                }
            }
            start += n
        }
        return DriftReference(
            population: "training customers (\(sample.count) of them for the scores)",
            features: features.features, inputs: features.inputs,
            scores: [BinnedDistribution.fit(name: scoreNames[0], values: churn), BinnedDistribution.fit(name: scoreNames[1], values: spend)],
            trainingSpends: spend.sorted())
    }

    /// At most `limit` of `items`, evenly spaced, in order.
    public static func evenlySpaced(_ items: [Int], limit: Int) -> [Int] {
        guard items.count > limit, limit > 0 else { return items }
        return (0..<limit).map { items[$0 * items.count / limit] }
    }
}

/// Counts of a scored population in a reference's bins, and their stability indices.
public struct DriftCounter: Sendable, Equatable {
    public let reference: DriftReference
    public private(set) var features: [[Int]]
    public private(set) var inputs: [[Int]]
    public private(set) var scores: [[Int]]
    public private(set) var customers = 0

    public init(reference: DriftReference) {
        self.reference = reference
        features = reference.features.map { [Int](repeating: 0, count: $0.fractions.count) }
        inputs = reference.inputs.map { [Int](repeating: 0, count: $0.fractions.count) }
        scores = reference.scores.map { [Int](repeating: 0, count: $0.fractions.count) }
    }

    /// Adds one customer: its normalised sequence ([T, F], `length` valid periods) and scores.
    public mutating func add(sequence: UnsafePointer<Float>, length: Int, churn: Float, spend: Float) {
        let width = features.count
        for t in 0..<length {
            for f in 0..<width { features[f][reference.features[f].bin(of: Double(sequence[t * width + f]))] += 1 }
        }
        if !inputs.isEmpty { inputs[0][reference.inputs[0].bin(of: Double(length))] += 1 }
        if scores.count == 2 {
            scores[0][reference.scores[0].bin(of: Double(churn))] += 1
            scores[1][reference.scores[1].bin(of: Double(spend))] += 1
        }
        customers += 1
    }

    public mutating func merge(_ other: DriftCounter) {
        for f in features.indices { for k in features[f].indices { features[f][k] += other.features[f][k] } }
        for i in inputs.indices { for k in inputs[i].indices { inputs[i][k] += other.inputs[i][k] } }
        for s in scores.indices { for k in scores[s].indices { scores[s][k] += other.scores[s][k] } }
        customers += other.customers
    }

    public mutating func reset() { self = DriftCounter(reference: reference) }

    /// Every bin count, features then inputs then scores, and the customer count last: what
    /// ranks sum to count a population scored in parts.
    public var flattenedCounts: [Int] { features.flatMap { $0 } + inputs.flatMap { $0 } + scores.flatMap { $0 } + [customers] }

    /// Replaces the counts with `counts` in `flattenedCounts`' layout.
    public mutating func setCounts(_ counts: [Int]) {
        precondition(counts.count == flattenedCounts.count, "drift counts from a counter of another reference")
        var next = counts.makeIterator()
        for f in features.indices { for k in features[f].indices { features[f][k] = next.next()! } }
        for i in inputs.indices { for k in inputs[i].indices { inputs[i][k] = next.next()! } }
        for s in scores.indices { for k in scores[s].indices { scores[s][k] = next.next()! } }
        customers = next.next()!
    }


    /// (kind, name, PSI) for every feature, input and score, in the reference's order.
    public func stabilityIndices() -> [DriftIndex] {
        var result: [DriftIndex] = []
        for (f, distribution) in reference.features.enumerated() {
            if let psi = distribution.stabilityIndex(counts: features[f]) { result.append(DriftIndex(kind: .feature, name: distribution.name, psi: psi)) }
        }
        for (i, distribution) in reference.inputs.enumerated() {
            if let psi = distribution.stabilityIndex(counts: inputs[i]) { result.append(DriftIndex(kind: .input, name: distribution.name, psi: psi)) }
        }
        for (s, distribution) in reference.scores.enumerated() {
            if let psi = distribution.stabilityIndex(counts: scores[s]) { result.append(DriftIndex(kind: .score, name: distribution.name, psi: psi)) }
        }
        return result
    }
}

/// One stability index of a scored population.
public struct DriftIndex: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable { case feature, input, score }
    public var kind: Kind
    public var name: String
    public var psi: Double

    /// The usual reading: below 0.1 stable, up to 0.2 a moderate shift, above 0.2 a large one.
    public var verdict: String { psi < 0.1 ? "stable" : psi <= 0.2 ? "moderate shift" : "large shift" }
}
