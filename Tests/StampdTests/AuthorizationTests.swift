// Who may do what beyond the matrix (AuthorizationMatrixTests, built from openapi.yaml), and
// every input rule, each answered with a problem naming its field.
import Foundation
import Testing

@Suite(.timeLimit(.minutes(2))) struct AuthorizationTests {
    struct World {
        let server: TestServer
        let owner: TestServer.Person
        let otherOwner: TestServer.Person
        let customer: TestServer.Person
        let otherCustomer: TestServer.Person
        let store: String
        let request: String

        static func make() async throws -> World {
            let server = try await TestServer.start()
            let owner = try await server.signUp("owner")
            let customer = try await server.signUp("customer")
            let store = try await server.createStore(owner)
            _ = try await server.approve(owner, try await server.askForStamps(customer, store: store))
            return World(server: server, owner: owner, otherOwner: try await server.signUp("owner"), customer: customer,
                         otherCustomer: try await server.signUp("customer"), store: store,
                         request: try await server.askForStamps(customer, store: store))
        }
    }

    @Test func aCustomerCannotDecideTheirOwnRequest() async throws {
        let world = try await World.make()
        let client = try await world.server.connect()
        let approve = try await client.request("POST", "/v1/requests/\(world.request)/approve", token: world.customer.token)
        #expect(approve.status == 403)
        let cancelByOwner = try await client.request("DELETE", "/v1/requests/\(world.request)", token: world.owner.token)
        #expect(cancelByOwner.status == 403)
        client.close()
        try await world.server.stop()
    }

    @Test func aRevokedOrUnknownTokenIs401() async throws {
        let world = try await World.make()
        let client = try await world.server.connect()
        #expect(try await client.request("GET", "/v1/me", token: "not-a-token").status == 401)
        #expect(try await client.request("GET", "/v1/me", headers: ["Authorization": "Basic abc"]).status == 401)
        #expect(try await client.request("DELETE", "/v1/sessions/current", token: world.owner.token).status == 204)
        #expect(try await client.request("GET", "/v1/me", token: world.owner.token).status == 401)
        client.close()
        try await world.server.stop()
    }
}

@Suite(.timeLimit(.minutes(2))) struct ValidationTests {
    func expectInvalid(_ response: TestResponse, field: String, status: Int = 400,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(response.status == status, "\(response.text)", sourceLocation: sourceLocation)
        #expect(response.header("content-type") == "application/problem+json", sourceLocation: sourceLocation)
        #expect(response.value("field") as? String == field, "\(response.text)", sourceLocation: sourceLocation)
    }

    @Test func accountFieldsAreChecked() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let good: [String: Any] = ["role": "customer", "login": "valid-login", "password": "long enough", "name": "Val"]
        func with(_ change: [String: Any?]) -> [String: Any] {
            var body = good
            for (key, value) in change { body[key] = value }
            return body
        }
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["role": nil])), field: "role")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["role": "admin"])), field: "role")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["login": "ab"])), field: "login")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["password": "short"])), field: "password")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["name": "   "])), field: "name")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["name": 42])), field: "name")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["name": "Bell\u{7}"])), field: "name")
        expectInvalid(try await client.request("POST", "/v1/accounts", json: with(["isAdmin": true])), field: "isAdmin")
        client.close()
        try await server.stop()
    }

    @Test func requestAndStoreFieldsAreChecked() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let client = try await server.connect()
        let path = "/v1/stores/\(store)/requests"
        expectInvalid(try await client.request("POST", path, token: customer.token, json: ["kind": "stamp", "count": 11]), field: "count")
        expectInvalid(try await client.request("POST", path, token: customer.token, json: ["kind": "stamp", "count": "two"]), field: "count")
        expectInvalid(try await client.request("POST", path, token: customer.token, json: ["kind": "stamp", "count": 1.5]), field: "count")
        expectInvalid(try await client.request("POST", path, token: customer.token, json: ["kind": "coffee"]), field: "kind")
        #expect(try await client.request("POST", path, token: customer.token, json: ["kind": "stamp", "count": 2.0]).status == 201)
        let stores = "/v1/stores"
        expectInvalid(try await client.request("POST", stores, token: owner.token, json: ["name": "A", "rewardItem": "B", "stampsPerReward": 0]), field: "stampsPerReward")
        expectInvalid(try await client.request("POST", stores, token: owner.token, json: ["name": "A", "rewardItem": "B", "latitude": 91, "longitude": 0]), field: "latitude")
        expectInvalid(try await client.request("POST", stores, token: owner.token, json: ["name": "A", "rewardItem": "B", "latitude": 10]), field: "longitude")
        expectInvalid(try await client.request("POST", stores, token: owner.token, json: ["name": "A", "rewardItem": "B", "menu": [["name": "Tea", "price": -1]]]), field: "menu[0].price")
        expectInvalid(try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token, json: ["name": NSNull()]), field: "name")
        expectInvalid(try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token, json: ["latitude": 37.5]), field: "longitude")
        expectInvalid(try await client.request("GET", "/v1/stores?limit=0", token: customer.token), field: "limit")
        expectInvalid(try await client.request("GET", "/v1/stores?lat=10", token: customer.token), field: "lon")
        expectInvalid(try await client.request("GET", "/v1/stores/\(store)/requests?status=maybe", token: owner.token), field: "status")
        expectInvalid(try await client.request("GET", "/v1/events?after=-3", token: owner.token), field: "after")
        expectInvalid(try await client.request("GET", "/v1/events?after=1", token: owner.token, headers: ["Last-Event-ID": "x"]), field: "Last-Event-ID")
        expectInvalid(try await client.request("POST", path, token: customer.token, json: ["kind": "stamp"],
                                                headers: ["Idempotency-Key": String(repeating: "k", count: 300)]), field: "Idempotency-Key")
        client.close()
        try await server.stop()
    }

    @Test func brokenBodiesAreRefused() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        func post(_ body: [UInt8], contentType: String = "application/json") async throws -> TestResponse {
            try await client.send(Array("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
            return try await client.readResponse()
        }
        expectInvalid(try await post(Array("{not json".utf8)), field: "body")
        expectInvalid(try await post(Array("[1,2]".utf8)), field: "body")
        expectInvalid(try await post([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), field: "body")
        expectInvalid(try await post(Array((String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)).utf8)), field: "body")
        let wrongType = try await post(Array(#"{"role":"owner"}"#.utf8), contentType: "text/plain")
        #expect(wrongType.status == 415)
        client.close()
        try await server.stop()
    }
}
