// Undo at the counter: a member reverses an approval or a direct stamp within minutes, by a
// correcting `reversal` ledger row (nothing is deleted, so the card still equals its ledger),
// and a store blocks a customer from asking there.
import Foundation
import Storage

/// A change a member reversed: the card after it and the correcting ledger entry; the request,
/// for an approval.
public struct Reversal: Codable, Sendable, Equatable {
    public var request: StampRequest?
    public var card: Card
    public var entry: LedgerEntry
}

/// A customer a store refuses requests from.
public struct BlockedCustomer: Codable, Sendable, Equatable {
    public var customerId: String
    public var name: String
    public var blockedAt: Date
    public var blockedBy: MemberRef?
}

extension StampService {
    /// How long after a change a member may still reverse it.
    public static let undoWindow: TimeInterval = 5 * 60

    /// Reverses an approval made within `undoWindow`: the stamps (or the used reward) it moved go
    /// back, by one reversal entry. 409 when it is not an approval, was reversed, is too old, or
    /// the card no longer holds what it added (a reward it completed was used since).
    public func undoApproval(_ principal: Principal, requestId: String) async throws -> Reversal {
        let now = clock.now()
        return try await write { connection, outbox in
            guard let (request, _) = try await Self.loadRequest(requestId, on: connection) else { throw StampError.notFound("request") }
            guard try await Self.memberRole(principal.id, of: request.storeId, on: connection) != nil else {
                if request.customerId == principal.id { throw StampError(.forbidden, "only the store's members undo a decision") }
                throw StampError.notFound("request")
            }
            try await Self.requireMember(principal, of: request.storeId, on: connection, touching: now)
            guard request.status == .approved, request.reversedAt == nil else {
                throw StampError.conflict(request.reversedAt == nil ? "only an approval can be undone" : "the approval was undone already",
                                          current: request, as: "request")
            }
            guard let decided = request.decidedAt, now.timeIntervalSince(decided) <= Self.undoWindow else {
                throw StampError.conflict("an approval can be undone for \(Int(Self.undoWindow / 60)) minutes", current: request, as: "request")
            }
            let moved = try await connection.query("""
                SELECT id, stamps_delta, rewards_delta FROM ledger
                WHERE customer_id = ? AND store_id = ? AND request_id = ? AND kind <> 'reversal' ORDER BY id
                """, request.customerId, request.storeId, request.id) {
                (try $0.get(0, as: Int64.self), try $0.get(1, as: Int.self), try $0.get(2, as: Int.self))
            }
            guard let first = moved.first, let card = try await Self.loadCard(customer: request.customerId, store: request.storeId,
                                                                            on: connection) else {
                throw StampError(.conflict, "the approval moved nothing to undo")
            }
            let (after, entry) = try await Self.reverse(card, stamps: -moved.map(\.1).reduce(0, +), rewards: -moved.map(\.2).reduce(0, +),
                                                  entry: first.0, request: request.id, by: principal, now: now, on: connection)
            let changed = try await connection.run("""
                UPDATE requests SET reversed_at = ?, reversed_by = ? WHERE id = ? AND reversed_at IS NULL
                """, now.millis, principal.id, request.id)
            guard changed == 1 else { throw StampError(.conflict, "the approval was undone already") }
            var reversed = request
            reversed.reversedAt = now
            reversed.reversedBy = principal.member
            reversed.customerCard = try await Self.customerCard(request.customerId, at: request.storeId, on: connection)
            let reversal = Reversal(request: reversed, card: after, entry: entry)
            try outbox.emit("request.reversed", to: [request.customerId] + (try await Self.memberIds(of: request.storeId, on: connection)),
                            data: reversal, at: now)
            return reversal
        }
    }

    /// Reverses a direct stamp (or correction) made within `undoWindow`, by a reversal entry.
    public func undoStamp(_ principal: Principal, storeId: String, entryId: Int64) async throws -> Reversal {
        let now = clock.now()
        return try await write { connection, outbox in
            try await Self.requireMember(principal, of: storeId, on: connection, touching: now)
            guard let (customer, kind, stamps, at) = try await connection.queryFirst("""
                SELECT customer_id, kind, stamps_delta, at FROM ledger WHERE id = ? AND store_id = ?
                """, entryId, storeId, row: {
                    (try $0.get(0, as: String.self), try $0.get(1, as: String.self), try $0.get(2, as: Int.self), try $0.get(3, as: Int64.self))
                }), kind == LedgerKind.manualStamp.rawValue else {
                throw StampError(.notFound, "no direct stamp of this store has that entry id", field: "entryId")
            }
            if try await connection.queryFirst("SELECT 1 FROM ledger WHERE reverses = ?", entryId, row: { try $0.get(0, as: Int.self) }) != nil {
                throw StampError(.conflict, "this stamp was undone already")
            }
            guard now.millis - at <= Int64(Self.undoWindow * 1000) else {
                throw StampError(.conflict, "a direct stamp can be undone for \(Int(Self.undoWindow / 60)) minutes")
            }
            guard let card = try await Self.loadCard(customer: customer, store: storeId, on: connection) else {
                throw StampError.notFound("card")
            }
            let (after, entry) = try await Self.reverse(card, stamps: -stamps, rewards: 0, entry: entryId, request: nil,
                                                  by: principal, now: now, on: connection)
            let reversal = Reversal(request: nil, card: after, entry: entry)
            if try await !Self.isHeld(customer, on: connection) {
                try outbox.emit("card.updated", to: [customer], data: CardChange(card: after, reason: "reversed", stamps: entry.stampsDelta),
                                at: now)
            }
            try outbox.emit("stamp.reversed", to: try await Self.memberIds(of: storeId, on: connection), data: reversal, at: now)
            return reversal
        }
    }

    /// Writes the reversal of `entry` that moves the card by (stamps, rewards); when the stamps
    /// to take back were turned into a reward meanwhile, that reward turns back into stamps.
    static func reverse(_ card: Card, stamps: Int, rewards: Int, entry: Int64, request: String?, by principal: Principal,
                        now: Date, on connection: any SQLSession) async throws -> (Card, LedgerEntry) {
        var target = (stamps: card.stamps + stamps, rewards: card.rewards + rewards)
        while target.stamps < 0 && target.rewards > 0 {
            target.stamps += card.stampsPerReward
            target.rewards -= 1
        }
        guard target.stamps >= 0, target.rewards >= 0 else {
            throw StampError(.conflict, "the card no longer holds what this added (a reward it completed was used): correct it by hand")
        }
        let delta = (stamps: target.stamps - card.stamps, rewards: target.rewards - card.rewards)
        let id = try await addLedger(.reversal, card: card, stamps: delta.stamps, rewards: delta.rewards, request: request,
                                     member: principal.id, reverses: entry, at: now, on: connection)
        var after = card
        after.rewards = target.rewards
        after.stamps = 0
        // Stamps beyond a full set (the rule was lowered since) convert as any change does.
        after = try await convertAndSave(after, adding: target.stamps, member: principal.id, now: now, on: connection)
        return (after, LedgerEntry(id: id, kind: .reversal, stampsDelta: delta.stamps, rewardsDelta: delta.rewards,
                                   requestId: request, at: now, member: principal.member, reverses: entry))
    }

    // MARK: - Blocking

    /// The store refuses requests from the customer (owner only); they keep their card.
    public func block(_ principal: Principal, storeId: String, customerId: String) async throws -> BlockedCustomer {
        let now = clock.now()
        let limit = settings.limits.storeChangesPerHour
        return try await write { connection, _ in
            try await Self.requireOwner(principal, of: storeId, on: connection, touching: now)
            try await Self.countStoreChange(storeId, limit: limit, now: now, on: connection)
            // Only someone who has a card here or asked here: no probing of other accounts.
            guard let name = try await connection.queryFirst("""
                SELECT a.name FROM accounts a WHERE a.id = ? AND (
                    EXISTS (SELECT 1 FROM cards c WHERE c.customer_id = a.id AND c.store_id = ?)
                    OR EXISTS (SELECT 1 FROM requests r WHERE r.customer_id = a.id AND r.store_id = ?))
                """, customerId, storeId, storeId, row: { try $0.get(0, as: String.self) }) else {
                throw StampError.notFound("customer")
            }
            try await connection.run("""
                INSERT INTO store_blocks (store_id, customer_id, blocked_at, blocked_by) VALUES (?, ?, ?, ?)
                ON CONFLICT (store_id, customer_id) DO NOTHING
                """, storeId, customerId, now.millis, principal.id)
            return try await Self.blocked(storeId, customer: customerId, on: connection)
                ?? BlockedCustomer(customerId: customerId, name: name, blockedAt: now, blockedBy: principal.member)
        }
    }

    public func unblock(_ principal: Principal, storeId: String, customerId: String) async throws {
        let now = clock.now()
        let limit = settings.limits.storeChangesPerHour
        try await write { connection, _ in
            try await Self.requireOwner(principal, of: storeId, on: connection, touching: now)
            try await Self.countStoreChange(storeId, limit: limit, now: now, on: connection)
            let removed = try await connection.run("DELETE FROM store_blocks WHERE store_id = ? AND customer_id = ?", storeId, customerId)
            if removed == 0 { throw StampError.notFound("blocked customer") }
        }
    }

    public func blockedCustomers(_ principal: Principal, storeId: String) async throws -> [BlockedCustomer] {
        try await read { connection in
            try await Self.requireOwner(principal, of: storeId, on: connection)
            return try await connection.query(Self.blockSelect + " WHERE b.store_id = ? ORDER BY b.blocked_at DESC LIMIT 500", storeId) {
                try Self.blockRow($0)
            }
        }
    }

    /// Blocking and unblocking are changes of the store: they share its hourly allowance.
    static func countStoreChange(_ storeId: String, limit: Int, now: Date, on connection: any SQLSession) async throws {
        try await countAction("store-change:" + storeId, limit: limit, window: hour,
                              what: "\(limit) changes an hour per store", now: now, on: connection)
    }

    static let blockSelect = """
        SELECT b.customer_id, a.name, b.blocked_at, b.blocked_by, m.name
        FROM store_blocks b JOIN accounts a ON a.id = b.customer_id LEFT JOIN accounts m ON m.id = b.blocked_by
        """

    static func blocked(_ storeId: String, customer: String, on connection: any SQLSession) async throws -> BlockedCustomer? {
        try await connection.queryFirst(blockSelect + " WHERE b.store_id = ? AND b.customer_id = ?", storeId, customer) {
            try blockRow($0)
        }
    }

    static func blockRow(_ row: borrowing Row) throws -> BlockedCustomer {
        BlockedCustomer(customerId: try row.get(0), name: try row.get(1), blockedAt: Date(millis: try row.get(2)),
                        blockedBy: memberRef(try row.optional(3), name: try row.optional(4)))
    }
}
