// The limits of one connection: body size (413), header size (431), malformed HTTP (400),
// slow requests (408), idle keep-alive, and closing at shutdown. It also gathers each request
// into one head, at most one body part and an end, so endpoints only ever see whole requests.
import Foundation
import NIOCore
import NIOHTTP1

public struct ConnectionLimits: Sendable {
    public var maximumBodyBytes = 64 * 1024
    public var maximumHeaderBytes = 16 * 1024
    public var idleTimeout = TimeAmount.seconds(60)
    /// From a request's first byte to its last.
    public var requestTimeout = TimeAmount.seconds(10)
    public init() {}
}

/// Told to the guard before the decoder sees any bytes, to time a request from its first byte.
struct BytesArrived {}

/// Fired into every connection when the server begins to shut down.
struct ServerShuttingDown {}

/// Sits in front of the decoder and tells the guard when bytes arrive.
final class ByteArrivalNotifier: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireUserInboundEventTriggered(BytesArrived())
        context.fireChannelRead(data)
    }
}

final class ConnectionGuard: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let limits: ConnectionLimits
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    /// Requests passed on whose response has not ended yet (more than one when pipelined).
    private var unanswered = 0
    private var responding = false
    /// After an error answer: nothing more is read from this connection.
    private var discarding = false
    private var closing = false
    /// Bytes of a request that has not ended yet have arrived: it is in flight.
    private var receiving = false
    /// When the request being read must be complete (408 after), and when an idle connection closes.
    private var requestDeadline: NIODeadline?
    private var idleDeadline: NIODeadline?
    /// One scheduled check at a time, for the earliest deadline. Deadlines move on every request,
    /// but the check is never cancelled: it fires, looks, and schedules the next one. Cancelling a
    /// NIO task scans the event loop's task heap, where every parked poll keeps its timeout.
    private var check: Scheduled<Void>?
    private var checkDeadline: NIODeadline?
    /// A read held back while the client is not reading our answers.
    private var readPending = false

    init(limits: ConnectionLimits) {
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { armIdleTimer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        armIdleTimer(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
        requestDeadline = nil
        idleDeadline = nil
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is BytesArrived:
            idleDeadline = nil
            if unanswered == 0 && !discarding {
                receiving = true
                if requestDeadline == nil { armRequestTimer(context: context) }
            }
        case is ServerShuttingDown:
            closing = true
            context.fireUserInboundEventTriggered(event)
            if unanswered == 0 && !receiving { context.close(promise: nil) }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !discarding else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if requestDeadline == nil { armRequestTimer(context: context) }
            if let problem = Self.framingProblem(head) {
                reject(context: context, .badRequest, problem)
                return
            }
            if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > limits.maximumBodyBytes {
                reject(context: context, .payloadTooLarge, "the request body is larger than \(limits.maximumBodyBytes) bytes")
                return
            }
            self.head = head
            self.body = nil
            if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))),
                                      promise: nil)
            }
        case .body(var part):
            let size = (body?.readableBytes ?? 0) + part.readableBytes
            guard size <= limits.maximumBodyBytes else {
                reject(context: context, .payloadTooLarge, "the request body is larger than \(limits.maximumBodyBytes) bytes")
                return
            }
            if body == nil { body = part } else { body!.writeBuffer(&part) }
        case .end:
            guard let head else { return }
            requestDeadline = nil
            self.head = nil
            receiving = false
            unanswered += 1
            context.fireChannelRead(wrapInboundOut(.head(head)))
            if let body { context.fireChannelRead(wrapInboundOut(.body(body))) }
            self.body = nil
            context.fireChannelRead(wrapInboundOut(.end(nil)))
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200:
            responding = true
        case .end:
            responding = false
            unanswered -= 1
            if unanswered == 0 && !receiving {
                if closing {
                    let closed = promise ?? context.eventLoop.makePromise()
                    closed.futureResult.whenComplete { _ in context.close(promise: nil) }
                    context.write(data, promise: closed)
                    return
                }
                armIdleTimer(context: context)
            }
        default:
            break
        }
        context.write(data, promise: promise)
    }

    /// A client that does not read its answers stops being read from, so it cannot make the
    /// server queue answers without bound.
    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.read()
        } else {
            readPending = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && readPending {
            readPending = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    /// Heads whose framing or target is ambiguous, which a proxy in front might read otherwise
    /// (RFC 9112 §3.2, §6.1): only `chunked` as a transfer coding, exactly one valid Host on HTTP/1.1.
    static func framingProblem(_ head: HTTPRequestHead) -> String? {
        let codings = head.headers["transfer-encoding"]
        if !codings.isEmpty && (codings.count != 1 || codings[0].trimmingCharacters(in: .whitespaces).lowercased() != "chunked") {
            return "the only transfer coding accepted is chunked"
        }
        let hosts = head.headers["host"]
        if head.version.major == 1 && head.version.minor >= 1 && hosts.count != 1 {
            return "an HTTP/1.1 request needs exactly one Host header"
        }
        if let host = hosts.first, !host.utf8.allSatisfy({ byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: ":")
                || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "]") || byte == UInt8(ascii: "_")
        }) {
            return "the Host header is not a valid host"
        }
        return nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError {
            // The decoder closes the connection after this; answer first if nothing else is being answered.
            let status: HTTPResponseStatus = parserError == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
            reject(context: context, status, status == .badRequest ? "the request is not valid HTTP/1.1" : "the request headers are larger than \(limits.maximumHeaderBytes) bytes")
            return
        }
        context.fireErrorCaught(error)
    }

    /// Answers with an error and closes, unless another answer is under way (then only closes).
    private func reject(context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ detail: String) {
        discarding = true
        requestDeadline = nil
        guard !responding && unanswered == 0 else {
            context.close(promise: nil)
            return
        }
        let response = Response.problem(HTTPError(status, detail: detail))
        var headers = response.headers
        headers.add(name: "Content-Length", value: String(response.body.readableBytes))
        headers.add(name: "Connection", value: "close")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }

    private func armRequestTimer(context: ChannelHandlerContext) {
        requestDeadline = .now() + limits.requestTimeout
        scheduleCheck(context: context)
    }

    private func armIdleTimer(context: ChannelHandlerContext) {
        idleDeadline = .now() + limits.idleTimeout
        scheduleCheck(context: context)
    }

    private func scheduleCheck(context: ChannelHandlerContext) {
        guard let next = [requestDeadline, idleDeadline].compactMap({ $0 }).min() else { return }
        if let checkDeadline, checkDeadline <= next { return }  // an earlier check will reschedule
        checkDeadline = next
        check = context.eventLoop.assumeIsolated().scheduleTask(deadline: next) { [self] in
            self.deadlineReached(next, context: context)
        }
    }

    private func deadlineReached(_ deadline: NIODeadline, context: ChannelHandlerContext) {
        if checkDeadline == deadline {
            checkDeadline = nil
            check = nil
        }
        let now = NIODeadline.now()
        if let requestDeadline, requestDeadline <= now {
            self.requestDeadline = nil
            reject(context: context, .requestTimeout, "the request was not complete within the time allowed")
        } else if let idleDeadline, idleDeadline <= now {
            self.idleDeadline = nil
            context.close(promise: nil)
        } else {
            scheduleCheck(context: context)
        }
    }
}
