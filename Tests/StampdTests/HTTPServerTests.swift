// The HTTP/1.1 layer over real sockets: routing, keep-alive, pipelining, limits, timeouts, shutdown.
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import StampCore
import StampHTTP
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2))) struct HTTPServerTests {
    @Test func healthAndReadinessAnswer() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let health = try await client.request("GET", "/healthz")
        #expect(health.status == 200)
        #expect(health.value("status") as? String == "ok")
        #expect(health.header("x-request-id")?.isEmpty == false)
        let ready = try await client.request("GET", "/readyz")
        #expect(ready.status == 200)
        client.close()
        try await server.stop()
    }

    @Test func metricsAreServedOnTheirOwnListenerAndNotOnThePublicOne() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        #expect(try await client.request("GET", "/metrics").status == 404)
        client.close()
        var configuration = ServerConfiguration()
        configuration.port = 0
        configuration.readyMessage = "metrics served"
        let metrics = HTTPServer(configuration: configuration,
                                 responder: Application.metricsResponder(metricsText: { "stampd_up 1\n" }, logger: Logger(label: "test")),
                                 hub: EventHub(), logger: Logger(label: "test"))
        let group = ServiceGroup(services: [metrics], gracefulShutdownSignals: [], logger: Logger(label: "test"))
        let task = Task { try await group.run() }
        let address = try await metrics.listeningAddress()
        let scraper = try await TestClient.connect(port: address.port!)
        let answer = try await scraper.request("GET", "/metrics")
        #expect(answer.status == 200)
        #expect(answer.header("content-type")?.hasPrefix("text/plain") == true)
        #expect(answer.text == "stampd_up 1\n")
        scraper.close()
        await group.triggerGracefulShutdown()
        try await task.value
        try await server.stop()
    }

    @Test func aListenerWhosePortIsTakenEndsTheGroupWithTheOtherListenerClosed() async throws {
        let taken = try await TestServer.start()
        func listener(port: Int) -> HTTPServer {
            var configuration = ServerConfiguration()
            configuration.port = port
            return HTTPServer(configuration: configuration,
                              responder: Application.metricsResponder(metricsText: { "" }, logger: Logger(label: "test")),
                              hub: EventHub(), logger: Logger(label: "test"))
        }
        let other = listener(port: 0)
        let group = ServiceGroup(services: [other, listener(port: taken.port)], gracefulShutdownSignals: [],
                                 logger: Logger(label: "test"))
        // Before the fix the group waited forever on the other listener's close.
        await #expect(throws: (any Error).self) { try await group.run() }
        let address = try await other.listeningAddress()
        await #expect(throws: (any Error).self) { try await TestClient.connect(port: address.port!) }
        try await taken.stop()
    }

    @Test func waitingForACloseFailsWhenTheServerKeepsTheConnectionOpen() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        #expect(try await client.request("GET", "/healthz").status == 200)
        #expect(await client.waitForClose(seconds: 0.3) == false)
        try await server.stop()
    }

    @Test func pagesForbidFramingAndEveryAnswerForbidsSniffing() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let page = try await client.request("GET", "/")
        let policy = page.header("content-security-policy") ?? ""
        for directive in ["frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"] { #expect(policy.contains(directive)) }
        #expect(page.header("x-frame-options") == "DENY")
        #expect(page.header("x-content-type-options") == "nosniff")
        #expect(try await client.request("GET", "/v1/me").header("x-content-type-options") == "nosniff")
        #expect(try await client.request("GET", "/healthz").header("x-content-type-options") == "nosniff")
        client.close()
        let broken = try await server.connect()
        try await broken.send("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        let refused = try await broken.readResponse()
        #expect(refused.status == 400)
        #expect(refused.header("x-content-type-options") == "nosniff")
        broken.close()
        try await server.stop()
    }

    @Test func anUnknownPathIsANotFoundProblem() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let response = try await client.request("GET", "/v1/nothing-here")
        #expect(response.status == 404)
        #expect(response.header("content-type") == "application/problem+json")
        #expect(response.int("status") == 404)
        #expect(response.value("title") as? String == "Not Found")
        client.close()
        try await server.stop()
    }

    @Test func aWrongMethodIs405WithAllow() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let response = try await client.request("PUT", "/v1/stores/abc")
        #expect(response.status == 405)
        #expect(response.header("allow") == "GET, HEAD, PATCH")
        client.close()
        try await server.stop()
    }

    @Test func aCallerChosenRequestIdIsEchoed() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let response = try await client.request("GET", "/healthz", headers: ["X-Request-Id": "trace-42"])
        #expect(response.header("x-request-id") == "trace-42")
        client.close()
        try await server.stop()
    }

    @Test func keepAliveServesManyRequestsOnOneConnection() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        for _ in 0..<20 {
            #expect(try await client.request("GET", "/healthz").status == 200)
        }
        client.close()
        try await server.stop()
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        try await client.send(TestClient.raw("GET", "/healthz", headers: ["X-Request-Id": "one"])
                              + TestClient.raw("GET", "/nope", headers: ["X-Request-Id": "two"])
                              + TestClient.raw("GET", "/readyz", headers: ["X-Request-Id": "three"]))
        let first = try await client.readResponse()
        let second = try await client.readResponse()
        let third = try await client.readResponse()
        let ids = [first, second, third].map { $0.header("x-request-id") ?? "" }
        let statuses = [first, second, third].map(\.status)
        #expect(ids == ["one", "two", "three"])
        #expect(statuses == [200, 404, 200])
        client.close()
        try await server.stop()
    }

    @Test func http10WithoutKeepAliveIsClosedAfterTheAnswer() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        try await client.send("GET /healthz HTTP/1.0\r\n\r\n")
        #expect(try await client.readResponse().status == 200)
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func aTooLargeBodyIs413AndTheConnectionCloses() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        try await client.send("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n")
        let response = try await client.readResponse()
        #expect(response.status == 413)
        #expect(response.header("content-type") == "application/problem+json")
        #expect(response.header("connection") == "close")
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func aTooLargeChunkedBodyIs413() async throws {
        let server = try await TestServer.start { configuration, _ in configuration.limits.maximumBodyBytes = 1000 }
        let client = try await server.connect()
        let chunk = String(repeating: "a", count: 800)
        try await client.send("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                              + "320\r\n\(chunk)\r\n320\r\n\(chunk)\r\n0\r\n\r\n")
        #expect(try await client.readResponse().status == 413)
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func tooLargeHeadersAre431() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let big = String(repeating: "x", count: 17 * 1024)
        try await client.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n")
        let response = try await client.readResponse()
        #expect(response.status == 431)
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func malformedRequestsAre400AndClosed() async throws {
        let server = try await TestServer.start()
        for garbage in ["NOT HTTP AT ALL\r\n\r\n", "GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
                        "GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
                        "GET /healthz HTTP/1.1\r\n\r\n",
                        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                        "GET /healthz HTTP/1.1\r\nHost: a b@c\r\n\r\n"] {
            let client = try await server.connect()
            try await client.send(garbage)
            let response = try await client.readResponse()
            #expect(response.status == 400, "for \(garbage.debugDescription)")
            #expect(await client.waitForClose())
        }
        // The server still serves others.
        let client = try await server.connect()
        #expect(try await client.request("GET", "/healthz").status == 200)
        client.close()
        try await server.stop()
    }

    @Test func aBrokenPercentEncodingIs400() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        #expect(try await client.request("GET", "/v1/stores/%zz").status == 400)
        #expect(try await client.request("GET", "/v1/stores?q=%FF%FE").status == 400)
        client.close()
        try await server.stop()
    }

    @Test func aSlowRequestGets408AndIsClosed() async throws {
        let server = try await TestServer.start { configuration, _ in
            configuration.limits.requestTimeout = .milliseconds(300)
        }
        let client = try await server.connect()
        try await client.send("GET /healthz HTTP/1.1\r\nHost: x\r\n")  // never finished
        let response = try await client.readResponse()
        #expect(response.status == 408)
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func anIdleKeepAliveConnectionIsClosed() async throws {
        // Long enough that a busy machine still reads the request before the connection counts as idle.
        let server = try await TestServer.start { configuration, _ in configuration.limits.idleTimeout = .seconds(1) }
        let client = try await server.connect()
        #expect(try await client.request("GET", "/healthz").status == 200)
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func aParkedPollOutlivesTheIdleTimeout() async throws {
        // Idle long enough that a busy machine still sends the request before the connection
        // counts as idle; the poll lasts four times as long.
        let server = try await TestServer.start { configuration, _ in configuration.limits.idleTimeout = .seconds(1) }
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let started = Date()
        let response = try await client.request("GET", "/v1/events?timeout=3", token: owner.token)
        #expect(response.status == 200)
        #expect(Date().timeIntervalSince(started) >= 2.9)
        client.close()
        try await server.stop()
    }

    @Test func shutdownLetsAnInFlightRequestFinish() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let body = #"{"role":"owner","login":"late-owner","password":"correct horse","name":"Late"}"#
        // The head and half the body are in when the shutdown starts.
        try await client.send("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              + "Expect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + String(body.prefix(20)))
        #expect(try await client.readContinue() == 100)
        await server.beginShutdown()
        await server.hub.waitUntilShutDown()
        try await client.send(String(body.dropFirst(20)))
        let response = try await client.readResponse()
        #expect(response.status == 201)
        #expect(await client.waitForClose())
        try await server.stop()
        // It is durable: a new server on the same file knows the account.
        let again = try await TestServer.start(databasePath: server.databasePath)
        let login = try await again.connect()
        let session = try await login.request("POST", "/v1/sessions", json: ["login": "late-owner", "password": "correct horse"])
        #expect(session.status == 201)
        login.close()
        try await again.stop()
    }

    @Test func workPastTheBoundIsRefusedWith503AndRetryAfterWhileFinishingWorkAndPollsGetIn() async throws {
        // Endpoints that stay at work until the test lets them go, on a gate of one place (and one in reserve).
        let entered = AsyncStream<String>.makeStream()
        let release = Latch()
        var router = Router()
        router.add(.POST, "/work") { _ in
            entered.continuation.yield("work")
            await release.wait()
            return .response(.json(["done": true]))
        }
        router.add(.POST, "/finish", admission: .finishing) { _ in
            entered.continuation.yield("finish")
            await release.wait()
            return .response(.json(["done": true]))
        }
        router.add(.GET, "/always", admission: .always) { _ in .response(.json(["done": true])) }
        let gate = AdmissionGate(limit: 1)
        var configuration = ServerConfiguration()
        configuration.port = 0
        let server = HTTPServer(configuration: configuration, responder: Responder(router: router, gate: gate, logger: Logger(label: "test")),
                                hub: EventHub(), logger: Logger(label: "test"))
        let group = ServiceGroup(services: [server], gracefulShutdownSignals: [], logger: Logger(label: "test"))
        let task = Task { try await group.run() }
        let port = try await server.listeningAddress().port!
        var arrivals = entered.stream.makeAsyncIterator()

        let first = try await TestClient.connect(port: port)
        try await first.send(TestClient.raw("POST", "/work"))
        #expect(await arrivals.next() == "work")
        // The one place is taken: new work is refused at once, before its endpoint runs.
        let second = try await TestClient.connect(port: port)
        let refused = try await second.request("POST", "/work")
        #expect(refused.status == 503)
        #expect(refused.header("retry-after") == "1")
        #expect(refused.header("content-type") == "application/problem+json")
        // Finishing work takes the reserve; past it, it is refused too. Polls and health checks always get in.
        let finishing = try await TestClient.connect(port: port)
        try await finishing.send(TestClient.raw("POST", "/finish"))
        #expect(await arrivals.next() == "finish")
        #expect(try await second.request("POST", "/finish").status == 503)
        #expect(try await second.request("GET", "/always").status == 200)
        #expect(try await second.request("GET", "/healthz").status == 404)  // not on this router: answered from memory all the same
        #expect(gate.current == 2)

        release.open()
        #expect(try await first.readResponse().status == 200)
        #expect(try await finishing.readResponse().status == 200)
        // The places are given back once the answers are written.
        #expect(try await second.request("POST", "/work").status == 200)
        #expect(gate.current == 0)
        for client in [first, second, finishing] { client.close() }
        await group.triggerGracefulShutdown()
        try await task.value
    }

    @Test func connectionsOverTheCapAreRefusedWith503() async throws {
        let server = try await TestServer.start { configuration, _ in configuration.maximumConnections = 2 }
        let first = try await server.connect()
        let second = try await server.connect()
        #expect(try await first.request("GET", "/healthz").status == 200)
        #expect(try await second.request("GET", "/healthz").status == 200)
        let third = try await server.connect()
        let refused = try await third.readResponse()
        #expect(refused.status == 503)
        #expect(await third.waitForClose())
        first.close()
        second.close()
        try await server.stop()
    }
}

/// A gate the test opens once: every `wait` before or after `open` returns once it is open.
final class Latch: Sendable {
    private let state = Mutex<(open: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func open() {
        state.withLock { state in
            state.open = true
            defer { state.waiting.removeAll() }
            return state.waiting
        }.forEach { $0.resume() }
    }
}
