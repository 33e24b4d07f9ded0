import Foundation
import Tensors

/// Adam / AdamW settings (PyTorch's meaning of each).
public struct AdamConfiguration: Sendable, Equatable, Codable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var weightDecay: Float = 0
    /// AdamW: decay the weights directly (decoupled) instead of adding decay·θ to the gradient.
    public var decoupledWeightDecay = false

    public init(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
                weightDecay: Float = 0, decoupledWeightDecay: Bool = false) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
    }
}

/// Adam over a flat parameter buffer. Its state is flat too (two moment buffers of the
/// parameters' layout and a step count), so a checkpoint stores it as three tensors.
public final class AdamOptimizer: @unchecked Sendable {
    public let configuration: AdamConfiguration
    public let firstMoment: Tensor
    public let secondMoment: Tensor
    public private(set) var step = 0

    public init(parameterCount: Int, configuration: AdamConfiguration = AdamConfiguration()) {
        self.configuration = configuration
        firstMoment = Tensor(shape: [parameterCount])
        secondMoment = Tensor(shape: [parameterCount])
    }

    /// Restores the state saved by a checkpoint.
    public func restore(step: Int, firstMoment first: [Float], secondMoment second: [Float]) {
        precondition(first.count == firstMoment.count && second.count == secondMoment.count)
        self.step = step
        first.withUnsafeBufferPointer { firstMoment.pointer.update(from: $0.baseAddress!, count: first.count) }
        second.withUnsafeBufferPointer { secondMoment.pointer.update(from: $0.baseAddress!, count: second.count) }
    }

    /// One update of `parameters` from `gradients` at `learningRate`.
    public func update(_ parameters: Tensor, gradients: Tensor, learningRate: Float) {
        precondition(parameters.count == firstMoment.count && gradients.count == firstMoment.count)
        step += 1
        let c = configuration
        let correction1 = 1 - powf(c.beta1, Float(step))
        let correction2 = 1 - powf(c.beta2, Float(step))
        // PyTorch's form: θ -= lr/(1-β1ᵗ) · m / (√v / √(1-β2ᵗ) + ε).
        let stepSize = learningRate / correction1
        let inverseRootCorrection2 = 1 / correction2.squareRoot()
        let coupledDecay = c.decoupledWeightDecay ? 0 : c.weightDecay
        let decoupledFactor = c.decoupledWeightDecay ? 1 - learningRate * c.weightDecay : 1
        let theta = parameters.pointer
        let g = gradients.pointer
        let m = firstMoment.pointer
        let v = secondMoment.pointer
        for index in 0..<parameters.count {
            let gradient = g[index] + coupledDecay * theta[index]
            m[index] = c.beta1 * m[index] + (1 - c.beta1) * gradient
            v[index] = c.beta2 * v[index] + (1 - c.beta2) * gradient * gradient
            let denominator = v[index].squareRoot() * inverseRootCorrection2 + c.epsilon
            theta[index] = theta[index] * decoupledFactor - stepSize * m[index] / denominator
        }
    }
}

/// Scales `gradients` so their global L2 norm is at most `maxNorm` (PyTorch's
/// `clip_grad_norm_`: factor maxNorm / (norm + 1e-6) when the norm exceeds it). Returns the
/// norm before clipping.
@discardableResult
public func clipGlobalNorm(_ gradients: Tensor, maxNorm: Float) -> Float {
    let norm = Float(Kernels.sumOfSquares(gradients.pointer, count: gradients.count).squareRoot())
    let factor = maxNorm / (norm + 1e-6)
    if factor < 1 {
        let g = gradients.pointer
        for index in 0..<gradients.count { g[index] *= factor }
    }
    return norm
}

/// Learning rate per step: linear warm-up from 0, then constant, linear or cosine decay to
/// `finalFraction` of the base rate at `totalSteps`.
public struct LearningRateSchedule: Sendable, Equatable, Codable {
    public enum Decay: String, Sendable, Codable, CaseIterable { case constant, linear, cosine }

    public var baseRate: Float
    public var warmupSteps: Int
    public var totalSteps: Int
    public var decay: Decay
    public var finalFraction: Float

    public init(baseRate: Float, warmupSteps: Int = 0, totalSteps: Int, decay: Decay = .cosine, finalFraction: Float = 0.1) {
        self.baseRate = baseRate
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
        self.decay = decay
        self.finalFraction = finalFraction
    }

    /// Rate for the 0-based `step`.
    public func rate(at step: Int) -> Float {
        if step < warmupSteps { return baseRate * Float(step + 1) / Float(warmupSteps) }
        let span = max(totalSteps - warmupSteps, 1)
        let progress = min(Float(step - warmupSteps) / Float(span), 1)
        let floor = baseRate * finalFraction
        switch decay {
        case .constant: return baseRate
        case .linear: return baseRate - (baseRate - floor) * progress
        case .cosine: return floor + (baseRate - floor) * 0.5 * (1 + cosf(Float.pi * progress))
        }
    }
}
