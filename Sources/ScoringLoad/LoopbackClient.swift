import Foundation

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// A minimal blocking HTTP/1.1 client over one keep-alive connection, for the load test and
/// the service tests.
///
/// Deliberately small: IPv4 only, `Content-Length` bodies only (what this service sends), no
/// TLS, no redirects. A load generator measuring milliseconds must not add its own.
public final class LoopbackClient {
    public struct Reply: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public enum Failure: Error, CustomStringConvertible {
        case connect(String)
        case io(String)
        case protocolError(String)
        public var description: String {
            switch self {
            case let .connect(message): return "connect: \(message)"
            case let .io(message): return "I/O: \(message)"
            case let .protocolError(message): return "HTTP: \(message)"
            }
        }
    }

    let host: String
    let port: Int
    private var socket: Int32 = -1
    private var buffer = [UInt8]()

    public init(host: String = "127.0.0.1", port: Int) {
        self.host = host
        self.port = port
    }

    deinit { close() }

    public func close() {
        if socket >= 0 { _ = Glibc.close(socket) }
        socket = -1
        buffer.removeAll()
    }

    private func connect() throws {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure.connect(String(cString: strerror(errno))) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr) == 1 else {
            Glibc.close(fd)
            throw Failure.connect("\(host) is not an IPv4 address")
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw Failure.connect("\(host):\(port): \(message)")
        }
        // Small requests must leave at once, not wait for Nagle's timer.
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        socket = fd
    }

    /// Sends one request and reads its reply; reconnects once when the server had closed an idle connection.
    public func send(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:]) throws -> Reply {
        var request = "\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        if let body {
            if headers["Content-Type"] == nil { request += "Content-Type: application/json\r\n" }
            request += "Content-Length: \(body.count)\r\n"
        }
        request += "\r\n"
        var bytes = Array(request.utf8)
        if let body { bytes.append(contentsOf: body) }
        for attempt in 0..<2 {
            if socket < 0 { try connect() }
            do {
                try writeAll(bytes)
                return try readReply()
            } catch Failure.io(let message) where attempt == 0 && buffer.isEmpty {
                _ = message
                close()
            }
        }
        throw Failure.io("the server closed the connection twice")
    }

    private func writeAll(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written < 0 {
                if errno == EINTR { continue }
                throw Failure.io("send: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 { throw Failure.io("recv: \(String(cString: strerror(errno)))") }
            if count == 0 { throw Failure.io("connection closed by the server") }
            buffer.append(contentsOf: chunk[0..<count])
            return
        }
    }

    private func readReply() throws -> Reply {
        var headerEnd: Int? = nil
        while headerEnd == nil {
            if let end = findHeaderEnd() { headerEnd = end } else { try fill() }
        }
        let head = String(decoding: buffer[0..<headerEnd!], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw Failure.protocolError("bad status line in \(head.prefix(80))") }
        var headers: [String: String] = [:]
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let bodyStart = headerEnd! + 4
        var body = Data()
        if let lengthText = headers["content-length"], let length = Int(lengthText) {
            while buffer.count < bodyStart + length { try fill() }
            body = Data(buffer[bodyStart..<bodyStart + length])
            buffer.removeFirst(bodyStart + length)
        } else if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var position = bodyStart
            while true {
                while !hasLine(from: position) { try fill() }
                let lineEnd = lineEndIndex(from: position)!
                let sizeText = String(decoding: buffer[position..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw Failure.protocolError("bad chunk size") }
                position = lineEnd + 2
                while buffer.count < position + size + 2 { try fill() }
                body.append(contentsOf: buffer[position..<position + size])
                position += size + 2
                if size == 0 { break }
            }
            buffer.removeFirst(position)
        } else {
            buffer.removeFirst(bodyStart)
        }
        if headers["connection"]?.lowercased() == "close" { close() }
        return Reply(status: status, headers: headers, body: body)
    }

    private func findHeaderEnd() -> Int? {
        guard buffer.count >= 4 else { return nil }
        for index in 0...(buffer.count - 4) where buffer[index] == 13 && buffer[index + 1] == 10 && buffer[index + 2] == 13 && buffer[index + 3] == 10 {
            return index
        }
        return nil
    }

    private func lineEndIndex(from start: Int) -> Int? {
        guard buffer.count >= start + 2 else { return nil }
        for index in start..<(buffer.count - 1) where buffer[index] == 13 && buffer[index + 1] == 10 { return index }
        return nil
    }

    private func hasLine(from start: Int) -> Bool { lineEndIndex(from: start) != nil }
}
