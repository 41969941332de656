// Walk-in customers, owner stamping and gifts, each test named for its rule.
import Foundation
import Testing

@Suite struct WalkInTests {
    @Test func anOwnerFindsCustomersByPhoneEndingOnlyAmongTheStoresCustomers() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let regular = try await server.signUp("customer", "+82 10 1234 5678", name: "Regular")
        _ = try await server.signUp("customer", "+82 10 9999 5678", name: "Stranger")
        _ = try await server.approve(owner, try await server.askForStamps(regular, store: store))
        let client = try await server.connect()
        let found = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=5678", token: owner.token)
        let names = (found.value("customers") as? [[String: Any]])?.compactMap { $0["name"] as? String }
        #expect(names == ["Regular"])
        let exact = try await client.request("GET", "/v1/stores/\(store)/customers?login=%2B82109999%205678", token: owner.token)
        #expect(exact.value("customers", 0, "name") as? String == "Stranger")
        let tooShort = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=78", token: owner.token)
        #expect(tooShort.status == 400)
        let otherOwner = try await server.signUp("owner")
        #expect(try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=5678", token: otherOwner.token).status == 403)
        #expect(try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=5678", token: regular.token).status == 403)
        client.close()
        try await server.stop()
    }

    @Test func aWalkInIsStampedAndLaterClaimedWithTheCode() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner, ["stampsPerReward": 5])
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token,
                                                  json: ["phone": "010-5555-0101", "name": "Walk-in"])
        #expect(registered.status == 201)
        let customerId = try registered.string("customer", "id")
        let code = try registered.string("claim", "code")
        let found = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=0101", token: owner.token)
        #expect(found.value("customers", 0, "id") as? String == customerId)
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                               json: ["customerId": customerId, "count": 6])
        #expect(stamped.int("card", "stamps") == 1)
        #expect(stamped.int("card", "rewards") == 1)
        // The phone's owner signs up: without the code the account is not theirs yet.
        let body: [String: Any] = ["role": "customer", "login": "01055550101", "password": "my own password", "name": "Dana"]
        let withoutCode = try await client.request("POST", "/v1/accounts", json: body)
        #expect(withoutCode.status == 409)
        #expect(withoutCode.value("field") as? String == "claimCode")
        var wrong = body
        wrong["claimCode"] = code == "000000" ? "111111" : "000000"
        #expect(try await client.request("POST", "/v1/accounts", json: wrong).status == 422)
        var right = body
        right["claimCode"] = code
        let claimed = try await client.request("POST", "/v1/accounts", json: right)
        #expect(claimed.status == 201)
        #expect(try claimed.string("account", "id") == customerId)
        #expect(claimed.value("account", "name") as? String == "Dana")
        #expect(claimed.value("account", "login") as? String == "01055550101")
        let cards = try await client.request("GET", "/v1/cards", token: try claimed.string("token"))
        #expect(cards.int("cards", 0, "stamps") == 1)
        #expect(cards.int("cards", 0, "rewards") == 1)
        // The code was used up.
        #expect(try await client.request("POST", "/v1/accounts", json: right).status == 409)
        client.close()
        try await server.stop()
    }

    @Test func wrongClaimCodesRunOut() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+1 555 010 9999"])
        let code = try registered.string("claim", "code")
        let wrongCode = code == "123456" ? "654321" : "123456"
        var body: [String: Any] = ["role": "customer", "login": "+15550109999", "password": "my own password", "name": "E", "claimCode": wrongCode]
        for _ in 0..<5 { #expect(try await client.request("POST", "/v1/accounts", json: body).status == 422) }
        body["claimCode"] = code
        #expect(try await client.request("POST", "/v1/accounts", json: body).status == 429)
        // The owner can issue a fresh code.
        let fresh = try await client.request("POST", "/v1/stores/\(store)/customers/\(try registered.string("customer", "id"))/claim-code", token: owner.token)
        #expect(fresh.status == 201)
        body["claimCode"] = try fresh.string("code")
        #expect(try await client.request("POST", "/v1/accounts", json: body).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func anotherStoresOwnerCannotIssueAClaimCode() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let thief = try await server.signUp("owner")
        let thiefStore = try await server.createStore(thief)
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "010 5555 7777"])
        let id = try registered.string("customer", "id")
        let stolen = try await client.request("POST", "/v1/stores/\(thiefStore)/customers/\(id)/claim-code", token: thief.token)
        #expect(stolen.status == 404)
        client.close()
        try await server.stop()
    }

    @Test func aTakenPhoneCannotBeRegisteredAgain() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        _ = try await server.signUp("customer", "+44 20 7946 0000")
        let client = try await server.connect()
        let again = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+442079460000"])
        #expect(again.status == 409)
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "not a phone"]).status == 400)
        client.close()
        try await server.stop()
    }

    @Test func ownerStampingWritesTheLedgerAndTellsTheCustomer() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["stampsPerReward": 4])
        let client = try await server.connect()
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                               json: ["customerId": customer.id, "count": 9])
        #expect(stamped.int("card", "stamps") == 1)
        #expect(stamped.int("card", "rewards") == 2)
        let events = try await client.request("GET", "/v1/events?after=0&timeout=1", token: customer.token)
        #expect(events.value("events", 0, "type") as? String == "card.updated")
        #expect(events.value("events", 0, "data", "reason") as? String == "ownerStamped")
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        #expect(ledger.value("entries", 0, "kind") as? String == "manual_stamp")
        let correction = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                                  json: ["customerId": customer.id, "count": -2])
        #expect(correction.status == 409)
        let otherOwner = try await server.signUp("owner")
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps", token: otherOwner.token,
                                         json: ["customerId": customer.id, "count": 1]).status == 403)
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                         json: ["customerId": "acc_nobody", "count": 1]).status == 404)
        client.close()
        try await server.stop()
    }
}

@Suite struct GiftTests {
    struct Pair {
        let server: TestServer
        let owner: TestServer.Person
        let giver: TestServer.Person
        let store: String
    }

    func start(stamps: Int) async throws -> Pair {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let giver = try await server.signUp("customer", "giver-\(UUID().uuidString.prefix(6))", name: "Gia")
        let store = try await server.createStore(owner, ["stampsPerReward": 50])
        _ = try await server.approve(owner, try await server.askForStamps(giver, store: store, count: stamps))
        return Pair(server: server, owner: owner, giver: giver, store: store)
    }

    @Test func aGiftMovesStampsAtomicallyWithLedgerRowsAndEventsOnBothSides() async throws {
        let world = try await start(stamps: 5)
        _ = try await world.server.signUp("customer", "friend@example.com", name: "Fred")
        let client = try await world.server.connect()
        let gift = try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token,
                                            json: ["to": "Friend@Example.com", "count": 3])
        #expect(gift.status == 201)
        #expect(gift.int("card", "stamps") == 2)
        #expect(gift.value("toName") as? String == "Fred")
        let session = try await client.request("POST", "/v1/sessions", json: ["login": "friend@example.com", "password": "correct horse"])
        let friend = try session.string("token")
        let cards = try await client.request("GET", "/v1/cards", token: friend)
        #expect(cards.int("cards", 0, "stamps") == 3)
        let received = try await client.request("GET", "/v1/events?after=0&timeout=1", token: friend)
        #expect(received.value("events", 0, "data", "reason") as? String == "giftReceived")
        #expect(received.value("events", 0, "data", "counterpart") as? String == "Gia")
        let sent = try await client.request("GET", "/v1/cards/\(world.store)/ledger", token: world.giver.token)
        #expect((sent.value("entries") as? [[String: Any]])?.last?["kind"] as? String == "gift_sent")
        client.close()
        try await world.server.stop()
    }

    @Test func aGiftLargerThanTheBalanceIsAConflictAndChangesNothing() async throws {
        let world = try await start(stamps: 2)
        _ = try await world.server.signUp("customer", "short@example.com")
        let client = try await world.server.connect()
        let gift = try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token,
                                            json: ["to": "short@example.com", "count": 3])
        #expect(gift.status == 409)
        let cards = try await client.request("GET", "/v1/cards", token: world.giver.token)
        #expect(cards.int("cards", 0, "stamps") == 2)
        client.close()
        try await world.server.stop()
    }

    @Test func aGiftToOneselfIsRefused() async throws {
        let world = try await start(stamps: 2)
        let me = try await world.server.connect()
        let login = try await me.request("GET", "/v1/me", token: world.giver.token).string("login")
        let gift = try await me.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token, json: ["to": login, "count": 1])
        #expect(gift.status == 400)
        #expect(gift.value("field") as? String == "to")
        me.close()
        try await world.server.stop()
    }

    @Test func aGiftToAnUnknownLoginIsNotFound() async throws {
        let world = try await start(stamps: 2)
        let client = try await world.server.connect()
        let gift = try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token,
                                            json: ["to": "nobody@example.com", "count": 1])
        #expect(gift.status == 404)
        let toOwner = try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token,
                                               json: ["to": try await client.request("GET", "/v1/me", token: world.owner.token).string("login"), "count": 1])
        #expect(toOwner.status == 404)
        client.close()
        try await world.server.stop()
    }

    @Test func onlyCustomersGiveAndOnlyFromTheirOwnCard() async throws {
        let world = try await start(stamps: 2)
        _ = try await world.server.signUp("customer", "someone@example.com")
        let stranger = try await world.server.signUp("customer")
        let client = try await world.server.connect()
        let body: [String: Any] = ["to": "someone@example.com", "count": 1]
        #expect(try await client.request("POST", "/v1/cards/\(world.store)/gifts", json: body).status == 401)
        #expect(try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.owner.token, json: body).status == 403)
        #expect(try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: stranger.token, json: body).status == 404)
        client.close()
        try await world.server.stop()
    }

    @Test func giftsAreRateLimited() async throws {
        let world = try await start(stamps: 10)
        _ = try await world.server.signUp("customer", "lucky@example.com")
        let client = try await world.server.connect()
        for _ in 0..<10 {
            #expect(try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token,
                                             json: ["to": "lucky@example.com", "count": 1]).status == 201)
        }
        // Ten stamps went, so the card is empty, but the limit answers first.
        let limited = try await client.request("POST", "/v1/cards/\(world.store)/gifts", token: world.giver.token,
                                               json: ["to": "lucky@example.com", "count": 1])
        #expect(limited.status == 429)
        #expect(limited.header("retry-after") != nil)
        client.close()
        try await world.server.stop()
    }
}
