// The two engines' migrations must build one schema: the same tables, columns, keys and indexes
// (by name, with their columns and partial conditions), so that the shared SQL means the same.
import Foundation
import PostgresDB
import SQLiteDB
import Storage
import Testing

/// A schema reduced to what both engines can say the same way.
struct SchemaShape: Equatable, CustomStringConvertible {
    struct Table: Equatable {
        var columns: [String] = []          // "name type [not null]"
        var primaryKey: [String] = []
        var unique: [[String]] = []         // sorted
        var foreignKeys: [String] = []      // "cols -> table(cols) on delete …", sorted
        var indexes: [String: String] = [:] // name → "[unique ](cols)[ where …]"
    }
    var tables: [String: Table] = [:]

    var description: String {
        tables.keys.sorted().map { name in
            let t = tables[name]!
            return "\(name): \(t.columns) pk \(t.primaryKey) unique \(t.unique) fk \(t.foreignKeys) "
                + "indexes \(t.indexes.keys.sorted().map { "\($0) \(t.indexes[$0]!)" })"
        }.joined(separator: "\n")
    }

    /// Spaces, parentheses, casts and case removed, `= ANY (ARRAY[…])` read as `IN (…)`.
    static func condition(_ text: String) -> String {
        var text = text.lowercased()
        for cast in ["::text", "::bigint", "::integer"] { text = text.replacingOccurrences(of: cast, with: "") }
        text = text.replacingOccurrences(of: "= any (array[", with: "in (").replacingOccurrences(of: "])", with: ")")
        return text.filter { !" ()\n\t".contains($0) }
    }
}

@Suite(.timeLimit(.minutes(2))) struct SchemaTests {
    static let sqliteTypes = ["TEXT": "text", "INTEGER": "integer", "REAL": "real", "BLOB": "blob"]
    static let postgresTypes = ["text": "text", "bigint": "integer", "double precision": "real", "bytea": "blob"]

    func sqliteShape() async throws -> SchemaShape {
        let database = try Database(path: temporaryDatabasePath())
        try await database.migrate(folder: TestServer.migrations + "/sqlite")
        defer { Task { await database.close() } }
        return try await database.read { session in
            var shape = SchemaShape()
            let tables = try await session.query("""
                SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations'
                """) { try $0.get(0, as: String.self) }
            for table in tables {
                var t = SchemaShape.Table()
                let columns = try await session.query("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?) ORDER BY cid", table) {
                    (try $0.get(0, as: String.self), try $0.get(1, as: String.self), try $0.get(2, as: Int.self), try $0.get(3, as: Int.self))
                }
                t.columns = columns.map { "\($0.0) \(Self.sqliteTypes[$0.1] ?? $0.1)" + ($0.2 == 1 || $0.3 > 0 ? " not null" : "") }
                t.primaryKey = columns.filter { $0.3 > 0 }.sorted { $0.3 < $1.3 }.map(\.0)
                let indexes = try await session.query("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?)", table) {
                    (try $0.get(0, as: String.self), try $0.get(1, as: Int.self), try $0.get(2, as: String.self))
                }
                for (name, unique, origin) in indexes where origin != "pk" {
                    let keys = try await session.query("""
                        SELECT name, "desc", coll FROM pragma_index_xinfo(?) WHERE key = 1 ORDER BY seqno
                        """, name) { row -> String in
                        let column = try row.optional(0, as: String.self) ?? "<expression>"
                        let folded = try row.get(2, as: String.self).uppercased() == "NOCASE" ? "lower(\(column))" : column
                        return folded + (try row.get(1, as: Int.self) == 1 ? " desc" : "")
                    }
                    if origin == "u" { t.unique.append(keys); continue }
                    let sql = try await session.queryFirst("SELECT sql FROM sqlite_master WHERE name = ?", name) {
                        try $0.get(0, as: String.self)
                    } ?? ""
                    let columns = keys
                    let condition = sql.range(of: " WHERE ", options: .caseInsensitive).map {
                        " where " + SchemaShape.condition(String(sql[$0.upperBound...]))
                    } ?? ""
                    t.indexes[name] = (unique == 1 ? "unique " : "") + "(\(columns.joined(separator: ", ")))" + condition
                }
                t.unique.sort { $0.joined(separator: ",") < $1.joined(separator: ",") }
                let keys = try await session.query("""
                    SELECT id, "table", "from", "to", on_delete FROM pragma_foreign_key_list(?) ORDER BY id, seq
                    """, table) {
                    (try $0.get(0, as: Int.self), try $0.get(1, as: String.self), try $0.get(2, as: String.self),
                     try $0.get(3, as: String.self), try $0.get(4, as: String.self))
                }
                t.foreignKeys = Dictionary(grouping: keys, by: \.0).values.map { parts in
                    "\(parts.map(\.2).joined(separator: ",")) -> \(parts[0].1)(\(parts.map(\.3).joined(separator: ","))) on delete \(parts[0].4.lowercased())"
                }.sorted()
                shape.tables[table] = t
            }
            return shape
        }
    }

    func postgresShape() async throws -> SchemaShape {
        let server = try await TestServer.start()
        defer { Task { try await server.stop() } }
        let schema = server.databasePath
        return try await server.database.read { session in
            var shape = SchemaShape()
            let tables = try await session.query("""
                SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name != 'schema_migrations'
                """, schema) { try $0.get(0, as: String.self) }
            for table in tables {
                var t = SchemaShape.Table()
                let relation = "\(schema).\(table)"
                t.columns = try await session.query("""
                    SELECT column_name, data_type, is_nullable FROM information_schema.columns
                    WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position
                    """, schema, table) {
                    "\(try $0.get(0, as: String.self)) \(Self.postgresTypes[try $0.get(1, as: String.self)] ?? "?")"
                        + (try $0.get(2, as: String.self) == "NO" ? " not null" : "")
                }
                let constraints = try await session.query("""
                    SELECT c.contype::text,
                           (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(n, ord)
                              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n),
                           coalesce((SELECT relname FROM pg_class WHERE oid = c.confrelid), ''),
                           coalesce((SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY k(n, ord)
                              JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n), ''),
                           c.confdeltype::text
                    FROM pg_constraint c WHERE c.conrelid = ?::regclass
                    """, relation) {
                    (try $0.get(0, as: String.self), try $0.get(1, as: String.self), try $0.get(2, as: String.self),
                     try $0.get(3, as: String.self), try $0.get(4, as: String.self))
                }
                let actions = ["a": "no action", "r": "restrict", "c": "cascade", "n": "set null", "d": "set default"]
                for (kind, columns, target, targetColumns, onDelete) in constraints {
                    switch kind {
                    case "p": t.primaryKey = columns.split(separator: ",").map(String.init)
                    case "u": t.unique.append(columns.split(separator: ",").map(String.init))
                    case "f": t.foreignKeys.append("\(columns) -> \(target)(\(targetColumns)) on delete \(actions[onDelete] ?? onDelete)")
                    default: break
                    }
                }
                t.unique.sort { $0.joined(separator: ",") < $1.joined(separator: ",") }
                t.foreignKeys.sort()
                let indexes = try await session.query("""
                    SELECT i.relname, x.indisunique::int, pg_get_indexdef(x.indexrelid),
                           coalesce(pg_get_expr(x.indpred, x.indrelid), '')
                    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                    WHERE x.indrelid = ?::regclass
                      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
                    """, relation) {
                    (try $0.get(0, as: String.self), try $0.get(1, as: Int.self), try $0.get(2, as: String.self), try $0.get(3, as: String.self))
                }
                for (name, unique, definition, predicate) in indexes {
                    // "CREATE INDEX n ON s.t USING btree (a, b DESC) WHERE …": the part in parentheses after btree.
                    let afterUsing = definition.range(of: "USING btree (").map { String(definition[$0.upperBound...]) } ?? ""
                    var depth = 1
                    let keys = String(afterUsing.prefix { character in
                        if character == "(" { depth += 1 }
                        if character == ")" { depth -= 1 }
                        return depth > 0
                    })
                    let columns = keys.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
                    t.indexes[name] = (unique == 1 ? "unique " : "") + "(\(columns.joined(separator: ", ")))"
                        + (predicate.isEmpty ? "" : " where " + SchemaShape.condition(predicate))
                }
                shape.tables[table] = t
            }
            return shape
        }
    }

    @Test(.enabled(if: TestStorage.isPostgres, "needs STAMPD_TEST_POSTGRES_URL"))
    func bothEnginesMigrateToTheSameSchema() async throws {
        let sqlite = try await sqliteShape()
        let postgres = try await postgresShape()
        #expect(Set(sqlite.tables.keys) == Set(postgres.tables.keys))
        for name in sqlite.tables.keys.sorted() {
            let a = sqlite.tables[name], b = postgres.tables[name]
            #expect(a?.columns == b?.columns, "\(name) columns")
            #expect(a?.primaryKey == b?.primaryKey, "\(name) primary key")
            #expect(a?.unique == b?.unique, "\(name) unique")
            #expect(a?.foreignKeys == b?.foreignKeys, "\(name) foreign keys")
            #expect(a?.indexes == b?.indexes, "\(name) indexes")
        }
        // The hot queries' indexes are among them.
        for index in ["requests_pending", "cards_store", "requests_store", "ledger_card", "rate_events_scope", "sessions_account"] {
            #expect(postgres.tables.values.contains { $0.indexes[index] != nil }, "\(index)")
        }
    }
}
