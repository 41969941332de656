// What a store's rules make of a stamp request: the counter code (its window and its wrong-code
// limit), requiring it, approving by it; one pending request at a time, the cool-down, the daily
// cap, blocking; the customer's card on the owner's row; and undo keeping card = ledger.
import Foundation
import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct StoreRulesTests {
    /// A server on a manual clock at the start of a minute, an owner, a store with `rules`, a customer.
    func setUp(_ rules: [String: Any] = [:], stampsPerReward: Int = 10) async throws
        -> (TestServer, TestServer.Person, String, TestServer.Person, TestClient) {
        let server = try await TestServer.start(clock: ManualClock(Date(timeIntervalSince1970: 1_800_000_000)))
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner, ["rules": rules, "stampsPerReward": stampsPerReward])
        let customer = try await server.signUp("customer", name: "Ben")
        return (server, owner, store, customer, try await server.connect())
    }

    func ask(_ client: TestClient, _ store: String, _ customer: TestServer.Person, _ body: [String: Any] = [:]) async throws -> TestResponse {
        var json: [String: Any] = ["kind": "stamp"]
        json.merge(body) { $1 }
        return try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: json)
    }

    func counterCode(_ client: TestClient, _ store: String, _ member: TestServer.Person) async throws -> String {
        let answer = try await client.request("GET", "/v1/stores/\(store)/counter-code", token: member.token)
        try #require(answer.status == 200, "\(answer.text)")
        return try answer.string("code")
    }

    @Test func aValidCounterCodeMarksTheRequestAtTheCounterForThisMinuteAndTheNext() async throws {
        let (server, owner, store, customer, client) = try await setUp()
        let code = try await counterCode(client, store, owner)
        #expect(code.count == 6 && code.allSatisfy(\.isNumber))
        let shown = try await client.request("GET", "/v1/stores/\(store)/counter-code", token: owner.token)
        #expect(shown.int("periodSeconds") == 60)
        #expect(shown.value("changesAt") as? String != nil)
        // Staff see it too; customers do not.
        let barista = try await server.addStaff(to: store, owner: owner)
        #expect(try await counterCode(client, store, barista) == code)
        #expect(try await client.request("GET", "/v1/stores/\(store)/counter-code", token: customer.token).status == 403)

        let first = try await ask(client, store, customer, ["counterCode": code])
        #expect(first.status == 201, "\(first.text)")
        #expect(first.value("atCounter") as? Bool == true)
        let plain = try await ask(client, store, customer)
        #expect(plain.value("atCounter") as? Bool == false)
        let listed = try await client.request("GET", "/v1/stores/\(store)/requests?status=pending", token: owner.token)
        let marks = (listed.value("requests") as? [[String: Any]] ?? []).map { $0["atCounter"] as? Bool }
        #expect(marks.sorted { ($0 ?? false) && !($1 ?? false) } == [true, false])

        // The next minute still takes it; the one after does not.
        server.clock.advance(by: 60)
        #expect(try await counterCode(client, store, owner) != code)
        #expect(try await ask(client, store, customer, ["counterCode": code]).value("atCounter") as? Bool == true)
        server.clock.advance(by: 60)
        let stale = try await ask(client, store, customer, ["counterCode": code])
        #expect(stale.status == 422 && stale.value("field") as? String == "counterCode", "\(stale.text)")
        // Another store's code is not this store's.
        let other = try await server.createStore(owner, ["name": "Other"])
        let otherCode = try await counterCode(client, other, owner)
        let current = try await counterCode(client, store, owner)
        if otherCode != current {
            #expect(try await ask(client, store, customer, ["counterCode": otherCode]).status == 422)
        }
        #expect(try await ask(client, store, customer, ["counterCode": "12 34"]).status == 400)
        client.close()
        try await server.stop()
    }

    @Test func wrongCounterCodesRunOutPerCustomerAndStore() async throws {
        let (server, owner, store, customer, client) = try await setUp()
        let code = try await counterCode(client, store, owner)
        let wrong = code == "000000" ? "000001" : "000000"
        for _ in 0..<5 { #expect(try await ask(client, store, customer, ["counterCode": wrong]).status == 422) }
        let refused = try await ask(client, store, customer, ["counterCode": code])
        #expect(refused.status == 429, "\(refused.text)")
        #expect(refused.header("retry-after") != nil)
        // Only this customer at this store: another customer, or this one elsewhere, is not held back.
        let other = try await server.signUp("customer")
        #expect(try await ask(client, store, other, ["counterCode": code]).status == 201)
        let second = try await server.createStore(owner, ["name": "Second"])
        #expect(try await ask(client, second, customer, ["counterCode": try await counterCode(client, second, owner)]).status == 201)
        // An hour later it works again.
        server.clock.advance(by: 3_601)
        #expect(try await ask(client, store, customer, ["counterCode": try await counterCode(client, store, owner)]).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func aStoreCanRequireTheCodeOrApproveByIt() async throws {
        let (server, owner, store, customer, client) = try await setUp(["requireCounterCode": true])
        let without = try await ask(client, store, customer)
        #expect(without.status == 422 && without.value("field") as? String == "counterCode")
        #expect(try await ask(client, store, customer, ["counterCode": try await counterCode(client, store, owner)]).status == 201)

        // Approved by the code itself: the card changes at once, attributed to "counter code".
        let patched = try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token,
                                               json: ["rules": ["autoApproveAtCounter": true]])
        #expect(patched.value("rules", "autoApproveAtCounter") as? Bool == true)
        #expect(patched.value("rules", "requireCounterCode") as? Bool == true)
        let poll = try await server.connect()
        let cursor = try await poll.request("GET", "/v1/events?timeout=0", token: owner.token).string("cursor")
        let approved = try await ask(client, store, customer, ["counterCode": try await counterCode(client, store, owner), "count": 2])
        #expect(approved.status == 201)
        #expect(approved.value("status") as? String == "approved")
        #expect(approved.value("decidedBy", "id") as? String == "counter-code")
        #expect(approved.value("decidedBy", "name") as? String == "counter code")
        let events = try await poll.request("GET", "/v1/events?timeout=0&after=\(cursor)", token: owner.token)
        #expect(events.value("events", 0, "type") as? String == "request.approved")
        let cards = try await client.request("GET", "/v1/cards", token: customer.token)
        #expect(cards.int("cards", 0, "stamps") == 2)
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        #expect(ledger.value("entries", 0, "member", "name") as? String == "counter code")
        // The owner's day counts it under "counter code".
        let day = try await client.request("GET", "/v1/stores/\(store)/activity?day=2027-01-15", token: owner.token)
        #expect((day.value("members", 0, "member", "id") as? String) == "counter-code", "\(day.text)")
        poll.close()
        client.close()
        try await server.stop()
    }

    @Test func oneRequestAtATimeASecondIs409WithThePendingOne() async throws {
        let (server, _, store, customer, client) = try await setUp(["pendingPerCustomer": 1, "stampCooldownSeconds": 0])
        let first = try await ask(client, store, customer)
        #expect(first.status == 201)
        let second = try await ask(client, store, customer, ["count": 2])
        #expect(second.status == 409)
        #expect(second.value("request", "id") as? String == (try first.string("id")))
        // Another store, or after the first is withdrawn: fine.
        #expect(try await client.request("DELETE", "/v1/requests/\(try first.string("id"))", token: customer.token).status == 200)
        #expect(try await ask(client, store, customer).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func theCooldownAndTheDailyCapRefuseAtTheirBoundary() async throws {
        let (server, owner, store, customer, client) = try await setUp(["stampCooldownSeconds": 300, "dailyStampCap": 5,
                                                                        "pendingPerCustomer": 3])
        let first = try await ask(client, store, customer, ["count": 2])
        #expect(try await server.approve(owner, try first.string("id")).status == 200)
        server.clock.advance(by: 299)
        let early = try await ask(client, store, customer)
        #expect(early.status == 429)
        #expect(early.header("retry-after") == "1")
        server.clock.advance(by: 1)
        let second = try await ask(client, store, customer, ["count": 2])
        #expect(second.status == 201, "\(second.text)")
        // 2 approved + 2 pending of 5: one more fits, two do not.
        let over = try await ask(client, store, customer, ["count": 2])
        #expect(over.status == 429 && (over.value("detail") as? String)?.contains("1 left") == true, "\(over.text)")
        #expect(try await ask(client, store, customer, ["count": 1]).status == 201)
        // A day after the first approval its stamps no longer count (and the pending ones have expired).
        server.clock.advance(by: 86_400 - 300 + 1)
        #expect(try await ask(client, store, customer, ["count": 4]).status == 201)
        // Rules out of range are refused by name; staff may not change them.
        let bad = try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token, json: ["rules": ["pendingPerCustomer": 4]])
        #expect(bad.status == 400 && bad.value("field") as? String == "rules.pendingPerCustomer")
        let unknown = try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token, json: ["rules": ["cap": 4]])
        #expect(unknown.status == 400 && unknown.value("field") as? String == "rules.cap")
        let barista = try await server.addStaff(to: store, owner: owner)
        #expect(try await client.request("PATCH", "/v1/stores/\(store)", token: barista.token,
                                         json: ["rules": ["dailyStampCap": 100]]).status == 403)
        client.close()
        try await server.stop()
    }

    @Test func aBlockedCustomerIsRefusedAtThatStoreOnly() async throws {
        let (server, owner, store, customer, client) = try await setUp()
        _ = try await server.askForStamps(customer, store: store)
        let stranger = try await server.signUp("customer")
        // Only people who have a card or asked here can be blocked: no probing of other accounts.
        #expect(try await client.request("PUT", "/v1/stores/\(store)/blocks/\(stranger.id)", token: owner.token).status == 404)
        let blocked = try await client.request("PUT", "/v1/stores/\(store)/blocks/\(customer.id)", token: owner.token)
        #expect(blocked.status == 200, "\(blocked.text)")
        #expect(blocked.value("name") as? String == "Ben")
        #expect(try await ask(client, store, customer).status == 403)
        let elsewhere = try await server.createStore(owner, ["name": "Elsewhere"])
        #expect(try await ask(client, elsewhere, customer).status == 201)
        let list = try await client.request("GET", "/v1/stores/\(store)/blocks", token: owner.token)
        #expect((list.value("blocked") as? [Any])?.count == 1)
        #expect(try await client.request("DELETE", "/v1/stores/\(store)/blocks/\(customer.id)", token: owner.token).status == 204)
        #expect(try await ask(client, store, customer).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func aRequestRowShowsTheCustomersCardAtThisStore() async throws {
        let (server, owner, store, customer, client) = try await setUp([:], stampsPerReward: 3)
        let first = try await server.askForStamps(customer, store: store, count: 2)
        #expect(try await server.approve(owner, first).status == 200)
        let next = try await server.askForStamps(customer, store: store, count: 2)
        let listed = try await client.request("GET", "/v1/stores/\(store)/requests?status=pending", token: owner.token)
        #expect(listed.value("requests", 0, "id") as? String == next)
        #expect(listed.int("requests", 0, "customerCard", "stamps") == 2)
        #expect(listed.int("requests", 0, "customerCard", "visits") == 1)
        #expect(listed.value("requests", 0, "customerCard", "memberSince") as? String != nil)
        let approved = try await server.approve(owner, next)
        #expect(approved.int("request", "customerCard", "visits") == 2)
        #expect(approved.int("request", "customerCard", "rewards") == 1)
        client.close()
        try await server.stop()
    }

    @Test func undoingAnApprovalOrADirectStampKeepsTheCardEqualToItsLedger() async throws {
        let (server, owner, store, customer, client) = try await setUp([:], stampsPerReward: 3)
        let barista = try await server.addStaff(to: store, owner: owner, name: "Sam")
        let warmUp = try await server.askForStamps(customer, store: store, count: 2)
        #expect(try await server.approve(owner, warmUp).status == 200)
        // This approval completes a set: 2 + 2 = one reward and 1 stamp. Undone, the reward goes back into stamps.
        let request = try await server.askForStamps(customer, store: store, count: 2)
        #expect(try await server.approve(barista, request).status == 200)
        let poll = try await server.connect()
        let cursor = try await poll.request("GET", "/v1/events?timeout=0", token: customer.token).string("cursor")
        let undone = try await client.request("POST", "/v1/requests/\(request)/undo", token: barista.token)
        #expect(undone.status == 200, "\(undone.text)")
        #expect(undone.int("card", "stamps") == 2 && undone.int("card", "rewards") == 0)
        #expect(undone.value("request", "reversedBy", "name") as? String == "Sam")
        #expect(undone.value("entry", "kind") as? String == "reversal")
        let told = try await poll.request("GET", "/v1/events?timeout=0&after=\(cursor)", token: customer.token)
        #expect(told.value("events", 0, "type") as? String == "request.reversed")
        #expect(try await client.request("POST", "/v1/requests/\(request)/undo", token: owner.token).status == 409)
        // Not the customer's to undo, nor another store's.
        #expect(try await client.request("POST", "/v1/requests/\(warmUp)/undo", token: customer.token).status == 403)
        let stranger = try await server.signUp("owner")
        #expect(try await client.request("POST", "/v1/requests/\(warmUp)/undo", token: stranger.token).status == 404)

        // A direct stamp, undone; then one too old to undo.
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: barista.token,
                                               json: ["customerId": customer.id, "count": 1])
        let entry = try #require(stamped.int("entryId"))
        #expect(stamped.int("card", "stamps") == 0 && stamped.int("card", "rewards") == 1)
        let back = try await client.request("POST", "/v1/stores/\(store)/stamps/\(entry)/undo", token: owner.token)
        #expect(back.status == 200, "\(back.text)")
        #expect(back.int("card", "stamps") == 2 && back.int("card", "rewards") == 0)
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps/\(entry)/undo", token: owner.token).status == 409)
        let late = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                            json: ["customerId": customer.id, "count": 1])
        server.clock.advance(by: 301)
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps/\(try #require(late.int("entryId")))/undo",
                                         token: owner.token).status == 409)
        #expect(try await client.request("POST", "/v1/requests/\(warmUp)/undo", token: owner.token).status == 409)

        // The card equals its ledger after all of it.
        let card = try await client.request("GET", "/v1/cards", token: customer.token)
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        let entries = ledger.value("entries") as? [[String: Any]] ?? []
        #expect(card.int("cards", 0, "stamps") == entries.compactMap { $0["stampsDelta"] as? Int }.reduce(0, +))
        #expect(card.int("cards", 0, "rewards") == entries.compactMap { $0["rewardsDelta"] as? Int }.reduce(0, +))
        poll.close()
        client.close()
        try await server.stop()
    }

    @Test func twoMembersUndoingAtOnceReverseOnce() async throws {
        let (server, owner, store, customer, client) = try await setUp()
        let barista = try await server.addStaff(to: store, owner: owner)
        for _ in 0..<5 {
            let request = try await server.askForStamps(customer, store: store, count: 3)
            #expect(try await server.approve(owner, request).status == 200)
            let port = server.port
            async let first = MemberTests.post(port, "/v1/requests/\(request)/undo", owner.token)
            async let second = MemberTests.post(port, "/v1/requests/\(request)/undo", barista.token)
            #expect(try await [first, second].map(\.status).sorted() == [200, 409])
        }
        let card = try await client.request("GET", "/v1/cards", token: customer.token)
        #expect(card.int("cards", 0, "stamps") == 0)
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        #expect((ledger.value("entries") as? [[String: Any]])?.filter { $0["kind"] as? String == "reversal" }.count == 5)
        client.close()
        try await server.stop()
    }

    @Test func anApprovalWhoseRewardWasUsedCannotBeUndone() async throws {
        let (server, owner, store, customer, client) = try await setUp([:], stampsPerReward: 2)
        let request = try await server.askForStamps(customer, store: store, count: 2)
        #expect(try await server.approve(owner, request).status == 200)
        let reward = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "reward"])
        #expect(try await server.approve(owner, try reward.string("id")).status == 200)
        let refused = try await client.request("POST", "/v1/requests/\(request)/undo", token: owner.token)
        #expect(refused.status == 409, "\(refused.text)")
        // The reward's use can be undone instead: the reward is back.
        let back = try await client.request("POST", "/v1/requests/\(try reward.string("id"))/undo", token: owner.token)
        #expect(back.status == 200 && back.int("card", "rewards") == 1, "\(back.text)")
        client.close()
        try await server.stop()
    }
}
