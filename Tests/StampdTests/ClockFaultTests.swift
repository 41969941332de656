// The wall clock jumping under a running server: an hour back and a day forward. The server
// reads the time through a ForwardClock as the executable does: a step back lengthens no
// duration (it is caught up slowly), a step forward is followed, and a start on a clock behind
// the database goes on from the newest time it holds. (Poll timeouts, connection deadlines and
// the hub's waits run on NIO's monotonic clock and never see the wall clock.)
import Foundation
import StampCore
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2))) struct ForwardClockTests {
    @Test func theClockFollowsTheWallClockForwardAndAStepForwardIsFollowed() {
        let manual = ManualClock(Date(timeIntervalSince1970: 1_800_000_000))
        let steps = Mutex<[Double]>([])
        let clock = manual.forward { step in steps.withLock { $0.append(step) } }
        manual.advance(by: 10)
        #expect(clock.now() == manual.now())
        manual.stepWall(by: 86_400)
        #expect(clock.now() == manual.now())
        #expect(steps.withLock { $0 } == [86_400])
    }

    @Test func aStepBackNeverTurnsTheClockBackAndIsCaughtUpAtTheCatchUpRate() {
        let manual = ManualClock(Date(timeIntervalSince1970: 1_800_000_000))
        let steps = Mutex<[Double]>([])
        let clock = manual.forward { step in steps.withLock { $0.append(step) } }
        let before = clock.now()
        manual.stepWall(by: -3600)
        #expect(clock.now() == before)
        manual.advance(by: 100)
        let slow = clock.now().timeIntervalSince(before)
        #expect(abs(slow - 100 * (1 - ForwardClock.catchUpRate)) < 0.001, "\(slow)")
        #expect(steps.withLock { $0 } == [-3600])
        #expect(abs(clock.wallBehind - (3600 - 100 * ForwardClock.catchUpRate)) < 0.001)
        // An hour is caught up after an hour / rate of real time, then the wall clock leads again.
        manual.advance(by: 3600 / ForwardClock.catchUpRate)
        #expect(clock.now() == manual.now())
        manual.advance(by: 10)
        #expect(clock.now() == manual.now())
        #expect(clock.wallBehind == 0)
    }

    @Test func aClockStartedBehindTheNewestRecordedTimeStartsThere() {
        let manual = ManualClock(Date(timeIntervalSince1970: 1_800_000_000))
        let clock = manual.forward()
        let newest = manual.now().addingTimeInterval(3600)
        clock.notBefore(newest)
        #expect(clock.now() >= newest)
        manual.advance(by: 60)
        #expect(clock.now() > newest && clock.now() < manual.now().addingTimeInterval(3600))
    }
}

@Suite(.timeLimit(.minutes(2))) struct ClockFaultTests {
    func setUp(_ rules: [String: Any] = [:], ttl: Int = 600) async throws
        -> (TestServer, TestServer.Person, String, TestServer.Person, TestClient) {
        let server = try await TestServer.start(clock: ManualClock(Date(timeIntervalSince1970: 1_800_000_000)), forward: true)
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner, ["rules": rules, "requestTtlSeconds": ttl])
        let customer = try await server.signUp("customer", "clock-\(UUID().uuidString.prefix(8))@example.com", name: "Ben")
        return (server, owner, store, customer, try await server.connect())
    }

    func ask(_ client: TestClient, _ store: String, _ customer: TestServer.Person) async throws -> TestResponse {
        try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "stamp"])
    }

    func status(_ client: TestClient, _ request: String, _ customer: TestServer.Person) async throws -> String? {
        try await client.request("GET", "/v1/requests/\(request)", token: customer.token).value("status") as? String
    }

    /// Real seconds that pass `seconds` of the server's clock while it catches up a step back.
    func caughtUp(_ seconds: Double) -> Double { seconds / (1 - ForwardClock.catchUpRate) }

    @Test func anHourBackLengthensNoCooldownNoRequestLifetimeAndNoSignInLock() async throws {
        let (server, owner, store, customer, client) = try await setUp(["stampCooldownSeconds": 300, "pendingPerCustomer": 3])
        let first = try await ask(client, store, customer)
        #expect(try await server.approve(owner, try first.string("id")).status == 200)
        let pending = try await ask(client, store, customer)
        #expect(pending.status == 429)  // within the cool-down
        _ = try await server.signUp("customer", "clock-lock@example.com")
        for _ in 0..<5 {
            #expect(try await client.request("POST", "/v1/sessions",
                                             json: ["login": "clock-lock@example.com", "password": "wrong password"]).status == 401)
        }
        #expect(try await client.request("POST", "/v1/sessions",
                                         json: ["login": "clock-lock@example.com", "password": "correct horse"]).status == 429)

        server.clock.stepWall(by: -3600)
        // The cool-down ends 300 s of the server's clock after the approval, not an hour later.
        server.clock.advance(by: caughtUp(290))
        #expect(try await ask(client, store, customer).status == 429)
        server.clock.advance(by: caughtUp(11))
        let second = try await ask(client, store, customer)
        #expect(second.status == 201, "\(second.text)")
        // Its lifetime of 600 s is 600 s of the server's clock.
        let id = try second.string("id")
        server.clock.advance(by: caughtUp(599))
        _ = try await server.service.expireDueRequests()
        #expect(try await status(client, id, customer) == "pending")
        server.clock.advance(by: caughtUp(2))
        _ = try await server.service.expireDueRequests()
        #expect(try await status(client, id, customer) == "expired")
        // The sign-in lock (15 minutes from the fifth failure) is over 16 minutes on, not in an hour.
        server.clock.advance(by: caughtUp(60))
        #expect(try await client.request("POST", "/v1/sessions",
                                         json: ["login": "clock-lock@example.com", "password": "correct horse"]).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func aDayForwardIsFollowed() async throws {
        let (server, owner, store, customer, client) = try await setUp(ttl: 600)
        let pending = try await ask(client, store, customer)
        #expect(pending.status == 201)
        server.clock.stepWall(by: 86_400)
        // A day has passed as far as anyone can tell: the request expired, the 30-day token holds.
        _ = try await server.service.expireDueRequests()
        #expect(try await status(client, try pending.string("id"), customer) == "expired")
        #expect(try await client.request("GET", "/v1/me", token: customer.token).status == 200)
        // The counter code is the new minute's, and the server that shows it accepts it.
        let code = try await client.request("GET", "/v1/stores/\(store)/counter-code", token: owner.token).string("code")
        let atCounter = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                                 json: ["kind": "stamp", "counterCode": code])
        #expect(atCounter.status == 201 && atCounter.value("atCounter") as? Bool == true, "\(atCounter.text)")
        client.close()
        try await server.stop()
    }

    @Test func aServerStartedOnAClockBehindTheDatabaseGoesOnFromTheNewestRecord() async throws {
        let clock = ManualClock(Date(timeIntervalSince1970: 1_800_000_000))
        let first = try await TestServer.start(clock: clock, forward: true)
        let owner = try await first.signUp("owner", name: "Olga")
        let store = try await first.createStore(owner)
        let customer = try await first.signUp("customer", name: "Ben")
        let request = try await first.askForStamps(customer, store: store)
        try await first.stop()

        clock.stepWall(by: -3600)
        let second = try await TestServer.start(databasePath: first.databasePath, clock: clock, forward: true)
        #expect(second.service.clock.now() >= clock.now().addingTimeInterval(3600))
        let approved = try await second.approve(owner, request)
        #expect(approved.status == 200)
        let created = try #require(approved.value("request", "createdAt") as? String)
        let decided = try #require(approved.value("request", "decidedAt") as? String)
        #expect(decided >= created, "decided \(decided) before created \(created)")
        try await second.stop()
    }
}
