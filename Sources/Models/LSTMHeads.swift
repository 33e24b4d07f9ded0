import Checkpoints
import Foundation
import Tensors

/// How the CLV head models spend over the horizon.
public enum CLVLoss: String, Codable, Sendable, CaseIterable {
    /// Zero-inflated lognormal (Wang, Liu & Miao 2019): P(purchase), μ and σ of log spend given
    /// a purchase, trained by negative log-likelihood. Its mean p·exp(μ + σ²/2) is an expected
    /// value, which is what budgets are sized with.
    case ziln
    /// Squared error on log1p(spend): one output whose expm1 is a geometric-mean-like estimate,
    /// below the expected spend for skewed spend. Kept for comparison and old checkpoints.
    case logMSE = "log_mse"
}

/// Where each output sits in the LSTM's head row, and what the outputs mean.
///
/// One row per customer: the churn logit, then the CLV outputs (one for `log_mse`; the purchase
/// logit, μ and the pre-softplus σ for `ziln`), then one logit per lifecycle stage when the
/// model has a stage head. Training's evaluation and scoring both read rows through this type,
/// so the two cannot disagree on what a checkpoint's outputs mean.
public struct LSTMHeadLayout: Sendable, Equatable {
    public let clvLoss: CLVLoss
    public let stageCount: Int

    /// σ never falls below this (google/lifetime_value uses √ε of float32 the same way), so
    /// the likelihood cannot grow without bound on a customer whose spend is predicted exactly.
    public static let minimumSigma: Float = 3.162_277_7e-4
    /// exp(μ + σ²/2) is evaluated with its exponent capped here: an untrained or damaged head
    /// must not turn a spend into infinity (e^30 ≈ 10¹³ is beyond any real horizon spend).
    public static let maximumLogSpend: Float = 30

    public init(clvLoss: CLVLoss, stageCount: Int) {
        self.clvLoss = clvLoss
        self.stageCount = stageCount
    }

    public var clvWidth: Int { clvLoss == .ziln ? 3 : 1 }
    public var width: Int { 1 + clvWidth + stageCount }
    public var clvColumn: Int { 1 }
    public var stageColumn: Int { 1 + clvWidth }

    @inline(__always)
    public func churnProbability(_ row: UnsafePointer<Float>) -> Float { Kernels.sigmoid(row[0]) }

    /// σ of the lognormal part, from its raw output.
    @inline(__always)
    public static func sigma(raw: Float) -> Float { max(Kernels.softplus(raw), minimumSigma) }

    /// d(expected spend)/d(head outputs) into `gradient` (the CLV columns; the others are left
    /// alone): the derivative of `expectedSpend`, zero where its caps or floors hold.
    @inline(__always)
    public func expectedSpendGradient(_ row: UnsafePointer<Float>, into gradient: UnsafeMutablePointer<Float>) {
        let clv = row + clvColumn, out = gradient + clvColumn
        switch clvLoss {
        case .logMSE:
            out[0] = clv[0] > 0 && clv[0] < Self.maximumLogSpend ? expf(clv[0]) : 0
        case .ziln:
            let softplus = Kernels.softplus(clv[2])
            let sigma = max(softplus, Self.minimumSigma)
            let exponent = clv[1] + 0.5 * sigma * sigma
            let p = Kernels.sigmoid(clv[0])
            let spend = p * expf(min(exponent, Self.maximumLogSpend))
            let uncapped: Float = exponent < Self.maximumLogSpend ? 1 : 0
            out[0] = spend * (1 - p)
            out[1] = spend * uncapped
            // dσ/d(raw) is softplus' derivative, the sigmoid, above the floor.
            out[2] = softplus > Self.minimumSigma ? spend * uncapped * sigma * Kernels.sigmoid(clv[2]) : 0
        }
    }

    /// Expected spend over the horizon: p·exp(μ + σ²/2) for ZILN, max(expm1(ŷ), 0) for log MSE.
    @inline(__always)
    public func expectedSpend(_ row: UnsafePointer<Float>) -> Float {
        let clv = row + clvColumn
        switch clvLoss {
        case .logMSE:
            return max(expm1f(min(clv[0], Self.maximumLogSpend)), 0)
        case .ziln:
            let sigma = Self.sigma(raw: clv[2])
            return Kernels.sigmoid(clv[0]) * expf(min(clv[1] + 0.5 * sigma * sigma, Self.maximumLogSpend))
        }
    }

    /// The ZILN head's probability of any purchase in the horizon; nil for `log_mse`.
    @inline(__always)
    public func purchaseProbability(_ row: UnsafePointer<Float>) -> Float? {
        clvLoss == .ziln ? Kernels.sigmoid(row[clvColumn]) : nil
    }

    /// Softmax of the stage logits into `probabilities` [stageCount]; nothing without a stage head.
    @inline(__always)
    public func stageProbabilities(_ row: UnsafePointer<Float>, into probabilities: UnsafeMutablePointer<Float>) {
        guard stageCount > 0 else { return }
        probabilities.update(from: row + stageColumn, count: stageCount)
        _ = softmaxRow(probabilities, stageCount)
    }
}

/// Starting values of the ZILN head's biases, from the training split: with them the first
/// steps already predict the population's spend instead of exp(0) = 1 currency unit, which
/// Adam would need thousands of steps to climb out of at a small learning rate.
public struct SpendPrior: Codable, Sendable, Equatable {
    /// Share of training customers with positive spend in the horizon.
    public var purchaseRate: Float
    /// Mean and standard deviation of log(spend) over those customers.
    public var logMean: Float
    public var logStd: Float

    public init(purchaseRate: Float, logMean: Float, logStd: Float) {
        self.purchaseRate = purchaseRate
        self.logMean = logMean
        self.logStd = logStd
    }

    /// The prior of `spend` (one value per training customer); nil when nobody spent anything.
    public static func fit(spend: some Sequence<Float>) -> SpendPrior? {
        fit(moments: moments(of: spend))
    }

    /// What the prior is fitted from, as sums that add over the ranks: customers, customers who
    /// spent, and the sum and the sum of squares of log(spend) over those.
    public static func moments(of spend: some Sequence<Float>) -> [Double] {
        var moments = [0.0, 0.0, 0.0, 0.0]
        for value in spend {
            moments[0] += 1
            guard value > 0 else { continue }
            let logValue = log(Double(value))
            moments[1] += 1
            moments[2] += logValue
            moments[3] += logValue * logValue
        }
        return moments
    }

    /// The prior from `moments` summed over every customer; nil when nobody spent anything.
    public static func fit(moments: [Double]) -> SpendPrior? {
        let (count, positives) = (moments[0], moments[1])
        guard positives > 0 else { return nil }
        let mean = moments[2] / positives
        let variance = max(moments[3] / positives - mean * mean, 0)
        return SpendPrior(purchaseRate: Float(positives) / Float(count), logMean: Float(mean),
                          logStd: Float(max(variance.squareRoot(), 0.05)))
    }
}

/// What a checkpoint's weights are, as training writes it into the manifest and scoring reads
/// it back: one type on both sides, so the two cannot drift apart.
public struct ModelArchitecture: Codable, Sendable, Equatable {
    /// The same kind as the checkpoint manifest's.
    public var kind: ModelKind
    /// LSTM: features per period; GNN: node features.
    public var inputSize: Int
    public var hiddenSize: Int
    public var layers: Int
    /// Periods per sequence (LSTM) or of the dataset the graph came from (GNN).
    public var historyLength: Int
    /// Lifecycle stages of the dataset (the GNN's classes; the LSTM stage head's, when it has one).
    public var classCount: Int
    /// LSTM only.
    public var clvLoss: CLVLoss?
    /// LSTM only: stages of its stage head, 0 without one.
    public var stageCount: Int
    /// LSTM only: units of the dense path from `CustomerInputs`, 0 without one.
    public var customerHidden: Int
    public var positiveWeight: Float
    public var classWeights: [Float]?

    public init(kind: ModelKind, inputSize: Int, hiddenSize: Int, layers: Int, historyLength: Int, classCount: Int,
                clvLoss: CLVLoss?, stageCount: Int, customerHidden: Int = 0, positiveWeight: Float, classWeights: [Float]?) {
        self.kind = kind
        self.inputSize = inputSize
        self.hiddenSize = hiddenSize
        self.layers = layers
        self.historyLength = historyLength
        self.classCount = classCount
        self.clvLoss = clvLoss
        self.stageCount = stageCount
        self.customerHidden = customerHidden
        self.positiveWeight = positiveWeight
        self.classWeights = classWeights
    }

    enum CodingKeys: String, CodingKey {
        case kind, inputSize, hiddenSize, layers, historyLength, classCount, clvLoss, stageCount, customerHidden
        case positiveWeight, classWeights
    }

    /// The LSTM these weights belong to (inference settings: no dropout, no prior).
    public var lstmConfiguration: LSTMConfiguration {
        LSTMConfiguration(inputSize: inputSize, hiddenSize: hiddenSize, layers: layers, dropout: 0,
                          clvLoss: clvLoss ?? .logMSE, stageCount: stageCount, customerHidden: customerHidden)
    }
}

/// Customer-level inputs of the dense path, summarised from the normalised sequence itself: the
/// last step's features (recency, tenure and the cumulative totals, which reach back before
/// the window), the mean of every feature over the valid steps (the customer's typical period),
/// and the length as a share of the window. A pure function of what scoring already computes,
/// so training and scoring cannot disagree on it.
public enum CustomerInputs {
    public static func width(featureCount: Int) -> Int { 2 * featureCount + 1 }

    /// Writes the `width(featureCount:)` inputs of one customer whose [steps, featureCount]
    /// batch-major sequence starts at `sequence`. A length outside 1...steps is clamped into it.
    @inline(__always)
    public static func compute(
        sequence: UnsafePointer<Float>, length: Int, steps: Int, featureCount: Int, into out: UnsafeMutablePointer<Float>
    ) {
        let valid = min(max(length, 1), steps)
        out.update(from: sequence + (valid - 1) &* featureCount, count: featureCount)
        let means = out + featureCount
        means.update(repeating: 0, count: featureCount)
        for step in 0..<valid {
            let row = sequence + step &* featureCount
            for feature in 0..<featureCount { means[feature] += row[feature] }
        }
        let scale = 1 / Float(valid)
        for feature in 0..<featureCount { means[feature] *= scale }
        out[2 &* featureCount] = Float(valid) / Float(steps)
    }

    /// Adds d(loss)/d(sequence) given d(loss)/d(inputs) (`gradient`, one customer).
    @inline(__always)
    public static func accumulateGradient(
        _ gradient: UnsafePointer<Float>, length: Int, steps: Int, featureCount: Int, into sequenceGradient: UnsafeMutablePointer<Float>
    ) {
        let valid = min(max(length, 1), steps)
        let last = sequenceGradient + (valid - 1) &* featureCount
        for feature in 0..<featureCount { last[feature] += gradient[feature] }
        let scale = 1 / Float(valid)
        for step in 0..<valid {
            let row = sequenceGradient + step &* featureCount
            for feature in 0..<featureCount { row[feature] += gradient[featureCount &+ feature] * scale }
        }
    }
}
