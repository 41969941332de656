// Two stampd instances on one PostgreSQL database (two servers in this process, each with its
// own hub, session cache and notification listener, on one schema): a write on one is heard by
// the other.
import Foundation
import PostgresDB
import Storage
@testable import StampCore
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2)), .enabled(if: TestStorage.isPostgres, "needs STAMPD_TEST_POSTGRES_URL"))
struct InstanceTests {
    /// A and B on one database.
    func pair() async throws -> (TestServer, TestServer) {
        let a = try await TestServer.start()
        // One wall clock, as two instances on one network have.
        let b = try await TestServer.start(databasePath: a.databasePath, clock: a.clock)
        return (a, b)
    }

    @Test func aPollParkedOnOneInstanceIsWokenByARequestMadeOnTheOther() async throws {
        let (a, b) = try await pair()
        let owner = try await a.signUp("owner")
        let customer = try await a.signUp("customer")
        let store = try await a.createStore(owner)
        let poller = try await b.connect()
        let first = try await poller.request("GET", "/v1/events?timeout=0", token: owner.token)
        let cursor = try first.string("cursor")
        try await poller.send(TestClient.raw("GET", "/v1/events?timeout=20&after=\(cursor)", token: owner.token))
        await b.hub.waitUntilParked(1)
        let requested = Date()
        let request = try await a.askForStamps(customer, store: store)
        let answer = try await poller.readResponse()
        let latency = Date().timeIntervalSince(requested)
        #expect(answer.status == 200)
        #expect(answer.value("events", 0, "type") as? String == "request.created")
        #expect((answer.value("events", 0, "data", "request", "id") as? String) == request)
        // Woken by the notification, not by the poll's 20 s timeout (typically a few ms).
        #expect(latency < 2, "woken after \(latency) s")
        print("a poll on B answered \(Int(latency * 1000)) ms after the request was made on A")
        poller.close()
        try await b.stop()
        try await a.stop()
    }

    /// 1,000 events written alternately through A and B while the owner re-polls as fast as it
    /// can on both: each poller sees every event once, in order.
    @Test func eventsWrittenThroughBothAreSeenOnceInOrderByPollersOnBoth() async throws {
        let (a, b) = try await pair()
        let owner = try await a.signUp("owner")
        let store = try await a.createStore(owner)
        var people: [TestServer.Person] = []
        for _ in 0..<10 { people.append(try await a.signUp("customer")) }
        let customers = people
        let total = 1_000
        let start = try await (try await a.connect()).request("GET", "/v1/events?timeout=0", token: owner.token)
        let cursor = try start.string("cursor")
        func collect(on server: TestServer) -> Task<[Int], any Error> {
            Task {
                let client = try await server.connect()
                defer { client.close() }
                var seen: [Int] = []
                var after = cursor
                while seen.count < total {
                    let answer = try await client.request("GET", "/v1/events?timeout=10&limit=1000&after=\(after)", token: owner.token)
                    try #require(answer.status == 200, "\(answer.text)")
                    for event in answer.value("events") as? [[String: Any]] ?? [] {
                        seen.append(Int(event["id"] as? String ?? "") ?? -1)
                    }
                    after = try answer.string("cursor")
                }
                return seen
            }
        }
        let onA = collect(on: a), onB = collect(on: b)
        // Ten customers, each writing through A and B in turn: 1,000 requests in all.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, customer) in customers.enumerated() {
                group.addTask {
                    let clients = [try await a.connect(), try await b.connect()]
                    defer { clients.forEach { $0.close() } }
                    for n in 0..<(total / customers.count) {
                        let client = clients[(n + index) % 2]
                        let made = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                                            json: ["kind": "stamp"])
                        try #require(made.status == 201, "\(made.text)")
                    }
                }
            }
            try await group.waitForAll()
        }
        let seenOnA = try await onA.value, seenOnB = try await onB.value
        let stored = try await a.database.read { session in
            try await session.query("SELECT seq FROM events WHERE account_id = ? ORDER BY seq", owner.id) { try $0.get(0, as: Int.self) }
        }
        #expect(stored.count == total)
        #expect(seenOnA == stored)
        #expect(seenOnB == stored)
        try await b.stop()
        try await a.stop()
    }

    @Test func aSessionRevokedThroughOneInstanceIsRefusedByTheOther() async throws {
        let (a, b) = try await pair()
        let customer = try await a.signUp("customer")
        let client = try await b.connect()
        // B checks the session once and remembers it.
        #expect(try await client.request("GET", "/v1/me", token: customer.token).status == 200)
        let poller = try await b.connect()
        try await poller.send(TestClient.raw("GET", "/v1/events?timeout=20", token: customer.token))
        await b.hub.waitUntilParked(1)
        let signOut = try await a.connect()
        #expect(try await signOut.request("DELETE", "/v1/sessions/current", token: customer.token).status == 204)
        // B hears the revocation: its parked poll answers 401, and so does the next request.
        #expect(try await poller.readResponse().status == 401)
        #expect(try await client.request("GET", "/v1/me", token: customer.token).status == 401)
        signOut.close()
        poller.close()
        client.close()
        try await b.stop()
        try await a.stop()
    }

    /// Wrong passwords counted on A and on B lock the pair on both.
    @Test func aLoginLockHoldsAcrossInstances() async throws {
        let (a, b) = try await pair()
        _ = try await a.signUp("customer", "shared-lock@example.com")
        let onA = try await a.connect(), onB = try await b.connect()
        for attempt in 0..<5 {
            let client = attempt.isMultiple(of: 2) ? onA : onB
            #expect(try await client.request("POST", "/v1/sessions",
                                             json: ["login": "shared-lock@example.com", "password": "wrong password"]).status == 401)
        }
        for client in [onA, onB] {
            let locked = try await client.request("POST", "/v1/sessions", json: ["login": "shared-lock@example.com", "password": "correct horse"])
            #expect(locked.status == 429)
            #expect(Int(locked.header("retry-after") ?? "") ?? 0 > 800)
        }
        onA.close()
        onB.close()
        try await b.stop()
        try await a.stop()
    }

    /// The owner's tablet polls A, the barista's polls B: a request made on either reaches both,
    /// the barista's decision reaches the owner, and the owner's late decision is 409 naming him.
    @Test func membersOnTwoInstancesShareOneQueueAndOneDecision() async throws {
        let (a, b) = try await pair()
        let owner = try await a.signUp("owner", name: "Olga")
        let store = try await a.createStore(owner)
        let barista = try await b.addStaff(to: store, owner: owner, name: "Ben")
        let customer = try await a.signUp("customer")
        let onA = try await a.connect(), onB = try await b.connect()
        let ownerCursor = try await onA.request("GET", "/v1/events?timeout=0", token: owner.token).string("cursor")
        let baristaCursor = try await onB.request("GET", "/v1/events?timeout=0", token: barista.token).string("cursor")
        try await onA.send(TestClient.raw("GET", "/v1/events?timeout=20&after=\(ownerCursor)", token: owner.token))
        try await onB.send(TestClient.raw("GET", "/v1/events?timeout=20&after=\(baristaCursor)", token: barista.token))
        await a.hub.waitUntilParked(1)
        await b.hub.waitUntilParked(1)
        let request = try await a.askForStamps(customer, store: store)
        for client in [onA, onB] {
            let answer = try await client.readResponse()
            #expect(answer.value("events", 0, "type") as? String == "request.created")
            #expect(answer.value("events", 0, "data", "request", "id") as? String == request)
        }
        let next = try await onA.request("GET", "/v1/events?timeout=0", token: owner.token).string("cursor")
        try await onA.send(TestClient.raw("GET", "/v1/events?timeout=20&after=\(next)", token: owner.token))
        await a.hub.waitUntilParked(1)
        #expect(try await b.approve(barista, request).status == 200)
        let told = try await onA.readResponse()
        #expect(told.value("events", 0, "type") as? String == "request.approved")
        #expect(told.value("events", 0, "data", "request", "decidedBy", "name") as? String == "Ben")
        let late = try await a.approve(owner, request)
        #expect(late.status == 409 && late.value("request", "decidedBy", "name") as? String == "Ben")
        onA.close()
        onB.close()
        try await b.stop()
        try await a.stop()
    }

    /// Wrong counter codes sent to A and to B count against one allowance; removing a barista
    /// through A signs them out on B at once.
    @Test func counterCodeMissesAndRemovalsHoldAcrossInstances() async throws {
        let (a, b) = try await pair()
        let owner = try await a.signUp("owner")
        let store = try await a.createStore(owner)
        let customer = try await a.signUp("customer")
        let onA = try await a.connect(), onB = try await b.connect()
        let code = try await onA.request("GET", "/v1/stores/\(store)/counter-code", token: owner.token).string("code")
        #expect(try await onB.request("GET", "/v1/stores/\(store)/counter-code", token: owner.token).string("code") == code)
        let wrong = code == "000000" ? "000001" : "000000"
        for attempt in 0..<5 {
            let client = attempt.isMultiple(of: 2) ? onA : onB
            #expect(try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                             json: ["kind": "stamp", "counterCode": wrong]).status == 422)
        }
        for client in [onA, onB] {
            #expect(try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                             json: ["kind": "stamp", "counterCode": code]).status == 429)
        }

        let barista = try await a.addStaff(to: store, owner: owner)
        #expect(try await onB.request("GET", "/v1/stores/\(store)/requests", token: barista.token).status == 200)
        let cursor = try await onB.request("GET", "/v1/events?timeout=0", token: barista.token).string("cursor")
        try await onB.send(TestClient.raw("GET", "/v1/events?timeout=20&after=\(cursor)", token: barista.token))
        await b.hub.waitUntilParked(1)
        #expect(try await onA.request("DELETE", "/v1/stores/\(store)/members/\(barista.id)", token: owner.token).status == 204)
        #expect(try await onB.readResponse().status == 401)
        #expect(try await onB.request("GET", "/v1/stores/\(store)/requests", token: barista.token).status == 401)
        onA.close()
        onB.close()
        try await b.stop()
        try await a.stop()
    }

    /// Housekeeping runs on one instance at a time; another takes the next round.
    @Test func onlyOneInstanceHousekeepsAtATime() async throws {
        let (a, b) = try await pair()
        let inside = AsyncSignal(), release = AsyncSignal()
        let first = Task {
            try await a.database.exclusively("housekeeping") {
                inside.fire()
                await release.wait()
            }
        }
        await inside.wait()
        #expect(try await b.database.exclusively("housekeeping") {} == false)
        release.fire()
        #expect(try await first.value == true)
        #expect(try await b.database.exclusively("housekeeping") {} == true)
        try await b.stop()
        try await a.stop()
    }
}
