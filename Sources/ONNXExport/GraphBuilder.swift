import Foundation

/// Assembles an ONNX graph node by node: every intermediate value gets a unique name, every
/// constant becomes an initializer, so the exporters read as the forward pass they describe.
struct GraphBuilder {
    private(set) var nodes: [Onnx_NodeProto] = []
    private(set) var initializers: [Onnx_TensorProto] = []
    private var usedNames: Set<String> = []

    /// A name not used yet, from `stem`.
    mutating func freshName(_ stem: String) -> String {
        var name = stem, suffix = 1
        while usedNames.contains(name) {
            suffix += 1
            name = "\(stem)_\(suffix)"
        }
        usedNames.insert(name)
        return name
    }

    /// Reserves the graph's input and output names, so intermediate values never take them.
    mutating func reserve(_ name: String) {
        usedNames.insert(name)
    }

    /// A float32 initializer of `shape`, stored little-endian in `raw_data`.
    @discardableResult
    mutating func constant(_ stem: String, _ values: [Float], shape: [Int]) -> String {
        initializer(stem, .float, count: values.count, shape: shape) {
            $0.rawData = values.map(\.bitPattern.littleEndian).withUnsafeBytes { Data($0) }
        }
    }

    /// An int64 initializer (axes): ONNX takes these as tensors since opset 13.
    @discardableResult
    mutating func constant(_ stem: String, int64 values: [Int64], shape: [Int]) -> String {
        initializer(stem, .int64, count: values.count, shape: shape) { $0.int64Data = values }
    }

    /// An int32 initializer (the period positions compared with the lengths).
    @discardableResult
    mutating func constant(_ stem: String, int32 values: [Int32], shape: [Int]) -> String {
        initializer(stem, .int32, count: values.count, shape: shape) { $0.int32Data = values }
    }

    private mutating func initializer(
        _ stem: String, _ type: Onnx_TensorProto.DataType, count: Int, shape: [Int], values: (inout Onnx_TensorProto) -> Void
    ) -> String {
        precondition(count == shape.reduce(1, *), "\(stem): \(count) values for shape \(shape)")
        var tensor = Onnx_TensorProto()
        tensor.name = freshName(stem)
        tensor.dataType = Int32(type.rawValue)
        tensor.dims = shape.map(Int64.init)
        values(&tensor)
        initializers.append(tensor)
        return tensor.name
    }

    /// Appends one node and returns the names of its outputs. An empty input name leaves an
    /// optional input out, as ONNX specifies; `outputs` names them, or fresh names are made.
    @discardableResult
    mutating func node(
        _ operation: String, _ inputs: [String], outputs: [String]? = nil, outputCount: Int = 1,
        attributes: [Onnx_AttributeProto] = []
    ) -> [String] {
        var node = Onnx_NodeProto()
        node.opType = operation
        node.name = freshName("\(operation.lowercased())")
        node.input = inputs
        node.output = outputs ?? (0..<outputCount).map { _ in freshName("\(operation.lowercased())_out") }
        node.attribute = attributes
        nodes.append(node)
        return node.output
    }

    /// `node` for the common case of one output.
    mutating func apply(_ operation: String, _ inputs: String..., output: String? = nil, attributes: [Onnx_AttributeProto] = []) -> String {
        node(operation, inputs, outputs: output.map { [$0] }, attributes: attributes)[0]
    }
}

extension Onnx_AttributeProto {
    static func int(_ name: String, _ value: Int) -> Onnx_AttributeProto {
        var attribute = Onnx_AttributeProto()
        attribute.name = name
        attribute.type = .int
        attribute.i = Int64(value)
        return attribute
    }

    static func ints(_ name: String, _ values: [Int]) -> Onnx_AttributeProto {
        var attribute = Onnx_AttributeProto()
        attribute.name = name
        attribute.type = .ints
        attribute.ints = values.map(Int64.init)
        return attribute
    }

    static func string(_ name: String, _ value: String) -> Onnx_AttributeProto {
        var attribute = Onnx_AttributeProto()
        attribute.name = name
        attribute.type = .string
        attribute.s = Data(value.utf8)
        return attribute
    }
}

extension Onnx_ValueInfoProto {
    /// A tensor value of `elementType` whose dimensions are sizes or symbolic names.
    static func tensor(_ name: String, _ elementType: Onnx_TensorProto.DataType, _ dimensions: [TensorDimension], documentation: String) -> Onnx_ValueInfoProto {
        var info = Onnx_ValueInfoProto()
        info.name = name
        info.docString = documentation
        var tensorType = Onnx_TypeProto.Tensor()
        tensorType.elemType = Int32(elementType.rawValue)
        tensorType.shape.dim = dimensions.map { dimension in
            var dim = Onnx_TensorShapeProto.Dimension()
            switch dimension {
            case let .size(size): dim.dimValue = Int64(size)
            case let .named(name): dim.dimParam = name
            }
            return dim
        }
        info.type.tensorType = tensorType
        return info
    }
}

enum TensorDimension {
    case size(Int)
    case named(String)
}
