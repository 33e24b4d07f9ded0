import Checkpoints
import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOHTTPTypes
import Scoring
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The soft limit on open descriptors (`RLIMIT_NOFILE`) of this process, read once at start.
public func descriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
    return Int(clamping: min(limit.rlim_cur, rlim_t(Int32.max)))
}

/// Keeps the open connections under a cap, so that clients can never use up the descriptors
/// the process needs for itself (libdispatch aborts the process when it cannot get one).
///
/// Past the cap, a new connection first makes room by closing the connection that has waited
/// longest for its request to arrive (an idle keep-alive, or a head or body still trickling in):
/// a slow client holds a place only until a faster one needs it, so connection floods cannot
/// lock out good requests. When every connection is busy with a request, the new one is closed.
public final class ConnectionGovernor: Sendable {
    public let cap: Int
    public let descriptorLimit: Int
    let metrics: ServiceMetrics
    let logger: Logger

    private struct Entry {
        let channel: any Channel
        /// Waiting for (or receiving) a request, rather than answering one.
        var waiting: Bool
        /// When the connection became ready for the request it waits for: the oldest goes first.
        var since: UInt64
        var closing = false
    }

    private struct State {
        var entries: [Int: Entry] = [:]
        var nextID = 0
        var closing = 0
        /// Inside an episode at the cap: logged once when it starts and once when it ends.
        var atCap = false
        var evicted = 0
        var refused = 0
    }

    private let state = Mutex(State())

    public init(cap: Int, descriptorLimit: Int, metrics: ServiceMetrics, logger: Logger) {
        self.cap = cap
        self.descriptorLimit = descriptorLimit
        self.metrics = metrics
        self.logger = logger
        metrics.recordConnections(open: 0, cap: cap)
    }

    /// Registers a new connection; nil when it must be closed because the cap is full of busy ones.
    func admit(_ channel: any Channel) -> Int? {
        let now = NIODeadline.now().uptimeNanoseconds
        var victim: (any Channel)? = nil
        var episodeStarted = false
        let id: Int? = state.withLock { state in
            var refuse = false
            if state.entries.count - state.closing >= cap {
                if let (key, _) = state.entries.filter({ $0.value.waiting && !$0.value.closing }).min(by: { $0.value.since < $1.value.since }) {
                    state.entries[key]!.closing = true
                    state.closing += 1
                    victim = state.entries[key]!.channel
                    metrics.recordConnectionShed(evicted: 1, refused: 0)
                } else {
                    refuse = true
                    metrics.recordConnectionShed(evicted: 0, refused: 1)
                }
                if !state.atCap {
                    state.atCap = true
                    episodeStarted = true
                    state.evicted = 0
                    state.refused = 0
                }
                if refuse { state.refused += 1 } else { state.evicted += 1 }
            }
            if refuse { return nil }
            let id = state.nextID
            state.nextID += 1
            state.entries[id] = Entry(channel: channel, waiting: true, since: now)
            metrics.recordConnections(open: state.entries.count, cap: cap)
            return id
        }
        victim?.close(promise: nil)
        if episodeStarted {
            logger.warning("\(cap) connections open, the cap (descriptor limit \(descriptorLimit)): closing the connections that waited longest for their request, or new ones while all are busy; logged again when the count falls to \(cap * 3 / 4)")
        }
        return id
    }

    /// The connection started answering a request (`waiting` false) or is ready for the next.
    func update(_ id: Int, waiting: Bool) {
        let now = NIODeadline.now().uptimeNanoseconds
        state.withLock { state in
            guard state.entries[id] != nil else { return }
            if waiting && !state.entries[id]!.waiting { state.entries[id]!.since = now }
            state.entries[id]!.waiting = waiting
        }
    }

    func remove(_ id: Int) {
        let ended: (evicted: Int, refused: Int)? = state.withLock { state in
            guard let entry = state.entries.removeValue(forKey: id) else { return nil }
            if entry.closing { state.closing -= 1 }
            metrics.recordConnections(open: state.entries.count, cap: cap)
            guard state.atCap, state.entries.count <= cap * 3 / 4 else { return nil }
            state.atCap = false
            return (state.evicted, state.refused)
        }
        if let ended {
            logger.notice("connections back under \(cap * 3 / 4) of the cap of \(cap): \(ended.evicted) waiting connections were closed to make room and \(ended.refused) new ones refused while it was full")
        }
    }
}

/// What every connection is held to before a request reaches the router.
struct GatePolicy: Sendable {
    var token: String?
    var maxBodyBytes: Int
    /// From the moment a connection is ready for a request (accepted, or its previous answer
    /// sent) its head and body must have arrived within this.
    var requestTimeout: TimeAmount
    /// After a refusal, how long the request's remaining bytes are read and dropped before the
    /// close: closing a socket with unread bytes makes the kernel send a reset, which can destroy
    /// the refusal before the client reads it.
    var lingerTimeout: TimeAmount = .seconds(1)
    var lingerBytes = 1 << 20
    var metrics: ServiceMetrics
    var governor: ConnectionGovernor
}

/// Sits between the HTTP decoder and the router on every connection: counts the connection
/// against the cap, answers 401 and 413 from the head alone, and closes a request that has not
/// fully arrived by its deadline. A request is passed on only once its body is complete, so
/// the router never waits on a slow client.
final class RequestGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum Phase { case waiting, receiving, answering, refusing, closed }

    private let policy: GatePolicy
    private var phase = Phase.waiting
    private var id: Int? = nil
    private var admitted = false
    private var held: [HTTPRequestPart] = []
    private var heldBytes = 0
    /// Pipelined parts that arrived while a request was being answered.
    private var queued: [HTTPRequestPart] = []
    private var timer: Scheduled<Void>? = nil
    private var route = "other"
    private var started = ContinuousClock.now
    private var discarded = 0

    init(policy: GatePolicy) {
        self.policy = policy
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { admit(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        admit(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if phase == .receiving {
            // The client left before its request was whole: its mistake, not the server's (nginx's 499).
            policy.metrics.record(route: route, status: ClientError.clientClosedRequest, seconds: seconds(ContinuousClock.now - started))
        }
        finish()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish()
    }

    private func admit(context: ChannelHandlerContext) {
        guard !admitted else { return }
        admitted = true
        guard let id = policy.governor.admit(context.channel) else {
            phase = .closed
            context.close(promise: nil)
            return
        }
        self.id = id
        armDeadline(context: context)
    }

    private func finish() {
        timer?.cancel()
        timer = nil
        phase = .closed
        if let id {
            policy.governor.remove(id)
            self.id = nil
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch phase {
        case .closed:
            return
        case .refusing:
            if case let .body(buffer) = part { discarded += buffer.readableBytes }
            if discarded > policy.lingerBytes { close(context: context) }
        case .answering:
            queued.append(part)
        case .waiting, .receiving:
            receive(part, context: context)
        }
    }

    private func receive(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch part {
        case let .head(request):
            phase = .receiving
            started = .now
            let path = request.path.map { String($0.prefix(while: { $0 != "?" })) } ?? "/"
            route = routeLabel(path)
            if let token = policy.token, !openRoutes.contains(path),
               !bearerTokenMatches(request.headerFields[.authorization], token: token) {
                return refuse(.unauthorized, "missing or wrong bearer token", context: context)
            }
            if let text = request.headerFields[.contentLength], let length = Int(text), length > policy.maxBodyBytes {
                return refuse(.contentTooLarge, "the body is larger than \(policy.maxBodyBytes) bytes (Content-Length: \(length))", context: context)
            }
            held = [part]
            heldBytes = 0
        case let .body(buffer):
            heldBytes += buffer.readableBytes
            // A chunked body has no length up front: counted as it comes.
            guard heldBytes <= policy.maxBodyBytes else {
                return refuse(.contentTooLarge, "the body is larger than \(policy.maxBodyBytes) bytes", context: context)
            }
            held.append(part)
        case .end:
            held.append(part)
            phase = .answering
            timer?.cancel()
            timer = nil
            if let id { policy.governor.update(id, waiting: false) }
            let parts = held
            held = []
            for part in parts { context.fireChannelRead(wrapInboundOut(part)) }
            context.fireChannelReadComplete()
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let isEnd: Bool
        if case .end = unwrapOutboundIn(data) { isEnd = true } else { isEnd = false }
        context.write(data, promise: promise)
        guard isEnd, phase == .answering else { return }
        phase = .waiting
        if let id { policy.governor.update(id, waiting: true) }
        armDeadline(context: context)
        guard !queued.isEmpty else { return }
        // Out of the write call: the next request's parts go up as reads, not from inside a write.
        context.eventLoop.assumeIsolated().execute { [self] in
            while phase == .waiting || phase == .receiving, !queued.isEmpty {
                receive(queued.removeFirst(), context: context)
            }
        }
    }

    private func armDeadline(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: policy.requestTimeout) { [self] in
            timer = nil
            switch phase {
            case .waiting:
                // Nothing (or only part of a head) came: there is no request to answer.
                close(context: context)
            case .receiving:
                policy.metrics.recordRequestTimeout()
                answer(.requestTimeout, "the request did not arrive within \(policy.requestTimeout.nanoseconds / 1_000_000) ms", context: context)
                phase = .refusing
                close(context: context)
            default:
                break
            }
        }
    }

    /// Answers a request the router will never see, then reads and drops what the client still
    /// sends, for a bounded time, before closing.
    private func refuse(_ status: HTTPResponse.Status, _ message: String, context: ChannelHandlerContext) {
        phase = .refusing
        held = []
        queued = []
        discarded = 0
        if let id { policy.governor.update(id, waiting: true) }
        answer(status, message, context: context).whenComplete { [self] _ in
            // The client sees the end of the answer (FIN) while its remaining bytes are drained.
            context.close(mode: .output, promise: nil)
        }
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: policy.lingerTimeout) { [self] in
            timer = nil
            close(context: context)
        }
    }

    @discardableResult
    private func answer(_ status: HTTPResponse.Status, _ message: String, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        policy.metrics.record(route: route, status: status.code, seconds: seconds(ContinuousClock.now - started))
        let body = ByteBuffer(string: "{\"error\":\(jsonString(message))}")
        var fields: HTTPFields = [.contentType: "application/json", .contentLength: String(body.readableBytes), .connection: "close"]
        if status == .unauthorized { fields[.wwwAuthenticate] = "Bearer" }
        context.write(wrapOutboundOut(.head(HTTPResponse(status: status, headerFields: fields))), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: promise)
        return promise.futureResult
    }

    private func close(context: ChannelHandlerContext) {
        guard phase != .closed else { return }
        phase = .closed
        context.close(promise: nil)
    }
}

/// Whether an `Authorization` header carries `token`, compared in time independent of where the
/// first difference is.
func bearerTokenMatches(_ header: String?, token: String) -> Bool {
    guard let header, header.hasPrefix("Bearer ") else { return false }
    let given = Array(header.dropFirst(7).utf8), expected = Array(token.utf8)
    var difference = UInt8(given.count == expected.count ? 0 : 1)
    for index in 0..<expected.count { difference |= expected[index] ^ (index < given.count ? given[index] : 0) }
    return difference == 0
}
