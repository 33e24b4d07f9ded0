/// `text` as one CSV field (RFC 4180): quoted, with quotes doubled, when it holds a delimiter,
/// a quote or a line break, or always with `alwaysQuoted` (the rejects file quotes every
/// reason and line, whatever bytes a rejected line holds).
public func csvField(_ text: String, alwaysQuoted: Bool = false) -> String {
    // Scalars, not Characters: "\r\n" is one Character equal to neither "\r" nor "\n".
    guard alwaysQuoted || text.unicodeScalars.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
    var quoted = "\""
    quoted.reserveCapacity(text.utf8.count + 2)
    for character in text {
        if character == "\"" { quoted += "\"\"" } else { quoted.append(character) }
    }
    return quoted + "\""
}
