// The /v1 endpoints: each authenticates, decodes and validates, then calls one use case.
import Foundation
import NIOCore
import NIOHTTP1
import StampCore

struct API: Sendable {
    let service: StampService

    func register(on router: inout Router) {
        router.add(.POST, "/v1/accounts") { try await createAccount($0) }
        router.add(.POST, "/v1/sessions") { try await createSession($0) }
        router.add(.DELETE, "/v1/sessions/current") { try await deleteSession($0) }
        router.add(.GET, "/v1/me") { request in .response(.json(try await principal(request).account)) }
        router.add(.POST, "/v1/stores") { try await createStore($0) }
        router.add(.GET, "/v1/stores") { try await searchStores($0) }
        router.add(.GET, "/v1/stores/{storeId}") { request in
            let principal = try await principal(request)
            return .response(.json(try await service.store(principal, id: request.parameter("storeId"))))
        }
        router.add(.PATCH, "/v1/stores/{storeId}") { try await updateStore($0) }
        router.add(.POST, "/v1/stores/{storeId}/requests") { try await createRequest($0) }
        router.add(.GET, "/v1/stores/{storeId}/requests") { try await storeRequests($0) }
        router.add(.GET, "/v1/requests/{requestId}") { request in
            let principal = try await principal(request)
            return .response(.json(try await service.request(principal, id: request.parameter("requestId"))))
        }
        router.add(.POST, "/v1/requests/{requestId}/approve", admission: .finishing) { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            return .response(.json(try await service.approve(principal, requestId: request.parameter("requestId"))))
        }
        router.add(.POST, "/v1/requests/{requestId}/reject", admission: .finishing) { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["reason"])
            let rejected = try await service.reject(principal, requestId: request.parameter("requestId"),
                                                    reason: try input.string("reason"))
            return .response(.json(RequestChange(request: rejected)))
        }
        router.add(.DELETE, "/v1/requests/{requestId}", admission: .finishing) { request in
            let principal = try await principal(request)
            let cancelled = try await service.cancel(principal, requestId: request.parameter("requestId"))
            return .response(.json(RequestChange(request: cancelled)))
        }
        router.add(.GET, "/v1/cards") { request in
            let principal = try await principal(request)
            return .response(.json(CardList(cards: try await service.cards(principal))))
        }
        router.add(.GET, "/v1/stores/{storeId}/customers") { request in
            let principal = try await principal(request)
            let found = try await service.findCustomers(principal, storeId: request.parameter("storeId"),
                                                        phoneSuffix: request.query["phoneEndsWith"], login: request.query["login"],
                                                        name: request.query["name"])
            return .response(.json(CustomerList(customers: found)))
        }
        router.add(.POST, "/v1/stores/{storeId}/customers") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["phone", "name", "memberCode"])
            let storeId = request.parameter("storeId")
            let added: CustomerAdded
            if let memberCode = try input.string("memberCode") {
                for field in ["phone", "name"] where input.has(field) {
                    throw HTTPError.invalid(field, "give memberCode alone, or phone (and name) for a walk-in")
                }
                added = try await service.addMember(principal, storeId: storeId, memberCode: memberCode)
            } else {
                added = try await service.registerWalkIn(principal, storeId: storeId, phone: try input.requiredString("phone"),
                                                         name: try input.string("name"))
            }
            return .response(.json(added, status: .created))
        }
        router.add(.GET, "/v1/stores/{storeId}/customers/{customerId}") { request in
            let principal = try await principal(request)
            return .response(.json(try await service.customerHistory(
                principal, storeId: request.parameter("storeId"), customerId: request.parameter("customerId"),
                limit: try queryInt(request, "limit") ?? 50, cursor: request.query["cursor"])))
        }
        router.add(.GET, "/v1/stores/{storeId}/ledger") { request in
            let principal = try await principal(request)
            let page = try await service.storeLedger(
                principal, storeId: request.parameter("storeId"), customerId: request.query["customerId"],
                memberId: request.query["memberId"], since: try queryTimestamp(request, "since"),
                before: try queryTimestamp(request, "before"), limit: try queryInt(request, "limit") ?? 50,
                cursor: request.query["cursor"])
            return .response(.json(StoreLedgerList(entries: page.items, nextCursor: page.nextCursor)))
        }
        router.add(.GET, "/v1/stores/{storeId}/cards") { request in
            let principal = try await principal(request)
            let page = try await service.storeCustomers(principal, storeId: request.parameter("storeId"),
                                                        limit: try queryInt(request, "limit") ?? 50, cursor: request.query["cursor"])
            return .response(.json(StoreCustomerList(customers: page.items, nextCursor: page.nextCursor)))
        }
        router.add(.POST, "/v1/stores/{storeId}/customers/{customerId}/claim-code") { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            let code = try await service.issueClaimCode(principal, storeId: request.parameter("storeId"),
                                                        customerId: request.parameter("customerId"))
            return .response(.json(code, status: .created))
        }
        router.add(.POST, "/v1/stores/{storeId}/stamps") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["customerId", "count"])
            guard let count = try input.int("count") else { throw HTTPError.invalid("count", "count is required") }
            return .response(.json(try await service.stampDirectly(principal, storeId: request.parameter("storeId"),
                                                                   customerId: try input.requiredString("customerId"), count: count)))
        }
        router.add(.POST, "/v1/stores/{storeId}/stamps/{entryId}/undo", admission: .finishing) { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            guard let entry = Int64(request.parameter("entryId")), entry > 0 else {
                throw HTTPError(.notFound, detail: "no direct stamp of this store has that entry id")
            }
            return .response(.json(try await service.undoStamp(principal, storeId: request.parameter("storeId"), entryId: entry)))
        }
        router.add(.POST, "/v1/requests/{requestId}/undo", admission: .finishing) { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            return .response(.json(try await service.undoApproval(principal, requestId: request.parameter("requestId"))))
        }
        router.add(.GET, "/v1/stores/{storeId}/counter-code") { request in
            let principal = try await principal(request)
            return .response(.json(try await service.counterCode(principal, storeId: request.parameter("storeId"))))
        }
        router.add(.GET, "/v1/stores/{storeId}/blocks") { request in
            let principal = try await principal(request)
            return .response(.json(BlockList(blocked: try await service.blockedCustomers(principal, storeId: request.parameter("storeId")))))
        }
        router.add(.PUT, "/v1/stores/{storeId}/blocks/{customerId}") { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            return .response(.json(try await service.block(principal, storeId: request.parameter("storeId"),
                                                           customerId: request.parameter("customerId"))))
        }
        router.add(.DELETE, "/v1/stores/{storeId}/blocks/{customerId}") { request in
            let principal = try await principal(request)
            try await service.unblock(principal, storeId: request.parameter("storeId"), customerId: request.parameter("customerId"))
            return .response(Response(status: .noContent, headers: ["Cache-Control": "no-store"]))
        }
        router.add(.GET, "/v1/me/stores") { request in
            let principal = try await principal(request)
            return .response(.json(MembershipList(stores: try await service.myStores(principal))))
        }
        router.add(.POST, "/v1/me/stores") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["invitationCode"])
            let joined = try await service.joinStore(principal, code: try input.requiredString("invitationCode"))
            return .response(.json(joined, status: .created))
        }
        router.add(.GET, "/v1/stores/{storeId}/members") { request in
            let principal = try await principal(request)
            return .response(.json(try await service.members(principal, storeId: request.parameter("storeId"))))
        }
        router.add(.POST, "/v1/stores/{storeId}/invitations") { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            return .response(.json(try await service.inviteStaff(principal, storeId: request.parameter("storeId")), status: .created))
        }
        router.add(.DELETE, "/v1/stores/{storeId}/members/{accountId}") { request in
            let principal = try await principal(request)
            try await service.removeMember(principal, storeId: request.parameter("storeId"),
                                           accountId: request.parameter("accountId"))
            return .response(Response(status: .noContent, headers: ["Cache-Control": "no-store"]))
        }
        router.add(.GET, "/v1/stores/{storeId}/activity") { try await activity($0) }
        router.add(.GET, "/v1/stores/{storeId}/summary") { try await summary($0) }
        router.add(.POST, "/v1/me/member-code") { request in
            let principal = try await principal(request)
            _ = try JSONInput(request, allowed: [])
            return .response(.json(try await service.newMemberCode(principal), status: .created))
        }
        router.add(.POST, "/v1/me/claims") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["code"])
            return .response(.json(try await service.claimHeldCard(principal, code: try input.requiredString("code"))))
        }
        router.add(.POST, "/v1/me/password") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["currentPassword", "newPassword"])
            try await service.changePassword(principal, current: try input.requiredString("currentPassword"),
                                             new: try input.requiredString("newPassword"), clientAddress: request.clientAddress)
            return .response(Response(status: .noContent, headers: ["Cache-Control": "no-store"]))
        }
        router.add(.DELETE, "/v1/me") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["password"])
            try await service.deleteAccount(principal, password: try input.requiredString("password"),
                                            clientAddress: request.clientAddress)
            return .response(Response(status: .noContent, headers: ["Cache-Control": "no-store"]))
        }
        router.add(.DELETE, "/v1/sessions") { request in
            let principal = try await principal(request)
            try await service.revokeAllSessions(principal)
            return .response(Response(status: .noContent, headers: ["Cache-Control": "no-store"]))
        }
        router.add(.POST, "/v1/cards/{storeId}/gifts") { request in
            let principal = try await principal(request)
            let input = try JSONInput(request, allowed: ["to", "count"])
            guard let count = try input.int("count") else { throw HTTPError.invalid("count", "count is required") }
            let gift = try await service.giveStamps(principal, storeId: request.parameter("storeId"),
                                                    toLogin: try input.requiredString("to"), count: count,
                                                    idempotency: try idempotencyKey(request, input))
            return .response(.json(gift, status: .created))
        }
        router.add(.GET, "/v1/cards/{storeId}/ledger") { request in
            let principal = try await principal(request)
            return .response(.json(LedgerList(entries: try await service.ledger(principal, storeId: request.parameter("storeId")))))
        }
    }

    // MARK: - Accounts and sessions

    private func createAccount(_ request: Request) async throws -> Reply {
        let input = try JSONInput(request, allowed: ["role", "login", "password", "name", "claimCode"])
        let roleText = try input.requiredString("role")
        guard let role = Role(rawValue: roleText) else {
            throw HTTPError.invalid("role", "role must be customer or owner")
        }
        let signedIn = try await service.createAccount(
            role: role, login: try input.requiredString("login"), password: try input.requiredString("password"),
            name: try input.requiredString("name"), claimCode: try input.string("claimCode"),
            clientAddress: request.clientAddress)
        return .response(.json(signedIn, status: .created))
    }

    private func createSession(_ request: Request) async throws -> Reply {
        let input = try JSONInput(request, allowed: ["login", "password"])
        let signedIn = try await service.createSession(login: try input.requiredString("login"),
                                                       password: try input.requiredString("password"),
                                                       clientAddress: request.clientAddress)
        return .response(.json(signedIn, status: .created))
    }

    private func deleteSession(_ request: Request) async throws -> Reply {
        _ = try await principal(request)
        try await service.revokeSession(token: try bearerToken(request))
        return .response(Response(status: .noContent, headers: ["Cache-Control": "no-store"]))
    }

    // MARK: - Stores

    private static let storeFields: Set<String> = ["name", "stampsPerReward", "rewardItem", "address", "latitude",
                                                   "longitude", "openHours", "requestTtlSeconds", "menu", "rules"]
    private static let ruleFields = ["requireCounterCode", "autoApproveAtCounter", "pendingPerCustomer", "stampCooldownSeconds",
                                     "dailyStampCap"]

    /// `rules: {…}`: any of the rule fields; absent ones stay as they are (or take the defaults).
    private func rules(_ input: JSONInput) throws -> StoreRulesPatch {
        var patch = StoreRulesPatch()
        guard input.has("rules") else { return patch }
        guard let object = try input.object("rules") else { throw HTTPError.invalid("rules", "rules must be an object") }
        if let unknown = object.keys.sorted().first(where: { !Self.ruleFields.contains($0) }) {
            throw HTTPError.invalid("rules.\(unknown)", "rules.\(unknown) is not a store rule")
        }
        func bool(_ key: String) throws -> Bool? {
            switch object[key] {
            case nil: return nil
            case .bool(let value)?: return value
            case let other?: throw HTTPError.invalid("rules.\(key)", "rules.\(key) must be true or false, not \(other.kindName)")
            }
        }
        func int(_ key: String) throws -> Int? {
            guard let value = object[key] else { return nil }
            guard let int = try JSONInput.int(value, field: "rules.\(key)") else {
                throw HTTPError.invalid("rules.\(key)", "rules.\(key) cannot be null")
            }
            return int
        }
        patch.requireCounterCode = try bool("requireCounterCode")
        patch.autoApproveAtCounter = try bool("autoApproveAtCounter")
        patch.pendingPerCustomer = try int("pendingPerCustomer")
        patch.stampCooldownSeconds = try int("stampCooldownSeconds")
        patch.dailyStampCap = try int("dailyStampCap")
        return patch
    }

    private func createStore(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        let input = try JSONInput(request, allowed: Self.storeFields)
        var draft = StoreDraft(name: try input.requiredString("name"), rewardItem: try input.requiredString("rewardItem"))
        draft.stampsPerReward = try input.int("stampsPerReward")
        draft.address = try input.string("address")
        draft.latitude = try input.double("latitude")
        draft.longitude = try input.double("longitude")
        draft.openHours = try input.string("openHours")
        draft.requestTtlSeconds = try input.int("requestTtlSeconds")
        draft.menu = try menu(input)
        draft.rules = try rules(input)
        let store = try await service.createStore(principal, draft, idempotency: try idempotencyKey(request, input))
        var response = Response.json(store, status: .created)
        response.headers.add(name: "Location", value: "/v1/stores/\(store.id)")
        return .response(response)
    }

    private func updateStore(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        let input = try JSONInput(request, allowed: Self.storeFields)
        var patch = StorePatch()
        for field in ["name", "rewardItem", "stampsPerReward", "requestTtlSeconds", "menu", "rules"] where input.isNull(field) {
            throw HTTPError.invalid(field, "\(field) cannot be null")
        }
        patch.name = try input.string("name")
        patch.rewardItem = try input.string("rewardItem")
        patch.stampsPerReward = try input.int("stampsPerReward")
        patch.requestTtlSeconds = try input.int("requestTtlSeconds")
        patch.address = try input.patchString("address")
        patch.latitude = try input.patchDouble("latitude")
        patch.longitude = try input.patchDouble("longitude")
        patch.openHours = try input.patchString("openHours")
        patch.menu = try menu(input)
        patch.rules = try rules(input)
        return .response(.json(try await service.updateStore(principal, id: request.parameter("storeId"), patch)))
    }

    private func menu(_ input: JSONInput) throws -> [MenuItem]? {
        guard let items = try input.array("menu") else { return nil }
        return try items.enumerated().map { index, item in
            let field = "menu[\(index)]"
            guard case .object(let object) = item else { throw HTTPError.invalid(field, "\(field) must be an object") }
            if let unknown = object.keys.sorted().first(where: { $0 != "name" && $0 != "price" }) {
                throw HTTPError.invalid("\(field).\(unknown)", "\(field).\(unknown) is not a field of a menu item")
            }
            guard case .string(let name)? = object["name"] else {
                throw HTTPError.invalid("\(field).name", "\(field).name must be a string")
            }
            guard let priceValue = object["price"], let price = try JSONInput.int(priceValue, field: "\(field).price") else {
                throw HTTPError.invalid("\(field).price", "\(field).price must be an integer")
            }
            return MenuItem(name: name, price: price)
        }
    }

    private func searchStores(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        let page = try await service.searchStores(
            principal, query: request.query["q"], latitude: try queryDouble(request, "lat"),
            longitude: try queryDouble(request, "lon"), limit: try queryInt(request, "limit") ?? 20,
            cursor: request.query["cursor"])
        return .response(.json(StoreList(stores: page.items, nextCursor: page.nextCursor)))
    }

    // MARK: - Requests

    private func createRequest(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        let input = try JSONInput(request, allowed: ["kind", "count", "counterCode"])
        guard let kind = RequestKind(rawValue: try input.requiredString("kind")) else {
            throw HTTPError.invalid("kind", "kind must be stamp or reward")
        }
        let created = try await service.createRequest(
            principal, storeId: request.parameter("storeId"), kind: kind, count: try input.int("count"),
            counterCode: try input.string("counterCode"), idempotency: try idempotencyKey(request, input))
        var response = Response.json(created, status: .created)
        response.headers.add(name: "Location", value: "/v1/requests/\(created.id)")
        return .response(response)
    }

    private func storeRequests(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        var status: RequestStatus?
        if let text = request.query["status"] {
            guard let parsed = RequestStatus(rawValue: text) else {
                throw HTTPError.invalid("status", "status must be one of \(RequestStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            status = parsed
        }
        let page = try await service.storeRequests(principal, storeId: request.parameter("storeId"), status: status,
                                                   decidedBy: request.query["decidedBy"], customerId: request.query["customerId"],
                                                   since: try queryTimestamp(request, "since"), before: try queryTimestamp(request, "before"),
                                                   limit: try queryInt(request, "limit") ?? 50, cursor: request.query["cursor"])
        return .response(.json(RequestList(requests: page.items, nextCursor: page.nextCursor)))
    }

    /// Per-member counts for one day (`day=YYYY-MM-DD`, in the store's `utcOffsetMinutes`).
    private func activity(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        let offset = try utcOffset(request)
        guard let dayText = request.query["day"] else { throw HTTPError.invalid("day", "day is required (YYYY-MM-DD)") }
        guard let start = Self.dayStart(dayText, offsetMinutes: offset) else {
            throw HTTPError.invalid("day", "day must be a date as YYYY-MM-DD")
        }
        let counts = try await service.memberCounts(principal, storeId: request.parameter("storeId"), from: start,
                                                    to: start.addingTimeInterval(86_400))
        return .response(.json(Activity(day: dayText, utcOffsetMinutes: offset, members: counts)))
    }

    /// The store's figures per day for the last `days` (30) days, today included.
    private func summary(_ request: Request) async throws -> Reply {
        let principal = try await principal(request)
        let offset = try utcOffset(request)
        let days = try queryInt(request, "days") ?? 30
        return .response(.json(try await service.summary(principal, storeId: request.parameter("storeId"), days: days,
                                                         utcOffsetMinutes: offset)))
    }

    /// `utcOffsetMinutes` (east of UTC, as the page's clock is), 0 when left out.
    private func utcOffset(_ request: Request) throws -> Int {
        let offset = try queryInt(request, "utcOffsetMinutes") ?? 0
        guard (-14 * 60...14 * 60).contains(offset) else {
            throw HTTPError.invalid("utcOffsetMinutes", "utcOffsetMinutes must be between -840 and 840")
        }
        return offset
    }

    /// Midnight of `YYYY-MM-DD` at `offsetMinutes` east of UTC.
    static func dayStart(_ text: String, offsetMinutes: Int) -> Date? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard text.utf8.count == 10, parts.count == 3, parts.allSatisfy({ $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
              (1...9999).contains(year) else { return nil }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(secondsFromGMT: 0)!
        let components = DateComponents(year: year, month: month, day: day)
        guard components.isValidDate(in: calendar), let midnight = calendar.date(from: components) else { return nil }
        return midnight.addingTimeInterval(TimeInterval(-offsetMinutes * 60))
    }

    // MARK: - Shared pieces

    func bearerToken(_ request: Request) throws -> String {
        guard let header = request.headers.first(name: "authorization") else {
            throw HTTPError(.unauthorized, detail: "sign in and send Authorization: Bearer <token>",
                            headers: [("WWW-Authenticate", "Bearer")])
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer", !parts[1].isEmpty, parts[1].utf8.count <= 200 else {
            throw HTTPError(.unauthorized, detail: "the Authorization header must be Bearer <token>",
                            headers: [("WWW-Authenticate", "Bearer")])
        }
        return String(parts[1]).trimmingCharacters(in: .whitespaces)
    }

    func principal(_ request: Request) async throws -> Principal {
        try await service.authenticate(token: try bearerToken(request))
    }

    /// A retry is the same call when its body is the same JSON value, however it is spaced.
    private func idempotencyKey(_ request: Request, _ input: JSONInput) throws -> IdempotencyKey? {
        guard let key = request.headers.first(name: "idempotency-key") else { return nil }
        guard (1...255).contains(key.utf8.count), key.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7e }) else {
            throw HTTPError.invalid("Idempotency-Key", "Idempotency-Key must be 1 to 255 visible ASCII characters")
        }
        return IdempotencyKey(key: key, operation: "\(request.method.rawValue) \(request.pathSegments.joined(separator: "/"))",
                              body: Array(input.canonical.utf8))
    }
}

func queryInt(_ request: Request, _ name: String) throws -> Int? {
    guard let text = request.query[name] else { return nil }
    guard !text.hasPrefix("+"), let value = Int(text) else { throw HTTPError.invalid(name, "\(name) must be an integer") }
    return value
}

/// An RFC 3339 time (`2026-12-01T00:00:00Z`, fractions allowed).
func queryTimestamp(_ request: Request, _ name: String) throws -> Date? {
    guard let text = request.query[name] else { return nil }
    guard text.utf8.count <= 40, let date = StampJSON.parseTimestamp(text) else {
        throw HTTPError.invalid(name, "\(name) must be an RFC 3339 time such as 2026-12-01T00:00:00Z")
    }
    return date
}

func queryDouble(_ request: Request, _ name: String) throws -> Double? {
    guard let text = request.query[name] else { return nil }
    guard let value = Double(text), value.isFinite else { throw HTTPError.invalid(name, "\(name) must be a number") }
    return value
}

struct StoreList: Encodable, Sendable {
    var stores: [Store]
    var nextCursor: String?
}

struct RequestList: Encodable, Sendable {
    var requests: [StampRequest]
    var nextCursor: String?
}

struct MembershipList: Encodable, Sendable {
    var stores: [Membership]
}

struct Activity: Encodable, Sendable {
    var day: String
    var utcOffsetMinutes: Int
    var members: [MemberCounts]
}

struct BlockList: Encodable, Sendable {
    var blocked: [BlockedCustomer]
}

struct CardList: Encodable, Sendable {
    var cards: [Card]
}

struct CustomerList: Encodable, Sendable {
    var customers: [CustomerSummary]
}

struct StoreLedgerList: Encodable, Sendable {
    var entries: [StoreLedgerEntry]
    var nextCursor: String?
}

struct StoreCustomerList: Encodable, Sendable {
    var customers: [StoreCustomer]
    var nextCursor: String?
}

struct LedgerList: Encodable, Sendable {
    var entries: [LedgerEntry]
}
