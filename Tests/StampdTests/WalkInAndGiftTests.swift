// Walk-ins (cards a store holds for a phone number), member codes, owner stamping and gifts,
// each test named for its rule.
import Foundation
import Testing

@Suite(.timeLimit(.minutes(2))) struct WalkInTests {
    /// Signs up through the API, answering the whole response (the harness's helper requires 201).
    static func signUp(_ client: TestClient, _ login: String, claimCode: String? = nil) async throws -> TestResponse {
        var body: [String: Any] = ["role": "customer", "login": login, "password": "my own password", "name": "Dana"]
        if let claimCode { body["claimCode"] = claimCode }
        return try await client.request("POST", "/v1/accounts", json: body)
    }

    @Test func aStoreFindsOnlyPeopleWhoHaveACardThere() async throws {
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
        // An exact login finds nobody who has no card here: the store is no directory of accounts.
        let exact = try await client.request("GET", "/v1/stores/\(store)/customers?login=%2B82109999%205678", token: owner.token)
        #expect(exact.status == 200)
        #expect((exact.value("customers") as? [Any])?.isEmpty == true)
        let regularByLogin = try await client.request("GET", "/v1/stores/\(store)/customers?login=%2B821012345678", token: owner.token)
        #expect(regularByLogin.value("customers", 0, "name") as? String == "Regular")
        let byName = try await client.request("GET", "/v1/stores/\(store)/customers?name=regu", token: owner.token)
        #expect(byName.value("customers", 0, "id") as? String == regular.id)
        #expect((try await client.request("GET", "/v1/stores/\(store)/customers?name=Stranger", token: owner.token)
            .value("customers") as? [Any])?.isEmpty == true)
        let tooShort = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=78", token: owner.token)
        #expect(tooShort.status == 400)
        let otherOwner = try await server.signUp("owner")
        #expect(try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=5678", token: otherOwner.token).status == 403)
        #expect(try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=5678", token: regular.token).status == 403)
        client.close()
        try await server.stop()
    }

    @Test func aWalkInIsACardHeldForThePhoneAndClaimedWithTheStoresCode() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner, ["stampsPerReward": 5])
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token,
                                                  json: ["phone": "010-5555-0101", "name": "Walk-in"])
        #expect(registered.status == 201)
        #expect(registered.value("customer", "walkIn") as? Bool == true)
        let heldId = try registered.string("customer", "id")
        let code = try registered.string("claim", "code")
        let found = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=0101", token: owner.token)
        #expect(found.value("customers", 0, "id") as? String == heldId)
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                               json: ["customerId": heldId, "count": 6])
        #expect(stamped.int("card", "stamps") == 1)
        #expect(stamped.int("card", "rewards") == 1)
        // Nobody signs in to a held card.
        let signIn = try await client.request("POST", "/v1/sessions", json: ["login": "010-5555-0101", "password": "anything at all"])
        #expect(signIn.status == 401)
        // The phone's owner signs up with the number, no code needed: the store reserved nothing.
        let person = try await Self.signUp(client, "01055550101")
        #expect(person.status == 201)
        let token = try person.string("token")
        #expect((try await client.request("GET", "/v1/cards", token: token).value("cards") as? [Any])?.isEmpty == true)
        // Then claims the held card with the store's code; a wrong one is 422 and moves nothing.
        let wrong = code == "000000" ? "111111" : "000000"
        let refused = try await client.request("POST", "/v1/me/claims", token: token, json: ["code": wrong])
        #expect(refused.status == 422)
        #expect(refused.value("field") as? String == "code")
        let claimed = try await client.request("POST", "/v1/me/claims", token: token, json: ["code": code])
        #expect(claimed.status == 200, "\(claimed.text)")
        #expect(claimed.int("card", "stamps") == 1)
        #expect(claimed.int("card", "rewards") == 1)
        // The ledger came along: the card still equals its rows.
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: token)
        let entries = try #require(ledger.value("entries") as? [[String: Any]])
        #expect(entries.reduce(0) { $0 + ($1["stampsDelta"] as? Int ?? 0) } == 1)
        #expect(entries.reduce(0) { $0 + ($1["rewardsDelta"] as? Int ?? 0) } == 1)
        // The store now sees the person, not the held card; the code is used up.
        let after = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=0101", token: owner.token)
        #expect(after.value("customers", 0, "id") as? String == (try person.string("account", "id")))
        #expect(after.value("customers", 0, "walkIn") as? Bool == false)
        #expect(try await client.request("POST", "/v1/me/claims", token: token, json: ["code": code]).status == 422)
        client.close()
        try await server.stop()
    }

    @Test func aClaimCodeAtSignUpMovesTheHeldCardInOneStep() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+1 555 010 4444"])
        _ = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                     json: ["customerId": try registered.string("customer", "id"), "count": 3])
        let wrong = try await Self.signUp(client, "+15550104444", claimCode: "12345")
        #expect(wrong.status == 400)
        let person = try await Self.signUp(client, "(+1) 555 010 4444", claimCode: try registered.string("claim", "code"))
        #expect(person.status == 201)
        let cards = try await client.request("GET", "/v1/cards", token: try person.string("token"))
        #expect(cards.int("cards", 0, "stamps") == 3)
        client.close()
        try await server.stop()
    }

    @Test func registeringAPhoneNeverKeepsItsOwnerFromSigningUp() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        for index in 0..<20 {
            let phone = "+49 170 000 \(1000 + index)"
            #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": phone]).status == 201)
        }
        for index in 0..<20 {
            #expect(try await Self.signUp(client, "+491700001\(String(1000 + index).suffix(3))").status == 201)
        }
        client.close()
        try await server.stop()
    }

    /// The attack from the review: an owner of store Y tries to reach a walk-in of store X.
    @Test func anotherStoreCannotReadMoveOrClaimAWalkInOfThisStore() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let thief = try await server.signUp("owner")
        let thiefStore = try await server.createStore(thief)
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "010 5555 7777"])
        let heldId = try registered.string("customer", "id")
        let code = try registered.string("claim", "code")
        _ = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token, json: ["customerId": heldId, "count": 9])
        // Looking it up from Y finds nothing; stamping it or asking Y for a code is 404.
        let look = try await client.request("GET", "/v1/stores/\(thiefStore)/customers?login=01055557777", token: thief.token)
        #expect((look.value("customers") as? [Any])?.isEmpty == true)
        #expect(try await client.request("POST", "/v1/stores/\(thiefStore)/stamps", token: thief.token,
                                         json: ["customerId": heldId, "count": 1]).status == 404)
        #expect(try await client.request("POST", "/v1/stores/\(thiefStore)/customers/\(heldId)/claim-code", token: thief.token).status == 404)
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers/\(heldId)/claim-code", token: thief.token).status == 403)
        // Y holds its own card for the number; its code claims only that one.
        let own = try await client.request("POST", "/v1/stores/\(thiefStore)/customers", token: thief.token, json: ["phone": "010 5555 7777"])
        #expect(own.status == 201)
        let attacker = try await Self.signUp(client, "01055557777")
        let attackerToken = try attacker.string("token")
        let stolen = try await client.request("POST", "/v1/me/claims", token: attackerToken, json: ["code": try own.string("claim", "code")])
        #expect(stolen.value("card", "storeId") as? String == thiefStore)
        #expect(stolen.int("card", "stamps") == 0)
        // X's card is still held, and X's code still claims it (for whoever holds the number).
        let held = try await client.request("GET", "/v1/stores/\(store)/customers?phoneEndsWith=7777", token: owner.token)
        #expect(held.value("customers", 0, "id") as? String == heldId)
        let real = try await client.request("POST", "/v1/me/claims", token: attackerToken, json: ["code": code])
        #expect(real.int("card", "stamps") == 9)
        #expect(real.value("card", "storeId") as? String == store)
        client.close()
        try await server.stop()
    }

    @Test func wrongClaimCodesRunOutPerCodeAndPerPhoneAcrossNewCodes() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let registered = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+1 555 010 9999"])
        let heldId = try registered.string("customer", "id")
        let code = try registered.string("claim", "code")
        let person = try await Self.signUp(client, "+15550109999")
        let token = try person.string("token")
        let wrongCode = code == "123456" ? "654321" : "123456"
        for _ in 0..<5 {
            #expect(try await client.request("POST", "/v1/me/claims", token: token, json: ["code": wrongCode]).status == 422)
        }
        // Five wrong tries void the code, even for the right digits.
        #expect(try await client.request("POST", "/v1/me/claims", token: token, json: ["code": code]).status == 422)
        // A fresh code works, but does not reset the phone's daily allowance (10 wrong a day).
        let fresh = try await client.request("POST", "/v1/stores/\(store)/customers/\(heldId)/claim-code", token: owner.token)
        #expect(fresh.status == 201)
        let freshCode = try fresh.string("code")
        let otherWrong = freshCode == "111111" ? "222222" : "111111"
        for _ in 0..<4 {
            #expect(try await client.request("POST", "/v1/me/claims", token: token, json: ["code": otherWrong]).status == 422)
        }
        let limited = try await client.request("POST", "/v1/me/claims", token: token, json: ["code": freshCode])
        #expect(limited.status == 429)
        #expect(limited.header("retry-after") != nil)
        server.clock.advance(by: 86_401)
        let again = try await client.request("POST", "/v1/stores/\(store)/customers/\(heldId)/claim-code", token: owner.token)
        #expect(try await client.request("POST", "/v1/me/claims", token: token, json: ["code": try again.string("code")]).status == 200)
        client.close()
        try await server.stop()
    }

    @Test func oneStoreHoldsOneCardPerPhone() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+44 20 7946 0000"]).status == 201)
        let again = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+442079460000"])
        #expect(again.status == 409)
        #expect(again.value("field") as? String == "phone")
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "not a phone"]).status == 400)
        client.close()
        try await server.stop()
    }

    @Test func aMemberCodeFromThePersonsPhoneLetsAStoreAddThem() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let customer = try await server.signUp("customer")
        let client = try await server.connect()
        #expect(try await client.request("POST", "/v1/me/member-code", token: owner.token).status == 403)
        let member = try await client.request("POST", "/v1/me/member-code", token: customer.token)
        #expect(member.status == 201)
        let code = try member.string("code")
        #expect(code.count == 8)
        let added = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["memberCode": code])
        #expect(added.status == 201, "\(added.text)")
        #expect(added.value("customer", "id") as? String == customer.id)
        #expect(added.value("claim") == nil || added.value("claim") is NSNull)
        let told = try await client.request("GET", "/v1/events?after=0&timeout=1", token: customer.token)
        #expect(told.value("events", 0, "data", "reason") as? String == "added")
        #expect(told.value("events", 0, "data", "card", "storeId") as? String == store)
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                               json: ["customerId": customer.id, "count": 2])
        #expect(stamped.int("card", "stamps") == 2)
        // A code works once: another store that saw it adds nobody.
        let elsewhere = try await server.createStore(owner)
        #expect(try await client.request("POST", "/v1/stores/\(elsewhere)/customers", token: owner.token,
                                         json: ["memberCode": code]).status == 422)
        // An expired code, and unknown ones, find nobody; unknown codes run out per store.
        let later = try await client.request("POST", "/v1/me/member-code", token: customer.token).string("code")
        server.clock.advance(by: 601)
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token,
                                         json: ["memberCode": later]).status == 422)
        for index in 0..<19 {
            #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token,
                                             json: ["memberCode": String(10_000_000 + index)]).status == 422)
        }
        let limited = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["memberCode": "12345678"])
        #expect(limited.status == 429)
        client.close()
        try await server.stop()
    }

    @Test func stampingNeedsACardAtTheStoreSoNoStrangerGetsOne() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let stranger = try await server.signUp("customer")
        let client = try await server.connect()
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                               json: ["customerId": stranger.id, "count": 1])
        #expect(stamped.status == 404)
        #expect(stamped.value("field") as? String == "customerId")
        #expect((try await client.request("GET", "/v1/cards", token: stranger.token).value("cards") as? [Any])?.isEmpty == true)
        let events = try await client.request("GET", "/v1/events?after=0&timeout=1", token: stranger.token)
        #expect((events.value("events") as? [Any])?.isEmpty == true)
        client.close()
        try await server.stop()
    }

    @Test func ownerStampingWritesTheLedgerAndTellsTheCustomer() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner, ["stampsPerReward": 4])
        let client = try await server.connect()
        let code = try await client.request("POST", "/v1/me/member-code", token: customer.token).string("code")
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["memberCode": code]).status == 201)
        let stamped = try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                               json: ["customerId": customer.id, "count": 9])
        #expect(stamped.int("card", "stamps") == 1)
        #expect(stamped.int("card", "rewards") == 2)
        let events = try await client.request("GET", "/v1/events?after=0&timeout=1", token: customer.token)
        #expect(events.value("events", 1, "type") as? String == "card.updated")
        #expect(events.value("events", 1, "data", "reason") as? String == "ownerStamped")
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

@Suite(.timeLimit(.minutes(2))) struct GiftTests {
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
        // Each side's ledger names the other person of the gift.
        #expect((sent.value("entries") as? [[String: Any]])?.last?["counterpart"] as? String == "Fred")
        let got = try await client.request("GET", "/v1/cards/\(world.store)/ledger", token: friend)
        #expect((got.value("entries") as? [[String: Any]])?.last?["kind"] as? String == "gift_received")
        #expect((got.value("entries") as? [[String: Any]])?.last?["counterpart"] as? String == "Gia")
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

@Suite(.timeLimit(.minutes(2))) struct GiftProbeTests {
    @Test func probingUnknownLoginsUsesUpTheGiftAllowanceAndANoCardAnswerSaysNothingOfTheLogin() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let giver = try await server.signUp("customer")
        _ = try await server.signUp("customer", "exists@example.com")
        let cardless = try await server.signUp("customer")
        _ = try await server.approve(owner, try await server.askForStamps(giver, store: store, count: 2))
        let client = try await server.connect()
        // Without a card, an existing and an unknown login get the same answer.
        let known = try await client.request("POST", "/v1/cards/\(store)/gifts", token: cardless.token, json: ["to": "exists@example.com", "count": 1])
        let unknown = try await client.request("POST", "/v1/cards/\(store)/gifts", token: cardless.token, json: ["to": "nobody@example.com", "count": 1])
        #expect(known.status == 404 && unknown.status == 404)
        #expect(known.text == unknown.text)
        for index in 0..<10 {
            #expect(try await client.request("POST", "/v1/cards/\(store)/gifts", token: giver.token,
                                             json: ["to": "probe\(index)@example.com", "count": 1]).status == 404)
        }
        let limited = try await client.request("POST", "/v1/cards/\(store)/gifts", token: giver.token, json: ["to": "exists@example.com", "count": 1])
        #expect(limited.status == 429)
        client.close()
        try await server.stop()
    }
}

@Suite(.timeLimit(.minutes(2))) struct GiftRetryTests {
    @Test func aRetriedGiftAnswersItsFirstResultEvenWhenTheBalanceIsSpent() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let giver = try await server.signUp("customer")
        _ = try await server.signUp("customer", "friend@example.com")
        _ = try await server.approve(owner, try await server.askForStamps(giver, store: store, count: 2))
        let client = try await server.connect()
        let body: [String: Any] = ["to": "friend@example.com", "count": 2]
        let first = try await client.request("POST", "/v1/cards/\(store)/gifts", token: giver.token, json: body,
                                             headers: ["Idempotency-Key": "gift-1"])
        #expect(first.status == 201)
        let retry = try await client.request("POST", "/v1/cards/\(store)/gifts", token: giver.token, json: body,
                                             headers: ["Idempotency-Key": "gift-1"])
        #expect(retry.status == 201)
        #expect(retry.value("id") as? String == first.value("id") as? String)
        client.close()
        try await server.stop()
    }
}
