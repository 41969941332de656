// Use cases that an engine may run concurrently (PostgreSQL does; SQLite's single writer runs
// them one at a time): each must hold when many callers arrive at once.
import Foundation
import SQLiteDB
import Storage
@testable import StampCore
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2))) struct ConcurrencyTests {
    /// Runs `count` calls at once, each on its own connection; returns their statuses.
    func atOnce(_ count: Int, _ call: @escaping @Sendable (TestClient) async throws -> TestResponse,
                on server: TestServer) async throws -> [TestResponse] {
        try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for _ in 0..<count {
                group.addTask {
                    let client = try await server.connect()
                    defer { client.close() }
                    return try await call(client)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    @Test func aRewardUsedTwiceAtOnceIsSpentOnce() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["stampsPerReward": 2])
        _ = try await server.approve(owner, try await server.askForStamps(customer, store: store, count: 2))
        let client = try await server.connect()
        var redemptions: [String] = []
        for _ in 0..<2 {
            let asked = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                                 json: ["kind": "reward"])
            #expect(asked.status == 201)
            redemptions.append(try asked.string("id"))
        }
        let answers = try await withThrowingTaskGroup(of: Int.self) { group in
            for request in redemptions { group.addTask { try await server.approve(owner, request).status } }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(answers.sorted() == [200, 409])
        let cards = try await client.request("GET", "/v1/cards", token: customer.token)
        #expect(cards.int("cards", 0, "rewards") == 0)
        client.close()
        try await StampFlowTests().expectCardsEqualTheirLedger(server)
        try await server.stop()
    }

    @Test func giftsSentAtOnceNeverSpendMoreThanTheCardHolds() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let giver = try await server.signUp("customer")
        let friendLogin = "friend-\(UUID().uuidString.prefix(8))"
        let friend = try await server.signUp("customer", friendLogin)
        let store = try await server.createStore(owner, ["stampsPerReward": 10])
        _ = try await server.approve(owner, try await server.askForStamps(giver, store: store, count: 5))
        let answers = try await atOnce(4, { client in
            try await client.request("POST", "/v1/cards/\(store)/gifts", token: giver.token, json: ["to": friendLogin, "count": 2])
        }, on: server)
        #expect(answers.map(\.status).sorted() == [201, 201, 409, 409])
        let client = try await server.connect()
        #expect(try await client.request("GET", "/v1/cards", token: giver.token).int("cards", 0, "stamps") == 1)
        #expect(try await client.request("GET", "/v1/cards", token: friend.token).int("cards", 0, "stamps") == 4)
        client.close()
        try await StampFlowTests().expectCardsEqualTheirLedger(server)
        try await server.stop()
    }

    @Test func oneIdempotencyKeyUsedAtOnceCreatesOneRequest() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let answers = try await atOnce(8, { client in
            try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                     json: ["kind": "stamp", "count": 2], headers: ["Idempotency-Key": "same-key"])
        }, on: server)
        #expect(answers.allSatisfy { $0.status == 201 })
        #expect(Set(answers.compactMap { try? $0.string("id") }).count == 1)
        let stored = try await server.database.read { session in
            try await session.queryFirst("SELECT count(*) FROM requests WHERE customer_id = ?", customer.id) {
                try $0.get(0, as: Int.self)
            }
        }
        #expect(stored == 1)
        try await server.stop()
    }

    @Test func theOnePendingRequestRuleHoldsForRequestsMadeAtOnce() async throws {
        let server = try await TestServer.start { _, settings in settings.limits.pendingRequestsPerCustomerPerStore = 1 }
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let answers = try await atOnce(8, { client in
            try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "stamp"])
        }, on: server)
        #expect(answers.filter { $0.status == 201 }.count == 1)
        #expect(answers.filter { $0.status == 429 }.count == 7)
        try await server.stop()
    }

    /// A limit counted in rate_events (here: walk-ins a store may register a day) holds when the
    /// registrations arrive at once: each claims the store's scope before it counts.
    @Test func aCountedLimitHoldsForActionsMadeAtOnce() async throws {
        let server = try await TestServer.start { _, settings in settings.limits.walkInsPerStorePerDay = 3 }
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let phones = Mutex(0)
        let answers = try await atOnce(10, { client in
            let n = phones.withLock { $0 += 1; return $0 }
            return try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token,
                                            json: ["phone": "+1 555 010 \(1000 + n)"])
        }, on: server)
        #expect(answers.filter { $0.status == 201 }.count == 3)
        #expect(answers.filter { $0.status == 429 }.count == 7)
        try await server.stop()
    }

    /// The cursor never skips: a write that took the lower position of an account and is still
    /// open keeps a later write for the same account from committing first, so a poller sees
    /// both, in order, once each. (A global id from a sequence could commit out of order.)
    @Test func aWriteHoldingTheLowerPositionCommitsBeforeTheHigherOne() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let poller = try await server.connect()
        let start = try await poller.request("GET", "/v1/events?timeout=0", token: owner.token)
        var cursor = try start.string("cursor")

        let positionTaken = AsyncSignal()
        let release = AsyncSignal()
        let heldBackend = Mutex<Int?>(nil)
        let held = Task {
            let newest = try await server.database.write { session in
                var outbox = Outbox()
                try outbox.emit("test.held", to: [owner.id], data: ["n": 1], at: Date())
                let newest = try await outbox.commit(on: session, dense: false)
                if TestStorage.isPostgres {
                    let pid = try await session.queryFirst("SELECT pg_backend_pid()") { try $0.get(0, as: Int.self) }
                    heldBackend.withLock { $0 = pid }
                }
                positionTaken.fire()
                await release.wait()
                return newest
            }
            server.hub.publish(newest)
        }
        await positionTaken.wait()
        // A stamp request writes request.created for the owner: it needs the next position.
        let later = Task { try await server.askForStamps(customer, store: store) }
        try await waitUntilAWriteIsWaiting(server, behind: heldBackend.withLock { $0 })
        release.fire()
        try await held.value
        _ = try await later.value

        var seen: [(String, Int)] = []
        while seen.count < 2 {
            let answer = try await poller.request("GET", "/v1/events?timeout=5&after=\(cursor)", token: owner.token)
            for event in answer.value("events") as? [[String: Any]] ?? [] {
                seen.append((event["type"] as? String ?? "?", Int(event["id"] as? String ?? "") ?? -1))
            }
            cursor = try answer.string("cursor")
        }
        #expect(seen.map(\.0) == ["test.held", "request.created"])
        #expect(seen[1].1 > seen[0].1)
        let again = try await poller.request("GET", "/v1/events?timeout=0&after=\(cursor)", token: owner.token)
        #expect((again.value("events") as? [Any])?.isEmpty == true)
        poller.close()
        try await server.stop()
    }

    /// Waits until a second write is queued behind the held one (SQLite) or waits for its lock
    /// (PostgreSQL): then it has tried to take the next position.
    func waitUntilAWriteIsWaiting(_ server: TestServer, behind backend: Int?) async throws {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let sqlite = server.database as? Database {
                if sqlite.queuedWrites > 0 { return }
            } else if let backend {
                let waiting = try await server.database.read { session in
                    try await session.queryFirst("SELECT count(*) FROM pg_stat_activity WHERE ? = ANY (pg_blocking_pids(pid))",
                                                 backend) { try $0.get(0, as: Int.self) }
                }
                if (waiting ?? 0) > 0 { return }
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        Issue.record("no second write waited for the held one")
    }
}

/// A one-shot signal between tasks.
final class AsyncSignal: Sendable {
    private let state = Mutex<(fired: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func fire() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.fired = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let fired = state.withLock { state -> Bool in
                if !state.fired { state.waiters.append(continuation) }
                return state.fired
            }
            if fired { continuation.resume() }
        }
    }
}
