// The members of a store: its owner, and the staff who joined it with an invitation code the
// owner made. Staff join with an account of their own (a store account, like the owner's):
// the password is theirs and never passes through the owner, one login serves a barista who
// works at two cafes, and removing them from a store takes the store away, not their account.
// Every check of who may do what at a store reads the membership in the transaction it guards,
// so a removed member's next call is refused, whatever was remembered.
import Crypto
import Foundation
import Storage

public struct Member: Codable, Sendable, Equatable {
    /// The member's account.
    public var id: String
    public var name: String
    public var login: String
    public var role: MemberRole
    public var addedAt: Date
    /// The later of their last decision, stamp or walk-in at this store and their last sign-in.
    public var lastActiveAt: Date?
}

/// A store the caller belongs to, and their role there.
public struct Membership: Codable, Sendable, Equatable {
    public var role: MemberRole
    public var store: Store
}

public struct MemberList: Codable, Sendable, Equatable {
    public var members: [Member]
    /// Invitations made and neither used nor expired.
    public var openInvitations: Int
}

/// A code the owner gives a barista, who joins the store with it from their own account.
public struct StaffInvitation: Codable, Sendable, Equatable {
    public var code: String
    public var storeId: String
    public var storeName: String
    public var expiresAt: Date
}

/// What one member did at a store within a period.
public struct MemberCounts: Codable, Sendable, Equatable {
    public var member: MemberRef
    public var approved: Int
    public var rejected: Int
    /// Stamps added by their approvals and direct stamps, less their corrections.
    public var stamps: Int
    public var rewardsRedeemed: Int
    public var walkIns: Int
}

/// The data of `member.joined` and `member.removed`.
public struct MemberChange: Codable, Sendable, Equatable {
    public var storeId: String
    public var member: Member
}

extension StampService {
    static let invitationLifetime: TimeInterval = 24 * 3_600
    /// The id that marks a decision the counter code made, not a member.
    static let counterCodeMember = MemberRef(id: "counter-code", name: "counter code")

    /// The stores the caller is a member of, with their role: what a new device picks from.
    public func myStores(_ principal: Principal) async throws -> [Membership] {
        let select = Self.storeSelect.replacingOccurrences(of: " FROM stores s", with: ", m.role FROM stores s")
        return try await read { connection in
            let rows = try await connection.query(select + """
                 JOIN store_members m ON m.store_id = s.id WHERE m.account_id = ? ORDER BY m.role, s.name, s.id LIMIT 200
                """, principal.id) { row -> (Store, MemberRole) in
                guard let role = MemberRole(rawValue: try row.get(Self.storeColumns)) else {
                    throw StampError(.unavailable, "stored membership has an unknown role")
                }
                return (try Self.storeRow(row), role)
            }
            let stores = try await Self.withMenus(rows.map(\.0), on: connection)
            return zip(stores, rows).map { Membership(role: $1.1, store: $0) }
        }
    }

    /// The store's members with their last activity, for its owner.
    public func members(_ principal: Principal, storeId: String) async throws -> MemberList {
        let now = clock.now()
        return try await read { connection in
            try await Self.requireOwner(principal, of: storeId, on: connection)
            let members = try await connection.query(Self.memberSelect + " WHERE m.store_id = ? ORDER BY m.role, m.added_at, a.id",
                                               storeId) { try Self.memberRow($0) }
            let open = try await connection.queryFirst(
                "SELECT count(*) FROM store_invitations WHERE store_id = ? AND expires_at > ?", storeId, now.millis) {
                try $0.get(0, as: Int.self)
            } ?? 0
            return MemberList(members: members, openInvitations: open)
        }
    }

    /// A new single-use invitation code for the store (owner only); it lasts a day.
    public func inviteStaff(_ principal: Principal, storeId: String) async throws -> StaffInvitation {
        let now = clock.now()
        let limits = settings.limits
        let code = Self.newInvitationCode()
        return try await write { connection, _ in
            try await Self.requireOwner(principal, of: storeId, on: connection, touching: now)
            guard let store = try await Self.loadStore(storeId, on: connection) else { throw StampError.notFound("store") }
            try await Self.requireRoomForStaff(storeId, limits: limits, on: connection)
            try await Self.countAction("invite:" + storeId, limit: limits.invitationsPerStorePerDay, window: Self.day,
                                 what: "\(limits.invitationsPerStorePerDay) invitations a day per store", now: now, on: connection)
            let expiresAt = now.addingTimeInterval(Self.invitationLifetime)
            try await connection.run("""
                INSERT INTO store_invitations (code_hash, store_id, created_at, expires_at) VALUES (?, ?, ?, ?)
                """, Self.invitationDigest(code), storeId, now.millis, expiresAt.millis)
            return StaffInvitation(code: Self.formatted(code), storeId: storeId, storeName: store.name, expiresAt: expiresAt)
        }
    }

    /// The caller joins the store whose invitation `code` is, as staff. Wrong codes are counted
    /// per account (10 an hour), though a code is 50 random bits.
    public func joinStore(_ principal: Principal, code: String) async throws -> Membership {
        guard principal.role == .owner else {
            throw StampError(.forbidden, "staff join with a store account: sign up on the store's page, then enter the code")
        }
        let code = try Self.invitationCode(code)
        let now = clock.now()
        let limits = settings.limits
        let outcome = try await write { connection, outbox -> Result<Membership, StampError> in
            let missScope = "invite-miss:" + principal.id
            if let wait = try await Self.secondsUntilAllowed(missScope, limit: limits.invitationMissesPerAccountPerHour,
                                                       window: Self.hour, now: now, on: connection) {
                throw StampError(.rateLimited, "too many wrong invitation codes; try again in \(wait) s", retryAfter: wait)
            }
            let digest = Self.invitationDigest(code)
            guard let storeId = try await connection.queryFirst(
                "SELECT store_id FROM store_invitations WHERE code_hash = ? AND expires_at > ?", digest, now.millis,
                row: { try $0.get(0, as: String.self) }) else {
                try await Self.recordAction(missScope, now: now, on: connection)
                return .failure(StampError(.unprocessable, "this invitation code is unknown, used or expired: ask the owner for a new one",
                                           field: "invitationCode"))
            }
            try await Self.claim("members:" + storeId, now: now, on: connection)
            if try await Self.memberRole(principal.id, of: storeId, on: connection) != nil {
                throw StampError(.conflict, "you are already a member of this store", field: "invitationCode")
            }
            try await Self.requireRoomForStaff(storeId, limits: limits, on: connection)
            try await connection.run("DELETE FROM store_invitations WHERE code_hash = ?", digest)
            try await connection.run("""
                INSERT INTO store_members (store_id, account_id, role, added_at) VALUES (?, ?, 'staff', ?)
                """, storeId, principal.id, now.millis)
            guard let store = try await Self.loadStore(storeId, on: connection) else { throw StampError.notFound("store") }
            let member = Member(id: principal.id, name: principal.account.name, login: principal.account.login, role: .staff,
                                addedAt: now, lastActiveAt: nil)
            try outbox.emit("member.joined", to: try await Self.memberIds(of: storeId, on: connection),
                            data: MemberChange(storeId: storeId, member: member), at: now)
            return .success(Membership(role: .staff, store: store))
        }
        return try outcome.get()
    }

    /// Removes a staff member (owner only): they are signed out on every device at once, their
    /// parked polls answered, so a counter tablet they signed in on is free again. What they did
    /// keeps their name.
    public func removeMember(_ principal: Principal, storeId: String, accountId: String) async throws {
        let now = clock.now()
        sessions.forget(account: accountId)
        let revoked = try await write { connection, outbox -> [[UInt8]] in
            try await Self.requireOwner(principal, of: storeId, on: connection, touching: now)
            try await Self.claim("members:" + storeId, now: now, on: connection)
            guard let member = try await connection.queryFirst(Self.memberSelect + " WHERE m.store_id = ? AND m.account_id = ?",
                                                         storeId, accountId, row: { try Self.memberRow($0) }) else {
                throw StampError.notFound("member")
            }
            guard member.role == .staff else { throw StampError(.conflict, "the owner cannot be removed from their store") }
            try await connection.run("DELETE FROM store_members WHERE store_id = ? AND account_id = ?", storeId, accountId)
            let digests = try await self.revokeSessions(of: accountId, except: nil, now: now.millis, on: connection)
            try outbox.emit("member.removed", to: try await Self.memberIds(of: storeId, on: connection),
                            data: MemberChange(storeId: storeId, member: member), at: now)
            return digests
        }
        sessions.forget(account: accountId)
        hub.revoke(account: accountId, sessions: Set(revoked))
    }

    /// What each member did at the store from `start` (inclusive) to `end`, for its owner.
    public func memberCounts(_ principal: Principal, storeId: String, from start: Date, to end: Date) async throws -> [MemberCounts] {
        guard end > start, end.timeIntervalSince(start) <= 31 * Self.day else {
            throw StampError.invalid("day", "the period must be one day to 31 days")
        }
        let (from, to) = (start.millis, end.millis)
        return try await read { connection in
            try await Self.requireOwner(principal, of: storeId, on: connection)
            var counts: [String: MemberCounts] = [:]
            func entry(_ id: String, _ name: String?) -> MemberCounts {
                counts[id] ?? MemberCounts(member: id == Self.counterCodeMember.id ? Self.counterCodeMember
                                           : MemberRef(id: id, name: name ?? "Unknown"),
                                           approved: 0, rejected: 0, stamps: 0, rewardsRedeemed: 0, walkIns: 0)
            }
            for (id, name, status, count) in try await connection.query("""
                SELECT r.decided_by, a.name, r.status, count(*) FROM requests r LEFT JOIN accounts a ON a.id = r.decided_by
                WHERE r.store_id = ? AND r.decided_at >= ? AND r.decided_at < ? AND r.decided_by IS NOT NULL
                GROUP BY r.decided_by, a.name, r.status
                """, storeId, from, to, row: {
                    (try $0.get(0, as: String.self), try $0.optional(1, as: String.self), try $0.get(2, as: String.self),
                     try $0.get(3, as: Int.self))
                }) {
                var item = entry(id, name)
                if status == RequestStatus.approved.rawValue { item.approved += count }
                if status == RequestStatus.rejected.rawValue { item.rejected += count }
                counts[id] = item
            }
            for (id, name, stamps, redeemed) in try await connection.query("""
                SELECT l.member_id, a.name,
                       coalesce(sum(CASE WHEN l.kind IN ('stamp_added', 'manual_stamp') THEN l.stamps_delta ELSE 0 END), 0),
                       coalesce(sum(CASE WHEN l.kind = 'reward_used' THEN 1 ELSE 0 END), 0)
                FROM ledger l LEFT JOIN accounts a ON a.id = l.member_id
                WHERE l.store_id = ? AND l.at >= ? AND l.at < ? AND l.member_id IS NOT NULL
                GROUP BY l.member_id, a.name
                """, storeId, from, to, row: {
                    (try $0.get(0, as: String.self), try $0.optional(1, as: String.self), try $0.get(2, as: Int.self),
                     try $0.get(3, as: Int.self))
                }) {
                var item = entry(id, name)
                item.stamps += stamps
                item.rewardsRedeemed += redeemed
                counts[id] = item
            }
            for (id, name, count) in try await connection.query("""
                SELECT c.added_by, a.name, count(*) FROM cards c JOIN accounts h ON h.id = c.customer_id
                LEFT JOIN accounts a ON a.id = c.added_by
                WHERE c.store_id = ? AND c.added_at >= ? AND c.added_at < ? AND h.walk_in = 1 AND c.added_by IS NOT NULL
                GROUP BY c.added_by, a.name
                """, storeId, from, to, row: {
                    (try $0.get(0, as: String.self), try $0.optional(1, as: String.self), try $0.get(2, as: Int.self))
                }) {
                var item = entry(id, name)
                item.walkIns += count
                counts[id] = item
            }
            return counts.values.sorted { ($0.member.name, $0.member.id) < ($1.member.name, $1.member.id) }
        }
    }

    // MARK: - Pieces

    /// The caller's role at the store; 404 when there is no such store, 403 when they are not
    /// a member. With `touching`, records the time as the member's last activity (to the minute).
    @discardableResult
    static func requireMember(_ principal: Principal, of storeId: String, on connection: any SQLSession,
                              touching now: Date? = nil) async throws -> MemberRole {
        guard let role = try await memberRole(principal.id, of: storeId, on: connection) else {
            guard try await connection.queryFirst("SELECT 1 FROM stores WHERE id = ?", storeId, row: { try $0.get(0, as: Int.self) }) != nil else {
                throw StampError.notFound("store")
            }
            throw StampError(.forbidden, "only the store's members may do this")
        }
        if let now { try await touchMember(principal.id, of: storeId, now: now, on: connection) }
        return role
    }

    /// Records a member's write as their last activity at the store, to the minute: a time less
    /// than a minute old is kept. A barista approving at the counter all morning would otherwise
    /// write the member row with every decision: on SQLite one more page to the WAL each time,
    /// and on PostgreSQL a row that every decision of that member, on every instance, updates,
    /// so that concurrent decisions conflicted on it and ran again (after a restart of the
    /// database, with the load's backlog, one ran out of retries). A removal at the same moment
    /// needs no conflict with it: a decision that read the membership before the removal
    /// committed is the same as one made just before it.
    static func touchMember(_ account: String, of storeId: String, now: Date, on connection: any SQLSession) async throws {
        try await connection.run("""
            UPDATE store_members SET last_active_at = ?
            WHERE store_id = ? AND account_id = ? AND (last_active_at IS NULL OR last_active_at <= ? OR last_active_at > ?)
            """, now.millis, storeId, account, now.millis - activityResolutionMillis, now.millis)
    }

    /// How stale a member's last activity may be before a write records it anew.
    static let activityResolutionMillis: Int64 = 60_000

    static func requireOwner(_ principal: Principal, of storeId: String, on connection: any SQLSession,
                             touching now: Date? = nil) async throws {
        guard try await requireMember(principal, of: storeId, on: connection, touching: now) == .owner else {
            throw StampError(.forbidden, "only the store's owner may do this")
        }
    }

    static func memberRole(_ account: String, of storeId: String, on connection: any SQLSession) async throws -> MemberRole? {
        try await connection.queryFirst("SELECT role FROM store_members WHERE store_id = ? AND account_id = ?", storeId, account) {
            MemberRole(rawValue: try $0.get(0, as: String.self))
        } ?? nil
    }

    /// Every member's account: the recipients of the store's events.
    static func memberIds(of storeId: String, on connection: any SQLSession) async throws -> [String] {
        try await connection.query("SELECT account_id FROM store_members WHERE store_id = ?", storeId) { try $0.get(0, as: String.self) }
    }

    static func requireRoomForStaff(_ storeId: String, limits: PartyLimits, on connection: any SQLSession) async throws {
        let staff = try await connection.queryFirst("SELECT count(*) FROM store_members WHERE store_id = ? AND role = 'staff'", storeId) {
            try $0.get(0, as: Int.self)
        } ?? 0
        if staff >= limits.staffPerStore {
            throw StampError(.conflict, "a store has at most \(limits.staffPerStore) staff: remove one first")
        }
    }

    static let memberSelect = """
        SELECT a.id, a.name, a.login, m.role, m.added_at, m.last_active_at,
               (SELECT max(created_at) FROM sessions WHERE account_id = a.id)
        FROM store_members m JOIN accounts a ON a.id = m.account_id
        """

    static func memberRow(_ row: borrowing Row) throws -> Member {
        guard let role = MemberRole(rawValue: try row.get(3)) else {
            throw StampError(.unavailable, "stored membership has an unknown role")
        }
        let active = [try row.optional(5, as: Int64.self), try row.optional(6, as: Int64.self)].compactMap { $0 }.max()
        return Member(id: try row.get(0), name: try row.get(1), login: try row.get(2), role: role,
                      addedAt: Date(millis: try row.get(4)), lastActiveAt: active.map(Date.init(millis:)))
    }

    /// Letters and digits that cannot be misread for each other (no 0/O, 1/I/L, U/V).
    static let invitationAlphabet = Array("ABCDEFGHJKMNPQRSTWXYZ23456789")
    static let invitationLength = 10

    static func newInvitationCode() -> String {
        var generator = SystemRandomNumberGenerator()
        return String((0..<invitationLength).map { _ in
            invitationAlphabet[Int(generator.next(upperBound: UInt8(invitationAlphabet.count)))]
        })
    }

    /// `ABCDE-FGHJK`, as the owner's page shows it.
    static func formatted(_ code: String) -> String {
        String(code.prefix(5)) + "-" + String(code.dropFirst(5))
    }

    /// A code as typed: case, spaces and dashes do not matter.
    static func invitationCode(_ text: String) throws -> String {
        let code = text.uppercased().filter { $0 != " " && $0 != "-" }
        guard code.count == invitationLength, code.allSatisfy(invitationAlphabet.contains) else {
            throw StampError.invalid("invitationCode", "the invitation code is the 10 letters and digits the owner gave you")
        }
        return code
    }

    static func invitationDigest(_ code: String) -> [UInt8] {
        Array(SHA256.hash(data: Array("invite:\(code)".utf8)))
    }
}
