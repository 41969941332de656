// What a store's members read of its customers and its past: the list of cards, one customer's
// page with the ledger here, and the request history by customer and by time. On both engines.
import Foundation
import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct CustomerHistoryTests {
    @Test func theStoresCustomersAndTheirLedgersAreReadOnlyInsideTheStore() async throws {
        let clock = ManualClock(Date(timeIntervalSince1970: 1_795_860_000))
        let server = try await TestServer.start(clock: clock)
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let barista = try await server.addStaff(to: store, owner: owner)
        let (ann, ben, cal) = (try await server.signUp("customer", name: "Ann"), try await server.signUp("customer", name: "Ben"),
                               try await server.signUp("customer", name: "Cal"))
        let client = try await server.connect()
        #expect(try await server.approve(owner, try await server.askForStamps(ann, store: store, count: 2)).status == 200)
        clock.advance(by: 60)
        #expect(try await server.approve(owner, try await server.askForStamps(ben, store: store)).status == 200)
        clock.advance(by: 60)
        #expect(try await client.request("POST", "/v1/stores/\(store)/stamps", token: barista.token,
                                         json: ["customerId": ann.id, "count": 3]).status == 200)

        // The list: everyone with a card here, the card changed last first, a page at a time.
        let first = try await client.request("GET", "/v1/stores/\(store)/cards?limit=1", token: barista.token)
        #expect(first.status == 200, "\(first.text)")
        #expect(first.value("customers", 0, "customer", "id") as? String == ann.id)
        #expect(first.int("customers", 0, "card", "stamps") == 5)
        #expect(first.int("customers", 0, "card", "visits") == 2)
        let cursor = try first.string("nextCursor")
        let second = try await client.request("GET", "/v1/stores/\(store)/cards?limit=1&cursor=\(cursor)", token: barista.token)
        #expect(second.value("customers", 0, "customer", "name") as? String == "Ben")
        #expect(second.value("nextCursor") == nil)

        // A customer's page: the card and its ledger here, newest first, with who made each row.
        let page = try await client.request("GET", "/v1/stores/\(store)/customers/\(ann.id)", token: owner.token)
        #expect(page.status == 200, "\(page.text)")
        #expect(page.int("card", "stamps") == 5)
        let kinds = (page.value("ledger") as? [[String: Any]] ?? []).map { [$0["kind"] as? String ?? "", "\($0["stampsDelta"] ?? "")"] }
        #expect(kinds == [["manual_stamp", "3"], ["stamp_added", "2"]])
        #expect(page.value("ledger", 0, "member", "id") as? String == barista.id)

        // Only inside the store: no card here is not found; other owners and customers are refused.
        #expect(try await client.request("GET", "/v1/stores/\(store)/customers/\(cal.id)", token: owner.token).status == 404)
        #expect(try await client.request("GET", "/v1/stores/\(store)/customers/no-such-one", token: owner.token).status == 404)
        let stranger = try await server.signUp("owner")
        for token in [stranger.token, ann.token] {
            #expect(try await client.request("GET", "/v1/stores/\(store)/customers/\(ann.id)", token: token).status == 403)
            #expect(try await client.request("GET", "/v1/stores/\(store)/cards", token: token).status == 403)
        }
        for bad in ["limit=0", "limit=101", "cursor=nope"] {
            #expect(try await client.request("GET", "/v1/stores/\(store)/cards?\(bad)", token: owner.token).status == 400, "\(bad)")
        }

        // The store's ledger: every card's rows, newest first, by customer and by member.
        func ledgerRows(_ query: String, token: String? = nil) async throws -> [String] {
            let answer = try await client.request("GET", "/v1/stores/\(store)/ledger?\(query)", token: token ?? barista.token)
            #expect(answer.status == 200, "\(query): \(answer.text)")
            return (answer.value("entries") as? [[String: Any]] ?? []).map {
                "\(($0["customer"] as? [String: Any])?["name"] ?? "?") \(($0["entry"] as? [String: Any])?["kind"] ?? "?")"
            }
        }
        #expect(try await ledgerRows("") == ["Ann manual_stamp", "Ben stamp_added", "Ann stamp_added"])
        #expect(try await ledgerRows("customerId=\(ann.id)") == ["Ann manual_stamp", "Ann stamp_added"])
        #expect(try await ledgerRows("memberId=\(barista.id)") == ["Ann manual_stamp"])
        #expect(try await ledgerRows("limit=1&since=\(StampJSON.formatTimestamp(Date(timeIntervalSince1970: 1_795_860_030)))")
                == ["Ann manual_stamp"])
        for token in [stranger.token, ann.token] {
            #expect(try await client.request("GET", "/v1/stores/\(store)/ledger", token: token).status == 403)
        }
        #expect(try await client.request("GET", "/v1/stores/\(store)/ledger?memberId=%3C", token: owner.token).status == 400)

        // The request history by customer and by time.
        func ids(_ query: String) async throws -> [String] {
            let answer = try await client.request("GET", "/v1/stores/\(store)/requests?\(query)", token: barista.token)
            #expect(answer.status == 200, "\(query): \(answer.text)")
            return (answer.value("requests") as? [[String: Any]] ?? []).compactMap { $0["customerId"] as? String }
        }
        #expect(try await ids("customerId=\(ann.id)") == [ann.id])
        #expect(try await ids("customerId=\(cal.id)") == [])
        let afterAnn = StampJSON.formatTimestamp(Date(timeIntervalSince1970: 1_795_860_030))
        #expect(try await ids("since=\(afterAnn)") == [ben.id])
        #expect(try await ids("before=\(afterAnn)") == [ann.id])
        #expect(try await ids("since=\(afterAnn)&status=approved&customerId=\(ann.id)") == [])
        #expect(try await ids("since=\(afterAnn)&before=\(afterAnn)") == [])  // an empty period holds nothing
        for bad in ["since=yesterday", "customerId=%3Cx%3E"] {
            let answer = try await client.request("GET", "/v1/stores/\(store)/requests?\(bad)", token: owner.token)
            #expect(answer.status == 400, "\(bad): \(answer.text)")
        }
        client.close()
        try await server.stop()
    }
}
