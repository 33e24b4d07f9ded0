import CMPI
import Collectives

extension CollectiveScalar {
    /// The MPI datatype of this element type, by its type code.
    static var mpiDatatype: MPI_Datatype {
        switch typeCode {
        case Float.typeCode: return cmpi_float()
        case Double.typeCode: return cmpi_double()
        case Int32.typeCode: return cmpi_int32()
        case Int64.typeCode: return cmpi_int64()
        case UInt8.typeCode: return cmpi_uint8()
        default: preconditionFailure("no MPI datatype for collective type code \(typeCode)")
        }
    }
}

extension ReduceOperation {
    var mpiOp: MPI_Op {
        switch self {
        case .sum: return cmpi_op_sum()
        case .max: return cmpi_op_max()
        case .min: return cmpi_op_min()
        }
    }
}
