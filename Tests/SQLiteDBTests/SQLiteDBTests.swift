import Foundation
import Testing
@testable import SQLiteDB
import Storage

/// A fresh database file in its own temporary folder.
func temporaryDatabasePath() -> String {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("stampd-test-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    return folder.appendingPathComponent("test.sqlite").path
}

@Suite(.timeLimit(.minutes(1))) struct ConnectionTests {
    @Test func bindsAndReadsEveryStorageClass() throws {
        let db = try Connection(path: ":memory:")
        try db.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)")
        let none: String? = nil
        try db.run("INSERT INTO t VALUES (?, ?, ?, ?, ?)", Int64.max, 2.5, "héllo ☕", [UInt8]([0, 1, 255]), none)
        let row = try #require(try db.queryFirst("SELECT i, r, s, b, n FROM t") { row in
            (try row.get(0, as: Int64.self), try row.get(1, as: Double.self), try row.get(2, as: String.self),
             try row.get(3, as: [UInt8].self), try row.optional(4, as: String.self))
        })
        #expect(row.0 == Int64.max)
        #expect(row.1 == 2.5)
        #expect(row.2 == "héllo ☕")
        #expect(row.3 == [0, 1, 255])
        #expect(row.4 == nil)
    }

    @Test func readingNullAsARequiredValueIsAMismatch() throws {
        let db = try Connection(path: ":memory:")
        #expect {
            _ = try db.queryFirst("SELECT NULL") { try $0.get(0, as: Int.self) }
        } throws: { ($0 as? StorageError)?.kind == .mismatch }
    }

    @Test func readingTextAsAnIntegerIsAMismatch() throws {
        let db = try Connection(path: ":memory:")
        #expect {
            _ = try db.queryFirst("SELECT 'x'") { try $0.get(0, as: Int.self) }
        } throws: { ($0 as? StorageError)?.kind == .mismatch }
    }

    @Test func constraintViolationsAreCatchableByCode() throws {
        let db = try Connection(path: ":memory:")
        try db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL CHECK (v > 0))")
        try db.run("INSERT INTO t VALUES (?, ?)", "a", 1)
        do {
            try db.run("INSERT INTO t VALUES (?, ?)", "a", 2)
            Issue.record("a duplicate key was accepted")
        } catch let error as SQLiteError where error.code == .constraint {
            #expect(error.isUniqueViolation)
        }
        #expect { try db.run("INSERT INTO t VALUES (?, ?)", "b", 0) } throws: {
            guard let error = $0 as? SQLiteError else { return false }
            return error.code == .constraint && !error.isUniqueViolation
        }
    }

    @Test func syntaxErrorsCarryTheirSQL() throws {
        let db = try Connection(path: ":memory:")
        #expect { try db.run("SELEC 1") } throws: { ($0 as? SQLiteError)?.sql == "SELEC 1" }
    }

    @Test func aWrongParameterCountIsRefused() throws {
        let db = try Connection(path: ":memory:")
        #expect { try db.run("SELECT ?", 1, 2) } throws: { ($0 as? SQLiteError)?.code == .range }
    }

    @Test func aTransactionRollsBackWhenItsBodyThrows() throws {
        struct Boom: Error {}
        let db = try Connection(path: ":memory:")
        try db.execute("CREATE TABLE t (v INTEGER)")
        #expect(throws: Boom.self) {
            try db.transaction {
                try db.run("INSERT INTO t VALUES (1)")
                throw Boom()
            }
        }
        #expect(try db.queryFirst("SELECT count(*) FROM t") { try $0.get(0, as: Int.self) } == 0)
        #expect(!db.isInTransaction)
        try db.transaction { try db.run("INSERT INTO t VALUES (2)") }
        #expect(try db.queryFirst("SELECT count(*) FROM t") { try $0.get(0, as: Int.self) } == 1)
    }

    @Test func cachedStatementsAreReusedWithNewBindings() throws {
        let db = try Connection(path: ":memory:")
        for value in 1...3 {
            #expect(try db.queryFirst("SELECT ? * 2", value) { try $0.get(0, as: Int.self) } == value * 2)
        }
    }
}

@Suite(.timeLimit(.minutes(1))) struct DatabaseTests {
    @Test func opensInWALWithFullSyncAndForeignKeys() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        let settings = try await db.write { connection in
            (try await connection.queryFirst("PRAGMA journal_mode") { try $0.get(0, as: String.self) },
             try await connection.queryFirst("PRAGMA synchronous") { try $0.get(0, as: Int.self) },
             try await connection.queryFirst("PRAGMA foreign_keys") { try $0.get(0, as: Int.self) })
        }
        #expect(settings.0 == "wal")
        #expect(settings.1 == 2)  // FULL
        #expect(settings.2 == 1)
    }

    @Test func aWriteIsVisibleToReadersOnceItReturns() async throws {
        let db = try Database(path: temporaryDatabasePath(), readers: 2)
        defer { Task { await db.close() } }
        try await db.write { try await $0.executeAll("CREATE TABLE t (v INTEGER)") }
        for value in 1...20 {
            try await db.write { try await $0.run("INSERT INTO t VALUES (?)", value) }
            let count = try await db.read { try await $0.queryFirst("SELECT count(*) FROM t") { try $0.get(0, as: Int.self) } }
            #expect(count == value)
        }
    }

    /// The writer copies the log into the database once it has `checkpointPages`, after the
    /// batch (SQLite's own checkpoint inside COMMIT is off), and not before: the database
    /// file stays as it was while the log is shorter.
    @Test func theWriterCheckpointsOnceTheLogIsLongAndNotBefore() async throws {
        for (pages, copies) in [(16, true), (1_000_000, false)] {
            let path = temporaryDatabasePath()
            let db = try Database(path: path, checkpointPages: pages)
            try await db.write { try await $0.executeAll("CREATE TABLE t (b BLOB)") }
            let before = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
            for _ in 0..<12 {  // 12 × 16 KiB: about 50 pages
                try await db.write { try await $0.run("INSERT INTO t VALUES (?)", [UInt8](repeating: 7, count: 16_384)) }
            }
            let after = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
            if copies {
                // The writes since the last checkpoint may still be in the log only.
                #expect(after >= before + 6 * 16_384, "checkpointed: rows are in the database file (\(before) → \(after))")
            } else {
                #expect(after == before, "no checkpoint yet: the rows are only in the log")
            }
            let rows = try await db.read { try await $0.queryFirst("SELECT count(*) FROM t") { try $0.get(0, as: Int.self) } }
            #expect(rows == 12)
            await db.close()
        }
    }

    @Test func concurrentWritesThatFailUndoOnlyThemselves() async throws {
        struct Refused: Error {}
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        try await db.write { try await $0.executeAll("CREATE TABLE t (v INTEGER)") }
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for value in 0..<200 {
                group.addTask {
                    do {
                        try await db.write { connection in
                            try await connection.run("INSERT INTO t VALUES (?)", value)
                            if value % 3 == 0 { throw Refused() }
                        }
                        return true
                    } catch {
                        return false
                    }
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        let committed = outcomes.filter { $0 }.count
        let rows = try await db.read { try await $0.query("SELECT v FROM t") { try $0.get(0, as: Int.self) } }
        #expect(committed == 133)
        #expect(rows.count == committed)
        #expect(rows.allSatisfy { $0 % 3 != 0 })
    }

    @Test func aDatabaseThatCannotUseWALIsNotOpened() throws {
        // The unix-none VFS has no shared memory, so journal_mode stays "delete".
        let path = "file:" + temporaryDatabasePath() + "?vfs=unix-none"
        #expect(throws: SQLiteError.self) { _ = try Database(path: path) }
    }

    @Test func aWriteBodyCannotCommitOrUndoTheGroupsTransaction() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        try await db.write { try await $0.executeAll("CREATE TABLE t (v INTEGER)") }
        for statement in ["COMMIT", "ROLLBACK", "RELEASE unit", "ROLLBACK TO unit", "BEGIN", "SAVEPOINT other"] {
            await #expect(throws: SQLiteError.self, "\(statement)") {
                try await db.write { connection in
                    try await connection.run("INSERT INTO t VALUES (1)")
                    try await connection.executeAll(statement)
                }
            }
        }
        try await db.write { try await $0.run("INSERT INTO t VALUES (2)") }
        let rows = try await db.read { try await $0.query("SELECT v FROM t") { try $0.get(0, as: Int.self) } }
        #expect(rows == [2])
    }

    @Test func anInMemoryDatabaseWorksThroughItsWriter() async throws {
        let db = try Database(path: ":memory:")
        defer { Task { await db.close() } }
        try await db.write { try await $0.executeAll("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (7);") }
        #expect(try await db.read { try await $0.queryFirst("SELECT v FROM t") { try $0.get(0, as: Int.self) } } == 7)
    }
}

@Suite(.timeLimit(.minutes(1))) struct MigratorTests {
    func folder(_ files: [String: String]) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("stampd-migrations-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        for (name, sql) in files { try sql.write(to: url.appendingPathComponent(name), atomically: true, encoding: .utf8) }
        return url.path
    }

    let first = ["0001_people.sql": "CREATE TABLE people (name TEXT);",
                 "0002_pets.sql": "CREATE TABLE pets (name TEXT); INSERT INTO pets VALUES ('rex');"]

    @Test func aFreshDatabaseGetsEveryMigrationInOrder() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        let applied = try await db.migrate(folder: try folder(first))
        #expect(applied.map { $0.version } == [1, 2])
        let pets = try await db.read { try await $0.query("SELECT name FROM pets") { try $0.get(0, as: String.self) } }
        #expect(pets == ["rex"])
    }

    @Test func runningAgainChangesNothing() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        let path = try folder(first)
        try await db.migrate(folder: path)
        #expect(try await db.migrate(folder: path).isEmpty)
        let pets = try await db.read { try await $0.queryFirst("SELECT count(*) FROM pets") { try $0.get(0, as: Int.self) } }
        #expect(pets == 1)
    }

    @Test func aNewFileIsAppliedAfterTheOldOnes() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        try await db.migrate(folder: try folder(first))
        var more = first
        more["0003_toys.sql"] = "CREATE TABLE toys (name TEXT);"
        #expect(try await db.migrate(folder: try folder(more)).map { $0.version } == [3])
    }

    @Test func anEditedAppliedMigrationIsRefused() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        try await db.migrate(folder: try folder(first))
        var edited = first
        edited["0001_people.sql"] = "CREATE TABLE people (name TEXT, age INTEGER);"
        let error = await #expect(throws: MigrationError.self) { try await db.migrate(folder: try folder(edited)) }
        #expect(error?.description.contains("0001_people.sql was edited") == true)
    }

    @Test func aRemovedAppliedMigrationIsRefused() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        try await db.migrate(folder: try folder(first))
        let error = await #expect(throws: MigrationError.self) {
            try await db.migrate(folder: try folder(["0001_people.sql": first["0001_people.sql"]!]))
        }
        #expect(error?.description.contains("0002_pets.sql is missing") == true)
    }

    @Test func aMisnamedFileIsRefused() throws {
        #expect(throws: MigrationError.self) { try Migrator(directory: try folder(["1_bad.sql": "SELECT 1;"])) }
    }

    @Test func aFailingMigrationLeavesNoTrace() async throws {
        let db = try Database(path: temporaryDatabasePath())
        defer { Task { await db.close() } }
        let broken = ["0001_half.sql": "CREATE TABLE half (v INTEGER); INSERT INTO nowhere VALUES (1);"]
        await #expect(throws: SQLiteError.self) { try await db.migrate(folder: try folder(broken)) }
        let tables = try await db.read {
            try await $0.query("SELECT name FROM sqlite_master WHERE name = 'half'") { try $0.get(0, as: String.self) }
        }
        #expect(tables.isEmpty)
    }
}

extension SQLSession {
    /// Several statements at once, as migrations run them: only SQLite sessions here.
    func executeAll(_ sql: String) async throws {
        let connection = self as! Connection
        try connection.execute(sql)
    }
}

@Suite(.timeLimit(.minutes(1))) struct SyncTimingTests {
    /// Every connection opens through the timed VFS, and a commit with synchronous = FULL syncs the
    /// WAL through it: the disk's share of a commit is measured, not guessed.
    @Test func aCommitSyncsTheWALThroughTheTimedVFS() async throws {
        let path = temporaryDatabasePath()
        let database = try Database(path: path, readers: 1)
        let vfs = try #require(SyncMetrics.vfs)
        #expect(vfs == "stampd-timed")
        try await database.write { session in try await session.run("CREATE TABLE t (x INTEGER)") }
        let before = SyncMetrics.walSyncCount.load(ordering: .relaxed)
        for value in 0..<3 {
            try await database.write { session in try await session.run("INSERT INTO t VALUES (?)", value) }
        }
        #expect(SyncMetrics.walSyncCount.load(ordering: .relaxed) >= before + 3)
        let count = try await database.read { session in
            try await session.queryFirst("SELECT count(*) FROM t") { try $0.get(0, as: Int.self) }
        }
        #expect(count == 3)
        await database.close()
    }
}
