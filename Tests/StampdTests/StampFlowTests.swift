// The stamp and reward request flow over real sockets, each test named for the rule it pins.
import Foundation
import SQLiteDB
import Storage
import Testing

@Suite(.timeLimit(.minutes(2))) struct StampFlowTests {
    /// Exactly the README's walk-through: every curl step shown there is here.
    /// The README's "Walk-ins and member codes" steps, as written there.
    @Test func theReadmeWalkInStepsWork() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let owner = try await client.request("POST", "/v1/accounts", json: [
            "role": "owner", "login": "olive@beancafe.example", "password": "espresso-please", "name": "Olive"]).string("token")
        let store = try await client.request("POST", "/v1/stores", token: owner, json: [
            "name": "Bean Cafe", "rewardItem": "Americano", "stampsPerReward": 10]).string("id")
        let customer = try await client.request("POST", "/v1/accounts", json: [
            "role": "customer", "login": "+82 10 5555 0101", "password": "latte-lover", "name": "Cam"]).string("token")
        let walkIn = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner,
                                              json: ["phone": "+82 10 5555 0199", "name": "Walk-in Wes"])
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner,
                                               json: ["customerId": try walkIn.string("customer", "id"), "count": 3])
        #expect(stamped.int("card", "stamps") == 3)
        let wes = try await client.request("POST", "/v1/accounts", json: [
            "role": "customer", "login": "+821055550199", "password": "flat-white-fan", "name": "Wes"]).string("token")
        let claimed = try await client.request("POST", "/v1/me/claims", token: wes, json: ["code": try walkIn.string("claim", "code")])
        #expect(claimed.int("card", "stamps") == 3)
        let member = try await client.request("POST", "/v1/me/member-code", token: customer).string("code")
        let added = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner, json: ["memberCode": member])
        #expect(added.value("customer", "name") as? String == "Cam")
        client.close()
        try await server.stop()
    }

    @Test func theReadmeWalkThroughWorks() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let owner = try await client.request("POST", "/v1/accounts", json: [
            "role": "owner", "login": "olive@beancafe.example", "password": "espresso-please", "name": "Olive"])
        #expect(owner.status == 201)
        let ownerToken = try owner.string("token")
        let store = try await client.request("POST", "/v1/stores", token: ownerToken, json: [
            "name": "Bean Cafe", "rewardItem": "Americano", "stampsPerReward": 10,
            "menu": [["name": "Latte", "price": 4500]]])
        #expect(store.status == 201)
        let storeId = try store.string("id")
        let customer = try await client.request("POST", "/v1/accounts", json: [
            "role": "customer", "login": "+82 10 5555 0101", "password": "latte-lover", "name": "Cam"])
        #expect(customer.status == 201)
        let customerToken = try customer.string("token")
        let found = try await client.request("GET", "/v1/stores?q=latte", token: customerToken)
        #expect(found.value("stores", 0, "id") as? String == storeId)
        let asked = try await client.request("POST", "/v1/stores/\(storeId)/requests", token: customerToken,
                                             json: ["kind": "stamp", "count": 2], headers: ["Idempotency-Key": "visit-1"])
        #expect(asked.status == 201)
        #expect(asked.value("status") as? String == "pending")
        let requestId = try asked.string("id")
        let pending = try await client.request("GET", "/v1/stores/\(storeId)/requests?status=pending", token: ownerToken)
        #expect(pending.value("requests", 0, "id") as? String == requestId)
        let approved = try await client.request("POST", "/v1/requests/\(requestId)/approve", token: ownerToken)
        #expect(approved.status == 200)
        #expect(approved.value("request", "status") as? String == "approved")
        #expect(approved.int("card", "stamps") == 2)
        let cards = try await client.request("GET", "/v1/cards", token: customerToken)
        #expect(cards.int("cards", 0, "stamps") == 2)
        let ledger = try await client.request("GET", "/v1/cards/\(storeId)/ledger", token: customerToken)
        #expect(ledger.value("entries", 0, "kind") as? String == "stamp_added")
        let events = try await client.request("GET", "/v1/events?timeout=1", token: customerToken)
        #expect(events.value("events", 0, "type") as? String == "request.approved")
        let ownerEvents = try await client.request("GET", "/v1/events?timeout=1", token: ownerToken)
        let types = (ownerEvents.value("events") as? [[String: Any]])?.compactMap { $0["type"] as? String }
        #expect(types == ["request.created", "request.approved"])
        let me = try await client.request("GET", "/v1/me", token: customerToken)
        #expect(me.value("name") as? String == "Cam")
        let signOut = try await client.request("DELETE", "/v1/sessions/current", token: customerToken)
        #expect(signOut.status == 204)
        #expect(try await client.request("GET", "/v1/me", token: customerToken).status == 401)
        client.close()
        try await server.stop()
    }

    @Test func stampsTurnIntoRewardsAndTheRemainderCarries() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["stampsPerReward": 3])
        let first = try await server.approve(owner, try await server.askForStamps(customer, store: store, count: 4))
        #expect(first.int("card", "stamps") == 1)
        #expect(first.int("card", "rewards") == 1)
        let second = try await server.approve(owner, try await server.askForStamps(customer, store: store, count: 8))
        #expect(second.int("card", "stamps") == 0)
        #expect(second.int("card", "rewards") == 4)
        try await expectCardsEqualTheirLedger(server)
        try await server.stop()
    }

    @Test func aRewardApprovalUsesOneReward() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["stampsPerReward": 2])
        _ = try await server.approve(owner, try await server.askForStamps(customer, store: store, count: 2))
        let client = try await server.connect()
        let asked = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "reward"])
        #expect(asked.status == 201)
        let used = try await server.approve(owner, try asked.string("id"))
        #expect(used.int("card", "rewards") == 0)
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        #expect((ledger.value("entries") as? [Any])?.count == 3)
        #expect(ledger.value("entries", 2, "kind") as? String == "reward_used")
        client.close()
        try await expectCardsEqualTheirLedger(server)
        try await server.stop()
    }

    @Test func aRewardRequestWithoutARewardIsAConflict() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let asked = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "reward"])
        #expect(asked.status == 409)
        client.close()
        try await server.stop()
    }

    @Test func decidingTwiceIsAConflict() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let request = try await server.askForStamps(customer, store: store)
        #expect(try await server.approve(owner, request).status == 200)
        #expect(try await server.approve(owner, request).status == 409)
        let client = try await server.connect()
        #expect(try await client.request("POST", "/v1/requests/\(request)/reject", token: owner.token).status == 409)
        #expect(try await client.request("DELETE", "/v1/requests/\(request)", token: customer.token).status == 409)
        client.close()
        try await server.stop()
    }

    @Test func rejectingKeepsTheReasonAndTellsBothSides() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let request = try await server.askForStamps(customer, store: store)
        let client = try await server.connect()
        let rejected = try await client.request("POST", "/v1/requests/\(request)/reject", token: owner.token,
                                                json: ["reason": "not today"])
        #expect(rejected.value("request", "status") as? String == "rejected")
        #expect(rejected.value("request", "reason") as? String == "not today")
        let events = try await client.request("GET", "/v1/events?after=0", token: customer.token)
        #expect(events.value("events", 0, "type") as? String == "request.rejected")
        client.close()
        try await server.stop()
    }

    @Test func aCustomerCancelsOnlyWhilePending() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let request = try await server.askForStamps(customer, store: store)
        let client = try await server.connect()
        let cancelled = try await client.request("DELETE", "/v1/requests/\(request)", token: customer.token)
        #expect(cancelled.value("request", "status") as? String == "cancelled")
        #expect(try await server.approve(owner, request).status == 409)
        let events = try await client.request("GET", "/v1/events?after=0", token: owner.token)
        #expect(events.value("events", 1, "type") as? String == "request.cancelled")
        client.close()
        try await server.stop()
    }

    @Test func aRequestPastItsTTLCannotBeDecidedEvenBeforeTheSweeper() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["requestTtlSeconds": 60])
        let request = try await server.askForStamps(customer, store: store)
        server.clock.advance(by: 61)
        let refused = try await server.approve(owner, request)
        #expect(refused.status == 409)
        let client = try await server.connect()
        let read = try await client.request("GET", "/v1/requests/\(request)", token: customer.token)
        #expect(read.value("status") as? String == "expired")
        let events = try await client.request("GET", "/v1/events?after=0", token: customer.token)
        #expect(events.value("events", 0, "type") as? String == "request.expired")
        let cards = try await client.request("GET", "/v1/cards", token: customer.token)
        #expect((cards.value("cards") as? [Any])?.isEmpty == true)
        client.close()
        try await server.stop()
    }

    @Test func theSweeperExpiresRequestsAndTellsBothSides() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["requestTtlSeconds": 60])
        let request = try await server.askForStamps(customer, store: store)
        #expect(try await server.service.expireDueRequests() == 0)
        server.clock.advance(by: 61)
        #expect(try await server.service.expireDueRequests() == 1)
        let client = try await server.connect()
        let read = try await client.request("GET", "/v1/requests/\(request)", token: owner.token)
        #expect(read.value("status") as? String == "expired")
        let ownerEvents = try await client.request("GET", "/v1/events?after=0", token: owner.token)
        #expect(ownerEvents.value("events", 1, "type") as? String == "request.expired")
        client.close()
        try await server.stop()
    }

    @Test func anIdempotentRetryReturnsTheFirstAnswerAndCreatesNothing() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let first = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                             json: ["kind": "stamp", "count": 2], headers: ["Idempotency-Key": "k-1"])
        // The same JSON value, spaced and ordered differently.
        let respaced = #"{ "count": 2, "kind":"stamp"}"#
        try await client.send("POST /v1/stores/\(store)/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(customer.token)\r\n"
                              + "Idempotency-Key: k-1\r\nContent-Type: application/json\r\nContent-Length: \(respaced.utf8.count)\r\n\r\n"
                              + respaced)
        let retry = try await client.readResponse()
        #expect(first.status == 201)
        #expect(retry.status == 201)
        #expect(retry.body == first.body)
        let list = try await client.request("GET", "/v1/stores/\(store)/requests", token: owner.token)
        #expect((list.value("requests") as? [Any])?.count == 1)
        let events = try await client.request("GET", "/v1/events?after=0", token: owner.token)
        #expect((events.value("events") as? [Any])?.count == 1)
        client.close()
        try await server.stop()
    }

    @Test func aRetryWithADifferentBodyIs422() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let headers = ["Idempotency-Key": "k-2"]
        #expect(try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                         json: ["kind": "stamp", "count": 1], headers: headers).status == 201)
        let mismatch = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                                json: ["kind": "stamp", "count": 3], headers: headers)
        #expect(mismatch.status == 422)
        client.close()
        try await server.stop()
    }

    @Test func idempotencyKeysBelongToOneAccount() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let alice = try await server.signUp("customer")
        let bob = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let headers = ["Idempotency-Key": "shared"]
        let a = try await client.request("POST", "/v1/stores/\(store)/requests", token: alice.token, json: ["kind": "stamp"], headers: headers)
        let b = try await client.request("POST", "/v1/stores/\(store)/requests", token: bob.token, json: ["kind": "stamp"], headers: headers)
        #expect(a.status == 201 && b.status == 201)
        #expect(try a.string("id") != (try b.string("id")))
        client.close()
        try await server.stop()
    }

    @Test func concurrentApprovalsOfOneRequestHaveExactlyOneWinner() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let request = try await server.askForStamps(customer, store: store, count: 3)
        let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<12 { group.addTask { try await server.approve(owner, request).status } }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(statuses.filter { $0 == 200 }.count == 1)
        #expect(statuses.filter { $0 == 409 }.count == 11)
        let client = try await server.connect()
        let cards = try await client.request("GET", "/v1/cards", token: customer.token)
        #expect(cards.int("cards", 0, "stamps") == 3)
        client.close()
        try await expectCardsEqualTheirLedger(server)
        try await server.stop()
    }

    @Test func loweringStampsPerRewardConvertsExcessStamps() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["stampsPerReward": 10])
        _ = try await server.approve(owner, try await server.askForStamps(customer, store: store, count: 7))
        let client = try await server.connect()
        #expect(try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token, json: ["stampsPerReward": 3]).status == 200)
        let cards = try await client.request("GET", "/v1/cards", token: customer.token)
        #expect(cards.int("cards", 0, "stamps") == 1)
        #expect(cards.int("cards", 0, "rewards") == 2)
        let events = try await client.request("GET", "/v1/events?after=0", token: customer.token)
        #expect(events.value("events", 1, "type") as? String == "card.updated")
        client.close()
        try await expectCardsEqualTheirLedger(server)
        try await server.stop()
    }

    /// Found by the contract run on PostgreSQL: a coordinate like 1e-200 made the distance
    /// ordering underflow, an error there. Coordinates are kept to 7 decimal places.
    @Test func tinyCoordinatesAreKeptToSevenPlacesAndTheNearestSearchStillAnswers() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["name": "Null Island", "latitude": 1e-200, "longitude": 1.23456789])
        let client = try await server.connect()
        let found = try await client.request("GET", "/v1/stores?lat=1e-200&lon=1e-150", token: customer.token)
        #expect(found.status == 200)
        #expect(found.value("stores", 0, "id") as? String == store)
        #expect(found.value("stores", 0, "latitude") as? Double == 0)
        #expect(found.value("stores", 0, "longitude") as? Double == 1.2345679)
        client.close()
        try await server.stop()
    }

    @Test func storesAreFoundByMenuItemAndNearestFirst() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let far = try await server.createStore(owner, ["name": "Far Beans", "latitude": 37.60, "longitude": 127.10,
                                                       "menu": [["name": "Flat White", "price": 5000]]])
        let near = try await server.createStore(owner, ["name": "Near Beans", "latitude": 37.5665, "longitude": 126.9781,
                                                        "menu": [["name": "Flat White", "price": 4800]]])
        _ = try await server.createStore(owner, ["name": "Tea House", "menu": [["name": "Green Tea", "price": 3000]]])
        let client = try await server.connect()
        let byMenu = try await client.request("GET", "/v1/stores?q=flat%20white&lat=37.5665&lon=126.978", token: customer.token)
        let ids = (byMenu.value("stores") as? [[String: Any]])?.compactMap { $0["id"] as? String }
        #expect(ids == [near, far])
        let distance = try #require(byMenu.value("stores", 0, "distanceMeters") as? Double)
        #expect(distance < 50)
        let page = try await client.request("GET", "/v1/stores?limit=2", token: customer.token)
        #expect((page.value("stores") as? [Any])?.count == 2)
        let cursor = try page.string("nextCursor")
        let next = try await client.request("GET", "/v1/stores?limit=2&cursor=\(cursor)", token: customer.token)
        #expect((next.value("stores") as? [Any])?.count == 1)
        #expect(next.value("nextCursor") == nil)
        let wildcard = try await client.request("GET", "/v1/stores?q=%25", token: customer.token)
        #expect((wildcard.value("stores") as? [Any])?.isEmpty == true)
        client.close()
        try await server.stop()
    }

    @Test func aTakenLoginIsAConflict() async throws {
        let server = try await TestServer.start()
        _ = try await server.signUp("owner", "same@example.com")
        let client = try await server.connect()
        let again = try await client.request("POST", "/v1/accounts", json: [
            "role": "customer", "login": "SAME@example.com ", "password": "another one", "name": "B"])
        #expect(again.status == 409)
        #expect(again.value("field") as? String == "login")
        client.close()
        try await server.stop()
    }

    @Test func failedSignInsAreRateLimitedPerLogin() async throws {
        let server = try await TestServer.start()
        _ = try await server.signUp("customer", "locked@example.com")
        let client = try await server.connect()
        for _ in 0..<5 {
            let wrong = try await client.request("POST", "/v1/sessions", json: ["login": "locked@example.com", "password": "wrong password"])
            #expect(wrong.status == 401)
        }
        let limited = try await client.request("POST", "/v1/sessions", json: ["login": "locked@example.com", "password": "correct horse"])
        #expect(limited.status == 429)
        #expect(Int(limited.header("retry-after") ?? "") ?? 0 > 0)
        server.clock.advance(by: 16 * 60)
        let later = try await client.request("POST", "/v1/sessions", json: ["login": "locked@example.com", "password": "correct horse"])
        #expect(later.status == 201)
        client.close()
        try await server.stop()
    }

    /// The lock is a row of the database, not a fact of one process: a restart does not lift it.
    @Test func aLoginLockOutlivesARestart() async throws {
        let clock = ManualClock(Date())
        let first = try await TestServer.start(clock: clock)
        _ = try await first.signUp("customer", "restart-lock@example.com")
        let client = try await first.connect()
        for _ in 0..<5 {
            #expect(try await client.request("POST", "/v1/sessions",
                                             json: ["login": "restart-lock@example.com", "password": "wrong password"]).status == 401)
        }
        client.close()
        try await first.stop()
        let second = try await TestServer.start(databasePath: first.databasePath, clock: clock)
        let again = try await second.connect()
        #expect(try await again.request("POST", "/v1/sessions",
                                        json: ["login": "restart-lock@example.com", "password": "correct horse"]).status == 429)
        clock.advance(by: 16 * 60)
        #expect(try await again.request("POST", "/v1/sessions",
                                        json: ["login": "restart-lock@example.com", "password": "correct horse"]).status == 201)
        again.close()
        try await second.stop()
    }

    @Test func tokensExpireAndAreStoredOnlyAsHashes() async throws {
        let server = try await TestServer.start()
        let customer = try await server.signUp("customer")
        let client = try await server.connect()
        #expect(try await client.request("GET", "/v1/me", token: customer.token).status == 200)
        let stored = try await server.database.read { connection in
            try await connection.query(SQL(sqlite: "SELECT hex(token_hash) FROM sessions",
                                           postgres: "SELECT upper(encode(token_hash, 'hex')) FROM sessions")) { try $0.get(0, as: String.self) }
        }
        #expect(stored.count == 1)
        #expect(!stored[0].contains(customer.token))
        server.clock.advance(by: 31 * 24 * 3600)
        #expect(try await client.request("GET", "/v1/me", token: customer.token).status == 401)
        client.close()
        try await server.stop()
    }

    @Test func passwordsAreStoredWithASaltedSlowHash() async throws {
        let hasher = PasswordHasherProbe()
        let first = try await hasher.hash("the same password")
        let second = try await hasher.hash("the same password")
        #expect(first != second)
        #expect(first.hasPrefix("scrypt$15$8$1$"))
        #expect(try await hasher.verify("the same password", against: first))
        #expect(!(try await hasher.verify("another password", against: first)))
    }

    func expectCardsEqualTheirLedger(_ server: TestServer) async throws {
        let mismatches = try await server.database.read { connection in
            try await connection.query("""
                SELECT c.customer_id FROM cards c
                WHERE c.stamps != (SELECT coalesce(sum(stamps_delta), 0) FROM ledger l WHERE l.customer_id = c.customer_id AND l.store_id = c.store_id)
                   OR c.rewards != (SELECT coalesce(sum(rewards_delta), 0) FROM ledger l WHERE l.customer_id = c.customer_id AND l.store_id = c.store_id)
                """) { try $0.get(0, as: String.self) }
        }
        #expect(mismatches.isEmpty)
    }
}

import StampCore

/// The production cost, used once to prove the stored format and salting.
struct PasswordHasherProbe {
    let hasher = PasswordHasher(cost: .standard, threads: 1)
    func hash(_ password: String) async throws -> String { try await hasher.hash(password) }
    func verify(_ password: String, against stored: String) async throws -> Bool { try await hasher.verify(password, against: stored) }
}
