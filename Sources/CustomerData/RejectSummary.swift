/// The rejected rows of a read grouped by reason, with the first rows of each: what a failed
/// import and `clm-data inspect` print, so that the person at the terminal sees why without
/// opening `rejects.csv`.
public struct RejectSummary: Sendable, Equatable {
    /// One reason and the rows rejected for it.
    public struct Reason: Sendable, Equatable {
        /// The reason with the offending values left out (`unparsable timestamp (format iso)`),
        /// so that a million bad timestamps count as one reason and not a million.
        public var kind: String
        public var count: Int
        /// The first rows rejected for it, in file order.
        public var examples: [Example]
    }

    public struct Example: Sendable, Equatable {
        public var line: Int
        /// The full reason, with the offending value.
        public var reason: String
        /// The line as read, cut at `RejectTally.shownBytes`.
        public var content: String
    }

    /// Most frequent first; equal counts in the order of their first row.
    public var reasons: [Reason]

    public init(reasons: [Reason] = []) { self.reasons = reasons }

    public var rejectedRows: Int { reasons.reduce(0) { $0 + $1.count } }

    /// The `reasons` most frequent reasons with their counts and up to `examples` rows each,
    /// one line per reason and per row, indented by `indent`.
    public func lines(reasons limit: Int = 5, examples: Int = 1, indent: String = "  ") -> [String] {
        var lines: [String] = []
        for reason in reasons.prefix(limit) {
            lines.append("\(indent)\(reason.count) row\(reason.count == 1 ? "" : "s"): \(reason.kind)")
            for example in reason.examples.prefix(examples) {
                lines.append("\(indent)    line \(example.line): \(example.content)    (\(example.reason))")
            }
        }
        if reasons.count > limit {
            let rest = reasons.dropFirst(limit)
            let rows = rest.reduce(0) { $0 + $1.count }
            lines.append("\(indent)\(rows) more row\(rows == 1 ? "" : "s") for \(rest.count) other reason\(rest.count == 1 ? "" : "s")")
        }
        return lines
    }

    static func ordered(_ reasons: [Reason]) -> [Reason] {
        reasons.sorted {
            $0.count != $1.count ? $0.count > $1.count : ($0.examples.first?.line ?? 0) < ($1.examples.first?.line ?? 0)
        }
    }

    /// The reason with every quoted value (`'...'`) left out: `unparsable timestamp '2024-13-01'
    /// (format iso)` becomes `unparsable timestamp (format iso)`.
    static func kind(of reason: String) -> String {
        var kind = ""
        var quoted = false
        for character in reason {
            if character == "'" {
                quoted.toggle()
                continue
            }
            if !quoted { kind.append(character) }
        }
        // A lone apostrophe (an id in the reason holding one) leaves the rest quoted: keep the reason.
        if quoted { return reason }
        return kind.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }
}

/// Counts rejected rows by reason and keeps the first few of each (`RejectSummary`).
public final class RejectTally: RejectSink {
    public static let defaultExamples = 3
    /// Bytes of a rejected line kept for display: enough to recognise the row.
    static let shownBytes = 200

    let examplesPerReason: Int
    private var reasons: [RejectSummary.Reason] = []
    private var indexOfKind: [String: Int] = [:]

    public init(examplesPerReason: Int = RejectTally.defaultExamples) {
        self.examplesPerReason = examplesPerReason
    }

    func add(line: Int, reason: String, content: UnsafeRawBufferPointer) {
        let kind = RejectSummary.kind(of: reason)
        let index: Int
        if let known = indexOfKind[kind] {
            index = known
        } else {
            index = reasons.count
            indexOfKind[kind] = index
            reasons.append(RejectSummary.Reason(kind: kind, count: 0, examples: []))
        }
        reasons[index].count += 1
        if reasons[index].examples.count < examplesPerReason {
            let shown = String(decoding: UnsafeRawBufferPointer(rebasing: content.prefix(Self.shownBytes)), as: UTF8.self)
            reasons[index].examples.append(RejectSummary.Example(
                line: line, reason: reason, content: shown + (content.count > Self.shownBytes ? "…" : "")))
        }
    }

    public var summary: RejectSummary { RejectSummary(reasons: RejectSummary.ordered(reasons)) }
}
