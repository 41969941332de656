// A small HTTP/1.1 keep-alive client on NIOPosix + NIOHTTP1: one request at a time per
// connection, callbacks on the connection's event loop (no task hops, no locks on the hot path).
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A whole response.
struct HTTPAnswer: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: ByteBuffer
    var text: String { String(buffer: body) }
}

enum BenchError: Error, CustomStringConvertible {
    case closed
    case busy
    case status(Int, String)
    case unexpected(String)
    case timedOut(String)

    var description: String {
        switch self {
        case .closed: return "the connection closed"
        case .busy: return "a request is already in flight on this connection"
        case .status(let code, let body): return "HTTP \(code): \(body.prefix(200))"
        case .unexpected(let text): return text
        case .timedOut(let text): return "timed out: \(text)"
        }
    }
}

typealias AnswerCallback = (Result<HTTPAnswer, any Error>) -> Void

/// The last handler of a client pipeline; only ever touched on its channel's event loop.
final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private var context: ChannelHandlerContext?
    private var pending: AnswerCallback?
    private var status = 0
    private var headers = HTTPHeaders()
    private var body: ByteBuffer?
    private(set) var open = true

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            headers = head.headers
            body = nil
        case .body(var part):
            if body == nil { body = part } else { body!.writeBuffer(&part) }
        case .end:
            let callback = pending
            pending = nil
            let answer = HTTPAnswer(status: status, headers: headers, body: body ?? ByteBuffer())
            body = nil
            callback?(.success(answer))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        open = false
        if let callback = pending {
            pending = nil
            callback(.failure(BenchError.closed))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    var isIdle: Bool { pending == nil }

    func send(_ head: HTTPRequestHead, body: ByteBuffer?, _ callback: @escaping AnswerCallback) {
        guard open, let context else { return callback(.failure(BenchError.closed)) }
        guard pending == nil else { return callback(.failure(BenchError.busy)) }
        pending = callback
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body, body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// One keep-alive connection. Call `request` only on `loop`.
final class Conn: @unchecked Sendable {
    let channel: any Channel
    let handler: ClientHandler
    let host: String
    var loop: any EventLoop { channel.eventLoop }

    init(channel: any Channel, handler: ClientHandler, host: String) {
        self.channel = channel
        self.handler = handler
        self.host = host
    }

    var isOpen: Bool { handler.open }

    func request(_ method: HTTPMethod, _ uri: String, headers extra: HTTPHeaders = HTTPHeaders(),
                 body: ByteBuffer? = nil, _ callback: @escaping AnswerCallback) {
        var headers = extra
        headers.add(name: "Host", value: host)
        if let body {
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.readableBytes))
        } else if method == .POST {
            headers.add(name: "Content-Length", value: "0")
        }
        handler.send(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers), body: body, callback)
    }

    /// Runs `request` on the connection's loop from anywhere, as a future.
    func future(_ method: HTTPMethod, _ uri: String, headers: HTTPHeaders = HTTPHeaders(),
                body: String? = nil) -> EventLoopFuture<HTTPAnswer> {
        let promise = loop.makePromise(of: HTTPAnswer.self)
        loop.execute {
            self.request(method, uri, headers: headers, body: body.map { ByteBuffer(string: $0) }) {
                promise.completeWith($0)
            }
        }
        return promise.futureResult
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Hands out loopback source addresses so that tens of thousands of connections (and the
/// TIME_WAIT they leave behind when closed) never run a single address out of ephemeral ports.
final class SourceAddresses: Sendable {
    private let state: Mutex<(address: Int, used: Int)>
    private let perAddress: Int
    private let prefix: Int

    init(prefix: Int, perAddress: Int = 4_000) {
        self.prefix = prefix
        self.perAddress = perAddress
        self.state = Mutex((address: 1, used: 0))
    }

    /// A fresh address for a new group of connections (a new target or phase).
    func skipToNextAddress() {
        state.withLock { state in
            if state.used > 0 { state.address += 1; state.used = 0 }
        }
    }

    func next() -> String {
        let index = state.withLock { state -> Int in
            if state.used >= perAddress { state.address += 1; state.used = 0 }
            state.used += 1
            return state.address
        }
        return "127.\(prefix).\(index / 250).\(index % 250 + 1)"
    }
}

/// Opens connections to one server, or in turn to each of several instances of one (as a
/// round-robin load balancer would spread them).
final class Connector: Sendable {
    let group: any EventLoopGroup
    let servers: [(host: String, port: Int)]
    let sources: SourceAddresses
    private let turn = Atomic<Int>(0)

    convenience init(group: any EventLoopGroup, host: String, port: Int, sources: SourceAddresses) {
        self.init(group: group, servers: [(host, port)], sources: sources)
    }

    init(group: any EventLoopGroup, servers: [(host: String, port: Int)], sources: SourceAddresses) {
        precondition(!servers.isEmpty)
        self.group = group
        self.servers = servers
        self.sources = sources
    }

    func connect(on loop: (any EventLoop)? = nil) -> EventLoopFuture<Conn> {
        let handler = ClientHandler()
        let (host, port) = servers[turn.add(1, ordering: .relaxed).oldValue % servers.count]
        let hostHeader = "\(host):\(port)"
        let source: SocketAddress
        do {
            source = try SocketAddress(ipAddress: sources.next(), port: 0)
        } catch {
            return group.next().makeFailedFuture(error)
        }
        return ClientBootstrap(group: loop ?? group.next())
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .connectTimeout(.seconds(10))
            .bind(to: source)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: host, port: port)
            .map { Conn(channel: $0, handler: handler, host: hostHeader) }
    }

    /// Opens `count` connections, at most `concurrency` at a time. Failures are counted, not thrown.
    func connectMany(_ count: Int, concurrency: Int = 256,
                     loops: [any EventLoop]? = nil) async -> (conns: [Conn], failures: [String]) {
        await withTaskGroup(of: (Int, Result<Conn, any Error>).self) { tasks in
            var conns = [Conn?](repeating: nil, count: count)
            var failures: [String] = []
            var started = 0
            func start(_ index: Int) {
                let loop = loops.map { $0[index % $0.count] }
                tasks.addTask {
                    do { return (index, .success(try await self.connect(on: loop).get())) }
                    catch { return (index, .failure(error)) }
                }
            }
            while started < min(concurrency, count) { start(started); started += 1 }
            for await (index, result) in tasks {
                switch result {
                case .success(let conn): conns[index] = conn
                case .failure(let error): failures.append("\(error)")
                }
                if started < count { start(started); started += 1 }
            }
            return (conns.compactMap { $0 }, failures)
        }
    }
}

/// Runs `count` jobs over `conns`, each connection doing one job at a time, in a bounded time.
/// A job calls `done(true)` on success, `done(false)` on failure, on the connection's loop.
func runJobs(over conns: [Conn], count: Int, deadline seconds: Double,
             _ job: @escaping @Sendable (_ index: Int, _ conn: Conn, _ done: @escaping (Bool) -> Void) -> Void)
    async throws -> (ok: Int, failed: Int) {
    guard count > 0, !conns.isEmpty else { return (0, 0) }
    let next = Atomic<Int>(0)
    let tally = Mutex((ok: 0, failed: 0))
    var futures: [EventLoopFuture<Void>] = []
    for conn in conns {
        let promise = conn.loop.makePromise(of: Void.self)
        futures.append(promise.futureResult)
        let step = LoopStep()
        step.run = { // a cycle on purpose, broken when the jobs run out
            let index = next.add(1, ordering: .relaxed).oldValue
            guard index < count else { promise.succeed(()); step.run = nil; return }
            job(index, conn) { success in
                tally.withLock { success ? ($0.ok += 1) : ($0.failed += 1) }
                step.run?()
            }
        }
        conn.loop.execute { step.run?() }
    }
    let all = EventLoopFuture.andAllComplete(futures, on: conns[0].loop)
    try await wait(all, seconds: seconds, what: "\(count) jobs")
    return tally.withLock { $0 }
}

/// Holds a recursive step closure (loop-confined).
final class LoopStep: @unchecked Sendable {
    var run: (() -> Void)?
}

/// Awaits `future`, or throws when `seconds` pass first (the future is left to finish on its own).
func wait<T: Sendable>(_ future: EventLoopFuture<T>, seconds: Double, what: String) async throws -> T {
    let promise = future.eventLoop.makePromise(of: T.self)
    future.cascade(to: promise)
    let timer = future.eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
        promise.fail(BenchError.timedOut(what))
    }
    defer { timer.cancel() }
    return try await promise.futureResult.get()
}

/// Monotonic nanoseconds.
@inline(__always) func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
