/// A float32 buffer with a shape, owning its memory.
///
/// A class, not an array: layers keep pointers into tensors across calls, and the training
/// step must neither copy nor reallocate them (no copy-on-write, no bounds checks in kernels).
public final class Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    public private(set) var capacity: Int
    public private(set) var pointer: UnsafeMutablePointer<Float>
    /// Kept with the shape: kernels ask for it every step, and the product over `shape` made
    /// debug builds allocate a closure context each time.
    public private(set) var count: Int

    /// Floats allocated past `capacity`: a 16-lane kernel may load, and store back unchanged,
    /// a whole vector that starts at the last row's tail (`CTrainingKernels`).
    public static let vectorSlack = 16

    public init(shape: [Int]) {
        self.shape = shape
        count = shape.reduce(1, *)
        capacity = max(1, count)
        pointer = Self.allocate(capacity)
    }

    /// 64-byte alignment: whole cache lines and aligned vector loads for every row start.
    private static func allocate(_ capacity: Int) -> UnsafeMutablePointer<Float> {
        let pointer = UnsafeMutableRawPointer.allocate(
            byteCount: (capacity + vectorSlack) * MemoryLayout<Float>.stride, alignment: 64
        ).bindMemory(to: Float.self, capacity: capacity + vectorSlack)
        pointer.initialize(repeating: 0, count: capacity + vectorSlack)
        return pointer
    }

    public convenience init(shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *), "\(values.count) values for shape \(shape)")
        self.init(shape: shape)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { pointer.deallocate() }

    /// Changes the shape, growing the storage only when the new shape needs more; the training
    /// loop calls this with its largest batch first, so later steps never allocate.
    public func reshape(_ newShape: [Int]) {
        let needed = newShape.reduce(1, *)
        reserve(needed)
        shape = newShape
        count = needed
    }

    /// `reshape([rows, columns])` without building an array: hot paths reshape every step, and
    /// an array literal is a heap allocation each time.
    public func reshape(_ rows: Int, _ columns: Int) {
        reserve(rows * columns)
        if shape.count == 2 {
            shape[0] = rows
            shape[1] = columns
        } else {
            shape = [rows, columns]
        }
        count = rows * columns
    }

    /// `reshape([d0, d1, d2])` without building an array (see the two-dimensional form).
    public func reshape(_ d0: Int, _ d1: Int, _ d2: Int) {
        reserve(d0 * d1 * d2)
        if shape.count == 3 {
            shape[0] = d0
            shape[1] = d1
            shape[2] = d2
        } else {
            shape = [d0, d1, d2]
        }
        count = d0 * d1 * d2
    }

    /// `reshape([count])` without building an array (see the two-dimensional form).
    public func reshape(_ count: Int) {
        reserve(count)
        if shape.count == 1 { shape[0] = count } else { shape = [count] }
        self.count = count
    }

    private func reserve(_ needed: Int) {
        if needed > capacity {
            pointer.deallocate()
            capacity = needed
            pointer = Self.allocate(capacity)
        }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    public func zero() { pointer.update(repeating: 0, count: count) }

    public var array: [Float] { Array(buffer) }

    public subscript(index: Int) -> Float {
        get { pointer[index] }
        set { pointer[index] = newValue }
    }
}
