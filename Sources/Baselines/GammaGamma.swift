import Foundation

// Gamma-Gamma spend model (Fader & Hardie 2013, "The Gamma-Gamma Model of Monetary Value"),
// written to agree with lifetimes 0.11.3's GammaGammaFitter at penalizer 0 and without
// q_constraint.

/// Fitted Gamma-Gamma parameters: spends z ~ Gamma(p, ν) per transaction, ν ~ Gamma(q, v) per customer.
///
/// lifetimes calls the last parameter v; the literature calls it γ. It is in the currency of
/// the summaries it was fitted on.
public struct GammaGammaParameters: Codable, Equatable, Sendable {
    public var p: Double
    public var q: Double
    public var v: Double

    public init(p: Double, q: Double, v: Double) {
        self.p = p
        self.q = q
        self.v = v
    }

    /// Maximum-likelihood parameters from the customers with repeat purchases (lifetimes' `GammaGammaFitter.fit`).
    ///
    /// Customers with frequency 0 carry no spend information and are skipped, as lifetimes'
    /// users filter them out before fitting. Throws `BaselineError` when no customer has a repeat
    /// purchase, on non-finite values or non-positive spend of a repeat customer, or when the
    /// likelihood has no interior maximum. Data-parallel, each rank passes its own customers and
    /// `sums` that add over the ranks; every rank gets the same parameters.
    public static func fit(_ customers: [CustomerSummary], across sums: CustomerSums = .oneProcess) throws -> GammaGammaParameters {
        let likelihood = try GammaGammaLikelihood(customers, sums: sums)
        // Log-parameters (p, q, v); v in units of the mean spend. lifetimes starts at all 0.1;
        // the others bracket typical spend dispersions. The best optimum wins.
        let starts: [[Double]] = [
            [0.1, 0.1, 0.1],
            [log(2), log(3), log(2)],
            [log(10), log(5), log(2.5)],
        ]
        let p = try fitLogParameters(model: "Gamma-Gamma", names: ["p", "q", "v"], starts: starts, objective: likelihood.negativeMean)
        return GammaGammaParameters(p: p[0], q: p[1], v: p[2] * likelihood.spendScale)
    }

    /// lifetimes' objective at these parameters: the mean negative log-likelihood per repeat customer.
    public func meanNegativeLogLikelihood(_ customers: [CustomerSummary]) throws -> Double {
        let likelihood = try GammaGammaLikelihood(customers, spendScale: 1)
        var gradient = [Double](repeating: 0, count: 3)
        return try likelihood.negativeMean([p, q, v].map(log), &gradient)
    }

    /// Mean spend per transaction across the population, p·v/(q − 1); meaningful for q > 1.
    public var populationMeanProfit: Double { p * v / (q - 1) }

    /// Expected spend per future transaction (lifetimes' `conditional_expected_average_profit`).
    ///
    /// A credibility-weighted mean of the customer's own mean spend and the population mean,
    /// with weight p·x/(p·x + q − 1) on the customer's own; customers without repeat purchases
    /// get the population mean.
    public func conditionalExpectedAverageProfit(customer: CustomerSummary) -> Double {
        let weight = p * customer.frequency / (p * customer.frequency + q - 1)
        return (1 - weight) * populationMeanProfit + weight * customer.monetaryValue
    }

    /// Expected spend in the next `t` periods, undiscounted: expected transactions × expected spend per transaction.
    public func expectedSpend(t: Double, customer: CustomerSummary, transactions: BGNBDParameters) -> Double {
        transactions.conditionalExpectedTransactions(t: t, customer: customer) * conditionalExpectedAverageProfit(customer: customer)
    }
}

/// The Gamma-Gamma log-likelihood of the repeat customers, and its gradient.
///
/// Per customer with x > 0 repeat periods of mean spend m (lifetimes' form of equation 1a):
///   ln L = ln Γ(px + q) − ln Γ(px) − ln Γ(q) + q ln v + (px − 1) ln m + px ln x − (px + q) ln(xm + v)
/// The gamma-function terms depend on x alone, so they are summed once per distinct frequency.
struct GammaGammaLikelihood {
    /// Spends are divided by this (their mean) for a well-conditioned fit. v scales with spend
    /// and p, q do not, and the log-likelihood only shifts by a constant.
    let spendScale: Double
    private var frequencies: [Double] = []
    private var frequencyCounts: [Double] = []
    /// Per repeat customer: x, m / spendScale, ln m, ln m + ln x.
    private var x: [Double] = []
    private var spend: [Double] = []
    private var logSpend: [Double] = []
    private var logSpendFrequency: [Double] = []
    /// Repeat customers on every rank, and how this rank's sums are added to the others'.
    private let total: Double
    private let sums: CustomerSums

    init(_ customers: [CustomerSummary], spendScale: Double? = nil, sums: CustomerSums = .oneProcess) throws {
        self.sums = sums
        guard try sums.sum([Double(customers.count)])[0] > 0 else {
            throw BaselineError("Gamma-Gamma: no customers to fit (the summary is empty)")
        }
        var byFrequency: [Double: Double] = [:]
        var repeaters: [(x: Double, m: Double)] = []
        try sums.agree("Gamma-Gamma") { try Self.collectRepeaters(customers, into: &repeaters, byFrequency: &byFrequency) }
        let totals = try sums.sum([Double(repeaters.count), repeaters.reduce(0) { $0 + $1.m }])
        total = totals[0]
        guard total > 0 else {
            throw BaselineError("Gamma-Gamma: no customer has a repeat purchase (frequency > 0), so there is no spend to fit")
        }
        self.spendScale = spendScale ?? totals[1] / total
        for (frequency, count) in byFrequency.sorted(by: { $0.key < $1.key }) {
            frequencies.append(frequency)
            frequencyCounts.append(count)
        }
        for repeater in repeaters {
            x.append(repeater.x)
            spend.append(repeater.m / self.spendScale)
            logSpend.append(log(repeater.m / self.spendScale))
            logSpendFrequency.append(log(repeater.m / self.spendScale) + log(repeater.x))
        }
    }

    /// The customers with repeat purchases, checked, and how many have each frequency.
    private static func collectRepeaters(
        _ customers: [CustomerSummary], into repeaters: inout [(x: Double, m: Double)], byFrequency: inout [Double: Double]
    ) throws {
        for (index, customer) in customers.enumerated() {
            guard customer.frequency.isFinite, customer.monetaryValue.isFinite else {
                throw BaselineError("Gamma-Gamma: customer \(index) has frequency \(customer.frequency), monetary value \(customer.monetaryValue); both must be finite")
            }
            guard customer.frequency > 0 else { continue }
            guard customer.monetaryValue > 0 else {
                throw BaselineError("Gamma-Gamma: customer \(index) has \(customer.frequency) repeat periods but monetary value \(customer.monetaryValue); it must be positive")
            }
            repeaters.append((customer.frequency, customer.monetaryValue))
            byFrequency[customer.frequency, default: 0] += 1
        }
    }

    /// Mean negative log-likelihood at log-parameters (ln p, ln q, ln v); writes its gradient.
    func negativeMean(_ logParameters: [Double], _ gradient: inout [Double]) throws -> Double {
        let p = exp(logParameters[0]), q = exp(logParameters[1]), v = exp(logParameters[2])
        var sum = 0.0
        var dp = 0.0, dq = 0.0, dv = 0.0
        let lgammaQ = logGamma(q), psiQ = digamma(q), logV = log(v)
        for (frequency, count) in zip(frequencies, frequencyCounts) {
            let px = p * frequency
            let psiPXQ = digamma(px + q)
            sum += count * (logGamma(px + q) - logGamma(px) - lgammaQ + q * logV)
            dp += count * frequency * (psiPXQ - digamma(px))
            dq += count * (psiPXQ - psiQ + logV)
            dv += count * q / v
        }
        for i in x.indices {
            let px = p * x[i]
            let logTotal = log(x[i] * spend[i] + v)
            sum += px * logSpendFrequency[i] - logSpend[i] - (px + q) * logTotal
            dp += x[i] * (logSpendFrequency[i] - logTotal)
            dq -= logTotal
            dv -= (px + q) / (x[i] * spend[i] + v)
        }
        let totals = try sums.sum([sum, dp, dq, dv])
        gradient[0] = -totals[1] * p / total
        gradient[1] = -totals[2] * q / total
        gradient[2] = -totals[3] * v / total
        return -totals[0] / total
    }
}
