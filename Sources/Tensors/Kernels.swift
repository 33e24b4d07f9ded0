import Foundation

// Element-wise kernels on raw pointers. Plain loops over `UnsafeMutablePointer` without
// overflow-checked index arithmetic in the body, so the optimiser vectorises the ones that
// have no library calls (exp and tanh stay scalar calls into libm).

public enum Kernels {
    @inline(__always)
    public static func sigmoid(_ x: Float) -> Float {
        // Two forms so exp never overflows: for x < 0 use e^x / (1 + e^x).
        if x >= 0 {
            return 1 / (1 + expf(-x))
        }
        let e = expf(x)
        return e / (1 + e)
    }

    /// log(1 + e^x) without overflow.
    @inline(__always)
    public static func softplus(_ x: Float) -> Float {
        x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x))
    }

    public static func sigmoidInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = sigmoid(x[index]) }
    }

    public static func tanhInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = tanhf(x[index]) }
    }

    public static func reluInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = max(x[index], 0) }
    }

    /// `gradient *= relu'(output)`, using the ReLU output (positive exactly where the input was).
    public static func reluBackward(
        _ gradient: UnsafeMutablePointer<Float>, output: UnsafePointer<Float>, count: Int
    ) {
        for index in 0..<count where output[index] <= 0 { gradient[index] = 0 }
    }

    /// Derivative of the sigmoid from its output s: s(1 - s).
    @inline(__always)
    public static func sigmoidDerivative(output s: Float) -> Float { s * (1 - s) }

    /// Derivative of tanh from its output t: 1 - t².
    @inline(__always)
    public static func tanhDerivative(output t: Float) -> Float { 1 - t * t }

    /// Adds `bias` (length `columns`) to each of `rows` rows.
    public static func addRowBias(
        _ matrix: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: UnsafePointer<Float>
    ) {
        for row in 0..<rows {
            let line = matrix + row &* columns
            for column in 0..<columns { line[column] += bias[column] }
        }
    }

    /// `accumulator[c] += Σ_rows matrix[r, c]`: the bias gradient.
    public static func accumulateColumnSums(
        _ matrix: UnsafePointer<Float>, rows: Int, columns: Int, into accumulator: UnsafeMutablePointer<Float>
    ) {
        for row in 0..<rows {
            let line = matrix + row &* columns
            for column in 0..<columns { accumulator[column] += line[column] }
        }
    }

    /// `y += alpha · x`.
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { y[index] += alpha * x[index] }
    }

    /// `x *= mask` element-wise (dropout forward and backward share it).
    public static func multiply(_ x: UnsafeMutablePointer<Float>, by mask: UnsafePointer<Float>, count: Int) {
        for index in 0..<count { x[index] *= mask[index] }
    }

    public static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        // Double accumulator: a gradient norm over millions of parameters must not lose the tail.
        var total: Double = 0
        var block: Float = 0
        for index in 0..<count {
            block += x[index] * x[index]
            if index & 1023 == 1023 {
                total += Double(block)
                block = 0
            }
        }
        return total + Double(block)
    }
}
