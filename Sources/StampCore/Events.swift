// Reading the event log by cursor, and pruning it past the retention window.
import Foundation
import Storage

public struct EventBatch: Sendable {
    public var events: [Event]
    /// What to send as `after` next.
    public var cursor: Int64
    /// The cursor was older than the retention window: the client reloads its state.
    public var reset: Bool
    public init(events: [Event], cursor: Int64, reset: Bool) {
        self.events = events
        self.cursor = cursor
        self.reset = reset
    }
}

extension StampService {
    /// The caller's events after `cursor` (all retained ones when nil), oldest first. Positions
    /// count each account's own events, so the cursor is a position in the caller's stream.
    public func events(for account: String, after cursor: Int64?, limit: Int) async throws -> EventBatch {
        let epoch = hub.epoch
        let hub = self.hub
        return try await read { session in
            // The newest position is the newest event's, or the pruned mark when all were pruned.
            let (newest, prunedThrough) = try await session.queryFirst("""
                SELECT coalesce((SELECT max(seq) FROM events WHERE account_id = ?), 0),
                       coalesce((SELECT pruned_through FROM event_positions WHERE account_id = ?), 0)
                """, account, account) { (try $0.get(0, as: Int64.self), try $0.get(1, as: Int64.self)) } ?? (0, 0)
            let issued = max(newest, prunedThrough)
            hub.learn(account: account, newest: issued, since: epoch)
            // A cursor below the pruned mark may have missed events; one beyond the newest position
            // was never issued (a restored backup, another server's cursor): answering "nothing new"
            // would hide the events that reuse those positions. Both reset: the client reloads.
            if let cursor, cursor < prunedThrough || cursor > issued {
                return EventBatch(events: [], cursor: issued, reset: true)
            }
            let events = try await session.query("""
                SELECT seq, type, at, data FROM events WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?
                """, account, cursor ?? 0, limit) { row in
                Event(id: try row.get(0), type: try row.get(1), at: Date(millis: try row.get(2)), data: try row.get(3))
            }
            return EventBatch(events: events, cursor: events.last?.id ?? cursor ?? issued, reset: false)
        }
    }

    /// Tells the event hub the newest position of every account, so that polls with an
    /// up-to-date cursor park without a read. Call once at start, before serving.
    public func prepareEventHub() async throws {
        // A shared database has writers elsewhere: the hub learns accounts from reads and
        // notifications instead, once those flow (InstanceFeed).
        guard !database.isShared else {
            hub.notificationsStopped()
            sessions.forgetAll(suspend: true)
            return
        }
        let newest = try await read { session in
            try await session.query("""
                SELECT account_id, max(seq) FROM events GROUP BY account_id
                UNION ALL SELECT account_id, pruned_through FROM event_positions
                """) { (try $0.get(0, as: String.self), try $0.get(1, as: Int64.self)) }
        }
        hub.seed(newest: Dictionary(newest, uniquingKeysWith: max))
    }

    /// Deletes up to `batch` events older than the retention window and moves each recipient's
    /// pruned mark past its removed events. It reads only the oldest `batch` rows by id (ids and
    /// times grow together), so it never scans the table; `pruneExpired` repeats it until nothing
    /// is left. An account's ids grow with its positions, so "every id up to the last" removes
    /// a prefix of each account's stream.
    @discardableResult
    public func pruneEvents(batch: Int = 5_000) async throws -> Int {
        let now = clock.now()
        let cutoff = now.addingTimeInterval(-settings.eventRetention).millis
        return try await write { session, _ in
            guard let last = try await session.queryFirst("""
                SELECT max(id) FROM (SELECT id, at FROM events ORDER BY id LIMIT ?) AS oldest WHERE at < ?
                """, batch, cutoff, row: { try $0.optional(0, as: Int64.self) }) ?? nil else { return 0 }
            try await session.run("""
                INSERT INTO event_positions (account_id, pruned_through)
                SELECT account_id, max(seq) FROM events WHERE id <= ? GROUP BY account_id
                ON CONFLICT (account_id) DO UPDATE SET pruned_through = excluded.pruned_through
                WHERE excluded.pruned_through > event_positions.pruned_through
                """, last)
            return try await session.run("DELETE FROM events WHERE id <= ?", last)
        }
    }

    /// Everything past its time, each kind in batches of its own transaction so that other
    /// writes go between them: events past retention, idempotency keys past their window,
    /// sessions that expired or were revoked a day ago, claim and member codes that expired,
    /// counted actions older than a day. Returns how many rows went.
    @discardableResult
    public func pruneExpired(batch: Int = 5_000) async throws -> Int {
        var total = 0
        while true {
            let removed = try await pruneEvents(batch: batch)
            total += removed
            if removed == 0 { break }
        }
        let now = clock.now().millis
        let keysCutoff = now - Int64(settings.idempotencyWindow * 1000)
        let dayAgo = now - 86_400_000
        let sweeps: [(SQL, [any SQLBindable])] = [
            ("""
             DELETE FROM idempotency_keys WHERE (account_id, key) IN
                (SELECT account_id, key FROM idempotency_keys WHERE created_at < ? LIMIT ?)
             """,
             [keysCutoff, batch]),
            ("DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions WHERE expires_at < ? LIMIT ?)", [now, batch]),
            ("""
             DELETE FROM sessions WHERE token_hash IN
                (SELECT token_hash FROM sessions WHERE revoked_at IS NOT NULL AND revoked_at < ? LIMIT ?)
             """, [dayAgo, batch]),
            ("""
             DELETE FROM claim_codes WHERE (store_id, phone_key) IN
                (SELECT store_id, phone_key FROM claim_codes WHERE expires_at < ? LIMIT ?)
             """, [now, batch]),
            ("DELETE FROM scope_claims WHERE scope IN (SELECT scope FROM scope_claims WHERE at < ? LIMIT ?)", [dayAgo, batch]),
            // A lock ends within the longest lock of its last failure, and stops doubling after as
            // long again.
            ("DELETE FROM login_locks WHERE pair IN (SELECT pair FROM login_locks WHERE updated_at < ? LIMIT ?)",
             [now - Int64(2 * settings.loginLockCeiling * 1000), batch]),
            ("""
             DELETE FROM store_invitations WHERE code_hash IN
                (SELECT code_hash FROM store_invitations WHERE expires_at < ? LIMIT ?)
             """, [now, batch]),
            ("DELETE FROM member_codes WHERE code_hash IN (SELECT code_hash FROM member_codes WHERE expires_at < ? LIMIT ?)",
             [now, batch]),
            (SQL(sqlite: "DELETE FROM rate_events WHERE rowid IN (SELECT rowid FROM rate_events WHERE at < ? LIMIT ?)",
                 postgres: "DELETE FROM rate_events WHERE ctid IN (SELECT ctid FROM rate_events WHERE at < ? LIMIT ?)"),
             [dayAgo, batch]),
            ("""
             DELETE FROM request_counts WHERE (customer_id, store_id, hour) IN
                (SELECT customer_id, store_id, hour FROM request_counts WHERE hour < ? LIMIT ?)
             """, [now / 3_600_000, batch]),
        ]
        for (sql, parameters) in sweeps {
            while true {
                let removed = try await write { session, _ in try await session.run(sql, parameters: parameters) }
                total += removed
                if removed < batch { break }
            }
        }
        return total
    }
}
