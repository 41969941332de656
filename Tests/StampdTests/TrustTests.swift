// No party can harm another: sign-in pacing, the hashing line, one spelling per login, hostile
// text, and sessions that end at once. Each test is named for the property it pins.
import Blocking
import Foundation
import StampCore
@testable import StampHTTP
import Testing

@Suite(.timeLimit(.minutes(2))) struct SignInTests {
    static func signIn(_ server: TestServer, _ login: String, _ password: String, from address: String? = nil) async throws -> TestResponse {
        let client = try await server.connect(from: address)
        defer { client.close() }
        return try await client.request("POST", "/v1/sessions", json: ["login": login, "password": password])
    }

    @Test func concurrentWrongPasswordsAreVerifiedAtMostTheLimitAndTheRightOneWaits() async throws {
        let server = try await TestServer.start()
        _ = try await server.signUp("owner", "olive@example.com")
        let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<40 { group.addTask { try await Self.signIn(server, "olive@example.com", "wrong password").status } }
            group.addTask { try await Self.signIn(server, "olive@example.com", "correct horse").status }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        // Only five checks ran from this address (a right password among them would be 201).
        #expect(statuses.filter { $0 == 401 || $0 == 201 }.count <= 5)
        #expect(statuses.filter { $0 == 429 }.count >= 36)
        // Locked from here, even for the right password.
        let locked = try await Self.signIn(server, "olive@example.com", "correct horse")
        if !statuses.contains(201) {
            #expect(locked.status == 429)
            #expect(locked.header("retry-after") != nil)
        }
        try await server.stop()
    }

    @Test func aStrangersWrongPasswordsDoNotLockTheOwnerOut() async throws {
        let server = try await TestServer.start()
        _ = try await server.signUp("owner", "olive@example.com")
        for _ in 0..<8 { _ = try await Self.signIn(server, "olive@example.com", "guess guess", from: "127.0.0.2") }
        #expect(try await Self.signIn(server, "olive@example.com", "correct horse", from: "127.0.0.2").status == 429)
        // The owner, from their own address, signs in at once.
        #expect(try await Self.signIn(server, "olive@example.com", "correct horse", from: "127.0.0.3").status == 201)
        try await server.stop()
    }

    @Test func locksFromOneAddressDoubleAndEnd() async throws {
        let server = try await TestServer.start()
        _ = try await server.signUp("owner", "olive@example.com")
        for _ in 0..<5 { #expect(try await Self.signIn(server, "olive@example.com", "guess guess").status == 401) }
        let first = try await Self.signIn(server, "olive@example.com", "correct horse")
        #expect(first.status == 429)
        #expect(Int(first.header("retry-after") ?? "") ?? 0 > 800)
        server.clock.advance(by: 15 * 60 + 1)
        for _ in 0..<5 { #expect(try await Self.signIn(server, "olive@example.com", "guess guess").status == 401) }
        let second = try await Self.signIn(server, "olive@example.com", "correct horse")
        #expect(Int(second.header("retry-after") ?? "") ?? 0 > 1700)
        server.clock.advance(by: 30 * 60 + 1)
        #expect(try await Self.signIn(server, "olive@example.com", "correct horse").status == 201)
        try await server.stop()
    }

    @Test func oneAddressStartsOnlySoManySignInsAMinuteAndSoManySignUpsAnHour() async throws {
        let server = try await TestServer.start { _, settings in
            settings.passwordChecksPerAddressPerMinute = 6
            settings.signUpsPerAddressPerHour = 3
        }
        for index in 0..<6 { _ = try await Self.signIn(server, "nobody\(index)@example.com", "whatever it is", from: "127.0.0.4") }
        #expect(try await Self.signIn(server, "other@example.com", "whatever it is", from: "127.0.0.4").status == 429)
        #expect(try await Self.signIn(server, "other@example.com", "whatever it is", from: "127.0.0.5").status == 401)
        let client = try await server.connect(from: "127.0.0.6")
        for index in 0..<3 {
            #expect(try await client.request("POST", "/v1/accounts", json: [
                "role": "customer", "login": "new\(index)@example.com", "password": "correct horse", "name": "N"]).status == 201)
        }
        let refused = try await client.request("POST", "/v1/accounts", json: [
            "role": "customer", "login": "new9@example.com", "password": "correct horse", "name": "N"])
        #expect(refused.status == 429)
        #expect(refused.header("retry-after") != nil)
        client.close()
        try await server.stop()
    }

    /// Behind a load balancer every connection comes from it: the client is the nearest address
    /// in X-Forwarded-For that is not a trusted proxy, and only a trusted proxy is believed.
    @Test func behindATrustedProxyEachForwardedClientHasItsOwnLimits() async throws {
        let server = try await TestServer.start { configuration, settings in
            configuration.trustedProxies = try! TrustedProxies(parsing: "127.0.0.7, 10.0.0.0/8")
            settings.signUpsPerAddressPerHour = 1
        }
        func signUp(from peer: String, forwardedFor: String?) async throws -> Int {
            let client = try await server.connect(from: peer)
            defer { client.close() }
            return try await client.request("POST", "/v1/accounts", json: [
                "role": "customer", "login": "p-\(UUID().uuidString.prefix(8))", "password": "correct horse", "name": "P"],
                headers: forwardedFor.map { ["X-Forwarded-For": $0] } ?? [:]).status
        }
        // Through the proxy: two clients, one sign-up an hour each; a spoofed first hop and the
        // proxies' own hops do not change who the client is.
        #expect(try await signUp(from: "127.0.0.7", forwardedFor: "203.0.113.1") == 201)
        #expect(try await signUp(from: "127.0.0.7", forwardedFor: "198.51.100.9, 203.0.113.1, 10.1.2.3") == 429)
        #expect(try await signUp(from: "127.0.0.7", forwardedFor: "203.0.113.2") == 201)
        // Not from a trusted proxy: the header is the client's own words and counts for nothing.
        #expect(try await signUp(from: "127.0.0.8", forwardedFor: "203.0.113.3") == 201)
        #expect(try await signUp(from: "127.0.0.8", forwardedFor: "203.0.113.4") == 429)
        try await server.stop()
    }

    @Test func trustedProxiesAreAddressesOrRanges() throws {
        let proxies = try TrustedProxies(parsing: "10.0.0.0/8, ::1, fd00::/8")
        #expect(proxies.client(peer: "10.9.8.7", forwardedFor: ["192.0.2.1"]) == "192.0.2.1")
        #expect(proxies.client(peer: "::1", forwardedFor: ["2001:db8::5, fd12::1"]) == "2001:db8::5")
        #expect(proxies.client(peer: "11.0.0.1", forwardedFor: ["192.0.2.1"]) == "11.0.0.1")
        #expect(proxies.client(peer: "10.0.0.1", forwardedFor: ["not an address"]) == "10.0.0.1")
        for bad in ["10.0.0.0/33", "example.com", "1.2.3.4/x"] {
            #expect(throws: TrustedProxiesError.self) { try TrustedProxies(parsing: bad) }
        }
    }

    @Test func overlongLoginsAndPasswordsAreRefusedBeforeAnyHash() async throws {
        let server = try await TestServer.start()
        let long = try await Self.signIn(server, String(repeating: "a", count: 101), "password")
        #expect(long.status == 400)
        #expect(long.value("field") as? String == "login")
        let longPassword = try await Self.signIn(server, "someone", String(repeating: "p", count: 201))
        #expect(longPassword.value("field") as? String == "password")
        try await server.stop()
    }

    @Test func theHashingLineIsBoundedAndShedsWith503() async throws {
        let hasher = PasswordHasher(cost: .standard, threads: 1, maximumWaiting: 2)
        let outcomes = await withTaskGroup(of: String.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    do {
                        _ = try await hasher.hash("a password to hash")
                        return "hashed"
                    } catch let error as StampError {
                        return error.kind == .unavailable && error.retryAfter != nil ? "shed" : "other"
                    } catch {
                        return "other"
                    }
                }
            }
            return await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == "shed" }.count >= 5)
        #expect(outcomes.filter { $0 == "hashed" }.count >= 1)
        #expect(!outcomes.contains("other"))
        hasher.shutdown()
    }

    @Test func aNewcomerTakesThePlaceOfTheBusiestClientsNewestHash() async throws {
        let hasher = PasswordHasher(cost: .standard, threads: 1, maximumWaiting: 2)
        func attempt(_ client: String) async -> String {
            do {
                _ = try await hasher.hash("a password to hash", for: client)
                return "hashed"
            } catch let error as StampError where error.kind == .unavailable {
                return "shed"
            } catch {
                return "other"
            }
        }
        let running = Task { await attempt("flooder") }
        while hasher.running < 1 { try Task.checkCancellation(); await Task.yield() }  // started on the only thread
        let queued = (0..<2).map { _ in Task { await attempt("flooder") } }
        while hasher.waiting < 2 { try Task.checkCancellation(); await Task.yield() }
        let honest = await attempt("honest")
        let flooder = [await running.value] + (await queued.asyncMap { await $0.value })
        #expect(honest == "hashed")
        #expect(flooder.filter { $0 == "shed" }.count == 1)
        #expect(flooder.filter { $0 == "hashed" }.count == 2)
        hasher.shutdown()
    }

    @Test func workForACancelledCallerNeverRunsAndAStoppedPoolFailsCalls() async throws {
        let pool = BlockingPool(name: "test", threads: 1)
        let gate = DispatchSemaphore(value: 0)
        let ran = Counter()
        // The blocker holds the only thread before the second job is sent (waiting for the queue to
        // empty instead could pass before the blocker was sent, and the second job then ran first).
        let started = AsyncStream<Void>.makeStream()
        let blocker = Task { try await pool.run { started.continuation.yield(); gate.wait() } }
        var starts = started.stream.makeAsyncIterator()
        _ = await starts.next()
        let waiting = Task { try await pool.run { ran.increment() } }
        while pool.waiting == 0 { try Task.checkCancellation(); await Task.yield() }
        waiting.cancel()
        gate.signal()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        try await blocker.value
        #expect(ran.value == 0)
        pool.shutdown()
        await #expect(throws: BlockingPoolError.shutDown) { try await pool.run { 1 } }
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        func increment() { lock.lock(); count += 1; lock.unlock() }
        var value: Int { lock.lock(); defer { lock.unlock() }; return count }
    }
}

@Suite(.timeLimit(.minutes(2))) struct TextRuleTests {
    static func signUp(_ client: TestClient, _ login: String, name: String = "N", password: String = "correct horse") async throws -> TestResponse {
        try await client.request("POST", "/v1/accounts", json: ["role": "customer", "login": login, "password": password, "name": name])
    }

    @Test func oneLoginHasOneSpellingWhateverItsUnicodeFormCaseOrPhoneFormat() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        #expect(try await Self.signUp(client, "Jos\u{00E9}@example.com").status == 201)
        let decomposed = try await Self.signUp(client, "jose\u{0301}@EXAMPLE.com")
        #expect(decomposed.status == 409)
        #expect(try await Self.signUp(client, "\u{FF4A}ose\u{0301}@example.com").status == 409)  // full-width j
        #expect(try await Self.signUp(client, "+49 170 1234567").status == 201)
        #expect(try await Self.signUp(client, "(+49) 170-123-4567").status == 409)
        #expect(try await Self.signUp(client, "+49.170.1234567").status == 409)
        // Signing in with another spelling finds the same account.
        let session = try await client.request("POST", "/v1/sessions", json: ["login": "(+49)1701234567", "password": "correct horse"])
        #expect(session.status == 201)
        client.close()
        try await server.stop()
    }

    @Test func formatAndBidiCharactersAreRefusedInEveryTextField() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        for hostile in ["\u{202E}", "\u{200B}", "\u{2066}", "\u{200F}", "\u{FEFF}", "\u{2028}"] {
            let login = try await Self.signUp(client, "eve\(hostile)@example.com")
            #expect(login.status == 400 && login.value("field") as? String == "login", "\(login.text)")
            let name = try await Self.signUp(client, "eve\(UUID().uuidString.prefix(6))", name: "Eve\(hostile)lyn")
            #expect(name.status == 400 && name.value("field") as? String == "name")
        }
        #expect(try await Self.signUp(client, "eve:tel:+4912345").status == 400)
        let owner = try await server.signUp("owner")
        let store = try await client.request("POST", "/v1/stores", token: owner.token,
                                             json: ["name": "Cafe \u{202E}efaC", "rewardItem": "Tea"])
        #expect(store.status == 400 && store.value("field") as? String == "name")
        let menu = try await client.request("POST", "/v1/stores", token: owner.token,
                                            json: ["name": "Cafe", "rewardItem": "Tea", "menu": [["name": "La\u{200D}tte", "price": 1]]])
        #expect(menu.status == 400 && menu.value("field") as? String == "menu[0].name")
        client.close()
        try await server.stop()
    }

    @Test func aPasswordHasEightCharactersThatAreNotAllSpaces() async throws {
        let server = try await TestServer.start()
        let client = try await server.connect()
        let spaces = try await Self.signUp(client, "spacey@example.com", password: "          ")
        #expect(spaces.status == 400 && spaces.value("field") as? String == "password")
        #expect(try await Self.signUp(client, "short@example.com", password: "seven77").status == 400)
        client.close()
        try await server.stop()
    }
}

@Suite(.timeLimit(.minutes(2))) struct SessionTests {
    @Test func revokingASessionAnswersItsParkedPollWith401AtOnce() async throws {
        let server = try await TestServer.start()
        let customer = try await server.signUp("customer")
        let poller = try await server.connect()
        let first = try await poller.request("GET", "/v1/events?timeout=1", token: customer.token)
        try await poller.send(TestClient.raw("GET", "/v1/events?after=\(try first.string("cursor"))&timeout=50", token: customer.token))
        await server.hub.waitUntilParked(1)
        let other = try await server.connect()
        #expect(try await other.request("DELETE", "/v1/sessions/current", token: customer.token).status == 204)
        let answer = try await poller.readResponse()
        #expect(answer.status == 401)
        other.close()
        poller.close()
        try await server.stop()
    }

    @Test func signOutEverywhereEndsEverySessionAndTheirPolls() async throws {
        let server = try await TestServer.start()
        let phone = try await server.signUp("customer", "dana@example.com")
        let client = try await server.connect()
        let tablet = try await client.request("POST", "/v1/sessions", json: ["login": "dana@example.com", "password": "correct horse"]).string("token")
        let poller = try await server.connect()
        try await poller.send(TestClient.raw("GET", "/v1/events?after=0&timeout=50", token: tablet))
        await server.hub.waitUntilParked(1)
        #expect(try await client.request("DELETE", "/v1/sessions", token: phone.token).status == 204)
        #expect(try await poller.readResponse().status == 401)
        #expect(try await client.request("GET", "/v1/me", token: phone.token).status == 401)
        #expect(try await client.request("GET", "/v1/me", token: tablet).status == 401)
        poller.close()
        client.close()
        try await server.stop()
    }

    @Test func aPasswordChangeKeepsThisSessionAndEndsTheOthers() async throws {
        let server = try await TestServer.start()
        let phone = try await server.signUp("customer", "dana@example.com")
        let client = try await server.connect()
        let tablet = try await client.request("POST", "/v1/sessions", json: ["login": "dana@example.com", "password": "correct horse"]).string("token")
        let wrong = try await client.request("POST", "/v1/me/password", token: phone.token,
                                             json: ["currentPassword": "not it at all", "newPassword": "battery staple"])
        #expect(wrong.status == 403 && wrong.value("field") as? String == "currentPassword")
        let weak = try await client.request("POST", "/v1/me/password", token: phone.token,
                                            json: ["currentPassword": "correct horse", "newPassword": "        "])
        #expect(weak.status == 400 && weak.value("field") as? String == "newPassword")
        #expect(try await client.request("POST", "/v1/me/password", token: phone.token,
                                         json: ["currentPassword": "correct horse", "newPassword": "battery staple"]).status == 204)
        #expect(try await client.request("GET", "/v1/me", token: phone.token).status == 200)
        #expect(try await client.request("GET", "/v1/me", token: tablet).status == 401)
        #expect(try await client.request("POST", "/v1/sessions", json: ["login": "dana@example.com", "password": "battery staple"]).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func deletingACustomerErasesThemAndKeepsTheStoresTotals() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let customer = try await server.signUp("customer", "gone@example.com", name: "Gone Soon")
        let request = try await server.askForStamps(customer, store: store, count: 3)
        _ = try await server.approve(owner, request)
        _ = try await server.askForStamps(customer, store: store)
        let client = try await server.connect()
        #expect(try await client.request("DELETE", "/v1/me", token: customer.token, json: ["password": "wrong one!"]).status == 403)
        #expect(try await client.request("DELETE", "/v1/me", token: customer.token, json: ["password": "correct horse"]).status == 204)
        #expect(try await client.request("GET", "/v1/me", token: customer.token).status == 401)
        #expect(try await client.request("POST", "/v1/sessions", json: ["login": "gone@example.com", "password": "correct horse"]).status == 401)
        // The login is free again; the store still counts the approved stamps, under no name.
        _ = try await server.signUp("customer", "gone@example.com")
        let decided = try await client.request("GET", "/v1/requests/\(request)", token: owner.token)
        #expect(decided.value("status") as? String == "approved")
        #expect(decided.value("customerName") as? String == "Deleted customer")
        let pending = try await client.request("GET", "/v1/stores/\(store)/requests?status=pending", token: owner.token)
        #expect((pending.value("requests") as? [Any])?.isEmpty == true)
        let feed = try await client.request("GET", "/v1/events?after=0&timeout=1", token: owner.token)
        let types = (feed.value("events") as? [[String: Any]])?.compactMap { $0["type"] as? String } ?? []
        #expect(types.last == "request.cancelled")
        // The erased account receives nothing, whatever is typed.
        let gifter = try await server.signUp("customer")
        _ = try await server.approve(owner, try await server.askForStamps(gifter, store: store, count: 2))
        let gift = try await client.request("POST", "/v1/cards/\(store)/gifts", token: gifter.token,
                                            json: ["to": "deleted:\(customer.id)", "count": 1])
        #expect(gift.status == 400 && gift.value("field") as? String == "to")
        client.close()
        try await server.stop()
    }

    @Test func anOwnerWithStoresCannotDeleteTheAccount() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        _ = try await server.createStore(owner)
        let client = try await server.connect()
        #expect(try await client.request("DELETE", "/v1/me", token: owner.token, json: ["password": "correct horse"]).status == 409)
        #expect(try await client.request("GET", "/v1/me", token: owner.token).status == 200)
        client.close()
        try await server.stop()
    }
}

@Suite(.timeLimit(.minutes(2))) struct RepeatLimitTests {
    @Test func aCustomerHasOnlyAFewRequestsWaitingAtAStoreAndSoManyAnHour() async throws {
        let server = try await TestServer.start { _, settings in
            settings.limits.pendingRequestsPerCustomerPerStore = 3
            settings.limits.requestsPerCustomerPerStorePerHour = 5
        }
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let otherStore = try await server.createStore(owner)
        let customer = try await server.signUp("customer")
        let client = try await server.connect()
        var ids: [String] = []
        for _ in 0..<3 { ids.append(try await server.askForStamps(customer, store: store)) }
        let fourth = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "stamp"])
        #expect(fourth.status == 429)
        #expect(fourth.header("retry-after") != nil)
        // Another store is not affected; a decided request frees a place.
        _ = try await server.askForStamps(customer, store: otherStore)
        _ = try await server.approve(owner, ids[0])
        _ = try await server.approve(owner, ids[1])
        for _ in 0..<2 { _ = try await server.askForStamps(customer, store: store) }
        _ = try await server.approve(owner, ids[2])
        let sixth = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "stamp"])
        #expect(sixth.status == 429)
        #expect(sixth.text.contains("an hour"))
        server.clock.advance(by: 3_601)
        #expect(try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token, json: ["kind": "stamp"]).status == 201)
        client.close()
        try await server.stop()
    }

    @Test func aMenuHasAtMostFiftyShortItemsSoAStoreListingStaysSmall() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let client = try await server.connect()
        let item: [String: Any] = ["name": String(repeating: "x", count: 60), "price": 1]
        let full = try await client.request("POST", "/v1/stores", token: owner.token,
                                            json: ["name": "Full", "rewardItem": "Tea", "menu": Array(repeating: item, count: 50)])
        #expect(full.status == 201)
        let tooMany = try await client.request("POST", "/v1/stores", token: owner.token,
                                               json: ["name": "More", "rewardItem": "Tea", "menu": Array(repeating: item, count: 51)])
        #expect(tooMany.status == 400 && tooMany.value("field") as? String == "menu")
        let tooLong = try await client.request("POST", "/v1/stores", token: owner.token, json: [
            "name": "Long", "rewardItem": "Tea", "menu": [["name": String(repeating: "x", count: 61), "price": 1]]])
        #expect(tooLong.status == 400 && tooLong.value("field") as? String == "menu[0].name")
        // The largest store answers in a few kilobytes, so a page of 20 stays far below a megabyte.
        #expect(full.body.count < 5_000)
        client.close()
        try await server.stop()
    }

    @Test func anOwnerHasAtMostSoManyStores() async throws {
        let server = try await TestServer.start { _, settings in settings.limits.storesPerOwner = 2 }
        let owner = try await server.signUp("owner")
        _ = try await server.createStore(owner)
        _ = try await server.createStore(owner)
        let client = try await server.connect()
        let third = try await client.request("POST", "/v1/stores", token: owner.token, json: ["name": "Third", "rewardItem": "Tea"])
        #expect(third.status == 429)
        client.close()
        try await server.stop()
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var out: [T] = []
        for element in self { out.append(await transform(element)) }
        return out
    }
}
