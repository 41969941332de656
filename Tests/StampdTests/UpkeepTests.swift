// Upkeep that must keep up with load and stay off other writes' way: pruning, sweeping what
// expired, converting cards in batches, and the indexes the hot queries need.
import Foundation
import SQLiteDB
import Storage
@testable import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct UpkeepTests {
    @Test func pruningRemovesEveryExpiredEventEvenWhenTheyArriveFasterThanABatchPerRound() async throws {
        let server = try await TestServer.start { _, settings in settings.eventRetention = 60 }
        let old = server.clock.now().millis - 120_000
        // 30,000 events past retention: six batches, about 50 s of writes at 600/s. The old
        // pace (one 10,000-row batch every 10 minutes) removed 17 a second.
        try await server.database.write { connection in
            try await connection.run("""
                INSERT INTO events (account_id, seq, type, at, data)
                WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 29999)
                SELECT 'acc_' || (i % 50), i / 50 + 1, 'test', ?, '{}' FROM n
                """, old)
            try await connection.run("INSERT INTO events (account_id, seq, type, at, data) VALUES ('acc_new', 1, 'test', ?, '{}')",
                                     server.clock.now().millis)
        }
        let removed = try await server.service.pruneExpired()
        #expect(removed >= 30_000)
        let left = try await server.database.read { connection in
            try await connection.queryFirst("SELECT count(*) FROM events") { try $0.get(0, as: Int.self) }
        }
        #expect(left == 1)
        try await server.stop()
    }

    @Test func expiredSessionsCodesAndCountsAreDeleted() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let customer = try await server.signUp("customer")
        _ = try await server.askForStamps(customer, store: store)
        let client = try await server.connect()
        _ = try await client.request("POST", "/v1/stores/\(store)/customers", token: owner.token, json: ["phone": "+1 555 010 2222"])
        _ = try await client.request("POST", "/v1/me/member-code", token: customer.token)
        #expect(try await client.request("DELETE", "/v1/sessions/current", token: customer.token).status == 204)
        client.close()
        server.clock.advance(by: 40 * 86_400)
        _ = try await server.service.pruneExpired()
        let counts = try await server.database.read { connection in
            var counts: [Int] = []
            for table in ["sessions", "claim_codes", "member_codes", "rate_events", "idempotency_keys", "request_counts"] {
                counts.append(try await connection.queryFirst("SELECT count(*) FROM \(table)") { try $0.get(0, as: Int.self) } ?? -1)
            }
            return counts
        }
        #expect(counts == [0, 0, 0, 0, 0, 0])
        try await server.stop()
    }

    @Test func loweringStampsPerRewardConvertsEveryCardInBatchesOfTheirOwn() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner, ["stampsPerReward": 10])
        let cards = StampService.conversionBatch * 2 + 17
        let now = server.clock.now().millis
        // One statement per table (the rows are the test's own, written as literals): a round
        // trip per row would take seconds on a busy machine.
        let indices = 0..<cards
        try await server.database.write { connection in
            try await connection.run(SQL("""
                INSERT INTO accounts (id, role, login, login_key, name, password_hash, created_at) VALUES
                """ + indices.map { "('acc_c\($0)', 'customer', 'c\($0)', 'c\($0)', 'C', '!', \(now))" }.joined(separator: ",")))
            try await connection.run(SQL("""
                INSERT INTO cards (customer_id, store_id, stamps, rewards, updated_at) VALUES
                """ + indices.map { "('acc_c\($0)', '\(store)', 7, 0, \(now))" }.joined(separator: ",")))
            try await connection.run(SQL("""
                INSERT INTO ledger (customer_id, store_id, kind, stamps_delta, rewards_delta, at) VALUES
                """ + indices.map { "('acc_c\($0)', '\(store)', 'manual_stamp', 7, 0, \(now))" }.joined(separator: ",")))
        }
        let client = try await server.connect()
        let patched = try await client.request("PATCH", "/v1/stores/\(store)", token: owner.token, json: ["stampsPerReward": 3])
        #expect(patched.status == 200)
        let (unconverted, mismatched, events) = try await server.database.read { connection in
            (try await connection.queryFirst("SELECT count(*) FROM cards WHERE store_id = ? AND stamps >= 3", store) { try $0.get(0, as: Int.self) },
             try await connection.queryFirst(SQL(sqlite: """
                SELECT count(*) FROM cards c WHERE c.store_id = ? AND (c.stamps, c.rewards) IS NOT
                    (SELECT sum(stamps_delta), sum(rewards_delta) FROM ledger l WHERE l.customer_id = c.customer_id AND l.store_id = c.store_id)
                """, postgres: """
                SELECT count(*) FROM cards c WHERE c.store_id = ? AND (
                    c.stamps IS DISTINCT FROM (SELECT sum(stamps_delta) FROM ledger l WHERE l.customer_id = c.customer_id AND l.store_id = c.store_id)
                    OR c.rewards IS DISTINCT FROM (SELECT sum(rewards_delta) FROM ledger l WHERE l.customer_id = c.customer_id AND l.store_id = c.store_id))
                """), store) { try $0.get(0, as: Int.self) },
             try await connection.queryFirst("SELECT count(*) FROM events WHERE type = 'card.updated'") { try $0.get(0, as: Int.self) })
        }
        #expect(unconverted == 0)
        #expect(mismatched == 0)
        #expect(events == cards)
        // A batch converts at most its limit.
        let partial = try await server.database.write { connection in
            try await connection.run("UPDATE cards SET stamps = stamps + 3 WHERE store_id = ?", store)
            var outbox = Outbox()
            return try await StampService.convertExcessStamps(of: store, limit: 5, now: Date(), on: connection, outbox: &outbox)
        }
        #expect(partial == 5)
        #expect(try await server.service.convertPendingCards() == cards - 5)
        client.close()
        try await server.stop()
    }

    /// The plans of the queries that used to scan: each must search an index. (PostgreSQL is
    /// told not to scan where it can search, since its empty test tables would make a scan the
    /// cheaper plan; what matters is that an index serves the query. On empty tables it may
    /// serve a store's pending list from either index on the store, `a|b` below.)
    @Test func theHotQueriesSearchTheirIndexes() async throws {
        let server = try await TestServer.start()
        let pending = " WHERE r.store_id = ? AND r.status = 'pending' ORDER BY r.created_at DESC, r.id DESC LIMIT ? OFFSET ?"
        let plans: [(String, SQL, [any SQLBindable])] = [
            ("requests_pending|requests_store",
             SQL(sqlite: StampService.requestSelect.replacingOccurrences(of: "FROM requests r", with: "FROM requests r INDEXED BY requests_pending") + pending,
                 postgres: StampService.requestSelect + pending), ["s", 50, 0]),
            ("cards_store", SQL(StampService.cardSelect + " WHERE c.store_id = ? AND c.stamps >= s.stamps_per_reward LIMIT ?"), ["s", 200]),
            ("cards_store", "SELECT a.id FROM cards c JOIN accounts a ON a.id = c.customer_id WHERE c.store_id = ? AND a.name LIKE ?",
             ["s", "%a%"]),
            ("request_counts_hour", "DELETE FROM request_counts WHERE hour < ?", [0]),
            ("requests_pending", """
             SELECT count(*) FROM requests WHERE customer_id = ? AND store_id = ? AND status = 'pending' AND expires_at > ?
             """, ["c", "s", 0]),
            ("rate_events_scope", "SELECT count(*), min(at) FROM rate_events WHERE scope = ? AND at > ?", ["x", 0]),
            ("claim_codes_phone", "SELECT store_id FROM claim_codes WHERE phone_key = ? AND expires_at > ?", ["tel:1", 0]),
            ("events_account_id_seq_key", "SELECT seq, type, at, data FROM events WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?",
             ["a", 0, 100]),
        ]
        for (index, sql, parameters) in plans {
            let plan: [String]
            if TestStorage.isPostgres {
                plan = try await server.database.write { session in
                    try await session.run("SET LOCAL enable_seqscan = off")
                    return try await session.query(SQL("EXPLAIN " + sql.postgres), parameters: parameters) { try $0.get(0, as: String.self) }
                }
                let names = index.split(separator: "|")
                #expect(plan.contains { line in names.contains { line.contains("using \($0) ") || line.contains("on \($0)") } },
                        "\(sql.postgres): \(plan)")
            } else {
                let name = index == "events_account_id_seq_key" ? "sqlite_autoindex_events_1" : String(index.split(separator: "|")[0])
                plan = try await server.database.read { connection in
                    try await connection.query(SQL("EXPLAIN QUERY PLAN " + sql.sqlite), parameters: parameters) { try $0.get(3, as: String.self) }
                }
                #expect(plan.contains { $0.contains("USING INDEX \(name)") || $0.contains("USING COVERING INDEX \(name)") },
                        "\(sql.sqlite): \(plan)")
            }
        }
        try await server.stop()
    }
}
