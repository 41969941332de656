// The listening socket and its connections: the pipeline each one gets, the cap on how many
// may be open, and a graceful stop that lets in-flight requests finish.
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import StampCore
import Synchronization

public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var limits = ConnectionLimits()
    /// Kept below the process's file-descriptor limit, so running out of descriptors is not how it ends.
    public var maximumConnections = 19_000
    /// How long in-flight requests get to finish after SIGTERM.
    public var shutdownGracePeriod = TimeAmount.seconds(10)
    /// Said in the log line once bound: scripts wait for "listening" of the public listener, so
    /// another listener (metrics) says something else.
    public var readyMessage = "listening"
    /// The load balancers whose X-Forwarded-For names the client (per-address limits count it).
    public var trustedProxies = TrustedProxies.none
    public init() {}
}

public final class HTTPServer: Service, Sendable {
    private let configuration: ServerConfiguration
    private let responder: Responder
    private let hub: EventHub
    private let group: any EventLoopGroup
    private let logger: Logger
    private let connections: ConnectionRegistry
    private let listening: Mutex<[CheckedContinuation<SocketAddress, any Error>]> = Mutex([])
    private let address = Mutex<SocketAddress?>(nil)

    public init(configuration: ServerConfiguration, responder: Responder, hub: EventHub,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.configuration = configuration
        self.responder = responder
        self.hub = hub
        self.group = group
        self.logger = logger
        self.connections = ConnectionRegistry(gauge: responder.metrics.openConnections)
    }

    /// The bound address, once listening (port 0 picks a free port).
    public func listeningAddress() async throws -> SocketAddress {
        if let address = address.withLock({ $0 }) { return address }
        return try await withCheckedThrowingContinuation { continuation in
            let ready = address.withLock { address -> SocketAddress? in
                if let address { return address }
                listening.withLock { $0.append(continuation) }
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    public func run() async throws {
        let channel: any Channel
        do {
            channel = try await bootstrap().bind(host: configuration.host, port: configuration.port).get()
        } catch {
            logger.error("cannot listen", metadata: ["host": "\(configuration.host)", "port": "\(configuration.port)",
                                                     "error": "\(error)"])
            listening.withLock { waiting in
                waiting.forEach { $0.resume(throwing: error) }
                waiting.removeAll()
            }
            throw error
        }
        let local = channel.localAddress!
        address.withLock { address in
            address = local
            listening.withLock { waiting in
                waiting.forEach { $0.resume(returning: local) }
                waiting.removeAll()
            }
        }
        logger.info("\(configuration.readyMessage)", metadata: ["address": "\(local)"])

        // Cancellation (the group ends because another service failed, say a listener that could
        // not bind) closes the socket too: waiting on a future alone would outlive it and keep the
        // process up without the service it was started for.
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await channel.closeFuture.get()
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
        await drain()
    }

    /// Stops accepting, answers parked polls, lets in-flight requests finish within the grace period.
    private func drain() async {
        logger.info("shutting down", metadata: ["connections": "\(connections.count)"])
        // Told first, so the answers the hub's shutdown causes next carry `Connection: close`
        // (both hop onto each connection's event loop, in this order).
        connections.forEach { $0.pipeline.fireUserInboundEventTriggered(ServerShuttingDown()) }
        hub.shutdown()
        let drained = await connections.waitUntilEmpty(timeout: configuration.shutdownGracePeriod)
        if !drained {
            logger.warning("closing connections that outlived the grace period", metadata: ["connections": "\(connections.count)"])
            connections.forEach { $0.close(promise: nil) }
            _ = await connections.waitUntilEmpty(timeout: .seconds(2))
        }
        logger.info("stopped")
    }

    private func bootstrap() -> ServerBootstrap {
        let limits = configuration.limits
        let maximumConnections = configuration.maximumConnections
        let responder = self.responder
        let hub = self.hub
        let connections = self.connections
        let trustedProxies = configuration.trustedProxies
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderListSize = limits.maximumHeaderBytes
        decoderLimits.maxHeaderFieldSize = limits.maximumHeaderBytes
        decoderLimits.maxHeaderFieldCount = 200
        let finalDecoderLimits = decoderLimits
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            // Small reads bound how far a pipelining client can run ahead of its answers; a small
            // first buffer keeps an idle or parked connection cheap (it grows when reads fill it).
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 16 * 1024))
            .childChannelInitializer { channel in
                guard connections.add(channel, maximum: maximumConnections) else {
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RefuseConnection())
                    }
                }
                // Two handlers: NIO's decoder, and the connection, which writes its answers as bytes.
                return channel.eventLoop.makeCompletedFuture {
                    let connection = HTTPConnection(responder: responder, hub: hub, limits: limits, trustedProxies: trustedProxies,
                                                    loop: channel.eventLoop)
                    let decoder = TimedRequestDecoder(limits: finalDecoderLimits) { [unowned connection] in connection.bytesArrived() }
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(ByteToMessageHandler(decoder))
                    try sync.addHandler(connection)
                }
            }
    }
}

/// Answers a connection over the cap with a 503 and closes it, without reading from it.
final class RefuseConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: ConnectionRegistry.refusal))).whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// The open connections: counted against the cap, and reached at shutdown.
final class ConnectionRegistry: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var emptyWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let gauge: Gauge

    /// Written raw to a connection over the cap, before closing it.
    static let refusal: String = {
        let body = #"{"type":"https://stampd.dev/problems/service-unavailable","title":"Service Unavailable","#
            + #""status":503,"detail":"the server has too many open connections"}"#
        return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nX-Content-Type-Options: nosniff\r\n"
            + "Retry-After: 1\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
    }()

    init(gauge: Gauge) { self.gauge = gauge }

    var count: Int { state.withLock { $0.channels.count } }

    func add(_ channel: any Channel, maximum: Int) -> Bool {
        let key = ObjectIdentifier(channel)
        let count = state.withLock { state -> Int? in
            guard state.channels.count < maximum else { return nil }
            state.channels[key] = channel
            return state.channels.count
        }
        guard let count else { return false }
        gauge.record(count)
        channel.closeFuture.whenComplete { [self] _ in self.remove(key) }
        return true
    }

    private func remove(_ key: ObjectIdentifier) {
        let (count, waiters) = state.withLock { state -> (Int, [CheckedContinuation<Void, Never>]) in
            state.channels[key] = nil
            guard state.channels.isEmpty else { return (state.channels.count, []) }
            defer { state.emptyWaiters.removeAll() }
            return (0, state.emptyWaiters)
        }
        gauge.record(count)
        waiters.forEach { $0.resume() }
    }

    func forEach(_ body: (any Channel) -> Void) {
        state.withLock { Array($0.channels.values) }.forEach(body)
    }

    /// True when every connection closed within `timeout`.
    func waitUntilEmpty(timeout: TimeAmount) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let empty = self.state.withLock { state -> Bool in
                        if state.channels.isEmpty { return true }
                        state.emptyWaiters.append(continuation)
                        return false
                    }
                    if empty { continuation.resume() }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(nanoseconds: UInt64(timeout.nanoseconds))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            if !first {
                // Release the waiter still parked in the registry.
                let waiters = self.state.withLock { state in
                    defer { state.emptyWaiters.removeAll() }
                    return state.emptyWaiters
                }
                waiters.forEach { $0.resume() }
                await group.waitForAll()
            }
            return first
        }
    }
}
