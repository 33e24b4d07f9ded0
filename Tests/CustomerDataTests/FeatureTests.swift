import Foundation
import Testing
import Tensors
@testable import CustomerData

// Period 7, history 4, cut-off day 27: periods are days 0-6, 7-13, 14-20, 21-27; the horizon
// is days 28-41. Customers:
//   A: one purchase before the window (day -10), two in period 0, one in period 3, one in the
//      horizon and one after it.
//   B: first purchase in period 2 (two rows on consecutive days), one on the cut-off day.
//   C: only a horizon purchase, so not in the dataset.
//   D: order lines (two lines of order o1 count once), products p1/p2 before the cut-off and
//      four horizon orders.
let handMadeEvents = """
customer_id,timestamp,amount,quantity,product_id,order_id
A,-10,10,1,,
A,2,20,2,,
A,3,5,1,,
A,22,30,1,,
A,30,7,1,,
A,45,100,1,,
B,15,12,1,,
B,16,8,1,,
B,27,4,1,,
C,28,9,1,,
D,5,3,1,p1,o1
D,5,4,2,p2,o1
D,6,2,1,p1,o2
D,29,1,1,p3,o3
D,30,1,1,p1,o4
D,31,1,1,p1,o5
D,35,1,1,p2,o6

"""

private func expectSteps(_ data: CustomerDataset, customer: Int, _ expected: [[Double]], sourceLocation: SourceLocation = #_sourceLocation) {
    for (step, row) in expected.enumerated() {
        for (feature, value) in row.enumerated() {
            let actual = rawFeature(data, customer: customer, step: step, feature: feature)
            #expect(abs(actual - value) < 1e-4, "customer \(customer) step \(step) \(customerFeatureNames[feature]): \(actual) != \(value)", sourceLocation: sourceLocation)
        }
    }
}

@Test func featuresAndLabelsMatchHandComputedValues() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var options = dayOptions(cutoff: 27)
    options.split = SplitOptions(seed: 7, trainFraction: 1, validationFraction: 0)
    let (summary, data) = try importFile(scratch.file("events.csv", handMadeEvents), into: scratch, options)

    #expect(try data.customerIDs() == ["A", "B", "D"])
    #expect(summary.manifest.counts.customersWithoutHistory == 1)
    #expect(summary.manifest.counts.eventsAfterHorizon == 1)
    #expect(summary.stats.rows == 17 && summary.stats.imported == 17 && summary.stats.rejected == 0)
    #expect(Array(data.lengths) == [4, 2, 4])

    let l = { (x: Double) in Foundation.log1p(x) }
    expectSteps(data, customer: 0, [
        [2, 3, l(25), 1, 2, 0, l(3), l(35.0 / 3)],
        [0, 0, 0, 0, 3, 1, l(3), l(35.0 / 3)],
        [0, 0, 0, 0, 4, 2, l(3), l(35.0 / 3)],
        [1, 1, l(30), 1, 5, 0, l(4), l(65.0 / 4)],
    ])
    expectSteps(data, customer: 1, [
        [2, 2, l(20), 1, 0, 0, l(2), l(10)],
        [1, 1, l(4), 1, 1, 0, l(3), l(8)],
    ])
    // D: o1's two lines are one transaction with 3 items; o2 is the second.
    expectSteps(data, customer: 2, [
        [2, 4, l(9), 1, 0, 0, l(2), l(4.5)],
        [0, 0, 0, 0, 1, 1, l(2), l(4.5)],
    ])
    // Padding stays exactly zero after normalisation.
    for step in 2..<4 {
        for f in 0..<data.featureCount { #expect(data.features[(1 * 4 + step) * 8 + f] == 0) }
    }

    #expect(Array(data.churn) == [0, 1, 0])
    #expect(Array(data.stage) == [1, 0, 3])
    #expect(Array(data.spend) == [7, 0, 4])
    #expect(summary.manifest.labels.stageCounts == [1, 1, 0, 1])

    // All customers are in train here: the mean of `transactions` over the 10 valid steps.
    #expect(abs(data.manifest.normalisation.mean[0] - 8.0 / 10) < 1e-12)
    let sumOfSquares: Double = 14 // A: 4 + 1, B: 4 + 1, D: 4
    let variance = sumOfSquares / 10 - 0.64
    #expect(abs(data.manifest.normalisation.std[0] - variance.squareRoot()) < 1e-12)
}

@Test func stageThresholdsAreConfigurable() throws {
    let spec = FeatureSpec(cutoffDay: 0, stageThresholds: [2, 5, 9])
    #expect([0, 1, 2, 4, 5, 8, 9, 20].map { spec.stage(forPurchases: $0) } == [0, 0, 1, 1, 2, 2, 3, 3])
    #expect(FeatureSpec(cutoffDay: 0).stage(forPurchases: 3) == 2)
    #expect(throws: DataError.self) { try FeatureSpec(cutoffDay: 0, stageThresholds: [2, 2, 3]).validate() }
    #expect(throws: DataError.self) { try FeatureSpec(cutoffDay: 0, stageThresholds: [0, 2, 3]).validate() }
}

@Test func normalisationUsesTrainingCustomersOnly() throws {
    // Find ids that the seed puts in validation and in train.
    func part(_ id: String) -> UInt8 {
        withBytesOf(id) { p, n in splitAssignment(customerID: UnsafeRawBufferPointer(start: p, count: n), seed: 3, trainFraction: 0.5, validationFraction: 0.5) }
    }
    let ids = (0..<200).map { "cust\($0)" }
    let trainID = ids.first { part($0) == 0 }!
    let validationID = ids.first { part($0) == 1 }!
    let scratch = Scratch()
    defer { scratch.cleanup() }
    var options = dayOptions(cutoff: 27)
    options.split = SplitOptions(seed: 3, trainFraction: 0.5, validationFraction: 0.5)
    var means: [[Double]] = []
    for validationSpend in [1, 100_000] {
        let csv = "customer_id,timestamp,amount\n\(trainID),3,10\n\(trainID),20,4\n\(validationID),5,\(validationSpend)\n"
        let (_, data) = try importFile(scratch.file("e\(validationSpend).csv", csv), into: scratch, options, name: "d\(validationSpend)")
        #expect(data.manifest.split.sizes == [1, 1, 0])
        means.append(data.manifest.normalisation.mean)
    }
    #expect(means[0] == means[1])
}

@Test func normalisationSumsAreExactWhateverTheOrderAndGrouping() {
    // Ranks of an import each fit the rows they write; their sums must add up to one process's
    // bit for bit, in any order and grouping, and stay within rounding of the float64 sums.
    var random = SeededRandom(seed: 5, purpose: .synthesis)
    let width = 8
    var fitter = NormalisationFitter(width: width)
    var sums = [Double](repeating: 0, count: width), squares = sums
    var rows: [[Float]] = []
    for _ in 0..<200 {
        let length = Int.random(in: 1...39, using: &random)
        let row = (0..<length * width).map { _ in Float.random(in: -3...1_000, using: &random) }
        row.withUnsafeBufferPointer { fitter.add($0.baseAddress!, length: length, width: width) }
        for (k, v) in row.enumerated() {
            sums[k % width] += Double(v)
            squares[k % width] += Double(v) * Double(v)
        }
        rows.append(row)
    }
    var first = NormalisationFitter(width: width), second = NormalisationFitter(width: width)
    for (k, row) in rows.enumerated().reversed() {
        row.withUnsafeBufferPointer { values in
            if k % 3 == 0 {
                first.add(values.baseAddress!, length: row.count / width, width: width)
            } else {
                second.add(values.baseAddress!, length: row.count / width, width: width)
            }
        }
    }
    var merged = first.moments
    for f in 0..<width { merged[f].add(second.moments[f]) }
    #expect(merged == fitter.moments)
    let steps = Double(fitter.steps)
    for f in 0..<width {
        #expect(abs(fitter.moments[f].mean - sums[f] / steps) <= 1e-9 * abs(sums[f] / steps))
        let variance = squares[f] / steps - (sums[f] / steps) * (sums[f] / steps)
        #expect(abs(fitter.moments[f].variance - variance) <= 1e-7 * variance)
    }
    let normalisation = fitter.result()
    for var row in rows {
        let expected = row.enumerated().map { k, v in
            Float((Double(v) - normalisation.mean[k % width]) / normalisation.std[k % width])
        }
        row.withUnsafeMutableBufferPointer { normalisation.apply($0.baseAddress!, length: $0.count / width, width: width) }
        #expect(row.map(\.bitPattern) == expected.map(\.bitPattern))
    }
}

@Test func scoringFeaturesReproduceStoredFeatures() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let (_, data) = try importFile(scratch.file("events.csv", handMadeEvents), into: scratch, dayOptions(cutoff: 27))
    // The same events, parsed by hand, in a different order.
    var events: [CustomerEvent] = []
    for row in handMadeEvents.split(separator: "\n").dropFirst().reversed() {
        let f = row.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        events.append(CustomerEvent(customerID: f[0], day: Int(f[1])!, amount: Double(f[2])!, quantity: Double(f[3])!,
                                    productID: f[4].isEmpty ? nil : f[4], orderID: f[5].isEmpty ? nil : f[5]))
    }
    // Reversed order breaks up D's order o1 lines? No: they stay adjacent, so transactions agree.
    let scored = scoringFeatures(events: events, asOf: 27, manifest: data.manifest)
    #expect(scored.customerIDs == (try data.customerIDs()))
    #expect(scored.lengths == Array(data.lengths))
    #expect(scored.features == Array(data.features))

    // Later as-of day: A's horizon purchase on day 30 is now history, in the last period.
    let later = scoringFeatures(events: events, asOf: 34, manifest: data.manifest)
    #expect(later.customerIDs == ["A", "B", "C", "D"])
    let width = 8, t = 4
    let aLast = later.features[(0 * t + 3) * width] * Float(data.manifest.normalisation.std[0]) + Float(data.manifest.normalisation.mean[0])
    #expect(abs(aLast - 1) < 1e-5) // one transaction (day 30) in days 28-34
}
