import Foundation

// Shared by the BG/NBD and Gamma-Gamma fits: both maximise a likelihood over a handful of
// log-parameters, with analytic gradients that need the digamma function.

/// ln Γ(x) for x > 0.
///
/// The overlay's two-result lgamma wraps lgamma_r; plain lgamma writes the global `signgam`,
/// which is a data race when fits run concurrently.
func logGamma(_ x: Double) -> Double {
    lgamma(x).0
}

/// The digamma function ψ(x) = d/dx ln Γ(x), for x > 0, to about 1e-14 relative.
func digamma(_ x: Double) -> Double {
    var x = x
    var result = 0.0
    // ψ(x) = ψ(x + 1) − 1/x moves x to where the asymptotic series below, truncated after the
    // x⁻¹⁰ term, is accurate: its first omitted term is 691/32760 · x⁻¹² < 3e-14 at x ≥ 10.
    while x < 10 {
        result -= 1 / x
        x += 1
    }
    let inverse = 1 / x
    let inverse2 = inverse * inverse
    let series = inverse2 * (1.0 / 12 - inverse2 * (1.0 / 120 - inverse2 * (1.0 / 252 - inverse2 * (1.0 / 240 - inverse2 / 132))))
    return result + log(x) - 0.5 * inverse - series
}

/// The logistic function 1 / (1 + e^−z), without overflow for large |z|.
func sigmoid(_ z: Double) -> Double {
    if z >= 0 {
        return 1 / (1 + exp(-z))
    }
    let e = exp(z)
    return e / (1 + e)
}

/// ln(1 + e^z), without overflow for large z or loss of precision for very negative z.
func softplus(_ z: Double) -> Double {
    max(z, 0) + log1p(exp(-abs(z)))
}

/// Where `minimizeBFGS` stopped.
struct MinimizationResult {
    var point: [Double]
    var value: Double
    var gradient: [Double]
    var iterations: Int
    var evaluations: Int

    var largestGradient: Double { gradient.map(abs).max() ?? 0 }
}

/// Minimises a smooth function of a few variables with BFGS and a backtracking line search.
///
/// `objective(x, &gradient)` returns f(x) and writes ∇f(x). Where f is undefined it may return
/// a non-finite value; the line search then backs off. Stops when every gradient component is
/// at most `gradientTolerance`, after `maxIterations`, or at the numerical minimum: when no step
/// lowers f, or f has stopped changing beyond rounding for several iterations. The last matters
/// for likelihoods summed over many customers, whose rounding noise (~1e-15 of f) hides the
/// decrease of the final steps, and where the gradient cannot reach an arbitrary tolerance.
/// `maxStep` bounds each step's largest component, so a poor early direction cannot throw the
/// search far into a region where exp(log-parameter) overflows.
func minimizeBFGS(
    from start: [Double], gradientTolerance: Double, maxStep: Double = 2, maxIterations: Int = 500,
    objective: ([Double], inout [Double]) throws -> Double
) rethrows -> MinimizationResult {
    let n = start.count
    var x = start
    var gradient = [Double](repeating: 0, count: n)
    var value = try objective(x, &gradient)
    var result = MinimizationResult(point: x, value: value, gradient: gradient, iterations: 0, evaluations: 1)
    guard value.isFinite, gradient.allSatisfy(\.isFinite) else { return result }

    // Inverse-Hessian approximation, row-major [n, n].
    var inverseHessian = identity(n)
    var isIdentity = true
    var trialGradient = gradient
    var direction = gradient
    var stalledIterations = 0
    while result.iterations < maxIterations, result.largestGradient > gradientTolerance, stalledIterations < 5 {
        result.iterations += 1
        for i in 0..<n {
            direction[i] = 0
            for j in 0..<n { direction[i] -= inverseHessian[i * n + j] * gradient[j] }
        }
        var slope = zip(gradient, direction).reduce(0) { $0 + $1.0 * $1.1 }
        if !(slope < 0) {
            // Rounding can make the approximation indefinite; steepest descent is always downhill.
            inverseHessian = identity(n)
            isIdentity = true
            direction = gradient.map { -$0 }
            slope = -gradient.reduce(0) { $0 + $1 * $1 }
        }

        var step = min(1, maxStep / (direction.map(abs).max() ?? 1))
        let smallestStep = step * 1e-12
        var trial = x
        var trialValue = Double.nan
        var accepted = false
        while step > smallestStep {
            for i in 0..<n { trial[i] = x[i] + step * direction[i] }
            trialValue = try objective(trial, &trialGradient)
            result.evaluations += 1
            if trialValue.isFinite, trialGradient.allSatisfy(\.isFinite) {
                // Armijo's sufficient decrease; or, at the bottom, where f only changes by
                // rounding, a step that shrinks the gradient without raising f beyond rounding.
                if trialValue <= value + 1e-4 * step * slope { accepted = true; break }
                if trialValue <= value + 1e-14 * abs(value),
                   trialGradient.map(abs).max()! < result.largestGradient { accepted = true; break }
            }
            step *= 0.5
        }
        if !accepted {
            if isIdentity { break }
            inverseHessian = identity(n)
            isIdentity = true
            continue
        }

        var s = [Double](repeating: 0, count: n)
        var y = [Double](repeating: 0, count: n)
        for i in 0..<n {
            s[i] = trial[i] - x[i]
            y[i] = trialGradient[i] - gradient[i]
        }
        let sy = zip(s, y).reduce(0) { $0 + $1.0 * $1.1 }
        let yy = y.reduce(0) { $0 + $1 * $1 }
        // Skipping the update when curvature is not positive keeps the approximation positive
        // definite.
        if sy > 1e-12 * sqrt(s.reduce(0) { $0 + $1 * $1 } * yy) {
            if isIdentity {
                // Nocedal & Wright's scaling of the first approximation to the problem's curvature.
                for i in 0..<n { inverseHessian[i * n + i] = sy / yy }
            }
            bfgsUpdate(&inverseHessian, s: s, y: y, sy: sy)
            isIdentity = false
        }
        let largestMove = s.map(abs).max()!
        let atRoundingLevel = value - trialValue <= 1e-15 * max(1, abs(value))
            || largestMove <= 1e-14 * max(1, x.map(abs).max()!)
        stalledIterations = atRoundingLevel ? stalledIterations + 1 : 0
        x = trial
        value = trialValue
        gradient = trialGradient
        result.point = x
        result.value = value
        result.gradient = gradient
    }
    return result
}

private func identity(_ n: Int) -> [Double] {
    var matrix = [Double](repeating: 0, count: n * n)
    for i in 0..<n { matrix[i * n + i] = 1 }
    return matrix
}

/// H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ with ρ = 1 / (sᵀy).
private func bfgsUpdate(_ h: inout [Double], s: [Double], y: [Double], sy: Double) {
    let n = s.count
    let rho = 1 / sy
    var hy = [Double](repeating: 0, count: n)
    for i in 0..<n {
        for j in 0..<n { hy[i] += h[i * n + j] * y[j] }
    }
    let yhy = zip(y, hy).reduce(0) { $0 + $1.0 * $1.1 }
    // Expanded form of the update for symmetric H.
    for i in 0..<n {
        for j in 0..<n {
            h[i * n + j] += -rho * (hy[i] * s[j] + s[i] * hy[j]) + (rho * rho * yhy + rho) * s[i] * s[j]
        }
    }
}

/// The maximum-likelihood fit of a model with positive parameters, optimised in log space:
/// BFGS from every start (each restarted once from its optimum, which discards an
/// inverse-Hessian approximation that may have degraded over a long run), the best optimum kept.
/// Returns the parameters (exponentiated); throws naming `model` and the parameter when the
/// likelihood cannot be evaluated, a parameter runs off to 0 or infinity (the data cannot
/// identify it), or the optimum is not a stationary point.
func fitLogParameters(
    model: String, names: [String], starts: [[Double]], objective: ([Double], inout [Double]) throws -> Double
) throws -> [Double] {
    var best: MinimizationResult?
    for start in starts {
        var result = try minimizeBFGS(from: start, gradientTolerance: 1e-9, objective: objective)
        result = try minimizeBFGS(from: result.point, gradientTolerance: 1e-9, objective: objective)
        if result.value.isFinite, result.value < best?.value ?? .infinity { best = result }
    }
    guard let best else {
        throw BaselineError("\(model): the likelihood could not be evaluated at any starting point")
    }
    if let runaway = best.point.indices.first(where: { abs(best.point[$0]) > 25 }) {
        throw BaselineError("\(model): no interior maximum: \(names[runaway]) ran off to \(exp(best.point[runaway])); the data cannot identify it")
    }
    guard best.largestGradient < 1e-6 else {
        throw BaselineError("\(model): the fit did not converge (largest gradient \(best.largestGradient) after \(best.iterations) iterations)")
    }
    return best.point.map(exp)
}
