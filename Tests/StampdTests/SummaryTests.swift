// The owner's numbers per day (GET /v1/stores/{id}/summary), counted from the rows themselves on
// both engines: what an undo takes back is not counted, days begin at the owner's midnight.
import Foundation
import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct SummaryTests {
    @Test func theSummaryCountsEachDayFromItsRowsAtTheOwnersMidnight() async throws {
        // Day one: 2026-11-28 10:00 UTC; day two a day later; "today" is 2026-11-30 00:53 UTC.
        let clock = ManualClock(Date(timeIntervalSince1970: 1_795_860_000))
        let server = try await TestServer.start(clock: clock)
        let owner = try await server.signUp("owner", name: "Olga")
        let store = try await server.createStore(owner, ["stampsPerReward": 3, "requestTtlSeconds": 86_400])
        let (dana, eli, finn) = (try await server.signUp("customer"), try await server.signUp("customer"),
                                 try await server.signUp("customer"))
        let client = try await server.connect()
        func ok(_ response: TestResponse, _ what: String) { #expect((200..<300).contains(response.status), "\(what): \(response.text)") }

        // Day one: Dana gets 2 stamps and 3 more directly, and one request rejected; Eli's
        // approval is undone. Both cards are new.
        ok(try await server.approve(owner, try await server.askForStamps(dana, store: store, count: 2)), "approve")
        ok(try await client.request("POST", "/v1/stores/\(store)/stamps", token: owner.token,
                                    json: ["customerId": dana.id, "count": 3]), "stamp")
        ok(try await client.request("POST", "/v1/requests/\(try await server.askForStamps(dana, store: store))/reject",
                                    token: owner.token), "reject")
        let undone = try await server.askForStamps(eli, store: store)
        ok(try await server.approve(owner, undone), "approve")
        ok(try await client.request("POST", "/v1/requests/\(undone)/undo", token: owner.token), "undo")

        // Day two: Dana comes back for her reward; Finn is new; Eli's request is still pending.
        clock.advance(by: 86_400)
        let reward = try await client.request("POST", "/v1/stores/\(store)/requests", token: dana.token, json: ["kind": "reward"])
        ok(reward, "reward")
        ok(try await server.approve(owner, try reward.string("id")), "approve reward")
        ok(try await server.approve(owner, try await server.askForStamps(finn, store: store)), "approve")
        _ = try await server.askForStamps(eli, store: store)
        clock.advance(by: 53_600)

        func days(_ query: String) async throws -> [[String: Any]] {
            let answer = try await client.request("GET", "/v1/stores/\(store)/summary?\(query)", token: owner.token)
            #expect(answer.status == 200, "\(answer.text)")
            return answer.value("days") as? [[String: Any]] ?? []
        }
        func figures(_ day: [String: Any]) -> [Int] {
            let requests = day["requests"] as? [String: Int] ?? [:]
            return [day["stampsGiven"], day["rewardsUsed"], day["newCustomers"], day["returningCustomers"]].map { $0 as? Int ?? -1 }
                + ["pending", "approved", "undone", "rejected", "cancelled", "expired"].map { requests[$0] ?? -1 }
        }
        //                  stamps rewards new returning | pending approved undone rejected cancelled expired
        let dayOne = [5, 0, 2, 0, 0, 1, 1, 1, 0, 0]
        let dayTwo = [1, 1, 1, 1, 1, 2, 0, 0, 0, 0]
        let nothing = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

        let utc = try await days("days=3")
        #expect(utc.map { $0["day"] as? String } == ["2026-11-28", "2026-11-29", "2026-11-30"])
        #expect(utc.map(figures) == [dayOne, dayTwo, nothing])
        // In UTC−12, 10:00 UTC is 22:00 of the day before, and today is the 29th.
        let west = try await days("days=3&utcOffsetMinutes=-720")
        #expect(west.map { $0["day"] as? String } == ["2026-11-27", "2026-11-28", "2026-11-29"])
        #expect(west.map(figures) == [dayOne, dayTwo, nothing])
        // Thirty days by default, today last.
        let month = try await days("")
        #expect(month.count == 30 && month.last?["day"] as? String == "2026-11-30")

        for bad in ["days=0", "days=91", "days=x", "utcOffsetMinutes=900"] {
            let answer = try await client.request("GET", "/v1/stores/\(store)/summary?\(bad)", token: owner.token)
            #expect(answer.status == 400, "\(bad): \(answer.text)")
        }
        // The owner's figures: not staff's, not a customer's, not another owner's.
        let barista = try await server.addStaff(to: store, owner: owner)
        let stranger = try await server.signUp("owner")
        for token in [barista.token, dana.token, stranger.token] {
            #expect(try await client.request("GET", "/v1/stores/\(store)/summary", token: token).status == 403)
        }
        client.close()
        try await server.stop()
    }
}
