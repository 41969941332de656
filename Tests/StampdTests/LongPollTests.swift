// GET /v1/events over real sockets: immediate answers, parking, waking, timeouts, disconnects,
// the race between commit and park, restarts, retention resets and shutdown.
import Foundation
@testable import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct LongPollTests {
    @Test func aPollWithEventsAnswersAtOnce() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        _ = try await server.askForStamps(customer, store: store)
        let client = try await server.connect()
        let started = Date()
        let response = try await client.request("GET", "/v1/events?timeout=30", token: owner.token)
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(response.value("events", 0, "type") as? String == "request.created")
        #expect(response.value("events", 0, "data", "request", "count") as? Int == 1)
        #expect(response.header("cache-control") == "no-store")
        #expect(try response.string("cursor") == (try response.string("events", 0, "id")))
        client.close()
        try await server.stop()
    }

    /// The answer a woken poll is given from the commit is byte for byte what a read after the
    /// same cursor answers, cut at the poll's limit; the rest follows on the next poll.
    @Test func aPollAnsweredFromTheCommitSaysWhatAReadWouldSay() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let poller = try await server.connect()
        let cursor = try (try await poller.request("GET", "/v1/events?timeout=1", token: owner.token)).string("cursor")
        try await poller.send(TestClient.raw("GET", "/v1/events?timeout=30&limit=2&after=\(cursor)", token: owner.token))
        await server.hub.waitUntilParked(1)
        try await server.service.write { _, outbox in
            for n in 1...3 { try outbox.emit("test.fresh", to: [owner.id], data: ["n": n], at: Date()) }
        }
        let fresh = try await poller.readResponse()
        #expect((fresh.value("events") as? [Any])?.count == 2)
        let reader = try await server.connect()
        let read = try await reader.request("GET", "/v1/events?timeout=1&limit=2&after=\(cursor)", token: owner.token)
        #expect(fresh.text == read.text)
        let rest = try await poller.request("GET", "/v1/events?timeout=1&after=\(try fresh.string("cursor"))", token: owner.token)
        #expect(rest.value("events", 0, "data", "n") as? Int == 3)
        poller.close()
        reader.close()
        try await server.stop()
    }

    @Test func aParkedPollIsWokenByAnotherClientsRequest() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let poller = try await server.connect()
        try await poller.send(TestClient.raw("GET", "/v1/events?timeout=30", token: owner.token))
        await server.hub.waitUntilParked(1)
        let request = try await server.askForStamps(customer, store: store)
        let answer = try await poller.readResponse()
        #expect(answer.value("events", 0, "data", "request", "id") as? String == request)
        // The next poll with the returned cursor parks again.
        try await poller.send(TestClient.raw("GET", "/v1/events?timeout=30&after=\(try answer.string("cursor"))", token: owner.token))
        await server.hub.waitUntilParked(1)
        _ = try await server.approve(owner, request)
        let approved = try await poller.readResponse()
        #expect(approved.value("events", 0, "type") as? String == "request.approved")
        poller.close()
        try await server.stop()
    }

    @Test func aPollTimesOutWithNoEventsAndTheSameCursor() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let response = try await client.request("GET", "/v1/events?timeout=1&after=0", token: owner.token)
        #expect(response.status == 200)
        #expect((response.value("events") as? [Any])?.isEmpty == true)
        #expect(try response.string("cursor") == "0")
        #expect(response.value("reset") as? Bool == false)
        client.close()
        try await server.stop()
    }

    /// A poll woken with nothing new for it (here: every parked poll reads again, as when the
    /// instance feed reconnects) parks again until its first deadline, not a fresh timeout: woken
    /// every 100 ms it still answers after its 2 s.
    @Test func aPollWokenWithNothingNewStillEndsAtItsOwnTimeout() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let started = ContinuousClock.now
        try await client.send(TestClient.raw("GET", "/v1/events?timeout=2&after=0", token: owner.token))
        await server.hub.waitUntilParked(1)
        let waker = Task {
            while !Task.isCancelled && ContinuousClock.now - started < .seconds(8) {
                server.hub.notificationsFlowing()
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let response = try await client.readResponse()
        let elapsed = ContinuousClock.now - started
        waker.cancel()
        #expect(response.status == 200)
        #expect(try response.string("cursor") == "0")
        #expect(elapsed < .seconds(5), "answered after \(elapsed)")
        client.close()
        try await server.stop()
    }

    @Test func preferWaitIsHonouredAndSaidSo() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let response = try await client.request("GET", "/v1/events", token: owner.token, headers: ["Prefer": "wait=1"])
        #expect(response.status == 200)
        #expect(response.header("preference-applied") == "wait=1")
        client.close()
        try await server.stop()
    }

    @Test func everyParkedPollOfAUserWakes() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let phone = try await server.connect()
        let tablet = try await server.connect()
        try await phone.send(TestClient.raw("GET", "/v1/events?timeout=30", token: owner.token))
        try await tablet.send(TestClient.raw("GET", "/v1/events?timeout=30", token: owner.token))
        await server.hub.waitUntilParked(2)
        _ = try await server.askForStamps(customer, store: store)
        #expect(try await phone.readResponse().value("events", 0, "type") as? String == "request.created")
        #expect(try await tablet.readResponse().value("events", 0, "type") as? String == "request.created")
        phone.close()
        tablet.close()
        try await server.stop()
    }

    @Test func aClientThatLeavesFreesItsWaiterAtOnce() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        try await client.send(TestClient.raw("GET", "/v1/events?timeout=50", token: owner.token))
        await server.hub.waitUntilParked(1)
        client.close()
        await server.hub.waitUntilParked(0)
        #expect(server.hub.parkedCount == 0)
        try await server.stop()
    }

    @Test func tooManyParkedPollsForOneAccountIs429() async throws {
        let server = try await TestServer.start(maximumPollsPerAccount: 2)
        let owner = try await server.signUp("owner")
        let first = try await server.connect()
        let second = try await server.connect()
        try await first.send(TestClient.raw("GET", "/v1/events?timeout=30", token: owner.token))
        try await second.send(TestClient.raw("GET", "/v1/events?timeout=30", token: owner.token))
        await server.hub.waitUntilParked(2)
        let third = try await server.connect()
        let refused = try await third.request("GET", "/v1/events?timeout=30", token: owner.token)
        #expect(refused.status == 429)
        #expect(refused.header("retry-after") != nil)
        first.close()
        second.close()
        third.close()
        try await server.stop()
    }

    /// Many events commit while the owner re-polls as fast as it can: each is seen once, in order.
    @Test func everyEventIsSeenExactlyOnceInOrderWhileRepolling() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        var customers: [TestServer.Person] = []
        for _ in 0..<8 { customers.append(try await server.signUp("customer")) }
        let perCustomer = 25
        let total = customers.count * perCustomer
        let poller = try await server.connect()
        async let seen: [Int64] = {
            var ids: [Int64] = []
            var cursor = "0"
            while ids.count < total {
                let answer = try await poller.request("GET", "/v1/events?timeout=10&limit=7&after=\(cursor)", token: owner.token)
                for event in answer.value("events") as? [[String: Any]] ?? [] {
                    ids.append(Int64(event["id"] as! String)!)
                }
                cursor = try answer.string("cursor")
            }
            return ids
        }()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for customer in customers {
                group.addTask {
                    let client = try await server.connect()
                    for _ in 0..<perCustomer {
                        let response = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                                                json: ["kind": "stamp"])
                        #expect(response.status == 201)
                    }
                    client.close()
                }
            }
            try await group.waitForAll()
        }
        let ids = try await seen
        let committed = try await server.database.read { connection in
            try await connection.query("SELECT seq FROM events WHERE account_id = ? ORDER BY seq", owner.id) { try $0.get(0, as: Int64.self) }
        }
        #expect(ids == committed)
        #expect(ids.count == total)
        #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 })
        poller.close()
        try await server.stop()
    }

    @Test func afterARestartTheOldCursorGetsEverythingCommittedMeanwhile() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        _ = try await server.askForStamps(customer, store: store)
        let client = try await server.connect()
        let first = try await client.request("GET", "/v1/events?timeout=1", token: owner.token)
        let cursor = try first.string("cursor")
        client.close()
        // The owner's phone goes offline; two more requests commit; the server restarts.
        _ = try await server.askForStamps(customer, store: store, count: 2)
        _ = try await server.askForStamps(customer, store: store, count: 3)
        try await server.stop()
        let again = try await TestServer.start(databasePath: server.databasePath)
        let back = try await again.connect()
        let missed = try await back.request("GET", "/v1/events?timeout=1&after=\(cursor)", token: owner.token)
        let counts = (missed.value("events") as? [[String: Any]])?.compactMap { (($0["data"] as? [String: Any])?["request"] as? [String: Any])?["count"] as? Int }
        #expect(counts == [2, 3])
        back.close()
        try await again.stop()
    }

    @Test func aCursorOlderThanRetentionAnswersReset() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        _ = try await server.askForStamps(customer, store: store)
        server.clock.advance(by: 8 * 24 * 3600)
        let request = try await server.askForStamps(customer, store: store)
        #expect(try await server.service.pruneEvents() == 1)
        let client = try await server.connect()
        let reset = try await client.request("GET", "/v1/events?after=0&timeout=1", token: owner.token)
        #expect(reset.value("reset") as? Bool == true)
        #expect((reset.value("events") as? [Any])?.isEmpty == true)
        // The current cursor is past every event, so the client reloads and goes on from there.
        let next = try await client.request("GET", "/v1/events?timeout=1&after=\(try reset.string("cursor"))", token: owner.token)
        #expect((next.value("events") as? [Any])?.isEmpty == true)
        // A poll without a cursor still gets what is retained.
        let all = try await client.request("GET", "/v1/events?timeout=1", token: owner.token)
        #expect(all.value("events", 0, "data", "request", "id") as? String == request)
        client.close()
        try await server.stop()
    }

    @Test func aCursorFromBeyondTheLogAnswersReset() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let response = try await client.request("GET", "/v1/events?after=99999&timeout=1", token: owner.token)
        #expect(response.value("reset") as? Bool == true)
        #expect(try response.string("cursor") == "0")
        client.close()
        try await server.stop()
    }

    @Test func shutdownAnswersParkedPollsAtOnce() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        try await client.send(TestClient.raw("GET", "/v1/events?timeout=50&after=0", token: owner.token))
        await server.hub.waitUntilParked(1)
        let started = Date()
        await server.beginShutdown()
        let answer = try await client.readResponse()
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(answer.status == 200)
        #expect(answer.header("retry-after") == "1")
        #expect(answer.header("connection") == "close")
        #expect(try answer.string("cursor") == "0")
        #expect(await client.waitForClose())
        try await server.stop()
    }

    @Test func aPollThatFindsTheServerShuttingDownAnswers200WithItsCursorNot503() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let first = try await client.request("GET", "/v1/events?timeout=1", token: owner.token)
        let cursor = try first.string("cursor")
        // The hub stops parking while this poll is (as it were) still reading.
        server.hub.shutdown()
        let answer = try await client.request("GET", "/v1/events?after=\(cursor)&timeout=50", token: owner.token)
        #expect(answer.status == 200)
        #expect(answer.header("retry-after") == "1")
        #expect(try answer.string("cursor") == cursor)
        client.close()
        try await server.stop()
    }

    @Test func theHubRefusesNewPollsOnceShuttingDown() {
        let hub = EventHub()
        hub.shutdown()
        #expect(hub.park(account: "a", after: 0, readAt: hub.epoch) { _ in } == .shuttingDown)
    }

    @Test func theHubWakesAWaiterExactlyOnce() {
        let hub = EventHub()
        let wakes = WakeCounter()
        guard case .parked(let id) = hub.park(account: "a", after: 0, readAt: hub.epoch, wake: { wakes.add($0) }) else {
            Issue.record("not parked")
            return
        }
        hub.publish(["a": 5])
        #expect(!hub.cancel(id, reason: .timeout))
        #expect(!hub.cancel(id, reason: .disconnected))
        hub.shutdown()
        #expect(wakes.reasons.count == 1)
        // An event published before parking makes an older cursor read again instead of waiting.
        let late = EventHub()
        late.publish(["b": 9])
        #expect(late.park(account: "b", after: 3, readAt: late.epoch) { _ in } == .ready)
    }

    /// A poll parked at the position just before a commit's events is handed them; one further
    /// behind, or woken by a commit whose positions are not dense, is told to read.
    @Test func theHubHandsACommitsEventsOnlyToThePollsAtThePositionBeforeThem() {
        let hub = EventHub()
        let atFour = WakeCounter(), atTwo = WakeCounter()
        _ = hub.park(account: "a", after: 4, readAt: hub.epoch) { atFour.add($0) }
        _ = hub.park(account: "a", after: 2, readAt: hub.epoch) { atTwo.add($0) }
        let events = [Event(id: 5, type: "t", at: Date(millis: 1), data: "{}"), Event(id: 6, type: "t", at: Date(millis: 1), data: "{}")]
        hub.publish(["a": EventHub.Committed(newest: 6, previous: 4, events: events)])
        guard case .events(let given, _)? = atFour.reasons.first else {
            Issue.record("the poll at 4 was not handed the events: \(atFour.reasons)")
            return
        }
        #expect(given == events)
        guard case .event? = atTwo.reasons.first else {
            Issue.record("the poll at 2 was not told to read: \(atTwo.reasons)")
            return
        }
        let gap = WakeCounter()
        _ = hub.park(account: "a", after: 6, readAt: hub.epoch) { gap.add($0) }
        hub.publish(["a": EventHub.Committed(newest: 9)])
        guard case .event? = gap.reasons.first else {
            Issue.record("a commit without its events did not make the poll read: \(gap.reasons)")
            return
        }
    }

    /// Another process commits while this one's listener is away; the listener returns and wakes
    /// every parked poll; a poll whose read began before that (and so missed the commit) parks
    /// only after: it must read again, or it would wait for a notification that was never heard.
    @Test func aPollWhoseReadBeganBeforeTheListenerReturnedReadsAgainInsteadOfParking() {
        let hub = EventHub()
        hub.notificationsStopped()
        let readBegan = hub.epoch
        hub.notificationsFlowing()
        #expect(hub.park(account: "a", after: 4, readAt: readBegan) { _ in } == .ready)
        // Read again from here, the poll parks, and the next commit heard wakes it.
        let wakes = WakeCounter()
        guard case .parked = hub.park(account: "a", after: 4, readAt: hub.epoch, wake: { wakes.add($0) }) else {
            Issue.record("not parked")
            return
        }
        hub.publish(["a": 5])
        #expect(wakes.reasons.count == 1)
        // The same when the listener went away (and nothing was woken) after the read began.
        let stopped = EventHub()
        let before = stopped.epoch
        stopped.notificationsStopped()
        #expect(stopped.park(account: "a", after: 4, readAt: before) { _ in } == .ready)
    }
}

final class WakeCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [WakeReason] = []
    func add(_ reason: WakeReason) { lock.withLock { stored.append(reason) } }
    var reasons: [WakeReason] { lock.withLock { stored } }
}

@Suite(.timeLimit(.minutes(2))) struct PrunedLogPollTests {
    @Test func aFirstPollWithoutACursorGetsItsEventEvenAfterPruning() async throws {
        let server = try await TestServer.start { _, settings in settings.eventRetention = 60 }
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        _ = try await server.approve(owner, try await server.askForStamps(customer, store: store))
        server.clock.advance(by: 120)
        #expect(try await server.service.pruneEvents() > 0)
        let poller = try await server.connect()
        try await poller.send(TestClient.raw("GET", "/v1/events?timeout=50", token: owner.token))
        await server.hub.waitUntilParked(1)
        _ = try await server.askForStamps(customer, store: store)
        let answer = try await poller.readResponse()
        #expect(answer.value("reset") as? Bool == false)
        #expect(answer.value("events", 0, "type") as? String == "request.created")
        poller.close()
        try await server.stop()
    }
}
