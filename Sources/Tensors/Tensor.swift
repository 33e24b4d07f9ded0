/// A float32 buffer with a shape, owning its memory.
///
/// A class, not an array: layers keep pointers into tensors across calls, and the training
/// step must neither copy nor reallocate them (no copy-on-write, no bounds checks in kernels).
public final class Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    public private(set) var capacity: Int
    public private(set) var pointer: UnsafeMutablePointer<Float>

    public var count: Int { shape.reduce(1, *) }

    public init(shape: [Int]) {
        self.shape = shape
        capacity = max(1, shape.reduce(1, *))
        // 64-byte alignment: whole cache lines and aligned vector loads for every row start.
        pointer = UnsafeMutableRawPointer.allocate(
            byteCount: capacity * MemoryLayout<Float>.stride, alignment: 64
        ).bindMemory(to: Float.self, capacity: capacity)
        pointer.initialize(repeating: 0, count: capacity)
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
        if needed > capacity {
            pointer.deallocate()
            capacity = needed
            pointer = UnsafeMutableRawPointer.allocate(
                byteCount: capacity * MemoryLayout<Float>.stride, alignment: 64
            ).bindMemory(to: Float.self, capacity: capacity)
            pointer.initialize(repeating: 0, count: capacity)
        }
        shape = newShape
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    public func zero() { pointer.update(repeating: 0, count: count) }

    public var array: [Float] { Array(buffer) }

    public subscript(index: Int) -> Float {
        get { pointer[index] }
        set { pointer[index] = newValue }
    }
}
