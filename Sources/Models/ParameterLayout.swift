import BitMixing
import Tensors

/// One named parameter inside a model's flat buffer.
public struct ParameterSlice: Sendable, Equatable, Hashable {
    /// PyTorch / PyG name, so the flat buffer can be written as a state dict unchanged.
    public let name: String
    public let shape: [Int]
    /// Offset of the first element in the flat buffer.
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// The table of named slices that views a model's one contiguous parameter buffer.
///
/// Gradients and optimizer moments use the same layout, so the optimizer is one loop, the
/// gradient all-reduce is one call and a checkpoint is a list of (name, shape, offset).
public struct ParameterLayout: Sendable, Equatable {
    public private(set) var slices: [ParameterSlice] = []
    public private(set) var totalCount = 0

    public init() {}

    @discardableResult
    public mutating func add(_ name: String, shape: [Int]) -> ParameterSlice {
        precondition(slice(named: name) == nil, "duplicate parameter \(name)")
        let slice = ParameterSlice(name: name, shape: shape, offset: totalCount)
        slices.append(slice)
        totalCount += slice.count
        return slice
    }

    public func slice(named name: String) -> ParameterSlice? {
        slices.first { $0.name == name }
    }

    /// FNV-1a over names, shapes and offsets: equal on two ranks exactly when the layouts are.
    public var fingerprint: UInt64 {
        var hash = FNV1a()
        for slice in slices {
            // Each byte of the name fed as a little-endian word, as the fingerprint always was.
            for byte in slice.name.utf8 { hash.combine(littleEndianBytesOf: UInt64(byte)) }
            for dimension in slice.shape { hash.combine(littleEndianBytesOf: UInt64(dimension)) }
            hash.combine(littleEndianBytesOf: UInt64(slice.offset))
        }
        return hash.value
    }
}

/// A model's parameters and gradients: two flat buffers of one layout.
public final class ParameterStore: @unchecked Sendable {
    public let layout: ParameterLayout
    public let values: Tensor
    public let gradients: Tensor

    public init(layout: ParameterLayout) {
        self.layout = layout
        values = Tensor(shape: [layout.totalCount])
        gradients = Tensor(shape: [layout.totalCount])
    }

    @inline(__always)
    public func value(_ slice: ParameterSlice) -> UnsafeMutablePointer<Float> { values.pointer + slice.offset }

    @inline(__always)
    public func gradient(_ slice: ParameterSlice) -> UnsafeMutablePointer<Float> { gradients.pointer + slice.offset }

    public func zeroGradients() { gradients.zero() }

    /// Fills every slice uniformly in ±bound(slice), as PyTorch's default initialisers do.
    public func initialiseUniform(_ random: inout SeededRandom, bound: (ParameterSlice) -> Float) {
        for slice in layout.slices {
            let limit = bound(slice)
            let base = value(slice)
            for index in 0..<slice.count { base[index] = random.nextFloat(in: -limit, limit) }
        }
    }

    /// Copies named values in (a checkpoint or a fixture); every slice must be present with its count.
    public func load(_ named: [String: [Float]]) throws {
        for slice in layout.slices {
            guard let source = named[slice.name] else { throw ParameterError.missing(slice.name) }
            guard source.count == slice.count else {
                throw ParameterError.wrongCount(slice.name, expected: slice.count, got: source.count)
            }
            source.withUnsafeBufferPointer { value(slice).update(from: $0.baseAddress!, count: slice.count) }
        }
    }

    public func valueArray(_ name: String) -> [Float]? {
        layout.slice(named: name).map { Array(UnsafeBufferPointer(start: value($0), count: $0.count)) }
    }

    public func gradientArray(_ name: String) -> [Float]? {
        layout.slice(named: name).map { Array(UnsafeBufferPointer(start: gradient($0), count: $0.count)) }
    }
}

public enum ParameterError: Error, CustomStringConvertible, Equatable {
    case missing(String)
    case wrongCount(String, expected: Int, got: Int)

    public var description: String {
        switch self {
        case .missing(let name): return "parameter \(name) is missing"
        case .wrongCount(let name, let expected, let got): return "parameter \(name) has \(got) values, expected \(expected)"
        }
    }
}
