// Walk-in customers: found by a store's owner, registered with only a phone number, stamped
// directly, and later claimed by the person who owns the phone with a one-time code.
import Crypto
import Foundation
import SQLiteDB

public struct CustomerSummary: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var login: String
    /// Registered by a store and not claimed yet.
    public var walkIn: Bool
}

public struct WalkInRegistration: Codable, Sendable, Equatable {
    public var customer: CustomerSummary
    public var claim: ClaimCode
}

/// A one-time code the owner's page shows, for the customer to claim a walk-in account.
public struct ClaimCode: Codable, Sendable, Equatable {
    public var code: String
    public var expiresAt: Date
}

public struct OwnerStamping: Codable, Sendable, Equatable {
    public var card: Card
    public init(card: Card) { self.card = card }
}

extension StampService {
    static let claimCodeLifetime: TimeInterval = 30 * 60
    static let claimAttempts = 5

    /// Customers of the owner's store whose phone ends with `phoneSuffix` (at least 4 digits),
    /// or the customer whose login is exactly `login`: never a directory of every user.
    public func findCustomers(_ principal: Principal, storeId: String, phoneSuffix: String?,
                              login: String?) async throws -> [CustomerSummary] {
        if let phoneSuffix {
            guard phoneSuffix.count >= 4, phoneSuffix.count <= 20, phoneSuffix.allSatisfy(\.isASCII), phoneSuffix.allSatisfy(\.isNumber) else {
                throw StampError.invalid("phoneEndsWith", "phoneEndsWith must be 4 to 20 digits")
            }
        } else if login == nil {
            throw StampError.invalid("phoneEndsWith", "give phoneEndsWith or login")
        }
        let loginKey = try login.map { Self.loginKey(try Validate.text($0, field: "login", min: 3, max: 100)) }
        return try await read { connection in
            try Self.requireOwner(principal, of: storeId, on: connection)
            if let phoneSuffix {
                return try connection.query("""
                    SELECT a.id, a.name, a.login, a.walk_in FROM cards c JOIN accounts a ON a.id = c.customer_id
                    WHERE c.store_id = ? AND a.login_key LIKE 'tel:%' AND substr(a.login_key, -?) = ?
                    ORDER BY a.name LIMIT 20
                    """, storeId, phoneSuffix.count, phoneSuffix) { try Self.customerRow($0) }
            }
            return try connection.query("""
                SELECT id, name, login, walk_in FROM accounts WHERE login_key = ? AND role = 'customer'
                """, loginKey!) { try Self.customerRow($0) }
        }
    }

    /// Registers a customer who has no app yet by phone number; answers a claim code for them.
    public func registerWalkIn(_ principal: Principal, storeId: String, phone: String, name: String?) async throws -> WalkInRegistration {
        let phone = try Validate.text(phone, field: "phone", min: 6, max: 30)
        guard let digits = Self.phoneDigits(phone) else {
            throw StampError.invalid("phone", "phone must be a phone number: digits, spaces, +, -, ( and )")
        }
        let name = try Validate.optionalText(name, field: "name", max: 100) ?? "Guest \(digits.suffix(4))"
        let now = clock.now()
        let id = Identifier.make("acc")
        let code = Self.newClaimCode()
        return try await write { connection, _ in
            try Self.requireOwner(principal, of: storeId, on: connection)
            do {
                try connection.run("""
                    INSERT INTO accounts (id, role, login, login_key, name, password_hash, created_at, walk_in)
                    VALUES (?, 'customer', ?, ?, ?, '!', ?, 1)
                    """, id, phone, "tel:" + digits, name, now.millis)
            } catch let error as SQLiteError where error.isUniqueViolation {
                throw StampError(.conflict, "this phone number already has an account: find it by phone or login", field: "phone")
            }
            // An empty card makes the walk-in one of this store's customers, found by phone ending.
            _ = try Self.newCard(customer: id, store: storeId, now: now, on: connection)
            let claim = try Self.storeClaimCode(code, for: id, now: now, on: connection)
            return WalkInRegistration(customer: CustomerSummary(id: id, name: name, login: phone, walkIn: true), claim: claim)
        }
    }

    /// A new claim code for a walk-in customer who has a card at the owner's store (registering
    /// one gives it a card): another store's owner cannot take a walk-in over.
    public func issueClaimCode(_ principal: Principal, storeId: String, customerId: String) async throws -> ClaimCode {
        let now = clock.now()
        let code = Self.newClaimCode()
        return try await write { connection, _ in
            try Self.requireOwner(principal, of: storeId, on: connection)
            let known = try connection.queryFirst("""
                SELECT a.walk_in FROM accounts a
                WHERE a.id = ? AND a.role = 'customer'
                  AND EXISTS (SELECT 1 FROM cards c WHERE c.customer_id = a.id AND c.store_id = ?)
                """, customerId, storeId) { try $0.get(0, as: Bool.self) }
            guard let walkIn = known else { throw StampError.notFound("customer") }
            guard walkIn else { throw StampError(.conflict, "this customer has already claimed the account") }
            return try Self.storeClaimCode(code, for: customerId, now: now, on: connection)
        }
    }

    /// The owner adds (or, for a correction, removes) stamps on a customer's card directly.
    public func stampDirectly(_ principal: Principal, storeId: String, customerId: String, count: Int) async throws -> Card {
        guard count != 0 else { throw StampError.invalid("count", "count must not be 0") }
        let count = try Validate.range(count, field: "count", -100...100)
        let now = clock.now()
        return try await write { connection, outbox in
            try Self.requireOwner(principal, of: storeId, on: connection)
            guard try connection.queryFirst("SELECT 1 FROM accounts WHERE id = ? AND role = 'customer'", customerId,
                                            row: { try $0.get(0, as: Int.self) }) != nil else {
                throw StampError.notFound("customer")
            }
            var card = try Self.loadCard(customer: customerId, store: storeId, on: connection)
                ?? Self.newCard(customer: customerId, store: storeId, now: now, on: connection)
            if count < 0 && card.stamps < -count {
                throw StampError(.conflict, "the card has only \(Self.stamps(card.stamps)) to remove", field: "count")
            }
            try Self.addLedger(.manualStamp, card: card, stamps: count, rewards: 0, request: nil, at: now, on: connection)
            card = try Self.convertAndSave(card, adding: count, now: now, on: connection)
            try outbox.emit("card.updated", to: [customerId],
                            data: CardChange(card: card, reason: "ownerStamped", stamps: count), at: now, on: connection)
            return card
        }
    }

    // MARK: - Pieces

    /// "1 stamp", "3 stamps".
    static func stamps(_ count: Int) -> String { count == 1 ? "1 stamp" : "\(count) stamps" }

    static func requireOwner(_ principal: Principal, of storeId: String, on connection: Connection) throws {
        guard let owner = try connection.queryFirst("SELECT owner_id FROM stores WHERE id = ?", storeId, row: {
            try $0.get(0, as: String.self)
        }) else { throw StampError.notFound("store") }
        guard owner == principal.id else { throw StampError(.forbidden, "only the store's owner may do this") }
    }

    static func customerRow(_ row: borrowing Row) throws -> CustomerSummary {
        CustomerSummary(id: try row.get(0), name: try row.get(1), login: try row.get(2), walkIn: try row.get(3))
    }

    static func walkInAccount(_ loginKey: String, on connection: Connection) throws -> String? {
        try connection.queryFirst("SELECT id FROM accounts WHERE login_key = ? AND walk_in = 1", loginKey) {
            try $0.get(0, as: String.self)
        }
    }

    /// Turns a walk-in account into the claimer's own when the code is right.
    static func claim(_ account: String, code: String?, login: String, passwordHash: String, name: String, now: Date,
                      on connection: Connection) throws {
        guard let code, !code.isEmpty else {
            throw StampError(.conflict, "this phone number has stamp cards waiting: ask the cafe for the code to claim them",
                             field: "claimCode")
        }
        guard let (stored, expiresAt, attempts) = try connection.queryFirst(
            "SELECT code_hash, expires_at, attempts FROM claim_codes WHERE account_id = ?", account, row: {
                (try $0.get(0, as: [UInt8].self), try $0.get(1, as: Int64.self), try $0.get(2, as: Int.self))
            }), expiresAt > now.millis else {
            throw StampError(.unprocessable, "the claim code has expired: ask the cafe for a new one", field: "claimCode")
        }
        guard code.count == 6, code.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw StampError.invalid("claimCode", "the claim code is the 6 digits the cafe shows")
        }
        guard attempts < claimAttempts else {
            throw StampError(.rateLimited, "too many wrong claim codes: ask the cafe for a new one", retryAfter: 60)
        }
        guard constantTimeEqual(claimDigest(code, account: account), stored) else {
            // Counted in its own statement; the write that failed still commits the count.
            throw ClaimRefused(account: account)
        }
        try connection.run("UPDATE accounts SET login = ?, password_hash = ?, name = ?, walk_in = 0 WHERE id = ?",
                           login, passwordHash, name, account)
        try connection.run("DELETE FROM claim_codes WHERE account_id = ?", account)
    }

    struct ClaimRefused: Error {
        let account: String
    }

    static func storeClaimCode(_ code: String, for account: String, now: Date, on connection: Connection) throws -> ClaimCode {
        let expiresAt = now.addingTimeInterval(claimCodeLifetime)
        try connection.run("""
            INSERT INTO claim_codes (account_id, code_hash, expires_at, attempts) VALUES (?, ?, ?, 0)
            ON CONFLICT (account_id) DO UPDATE SET code_hash = excluded.code_hash, expires_at = excluded.expires_at, attempts = 0
            """, account, claimDigest(code, account: account), expiresAt.millis)
        return ClaimCode(code: code, expiresAt: expiresAt)
    }

    static func newClaimCode() -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next(upperBound: UInt32(1_000_000))
        let digits = String(value)
        return String(repeating: "0", count: 6 - digits.count) + digits
    }

    static func claimDigest(_ code: String, account: String) -> [UInt8] {
        Array(SHA256.hash(data: Array((account + ":" + code.trimmingCharacters(in: .whitespaces)).utf8)))
    }

    /// Adds `stamps` (after its ledger row is written), turns full sets into rewards with a ledger
    /// row of their own, and saves the card.
    static func convertAndSave(_ card: Card, adding stamps: Int, request: String? = nil, now: Date,
                               on connection: Connection) throws -> Card {
        var card = card
        let total = card.stamps + stamps
        let earned = total / card.stampsPerReward
        if earned > 0 {
            try addLedger(.rewardEarned, card: card, stamps: -earned * card.stampsPerReward, rewards: earned,
                          request: request, at: now, on: connection)
        }
        card.stamps = total - earned * card.stampsPerReward
        card.rewards += earned
        card.updatedAt = now
        try connection.run("UPDATE cards SET stamps = ?, rewards = ?, updated_at = ? WHERE customer_id = ? AND store_id = ?",
                           card.stamps, card.rewards, now.millis, card.customerId, card.storeId)
        return card
    }
}
