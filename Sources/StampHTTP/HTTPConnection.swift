// One HTTP/1.1 connection in one handler after NIO's request decoder: its rules live in
// `ConnectionState`; this class does what the state answers. It turns each whole request into a
// `Request`, asks the responder, parks long polls on the event hub without holding a task or a
// thread, and writes each answer as one buffer (status line, headers and body together).
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import StampCore
import Synchronization

/// Fired into every connection when the server begins to shut down.
struct ServerShuttingDown {}

/// A long poll to park: the endpoint has read nothing new after `cursor`.
public struct LongPoll: Sendable {
    public var account: String
    /// The session's token digest: revoking it answers the poll with 401 at once.
    public var session: [UInt8]
    public var cursor: Int64
    /// The hub's epoch when the read (or the hub's check) that found nothing after `cursor` began.
    public var epoch: UInt64
    public var timeout: TimeAmount
    public var answers: any PollAnswers
}

/// The answers a long poll can end with, made by its endpoint: one value per poll rather than a
/// closure each, since polls are parked by the thousand.
public protocol PollAnswers: Sendable {
    /// Reads again once woken: an answer, or nil when there is still nothing after the cursor.
    func read() async -> Response?
    /// The answer with the events that directly follow the cursor, handed over by the hub.
    func fresh(_ events: [Event]) -> Response
    /// The answer when the poll ends with nothing new: at its timeout, or at shutdown.
    func empty(shuttingDown: Bool) -> Response
    /// The answer when the hub refuses to park it for a cap (at shutdown it gets `empty`).
    func refused(_ outcome: ParkOutcome) -> Response
}

/// NIO's request decoder, telling the connection when bytes arrive (before it decodes them), so
/// that a request is timed from its first byte without a handler of its own in the pipeline.
struct TimedRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = HTTPServerRequestPart
    private let http: HTTPRequestDecoder
    private let arrived: () -> Void

    init(limits: NIOHTTPDecoderLimitConfiguration, arrived: @escaping () -> Void) {
        http = HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)
        self.arrived = arrived
    }

    mutating func decoderAdded(context: ChannelHandlerContext) { http.decoderAdded(context: context) }
    mutating func decoderRemoved(context: ChannelHandlerContext) { http.decoderRemoved(context: context) }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        arrived()
        return try http.decode(context: context, buffer: &buffer)
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try http.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
    }
}

final class HTTPConnection: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

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
        let timeout: LoopDeadlines.Token
        let poll: LongPoll
        let deadline: NIODeadline
    }

    private let responder: Responder
    private let hub: EventHub
    private let trustedProxies: TrustedProxies
    private var state: ConnectionState
    private var inFlight: InFlight?
    private var parked: Parked?
    /// This connection's event loop's deadlines: its own request and idle timeouts, its poll's.
    private let deadlines: LoopDeadlines
    /// One check at a time, for the earliest of the state's deadlines. It is replaced only by an
    /// earlier one; a later deadline waits for the check to fire, look, and set the next.
    private var check: (token: LoopDeadlines.Token, deadline: NIODeadline)?
    /// Runs this connection's request tasks on its event loop (looked up once, not per request).
    private let executor: LoopExecutor
    /// The task answering the current request, if it needs one.
    private var work: Task<Void, Never>?
    private var context: ChannelHandlerContext?
    /// The next pipelined request, while an answer written just now is still on the stack (so a
    /// run of pipelined requests answered at once is a loop, not a recursion).
    private var next: (HTTPRequestHead, ByteBuffer)?
    private var dispatching = false
    private var peer: String?

    /// `loop` is the channel's: its deadlines and its executor are looked up once, here.
    init(responder: Responder, hub: EventHub, limits: ConnectionLimits, trustedProxies: TrustedProxies = .none,
         loop: any EventLoop) {
        self.responder = responder
        self.hub = hub
        self.trustedProxies = trustedProxies
        state = ConnectionState(limits: limits, now: loop.now)
        deadlines = LoopDeadlines.of(loop)
        executor = LoopExecutor.of(loop)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        scheduleCheck()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stopChecking()
        self.context = nil
    }

    /// Called by the decoder before it decodes a read.
    func bytesArrived() {
        guard let context else { return }
        state.bytesArrived(now: context.eventLoop.now)
        scheduleCheck()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        perform(state.received(unwrapInboundIn(data), now: context.eventLoop.now), context: context)
    }

    func read(context: ChannelHandlerContext) {
        if state.read() { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        perform(state.writabilityChanged(context.channel.isWritable), context: context)
        if state.releaseHeldRead() { context.read() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ServerShuttingDown {
            perform(state.shutdown(), context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let parserError = error as? HTTPParserError {
            // The decoder reads nothing more after this; answer first if nothing else is answered.
            perform(state.parserFailed(parserError), context: context)
            return
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopChecking()
        // Work for a client that left is cancelled: a password hash still waiting is never run.
        // (A write already queued still commits; only what has not started is skipped.)
        work?.cancel()
        work = nil
        // A client that leaves frees its parked poll now, not at its timeout.
        if let parked {
            self.parked = nil
            deadlines.cancel(parked.timeout)
            hub.cancel(parked.waiter, reason: .disconnected)
        }
        context.fireChannelInactive()
    }

    private func perform(_ action: ConnectionState.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .dispatch(let head, let body):
            next = (head, body)
            guard !dispatching else { return }
            dispatching = true
            while let (head, body) = next {
                next = nil
                dispatch(head: head, body: body, context: context)
            }
            dispatching = false
        case .sendContinue(let version):
            var buffer = context.channel.allocator.buffer(capacity: 32)
            buffer.writeString("HTTP/\(version.major).\(version.minor) 100 Continue\r\n\r\n")
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        case .reject(let status, let detail):
            let bytes = Self.encode(.problem(HTTPError(status, detail: detail)), version: .http1_1, requestID: nil, close: true,
                                    includeBody: true, allocator: context.channel.allocator)
            context.writeAndFlush(wrapOutboundOut(bytes)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .close:
            context.close(promise: nil)
        }
        scheduleCheck()
    }

    // MARK: - Deadlines

    private func scheduleCheck() {
        guard let next = state.nextDeadline else { return }
        if let check {
            if check.deadline <= next { return }
            deadlines.cancel(check.token)
        }
        let token = deadlines.add(deadline: next) { [self] in
            self.check = nil
            guard let context = self.context else { return }
            self.perform(self.state.deadlinePassed(now: context.eventLoop.now), context: context)
        }
        check = (token, next)
    }

    private func stopChecking() {
        if let check { deadlines.cancel(check.token) }
        check = nil
    }

    // MARK: - Requests

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
        let (route, reply) = responder.route(request)
        inFlight?.route = route
        answer(reply, context: context)
    }

    private func answer(_ reply: Reply, context: ChannelHandlerContext) {
        switch reply {
        case .response(let response):
            write(response, context: context)
        case .poll(let poll):
            park(poll, context: context)
        case .later(let work):
            let (task, reply) = executor.run(work)
            self.work = task
            reply.assumeIsolated().whenSuccess { [self] reply in
                self.work = nil
                self.answer(reply, context: context)
            }
        }
    }

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
            write(poll.answers.empty(shuttingDown: false), context: context)
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
            let timeout = deadlines.add(deadline: deadline) { hub.cancel(waiter, reason: .timeout) }
            parked = Parked(waiter: waiter, timeout: timeout, poll: poll, deadline: deadline)
            // A parked poll's connection has no deadline of its own until the answer (its idle
            // check from before the request would only fire and find nothing): keep no entry.
            if state.nextDeadline == nil { stopChecking() }
        case .ready:
            readAgain(poll, context: context, deadline: deadline)
        case .shuttingDown:
            // As for a poll parked when shutdown began: nothing new, its cursor, come back soon.
            write(poll.answers.empty(shuttingDown: true), context: context)
        case .tooManyForAccount, .tooManyForServer:
            write(poll.answers.refused(outcome), context: context)
        }
    }

    /// Runs on the event loop, exactly once per parked poll.
    private func woken(_ reason: WakeReason) {
        guard let parked, let context else { return }
        self.parked = nil
        deadlines.cancel(parked.timeout)
        switch reason {
        case .events(let events, let publishedAt):
            PollMetrics.deliveryLatency.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- publishedAt))
            PollMetrics.answeredFromCommit.increment()
            write(parked.poll.answers.fresh(events), context: context)
        case .event(let publishedAt):
            PollMetrics.deliveryLatency.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- publishedAt))
            readAgain(parked.poll, context: context, deadline: parked.deadline)
        case .timeout:
            PollMetrics.timeouts.increment()
            write(parked.poll.answers.empty(shuttingDown: false), context: context)
        case .shutdown:
            write(parked.poll.answers.empty(shuttingDown: true), context: context)
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
        let answers = poll.answers
        executor.run { await answers.read() }.value.assumeIsolated().whenSuccess { [self] response in
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
        let close = !inFlight.keepAlive || state.shuttingDown
        let bytes = Self.encode(response, version: inFlight.version, requestID: inFlight.id, close: close,
                                includeBody: !inFlight.isHead, allocator: context.channel.allocator)
        let written = context.writeAndFlush(wrapOutboundOut(bytes))
        if close {
            written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
        responder.metrics.record(route: inFlight.route, status: response.status.code,
                                 nanoseconds: DispatchTime.now().uptimeNanoseconds &- inFlight.started)
        if response.status.code >= 500 && !response.countedElsewhere {
            responder.logger.error("request failed", metadata: [
                "request.id": "\(inFlight.id)", "http.route": "\(inFlight.route)", "http.status": "\(response.status.code)"])
        }
        perform(state.answered(now: context.eventLoop.now, closing: close), context: context)
        if state.releaseHeldRead() { context.read() }
    }

    /// An answer on the wire: the status line, the endpoint's headers, then the ones the connection
    /// owns (endpoints never set them): `Content-Length` (none where the status has no body, as
    /// RFC 9110 §8.6 says), `X-Request-Id`, `X-Content-Type-Options` (a browser never guesses a
    /// type other than the one given, on any answer) and `Connection: close` when closing. A HEAD
    /// answer has the headers of the GET and no body.
    static func encode(_ response: Response, version: HTTPVersion, requestID: String?, close: Bool, includeBody: Bool,
                       allocator: ByteBufferAllocator) -> ByteBuffer {
        let status = response.status
        let hasBody = status.code >= 200 && status.code != 204 && status.code != 304
        let bodyBytes = hasBody && includeBody ? response.body.readableBytes : 0
        var buffer = allocator.buffer(capacity: 160 + response.headers.count * 48 + bodyBytes)
        buffer.writeStaticString(version.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        buffer.writeString(String(status.code))
        buffer.writeStaticString(" ")
        buffer.writeString(status.reasonPhrase)
        buffer.writeStaticString("\r\n")
        for (name, value) in response.headers {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        if hasBody {
            buffer.writeStaticString("Content-Length: ")
            buffer.writeString(String(response.body.readableBytes))
            buffer.writeStaticString("\r\n")
        }
        if let requestID {
            buffer.writeStaticString("X-Request-Id: ")
            buffer.writeString(requestID)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString(close ? "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
                                       : "X-Content-Type-Options: nosniff\r\n\r\n")
        if bodyBytes > 0 { buffer.writeImmutableBuffer(response.body) }
        return buffer
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
