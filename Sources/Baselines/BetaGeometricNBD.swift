import Foundation

// BG/NBD (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way"), written to agree
// with lifetimes 0.11.3's BetaGeoFitter at penalizer 0: the same likelihood (their section 7,
// in lifetimes' log-sum-exp form), the same prediction formulas, the same edge cases
// (P(alive) = 1 without repeat purchases). lifetimes minimises with scipy's BFGS from fixed
// starting values; this fit uses its own BFGS from several starts, so it finds the same
// maximum whenever lifetimes converged to it.

/// Fitted BG/NBD parameters: purchase rates λ ~ Gamma(r, α), dropout probabilities p ~ Beta(a, b).
///
/// α is in the time unit of the summaries it was fitted on (periods).
public struct BGNBDParameters: Codable, Equatable, Sendable {
    public var r: Double
    public var alpha: Double
    public var a: Double
    public var b: Double

    public init(r: Double, alpha: Double, a: Double, b: Double) {
        self.r = r
        self.alpha = alpha
        self.a = a
        self.b = b
    }

    /// Maximum-likelihood parameters for these customers (lifetimes' `BetaGeoFitter.fit`).
    ///
    /// Throws `BaselineError` on empty input, non-finite or inconsistent summaries, or when the
    /// likelihood has no interior maximum (a parameter runs off towards 0 or infinity, as when
    /// nobody ever seems to drop out). Data-parallel, each rank passes its own customers and
    /// `sums` that add over the ranks; every rank gets the same parameters.
    public static func fit(_ customers: [CustomerSummary], across sums: CustomerSums = .oneProcess) throws -> BGNBDParameters {
        try sums.agree("BG/NBD") { try CustomerSummary.validateHistories(customers, model: "BG/NBD", allowEmpty: true) }
        let count = try sums.sum([Double(customers.count)])[0]
        guard count > 0 else { throw BaselineError("BG/NBD: no customers to fit (the summary is empty)") }
        let maxAge = try sums.maximum([customers.map(\.age).max() ?? 0])[0]
        guard maxAge > 0 else {
            throw BaselineError("BG/NBD: every customer has age 0, so the data say nothing about purchase rates")
        }
        // lifetimes rescales time so that the oldest customer has age 1; α scales with time and
        // the other parameters do not, so this only improves the conditioning.
        let likelihood = BGNBDLikelihood(customers, timeScale: 1 / maxAge, total: count, sums: sums)
        let totals = try sums.sum([customers.reduce(0) { $0 + $1.frequency }, customers.reduce(0) { $0 + $1.age / maxAge }])
        let meanRate = totals[0] / totals[1]
        let rateGuess = max(meanRate, 1e-3)
        // Several starts, in log-parameters (r, α, a, b): lifetimes' own (all 0.1), a guess that
        // matches the mean purchase rate, and one with few dropouts. The best optimum wins.
        let starts: [[Double]] = [
            [0.1, 0.1, 0.1, 0.1],
            [0, -log(rateGuess), 0, log(3)],
            [log(0.3), log(0.3 / rateGuess), log(0.5), log(10)],
        ]
        let p = try fitLogParameters(model: "BG/NBD", names: ["r", "alpha", "a", "b"], starts: starts, objective: likelihood.negativeMean)
        return BGNBDParameters(r: p[0], alpha: p[1] / likelihood.timeScale, a: p[2], b: p[3])
    }

    /// lifetimes' objective at these parameters: the mean negative log-likelihood per customer.
    public func meanNegativeLogLikelihood(_ customers: [CustomerSummary]) throws -> Double {
        try CustomerSummary.validateHistories(customers, model: "BG/NBD")
        var gradient = [Double](repeating: 0, count: 4)
        return try BGNBDLikelihood(customers, timeScale: 1, total: Double(customers.count), sums: .oneProcess)
            .negativeMean([r, alpha, a, b].map(log), &gradient)
    }

    /// Expected repeat purchases in the next `t` periods, given the customer's history.
    ///
    /// lifetimes' `conditional_expected_number_of_purchases_up_to_time`, equation (10) of the
    /// paper. With z = t / (α + T + t) it is
    /// (a + b + x − 1)/(a − 1) · [1 − ₂F₁(r+x, b+x; a+b+x−1; z) · (1 − z)^(r+x)] · P(alive).
    /// Euler's transformation ₂F₁(A, B; C; z) = (1 − z)^(C−A−B) ₂F₁(C−A, C−B; C; z) turns the
    /// bracket into 1 − ₂F₁(a+b−1−r, a−1; a+b+x−1; z) · (1 − z)^(a−1), whose series neither
    /// overflows for frequent buyers (where lifetimes falls back to the same identity) nor
    /// loses digits to cancellation for short horizons.
    public func conditionalExpectedTransactions(t: Double, customer: CustomerSummary) -> Double {
        let x = customer.frequency
        let z = t / (alpha + customer.age + t)
        let logOneMinusZ = -log1p(t / (alpha + customer.age))
        let logSeries = log1pHypergeometricTail(a + b - 1 - r, a - 1, a + b + x - 1, z)
        let bracket = -expm1(logSeries + (a - 1) * logOneMinusZ)
        return (a + b + x - 1) / (a - 1) * bracket * probabilityAlive(customer: customer)
    }

    /// Probability that the customer has not dropped out (lifetimes' `conditional_probability_alive`).
    public func probabilityAlive(customer: CustomerSummary) -> Double {
        customer.frequency == 0 ? 1 : sigmoid(-logOddsDead(customer))
    }

    /// Probability of no purchase in the next `t` periods: the model's churn probability.
    ///
    /// 1 − P(alive) + P(alive) · ((α + T)/(α + T + t))^(r + x): dropped out, or alive with no
    /// purchase from a Poisson process whose rate's posterior is Gamma(r + x, α + T). Written as
    /// a sum of two non-negative terms, so values near 0 keep their relative precision.
    public func probabilityNoPurchase(t: Double, customer: CustomerSummary) -> Double {
        let quiet = exp(-(r + customer.frequency) * log1p(t / (alpha + customer.age)))
        if customer.frequency == 0 { return quiet }
        let logOdds = logOddsDead(customer)
        return sigmoid(logOdds) + sigmoid(-logOdds) * quiet
    }

    /// ln(P(dead) / P(alive)) for a customer with at least one repeat purchase.
    private func logOddsDead(_ customer: CustomerSummary) -> Double {
        let x = customer.frequency
        return (r + x) * (log(alpha + customer.age) - log(alpha + customer.recency)) + log(a / (b + max(x, 1) - 1))
    }
}

/// ln ₂F₁(a, b; c; z) for 0 ≤ z < 1, summed as a power series: ln1p of the terms after the first.
///
/// The series converges for |z| < 1; the ratio of successive terms tends to z, so the number of
/// terms grows like 1/(1 − z) (about 50 for z = 0.5, 4,000 for z = 0.99). Once the next ratio ρ
/// (or z, if larger) is below 1, the tail is at most |term| · ρ/(1 − ρ), and the sum stops when
/// that is below 1e-17 of the total. Returns NaN if the terms overflow or if that takes more
/// than 10⁷ terms (z within about 1e-6 of 1).
func log1pHypergeometricTail(_ a: Double, _ b: Double, _ c: Double, _ z: Double) -> Double {
    var term = 1.0
    var tail = 0.0
    var n = 0.0
    while n < 1e7 {
        term *= (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        tail += term
        n += 1
        guard term.isFinite else { return .nan }
        let bound = max(abs((a + n) * (b + n) / ((c + n) * (n + 1))) * z, z)
        if bound < 1, abs(term) * bound / (1 - bound) <= 1e-17 * abs(1 + tail) {
            return log1p(tail)
        }
    }
    return .nan
}

/// The BG/NBD log-likelihood over distinct (x, t_x, T) histories, and its gradient.
///
/// Per customer, in lifetimes' form (section 7 of the paper):
///   ln L = A₁ + A₂ + ln(e^A₃ + [x > 0] e^A₄)
///   A₁ = ln Γ(r + x) − ln Γ(r) + r ln α
///   A₂ = ln Γ(a + b) + ln Γ(b + x) − ln Γ(b) − ln Γ(a + b + x)
///   A₃ = −(r + x) ln(α + T)
///   A₄ = ln a − ln(b + x − 1) − (r + x) ln(α + t_x)
/// A₁ and A₂ depend on x alone, so they are summed once per distinct frequency.
struct BGNBDLikelihood {
    let timeScale: Double
    /// Distinct frequencies and how many customers have each.
    private var frequencies: [Double] = []
    private var frequencyCounts: [Double] = []
    /// Distinct histories (x, t_x, T) in scaled time, and their counts.
    private var x: [Double] = []
    private var recency: [Double] = []
    private var age: [Double] = []
    private var counts: [Double] = []
    /// Customers on every rank, and how this rank's sums are added to the others'.
    private let total: Double
    private let sums: CustomerSums

    init(_ customers: [CustomerSummary], timeScale: Double, total: Double, sums: CustomerSums) {
        self.timeScale = timeScale
        self.total = total
        self.sums = sums
        struct History: Hashable, Comparable {
            let x: Double, recency: Double, age: Double
            static func < (l: History, r: History) -> Bool { (l.x, l.recency, l.age) < (r.x, r.recency, r.age) }
        }
        var histories: [History: Double] = [:]
        var byFrequency: [Double: Double] = [:]
        for customer in customers {
            histories[History(x: customer.frequency, recency: customer.recency * timeScale, age: customer.age * timeScale), default: 0] += 1
            byFrequency[customer.frequency, default: 0] += 1
        }
        // Sorted, so that the sums (and the fit) do not depend on hashing order.
        for (history, count) in histories.sorted(by: { $0.key < $1.key }) {
            x.append(history.x)
            recency.append(history.recency)
            age.append(history.age)
            counts.append(count)
        }
        for (frequency, count) in byFrequency.sorted(by: { $0.key < $1.key }) {
            frequencies.append(frequency)
            frequencyCounts.append(count)
        }
    }

    /// Mean negative log-likelihood at log-parameters (ln r, ln α, ln a, ln b); writes its gradient.
    func negativeMean(_ logParameters: [Double], _ gradient: inout [Double]) throws -> Double {
        let r = exp(logParameters[0]), alpha = exp(logParameters[1])
        let a = exp(logParameters[2]), b = exp(logParameters[3])
        var sum = 0.0
        var dr = 0.0, dAlpha = 0.0, da = 0.0, db = 0.0
        let logAlpha = log(alpha)
        let lgammaR = logGamma(r), lgammaB = logGamma(b), lgammaAB = logGamma(a + b)
        let psiR = digamma(r), psiB = digamma(b), psiAB = digamma(a + b)
        for (frequency, count) in zip(frequencies, frequencyCounts) {
            sum += count * (logGamma(r + frequency) - lgammaR + r * logAlpha
                + lgammaAB + logGamma(b + frequency) - lgammaB - logGamma(a + b + frequency))
            let psiABX = digamma(a + b + frequency)
            dr += count * (digamma(r + frequency) - psiR + logAlpha)
            dAlpha += count * r / alpha
            da += count * (psiAB - psiABX)
            db += count * (psiAB + digamma(b + frequency) - psiB - psiABX)
        }
        let logA = log(a)
        for i in x.indices {
            let rx = r + x[i]
            let logAgeTerm = log(alpha + age[i])
            let a3 = -rx * logAgeTerm
            guard x[i] > 0 else {
                sum += counts[i] * a3
                dr -= counts[i] * logAgeTerm
                dAlpha -= counts[i] * rx / (alpha + age[i])
                continue
            }
            let logRecencyTerm = log(alpha + recency[i])
            let a4 = logA - log(b + x[i] - 1) - rx * logRecencyTerm
            let top = max(a3, a4)
            let e3 = exp(a3 - top), e4 = exp(a4 - top)
            let logSum = top + log(e3 + e4)
            let w3 = e3 / (e3 + e4), w4 = e4 / (e3 + e4)
            sum += counts[i] * logSum
            dr -= counts[i] * (w3 * logAgeTerm + w4 * logRecencyTerm)
            dAlpha -= counts[i] * rx * (w3 / (alpha + age[i]) + w4 / (alpha + recency[i]))
            da += counts[i] * w4 / a
            db -= counts[i] * w4 / (b + x[i] - 1)
        }
        let totals = try sums.sum([sum, dr, dAlpha, da, db])
        // d/d(ln θ) = θ · d/dθ, and the objective is −(sum)/N.
        gradient[0] = -totals[1] * r / total
        gradient[1] = -totals[2] * alpha / total
        gradient[2] = -totals[3] * a / total
        gradient[3] = -totals[4] * b / total
        return -totals[0] / total
    }
}
