import BitMixing

/// The collectives by number, as agreement checks compare them and watchdogs report them.
public enum CollectiveKind: Int, Sendable, CustomStringConvertible {
    case none = 0, allreduce, allreduceWait, broadcast, scatterv, gatherv, allgather, allgatherv, barrier, alltoallv

    public var description: String {
        switch self {
        case .none: return "no collective"
        case .allreduce: return "allreduce"
        case .allreduceWait: return "wait for non-blocking allreduce"
        case .broadcast: return "broadcast"
        case .scatterv: return "scatterv"
        case .gatherv: return "gatherv"
        case .allgather: return "allgather"
        case .allgatherv: return "allgatherv"
        case .barrier: return "barrier"
        case .alltoallv: return "alltoallv"
        }
    }
}

/// What every rank must agree on for one collective call.
package struct CallSignature {
    package var typeCode: Int64 = 0
    package var count: Int64 = 0
    package var root: Int64 = -1
    package var operation: Int64 = -1
    /// FNV-1a over a per-rank count table, so v-collectives compare whole tables cheaply.
    package var countsDigest: Int64 = 0

    package init() {}

    package init<T: CollectiveScalar>(_: T.Type, count: Int, root: Int = -1, op: ReduceOperation? = nil) {
        typeCode = T.typeCode
        self.count = Int64(count)
        self.root = Int64(root)
        if let op { operation = Int64(ReduceOperation.allCases.firstIndex(of: op)!) }
    }

    package init<T: CollectiveScalar>(_: T.Type, counts: [Int], root: Int = -1) {
        typeCode = T.typeCode
        count = Int64(counts.reduce(0, +))
        self.root = Int64(root)
        var hash = FNV1a()
        for value in counts { hash.combine(word: UInt64(bitPattern: Int64(value))) }
        countsDigest = Int64(bitPattern: hash.value >> 1)
    }

    package func fields(kind: CollectiveKind) -> [Int64] {
        [Int64(kind.rawValue), typeCode, count, root, operation, countsDigest]
    }

    private static let fieldNames = ["collective", "element type", "count", "root", "reduction", "count table"]

    /// Names, for each field the ranks disagree on, which ranks hold which value.
    package static func describe(_ perRank: [[Int64]]) -> String {
        var parts: [String] = []
        for field in fieldNames.indices {
            var ranksByValue: [Int64: [Int]] = [:]
            for (rank, fields) in perRank.enumerated() { ranksByValue[fields[field], default: []].append(rank) }
            guard ranksByValue.count > 1 else { continue }
            let groups = ranksByValue.sorted { $0.value[0] < $1.value[0] }.map { value, ranks in
                "ranks \(ranks.map(String.init).joined(separator: ",")): \(render(field: field, value))"
            }
            parts.append("\(fieldNames[field]) differs (\(groups.joined(separator: "; ")))")
        }
        return parts.joined(separator: "; ")
    }

    private static func render(field: Int, _ value: Int64) -> String {
        switch field {
        case 0: return CollectiveKind(rawValue: Int(value))?.description ?? "\(value)"
        case 1: return ["none", "Float", "Double", "Int32", "Int64", "UInt8"][Int(value)]
        case 4: return value < 0 ? "none" : ReduceOperation.allCases[Int(value)].rawValue
        case 5: return String(value, radix: 16)
        default: return "\(value)"
        }
    }
}
