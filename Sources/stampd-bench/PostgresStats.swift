// What a PostgreSQL cluster counted during a phase: statements (pg_stat_statements, when the
// cluster preloads it), transactions (pg_stat_database) and WAL writes and syncs (pg_stat_wal),
// read with psql before and after the phase. The views are read as JSON rows, so their columns
// may differ between versions.
import Foundation

/// The PostgreSQL cluster behind one stampd: the postmaster's pid for CPU, a superuser URL of
/// stampd's database and psql for the statistics views. Any of them may be missing.
struct DatabaseWatch: Sendable {
    var postmaster: Int32?
    var statsURL: String?
    var psql: String

    /// A snapshot of the views, or nil without a URL or when psql fails (logged).
    func snapshot() -> PostgresSnapshot? {
        guard let statsURL else { return nil }
        return PostgresSnapshot.read(psql: psql, url: statsURL)
    }
}

struct PostgresSnapshot {
    struct Statement {
        var calls: Double
        var milliseconds: Double
        var rows: Double
        var text: String
    }

    /// By queryid: the statements of every role but the one reading (stampd's, not ours).
    var statements: [String: Statement] = [:]
    /// Whether pg_stat_statements answered (it needs shared_preload_libraries).
    var hasStatements = false
    /// pg_stat_database's row of this database and pg_stat_wal's row, numeric columns only.
    var database: [String: Double] = [:]
    var wal: [String: Double] = [:]

    static let queries = [
        """
        SELECT 's', json_build_object('id', queryid::text, 'calls', calls, 'ms', total_exec_time, 'rows', rows,
                                      'q', left(regexp_replace(query, '\\s+', ' ', 'g'), 200))
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        """,
        "SELECT 'd', row_to_json(d) FROM pg_stat_database d WHERE datname = current_database()",
        "SELECT 'w', row_to_json(w) FROM pg_stat_wal w",
    ]

    static func read(psql: String, url: String) -> PostgresSnapshot? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: psql)
        process.arguments = ["-X", "-q", "-A", "-t", "-F", "\t", "-d", url] + queries.flatMap { ["-c", $0] }
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        do {
            try process.run()
        } catch {
            log("postgres stats: cannot run \(psql): \(error)")
            return nil
        }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let errorText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        var snapshot = PostgresSnapshot()
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "\t", maxSplits: 1)
            guard parts.count == 2,
                  let object = try? JSONSerialization.jsonObject(with: Data(parts[1].utf8)) as? [String: Any] else { continue }
            switch parts[0] {
            case "s":
                guard let id = object["id"] as? String else { continue }
                snapshot.hasStatements = true
                snapshot.statements[id] = Statement(calls: number(object["calls"]) ?? 0, milliseconds: number(object["ms"]) ?? 0,
                                                    rows: number(object["rows"]) ?? 0, text: object["q"] as? String ?? "?")
            case "d": snapshot.database = object.compactMapValues { number($0) }
            case "w": snapshot.wal = object.compactMapValues { number($0) }
            default: continue
            }
        }
        if snapshot.database.isEmpty {
            log("postgres stats: psql gave no pg_stat_database row (exit \(process.terminationStatus)): \(errorText.prefix(300))")
            return nil
        }
        if !snapshot.hasStatements && !errorText.isEmpty {
            log("postgres stats: no pg_stat_statements: \(errorText.split(separator: "\n").first ?? "")")
        }
        return snapshot
    }

    private static func number(_ value: Any?) -> Double? {
        switch value {
        case let value as Double: return value
        case let value as Int: return Double(value)
        case let value as NSNumber: return value.doubleValue
        case let value as String: return Double(value)
        default: return nil
        }
    }

    /// Records what happened between `earlier` and this snapshot, per `unit` (a flow, a request),
    /// under `prefix.pg.*`, and logs the statements by how often each ran per unit.
    func record(since earlier: PostgresSnapshot, units: Int, unit: String, prefix: String, label: String,
                into results: some ResultSink) {
        let per = Double(max(units, 1))
        func delta(_ now: [String: Double], _ before: [String: Double], _ key: String) -> Double? {
            guard let a = now[key], let b = before[key] else { return nil }
            return a - b
        }
        func put(_ key: String, _ value: Double?) {
            if let value { results.set("\(prefix).pg.\(key)", value) }
        }
        let commits = delta(database, earlier.database, "xact_commit")
        let rollbacks = delta(database, earlier.database, "xact_rollback")
        put("xact_commit_per", commits.map { $0 / per })
        put("xact_rollback_per", rollbacks.map { $0 / per })
        put("deadlocks", delta(database, earlier.database, "deadlocks"))
        put("blks_read_per", delta(database, earlier.database, "blks_read").map { $0 / per })
        put("blks_hit_per", delta(database, earlier.database, "blks_hit").map { $0 / per })
        put("tup_inserted_per", delta(database, earlier.database, "tup_inserted").map { $0 / per })
        put("tup_updated_per", delta(database, earlier.database, "tup_updated").map { $0 / per })
        let walRecords = delta(wal, earlier.wal, "wal_records")
        let walBytes = delta(wal, earlier.wal, "wal_bytes")
        let walSyncs = delta(wal, earlier.wal, "wal_sync")
        let walSyncMs = delta(wal, earlier.wal, "wal_sync_time")
        let walWrites = delta(wal, earlier.wal, "wal_write")
        put("wal_records_per", walRecords.map { $0 / per })
        put("wal_bytes_per", walBytes.map { $0 / per })
        put("wal_writes_per", walWrites.map { $0 / per })
        put("wal_syncs_per", walSyncs.map { $0 / per })
        put("wal_syncs", walSyncs)
        if let walSyncs, let walSyncMs, walSyncs > 0 { put("wal_sync_ms_each", walSyncMs / walSyncs) }
        var summary = String(format: "%@: PostgreSQL per %@ (pg_stat_database, pg_stat_wal; flushed about once a second): ",
                             label, unit)
        summary += String(format: "%.2f commits, %.3f rollbacks, %.1f WAL records, %.0f WAL bytes, %.3f WAL syncs",
                          (commits ?? .nan) / per, (rollbacks ?? .nan) / per, (walRecords ?? .nan) / per,
                          (walBytes ?? .nan) / per, (walSyncs ?? .nan) / per)
        if let walSyncs, let walSyncMs, walSyncs > 0 { summary += String(format: " (%.2f ms each)", walSyncMs / walSyncs) }
        log(summary)

        guard hasStatements, earlier.hasStatements else { return }
        var ran: [(Statement, Double, Double)] = []  // (statement, calls, ms)
        for (id, now) in statements {
            let before = earlier.statements[id]
            let calls = now.calls - (before?.calls ?? 0)
            guard calls > 0 else { continue }
            ran.append((now, calls, now.milliseconds - (before?.milliseconds ?? 0)))
        }
        let total = ran.reduce(0) { $0 + $1.1 }
        func calls(_ prefix: String) -> Double {
            ran.filter { $0.0.text.uppercased().hasPrefix(prefix) }.reduce(0) { $0 + $1.1 }
        }
        let begins = calls("BEGIN"), committed = calls("COMMIT"), rolledBack = calls("ROLLBACK")
        let executed = ran.reduce(0) { $0 + $1.2 }
        put("statements_per", total / per)
        put("data_statements_per", (total - begins - committed - rolledBack) / per)
        put("write_transactions_per", begins / per)
        put("write_commits_per", committed / per)
        // A write whose body or COMMIT failed (a serialization failure, a deadlock) was begun and
        // not committed: pg_stat_statements counts statements that completed.
        put("write_aborts_per", (begins - committed) / per)
        put("write_aborts", begins - committed)
        put("exec_us_per", executed * 1000 / per)
        log(String(format: "%@: PostgreSQL per %@ (pg_stat_statements): %.2f statements, %.2f of them data statements; "
                   + "%.2f write transactions begun, %.2f committed (%.0f not committed in all: retried conflicts); "
                   + "%.0f µs of statement execution", label, unit, total / per, (total - begins - committed - rolledBack) / per,
                   begins / per, committed / per, begins - committed, executed * 1000 / per))
        for (statement, count, ms) in ran.sorted(by: { $0.1 > $1.1 }).prefix(25) {
            log(String(format: "%@:   %6.3f per %@, %7.1f µs each: %@", label, count / per, unit, ms * 1000 / max(count, 1),
                       String(statement.text.prefix(150))))
        }
    }
}
