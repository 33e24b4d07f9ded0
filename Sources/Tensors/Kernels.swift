import Foundation

// Element-wise kernels on raw pointers. Plain loops over `UnsafeMutablePointer` without
// overflow-checked index arithmetic in the body and without libm calls, so the optimiser
// vectorises them.

public enum Kernels {
    /// e^x to about 2 ulp, branch-free so loops that call it vectorise (libm's expf is an
    /// opaque call per element).
    ///
    /// Range reduction x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r, and 2^n
    /// assembled in the exponent bits. Rounding to the nearest n uses the 1.5·2²³ trick (its
    /// bit pattern then holds n in the low bits), because `rounded()` compiles to a library
    /// call on baseline x86-64. Inputs are clamped to [−87.3, 88.3], where 2^n stays normal.
    @inlinable @inline(__always)
    public static func exp(_ x: Float) -> Float {
        let clamped = Swift.min(Swift.max(x, -87.3), 88.3)
        let shifted = clamped * 1.442_695_04 + 12_582_912
        let n = shifted - 12_582_912
        let nBits = Int32(bitPattern: shifted.bitPattern) &- 0x4B40_0000
        // ln2 split in two so n·ln2 is exact to float precision.
        let r = (clamped - n * 0.693_359_375) - n * -2.121_944_4e-4
        var p: Float = 1.987_569_15e-4
        p = p * r + 1.398_199_95e-3
        p = p * r + 8.333_451_9e-3
        p = p * r + 4.166_579_59e-2
        p = p * r + 1.666_666_55e-1
        p = p * r + 5.000_000_12e-1
        let y = p * r * r + r + 1
        return y * Float(bitPattern: UInt32(bitPattern: (nBits &+ 127) &<< 23))
    }

    /// 1 / (1 + e^−x), vectorisable; saturates cleanly (exp's clamp keeps it finite).
    @inlinable @inline(__always)
    public static func sigmoid(_ x: Float) -> Float {
        1 / (1 + exp(-x))
    }

    /// tanh, vectorisable: (1 − e^−2|x|)/(1 + e^−2|x|) with the sign restored, and an odd
    /// polynomial near zero where that quotient would cancel (error < 1e-7 absolute).
    @inlinable @inline(__always)
    public static func tanh(_ x: Float) -> Float {
        let magnitude = Swift.abs(x)
        let e = exp(-2 * magnitude)
        let quotient = (1 - e) / (1 + e)
        let x2 = magnitude * magnitude
        let series = magnitude * (1 + x2 * (-1.0 / 3 + x2 * (2.0 / 15 + x2 * (-17.0 / 315))))
        let value = magnitude < 0.0625 ? series : quotient
        return x < 0 ? -value : value
    }

    /// log(1 + e^x) without overflow.
    @inlinable @inline(__always)
    public static func softplus(_ x: Float) -> Float {
        x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x))
    }

    public static func sigmoidInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = sigmoid(x[index]) }
    }

    public static func tanhInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = tanh(x[index]) }
    }

    public static func reluInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for index in 0..<count { x[index] = max(x[index], 0) }
    }

    /// `gradient *= relu'(output)`, using the ReLU output (positive exactly where the input was).
    public static func reluBackward(
        _ gradient: UnsafeMutablePointer<Float>, output: UnsafePointer<Float>, count: Int
    ) {
        // Eight lanes with a mask: about half the outputs are zero, and the scalar loop, which
        // the compiler kept as a branch, mispredicted half the time (a fifth of GraphSAGE's step).
        let vectorCount = count / 8
        let outputs = UnsafeRawPointer(output), gradients = UnsafeMutableRawPointer(gradient)
        for vector in 0..<vectorCount {
            let byteOffset = vector &* 32
            var lanes = gradients.loadUnaligned(fromByteOffset: byteOffset, as: SIMD8<Float>.self)
            let active = outputs.loadUnaligned(fromByteOffset: byteOffset, as: SIMD8<Float>.self)
            lanes.replace(with: 0, where: active .<= 0)
            gradients.storeBytes(of: lanes, toByteOffset: byteOffset, as: SIMD8<Float>.self)
        }
        for index in vectorCount &* 8..<count where output[index] <= 0 { gradient[index] = 0 }
    }

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
