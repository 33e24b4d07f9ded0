import Foundation
import Testing
@testable import Models
import Tensors

@Suite struct OptimizerTests {
    @Test func adamsFirstStepMovesEachParameterByTheLearningRateAgainstItsGradient() {
        // Step 1: m̂ = g and v̂ = g², so the update is lr·g/(|g| + ε) = lr·sign(g).
        let parameters = Tensor(shape: [3], values: [1, -2, 0.5])
        let gradients = Tensor(shape: [3], values: [0.5, -3, 1e-3])
        let adam = AdamOptimizer(parameterCount: 3)
        adam.update(parameters, gradients: gradients, learningRate: 0.1)
        #expect(abs(parameters[0] - 0.9) < 1e-6)
        #expect(abs(parameters[1] - -1.9) < 1e-6)
        #expect(abs(parameters[2] - 0.4) < 1e-4)
        #expect(adam.step == 1)
    }

    @Test func adamsSecondStepByHand() {
        // g1 = 1, g2 = -1, β = (0.9, 0.999), lr = 0.1:
        // m2 = 0.9·0.1 − 0.1 = −0.01, v2 = 0.999·0.001 + 0.001 = 0.001999,
        // m̂ = −0.01/0.19 = −0.0526316, v̂ = 0.001999/0.001999 = 1 → θ = 0.9 + 0.00526316.
        let parameters = Tensor(shape: [1], values: [1])
        let adam = AdamOptimizer(parameterCount: 1)
        adam.update(parameters, gradients: Tensor(shape: [1], values: [1]), learningRate: 0.1)
        adam.update(parameters, gradients: Tensor(shape: [1], values: [-1]), learningRate: 0.1)
        #expect(abs(parameters[0] - 0.905263) < 1e-5, "got \(parameters[0])")
    }

    @Test func adamWDecaysWeightsOutsideTheMomentsAndAdamInsideThem() {
        let decoupled = Tensor(shape: [1], values: [1])
        AdamOptimizer(parameterCount: 1, configuration: AdamConfiguration(weightDecay: 0.1, decoupledWeightDecay: true))
            .update(decoupled, gradients: Tensor(shape: [1], values: [0.5]), learningRate: 0.1)
        // θ·(1 − lr·wd) − lr·sign(g) = 0.99 − 0.1
        #expect(abs(decoupled[0] - 0.89) < 1e-6)
        let coupled = Tensor(shape: [1], values: [1])
        AdamOptimizer(parameterCount: 1, configuration: AdamConfiguration(weightDecay: 0.1))
            .update(coupled, gradients: Tensor(shape: [1], values: [0.5]), learningRate: 0.1)
        // Decay joins the gradient (0.6), and the first step is still lr·sign.
        #expect(abs(coupled[0] - 0.9) < 1e-6)
    }

    @Test func clippingScalesToTheMaximumNormAndLeavesSmallGradientsAlone() {
        let large = Tensor(shape: [2], values: [3, 4])
        let norm = clipGlobalNorm(large, maxNorm: 1)
        #expect(abs(norm - 5) < 1e-6)
        #expect(abs(large[0] - 0.6) < 1e-5 && abs(large[1] - 0.8) < 1e-5)
        let small = Tensor(shape: [2], values: [0.3, 0.4])
        clipGlobalNorm(small, maxNorm: 1)
        #expect(small.array == [0.3, 0.4])
    }

    @Test func scheduleWarmsUpLinearlyThenDecaysToItsFloor() {
        let schedule = LearningRateSchedule(baseRate: 1, warmupSteps: 4, totalSteps: 14, decay: .cosine, finalFraction: 0.1)
        #expect(schedule.rate(at: 0) == 0.25)
        #expect(schedule.rate(at: 3) == 1)
        #expect(abs(schedule.rate(at: 4) - 1) < 1e-6)
        #expect(abs(schedule.rate(at: 9) - 0.55) < 1e-6)
        #expect(abs(schedule.rate(at: 14) - 0.1) < 1e-6)
        #expect(abs(schedule.rate(at: 100) - 0.1) < 1e-6)
        let linear = LearningRateSchedule(baseRate: 2, totalSteps: 10, decay: .linear, finalFraction: 0)
        #expect(abs(linear.rate(at: 5) - 1) < 1e-6)
    }
}

@Suite struct RandomAndKernelTests {
    @Test func streamsDependOnlyOnTheirKey() {
        var first = SeededRandom(seed: 7, purpose: .dropout, epoch: 2, step: 30, rank: 1)
        var again = SeededRandom(seed: 7, purpose: .dropout, epoch: 2, step: 30, rank: 1)
        let a = (0..<8).map { _ in first.next() }
        #expect(a == (0..<8).map { _ in again.next() })
        for other in [
            SeededRandom(seed: 8, purpose: .dropout, epoch: 2, step: 30, rank: 1),
            SeededRandom(seed: 7, purpose: .shuffle, epoch: 2, step: 30, rank: 1),
            SeededRandom(seed: 7, purpose: .dropout, epoch: 3, step: 30, rank: 1),
            SeededRandom(seed: 7, purpose: .dropout, epoch: 2, step: 31, rank: 1),
            SeededRandom(seed: 7, purpose: .dropout, epoch: 2, step: 30, rank: 0),
        ] {
            var stream = other
            #expect((0..<8).map { _ in stream.next() } != a)
        }
        // A generator restored from its saved state continues the same stream.
        var original = SeededRandom(seed: 1, purpose: .shuffle)
        _ = original.next()
        var restored = SeededRandom(state: original.state)
        #expect(original.next() == restored.next())
    }

    @Test func uniformFloatsAndIndicesCoverTheirRangeEvenly() {
        var random = SeededRandom(seed: 3, purpose: .synthesis)
        var buckets = [Int](repeating: 0, count: 10)
        for _ in 0..<100_000 {
            let value = random.nextUnitFloat()
            #expect(value >= 0 && value < 1)
            buckets[Int(value * 10)] += 1
        }
        // Each bucket expects 10,000 ± 95 (one standard deviation); 5σ bounds.
        #expect(buckets.allSatisfy { abs($0 - 10_000) < 475 }, "\(buckets)")
        var counts = [Int](repeating: 0, count: 7)
        for _ in 0..<70_000 { counts[random.nextIndex(below: 7)] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 475 }, "\(counts)")
    }

    @Test func shuffleIsAPermutationAndReproducible() {
        var a = Array(0..<100)
        var b = Array(0..<100)
        var first = SeededRandom(seed: 5, purpose: .shuffle, epoch: 1)
        var second = SeededRandom(seed: 5, purpose: .shuffle, epoch: 1)
        first.shuffle(&a)
        second.shuffle(&b)
        #expect(a == b)
        #expect(a != Array(0..<100))
        #expect(a.sorted() == Array(0..<100))
    }

    @Test func gemmAgreesWithADirectProductForEveryTransposition() {
        var random = SeededRandom(seed: 2, purpose: .synthesis)
        let (m, n, k) = (5, 4, 3)
        let a = (0..<m * k).map { _ in random.nextFloat(in: -1, 1) }   // [m, k]
        let b = (0..<k * n).map { _ in random.nextFloat(in: -1, 1) }   // [k, n]
        var expected = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for p in 0..<k { expected[i * n + j] += a[i * k + p] * b[p * n + j] } } }
        let aT = (0..<k * m).map { a[($0 % m) * k + $0 / m] }            // [k, m]
        let bT = (0..<n * k).map { b[($0 % k) * n + $0 / k] }            // [n, k]
        for (transposeA, transposeB) in [(false, false), (true, false), (false, true), (true, true)] {
            var c = [Float](repeating: 0, count: m * n)
            let left = transposeA ? aT : a
            let right = transposeB ? bT : b
            BLAS.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                      a: left, lda: transposeA ? m : k, b: right, ldb: transposeB ? k : n, c: &c, ldc: n)
            #expect(zip(c, expected).allSatisfy { abs($0 - $1) < 1e-5 }, "transposeA \(transposeA) transposeB \(transposeB)")
        }
    }

    @Test("reluBackward zeroes the gradient exactly where the output is not positive, tails included",
          arguments: [0, 1, 7, 8, 9, 23, 64])
    func reluBackwardMatchesItsDefinition(count: Int) {
        var random = SeededRandom(seed: 9, purpose: .synthesis)
        // Outputs are ReLU outputs: about half exactly zero, as in a trained layer.
        let output = (0..<count).map { _ in max(random.nextFloat(in: -1, 1), 0) }
        let original = (0..<count).map { _ in random.nextFloat(in: -1, 1) }
        var gradient = original
        Kernels.reluBackward(&gradient, output: output, count: count)
        #expect(gradient == zip(original, output).map { $1 > 0 ? $0 : 0 })
    }

    @Test func activationsAreStableAtTheExtremes() {
        #expect(Kernels.sigmoid(-100) >= 0 && Kernels.sigmoid(-100) < 1e-30)
        #expect(Kernels.sigmoid(100) == 1)
        #expect(abs(Kernels.softplus(50) - 50) < 1e-5)
        #expect(Kernels.softplus(-50) > 0 && Kernels.softplus(-50) < 1e-20)
        #expect(Kernels.softplus(0) == logf(2))
    }
}

@Suite struct LearningTests {
    /// The LSTM must learn a rule that needs memory: churn when the customer was inactive in
    /// the last two of their steps. Loss has to fall well below the 0.69 of guessing.
    @Test func lstmLearnsARecencyRule() {
        let (batchSize, steps) = (32, 8)
        let model = LSTMModel(configuration: LSTMConfiguration(inputSize: 1, hiddenSize: 8, layers: 2, dropout: 0, clvWeight: 0, clvLoss: .logMSE), seed: 4)
        let adam = AdamOptimizer(parameterCount: model.parameters.layout.totalCount)
        var data = SeededRandom(seed: 9, purpose: .synthesis)
        var losses: [Float] = []
        for step in 0..<300 {
            var x = [Float](repeating: 0, count: batchSize * steps)
            var lengths = [Int32](repeating: 0, count: batchSize)
            var labels = [Float](repeating: 0, count: batchSize)
            for b in 0..<batchSize {
                let length = 3 + data.nextIndex(below: steps - 2)
                lengths[b] = Int32(length)
                for t in 0..<length { x[b * steps + t] = data.nextUnitFloat() < 0.5 ? 1 : 0 }
                labels[b] = x[b * steps + length - 1] == 0 && x[b * steps + length - 2] == 0 ? 1 : 0
            }
            let spend = [Float](repeating: 0, count: batchSize)
            var masks = SeededRandom(seed: 1, purpose: .dropout, step: step)
            let loss = SequenceBatch.withLabelled(features: x, lengths: lengths, churnLabels: labels, spend: spend, steps: steps) { batch in
                model.parameters.zeroGradients()
                return model.trainingStep(batch, random: &masks)
            }
            adam.update(model.parameters.values, gradients: model.parameters.gradients, learningRate: 0.02)
            losses.append(loss.churn)
        }
        let late = losses.suffix(30).reduce(0, +) / 30
        #expect(late < 0.2, "mean churn loss over the last 30 steps is \(late)")
    }
}

@Suite struct FastActivationTests {
    /// The vectorisable exp, sigmoid and tanh stand in for libm in every LSTM step; they must
    /// agree with it to a few float ulps over the whole range the gates see.
    @Test func fastActivationsAgreeWithLibm() {
        var worstExp: Float = 0, worstSigmoid: Float = 0, worstTanh: Float = 0
        var x: Float = -40
        while x <= 40 {
            worstExp = max(worstExp, abs(Kernels.exp(x) - expf(x)) / expf(x))
            let reference = 1 / (1 + expf(-x))
            worstSigmoid = max(worstSigmoid, abs(Kernels.sigmoid(x) - reference) / reference)
            worstTanh = max(worstTanh, abs(Kernels.tanh(x) - tanhf(x)) / max(abs(tanhf(x)), 1e-3))
            x += 0.0007
        }
        #expect(worstExp < 5e-7, "exp: worst relative error \(worstExp)")
        #expect(worstSigmoid < 5e-7, "sigmoid: worst relative error \(worstSigmoid)")
        #expect(worstTanh < 1e-6, "tanh: worst error \(worstTanh)")
        #expect(Kernels.exp(-200) >= 0 && Kernels.exp(-200) < 1e-37)
        #expect(Kernels.exp(200).isFinite)
        #expect(Kernels.tanh(-0.01) < 0 && Kernels.tanh(0) == 0)
    }
}
