/// Element types the collectives move. Each has a type code that names it identically in every
/// process; an MPI implementation maps the code to its datatype.
///
/// `UInt8` is the raw-byte type: reductions on it are element-wise on unsigned bytes.
public protocol CollectiveScalar: Sendable {
    /// A number naming the type identically in every process (metadata addresses are not).
    static var typeCode: Int64 { get }
    /// Reduces `rhs` into `lhs`; used by the single-process communicator and by tests.
    static func combine(_ lhs: Self, _ rhs: Self, _ op: ReduceOperation) -> Self
}

/// The reductions the cluster uses. Gradient averaging is `sum` followed by a scale.
public enum ReduceOperation: String, Sendable, CaseIterable {
    case sum, max, min
}

extension CollectiveScalar where Self: Comparable & AdditiveArithmetic {
    @inline(__always)
    public static func combine(_ lhs: Self, _ rhs: Self, _ op: ReduceOperation) -> Self {
        switch op {
        case .sum: return lhs + rhs
        case .max: return Swift.max(lhs, rhs)
        case .min: return Swift.min(lhs, rhs)
        }
    }
}

extension Float: CollectiveScalar {
    public static var typeCode: Int64 { 1 } }
extension Double: CollectiveScalar {
    public static var typeCode: Int64 { 2 } }
extension Int32: CollectiveScalar {
    public static var typeCode: Int64 { 3 }
    public static func combine(_ lhs: Int32, _ rhs: Int32, _ op: ReduceOperation) -> Int32 {
        // MPI sums integers modulo 2^32 rather than trapping; match it.
        switch op {
        case .sum: return lhs &+ rhs
        case .max: return Swift.max(lhs, rhs)
        case .min: return Swift.min(lhs, rhs)
        }
    }
}
extension Int64: CollectiveScalar {
    public static var typeCode: Int64 { 4 }
    public static func combine(_ lhs: Int64, _ rhs: Int64, _ op: ReduceOperation) -> Int64 {
        switch op {
        case .sum: return lhs &+ rhs
        case .max: return Swift.max(lhs, rhs)
        case .min: return Swift.min(lhs, rhs)
        }
    }
}
extension UInt8: CollectiveScalar {
    public static var typeCode: Int64 { 5 }
    public static func combine(_ lhs: UInt8, _ rhs: UInt8, _ op: ReduceOperation) -> UInt8 {
        switch op {
        case .sum: return lhs &+ rhs
        case .max: return Swift.max(lhs, rhs)
        case .min: return Swift.min(lhs, rhs)
        }
    }
}
