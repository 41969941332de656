// A store's customers: found only among the people who have a card there, added by the member
// code a person's own phone shows, or held for a phone number (a walk-in with no app yet) until
// the person claims the card with the code the store gave them at the counter.
import Crypto
import Foundation
import Storage

public struct CustomerSummary: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var login: String
    /// A card the store holds for a phone number, not claimed yet.
    public var walkIn: Bool
}

/// A customer a store added: by member code (no claim), or as a walk-in with a claim code.
public struct CustomerAdded: Codable, Sendable, Equatable {
    public var customer: CustomerSummary
    public var claim: ClaimCode?
}

/// A one-time code the owner's page shows, for the person with that phone to claim the held card.
public struct ClaimCode: Codable, Sendable, Equatable {
    public var code: String
    public var expiresAt: Date
}

/// A short-lived code a customer's phone shows, for a store to add them as its customer.
public struct MemberCode: Codable, Sendable, Equatable {
    public var code: String
    public var expiresAt: Date
}

public struct OwnerStamping: Codable, Sendable, Equatable {
    public var card: Card
    /// The ledger entry of the change, to undo it within minutes.
    public var entryId: Int64
    public init(card: Card, entryId: Int64) {
        self.card = card
        self.entryId = entryId
    }
}

public struct Claimed: Codable, Sendable, Equatable {
    /// The claimer's card at the store that held it, with the held stamps and rewards added.
    public var card: Card
}

extension StampService {
    static let claimCodeLifetime: TimeInterval = 30 * 60
    static let memberCodeLifetime: TimeInterval = 10 * 60
    static let day: TimeInterval = 86_400
    static let hour: TimeInterval = 3_600

    /// Customers with a card at the owner's store: by the end of their phone number (at least 4
    /// digits), by their exact login, or by a part of their name. Never anyone else.
    public func findCustomers(_ principal: Principal, storeId: String, phoneSuffix: String?,
                              login: String?, name: String? = nil) async throws -> [CustomerSummary] {
        if let phoneSuffix {
            guard phoneSuffix.count >= 4, phoneSuffix.count <= 20, phoneSuffix.allSatisfy(\.isASCII), phoneSuffix.allSatisfy(\.isNumber) else {
                throw StampError.invalid("phoneEndsWith", "phoneEndsWith must be 4 to 20 digits")
            }
        } else if login == nil && name == nil {
            throw StampError.invalid("phoneEndsWith", "give phoneEndsWith, login or name")
        }
        let loginText = try login.map { try Validate.text($0, field: "login", min: 3, max: 100) }
        let loginKey = loginText.map(Login.key)
        let legacyKey = loginText.map(Login.legacyKey)
        let namePart = try name.map { try Validate.text($0, field: "name", min: 2, max: 100) }
        return try await read { connection in
            try await Self.requireMember(principal, of: storeId, on: connection)
            let select = """
                SELECT a.id, a.name, a.login, a.walk_in FROM cards c JOIN accounts a ON a.id = c.customer_id
                WHERE c.store_id = ?
                """
            if let phoneSuffix {
                // The suffix is 4 to 20 ASCII digits, so it needs no LIKE escaping; both engines.
                return try await connection.query(select + """
                     AND (a.login_key LIKE 'tel:%' OR a.walk_in = 1) AND a.login_key LIKE ?
                    ORDER BY a.name LIMIT 20
                    """, storeId, "%" + phoneSuffix) { try Self.customerRow($0) }
            }
            if let loginKey, let legacyKey {
                return try await connection.query(select + " AND a.login_key IN (?, ?, ?)",
                                            storeId, loginKey, legacyKey, Self.heldKey(store: storeId, phoneKey: loginKey)) {
                    try Self.customerRow($0)
                }
            }
            // LIKE folds ASCII case in SQLite; PostgreSQL's ILIKE does the same (and more).
            return try await connection.query(SQL(sqlite: select + " AND a.name LIKE ? ESCAPE '\\' ORDER BY a.name LIMIT 20",
                                                  postgres: select + " AND a.name ILIKE ? ESCAPE '\\' ORDER BY a.name LIMIT 20"),
                                        storeId, "%" + Self.escapeLike(namePart!) + "%") { try Self.customerRow($0) }
        }
    }

    /// Holds a card for a phone number (a walk-in with no app yet); answers the claim code for
    /// them. The number stays free: its owner signs up with it whenever they like.
    public func registerWalkIn(_ principal: Principal, storeId: String, phone: String, name: String?) async throws -> CustomerAdded {
        let phone = try Validate.text(phone, field: "phone", min: 6, max: 30)
        guard let digits = Login.phoneDigits(phone) else {
            throw StampError.invalid("phone", "phone must be a phone number: digits, spaces, +, -, ( and )")
        }
        let name = try Validate.optionalText(name, field: "name", max: 100) ?? "Guest \(digits.suffix(4))"
        let now = clock.now()
        let id = Identifier.make("acc")
        let code = Self.newDigits(6)
        let limits = settings.limits
        return try await write { connection, _ in
            try await Self.requireMember(principal, of: storeId, on: connection, touching: now)
            let phoneKey = "tel:" + digits
            let heldKey = Self.heldKey(store: storeId, phoneKey: phoneKey)
            if try await connection.queryFirst("SELECT 1 FROM accounts WHERE login_key = ?", heldKey, row: { try $0.get(0, as: Int.self) }) != nil {
                throw StampError(.conflict, "this store already holds a card for this phone number: find it by phone", field: "phone")
            }
            try await Self.countAction("walk-in:" + storeId, limit: limits.walkInsPerStorePerDay, window: Self.day,
                                 what: "\(limits.walkInsPerStorePerDay) walk-ins a day per store", now: now, on: connection)
            try await connection.run("""
                INSERT INTO accounts (id, role, login, login_key, name, password_hash, created_at, walk_in)
                VALUES (?, 'customer', ?, ?, ?, '!', ?, 1)
                """, id, phone, heldKey, name, now.millis)
            _ = try await Self.newCard(customer: id, store: storeId, addedBy: principal.id, now: now, on: connection)
            let claim = try await Self.storeClaimCode(code, store: storeId, phoneKey: phoneKey, now: now, on: connection)
            return CustomerAdded(customer: CustomerSummary(id: id, name: name, login: phone, walkIn: true), claim: claim)
        }
    }

    /// Adds the person whose phone shows `memberCode` as a customer of the store (an empty card),
    /// so that the store can stamp them. The code proves they are at the counter and agree; it
    /// works once.
    public func addMember(_ principal: Principal, storeId: String, memberCode: String) async throws -> CustomerAdded {
        let code = try Self.memberCodeDigits(memberCode)
        let now = clock.now()
        let limits = settings.limits
        let outcome = try await write { connection, outbox -> Result<CustomerAdded, StampError> in
            try await Self.requireMember(principal, of: storeId, on: connection, touching: now)
            let missScope = "member-miss:" + storeId
            if let wait = try await Self.secondsUntilAllowed(missScope, limit: limits.memberCodeMissesPerStorePerHour,
                                                       window: Self.hour, now: now, on: connection) {
                throw StampError(.rateLimited, "too many unknown member codes; try again in \(wait) s", retryAfter: wait)
            }
            guard let customer = try await connection.queryFirst("""
                SELECT a.id, a.name, a.login, a.walk_in FROM member_codes m JOIN accounts a ON a.id = m.account_id
                WHERE m.code_hash = ? AND m.expires_at > ?
                """, Self.memberDigest(code), now.millis, row: { try Self.customerRow($0) }) else {
                // Returned, not thrown, so that the counted miss commits.
                try await Self.recordAction(missScope, now: now, on: connection)
                return .failure(StampError(.unprocessable, "this member code is unknown or has expired: ask for a fresh one",
                                           field: "memberCode"))
            }
            // Used once: a code seen over someone's shoulder adds them nowhere else.
            try await connection.run("DELETE FROM member_codes WHERE code_hash = ?", Self.memberDigest(code))
            if try await Self.loadCard(customer: customer.id, store: storeId, on: connection) == nil {
                // The new (empty) card shows on the person's phone at once.
                let card = try await Self.newCard(customer: customer.id, store: storeId, addedBy: principal.id, now: now,
                                                  on: connection)
                try outbox.emit("card.updated", to: [customer.id], data: CardChange(card: card, reason: "added"),
                                at: now)
            }
            return .success(CustomerAdded(customer: customer, claim: nil))
        }
        return try outcome.get()
    }

    /// A new member code for the calling customer (the previous one stops working).
    public func newMemberCode(_ principal: Principal) async throws -> MemberCode {
        guard principal.role == .customer else { throw StampError(.forbidden, "only customers have member codes") }
        let now = clock.now()
        let expiresAt = now.addingTimeInterval(Self.memberCodeLifetime)
        let limits = settings.limits
        return try await write { connection, _ in
            try await Self.countAction("member-code:" + principal.id, limit: limits.memberCodesPerAccountPerHour, window: Self.hour,
                                 what: "\(limits.memberCodesPerAccountPerHour) member codes an hour", now: now, on: connection)
            try await connection.run("DELETE FROM member_codes WHERE account_id = ?", principal.id)
            // Codes are random; a collision with a live one (rare) draws again.
            for _ in 0..<8 {
                let code = Self.newDigits(8)
                // A statement that fails aborts a PostgreSQL transaction: the collision is skipped, not caught.
                if try await connection.run("""
                    INSERT INTO member_codes (code_hash, account_id, expires_at) VALUES (?, ?, ?)
                    ON CONFLICT (code_hash) DO NOTHING
                    """, Self.memberDigest(code), principal.id, expiresAt.millis) == 1 {
                    return MemberCode(code: code, expiresAt: expiresAt)
                }
            }
            throw StampError(.unavailable, "no member code could be drawn; try again", retryAfter: 1)
        }
    }

    /// A new claim code for a card the store holds (the previous one stops working).
    public func issueClaimCode(_ principal: Principal, storeId: String, customerId: String) async throws -> ClaimCode {
        let now = clock.now()
        let code = Self.newDigits(6)
        let limits = settings.limits
        return try await write { connection, _ in
            try await Self.requireMember(principal, of: storeId, on: connection, touching: now)
            guard let (key, walkIn) = try await connection.queryFirst("""
                SELECT a.login_key, a.walk_in FROM accounts a JOIN cards c ON c.customer_id = a.id AND c.store_id = ?
                WHERE a.id = ?
                """, storeId, customerId, row: { (try $0.get(0, as: String.self), try $0.get(1, as: Bool.self)) }) else {
                throw StampError.notFound("customer")
            }
            let prefix = Self.heldKey(store: storeId, phoneKey: "")
            guard walkIn, key.hasPrefix(prefix) else {
                throw StampError(.conflict, "this customer has their own account: there is nothing to claim")
            }
            try await Self.countAction("claim-code:" + storeId, limit: limits.claimCodesPerStorePerHour, window: Self.hour,
                                 what: "\(limits.claimCodesPerStorePerHour) claim codes an hour per store", now: now, on: connection)
            return try await Self.storeClaimCode(code, store: storeId, phoneKey: String(key.dropFirst(prefix.count)), now: now,
                                           on: connection)
        }
    }

    /// The signed-in customer claims the card a store holds for their phone number.
    public func claimHeldCard(_ principal: Principal, code: String) async throws -> Claimed {
        guard principal.role == .customer else { throw StampError(.forbidden, "only customers claim cards") }
        let phoneKey = Login.key(principal.account.login)
        guard phoneKey.hasPrefix("tel:") else {
            throw StampError(.conflict, "a held card is claimed by the phone number it is held for: sign in with that number",
                             field: "code")
        }
        let code = try Self.claimCodeDigits(code, field: "code")
        let now = clock.now()
        let limits = settings.limits
        let outcome = try await write { connection, outbox -> Result<Claimed, StampError> in
            switch try await Self.matchClaimCode(code, phoneKey: phoneKey, field: "code", limits: limits, now: now, on: connection) {
            case .failure(let refusal): return .failure(refusal)
            case .success(let store):
                let card = try await Self.moveHeldCard(store: store, phoneKey: phoneKey, into: principal.id, now: now,
                                                 on: connection, outbox: &outbox)
                return .success(Claimed(card: card))
            }
        }
        return try outcome.get()
    }

    /// A member adds (or, for a correction, removes) stamps on the card of one of the store's customers.
    public func stampDirectly(_ principal: Principal, storeId: String, customerId: String, count: Int) async throws -> OwnerStamping {
        guard count != 0 else { throw StampError.invalid("count", "count must not be 0") }
        let count = try Validate.range(count, field: "count", -100...100)
        let now = clock.now()
        let limits = settings.limits
        return try await write { connection, outbox in
            try await Self.requireMember(principal, of: storeId, on: connection, touching: now)
            guard var card = try await Self.loadCard(customer: customerId, store: storeId, on: connection) else {
                throw StampError(.notFound, "this person has no card here: add them with the member code their phone shows",
                                 field: "customerId")
            }
            if count < 0 && card.stamps < -count {
                throw StampError(.conflict, "the card has only \(Self.stamps(card.stamps)) to remove", field: "count")
            }
            try await Self.countAction("stamp:" + storeId, limit: limits.directStampsPerStorePerHour, window: Self.hour,
                                 what: "\(limits.directStampsPerStorePerHour) direct stamp changes an hour per store",
                                 now: now, on: connection)
            let entry = try await Self.addLedger(.manualStamp, card: card, stamps: count, rewards: 0, request: nil,
                                           member: principal.id, at: now, on: connection)
            card = try await Self.convertAndSave(card, adding: count, member: principal.id, visit: count > 0, now: now,
                                           on: connection)
            if try await !Self.isHeld(customerId, on: connection) {
                try outbox.emit("card.updated", to: [customerId],
                                data: CardChange(card: card, reason: "ownerStamped", stamps: count), at: now)
            }
            return OwnerStamping(card: card, entryId: entry)
        }
    }

    // MARK: - Pieces

    /// "1 stamp", "3 stamps".
    static func stamps(_ count: Int) -> String { count == 1 ? "1 stamp" : "\(count) stamps" }

    static func customerRow(_ row: borrowing Row) throws -> CustomerSummary {
        CustomerSummary(id: try row.get(0), name: try row.get(1), login: try row.get(2), walkIn: try row.get(3))
    }

    /// The key of the holder row of a card `store` holds for a phone: no login can ever have it
    /// (logins have no `:`), so holding a card never reserves the number.
    static func heldKey(store: String, phoneKey: String) -> String { "held:\(store):\(phoneKey)" }

    static func isHeld(_ account: String, on connection: any SQLSession) async throws -> Bool {
        try await connection.queryFirst("SELECT walk_in FROM accounts WHERE id = ?", account, row: { try $0.get(0, as: Bool.self) }) ?? false
    }

    /// The store whose live claim code for `phoneKey` is `code`. A wrong code counts against every
    /// live code of the phone and against the phone's daily allowance; it is returned, not thrown,
    /// so that the counts commit with the write.
    static func matchClaimCode(_ code: String, phoneKey: String, field: String, limits: PartyLimits, now: Date,
                               on connection: any SQLSession) async throws -> Result<String, StampError> {
        let missScope = "claim-miss:" + phoneKey
        if let wait = try await secondsUntilAllowed(missScope, limit: limits.claimFailuresPerPhonePerDay, window: day,
                                              now: now, on: connection) {
            throw StampError(.rateLimited, "too many wrong claim codes for this phone number today", retryAfter: wait)
        }
        let live = try await connection.query("""
            SELECT store_id, code_hash FROM claim_codes WHERE phone_key = ? AND expires_at > ? AND attempts < ?
            """, phoneKey, now.millis, limits.claimAttemptsPerCode) {
            (try $0.get(0, as: String.self), try $0.get(1, as: [UInt8].self))
        }
        for (store, stored) in live where constantTimeEqual(claimDigest(code, store: store, phoneKey: phoneKey), stored) {
            try await connection.run("DELETE FROM claim_codes WHERE store_id = ? AND phone_key = ?", store, phoneKey)
            return .success(store)
        }
        try await connection.run("UPDATE claim_codes SET attempts = attempts + 1 WHERE phone_key = ? AND expires_at > ?",
                           phoneKey, now.millis)
        try await recordAction(missScope, now: now, on: connection)
        return .failure(StampError(.unprocessable, "the claim code is wrong or has expired: ask the cafe for a new one",
                                   field: field))
    }

    /// Moves the card `store` holds for `phoneKey` into `account`'s card there: its ledger rows
    /// move with it, so the card still equals its ledger; then the holder row goes.
    static func moveHeldCard(store: String, phoneKey: String, into account: String, now: Date, on connection: any SQLSession,
                             outbox: inout Outbox) async throws -> Card {
        guard let holder = try await connection.queryFirst("SELECT id FROM accounts WHERE login_key = ? AND walk_in = 1",
                                                     heldKey(store: store, phoneKey: phoneKey), row: { try $0.get(0, as: String.self) }),
              let held = try await loadCard(customer: holder, store: store, on: connection) else {
            throw StampError(.conflict, "the store no longer holds a card for this number")
        }
        var card = try await loadOrNewCard(customer: account, store: store, now: now, on: connection)
        try await connection.run("UPDATE ledger SET customer_id = ? WHERE customer_id = ? AND store_id = ?", account, holder, store)
        card.rewards += held.rewards
        card = try await convertAndSave(card, adding: held.stamps, now: now, on: connection)
        try await connection.run("DELETE FROM cards WHERE customer_id = ? AND store_id = ?", holder, store)
        try await connection.run("DELETE FROM events WHERE account_id = ?", holder)
        // A holder from before held cards existed may still hold another store's card: it stays.
        if try await connection.queryFirst("SELECT 1 FROM cards WHERE customer_id = ?", holder, row: { try $0.get(0, as: Int.self) }) == nil {
            try await connection.run("DELETE FROM accounts WHERE id = ?", holder)
            try await connection.run("DELETE FROM event_positions WHERE account_id = ?", holder)
        }
        try outbox.emit("card.updated", to: [account],
                        data: CardChange(card: card, reason: "claimed", stamps: held.stamps), at: now)
        return card
    }

    static func storeClaimCode(_ code: String, store: String, phoneKey: String, now: Date, on connection: any SQLSession) async throws -> ClaimCode {
        let expiresAt = now.addingTimeInterval(claimCodeLifetime)
        try await connection.run("""
            INSERT INTO claim_codes (store_id, phone_key, code_hash, expires_at, attempts) VALUES (?, ?, ?, ?, 0)
            ON CONFLICT (store_id, phone_key) DO UPDATE SET code_hash = excluded.code_hash, expires_at = excluded.expires_at,
                attempts = 0
            """, store, phoneKey, claimDigest(code, store: store, phoneKey: phoneKey), expiresAt.millis)
        return ClaimCode(code: code, expiresAt: expiresAt)
    }

    static func claimCodeDigits(_ code: String, field: String) throws -> String {
        try codeDigits(code, count: 6, field: field, "the claim code is the 6 digits the cafe shows")
    }

    static func memberCodeDigits(_ code: String) throws -> String {
        try codeDigits(code, count: 8, field: "memberCode", "the member code is the 8 digits the customer's phone shows")
    }

    /// A code as typed, without the spaces and dashes people put in: exactly `count` ASCII digits.
    private static func codeDigits(_ code: String, count: Int, field: String, _ rule: String) throws -> String {
        let digits = code.filter { $0 != " " && $0 != "-" }
        guard digits.count == count, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw StampError.invalid(field, rule)
        }
        return digits
    }

    /// `count` random decimal digits.
    static func newDigits(_ count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return String((0..<count).map { _ in Character(String(generator.next(upperBound: UInt8(10)))) })
    }

    static func claimDigest(_ code: String, store: String, phoneKey: String) -> [UInt8] {
        Array(SHA256.hash(data: Array("claim:\(store):\(phoneKey):\(code)".utf8)))
    }

    static func memberDigest(_ code: String) -> [UInt8] {
        Array(SHA256.hash(data: Array("member:\(code)".utf8)))
    }

    /// Adds `stamps` (after its ledger row is written), turns full sets into rewards with a ledger
    /// row of their own, and saves the card.
    /// `visit` counts the change as a visit of the customer (an approval, a direct stamp).
    static func convertAndSave(_ card: Card, adding stamps: Int, request: String? = nil, member: String? = nil,
                               visit: Bool = false, now: Date, on connection: any SQLSession) async throws -> Card {
        var card = card
        let total = card.stamps + stamps
        let earned = total / card.stampsPerReward
        if earned > 0 {
            try await addLedger(.rewardEarned, card: card, stamps: -earned * card.stampsPerReward, rewards: earned,
                          request: request, member: member, at: now, on: connection)
        }
        card.stamps = total - earned * card.stampsPerReward
        card.rewards += earned
        card.updatedAt = now
        try await connection.run("""
            UPDATE cards SET stamps = ?, rewards = ?, updated_at = ?, visits = visits + ? WHERE customer_id = ? AND store_id = ?
            """, card.stamps, card.rewards, now.millis, visit ? 1 : 0, card.customerId, card.storeId)
        return card
    }
}
