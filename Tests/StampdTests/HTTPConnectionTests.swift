// One connection, byte for byte: the state machine with times the test gives it, and the two
// handlers of a real pipeline on an embedded channel whose clock the test moves.
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import StampCore
@testable import StampHTTP
import Testing

@Suite(.timeLimit(.minutes(1))) struct HTTPConnectionTests {
    // MARK: - The state machine

    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func head(_ uri: String, _ headers: HTTPHeaders = ["Host": "cafe"]) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: headers)
    }

    @Test func aWholeRequestWaitsWhileAnotherIsAnsweredAndNothingMoreIsReadMeanwhile() {
        var state = ConnectionState(limits: ConnectionLimits(), now: Self.start)
        state.bytesArrived(now: Self.start)
        #expect(state.received(.head(Self.head("/a")), now: Self.start) == .none)
        #expect(state.received(.end(nil), now: Self.start) == .dispatch(Self.head("/a"), ByteBuffer()))
        let readsWhileAnswering = state.read()
        #expect(readsWhileAnswering)  // a request being answered does not stop reads by itself
        _ = state.received(.head(Self.head("/b")), now: Self.start)
        #expect(state.received(.end(nil), now: Self.start) == .none)
        let readsWhileOneWaits = state.read()
        #expect(!readsWhileOneWaits)  // one is waiting its turn: no more bytes until it is answered
        let releasedBeforeItsTurn = state.releaseHeldRead()
        #expect(!releasedBeforeItsTurn)
        #expect(state.answered(now: Self.start, closing: false) == .dispatch(Self.head("/b"), ByteBuffer()))
        let releasedOnceDispatched = state.releaseHeldRead()
        #expect(releasedOnceDispatched)
        #expect(state.answered(now: Self.start + .seconds(1), closing: false) == .none)
        #expect(state.idleDeadline == Self.start + .seconds(1) + ConnectionLimits().idleTimeout)
    }

    @Test func aClientThatDoesNotReadItsAnswersIsNeitherAnsweredNorRead() {
        var state = ConnectionState(limits: ConnectionLimits(), now: Self.start)
        #expect(state.writabilityChanged(false) == .none)
        let readsWhileNotWritable = state.read()
        #expect(!readsWhileNotWritable)
        _ = state.received(.head(Self.head("/a")), now: Self.start)
        #expect(state.received(.end(nil), now: Self.start) == .none)
        #expect(state.writabilityChanged(true) == .dispatch(Self.head("/a"), ByteBuffer()))
        let releasedWhenWritable = state.releaseHeldRead()
        #expect(releasedWhenWritable)
    }

    @Test func aRequestIsTimedFromItsFirstByteAndAnIdleOneFromItsLastAnswer() {
        var limits = ConnectionLimits()
        limits.requestTimeout = .seconds(10)
        limits.idleTimeout = .seconds(60)
        var state = ConnectionState(limits: limits, now: Self.start)
        #expect(state.nextDeadline == Self.start + .seconds(60))
        state.bytesArrived(now: Self.start + .seconds(5))
        #expect(state.nextDeadline == Self.start + .seconds(15))
        #expect(state.deadlinePassed(now: Self.start + .seconds(14)) == .none)
        #expect(state.deadlinePassed(now: Self.start + .seconds(15))
            == .reject(.requestTimeout, "the request was not complete within the time allowed"))
        // Nothing more is read or answered after an error answer.
        #expect(state.received(.head(Self.head("/a")), now: Self.start + .seconds(16)) == .none)
        #expect(state.received(.end(nil), now: Self.start + .seconds(16)) == .none)
    }

    @Test func anErrorWhileAnotherAnswerIsUnderWayClosesWithoutASecondAnswer() {
        var state = ConnectionState(limits: ConnectionLimits(), now: Self.start)
        _ = state.received(.head(Self.head("/a")), now: Self.start)
        _ = state.received(.end(nil), now: Self.start)
        #expect(state.received(.head(Self.head("/b", ["Host": "a", "transfer-encoding": "gzip"])), now: Self.start) == .close)
        #expect(state.answered(now: Self.start, closing: false) == .none)
    }

    @Test func shutdownClosesAnIdleConnectionAndLetsABusyOneFinishItsAnswer() {
        var idle = ConnectionState(limits: ConnectionLimits(), now: Self.start)
        #expect(idle.shutdown() == .close)
        var busy = ConnectionState(limits: ConnectionLimits(), now: Self.start)
        _ = busy.received(.head(Self.head("/a")), now: Self.start)
        _ = busy.received(.end(nil), now: Self.start)
        #expect(busy.shutdown() == .none)
        #expect(busy.shuttingDown)  // the answer says Connection: close
        #expect(busy.answered(now: Self.start, closing: true) == .none)
        #expect(busy.finished)
    }

    // MARK: - The pipeline on an embedded channel

    /// The server's two handlers on an embedded channel, with one endpoint that answers "hi".
    static func channel(limits: ConnectionLimits = ConnectionLimits()) throws -> EmbeddedChannel {
        var router = Router()
        router.addImmediate(.GET, "/hello") { _ in
            Response(status: .ok, headers: ["Content-Type": "text/plain"], body: ByteBuffer(string: "hi"))
        }
        router.addImmediate(.POST, "/hello") { request in
            Response(status: .created, headers: ["Content-Type": "text/plain"], body: request.body)
        }
        let responder = Responder(router: router, logger: Logger(label: "test"))
        let channel = EmbeddedChannel()
        let connection = HTTPConnection(responder: responder, hub: EventHub(), limits: limits, loop: channel.eventLoop)
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderListSize = limits.maximumHeaderBytes
        let decoder = TimedRequestDecoder(limits: decoderLimits) { [unowned connection] in connection.bytesArrived() }
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
        try channel.pipeline.syncOperations.addHandler(connection)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    static func send(_ channel: EmbeddedChannel, _ text: String) throws {
        try channel.writeInbound(ByteBuffer(string: text))
    }

    static func answers(_ channel: EmbeddedChannel) throws -> [String] {
        var answers: [String] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { answers.append(String(buffer: buffer)) }
        return answers
    }

    @Test func anAnswerIsOneWriteOfItsStatusHeadersAndBody() throws {
        let channel = try Self.channel()
        try Self.send(channel, "GET /hello HTTP/1.1\r\nHost: cafe\r\nX-Request-Id: r1\r\n\r\n")
        #expect(try Self.answers(channel) == [
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Request-Id: r1\r\n"
                + "X-Content-Type-Options: nosniff\r\n\r\nhi"])
        try Self.send(channel, "HEAD /hello HTTP/1.1\r\nHost: cafe\r\nX-Request-Id: r2\r\nConnection: close\r\n\r\n")
        #expect(try Self.answers(channel) == [
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Request-Id: r2\r\n"
                + "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"])
        #expect(!channel.isActive)
    }

    @Test func pipelinedRequestsInOneReadAreAnsweredInOrder() throws {
        let channel = try Self.channel()
        try Self.send(channel, "POST /hello HTTP/1.1\r\nHost: cafe\r\nX-Request-Id: a\r\nContent-Length: 3\r\n\r\none"
                        + "POST /hello HTTP/1.1\r\nHost: cafe\r\nX-Request-Id: b\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"
                        + "GET /nowhere HTTP/1.1\r\nHost: cafe\r\nX-Request-Id: c\r\n\r\n")
        let answers = try Self.answers(channel)
        #expect(answers.count == 3)
        #expect(answers[0].hasPrefix("HTTP/1.1 201 Created\r\n") && answers[0].contains("X-Request-Id: a\r\n") && answers[0].hasSuffix("one"))
        #expect(answers[1].hasPrefix("HTTP/1.1 201 Created\r\n") && answers[1].contains("X-Request-Id: b\r\n") && answers[1].hasSuffix("two"))
        #expect(answers[2].hasPrefix("HTTP/1.1 404 Not Found\r\n") && answers[2].contains("X-Request-Id: c\r\n"))
        #expect(channel.isActive)
    }

    @Test func aRequestIncompleteAtItsDeadlineIs408AndTheConnectionCloses() throws {
        var limits = ConnectionLimits()
        limits.requestTimeout = .seconds(10)
        let channel = try Self.channel(limits: limits)
        try Self.send(channel, "GET /hello HTTP/1.1\r\nHost: ca")
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(try Self.answers(channel).isEmpty)
        try Self.send(channel, "fe\r\n")  // more bytes of the same request do not move its deadline
        channel.embeddedEventLoop.advanceTime(by: .seconds(1) + LoopDeadlines.resolution * 2)
        let answers = try Self.answers(channel)
        #expect(answers.count == 1)
        #expect(answers.first?.hasPrefix("HTTP/1.1 408 Request Timeout\r\nContent-Type: application/problem+json\r\n") == true)
        #expect(answers.first?.contains("Connection: close\r\n") == true)
        #expect(!channel.isActive)
    }

    @Test func anIdleConnectionClosesAtItsTimeoutCountedFromItsLastAnswer() throws {
        var limits = ConnectionLimits()
        limits.idleTimeout = .seconds(60)
        let channel = try Self.channel(limits: limits)
        channel.embeddedEventLoop.advanceTime(by: .seconds(50))
        try Self.send(channel, "GET /hello HTTP/1.1\r\nHost: cafe\r\n\r\n")
        #expect(try Self.answers(channel).count == 1)
        channel.embeddedEventLoop.advanceTime(by: .seconds(59))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1) + LoopDeadlines.resolution * 2)
        #expect(!channel.isActive)
        #expect(try Self.answers(channel).isEmpty)  // closed without an answer
    }

    @Test func aBodyAnnouncedOverTheLimitIs413BeforeItIsRead() throws {
        var limits = ConnectionLimits()
        limits.maximumBodyBytes = 10
        let channel = try Self.channel(limits: limits)
        try Self.send(channel, "POST /hello HTTP/1.1\r\nHost: cafe\r\nContent-Length: 11\r\n\r\n")
        let answers = try Self.answers(channel)
        #expect(answers.first?.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n") == true)
        #expect(!channel.isActive)
    }

    @Test func bytesThatAreNotHTTPAre400AndTheConnectionCloses() throws {
        let channel = try Self.channel()
        try? Self.send(channel, "GET /hello HTTP/1.1\r\nHost cafe\r\n\r\n")
        let answers = try Self.answers(channel)
        #expect(answers.count == 1)
        #expect(answers.first?.hasPrefix("HTTP/1.1 400 Bad Request\r\n") == true)
        #expect(answers.first?.contains(#""detail":"the request is not valid HTTP/1.1""#) == true)
        #expect(!channel.isActive)
    }

    @Test func expectContinueIsAnsweredBeforeTheBody() throws {
        let channel = try Self.channel()
        try Self.send(channel, "POST /hello HTTP/1.1\r\nHost: cafe\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        #expect(try Self.answers(channel) == ["HTTP/1.1 100 Continue\r\n\r\n"])
        try Self.send(channel, "ok")
        #expect(try Self.answers(channel).first?.hasPrefix("HTTP/1.1 201 Created\r\n") == true)
    }
}
