// What one connection is doing, as a value: the connection handler tells it what happened (bytes
// arrived, a request part was decoded, an answer was written, a deadline passed, the server began
// to shut down) and does what it answers. It does no I/O and reads no clock: every time comes in
// as an argument, so a test drives it with its own.
//
// The rules it keeps: requests are answered one at a time and in order (later pipelined ones wait,
// and nothing more is read while one waits); the request being read must be whole within
// `requestTimeout` of its first byte (408); a connection with nothing to do closes after
// `idleTimeout`; a body over the limit is 413 before it is read; framing a proxy could read
// differently is 400; after an error answer nothing more is read.
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

struct ConnectionState {
    enum Action: Equatable {
        case none
        /// Answer this whole request.
        case dispatch(HTTPRequestHead, ByteBuffer)
        /// Tell the client to send the body it announced with `Expect: 100-continue`.
        case sendContinue(HTTPVersion)
        /// Answer with this problem and `Connection: close`, then close.
        case reject(HTTPResponseStatus, String)
        /// Close without an answer: one is under way already, or the connection has nothing to do.
        case close
    }

    let limits: ConnectionLimits
    /// The request being read: its head, and its body so far.
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    /// Whole requests that arrived while another was being answered (pipelined), in order.
    private var waiting: [(HTTPRequestHead, ByteBuffer)] = []
    /// A request was dispatched and its answer is not written yet (it may be a parked poll).
    private(set) var answering = false
    /// Bytes of a request that has not ended have arrived while nothing was being answered.
    private var receiving = false
    /// After an error answer, or an answer that closes: nothing more is read or dispatched.
    private(set) var finished = false
    private(set) var shuttingDown = false
    private var writable = true
    /// A read the channel asked for and that was held back.
    private var readHeld = false
    private(set) var requestDeadline: NIODeadline?
    private(set) var idleDeadline: NIODeadline?

    init(limits: ConnectionLimits, now: NIODeadline) {
        self.limits = limits
        idleDeadline = now + limits.idleTimeout
    }

    /// The earliest deadline to check, if any.
    var nextDeadline: NIODeadline? {
        switch (requestDeadline, idleDeadline) {
        case (let request?, let idle?): return min(request, idle)
        case (let request?, nil): return request
        case (nil, let idle?): return idle
        case (nil, nil): return nil
        }
    }

    /// Bytes came in, before the decoder has seen them: a request's clock starts at its first byte.
    mutating func bytesArrived(now: NIODeadline) {
        idleDeadline = nil
        guard !answering && waiting.isEmpty && !finished else { return }
        receiving = true
        if requestDeadline == nil { requestDeadline = now + limits.requestTimeout }
    }

    mutating func received(_ part: HTTPServerRequestPart, now: NIODeadline) -> Action {
        guard !finished else { return .none }
        switch part {
        case .head(let head):
            if requestDeadline == nil { requestDeadline = now + limits.requestTimeout }
            if let problem = Self.framingProblem(head) { return reject(.badRequest, problem) }
            if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > limits.maximumBodyBytes {
                return reject(.payloadTooLarge, "the request body is larger than \(limits.maximumBodyBytes) bytes")
            }
            self.head = head
            body = nil
            if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                return .sendContinue(head.version)
            }
            return .none
        case .body(var part):
            guard head != nil else { return .none }
            guard (body?.readableBytes ?? 0) + part.readableBytes <= limits.maximumBodyBytes else {
                return reject(.payloadTooLarge, "the request body is larger than \(limits.maximumBodyBytes) bytes")
            }
            if body == nil { body = part } else { body!.writeBuffer(&part) }
            return .none
        case .end:
            guard let head else { return .none }
            let whole = (head, body ?? ByteBuffer())
            self.head = nil
            body = nil
            requestDeadline = nil
            receiving = false
            guard !answering && writable && waiting.isEmpty else {
                waiting.append(whole)
                return .none
            }
            answering = true
            return .dispatch(whole.0, whole.1)
        }
    }

    /// The answer to the dispatched request was written; `closing` when it said `Connection: close`.
    mutating func answered(now: NIODeadline, closing: Bool) -> Action {
        answering = false
        if closing {
            finished = true
            waiting.removeAll()
            return .none
        }
        if let next = nextWaiting() { return next }
        if !receiving && waiting.isEmpty { idleDeadline = now + limits.idleTimeout }
        return .none
    }

    /// A client that does not read its answers gets no more of them, and is not read from.
    mutating func writabilityChanged(_ writable: Bool) -> Action {
        self.writable = writable
        return nextWaiting() ?? .none
    }

    private mutating func nextWaiting() -> Action? {
        guard !answering && writable && !finished && !waiting.isEmpty else { return nil }
        let (head, body) = waiting.removeFirst()
        answering = true
        return .dispatch(head, body)
    }

    /// The channel asks to read: true to pass it on now. Reads wait while the client is not
    /// reading its answers or a whole request is waiting its turn (so pipelining is bounded).
    mutating func read() -> Bool {
        if writable && waiting.isEmpty { return true }
        readHeld = true
        return false
    }

    /// True once a read held back may go.
    mutating func releaseHeldRead() -> Bool {
        guard readHeld && writable && waiting.isEmpty else { return false }
        readHeld = false
        return true
    }

    mutating func deadlinePassed(now: NIODeadline) -> Action {
        if let deadline = requestDeadline, deadline <= now {
            requestDeadline = nil
            return reject(.requestTimeout, "the request was not complete within the time allowed")
        }
        if let deadline = idleDeadline, deadline <= now {
            idleDeadline = nil
            finished = true
            return .close
        }
        return .none
    }

    mutating func shutdown() -> Action {
        shuttingDown = true
        guard !answering && !receiving && waiting.isEmpty && !finished else { return .none }
        finished = true
        return .close
    }

    /// The decoder found the bytes are not HTTP/1.1 (it reads nothing more after this).
    mutating func parserFailed(_ error: HTTPParserError) -> Action {
        guard !finished else { return .none }
        if error == .headerOverflow {
            return reject(.requestHeaderFieldsTooLarge, "the request headers are larger than \(limits.maximumHeaderBytes) bytes")
        }
        return reject(.badRequest, "the request is not valid HTTP/1.1")
    }

    /// An error answer, unless another answer is under way: then only closing keeps the order.
    private mutating func reject(_ status: HTTPResponseStatus, _ detail: String) -> Action {
        finished = true
        requestDeadline = nil
        head = nil
        body = nil
        defer { waiting.removeAll() }
        return answering || !waiting.isEmpty ? .close : .reject(status, detail)
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
}
