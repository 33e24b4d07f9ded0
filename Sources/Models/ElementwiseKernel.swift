import CForwardKernels

/// The instruction set of the LSTM's per-step element-wise kernels in training.
public enum ElementwiseKernel: Int32, Sendable, CaseIterable {
    /// Swift's loops, compiled for baseline x86-64 (4-wide SSE) or the host's vectors elsewhere.
    case portable = 0
    /// `CTrainingKernels` built for AVX2 with FMA.
    case avx2 = 1
    /// `CTrainingKernels` built for AVX-512.
    case avx512 = 2

    /// The widest this CPU and its operating system run (asked once).
    public static let best = ElementwiseKernel(rawValue: Int32(clm_lstm_best_kernel())) ?? .portable

    /// The kernels this machine can run, `portable` first.
    public static var available: [ElementwiseKernel] { allCases.filter { $0.rawValue <= best.rawValue } }
}
