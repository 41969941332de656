// Reading the event log by cursor, and pruning it past the retention window.
import Foundation
import SQLiteDB

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
    /// The caller's events after `cursor` (all retained ones when nil), oldest first.
    public func events(for account: String, after cursor: Int64?, limit: Int) async throws -> EventBatch {
        try await read { connection in
            let prunedThrough = try connection.queryFirst("SELECT pruned_through FROM event_retention") {
                try $0.get(0, as: Int64.self)
            } ?? 0
            // A cursor this log never issued (ahead of its newest id, e.g. from a restored backup)
            // is reset too: answering "nothing new" would hide the events that reuse those ids.
            let issuedThrough = try connection.queryFirst("SELECT seq FROM sqlite_sequence WHERE name = 'events'") {
                try $0.get(0, as: Int64.self)
            } ?? 0
            if let cursor, cursor < prunedThrough || cursor > issuedThrough {
                let newest = try connection.queryFirst("SELECT max(id) FROM events WHERE account_id = ?", account) {
                    try $0.optional(0, as: Int64.self)
                } ?? nil
                return EventBatch(events: [], cursor: max(prunedThrough, newest ?? 0, cursor > issuedThrough ? issuedThrough : 0),
                                  reset: true)
            }
            let events = try connection.query("""
                SELECT id, type, at, data FROM events WHERE account_id = ? AND id > ? ORDER BY id LIMIT ?
                """, account, cursor ?? 0, limit) { row in
                Event(id: try row.get(0), type: try row.get(1), at: Date(millis: try row.get(2)), data: try row.get(3))
            }
            // A first poll (no cursor) with nothing yet continues from the newest id issued, not
            // from 0: a later read from 0 would be older than any pruning and answer a reset.
            return EventBatch(events: events, cursor: events.last?.id ?? cursor ?? issuedThrough, reset: false)
        }
    }

    /// Tells the event hub what the log holds, so polls with an up-to-date cursor park without a read.
    /// Call once at start, before serving.
    public func prepareEventHub() async throws {
        let (newest, issued, pruned) = try await read { connection in
            let newest = try connection.query("SELECT account_id, max(id) FROM events GROUP BY account_id") {
                (try $0.get(0, as: String.self), try $0.get(1, as: Int64.self))
            }
            let issued = try connection.queryFirst("SELECT seq FROM sqlite_sequence WHERE name = 'events'") {
                try $0.get(0, as: Int64.self)
            } ?? 0
            let pruned = try connection.queryFirst("SELECT pruned_through FROM event_retention") {
                try $0.get(0, as: Int64.self)
            } ?? 0
            return (newest, issued, pruned)
        }
        hub.seed(newest: Dictionary(newest, uniquingKeysWith: max), issuedThrough: issued, prunedThrough: pruned)
    }

    /// Deletes up to `batch` events older than the retention window and moves the reset mark
    /// past them. It reads only the oldest `batch` rows by id (ids and times grow together), so
    /// it never scans the table; `pruneExpired` repeats it until nothing is left.
    @discardableResult
    public func pruneEvents(batch: Int = 5_000) async throws -> Int {
        let now = clock.now()
        let cutoff = now.addingTimeInterval(-settings.eventRetention).millis
        let removed: (count: Int, through: Int64) = try await write { connection, _ in
            guard let last = try connection.queryFirst("""
                SELECT max(id) FROM (SELECT id, at FROM events ORDER BY id LIMIT ?) WHERE at < ?
                """, batch, cutoff, row: { try $0.optional(0, as: Int64.self) }) ?? nil else { return (0, 0) }
            let removed = try connection.run("DELETE FROM events WHERE id <= ?", last)
            try connection.run("UPDATE event_retention SET pruned_through = max(pruned_through, ?)", last)
            return (removed, last)
        }
        if removed.through > 0 { hub.markPruned(through: removed.through) }
        return removed.count
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
        let sweeps: [(String, [any SQLBindable])] = [
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
            ("DELETE FROM member_codes WHERE code_hash IN (SELECT code_hash FROM member_codes WHERE expires_at < ? LIMIT ?)",
             [now, batch]),
            ("DELETE FROM rate_events WHERE rowid IN (SELECT rowid FROM rate_events WHERE at < ? LIMIT ?)", [dayAgo, batch]),
            ("""
             DELETE FROM request_counts WHERE (customer_id, store_id, hour) IN
                (SELECT customer_id, store_id, hour FROM request_counts WHERE hour < ? LIMIT ?)
             """, [now / 3_600_000, batch]),
        ]
        for (sql, parameters) in sweeps {
            while true {
                let removed = try await write { connection, _ in try connection.run(sql, parameters: parameters) }
                total += removed
                if removed < batch { break }
            }
        }
        return total
    }
}
