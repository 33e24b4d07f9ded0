import Foundation

/// An L2-regularised logistic regression on standardised features, fitted by Newton's method.
///
/// The fit minimises, over the intercept β₀ and coefficients w,
///   J = (1/n) Σᵢ [ln(1 + e^ηᵢ) − yᵢ ηᵢ] + (l2/2) ‖w‖²,   ηᵢ = β₀ + Σⱼ wⱼ (xᵢⱼ − μⱼ)/sⱼ,
/// where μⱼ and sⱼ are column j's mean and population standard deviation (sⱼ = 1 for a constant
/// column). The intercept is not penalised. J is strictly convex for l2 > 0, so the minimum is
/// unique and finite even when the classes are perfectly separable; Newton's method with a
/// backtracking line search reaches it in a few dozen iterations, with no randomness.
public struct LogisticRegression: Codable, Equatable, Sendable {
    /// Number of features per row.
    public let width: Int
    /// Column means μ.
    public let means: [Double]
    /// Column standard deviations s (1 for constant columns).
    public let scales: [Double]
    /// Coefficients w of the standardised columns.
    public let coefficients: [Double]
    /// Intercept β₀.
    public let intercept: Double

    public init(means: [Double], scales: [Double], coefficients: [Double], intercept: Double) {
        precondition(means.count == scales.count && means.count == coefficients.count,
                     "means, scales and coefficients must have one entry per feature")
        self.width = means.count
        self.means = means
        self.scales = scales
        self.coefficients = coefficients
        self.intercept = intercept
    }

    /// Fits the model to row-major `features` ([labels.count, width]) and `labels`.
    ///
    /// Throws `BaselineError` on mismatched sizes, an empty set, non-finite values, a negative
    /// or non-finite `l2`, labels of one class only (the unpenalised intercept would diverge),
    /// or if Newton's method does not converge (possible only with `l2` 0 and separable data).
    /// Data-parallel, each rank passes its own rows and `sums` that add over the ranks; every
    /// rank gets the same model.
    public static func fit(features: [Double], labels: [Bool], width: Int, l2: Double = 1e-4,
                           across sums: CustomerSums = .oneProcess) throws -> LogisticRegression {
        guard width > 0 else { throw BaselineError("logistic regression: width is \(width); it must be positive") }
        guard l2 >= 0, l2.isFinite else {
            throw BaselineError("logistic regression: l2 is \(l2); it must be finite and ≥ 0")
        }
        try sums.agree("logistic regression") {
            guard features.count == labels.count * width else {
                throw BaselineError("logistic regression: \(features.count) feature values for \(labels.count) rows of width \(width); expected \(labels.count * width)")
            }
            if let bad = features.firstIndex(where: { !$0.isFinite }) {
                throw BaselineError("logistic regression: feature \(bad % width) of row \(bad / width) is \(features[bad]); every value must be finite")
            }
        }
        let classTotals = try sums.sum([Double(labels.reduce(0) { $0 + ($1 ? 1 : 0) }), Double(labels.count)])
        guard classTotals[1] > 0 else { throw BaselineError("logistic regression: no rows to fit") }
        guard classTotals[0] > 0, classTotals[0] < classTotals[1] else {
            throw BaselineError("logistic regression: every label is \(classTotals[0] > 0); both classes are needed")
        }

        let n = labels.count
        let count = classTotals[1]
        var means = [Double](repeating: 0, count: width)
        var scales = [Double](repeating: 0, count: width)
        for row in 0..<n {
            for j in 0..<width { means[j] += features[row * width + j] }
        }
        means = try sums.sum(means)
        for j in 0..<width { means[j] /= count }
        for row in 0..<n {
            for j in 0..<width {
                let d = features[row * width + j] - means[j]
                scales[j] += d * d
            }
        }
        scales = try sums.sum(scales)
        for j in 0..<width {
            let std = sqrt(scales[j] / count)
            // A constant column's mean is not exactly representable in general, so its
            // deviations are rounding noise rather than exactly 0; dividing by their tiny
            // standard deviation would blow that noise up to unit scale.
            scales[j] = std > 1e-12 * max(abs(means[j]), 1e-300) ? std : 1
        }

        // Design matrix with a leading column of ones: [n, d], d = width + 1.
        let d = width + 1
        var design = [Double](repeating: 1, count: n * d)
        for row in 0..<n {
            for j in 0..<width {
                design[row * d + j + 1] = (features[row * width + j] - means[j]) / scales[j]
            }
        }
        let y = labels.map { $0 ? 1.0 : 0.0 }

        var theta = [Double](repeating: 0, count: d)
        var eta = [Double](repeating: 0, count: n)
        var objective = try objectiveValue(theta: theta, eta: eta, y: y, l2: l2, count: count, sums: sums)
        var gradient = [Double](repeating: 0, count: d)
        var hessian = [Double](repeating: 0, count: d * d)
        var trialTheta = theta
        var trialEta = eta
        var converged = false
        var decrement = Double.infinity
        for _ in 0..<200 {
            for k in 0..<d { gradient[k] = 0 }
            for k in 0..<(d * d) { hessian[k] = 0 }
            for row in 0..<n {
                let p = sigmoid(eta[row])
                let residual = p - y[row]
                let weight = p * (1 - p)
                let base = row * d
                for k in 0..<d {
                    let zk = design[base + k]
                    gradient[k] += residual * zk
                    let wz = weight * zk
                    for l in k..<d { hessian[k * d + l] += wz * design[base + l] }
                }
            }
            let totals = try sums.sum(gradient + hessian)
            gradient = Array(totals[..<d])
            hessian = Array(totals[d...])
            for k in 0..<d {
                gradient[k] /= count
                for l in k..<d {
                    hessian[k * d + l] /= count
                    hessian[l * d + k] = hessian[k * d + l]
                }
            }
            for k in 1..<d {
                gradient[k] += l2 * theta[k]
                hessian[k * d + k] += l2
            }
            let step = solvePositiveDefinite(hessian, gradient, size: d)
            // Newton decrement λ² = gᵀ H⁻¹ g: half of it estimates how far J is above its minimum.
            // Once that is below J's rounding, no line search can see progress; the remaining
            // Newton step is then in the quadratic regime and is taken whole.
            decrement = zip(gradient, step).reduce(0) { $0 + $1.0 * $1.1 }
            if decrement <= 1e-15 * objective {
                for k in 0..<d { theta[k] -= step[k] }
                converged = true
                break
            }

            var length = 1.0
            var accepted = false
            while length > 1e-12 {
                for k in 0..<d { trialTheta[k] = theta[k] - length * step[k] }
                for row in 0..<n {
                    var value = 0.0
                    for k in 0..<d { value += design[row * d + k] * trialTheta[k] }
                    trialEta[row] = value
                }
                let trial = try objectiveValue(theta: trialTheta, eta: trialEta, y: y, l2: l2, count: count, sums: sums)
                if trial <= objective - 1e-4 * length * decrement {
                    accepted = true
                    objective = trial
                    break
                }
                length *= 0.5
            }
            // No decrease along a descent direction: J is at its minimum to rounding, if the
            // decrement agrees; otherwise the iteration is lost and the fit fails below.
            guard accepted else {
                converged = decrement <= 1e-10
                break
            }
            swap(&theta, &trialTheta)
            swap(&eta, &trialEta)
        }
        guard converged, theta.allSatisfy(\.isFinite) else {
            throw BaselineError("logistic regression: Newton's method did not converge (objective \(objective), Newton decrement \(decrement)); separable data need l2 > 0, and l2 is \(l2)")
        }
        return LogisticRegression(means: means, scales: scales, coefficients: Array(theta[1...]), intercept: theta[0])
    }

    /// P(label = true) for one row of `width` raw (unstandardised) features.
    public func probability(_ row: UnsafeBufferPointer<Double>) -> Double {
        precondition(row.count == width, "row has \(row.count) features; the model takes \(width)")
        var eta = intercept
        for j in 0..<width { eta += coefficients[j] * (row[j] - means[j]) / scales[j] }
        return sigmoid(eta)
    }

    /// P(label = true) for one row of `width` raw (unstandardised) features.
    public func probability(_ row: ArraySlice<Double>) -> Double {
        row.withUnsafeBufferPointer { probability($0) }
    }

    /// P(label = true) for each row of row-major `features` ([rows, width]).
    public func probabilities(features: [Double]) -> [Double] {
        precondition(features.count % width == 0, "\(features.count) values are not whole rows of width \(width)")
        return features.withUnsafeBufferPointer { all in
            (0..<(features.count / width)).map { row in
                probability(UnsafeBufferPointer(rebasing: all[(row * width)..<((row + 1) * width)]))
            }
        }
    }
}

/// J = mean log-loss over every rank's `count` rows + (l2/2)‖w‖², given this rank's linear predictors η.
private func objectiveValue(theta: [Double], eta: [Double], y: [Double], l2: Double, count: Double,
                            sums: CustomerSums) throws -> Double {
    var loss = 0.0
    for i in eta.indices { loss += softplus(eta[i]) - y[i] * eta[i] }
    loss = try sums.sum([loss])[0]
    var penalty = 0.0
    for k in 1..<theta.count { penalty += theta[k] * theta[k] }
    return loss / count + 0.5 * l2 * penalty
}

/// Solves A x = b for symmetric positive (semi)definite A ([size, size]) by Cholesky.
///
/// With l2 = 0 and saturated predictions A can be singular to rounding; a diagonal shift that
/// grows until the factorisation succeeds still gives a descent direction.
private func solvePositiveDefinite(_ a: [Double], _ b: [Double], size n: Int) -> [Double] {
    let largest = (0..<n).map { a[$0 * n + $0] }.max() ?? 1
    var shift = 0.0
    while true {
        var l = [Double](repeating: 0, count: n * n)
        var ok = true
        factor: for i in 0..<n {
            for j in 0...i {
                var sum = a[i * n + j] + (i == j ? shift : 0)
                for k in 0..<j { sum -= l[i * n + k] * l[j * n + k] }
                if i == j {
                    guard sum > 0 else { ok = false; break factor }
                    l[i * n + i] = sqrt(sum)
                } else {
                    l[i * n + j] = sum / l[j * n + j]
                }
            }
        }
        if ok {
            var x = b
            for i in 0..<n {
                for k in 0..<i { x[i] -= l[i * n + k] * x[k] }
                x[i] /= l[i * n + i]
            }
            for i in stride(from: n - 1, through: 0, by: -1) {
                for k in (i + 1)..<n { x[i] -= l[k * n + i] * x[k] }
                x[i] /= l[i * n + i]
            }
            return x
        }
        shift = shift == 0 ? 1e-12 * max(largest, 1e-300) : shift * 10
    }
}
