// A store run by a team: the owner invites staff, who join with their own store accounts, see
// the same live queue on every device, decide requests under their own name, and lose the
// store (and every session) at once when the owner removes them. On both engines.
import Foundation
import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct MemberTests {
    @Test func aBaristaJoinsWithTheOwnersInvitationAndPicksTheStoreFromTheList() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner, ["name": "Bean There"])
        let client = try await server.connect()
        let invitation = try await client.request("POST", "/v1/stores/\(store)/invitations", token: owner.token)
        #expect(invitation.status == 201)
        let code = try invitation.string("code")
        #expect(code.count == 11 && code.contains("-"), "\(code)")
        #expect(invitation.value("storeName") as? String == "Bean There")

        let barista = try await server.signUp("owner", name: "Ben")
        // Typed loosely: lower case and no dash still match.
        let joined = try await client.request("POST", "/v1/me/stores", token: barista.token,
                                              json: ["invitationCode": code.lowercased().replacingOccurrences(of: "-", with: "")])
        #expect(joined.status == 201, "\(joined.text)")
        #expect(joined.value("role") as? String == "staff")
        #expect(joined.value("store", "id") as? String == store)

        let mine = try await client.request("GET", "/v1/me/stores", token: barista.token)
        #expect(mine.status == 200)
        #expect(mine.value("stores", 0, "store", "id") as? String == store)
        #expect(mine.value("stores", 0, "role") as? String == "staff")
        let owners = try await client.request("GET", "/v1/me/stores", token: owner.token)
        #expect(owners.value("stores", 0, "role") as? String == "owner")
        #expect((owners.value("stores") as? [Any])?.count == 1)

        // The code works once; a customer account cannot join; a member cannot join twice.
        let other = try await server.signUp("owner")
        let again = try await client.request("POST", "/v1/me/stores", token: other.token, json: ["invitationCode": code])
        #expect(again.status == 422, "\(again.text)")
        let customer = try await server.signUp("customer")
        let second = try await client.request("POST", "/v1/stores/\(store)/invitations", token: owner.token)
        let asCustomer = try await client.request("POST", "/v1/me/stores", token: customer.token,
                                                  json: ["invitationCode": try second.string("code")])
        #expect(asCustomer.status == 403)
        let twice = try await client.request("POST", "/v1/me/stores", token: barista.token,
                                             json: ["invitationCode": try second.string("code")])
        #expect(twice.status == 409)
        let malformed = try await client.request("POST", "/v1/me/stores", token: barista.token, json: ["invitationCode": "1234"])
        #expect(malformed.status == 400 && malformed.value("field") as? String == "invitationCode")

        let members = try await client.request("GET", "/v1/stores/\(store)/members", token: owner.token)
        let list = members.value("members") as? [[String: Any]] ?? []
        #expect(list.map { $0["name"] as? String } == ["Olga", "Ben"])
        #expect(list.map { $0["role"] as? String } == ["owner", "staff"])
        #expect(list.allSatisfy { $0["lastActiveAt"] != nil }, "a sign-in is activity: \(list)")
        #expect(members.int("openInvitations") == 1)
        client.close()
        try await server.stop()
    }

    @Test func everyMembersDeviceSeesTheQueueAndADecisionByOneReachesTheOthersWithTheirName() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner)
        let barista = try await server.signUp("owner", name: "Ben")
        let customer = try await server.signUp("customer", name: "Dana")
        let client = try await server.connect()
        let code = try await client.request("POST", "/v1/stores/\(store)/invitations", token: owner.token).string("code")
        _ = try await client.request("POST", "/v1/me/stores", token: barista.token, json: ["invitationCode": code])

        // Three devices: the owner's tablet, the barista's tablet and the barista's phone.
        var devices: [(TestClient, String, String)] = []
        for token in [owner.token, barista.token, barista.token] {
            let device = try await server.connect()
            let cursor = try await device.request("GET", "/v1/events?timeout=0", token: token).string("cursor")
            devices.append((device, token, cursor))
        }
        func parkAll() async throws {
            for (device, token, cursor) in devices {
                try await device.send(TestClient.raw("GET", "/v1/events?timeout=20&after=\(cursor)", token: token))
            }
            await server.hub.waitUntilParked(3)
        }
        try await parkAll()
        let request = try await server.askForStamps(customer, store: store, count: 2)
        for index in devices.indices {
            let answer = try await devices[index].0.readResponse()
            #expect(answer.value("events", 0, "type") as? String == "request.created")
            #expect(answer.value("events", 0, "data", "request", "id") as? String == request)
            devices[index].2 = try answer.string("cursor")
        }
        try await parkAll()
        let approved = try await server.approve(barista, request)
        #expect(approved.status == 200, "\(approved.text)")
        #expect(approved.value("request", "decidedBy", "name") as? String == "Ben")
        #expect(approved.value("request", "decidedBy", "id") as? String == barista.id)
        for (device, _, _) in devices {
            let answer = try await device.readResponse()
            #expect(answer.value("events", 0, "type") as? String == "request.approved")
            #expect(answer.value("events", 0, "data", "request", "decidedBy", "name") as? String == "Ben")
        }
        // The owner, a moment late, is told who decided it.
        let late = try await client.request("POST", "/v1/requests/\(request)/reject", token: owner.token)
        #expect(late.status == 409)
        #expect(late.value("request", "status") as? String == "approved")
        #expect(late.value("request", "decidedBy", "name") as? String == "Ben")
        #expect((late.value("detail") as? String)?.contains("by Ben") == true, "\(late.text)")
        // The customer's ledger names the barista.
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        #expect(ledger.value("entries", 0, "member", "name") as? String == "Ben")
        for (device, _, _) in devices { device.close() }
        client.close()
        try await server.stop()
    }

    @Test func twoMembersDecidingAtOnceOneWinsAndTheOtherGetsTheCurrentState() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner)
        let barista = try await server.addStaff(to: store, owner: owner, name: "Ben")
        let customer = try await server.signUp("customer")
        for _ in 0..<10 {
            let request = try await server.askForStamps(customer, store: store)
            let port = server.port
            async let first = Self.post(port, "/v1/requests/\(request)/approve", owner.token)
            async let second = Self.post(port, "/v1/requests/\(request)/reject", barista.token)
            let answers = try await [first, second]
            let statuses = answers.map(\.status).sorted()
            #expect(statuses == [200, 409], "\(answers.map(\.text))")
            guard let loser = answers.first(where: { $0.status == 409 }),
                  let winner = answers.first(where: { $0.status == 200 }) else { continue }
            let winnerName = winner.value("request", "decidedBy", "name") as? String ?? winner.value("decidedBy", "name") as? String
            #expect(loser.value("request", "decidedBy", "name") as? String == winnerName)
        }
        // The card equals its ledger, whoever won each race.
        let client = try await server.connect()
        let card = try await client.request("GET", "/v1/cards", token: customer.token)
        let ledger = try await client.request("GET", "/v1/cards/\(store)/ledger", token: customer.token)
        let entries = ledger.value("entries") as? [[String: Any]] ?? []
        let stamps = entries.compactMap { $0["stampsDelta"] as? Int }.reduce(0, +)
        // (No card at all when every race went to the rejection.)
        #expect((card.int("cards", 0, "stamps") ?? 0) == stamps)
        client.close()
        try await server.stop()
    }

    @Test func staffRunTheCounterButOnlyTheOwnerChangesTheStoreAndItsStaff() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let barista = try await server.addStaff(to: store, owner: owner)
        let customer = try await server.signUp("customer", "+49 170 555 0199")
        let client = try await server.connect()
        let s = "/v1/stores/\(store)"
        // The counter's work.
        #expect(try await client.request("GET", "\(s)/requests?status=pending", token: barista.token).status == 200)
        let request = try await server.askForStamps(customer, store: store)
        #expect(try await server.approve(barista, request).status == 200)
        #expect(try await client.request("POST", "\(s)/stamps", token: barista.token,
                                         json: ["customerId": customer.id, "count": 1]).status == 200)
        #expect(try await client.request("GET", "\(s)/customers?phoneEndsWith=0199", token: barista.token).status == 200)
        #expect(try await client.request("POST", "\(s)/customers", token: barista.token,
                                         json: ["phone": "+1 555 010 0000"]).status == 201)
        #expect(try await client.request("GET", "/v1/requests/\(request)", token: barista.token).status == 200)
        // The owner's.
        #expect(try await client.request("PATCH", s, token: barista.token, json: ["name": "Mine now"]).status == 403)
        #expect(try await client.request("POST", "\(s)/invitations", token: barista.token).status == 403)
        #expect(try await client.request("GET", "\(s)/members", token: barista.token).status == 403)
        #expect(try await client.request("DELETE", "\(s)/members/\(owner.id)", token: barista.token).status == 403)
        #expect(try await client.request("GET", "\(s)/activity?day=2026-12-02", token: barista.token).status == 403)
        // The owner cannot be removed, and nobody outside is a member.
        #expect(try await client.request("DELETE", "\(s)/members/\(owner.id)", token: owner.token).status == 409)
        #expect(try await client.request("DELETE", "\(s)/members/\(customer.id)", token: owner.token).status == 404)
        client.close()
        try await server.stop()
    }

    @Test func removingABaristaSignsThemOutEverywhereAndAnswersTheirParkedPollAtOnce() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let barista = try await server.addStaff(to: store, owner: owner, login: "ben@example.com", name: "Ben")
        let customer = try await server.signUp("customer")
        let request = try await server.askForStamps(customer, store: store)
        #expect(try await server.approve(barista, request).status == 200)

        let device = try await server.connect()
        let cursor = try await device.request("GET", "/v1/events?timeout=0", token: barista.token).string("cursor")
        try await device.send(TestClient.raw("GET", "/v1/events?timeout=30&after=\(cursor)", token: barista.token))
        await server.hub.waitUntilParked(1)
        let client = try await server.connect()
        let removed = try await client.request("DELETE", "/v1/stores/\(store)/members/\(barista.id)", token: owner.token)
        #expect(removed.status == 204, "\(removed.text)")
        let answer = try await device.readResponse()
        #expect(answer.status == 401)
        #expect(try await client.request("GET", "/v1/me", token: barista.token).status == 401)
        // Signed in again, the store is gone from their list and its queue refused.
        let again = try await client.request("POST", "/v1/sessions", json: ["login": "ben@example.com", "password": "correct horse"])
        let token = try again.string("token")
        #expect((try await client.request("GET", "/v1/me/stores", token: token).value("stores") as? [Any])?.isEmpty == true)
        #expect(try await client.request("GET", "/v1/stores/\(store)/requests", token: token).status == 403)
        // What they did keeps their name.
        let history = try await client.request("GET", "/v1/requests/\(request)", token: owner.token)
        #expect(history.value("decidedBy", "name") as? String == "Ben")
        let members = try await client.request("GET", "/v1/stores/\(store)/members", token: owner.token)
        #expect((members.value("members") as? [Any])?.count == 1)
        device.close()
        client.close()
        try await server.stop()
    }

    @Test func theOwnerListsDecisionsByMemberAndCountsEachMembersDay() async throws {
        let clock = ManualClock(Date(timeIntervalSince1970: 1_796_000_000))  // 2026-11-30 00:53 UTC
        let server = try await TestServer.start(clock: clock)
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner)
        let barista = try await server.addStaff(to: store, owner: owner, name: "Ben")
        let customer = try await server.signUp("customer")
        let client = try await server.connect()
        for count in [2, 1] {
            let request = try await server.askForStamps(customer, store: store, count: count)
            #expect(try await server.approve(barista, request).status == 200)
        }
        let rejected = try await server.askForStamps(customer, store: store)
        #expect(try await client.request("POST", "/v1/requests/\(rejected)/reject", token: owner.token).status == 200)
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps", token: barista.token,
                                         json: ["customerId": customer.id, "count": 3]).status == 200)
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps", token: barista.token,
                                         json: ["customerId": customer.id, "count": -1]).status == 200)
        #expect(try await client.request("POST", "/v1/stores/\(store)/customers", token: barista.token,
                                         json: ["phone": "+1 555 010 0001"]).status == 201)

        let bens = try await client.request("GET", "/v1/stores/\(store)/requests?decidedBy=\(barista.id)", token: owner.token)
        #expect((bens.value("requests") as? [[String: Any]])?.count == 2)
        let day = try await client.request("GET", "/v1/stores/\(store)/activity?day=2026-11-30", token: owner.token)
        #expect(day.status == 200, "\(day.text)")
        let rows = day.value("members") as? [[String: Any]] ?? []
        let ben = rows.first { ($0["member"] as? [String: Any])?["name"] as? String == "Ben" }
        let olga = rows.first { ($0["member"] as? [String: Any])?["name"] as? String == "Olga" }
        #expect(ben?["approved"] as? Int == 2)
        #expect(ben?["stamps"] as? Int == 5)  // 2 + 1 approved, 3 stamped, 1 taken back
        #expect(ben?["walkIns"] as? Int == 1)
        #expect(olga?["rejected"] as? Int == 1)
        #expect(olga?["approved"] as? Int == 0)
        // The day before is empty, and a day in another zone starts at its own midnight.
        let before = try await client.request("GET", "/v1/stores/\(store)/activity?day=2026-11-29", token: owner.token)
        #expect((before.value("members") as? [Any])?.isEmpty == true)
        // 00:53 UTC is still the 29th in UTC−10, and already the 30th in UTC+9.
        let west = try await client.request("GET", "/v1/stores/\(store)/activity?day=2026-11-30&utcOffsetMinutes=-600",
                                            token: owner.token)
        #expect((west.value("members") as? [Any])?.isEmpty == true, "\(west.text)")
        let east = try await client.request("GET", "/v1/stores/\(store)/activity?day=2026-11-30&utcOffsetMinutes=540",
                                            token: owner.token)
        #expect((east.value("members") as? [Any])?.count == 2, "\(east.text)")
        for bad in ["2026-02-30", "30.11.2026", "2026-11-30&utcOffsetMinutes=900"] {
            let answer = try await client.request("GET", "/v1/stores/\(store)/activity?day=\(bad)", token: owner.token)
            #expect(answer.status == 400, "\(bad): \(answer.text)")
        }
        client.close()
        try await server.stop()
    }

    @Test func wrongInvitationCodesRunOutPerAccountAndAStoreHasAStaffLimit() async throws {
        let server = try await TestServer.start { _, settings in
            settings.limits.invitationMissesPerAccountPerHour = 3
            settings.limits.staffPerStore = 1
        }
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let guesser = try await server.signUp("owner")
        let client = try await server.connect()
        for _ in 0..<3 {
            let answer = try await client.request("POST", "/v1/me/stores", token: guesser.token, json: ["invitationCode": "ABCDE-FGHJK"])
            #expect(answer.status == 422)
        }
        let refused = try await client.request("POST", "/v1/me/stores", token: guesser.token, json: ["invitationCode": "ABCDE-FGHJK"])
        #expect(refused.status == 429)
        #expect(refused.header("retry-after") != nil)
        // Even the right code waits now.
        let real = try await client.request("POST", "/v1/stores/\(store)/invitations", token: owner.token).string("code")
        #expect(try await client.request("POST", "/v1/me/stores", token: guesser.token, json: ["invitationCode": real]).status == 429)
        // One staff: the next invitation is refused until one leaves.
        let first = try await server.signUp("owner")
        #expect(try await client.request("POST", "/v1/me/stores", token: first.token, json: ["invitationCode": real]).status == 201)
        #expect(try await client.request("POST", "/v1/stores/\(store)/invitations", token: owner.token).status == 409)
        client.close()
        try await server.stop()
    }

    static func post(_ port: Int, _ path: String, _ token: String) async throws -> TestResponse {
        let client = try await TestClient.connect(port: port)
        defer { client.close() }
        return try await client.request("POST", path, token: token)
    }
}
