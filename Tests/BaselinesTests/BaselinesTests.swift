import Baselines
import Foundation
import Testing
import TestSupport

/// The numbers scripts/lifetimes_reference.py --make-fixture wrote with lifetimes 0.11.3.
struct LifetimesReference: Decodable {
    /// Customers as columns, with lifetimes' predictions for each.
    struct Section: Decodable {
        let frequency: [Double]
        let recency: [Double]
        let age: [Double]
        let monetaryValue: [Double]
        let expectedPurchases: [Double]
        let probabilityAlive: [Double]
        let probabilityNoPurchase: [Double]
        let expectedAverageProfit: [Double]

        enum CodingKeys: String, CodingKey {
            case frequency, recency
            case age = "T"
            case monetaryValue = "monetary_value"
            case expectedPurchases = "expected_purchases"
            case probabilityAlive = "p_alive"
            case probabilityNoPurchase = "p_no_purchase"
            case expectedAverageProfit = "expected_average_profit"
        }

        var customers: [CustomerSummary] {
            frequency.indices.map {
                CustomerSummary(frequency: frequency[$0], recency: recency[$0], age: age[$0], monetaryValue: monetaryValue[$0])
            }
        }
    }

    let horizon: Double
    let bgnbd: BGNBDParameters
    let gammaGamma: GammaGammaParameters
    /// lifetimes' objectives (mean negative log-likelihoods) at its parameters.
    let bgnbdNegativeLogLikelihood: Double
    let gammaGammaNegativeLogLikelihood: Double
    /// The simulated population the parameters were fitted on.
    let customers: Section
    /// Histories outside that population (age 0, 300 repeat periods, ...), predicted with the
    /// same parameters, to exercise the edges of the formulas.
    let probes: Section

    enum CodingKeys: String, CodingKey {
        case horizon, bgnbd, customers, probes
        case gammaGamma = "gamma_gamma"
        case bgnbdNegativeLogLikelihood = "bgnbd_negative_log_likelihood"
        case gammaGammaNegativeLogLikelihood = "gamma_gamma_negative_log_likelihood"
    }

    static func load() throws -> LifetimesReference {
        let url = try #require(Bundle.module.url(forResource: "lifetimes_reference", withExtension: "json", subdirectory: "Fixtures"))
        return try JSONDecoder().decode(LifetimesReference.self, from: Data(contentsOf: url))
    }
}

/// Expects |actual − expected| ≤ relative · |expected| + absolute for every element, and
/// reports the worst one.
///
/// The default floor is far below every fixture value (the smallest, P(alive) of a probe who
/// almost surely left, is 2e-26), so each value is held to the relative tolerance; both sides
/// compute those in log space, and agree to ~1e-11. The floor only keeps an exact 0 comparable.
func expectAllClose(
    _ actual: [Double], _ expected: [Double], _ name: String, relative: Double = 1e-4, absolute: Double = 1e-300,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(actual.count == expected.count, "\(name): \(actual.count) values, expected \(expected.count)", sourceLocation: sourceLocation)
    guard actual.count == expected.count, !expected.isEmpty else { return }
    var worstIndex = 0
    var worstExcess = -Double.infinity
    for index in expected.indices {
        // Error over allowance: ≤ 1 passes. NaN must fail, so it counts as infinitely large.
        let error = abs(actual[index] - expected[index])
        let excess = error.isNaN ? .infinity : error / (relative * abs(expected[index]) + absolute)
        if excess > worstExcess { worstExcess = excess; worstIndex = index }
    }
    #expect(worstExcess <= 1,
            "\(name): worst at \(worstIndex): got \(actual[worstIndex]), expected \(expected[worstIndex]) (\(worstExcess)× the tolerance)",
            sourceLocation: sourceLocation)
}

/// The message of the `BaselineError` that `body` throws, or what went wrong instead.
func errorMessage(_ body: () throws -> Void) -> String {
    do {
        try body()
        return "no error"
    } catch {
        return (error as? BaselineError)?.message ?? "unexpected \(error)"
    }
}

/// Expects `actual` within `relative` of `expected`.
func expectRelativelyClose(
    _ actual: Double, _ expected: Double, _ name: String, relative: Double,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let error = abs(actual - expected) / abs(expected)
    #expect(error <= relative, "\(name): \(actual), expected \(expected) (relative error \(error))", sourceLocation: sourceLocation)
}

@Suite struct LifetimesReferenceTests {
    @Test func bgnbdFitMatchesLifetimes() throws {
        let reference = try LifetimesReference.load()
        let customers = reference.customers.customers
        let fitted = try BGNBDParameters.fit(customers)
        expectRelativelyClose(fitted.r, reference.bgnbd.r, "r", relative: 0.01)
        expectRelativelyClose(fitted.alpha, reference.bgnbd.alpha, "alpha", relative: 0.01)
        expectRelativelyClose(fitted.a, reference.bgnbd.a, "a", relative: 0.01)
        expectRelativelyClose(fitted.b, reference.bgnbd.b, "b", relative: 0.01)
        // The likelihood is lifetimes' own (the fixture's spends are rounded to 12 digits, hence
        // the tolerance), and the fit reaches a maximum at least as high as lifetimes' did.
        let theirs = try reference.bgnbd.meanNegativeLogLikelihood(customers)
        expectRelativelyClose(theirs, reference.bgnbdNegativeLogLikelihood, "objective at lifetimes' parameters", relative: 1e-10)
        let ours = try fitted.meanNegativeLogLikelihood(customers)
        #expect(ours <= theirs + 1e-12, "negative log-likelihood \(ours) at the Swift fit, \(theirs) at lifetimes'")
    }

    @Test func bgnbdPredictionsMatchLifetimes() throws {
        let reference = try LifetimesReference.load()
        let model = reference.bgnbd
        for (label, section) in [("customers", reference.customers), ("probes", reference.probes)] {
            let customers = section.customers
            expectAllClose(customers.map { model.conditionalExpectedTransactions(t: reference.horizon, customer: $0) },
                           section.expectedPurchases, "\(label): expected purchases")
            expectAllClose(customers.map { model.probabilityAlive(customer: $0) }, section.probabilityAlive, "\(label): P(alive)")
            expectAllClose(customers.map { model.probabilityNoPurchase(t: reference.horizon, customer: $0) },
                           section.probabilityNoPurchase, "\(label): P(no purchase)")
        }
    }

    @Test func gammaGammaFitMatchesLifetimes() throws {
        let reference = try LifetimesReference.load()
        let customers = reference.customers.customers
        let fitted = try GammaGammaParameters.fit(customers)
        expectRelativelyClose(fitted.p, reference.gammaGamma.p, "p", relative: 0.01)
        expectRelativelyClose(fitted.q, reference.gammaGamma.q, "q", relative: 0.01)
        expectRelativelyClose(fitted.v, reference.gammaGamma.v, "v", relative: 0.01)
        let theirs = try reference.gammaGamma.meanNegativeLogLikelihood(customers)
        expectRelativelyClose(theirs, reference.gammaGammaNegativeLogLikelihood, "objective at lifetimes' parameters", relative: 1e-10)
        let ours = try fitted.meanNegativeLogLikelihood(customers)
        #expect(ours <= theirs + 1e-12, "negative log-likelihood \(ours) at the Swift fit, \(theirs) at lifetimes'")
    }

    @Test func gammaGammaPredictionsMatchLifetimes() throws {
        let reference = try LifetimesReference.load()
        for (label, section) in [("customers", reference.customers), ("probes", reference.probes)] {
            let customers = section.customers
            expectAllClose(customers.map { reference.gammaGamma.conditionalExpectedAverageProfit(customer: $0) },
                           section.expectedAverageProfit, "\(label): expected average profit")
            expectAllClose(customers.map { reference.gammaGamma.expectedSpend(t: reference.horizon, customer: $0, transactions: reference.bgnbd) },
                           zip(section.expectedPurchases, section.expectedAverageProfit).map { $0 * $1 }, "\(label): expected spend")
        }
        // Without repeat purchases the prediction is the population mean p·v/(q − 1).
        let newcomer = CustomerSummary(frequency: 0, recency: 0, age: 10)
        let g = reference.gammaGamma
        expectRelativelyClose(g.conditionalExpectedAverageProfit(customer: newcomer), g.p * g.v / (g.q - 1), "population mean", relative: 1e-12)
    }

    @Test func fitsFollowTheUnitsOfTimeAndMoney() throws {
        // Weeks to days multiplies α by 7 and leaves r, a, b; cents for dollars multiplies v by
        // 100 and leaves p, q. A fit that depended on its starting scale would break this.
        let reference = try LifetimesReference.load()
        let weekly = reference.customers.customers
        let daily = weekly.map {
            CustomerSummary(frequency: $0.frequency, recency: 7 * $0.recency, age: 7 * $0.age, monetaryValue: 100 * $0.monetaryValue)
        }
        let (bgWeekly, bgDaily) = (try BGNBDParameters.fit(weekly), try BGNBDParameters.fit(daily))
        expectRelativelyClose(bgDaily.alpha, 7 * bgWeekly.alpha, "alpha", relative: 1e-5)
        expectRelativelyClose(bgDaily.r, bgWeekly.r, "r", relative: 1e-5)
        expectRelativelyClose(bgDaily.a, bgWeekly.a, "a", relative: 1e-5)
        expectRelativelyClose(bgDaily.b, bgWeekly.b, "b", relative: 1e-5)
        let (ggDollars, ggCents) = (try GammaGammaParameters.fit(weekly), try GammaGammaParameters.fit(daily))
        expectRelativelyClose(ggCents.v, 100 * ggDollars.v, "v", relative: 1e-5)
        expectRelativelyClose(ggCents.p, ggDollars.p, "p", relative: 1e-5)
        expectRelativelyClose(ggCents.q, ggDollars.q, "q", relative: 1e-5)
    }

    @Test func fitsNameWhatIsWrongWithTheirInput() {
        let good = CustomerSummary(frequency: 2, recency: 5, age: 9, monetaryValue: 12)
        let cases: [(String, () throws -> Void, String)] = [
            ("empty BG/NBD", { _ = try BGNBDParameters.fit([]) }, "empty"),
            ("NaN recency", { _ = try BGNBDParameters.fit([good, CustomerSummary(frequency: 1, recency: .nan, age: 4)]) }, "customer 1 has recency nan"),
            ("infinite age", { _ = try BGNBDParameters.fit([CustomerSummary(frequency: 0, recency: 0, age: .infinity), good]) }, "customer 0 has age inf"),
            ("recency past age", { _ = try BGNBDParameters.fit([CustomerSummary(frequency: 1, recency: 5, age: 4)]) }, "recency 5.0 outside"),
            ("fractional frequency", { _ = try BGNBDParameters.fit([CustomerSummary(frequency: 1.5, recency: 3, age: 4)]) }, "frequency 1.5"),
            ("empty Gamma-Gamma", { _ = try GammaGammaParameters.fit([]) }, "empty"),
            ("no repeaters", { _ = try GammaGammaParameters.fit([CustomerSummary(frequency: 0, recency: 0, age: 4)]) }, "no customer has a repeat purchase"),
            ("NaN spend", { _ = try GammaGammaParameters.fit([good, CustomerSummary(frequency: 1, recency: 1, age: 4, monetaryValue: .nan)]) }, "customer 1"),
            ("zero spend", { _ = try GammaGammaParameters.fit([CustomerSummary(frequency: 3, recency: 3, age: 4, monetaryValue: 0)]) }, "monetary value 0.0"),
        ]
        for (label, body, expected) in cases {
            let text = errorMessage(body)
            #expect(text.contains(expected), "\(label): \(text)")
        }
    }
}


@Suite struct LogisticRegressionTests {
    @Test func separableDataIsClassifiedCorrectlyWithFiniteCoefficients() throws {
        // Labelled by the side of the line x₀ + 0.5 x₁ = 1, with a margin. Column 2 is constant,
        // at a value whose mean over 200 rows rounds to something else, so its deviations are
        // rounding noise rather than exactly 0.
        var random = SplitMix64(seed: 3)
        var features: [Double] = []
        var labels: [Bool] = []
        var sides: [Double] = []
        while labels.count < 200 {
            let (x0, x1) = (4 * random.uniform() - 2, 4 * random.uniform() - 2)
            let side = x0 + 0.5 * x1 - 1
            guard abs(side) > 0.1 else { continue }
            features += [x0, x1, 3.7]
            labels.append(side > 0)
            sides.append(side)
        }
        let model = try LogisticRegression.fit(features: features, labels: labels, width: 3)
        #expect(model.coefficients.allSatisfy(\.isFinite) && model.intercept.isFinite)
        #expect(model.scales[2] == 1, "a constant column keeps scale 1, got \(model.scales[2])")
        #expect(abs(model.coefficients[2]) < 1e-12, "a constant column gets no weight, got \(model.coefficients[2])")
        let probabilities = model.probabilities(features: features)
        let wrong = labels.indices.filter { (probabilities[$0] > 0.5) != labels[$0] }
        #expect(wrong.isEmpty, "misclassified rows \(wrong)")
        // The fit pushes towards certainty, which only the L2 term holds back: rows well away
        // from the line are all but certain.
        let unsure = labels.indices.filter { abs(sides[$0]) > 1 && abs(probabilities[$0] - 0.5) < 0.49 }
        #expect(unsure.isEmpty, "rows far from the line with probabilities \(unsure.map { probabilities[$0] })")
        // Raw coefficients point along the separating line's normal (1, 0.5).
        let raw0 = model.coefficients[0] / model.scales[0], raw1 = model.coefficients[1] / model.scales[1]
        expectRelativelyClose(raw1 / raw0, 0.5, "direction", relative: 0.15)
    }

    @Test func nonSeparableFitMatchesGradientDescent() throws {
        var random = SplitMix64(seed: 11)
        let n = 400, width = 3, l2 = 0.01
        var features: [Double] = []
        var labels: [Bool] = []
        for _ in 0..<n {
            // Columns on very different scales and offsets, which the standardisation absorbs.
            let row = [50 + 10 * random.normal(), 1e-3 * random.uniform(), random.normal()]
            let logit = 0.3 + 0.08 * (row[0] - 50) - 900 * (row[1] - 5e-4) + 0.5 * row[2]
            features += row
            labels.append(random.uniform() < 1 / (1 + exp(-logit)))
        }
        let model = try LogisticRegression.fit(features: features, labels: labels, width: width, l2: l2)

        // Independently: standardise, then gradient descent on the same objective with step 1/L,
        // where L = (width + 1)/4 + l2 bounds the Hessian (each standardised column, and the
        // intercept's, has mean square 1).
        var means = [Double](repeating: 0, count: width), scales = means
        for j in 0..<width {
            let column = stride(from: j, to: features.count, by: width).map { features[$0] }
            means[j] = column.reduce(0, +) / Double(n)
            scales[j] = sqrt(column.map { ($0 - means[j]) * ($0 - means[j]) }.reduce(0, +) / Double(n))
        }
        let z = (0..<n).map { i in [1.0] + (0..<width).map { (features[i * width + $0] - means[$0]) / scales[$0] } }
        let y = labels.map { $0 ? 1.0 : 0.0 }
        var theta = [Double](repeating: 0, count: width + 1)
        let step = 1 / (Double(width + 1) / 4 + l2)
        var largestGradient = Double.infinity
        var iterations = 0
        while largestGradient > 1e-11, iterations < 200_000 {
            var gradient = [Double](repeating: 0, count: width + 1)
            for i in 0..<n {
                let eta = zip(z[i], theta).reduce(0) { $0 + $1.0 * $1.1 }
                let residual = 1 / (1 + exp(-eta)) - y[i]
                for k in theta.indices { gradient[k] += residual * z[i][k] / Double(n) }
            }
            for k in 1..<theta.count { gradient[k] += l2 * theta[k] }
            largestGradient = gradient.map(abs).max()!
            for k in theta.indices { theta[k] -= step * gradient[k] }
            iterations += 1
        }
        #expect(largestGradient <= 1e-11, "gradient descent stopped at gradient \(largestGradient)")

        for j in 0..<width {
            expectRelativelyClose(model.means[j], means[j], "mean \(j)", relative: 1e-12)
            expectRelativelyClose(model.scales[j], scales[j], "scale \(j)", relative: 1e-12)
            #expect(abs(model.coefficients[j] - theta[j + 1]) <= 1e-8, "coefficient \(j): \(model.coefficients[j]), gradient descent \(theta[j + 1])")
        }
        #expect(abs(model.intercept - theta[0]) <= 1e-8, "intercept: \(model.intercept), gradient descent \(theta[0])")
        // The data carry signal: the coefficients are far from the prior's 0.
        #expect(model.coefficients.allSatisfy { abs($0) > 0.1 }, "coefficients \(model.coefficients)")

        let row = Array(features[0..<width])
        let viaSlice = model.probability(features[0..<width])
        let viaBuffer = row.withUnsafeBufferPointer { model.probability($0) }
        var eta = theta[0]
        for j in 0..<width { eta += theta[j + 1] * (row[j] - means[j]) / scales[j] }
        let expected = 1 / (1 + exp(-eta))
        #expect(viaSlice == viaBuffer)
        #expect(abs(viaSlice - expected) <= 1e-9, "probability \(viaSlice), expected \(expected)")
    }

    @Test func rejectsUnusableInput() {
        let cases: [(String, () throws -> Void, String)] = [
            ("one class", { _ = try LogisticRegression.fit(features: [1, 2, 3], labels: [true, true, true], width: 1) }, "both classes"),
            ("count mismatch", { _ = try LogisticRegression.fit(features: [1, 2, 3], labels: [true, false], width: 2) }, "3 feature values for 2 rows"),
            ("NaN feature", { _ = try LogisticRegression.fit(features: [1, 2, .nan, 4], labels: [true, false], width: 2) }, "feature 0 of row 1 is nan"),
            ("no rows", { _ = try LogisticRegression.fit(features: [], labels: [], width: 2) }, "no rows"),
            ("negative l2", { _ = try LogisticRegression.fit(features: [1, 2], labels: [true, false], width: 1, l2: -1) }, "l2 is -1.0"),
        ]
        for (label, body, expected) in cases {
            let text = errorMessage(body)
            #expect(text.contains(expected), "\(label): \(text)")
        }
    }
}
