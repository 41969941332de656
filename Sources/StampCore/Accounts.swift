// Accounts, sign-in sessions and bearer-token authentication.
import Foundation
import Storage
import Synchronization

public struct SignedIn: Codable, Sendable {
    public var account: Account
    public var token: String
    public var expiresAt: Date
}

extension StampService {
    /// Signs up. A customer who signs up with a phone number and the claim code a store gave them
    /// (`claimCode`) gets the card that store holds for the number, in the same transaction.
    public func createAccount(role: Role, login: String, password: String, name: String,
                              claimCode: String? = nil, clientAddress: String = "local") async throws -> SignedIn {
        let login = try Login.validate(login)
        let name = try Validate.text(name, field: "name", max: 100)
        try Validate.newPassword(password)
        let key = Login.key(login)
        let legacyKey = Login.legacyKey(login)
        let code = try claimCode.flatMap { $0.isEmpty ? nil : try Self.claimCodeDigits($0, field: "claimCode") }
        if code != nil {
            guard role == .customer, key.hasPrefix("tel:") else {
                throw StampError.invalid("claimCode", "a claim code is for a customer signing up with the phone number it was given for")
            }
        }
        let now = clock.now()
        try signIns.countSignUp(address: clientAddress, now: now)
        let hash = try await checkingPassword(from: clientAddress, loginKey: nil, now: now) {
            (try await hasher.hash(password, for: clientAddress), SignInGuard.Outcome.notChecked)
        }
        let account = Account(id: Identifier.make("acc"), role: role, login: login, name: name, createdAt: now)
        let token = BearerToken.generate()
        let expiresAt = now.addingTimeInterval(settings.tokenLifetime)
        let limits = settings.limits
        let outcome = try await write { connection, outbox -> Result<Account, StampError> in
            if try await connection.queryFirst("SELECT 1 FROM accounts WHERE login_key IN (?, ?)", key, legacyKey,
                                         row: { try $0.get(0, as: Int.self) }) != nil {
                throw StampError(.conflict, "the login is taken", field: "login")
            }
            var claimedStore: String?
            if let code {
                switch try await Self.matchClaimCode(code, phoneKey: key, field: "claimCode", limits: limits, now: now, on: connection) {
                case .failure(let refusal): return .failure(refusal)
                case .success(let store): claimedStore = store
                }
            }
            do {
                try await connection.run("""
                    INSERT INTO accounts (id, role, login, login_key, name, password_hash, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """, account.id, role.rawValue, login, key, name, hash, now.millis)
            } catch let error as any StorageFault where error.isUniqueViolation {
                throw StampError(.conflict, "the login is taken", field: "login")
            }
            try await Self.insertSession(token: token, account: account.id, now: now, expiresAt: expiresAt, on: connection)
            if let claimedStore {
                _ = try await Self.moveHeldCard(store: claimedStore, phoneKey: key, into: account.id, now: now,
                                          on: connection, outbox: &outbox)
            }
            return .success(account)
        }
        return SignedIn(account: try outcome.get(), token: token, expiresAt: expiresAt)
    }

    public func createSession(login: String, password: String, clientAddress: String = "local") async throws -> SignedIn {
        // Checked before anything is hashed or used as a key; no account has a longer one.
        guard login.unicodeScalars.count <= 100 else { throw StampError.invalid("login", "login must have at most 100 characters") }
        guard password.unicodeScalars.count <= 200 else {
            throw StampError.invalid("password", "password must have at most 200 characters")
        }
        let key = Login.key(login)
        let legacyKey = Login.legacyKey(login)
        let now = clock.now()
        let account = try await checkingPassword(from: clientAddress, loginKey: key, now: now) { () -> (Account?, SignInGuard.Outcome) in
            let found = try await read { connection in
                try await connection.queryFirst("""
                    SELECT id, role, login, name, created_at, password_hash FROM accounts
                    WHERE login_key IN (?, ?) AND walk_in = 0 ORDER BY login_key = ? DESC LIMIT 1
                    """, key, legacyKey, key) { row in (try Self.account(row), try row.get(5, as: String.self)) }
            }
            guard let (account, hash) = found else {
                // The same time as a real check, so the answer's timing does not tell the login is unknown.
                try await hasher.verifyDecoy(password, for: clientAddress)
                return (nil, .wrongPassword)
            }
            return try await hasher.verify(password, against: hash, for: clientAddress) ? (account, .rightPassword) : (nil, .wrongPassword)
        }
        guard let account else { throw StampError(.unauthenticated, "the login or the password is wrong") }
        let token = BearerToken.generate()
        let expiresAt = now.addingTimeInterval(settings.tokenLifetime)
        try await write { connection, _ in
            try await Self.insertSession(token: token, account: account.id, now: now, expiresAt: expiresAt, on: connection)
        }
        return SignedIn(account: account, token: token, expiresAt: expiresAt)
    }

    /// Runs a password check reserved with the sign-in guard first (so concurrent tries count
    /// before any hashing), refused while its (address, login) pair is locked, and records its
    /// verdict in the pair's lock before the answer leaves, so every instance honours it.
    private func checkingPassword<T: Sendable>(from address: String, loginKey: String?, now: Date,
                                               _ check: @Sendable () async throws -> (T, SignInGuard.Outcome)) async throws -> T {
        let pair = loginKey.map { LoginLock.pair(address: address, loginKey: $0) }
        let reservation = try signIns.reserve(address: address, pair: pair, now: now)
        defer { signIns.finish(reservation) }
        let settings = self.settings
        var lock: LoginLock?
        if let pair {
            lock = try await read { try await LoginLock.load(pair, on: $0) }
            if let refusal = lock?.refusal(running: reservation.running, now: now, settings: settings) { throw refusal }
        }
        let (value, outcome) = try await check()
        guard let pair else { return value }
        switch outcome {
        case .wrongPassword:
            // Read again in the write: another check of the pair (here or on another instance)
            // may have counted since.
            let at = clock.now()
            try await write { session, _ in
                let stored = try await LoginLock.load(pair, on: session) ?? LoginLock(windowStart: at)
                try await stored.failed(now: at, settings: settings).save(pair, now: at, on: session)
            }
        case .rightPassword where lock != nil:
            try await write { session, _ in try await session.run("DELETE FROM login_locks WHERE pair = ?", pair) }
        case .rightPassword, .notChecked:
            break
        }
        return value
    }

    /// The account behind a bearer token that is neither expired nor revoked. Valid sessions are
    /// remembered, so most requests authenticate without a database read.
    public func authenticate(token: String) async throws -> Principal {
        let digest = BearerToken.digest(token)
        let now = clock.now().millis
        let (remembered, revocations) = sessions.principal(for: digest, now: now)
        if let remembered { return remembered }
        let found = try await read { connection in
            try await connection.queryFirst("""
                SELECT a.id, a.role, a.login, a.name, a.created_at, s.expires_at
                FROM sessions s JOIN accounts a ON a.id = s.account_id
                WHERE s.token_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ?
                """, digest, now) { (try Self.account($0), try $0.get(5, as: Int64.self)) }
        }
        guard let (account, expiresAt) = found else {
            throw StampError(.unauthenticated, "the token is unknown, expired or revoked")
        }
        let principal = Principal(account: account, session: digest)
        sessions.remember(digest, principal, expiresAt: expiresAt, readSince: revocations)
        return principal
    }

    /// The account behind a token this process has already checked, without a read; nil otherwise.
    public func rememberedPrincipal(token: String) -> Principal? {
        sessions.principal(for: BearerToken.digest(token), now: clock.now().millis).0
    }

    /// Revokes the token; later requests with it are 401, and its parked polls answer 401 now.
    public func revokeSession(token: String) async throws {
        let digest = BearerToken.digest(token)
        let now = clock.now().millis
        // Forgotten before and after the write; a read that overlaps it is not remembered.
        sessions.forget(digest)
        let account = try await write { connection, _ -> String? in
            let account = try await connection.queryFirst("SELECT account_id FROM sessions WHERE token_hash = ?", digest) {
                try $0.get(0, as: String.self)
            }
            try await connection.run("UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL", now, digest)
            if let account { try await self.announceRevocation(of: account, sessions: [digest], on: connection) }
            return account
        }
        sessions.forget(digest)
        if let account { hub.revoke(account: account, sessions: [digest]) }
    }

    /// Signs the caller out everywhere: every session of the account ends, with its parked polls.
    public func revokeAllSessions(_ principal: Principal) async throws {
        try await revokeSessions(of: principal.id, except: nil)
    }

    /// Changes the password (the current one proves it is the owner); every other session ends.
    public func changePassword(_ principal: Principal, current: String, new password: String,
                               clientAddress: String = "local") async throws {
        guard current.unicodeScalars.count <= 200 else {
            throw StampError.invalid("currentPassword", "currentPassword must have at most 200 characters")
        }
        try Validate.newPassword(password, field: "newPassword")
        try await requireOwnPassword(principal, current, field: "currentPassword", clientAddress: clientAddress)
        let hash = try await hasher.hash(password, for: clientAddress)
        try await write { connection, _ in
            try await connection.run("UPDATE accounts SET password_hash = ? WHERE id = ?", hash, principal.id)
        }
        try await revokeSessions(of: principal.id, except: principal.session)
    }

    /// Deletes the caller's account, with their password. Personal fields are erased and every
    /// session ends; a customer's cards, ledger and requests stay, under "Deleted customer", so
    /// the stores' totals stay true. An owner who still has stores is refused.
    public func deleteAccount(_ principal: Principal, password: String, clientAddress: String = "local") async throws {
        guard password.unicodeScalars.count <= 200 else { throw StampError.invalid("password", "password must have at most 200 characters") }
        try await requireOwnPassword(principal, password, field: "password", clientAddress: clientAddress)
        let now = clock.now()
        try await write { connection, outbox in
            // Requests made meanwhile, and stores created meanwhile, are seen (or this runs again).
            try await Self.claim("requests:" + principal.id, now: now, on: connection)
            try await Self.claim("stores:" + principal.id, now: now, on: connection)
            if try await connection.queryFirst("SELECT 1 FROM stores WHERE owner_id = ?", principal.id, row: { try $0.get(0, as: Int.self) }) != nil {
                throw StampError(.conflict, "close your stores before deleting the account")
            }
            let erased = "deleted:" + principal.id
            try await connection.run("""
                UPDATE accounts SET login = ?, login_key = ?, password_hash = '!',
                    name = CASE role WHEN 'owner' THEN 'Former member' ELSE 'Deleted customer' END WHERE id = ?
                """, erased, erased, principal.id)
            try await connection.run("UPDATE sessions SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL", now.millis, principal.id)
            try await connection.run("DELETE FROM member_codes WHERE account_id = ?", principal.id)
            try await connection.run("DELETE FROM idempotency_keys WHERE account_id = ?", principal.id)
            try await connection.run("DELETE FROM events WHERE account_id = ?", principal.id)
            // Requests still waiting are withdrawn (nobody is there to be stamped), and their stores
            // are told, as for any cancellation.
            let waiting = try await connection.query(Self.requestSelect + " WHERE r.customer_id = ? AND r.status = 'pending'",
                                               principal.id) { try Self.requestRow($0) }
            for (request, _) in waiting {
                let cancelled = try await Self.decide(request, .cancelled, reason: nil, by: nil, now: now, on: connection)
                try outbox.emit("request.cancelled", to: try await Self.memberIds(of: request.storeId, on: connection),
                                data: RequestChange(request: cancelled), at: now)
            }
            // Staff of other owners' stores leave them; what they did there keeps their name.
            try await connection.run("DELETE FROM store_members WHERE account_id = ? AND role = 'staff'", principal.id)
            try await self.announceRevocation(of: principal.id, sessions: nil, on: connection)
        }
        sessions.forget(account: principal.id)
        hub.revoke(account: principal.id, sessions: nil)
    }

    /// Proves the caller knows the account's password (403 naming `field` when not), paced as a
    /// sign-in of this login from this address.
    private func requireOwnPassword(_ principal: Principal, _ password: String, field: String,
                                    clientAddress: String) async throws {
        let stored = try await read { connection in
            try await connection.queryFirst("SELECT password_hash FROM accounts WHERE id = ?", principal.id) { try $0.get(0, as: String.self) }
        }
        let right = try await checkingPassword(from: clientAddress, loginKey: Login.key(principal.account.login),
                                               now: clock.now()) { () -> (Bool, SignInGuard.Outcome) in
            guard let stored, try await hasher.verify(password, against: stored, for: clientAddress) else { return (false, .wrongPassword) }
            return (true, .rightPassword)
        }
        guard right else { throw StampError(.forbidden, "the \(field == "password" ? "password" : "current password") is wrong", field: field) }
    }

    private func revokeSessions(of account: String, except kept: [UInt8]?) async throws {
        let now = clock.now().millis
        sessions.forget(account: account)
        let revoked = try await write { connection, _ in
            try await self.revokeSessions(of: account, except: kept, now: now, on: connection)
        }
        sessions.forget(account: account)
        hub.revoke(account: account, sessions: Set(revoked))
    }

    /// Revokes every live session of `account` but `kept` in the caller's transaction and tells
    /// the other instances; returns the digests, for the caller to forget and to answer their
    /// parked polls after the commit.
    func revokeSessions(of account: String, except kept: [UInt8]?, now: Int64,
                        on connection: any SQLSession) async throws -> [[UInt8]] {
        let digests = try await connection.query("SELECT token_hash FROM sessions WHERE account_id = ? AND revoked_at IS NULL",
                                           account) { try $0.get(0, as: [UInt8].self) }.filter { $0 != kept }
        try await connection.run(SQL(
            sqlite: "UPDATE sessions SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL AND token_hash IS NOT ?",
            postgres: "UPDATE sessions SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL AND token_hash IS DISTINCT FROM ?"),
            now, account, kept ?? [])
        try await announceRevocation(of: account, sessions: digests, on: connection)
        return digests
    }

    static func insertSession(token: String, account: String, now: Date, expiresAt: Date, on connection: any SQLSession) async throws {
        try await connection.run("""
            INSERT INTO sessions (token_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)
            """, BearerToken.digest(token), account, now.millis, expiresAt.millis)
    }

    static func loadAccount(_ id: String, on connection: any SQLSession) async throws -> Account {
        guard let account = try await connection.queryFirst("SELECT id, role, login, name, created_at FROM accounts WHERE id = ?",
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
        /// While another process's revocations may go unheard, nothing is remembered.
        var suspended = false
        /// Counts revocations: a read that began before one may have seen its session valid.
        var revocations: UInt64 = 0
    }

    private let state = Mutex(State())
    private let capacity: Int

    init(capacity: Int = 100_000) { self.capacity = capacity }

    /// The remembered principal, or nil and the revocation count to hand back to `remember`.
    func principal(for digest: [UInt8], now: Int64) -> (Principal?, UInt64) {
        state.withLock { state in
            guard !state.suspended, let entry = state.entries[digest] else { return (nil, state.revocations) }
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
            guard state.revocations == revocations, !state.suspended else { return }
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

    /// Forgets every session; while `suspend`, remembers none (another process's revocations
    /// may go unheard), until called again with false.
    func forgetAll(suspend: Bool) {
        state.withLock { state in
            state.revocations &+= 1
            state.entries.removeAll()
            state.suspended = suspend
        }
    }

    /// Forgets every remembered session of `account` (rare: sign-out everywhere, a new password).
    func forget(account: String) {
        state.withLock { state in
            state.revocations &+= 1
            state.entries = state.entries.filter { $0.value.principal.id != account }
        }
    }
}
