// Turns each whole request into a `Request`, asks the responder, and writes the answer;
// parks long polls on the event hub without holding a task or a thread.
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import StampCore
import Synchronization

/// A long poll to park: the endpoint has read nothing new after `cursor`.
public struct LongPoll: Sendable {
    public var account: String
    /// The session's token digest: revoking it answers the poll with 401 at once.
    public var session: [UInt8]
    public var cursor: Int64
    /// The hub's epoch when the read (or the hub's check) that found nothing after `cursor` began.
    public var epoch: UInt64
    public var timeout: TimeAmount
    /// Reads again once woken: an answer, or nil when there is still nothing after the cursor.
    public var read: @Sendable () async -> Response?
    /// The answer with the events that directly follow the cursor, handed over by the hub.
    public var fresh: @Sendable ([Event]) -> Response
    /// The answer when the poll ends with nothing new: at its timeout, or at shutdown.
    public var empty: @Sendable (_ shuttingDown: Bool) -> Response
    /// The answer when the hub refuses to park it for a cap (at shutdown it gets `empty(true)`).
    public var refused: @Sendable (ParkOutcome) -> Response
}

final class HTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private struct InFlight {
        let id: String
        let keepAlive: Bool
        let isHead: Bool
        let version: HTTPVersion
        let started: UInt64
        var route: String
    }

    private struct Parked {
        let waiter: WaiterID
        let timeout: PollDeadlines.Token
        let poll: LongPoll
        let deadline: NIODeadline
    }

    private let responder: Responder
    private let hub: EventHub
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var inFlight: InFlight?
    private var parked: Parked?
    /// The poll deadlines of this connection's event loop.
    private var deadlines: PollDeadlines?
    /// Runs this connection's request tasks on its event loop (looked up once, not per request).
    private var executor: LoopExecutor?
    /// The task answering the current request, if it needs one.
    private var work: Task<Void, Never>?
    private var serverClosing = false
    private var context: ChannelHandlerContext?
    /// A request held back until the client reads what it was already sent.
    private var waitingForWritable: (HTTPRequestHead, ByteBuffer)?

    init(responder: Responder, hub: EventHub, trustedProxies: TrustedProxies = .none) {
        self.responder = responder
        self.hub = hub
        self.trustedProxies = trustedProxies
    }

    private let trustedProxies: TrustedProxies

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        deadlines = PollDeadlines.of(context.eventLoop)
        executor = LoopExecutor.of(context.eventLoop)
    }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = nil
        case .body(let part):
            body = part
        case .end:
            guard let head else { return }
            self.head = nil
            // A client that does not read its answers gets no more of them: the next answer is
            // made only once the ones queued for it drain below NIO's high-water mark.
            if context.channel.isWritable {
                dispatch(head: head, body: body ?? ByteBuffer(), context: context)
            } else {
                waitingForWritable = (head, body ?? ByteBuffer())
            }
            body = nil
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let (head, body) = waitingForWritable {
            waitingForWritable = nil
            dispatch(head: head, body: body, context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ServerShuttingDown { serverClosing = true }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Work for a client that left is cancelled: a password hash still waiting is never run.
        // (A write already queued still commits; only what has not started is skipped.)
        work?.cancel()
        work = nil
        // A client that leaves frees its parked poll now, not at its timeout.
        if let parked {
            self.parked = nil
            deadlines?.cancel(parked.timeout)
            hub.cancel(parked.waiter, reason: .disconnected)
        }
        context.fireChannelInactive()
    }

    private func dispatch(head: HTTPRequestHead, body: ByteBuffer, context: ChannelHandlerContext) {
        let requestID = Self.requestID(from: head.headers)
        inFlight = InFlight(id: requestID, keepAlive: head.isKeepAlive, isHead: head.method == .HEAD, version: head.version,
                            started: DispatchTime.now().uptimeNanoseconds, route: "unmatched")
        guard let target = Request.parseTarget(head.uri) else {
            write(.problem(HTTPError(.badRequest, detail: "the request target is not a valid path and query")), context: context)
            return
        }
        var logger = responder.logger
        logger[metadataKey: "request.id"] = "\(requestID)"
        let request = Request(method: head.method, uri: head.uri, pathSegments: target.segments, query: target.query,
                              headers: head.headers, body: body, id: requestID,
                              clientAddress: clientAddress(context, head.headers), logger: logger)
        let (route, handling) = responder.route(request)
        inFlight?.route = route
        switch handling {
        case .now(let reply):
            answer(reply, context: context)
        case .later(let work):
            let (task, reply) = (executor ?? LoopExecutor.of(context.eventLoop)).run(work)
            self.work = task
            reply.assumeIsolated().whenSuccess { [self] reply in
                self.work = nil
                self.answer(reply, context: context)
            }
        }
    }

    private func answer(_ reply: Reply, context: ChannelHandlerContext) {
        switch reply {
        case .response(let response): write(response, context: context)
        case .poll(let poll): park(poll, context: context)
        }
    }

    private var peer: String?

    private func clientAddress(_ context: ChannelHandlerContext, _ headers: HTTPHeaders) -> String {
        let peer: String
        if let known = self.peer {
            peer = known
        } else {
            peer = context.channel.remoteAddress?.ipAddress ?? "unknown"
            self.peer = peer
        }
        guard !trustedProxies.isEmpty else { return peer }
        return trustedProxies.client(peer: peer, forwardedFor: headers[canonicalForm: "x-forwarded-for"].map(String.init))
    }

    // MARK: - Long polls

    /// Parks `poll` until an event, its deadline or the end. A poll parked again after a wake-up
    /// that brought nothing new (a notification it had already read, the instance feed going
    /// away) keeps its first deadline: a poll ends within the timeout it asked for, however often
    /// it is woken.
    private func park(_ poll: LongPoll, context: ChannelHandlerContext, deadline: NIODeadline? = nil) {
        guard context.channel.isActive else { return }
        let now = NIODeadline.now()
        let deadline = deadline ?? now + poll.timeout
        guard deadline > now else {
            PollMetrics.timeouts.increment()
            write(poll.empty(false), context: context)
            return
        }
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let outcome = hub.park(account: poll.account, session: poll.session, after: poll.cursor,
                               readAt: poll.epoch) { reason in
            loop.execute { bound.value.woken(reason) }
        }
        switch outcome {
        case .parked(let waiter):
            let hub = self.hub
            let deadlines = self.deadlines ?? PollDeadlines.of(loop)
            let timeout = deadlines.add(deadline: deadline) { hub.cancel(waiter, reason: .timeout) }
            parked = Parked(waiter: waiter, timeout: timeout, poll: poll, deadline: deadline)
        case .ready:
            readAgain(poll, context: context, deadline: deadline)
        case .shuttingDown:
            // As for a poll parked when shutdown began: nothing new, its cursor, come back soon.
            write(poll.empty(true), context: context)
        case .tooManyForAccount, .tooManyForServer:
            write(poll.refused(outcome), context: context)
        }
    }

    /// Runs on the event loop, exactly once per parked poll.
    private func woken(_ reason: WakeReason) {
        guard let parked, let context else { return }
        self.parked = nil
        deadlines?.cancel(parked.timeout)
        switch reason {
        case .events(let events, let publishedAt):
            PollMetrics.deliveryLatency.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- publishedAt))
            PollMetrics.answeredFromCommit.increment()
            write(parked.poll.fresh(events), context: context)
        case .event(let publishedAt):
            PollMetrics.deliveryLatency.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- publishedAt))
            readAgain(parked.poll, context: context, deadline: parked.deadline)
        case .timeout:
            PollMetrics.timeouts.increment()
            write(parked.poll.empty(false), context: context)
        case .shutdown:
            write(parked.poll.empty(true), context: context)
        case .revoked:
            write(.problem(HTTPError(.unauthorized, detail: "the session was revoked", headers: [("WWW-Authenticate", "Bearer")])),
                  context: context)
        case .disconnected:
            break
        }
    }

    private func readAgain(_ poll: LongPoll, context: ChannelHandlerContext, deadline: NIODeadline) {
        var poll = poll
        poll.epoch = hub.epoch
        let read = poll.read
        (executor ?? LoopExecutor.of(context.eventLoop)).run { await read() }.value.assumeIsolated().whenSuccess { [self] response in
            if let response {
                self.write(response, context: context)
            } else {
                // Woken for an event this cursor had already seen: park again.
                self.park(poll, context: context, deadline: deadline)
            }
        }
    }

    // MARK: - Writing answers

    private func write(_ response: Response, context: ChannelHandlerContext) {
        guard let inFlight else { return }
        self.inFlight = nil
        var headers = response.headers
        headers.replaceOrAdd(name: "Content-Length", value: String(response.body.readableBytes))
        headers.replaceOrAdd(name: "X-Request-Id", value: inFlight.id)
        // Every answer, API or page: a browser never guesses a type other than the one given.
        headers.add(name: "X-Content-Type-Options", value: "nosniff")  // no endpoint sets it: no scan
        let close = !inFlight.keepAlive || serverClosing
        if close { headers.replaceOrAdd(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: inFlight.version, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if response.body.readableBytes > 0 && !inFlight.isHead {
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
        responder.metrics.record(route: inFlight.route, status: response.status.code,
                                 nanoseconds: DispatchTime.now().uptimeNanoseconds &- inFlight.started)
        if response.status.code >= 500 {
            responder.logger.error("request failed", metadata: [
                "request.id": "\(inFlight.id)", "http.route": "\(inFlight.route)", "http.status": "\(response.status.code)"])
        }
    }

    static func requestID(from headers: HTTPHeaders) -> String {
        if let given = headers.first(name: "x-request-id"), (1...128).contains(given.utf8.count),
           given.utf8.allSatisfy({ $0 < 128 && (isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")) }) {
            return given
        }
        // A random prefix per process and a counter: unique, and no system call per request.
        let value = requestCounter.add(1, ordering: .relaxed).newValue
        return requestIDPrefix + String(value, radix: 16)
    }

    private static let requestCounter = Atomic<UInt64>(0)
    private static let requestIDPrefix: String = {
        var generator = SystemRandomNumberGenerator()
        let hex = String(generator.next() as UInt32, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex + "-"
    }()
}

enum PollMetrics {
    static let deliveryLatency = Metrics.Timer(label: "stampd_event_delivery_seconds")
    static let timeouts = Counter(label: "stampd_poll_timeouts_total")
    static let resets = Counter(label: "stampd_poll_resets_total")
    /// Woken polls answered with the events their commit handed over, with no read.
    static let answeredFromCommit = Counter(label: "stampd_polls_answered_from_commit_total")
}
