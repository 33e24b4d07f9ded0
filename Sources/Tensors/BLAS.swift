import CBLAS

/// Matrix products through OpenBLAS. All matrices are row-major.
public enum BLAS {
    /// Pins OpenBLAS to `count` threads. Training runs one rank per core, so each rank asks
    /// for one thread; OpenBLAS's default of one thread per core would oversubscribe the machine.
    public static func setThreadCount(_ count: Int) {
        openblas_set_num_threads(Int32(count))
    }

    /// `C = alpha · op(A) · op(B) + beta · C` with `op(X)` = X or Xᵀ.
    ///
    /// `C` is m×n; `op(A)` is m×k and `op(B)` is k×n. Leading dimensions are the row strides of
    /// the matrices as stored (before transposition).
    @inline(__always)
    public static func gemm(
        transposeA: Bool = false, transposeB: Bool = false,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0 && n > 0 else { return }
        cblas_sgemm(
            CblasRowMajor,
            transposeA ? CblasTrans : CblasNoTrans,
            transposeB ? CblasTrans : CblasNoTrans,
            blasint(m), blasint(n), blasint(k),
            alpha, a, blasint(lda), b, blasint(ldb),
            beta, c, blasint(ldc))
    }

    /// `y = alpha · A · x + beta · y` with A m×n row-major (row stride `lda`) and x, y read and
    /// written every `incx` / `incy` elements: a column of a feature-major buffer.
    @inline(__always)
    public static func gemv(
        m: Int, n: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, incx: Int, beta: Float = 0, y: UnsafeMutablePointer<Float>, incy: Int
    ) {
        guard m > 0 && n > 0 else { return }
        cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(m), blasint(n), alpha, a, blasint(lda),
                    x, blasint(incx), beta, y, blasint(incy))
    }
}
