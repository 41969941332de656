// Accounts, sign-in sessions and bearer-token authentication.
import Foundation
import SQLiteDB
import Synchronization

public struct SignedIn: Codable, Sendable {
    public var account: Account
    public var token: String
    public var expiresAt: Date
}

extension StampService {
    /// Signs up. A customer whose phone a store registered as a walk-in claims that account and
    /// its cards with the one-time code the store shows (`claimCode`).
    public func createAccount(role: Role, login: String, password: String, name: String,
                              claimCode: String? = nil) async throws -> SignedIn {
        let login = try Validate.text(login, field: "login", min: 3, max: 100)
        let name = try Validate.text(name, field: "name", max: 100)
        guard (8...200).contains(password.unicodeScalars.count) else {
            throw StampError.invalid("password", "password must have 8 to 200 characters")
        }
        let hash = try await hasher.hash(password)
        let now = clock.now()
        let account = Account(id: Identifier.make("acc"), role: role, login: login, name: name, createdAt: now)
        let token = BearerToken.generate()
        let expiresAt = now.addingTimeInterval(settings.tokenLifetime)
        let key = Self.loginKey(login)
        let created = try await write { connection, _ -> Account? in
            if let walkIn = try Self.walkInAccount(key, on: connection) {
                guard role == .customer else { throw StampError(.conflict, "the login is taken", field: "login") }
                do {
                    try Self.claim(walkIn, code: claimCode, login: login, passwordHash: hash, name: name, now: now, on: connection)
                } catch is ClaimRefused {
                    // Returned, not thrown, so that the counted attempt commits.
                    try connection.run("UPDATE claim_codes SET attempts = attempts + 1 WHERE account_id = ?", walkIn)
                    return nil
                }
                try Self.insertSession(token: token, account: walkIn, now: now, expiresAt: expiresAt, on: connection)
                return try Self.loadAccount(walkIn, on: connection)
            }
            do {
                try connection.run("""
                    INSERT INTO accounts (id, role, login, login_key, name, password_hash, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """, account.id, role.rawValue, login, Self.loginKey(login), name, hash, now.millis)
            } catch let error as SQLiteError where error.isUniqueViolation {
                throw StampError(.conflict, "the login is taken", field: "login")
            }
            try Self.insertSession(token: token, account: account.id, now: now, expiresAt: expiresAt, on: connection)
            return account
        }
        guard let created else { throw StampError(.unprocessable, "the claim code is wrong", field: "claimCode") }
        return SignedIn(account: created, token: token, expiresAt: expiresAt)
    }

    public func createSession(login: String, password: String) async throws -> SignedIn {
        let key = Self.loginKey(login)
        let now = clock.now()
        if let wait = throttle.secondsLocked(key, now: now) {
            throw StampError(.rateLimited, "too many failed sign-ins for this login; try again later", retryAfter: wait)
        }
        let found = try await read { connection in
            try connection.queryFirst("""
                SELECT id, role, login, name, created_at, password_hash FROM accounts WHERE login_key = ?
                """, key) { row in (try Self.account(row), try row.get(5, as: String.self)) }
        }
        guard let (account, hash) = found, try await hasher.verify(password, against: hash) else {
            if found == nil { try await hasher.verifyDecoy(password) }
            throttle.recordFailure(key, now: now)
            throw StampError(.unauthenticated, "the login or the password is wrong")
        }
        throttle.recordSuccess(key)
        let token = BearerToken.generate()
        let expiresAt = now.addingTimeInterval(settings.tokenLifetime)
        try await write { connection, _ in
            try Self.insertSession(token: token, account: account.id, now: now, expiresAt: expiresAt, on: connection)
        }
        return SignedIn(account: account, token: token, expiresAt: expiresAt)
    }

    /// The account behind a bearer token that is neither expired nor revoked. Valid sessions are
    /// remembered, so most requests authenticate without a database read.
    public func authenticate(token: String) async throws -> Principal {
        let digest = BearerToken.digest(token)
        let now = clock.now().millis
        let (remembered, revocations) = sessions.principal(for: digest, now: now)
        if let remembered { return remembered }
        let found = try await read { connection in
            try connection.queryFirst("""
                SELECT a.id, a.role, a.login, a.name, a.created_at, s.expires_at
                FROM sessions s JOIN accounts a ON a.id = s.account_id
                WHERE s.token_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ?
                """, digest, now) { (try Self.account($0), try $0.get(5, as: Int64.self)) }
        }
        guard let (account, expiresAt) = found else {
            throw StampError(.unauthenticated, "the token is unknown, expired or revoked")
        }
        let principal = Principal(account: account)
        sessions.remember(digest, principal, expiresAt: expiresAt, readSince: revocations)
        return principal
    }

    /// The account behind a token this process has already checked, without a read; nil otherwise.
    public func rememberedPrincipal(token: String) -> Principal? {
        sessions.principal(for: BearerToken.digest(token), now: clock.now().millis).0
    }

    /// Revokes the token; later requests with it are 401.
    public func revokeSession(token: String) async throws {
        let digest = BearerToken.digest(token)
        let now = clock.now().millis
        // Forgotten before and after the write; a read that overlaps it is not remembered.
        sessions.forget(digest)
        try await write { connection, _ in
            try connection.run("UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL", now, digest)
        }
        sessions.forget(digest)
    }

    static func insertSession(token: String, account: String, now: Date, expiresAt: Date, on connection: Connection) throws {
        try connection.run("""
            INSERT INTO sessions (token_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)
            """, BearerToken.digest(token), account, now.millis, expiresAt.millis)
    }

    /// Logins are unique regardless of case and surrounding spaces; a phone number is unique
    /// by its digits, however it is written (`+82 10-5555-0101` is `+821055550101`).
    static func loginKey(_ login: String) -> String {
        let trimmed = login.trimmingCharacters(in: .whitespacesAndNewlines)
        if let digits = phoneDigits(trimmed) { return "tel:" + digits }
        return trimmed.lowercased()
    }

    /// The digits of a phone number (a leading `+` kept), or nil when the text is not one.
    static func phoneDigits(_ text: String) -> String? {
        let allowed = Set("0123456789 -().+")
        guard text.allSatisfy({ allowed.contains($0) }) else { return nil }
        let digits = text.filter(\.isNumber)
        guard (6...20).contains(digits.count) else { return nil }
        return (text.hasPrefix("+") ? "+" : "") + digits
    }

    static func loadAccount(_ id: String, on connection: Connection) throws -> Account {
        guard let account = try connection.queryFirst("SELECT id, role, login, name, created_at FROM accounts WHERE id = ?",
                                                      id, row: { try Self.account($0) }) else {
            throw StampError.notFound("account")
        }
        return account
    }

    /// Reads `id, role, login, name, created_at` from columns 0–4.
    static func account(_ row: borrowing Row) throws -> Account {
        guard let role = Role(rawValue: try row.get(1, as: String.self)) else {
            throw StampError(.unavailable, "stored account has an unknown role")
        }
        return Account(id: try row.get(0), role: role, login: try row.get(2), name: try row.get(3),
                       createdAt: Date(millis: try row.get(4)))
    }
}

/// Valid sessions by token digest, so that authentication rarely reads the database. Only this
/// process revokes sessions, and it forgets them here when it does.
final class SessionCache: Sendable {
    private struct Entry {
        let principal: Principal
        let expiresAt: Int64
    }

    private struct State {
        var entries: [[UInt8]: Entry] = [:]
        /// Counts revocations: a read that began before one may have seen its session valid.
        var revocations: UInt64 = 0
    }

    private let state = Mutex(State())
    private let capacity: Int

    init(capacity: Int = 100_000) { self.capacity = capacity }

    /// The remembered principal, or nil and the revocation count to hand back to `remember`.
    func principal(for digest: [UInt8], now: Int64) -> (Principal?, UInt64) {
        state.withLock { state in
            guard let entry = state.entries[digest] else { return (nil, state.revocations) }
            guard entry.expiresAt > now else {
                state.entries[digest] = nil
                return (nil, state.revocations)
            }
            return (entry.principal, state.revocations)
        }
    }

    /// Remembers a session read from the database, unless a revocation happened since the read began.
    func remember(_ digest: [UInt8], _ principal: Principal, expiresAt: Int64, readSince revocations: UInt64) {
        state.withLock { state in
            guard state.revocations == revocations else { return }
            if state.entries.count >= capacity { state.entries.removeAll(keepingCapacity: true) }
            state.entries[digest] = Entry(principal: principal, expiresAt: expiresAt)
        }
    }

    func forget(_ digest: [UInt8]) {
        state.withLock { state in
            state.revocations &+= 1
            state.entries[digest] = nil
        }
    }
}

/// Counts failed sign-ins per login; after `limit` within `window`, the login waits out the window.
final class LoginThrottle: Sendable {
    private struct Entry {
        var failures: Int
        var windowStart: Date
    }

    private let entries = Mutex<[String: Entry]>([:])
    private let limit: Int
    private let window: TimeInterval

    init(limit: Int, window: TimeInterval) {
        self.limit = limit
        self.window = window
    }

    /// Seconds until the login may try again, or nil when it may try now.
    func secondsLocked(_ key: String, now: Date) -> Int? {
        entries.withLock { entries in
            guard let entry = entries[key], entry.failures >= limit else { return nil }
            let remaining = entry.windowStart.addingTimeInterval(window).timeIntervalSince(now)
            if remaining <= 0 {
                entries[key] = nil
                return nil
            }
            return Int(remaining.rounded(.up))
        }
    }

    func recordFailure(_ key: String, now: Date) {
        entries.withLock { entries in
            if entries.count > 100_000 {
                entries = entries.filter { now.timeIntervalSince($0.value.windowStart) < window }
            }
            if var entry = entries[key], now.timeIntervalSince(entry.windowStart) < window {
                entry.failures += 1
                entries[key] = entry
            } else {
                entries[key] = Entry(failures: 1, windowStart: now)
            }
        }
    }

    func recordSuccess(_ key: String) {
        _ = entries.withLock { $0.removeValue(forKey: key) }
    }
}
