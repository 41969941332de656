// Who may do what, for every operation of openapi.yaml: an operation the document lists and
// the matrix does not (or the other way round) fails the test, so a new endpoint cannot ship
// without its row. Each row says what an anonymous caller, the customer whose card and request
// these are (A), another customer (B), the store's owner (X), another store's owner (Y) and a member of X's staff (S) get.
import Foundation
import Testing

@Suite(.timeLimit(.minutes(2))) struct AuthorizationMatrixTests {
    /// `GET /v1/stores/{storeId}` style keys of every operation in openapi.yaml.
    static func documentedOperations() throws -> Set<String> {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("openapi.yaml")
        let text = try String(contentsOf: url, encoding: .utf8)
        var operations: Set<String> = []
        var path: String?
        var inPaths = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" { inPaths = true; continue }
            guard inPaths else { continue }
            if !line.hasPrefix(" ") && !line.isEmpty { break }  // the next top-level key
            if line.hasPrefix("  /") && line.hasSuffix(":") && !line.hasPrefix("   ") {
                path = String(line.dropFirst(2).dropLast())
            } else if let path, line.hasPrefix("    ") && !line.hasPrefix("     "), line.hasSuffix(":") {
                let method = line.trimmingCharacters(in: .whitespaces).dropLast()
                if ["get", "post", "put", "patch", "delete"].contains(method) { operations.insert("\(method.uppercased()) \(path)") }
            }
        }
        return operations
    }

    struct Person {
        let login: String
        let token: String
        let id: String
    }

    /// What each caller gets; nil for a public operation's roles (called anonymously only).
    struct Row {
        let operation: String
        let anonymous: Int
        let statuses: [Int]?  // A, B, X, Y, S
        /// Signs in afresh for each call: the call ends the session it is made with.
        var freshSession = false
        /// The path (and body) per call: request operations get a fresh pending request each.
        var path: (@Sendable () async throws -> String)?
        var body: (@Sendable () -> [String: Any]?)?
    }

    @Test func everyDocumentedOperationChecksWhoCalls() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        func signUp(_ role: String, _ login: String) async throws -> Person {
            let answer = try await client.request("POST", "/v1/accounts",
                                                  json: ["role": role, "login": login, "password": "correct horse", "name": "P"])
            try #require(answer.status == 201, "\(answer.text)")
            return Person(login: login, token: try answer.string("token"), id: try answer.string("account", "id"))
        }
        let a = try await signUp("customer", "+49 170 555 0101")
        let b = try await signUp("customer", "bea@example.com")
        let x = try await signUp("owner", "xavier@example.com")
        let y = try await signUp("owner", "yasmin@example.com")
        _ = try await signUp("customer", "cara@example.com")  // receives A's gift
        let store = try await server.createStore(TestServer.Person(token: x.token, id: x.id))
        _ = try await server.createStore(TestServer.Person(token: y.token, id: y.id))
        let approved = try await server.askForStamps(TestServer.Person(token: a.token, id: a.id), store: store, count: 5)
        _ = try await server.approve(TestServer.Person(token: x.token, id: x.id), approved)
        let pending = try await server.askForStamps(TestServer.Person(token: a.token, id: a.id), store: store)
        let port = server.port
        // A fresh pending request of A's, for each call that decides or cancels one.
        let freshRequest: @Sendable () async throws -> String = {
            let client = try await TestClient.connect(port: port)
            defer { client.close() }
            let answer = try await client.request("POST", "/v1/stores/\(store)/requests", token: a.token, json: ["kind": "stamp"])
            return "/v1/requests/\(try answer.string("id"))"
        }
        let staff = try await server.addStaff(to: store, owner: TestServer.Person(token: x.token, id: x.id),
                                              login: "sam@example.com")
        let sam = Person(login: "sam@example.com", token: staff.token, id: staff.id)
        // Another member of X's store, for each call that removes one.
        let freshStaff: @Sendable () async throws -> String = {
            try await server.addStaff(to: store, owner: TestServer.Person(token: x.token, id: x.id)).id
        }
        // A customer with a card at X's store, to block and unblock.
        let dora = try await signUp("customer", "dora@example.com")
        let doraRequest = try await server.askForStamps(TestServer.Person(token: dora.token, id: dora.id), store: store)
        _ = try await server.approve(TestServer.Person(token: x.token, id: x.id), doraRequest)
        // A fresh approval of A's request, and a fresh direct stamp of X's on A, for each undo.
        let freshApproval: @Sendable () async throws -> String = {
            let id = try await server.askForStamps(TestServer.Person(token: a.token, id: a.id), store: store)
            _ = try await server.approve(TestServer.Person(token: x.token, id: x.id), id)
            return "/v1/requests/\(id)/undo"
        }
        let freshStamp: @Sendable () async throws -> String = {
            let client = try await TestClient.connect(port: port)
            defer { client.close() }
            let answer = try await client.request("POST", "/v1/stores/\(store)/stamps", token: x.token, json: ["customerId": a.id, "count": 1])
            return "/v1/stores/\(store)/stamps/\(answer.int("entryId") ?? 0)/undo"
        }
        let counter = Counter()
        let s = "/v1/stores/\(store)"
        let rows: [Row] = [
            Row(operation: "POST /v1/accounts", anonymous: 201, statuses: nil,
                body: { ["role": "customer", "login": "new\(counter.next())@example.com", "password": "correct horse", "name": "N"] }),
            Row(operation: "POST /v1/sessions", anonymous: 401, statuses: nil,
                body: { ["login": "bea@example.com", "password": "not the password"] }),
            Row(operation: "DELETE /v1/sessions/current", anonymous: 401, statuses: [204, 204, 204, 204, 204], freshSession: true),
            Row(operation: "GET /v1/me", anonymous: 401, statuses: [200, 200, 200, 200, 200]),
            Row(operation: "DELETE /v1/me", anonymous: 401, statuses: [403, 403, 403, 403, 403], body: { ["password": "not the password"] }),
            Row(operation: "POST /v1/me/password", anonymous: 401, statuses: [403, 403, 403, 403, 403],
                body: { ["currentPassword": "not the password", "newPassword": "battery staple"] }),
            Row(operation: "GET /v1/me/stores", anonymous: 401, statuses: [200, 200, 200, 200, 200]),
            Row(operation: "POST /v1/me/stores", anonymous: 401, statuses: [403, 403, 422, 422, 422],
                body: { ["invitationCode": "ABCDE-FGHJK"] }),
            Row(operation: "POST /v1/me/member-code", anonymous: 401, statuses: [201, 201, 403, 403, 403]),
            Row(operation: "POST /v1/me/claims", anonymous: 401, statuses: [422, 409, 403, 403, 403], body: { ["code": "123456"] }),
            Row(operation: "POST /v1/stores", anonymous: 401, statuses: [403, 403, 201, 201, 201],
                body: { ["name": "Another \(counter.next())", "rewardItem": "Tea"] }),
            Row(operation: "GET /v1/stores", anonymous: 401, statuses: [200, 200, 200, 200, 200]),
            Row(operation: "GET /v1/stores/{storeId}", anonymous: 401, statuses: [200, 200, 200, 200, 200], path: { s }),
            Row(operation: "PATCH /v1/stores/{storeId}", anonymous: 401, statuses: [403, 403, 200, 403, 403], path: { s },
                body: { ["name": "Renamed"] }),
            Row(operation: "POST /v1/stores/{storeId}/requests", anonymous: 401, statuses: [201, 201, 403, 403, 403],
                path: { "\(s)/requests" }, body: { ["kind": "stamp"] }),
            Row(operation: "GET /v1/stores/{storeId}/requests", anonymous: 401, statuses: [403, 403, 200, 403, 200], path: { "\(s)/requests" }),
            Row(operation: "GET /v1/stores/{storeId}/customers", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: { "\(s)/customers?phoneEndsWith=0101" }),
            Row(operation: "POST /v1/stores/{storeId}/customers", anonymous: 401, statuses: [403, 403, 201, 403, 201],
                path: { "\(s)/customers" }, body: { ["phone": "+1 555 \(1_000_000 + counter.next())"] }),
            Row(operation: "POST /v1/stores/{storeId}/customers/{customerId}/claim-code", anonymous: 401, statuses: [403, 403, 409, 403, 409],
                path: { "\(s)/customers/\(a.id)/claim-code" }),
            Row(operation: "GET /v1/stores/{storeId}/members", anonymous: 401, statuses: [403, 403, 200, 403, 403],
                path: { "\(s)/members" }),
            Row(operation: "POST /v1/stores/{storeId}/invitations", anonymous: 401, statuses: [403, 403, 201, 403, 403],
                path: { "\(s)/invitations" }),
            Row(operation: "DELETE /v1/stores/{storeId}/members/{accountId}", anonymous: 401, statuses: [403, 403, 204, 403, 403],
                path: { "\(s)/members/\(try await freshStaff())" }),
            Row(operation: "GET /v1/stores/{storeId}/activity", anonymous: 401, statuses: [403, 403, 200, 403, 403],
                path: { "\(s)/activity?day=2026-12-01" }),
            Row(operation: "GET /v1/stores/{storeId}/ledger", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: { "\(s)/ledger" }),
            Row(operation: "GET /v1/stores/{storeId}/cards", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: { "\(s)/cards" }),
            Row(operation: "GET /v1/stores/{storeId}/customers/{customerId}", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: { "\(s)/customers/\(a.id)" }),
            Row(operation: "GET /v1/stores/{storeId}/summary", anonymous: 401, statuses: [403, 403, 200, 403, 403],
                path: { "\(s)/summary" }),
            Row(operation: "GET /v1/stores/{storeId}/counter-code", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: { "\(s)/counter-code" }),
            Row(operation: "GET /v1/stores/{storeId}/blocks", anonymous: 401, statuses: [403, 403, 200, 403, 403],
                path: { "\(s)/blocks" }),
            Row(operation: "PUT /v1/stores/{storeId}/blocks/{customerId}", anonymous: 401, statuses: [403, 403, 200, 403, 403],
                path: { "\(s)/blocks/\(dora.id)" }),
            Row(operation: "DELETE /v1/stores/{storeId}/blocks/{customerId}", anonymous: 401, statuses: [403, 403, 204, 403, 403],
                path: { "\(s)/blocks/\(dora.id)" }),
            Row(operation: "POST /v1/stores/{storeId}/stamps/{entryId}/undo", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: freshStamp),
            Row(operation: "POST /v1/requests/{requestId}/undo", anonymous: 401, statuses: [403, 404, 200, 404, 200],
                path: freshApproval),
            Row(operation: "POST /v1/stores/{storeId}/stamps", anonymous: 401, statuses: [403, 403, 200, 403, 200],
                path: { "\(s)/stamps" }, body: { ["customerId": a.id, "count": 1] }),
            Row(operation: "GET /v1/requests/{requestId}", anonymous: 401, statuses: [200, 404, 200, 404, 200],
                path: { "/v1/requests/\(pending)" }),
            Row(operation: "DELETE /v1/requests/{requestId}", anonymous: 401, statuses: [200, 404, 403, 404, 403], path: freshRequest),
            Row(operation: "POST /v1/requests/{requestId}/approve", anonymous: 401, statuses: [403, 404, 200, 404, 200], path: {
                try await freshRequest() + "/approve" }),
            Row(operation: "POST /v1/requests/{requestId}/reject", anonymous: 401, statuses: [403, 404, 200, 404, 200], path: {
                try await freshRequest() + "/reject" }),
            Row(operation: "GET /v1/cards", anonymous: 401, statuses: [200, 200, 403, 403, 403]),
            Row(operation: "GET /v1/cards/{storeId}/ledger", anonymous: 401, statuses: [200, 404, 403, 403, 403],
                path: { "/v1/cards/\(store)/ledger" }),
            Row(operation: "POST /v1/cards/{storeId}/gifts", anonymous: 401, statuses: [201, 404, 403, 403, 403],
                path: { "/v1/cards/\(store)/gifts" }, body: { ["to": "cara@example.com", "count": 1] }),
            Row(operation: "GET /v1/events", anonymous: 401, statuses: [200, 200, 200, 200, 200], path: { "/v1/events?timeout=1" }),
            Row(operation: "GET /healthz", anonymous: 200, statuses: nil),
            Row(operation: "GET /readyz", anonymous: 200, statuses: nil),
            Row(operation: "GET /", anonymous: 200, statuses: nil),
            Row(operation: "GET /app", anonymous: 200, statuses: nil),
            Row(operation: "GET /assets/{name}", anonymous: 200, statuses: nil, path: { "/assets/style.css" }),
            // Last: signing out everywhere ends the sessions the rows above use.
            Row(operation: "DELETE /v1/sessions", anonymous: 401, statuses: [204, 204, 204, 204, 204], freshSession: true),
        ]
        let documented = try Self.documentedOperations()
        let covered = Set(rows.map(\.operation))
        #expect(documented.subtracting(covered).isEmpty, "documented but not in the matrix: \(documented.subtracting(covered).sorted())")
        #expect(covered.subtracting(documented).isEmpty, "in the matrix but not documented: \(covered.subtracting(documented).sorted())")

        let people = [("A", a), ("B", b), ("X", x), ("Y", y), ("S", sam)]
        for row in rows {
            let method = String(row.operation.split(separator: " ")[0])
            let template = String(row.operation.split(separator: " ")[1])
            func call(_ token: String?) async throws -> TestResponse {
                let path = try await row.path?() ?? template
                return try await client.request(method, path, token: token, json: row.body?() ?? (method == "POST" ? [:] : nil))
            }
            let anonymous = try await call(nil)
            #expect(anonymous.status == row.anonymous, "\(row.operation) anonymous: \(anonymous.text)")
            if anonymous.status == 401 { #expect(anonymous.header("www-authenticate") == "Bearer") }
            guard let statuses = row.statuses else { continue }
            for ((name, person), expected) in zip(people, statuses) {
                var token = person.token
                if row.freshSession {
                    token = try await client.request("POST", "/v1/sessions", json: ["login": person.login, "password": "correct horse"])
                        .string("token")
                }
                let answer = try await call(token)
                #expect(answer.status == expected, "\(row.operation) as \(name): \(answer.text)")
            }
            if row.operation == "DELETE /v1/sessions" { break }  // it ended every session: the last row
        }
        // Nothing of A's reached the others' feeds, and X's pending request is untouched by them.
        for other in [b, y] {
            let token = try await client.request("POST", "/v1/sessions", json: ["login": other.login, "password": "correct horse"])
                .string("token")
            let events = try await client.request("GET", "/v1/events?after=0&timeout=1", token: token)
            let types = (events.value("events") as? [[String: Any]])?.compactMap { $0["type"] as? String } ?? []
            #expect(!types.contains("request.created") && !types.contains("request.approved"), "\(types)")
        }
        let aToken = try await client.request("POST", "/v1/sessions", json: ["login": a.login, "password": "correct horse"]).string("token")
        let still = try await client.request("GET", "/v1/requests/\(pending)", token: aToken)
        #expect(still.value("status") as? String == "pending")
        client.close()
        try await server.stop()
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
    }
}
