import CForwardKernels
import Foundation
import Models
import Tensors

/// Which version of the LSTM step `InferenceLSTM` runs. The fused kernels (C, built per
/// instruction set and chosen at run time) compute the gate products and the cell update of a
/// tile of customers in one pass; the portable path is Swift for baseline x86-64 (SSE2), with the
/// gate products from OpenBLAS. All compute the same equations; results agree to float rounding
/// (the fused kernels use FMA).
public enum ForwardKernel: Int32, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    case portable = 0
    case avx2 = 1
    case avx512 = 2

    /// The best this CPU runs.
    public static let available = ForwardKernel(rawValue: clm_lstm_best_kernel()) ?? .portable

    /// What scoring runs: `available`, or less when the environment's `CLM_FORWARD_KERNEL`
    /// (portable, avx2 or avx512) asks for less, to compare the versions in one service or to
    /// get the portable path's scores on any CPU.
    public static let chosen: ForwardKernel = {
        guard let requested = ProcessInfo.processInfo.environment["CLM_FORWARD_KERNEL"] else { return available }
        guard let kernel = ForwardKernel(name: requested) else {
            FileHandle.standardError.write(Data(
                "warning: CLM_FORWARD_KERNEL=\(requested) is not portable, avx2 or avx512; using \(available)\n".utf8))
            return available
        }
        return min(kernel, available)
    }()

    public static func < (lhs: ForwardKernel, rhs: ForwardKernel) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .portable: "portable"
        case .avx2: "avx2"
        case .avx512: "avx512"
        }
    }

    public init?(name: String) {
        guard let kernel = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = kernel
    }
}

/// The LSTM forward pass for scoring only: PyTorch's equations as in `LSTMModel.forward`,
/// arranged for throughput on one core. Each layer's step runs a fused C kernel where the CPU
/// has AVX2 or AVX-512 (`ForwardKernel`), else the portable path below, written for a baseline
/// x86-64 (SSE2) build; the first two points hold for both.
///
/// - Packed like `pack_padded_sequence`: each batch is ordered by length, longest first, so at
///   step t exactly the first `active[t]` customers are still inside their sequence. Products
///   and activations run on those columns only, and a finished customer's h is never written
///   again, so its last valid state is still in place when the heads read it (no masking, no
///   carrying of state through padded steps).
/// - Feature-major activations, [features, batch]: the gates GEMM writes one row per gate unit
///   across the batch, so the cell update runs over customers in whole vectors (the hidden
///   size, 50, is not a multiple of the vector width; the batch usually is).
/// - One GEMM per layer and step, [x_t; 1; h_{t−1}] against [W_ih | b | W_hh]: the summed
///   biases ride in the product against a row of ones, and no [T, batch, 4H] projection
///   buffer streams through memory between the passes.
/// - One pass for the gates' sigmoids, the cell update and tanh(c), with the quotients
///   combined and base-2 exponentials (see `lanesUpdate`).
///
/// Weights are immutable and shared by all callers; each caller brings an `InferenceWorkspace`.
public final class InferenceLSTM: Sendable {
    struct Layer {
        let inputSize: Int
        /// [4H, width] row-major: W_ih | b_ih + b_hh | W_hh, scaled by `gateScale` (the
        /// candidate's rows by twice that).
        let weights: [Float]
        /// `weights` as the fused kernels read them: by tiles of units, and transposed for a
        /// few customers (both empty for the portable path).
        let packed: [Float]
        let transposed: [Float]
    }

    public let hiddenSize: Int
    public let inputSize: Int
    public let kernel: ForwardKernel
    let layers: [Layer]
    /// Rows of each layer's input block: its input, the ones row, h_{t−1}.
    let blockWidths: [Int]
    /// The rows of `LSTMHeadLayout`: churn, CLV, stages.
    public let heads: LSTMHeadLayout
    let headWeight: [Float]        // [K, H]: the heads' columns that read the LSTM state
    let headBias: [Float]          // [K]
    /// The dense path from `CustomerInputs`, when the model has one: [U, inputs] and [U], and
    /// the heads' columns that read its output, [K, U].
    let customerWeight: [Float]
    let customerBias: [Float]
    let customerHeadWeight: [Float]
    let customerUnits: Int

    /// Builds the inference weights from PyTorch-named tensors (already checked for shape).
    /// `kernel` above what the CPU runs is lowered to `ForwardKernel.available`.
    public init(configuration: LSTMConfiguration, weights: [String: [Float]], kernel: ForwardKernel = .chosen) {
        let hidden = configuration.hiddenSize
        let kernel = min(kernel, ForwardKernel.available)
        self.kernel = kernel
        hiddenSize = hidden
        inputSize = configuration.inputSize
        layers = (0..<configuration.layers).map { k in
            let inputSize = k == 0 ? configuration.inputSize : hidden
            let width = inputSize + 1 + hidden
            let inputWeight = weights["lstm.weight_ih_l\(k)"]!, hiddenWeight = weights["lstm.weight_hh_l\(k)"]!
            let inputBias = weights["lstm.bias_ih_l\(k)"]!, hiddenBias = weights["lstm.bias_hh_l\(k)"]!
            var combined = [Float](repeating: 0, count: 4 * hidden * width)
            for row in 0..<4 * hidden {
                let scale = (2 * hidden..<3 * hidden).contains(row) ? 2 * InferenceLSTM.gateScale : InferenceLSTM.gateScale
                for column in 0..<inputSize {
                    combined[row * width + column] = scale * inputWeight[row * inputSize + column]
                }
                combined[row * width + inputSize] = scale * (inputBias[row] + hiddenBias[row])
                for column in 0..<hidden {
                    combined[row * width + inputSize + 1 + column] = scale * hiddenWeight[row * hidden + column]
                }
            }
            var packed: [Float] = [], transposed: [Float] = []
            if kernel != .portable {
                packed = [Float](repeating: 0, count: clm_lstm_packed_count(kernel.rawValue, Int32(hidden), Int32(width)))
                clm_lstm_pack(kernel.rawValue, combined, Int32(hidden), Int32(width), &packed)
                transposed = [Float](repeating: 0, count: clm_lstm_transposed_count(Int32(hidden), Int32(width)))
                clm_lstm_transpose(combined, Int32(hidden), Int32(width), &transposed)
            }
            return Layer(inputSize: inputSize, weights: combined, packed: packed, transposed: transposed)
        }
        blockWidths = layers.map { $0.inputSize + 1 + hidden }
        heads = configuration.heads
        let stageWeight = heads.stageCount > 0 ? weights["stage_head.weight"]! : []
        let stageBias = heads.stageCount > 0 ? weights["stage_head.bias"]! : []
        // [K, H + U] row-major, split into the state's columns and the dense path's.
        let joined = weights["churn_head.weight"]! + weights["clv_head.weight"]! + stageWeight
        let units = configuration.customerHidden, headInput = configuration.headInputSize
        customerUnits = units
        headWeight = (0..<heads.width).flatMap { row in joined[row * headInput ..< row * headInput + hidden] }
        customerHeadWeight = (0..<heads.width).flatMap { row in joined[row * headInput + hidden ..< (row + 1) * headInput] }
        customerWeight = units > 0 ? weights["customer_dense.weight"]! : []
        customerBias = units > 0 ? weights["customer_dense.bias"]! : []
        headBias = weights["churn_head.bias"]! + weights["clv_head.bias"]! + stageBias
    }

    /// Head outputs of `batch` customers into `outputs` [batch, heads.width] (see `LSTMHeadLayout`).
    ///
    /// `features` is [batch, steps, inputSize] batch-major, `lengths` [batch] in 1...steps;
    /// steps at or past a customer's length leave its state unchanged, as in training (a
    /// length of 0 leaves the state at zero, so the heads give their biases).
    public func forward(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, batch: Int, steps: Int,
        workspace: InferenceWorkspace, outputs: UnsafeMutablePointer<Float>
    ) {
        guard batch > 0 else { return }
        let hidden = hiddenSize, features0 = inputSize
        workspace.prepare(batch: batch, steps: steps, layers: blockWidths, hidden: hidden, heads: heads.width, kernel: kernel)
        let stride = workspace.stride
        let order = workspace.order.baseAddress!
        let active = workspace.active.baseAddress!
        workspace.sortByLength(lengths, batch: batch, steps: steps)

        // Row layout of layer l's input block, [width_l, stride]: input_l rows, a row of ones
        // (the bias column's partner), then h_{l, t−1}. Layer l's h_t is written both into its
        // own block (next step's recurrent input) and into layer l+1's input rows.
        let inputs = workspace.inputs.map(\.pointer)
        let cells = workspace.cells.map(\.pointer)
        let gates = workspace.gates.pointer
        for (l, layer) in layers.enumerated() {
            let block = inputs[l]
            (block + layer.inputSize &* stride).update(repeating: 1, count: batch)
            (block + (layer.inputSize &+ 1) &* stride).update(repeating: 0, count: hidden &* stride)
            cells[l].update(repeating: 0, count: hidden &* stride)
        }

        let lastLayer = layers.count - 1
        var t = 0
        while t < steps, active[t] > 0 {
            let count = active[t]
            // Gather x_t of the active customers into layer 0's input rows.
            let x = inputs[0]
            for column in 0..<count {
                let source = features + (Int(order[column]) &* steps &+ t) &* features0
                for feature in 0..<features0 { x[feature &* stride &+ column] = source[feature] }
            }
            for (l, layer) in layers.enumerated() {
                let width = layer.inputSize + 1 + hidden
                // h_{−1} = 0: the first step needs only the input and bias columns.
                let depth = t == 0 ? layer.inputSize + 1 : width
                let recurrent = inputs[l] + (layer.inputSize &+ 1) &* stride
                let next = l < lastLayer ? inputs[l + 1] : nil
                if kernel != .portable {
                    let scratch = workspace.kernelScratch.pointer
                    if count > InferenceLSTM.fusedColumnwiseLimit {
                        layer.packed.withUnsafeBufferPointer { packed in
                            clm_lstm_step(
                                kernel.rawValue, packed.baseAddress!, Int32(hidden), Int32(width), Int32(depth), inputs[l], stride,
                                recurrent, cells[l], next, Int32(count), InferenceLSTM.cellScale, InferenceLSTM.limit, scratch)
                        }
                    } else {
                        layer.transposed.withUnsafeBufferPointer { transposed in
                            clm_lstm_step_columns(
                                kernel.rawValue, transposed.baseAddress!, Int32(hidden), Int32(width), Int32(depth), inputs[l],
                                stride, recurrent, cells[l], next, Int32(count), InferenceLSTM.cellScale, InferenceLSTM.limit,
                                scratch)
                        }
                    }
                    continue
                }
                layer.weights.withUnsafeBufferPointer { w in
                    if count == 1 {
                        // One customer: a matrix-vector product, without the packing GEMM does
                        // for its blocked kernel (13% of a single-customer request's time).
                        BLAS.gemv(m: 4 * hidden, n: depth, a: w.baseAddress!, lda: width,
                                  x: inputs[l], incx: stride, y: gates, incy: stride)
                    } else {
                        BLAS.gemm(m: 4 * hidden, n: count, k: depth, a: w.baseAddress!, lda: width,
                                  b: inputs[l], ldb: stride, c: gates, ldc: stride)
                    }
                }
                if count <= InferenceLSTM.columnwiseLimit {
                    for column in 0..<count {
                        InferenceLSTM.cellUpdateAcrossUnits(
                            column: column, gates: gates, stride: stride, hidden: hidden, cell: cells[l],
                            hiddenState: recurrent, nextInput: next, scratch: workspace.columnScratch.pointer)
                    }
                } else {
                    for unit in 0..<hidden {
                        let g = gates + unit &* stride
                        InferenceLSTM.cellUpdate(
                            input: g, forget: g + hidden &* stride, candidate: g + 2 &* hidden &* stride,
                            output: g + 3 &* hidden &* stride, cell: cells[l] + unit &* stride,
                            hidden: recurrent + unit &* stride, nextInput: next.map { $0 + unit &* stride }, count: count)
                    }
                }
            }
            t += 1
        }

        // Heads on the top layer's h, which holds each customer's last valid step.
        let final = inputs[lastLayer] + (layers[lastLayer].inputSize &+ 1) &* stride
        let width = heads.width
        let sorted = workspace.heads.pointer   // [K, stride]: one row per head output
        for output in 0..<width {
            let row = sorted + output &* stride
            row.update(repeating: headBias[output], count: batch)
            headWeight.withUnsafeBufferPointer { weights in
                let w = weights.baseAddress! + output &* hidden
                for unit in 0..<hidden {
                    let h = final + unit &* stride
                    let weight = w[unit]
                    for column in 0..<batch { row[column] += weight * h[column] }
                }
            }
        }
        for column in 0..<batch {
            let target = outputs + Int(order[column]) &* width
            for output in 0..<width { target[output] = sorted[output &* stride &+ column] }
        }
        if customerUnits > 0 {
            addCustomerPath(features: features, lengths: lengths, batch: batch, steps: steps, workspace: workspace, outputs: outputs)
        }
    }

    /// Adds the dense path's share to the head outputs: W_heads,u · relu(W_d · s + b_d) with s
    /// the customer's `CustomerInputs` (a few hundred operations a customer, next to the LSTM's
    /// tens of thousands, so plain loops).
    private func addCustomerPath(
        features: UnsafePointer<Float>, lengths: UnsafePointer<Int32>, batch: Int, steps: Int,
        workspace: InferenceWorkspace, outputs: UnsafeMutablePointer<Float>
    ) {
        let inputs = CustomerInputs.width(featureCount: inputSize)
        let units = customerUnits, width = heads.width
        let scratch = workspace.customerScratch(count: inputs + units)
        let summary = scratch, dense = scratch + inputs
        customerWeight.withUnsafeBufferPointer { w in
            customerHeadWeight.withUnsafeBufferPointer { v in
                for customer in 0..<batch {
                    CustomerInputs.compute(
                        sequence: features + customer &* steps &* inputSize, length: Int(lengths[customer]), steps: steps,
                        featureCount: inputSize, into: summary)
                    for unit in 0..<units {
                        let row = w.baseAddress! + unit &* inputs
                        var value = customerBias[unit]
                        for index in 0..<inputs { value += row[index] * summary[index] }
                        dense[unit] = max(value, 0)
                    }
                    let target = outputs + customer &* width
                    for output in 0..<width {
                        let row = v.baseAddress! + output &* units
                        var value: Float = 0
                        for unit in 0..<units { value += row[unit] * dense[unit] }
                        target[output] += value
                    }
                }
            }
        }
    }
}

extension InferenceLSTM {
    /// 16 lanes on 4-lane SSE registers: each operation becomes four independent instructions,
    /// which keeps the units busy through the exponentials' long dependency chains. Measured
    /// with `clm-bench scoring`: 16 lanes 24,850 customers/s, 8 lanes 22,440, 4 lanes 20,590;
    /// 32 lanes ran a hundred times slower.
    typealias Lanes = SIMD16<Float>
    typealias IntegerLanes = SIMD16<Int32>

    /// −log2(e): folded into the weights so that the exponentials need no scaling.
    static let gateScale: Float = -1.442_695_04
    static let cellScale: Float = 2 * gateScale

    /// Exponents are clamped to ±limit: that keeps the products of up to three (1 + 2^u)
    /// factors in `cellUpdate` finite (2^108 < Float.max), and costs nothing in accuracy,
    /// since σ(−25) ≈ 1.4·10⁻¹¹ and tanh(12.5) = 1 to float precision.
    static let limit: Float = 36

    /// One layer's step for one hidden unit across the first `count` customers: a row of each
    /// gate, the unit's cells, and where its h goes (this layer's next step, the next layer).
    @inline(__always)
    static func cellUpdate(
        input: UnsafeMutablePointer<Float>, forget: UnsafeMutablePointer<Float>,
        candidate: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>,
        cell: UnsafeMutablePointer<Float>, hidden: UnsafeMutablePointer<Float>,
        nextInput: UnsafeMutablePointer<Float>?, count: Int
    ) {
        let lanes = Lanes.scalarCount
        var column = 0
        while column &+ lanes <= count {
            let (c, h) = lanesUpdate(
                load(input + column), load(forget + column), load(candidate + column), load(output + column),
                load(cell + column))
            store(c, cell + column)
            store(h, hidden + column)
            if let nextInput { store(h, nextInput + column) }
            column &+= lanes
        }
        // The tail: whole vectors are computed (the buffers' rows are padded to whole vectors),
        // but only the active columns are stored; the columns after them belong to customers
        // whose sequences have ended and whose state must stay as it is.
        if column < count {
            let (c, h) = lanesUpdate(
                load(input + column), load(forget + column), load(candidate + column), load(output + column),
                load(cell + column))
            for lane in 0..<(count &- column) {
                cell[column &+ lane] = c[lane]
                hidden[column &+ lane] = h[lane]
                nextInput?[column &+ lane] = h[lane]
            }
        }
    }

    /// Up to this many active customers, a step's cell update runs along the hidden units of
    /// each customer instead of across customers: one customer fills 1 of 16 lanes when vectors
    /// run across customers, so a single-customer request (the service's usual one) computed 16
    /// times the work. Measured with `clm-bench scoring --batch-sizes 1,2,4,8`.
    static let columnwiseLimit = 4
    /// The same switch for the fused kernels, where one customer costs about what one column of a
    /// tile costs, but streams all the weights instead of sharing them with the tile's others.
    static let fusedColumnwiseLimit = 8

    /// The cell update of one customer (`column`) for every hidden unit: its gates and cells are
    /// gathered into contiguous rows of `scratch`, updated a vector of units at a time, and its
    /// new c and h scattered back. `scratch` holds 6 rows of `hidden` rounded up to whole vectors;
    /// lanes past `hidden` carry whatever finite values an earlier call left there.
    @inline(__always)
    static func cellUpdateAcrossUnits(
        column: Int, gates: UnsafeMutablePointer<Float>, stride: Int, hidden: Int, cell: UnsafeMutablePointer<Float>,
        hiddenState: UnsafeMutablePointer<Float>, nextInput: UnsafeMutablePointer<Float>?, scratch: UnsafeMutablePointer<Float>
    ) {
        let lanes = Lanes.scalarCount
        let padded = (hidden &+ lanes &- 1) / lanes &* lanes
        let i = scratch, f = scratch + padded, g = scratch + 2 &* padded, o = scratch + 3 &* padded
        let c = scratch + 4 &* padded, h = scratch + 5 &* padded
        for unit in 0..<hidden {
            i[unit] = gates[unit &* stride &+ column]
            f[unit] = gates[(hidden &+ unit) &* stride &+ column]
            g[unit] = gates[(2 &* hidden &+ unit) &* stride &+ column]
            o[unit] = gates[(3 &* hidden &+ unit) &* stride &+ column]
            c[unit] = cell[unit &* stride &+ column]
        }
        var unit = 0
        while unit < padded {
            let (newCell, newHidden) = lanesUpdate(load(i + unit), load(f + unit), load(g + unit), load(o + unit), load(c + unit))
            store(newCell, c + unit)
            store(newHidden, h + unit)
            unit &+= lanes
        }
        for unit in 0..<hidden {
            cell[unit &* stride &+ column] = c[unit]
            hiddenState[unit &* stride &+ column] = h[unit]
            nextInput?[unit &* stride &+ column] = h[unit]
        }
    }

    /// c' = σ(f)·c + σ(i)·tanh(g) and h = σ(o)·tanh(c') on a vector of customers.
    ///
    /// The weights make the GEMM give u = −x·log2(e) for each gate (u = −2g·log2(e) for the
    /// candidate), so with E = 2^u, σ(x) = 1/(1 + E) and tanh(g) = (1 − E_g)/(1 + E_g). Each
    /// product of quotients is then one quotient:
    ///
    ///     c' = [c·(1+E_i)(1+E_g) + (1−E_g)(1+E_f)] / [(1+E_f)(1+E_i)(1+E_g)]
    ///     h  = (1 − E_c) / [(1+E_o)(1+E_c)],   E_c = 2^(−2c'·log2(e))
    ///
    /// 2 divisions instead of the 5 that separate sigmoids and tanh take; after the
    /// exponentials, divisions are the dearest operation here.
    @inline(__always)
    static func lanesUpdate(_ i: Lanes, _ f: Lanes, _ g: Lanes, _ o: Lanes, _ c: Lanes) -> (cell: Lanes, hidden: Lanes) {
        let one = Lanes(repeating: 1)
        let ei = one + exp2(clamp(i)), ef = one + exp2(clamp(f)), eg = exp2(clamp(g)), eo = one + exp2(clamp(o))
        let a = ei * (one + eg)
        let cell = (c * a + (one - eg) * ef) / (ef * a)
        let ec = exp2(clamp(cell * cellScale))
        return (cell, (one - ec) / (eo * (one + ec)))
    }

    @inline(__always)
    static func clamp(_ x: Lanes) -> Lanes {
        // In this form (each select on the previous result) the compiler emits maxps and minps.
        let low = x.replacing(with: -limit, where: x .< -limit)
        return low.replacing(with: limit, where: low .> limit)
    }

    /// 2^u for u in [−limit, limit]: u = n + s with n the nearest integer, 2^s by a degree-6
    /// polynomial on [−½, ½] (minimax for relative error: 1.9·10⁻⁹ in exact arithmetic, under
    /// 1.7 ulp as evaluated in float), 2^n assembled in the exponent bits. Base 2 because
    /// log2(e) is folded into the weights: that drops `Kernels.exp`'s scaling and two-part
    /// ln 2 reduction, and with the degree-6 polynomial 6 of its 22 floating-point operations.
    @inline(__always)
    static func exp2(_ u: Lanes) -> Lanes {
        // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
        let shifted = u + 12_582_912
        let s = u - (shifted - 12_582_912)
        var y = Lanes(repeating: 1.534_581_2e-4)
        y = y * s + 1.339_993_1e-3
        y = y * s + 9.618_489e-3
        y = y * s + 5.550_328_6e-2
        y = y * s + 2.402_264_6e-1
        y = y * s + 6.931_472e-1
        y = y * s + 1
        let exponent = (unsafeBitCast(shifted, to: IntegerLanes.self) &- (0x4B40_0000 - 127)) &<< 23
        return y * unsafeBitCast(exponent, to: Lanes.self)
    }

    @inline(__always)
    static func load(_ pointer: UnsafeMutablePointer<Float>) -> Lanes {
        UnsafeRawPointer(pointer).loadUnaligned(as: Lanes.self)
    }

    @inline(__always)
    static func store(_ value: Lanes, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Lanes.self)
    }
}

/// Per-caller buffers of `InferenceLSTM.forward`, grown to the largest batch seen; used by one
/// caller at a time (the scorer's pool hands it out), hence unchecked Sendable.
public final class InferenceWorkspace: @unchecked Sendable {
    /// Row stride of every [rows, batch] buffer: the batch rounded up to whole fused-kernel tiles
    /// (32 columns; whole cache lines), so rows start aligned and a vector or tile read past the
    /// last column stays inside the row.
    private(set) var stride = 0
    /// Column (position in length order, longest first) → customer index in the batch.
    private(set) var order: UnsafeMutableBufferPointer<Int32> = .init(start: nil, count: 0)
    /// Step → customers whose sequence covers it (the first `active[t]` columns).
    private(set) var active: UnsafeMutableBufferPointer<Int> = .init(start: nil, count: 0)
    private var starts: [Int] = []
    private(set) var inputs: [Tensor] = []
    private(set) var cells: [Tensor] = []
    let gates = Tensor(shape: [1])
    let heads = Tensor(shape: [1])
    /// Rows of one customer's gates, cells and hidden state for `cellUpdateAcrossUnits`.
    let columnScratch = Tensor(shape: [1])
    /// The fused kernels' scratch: a tile's new h, [hidden, tile columns], or one customer's
    /// inputs, gates, cells and new h (`clm_lstm_scratch_count` sizes it for both).
    let kernelScratch = Tensor(shape: [1])
    /// Head outputs [batch, K] for callers that transform them (the scorer).
    private let headRows = Tensor(shape: [1])

    public init() {}

    private let customerRows = Tensor(shape: [1])

    /// Scratch for one customer's dense path.
    func customerScratch(count: Int) -> UnsafeMutablePointer<Float> {
        customerRows.reshape(max(count, 1))
        return customerRows.pointer
    }

    /// A buffer of at least `count` floats, reused across calls.
    func outputs(count: Int) -> UnsafeMutablePointer<Float> {
        headRows.reshape(max(count, 1))
        return headRows.pointer
    }

    deinit {
        order.deallocate()
        active.deallocate()
    }

    func prepare(batch: Int, steps: Int, layers widths: [Int], hidden: Int, heads: Int, kernel: ForwardKernel) {
        stride = (batch + 31) & ~31
        assert(kernel == .portable || stride % Int(clm_lstm_tile_columns(kernel.rawValue)) == 0)
        if order.count < batch {
            order.deallocate()
            order = .allocate(capacity: batch)
        }
        if active.count < steps + 1 {
            active.deallocate()
            active = .allocate(capacity: steps + 1)
        }
        while inputs.count < widths.count { inputs.append(Tensor(shape: [1])) }
        while cells.count < widths.count { cells.append(Tensor(shape: [1])) }
        for l in 0..<widths.count {
            inputs[l].reshape(widths[l], stride)
            cells[l].reshape(hidden, stride)
        }
        gates.reshape(4 * hidden, stride)
        if kernel != .portable {
            kernelScratch.reshape(clm_lstm_scratch_count(kernel.rawValue, Int32(hidden), Int32(widths.max() ?? 0)))
        }
        self.heads.reshape(heads, stride)
        let padded = (hidden + 15) & ~15
        if columnScratch.count < 6 * padded {
            columnScratch.reshape(6 * padded)
            // Lanes past `hidden` are read before anything is stored there: start them finite.
            columnScratch.pointer.update(repeating: 0, count: 6 * padded)
        }
    }

    /// A stable counting sort of the batch by length, longest first, and the number of
    /// customers still active at each step. Lengths outside 0...steps are clamped into it.
    func sortByLength(_ lengths: UnsafePointer<Int32>, batch: Int, steps: Int) {
        if starts.count < steps + 2 { starts = [Int](repeating: 0, count: steps + 2) }
        starts.withUnsafeMutableBufferPointer { starts in
            for length in 0...steps { starts[length] = 0 }
            for b in 0..<batch { starts[min(max(Int(lengths[b]), 0), steps)] += 1 }
            // active[t] = customers longer than t, a running sum from the longest length down.
            var position = 0
            for length in Swift.stride(from: steps, through: 0, by: -1) {
                let customers = starts[length]
                starts[length] = position
                position += customers
                if length > 0 { active[length - 1] = position }
            }
            active[steps] = 0
            for b in 0..<batch {
                let length = min(max(Int(lengths[b]), 0), steps)
                order[starts[length]] = Int32(b)
                starts[length] += 1
            }
        }
    }
}
