// The PostgreSQL engine's own rules that need no server: its URL, placeholder numbering,
// statement splitting, and what it does when the database does not answer.
import Foundation
@testable import PostgresDB
import Storage
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2))) struct PostgresEngineTests {
    @Test func aPostgresURLCarriesTheConnectionAndItsOptions() throws {
        let configuration = try PostgresConfiguration(url: "postgresql://stamp%40d:p%3Ass@db.example:6543/cafe?sslmode=require&search_path=s1")
        #expect(configuration.host == "db.example")
        #expect(configuration.port == 6543)
        #expect(configuration.username == "stamp@d")
        #expect(configuration.password == "p:ss")
        #expect(configuration.database == "cafe")
        #expect(configuration.tls == .require)
        #expect(configuration.schema == "s1")
        #expect(!configuration.location.contains("p:ss"))
        #expect(try PostgresConfiguration(url: "postgres://u@h/d").port == 5432)
        for bad in ["postgres://h/d", "postgres://u@h", "postgres://u@h/d?sslmode=maybe", "mysql://u@h/d"] {
            #expect(throws: PostgresConfigurationError.self, "\(bad)") { try PostgresConfiguration(url: bad) }
        }
    }

    @Test func questionMarksBecomeNumberedParametersOutsideQuotesAndComments() {
        #expect(Placeholders.numbered("SELECT a FROM t WHERE b = ? AND c = '?' AND \"d?\" = ? -- why?\nLIMIT ?")
                == "SELECT a FROM t WHERE b = $1 AND c = '?' AND \"d?\" = $2 -- why?\nLIMIT $3")
        #expect(Placeholders.numbered("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1")
    }

    @Test func aMigrationSplitsIntoItsStatements() {
        let sql = """
            -- a comment; with a semicolon
            CREATE TABLE a (x text DEFAULT ';');
            CREATE INDEX a_x ON a (x); -- trailing
            ;
            """
        #expect(Statements.split(sql) == ["CREATE TABLE a (x text DEFAULT ';')", "CREATE INDEX a_x ON a (x)"])
    }

    /// A database that does not answer is a storage fault that answers 503, and the start waits
    /// for it with backoff instead of crashing.
    @Test func aDatabaseThatDoesNotAnswerIsUnavailableAndWaitedFor() async throws {
        let configuration = try PostgresConfiguration(url: "postgres://stampd@127.0.0.1:1/stampd", tls: .disable,
                                                      connectTimeout: .seconds(1))
        let storage = PostgresStorage(configuration: configuration)
        let started = Date()
        let error = await #expect(throws: (any Error).self) { try await storage.waitUntilReachable(attempts: 2) }
        #expect((error as? any StorageFault)?.isStorageUnavailable == true, "\(String(describing: error))")
        #expect(Date().timeIntervalSince(started) >= 0.25)  // one pause between the two attempts
        await storage.close()
    }
    /// A call whose connection closes under it stops waiting for an answer that will not come,
    /// long before the query limit.
    @Test func aCallWhoseConnectionClosesUnderItStopsWaiting() async throws {
        let closed = Mutex(false)
        let started = ContinuousClock.now
        await #expect(throws: ClosedUnderCall.self) {
            try await PostgresStorage.within(.seconds(60), location: "test", closed: { closed.withLock { $0 } },
                                             body: {
                                                 closed.withLock { $0 = true }
                                                 try await Task.sleep(for: .seconds(60))
                                             }, abandon: {})
        }
        #expect(ContinuousClock.now - started < .seconds(30))
    }
}

/// What the engine does when concurrent writers conflict: retried a bounded number of times,
/// then refused as unavailable (503), never committed twice.
@Suite(.timeLimit(.minutes(2)), .enabled(if: TestStorage.isPostgres, "needs STAMPD_TEST_POSTGRES_URL"))
struct PostgresConflictTests {
    /// Opens the test schema `schema` with `retries` conflict retries and one counter row.
    func counter(retries: Int) async throws -> PostgresStorage {
        let schema = TestStorage.newLocation()
        var configuration = try PostgresConfiguration(url: TestStorage.postgresURL!, tls: .disable, poolSize: 4,
                                                      conflictRetries: retries)
        configuration.schema = schema
        let storage = PostgresStorage(configuration: configuration)
        try await storage.write { session in
            try await session.run("CREATE SCHEMA \(schema)")
            try await session.run("CREATE TABLE \(schema).counter (id bigint PRIMARY KEY, n bigint NOT NULL)")
            try await session.run("INSERT INTO \(schema).counter VALUES (1, 0)")
        }
        return storage
    }

    /// Two writers read the counter, then both try to write it: one of them must lose.
    func collide(_ storage: PostgresStorage) async -> [Result<Void, any Error>] {
        let bothRead = AsyncBarrier(count: 2)
        return await withTaskGroup(of: Result<Void, any Error>.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    let attempts = AttemptCounter()
                    return await Result {
                        try await storage.write { session in
                            let n = try await session.queryFirst("SELECT n FROM counter WHERE id = 1") { try $0.get(0, as: Int.self) }!
                            // Only the first attempt of each waits for the other: a retry runs alone.
                            if attempts.next() == 1 { await bothRead.arrive() }
                            try await session.run("UPDATE counter SET n = ? WHERE id = 1", n + 1)
                        }
                    }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
    }

    @Test func aConflictIsRetriedAndBothWritesCount() async throws {
        let storage = try await counter(retries: 3)
        let outcomes = await collide(storage)
        #expect(outcomes.allSatisfy { if case .success = $0 { true } else { false } })
        let n = try await storage.read { try await $0.queryFirst("SELECT n FROM counter") { try $0.get(0, as: Int.self) } }
        #expect(n == 2)
        await storage.close()
    }

    @Test func aConflictPastTheRetriesIsUnavailableAndCommitsNothing() async throws {
        let storage = try await counter(retries: 0)
        let outcomes = await collide(storage)
        let failures = outcomes.compactMap { if case .failure(let error) = $0 { error } else { nil } }
        #expect(failures.count == 1)
        #expect((failures.first as? StorageError)?.kind == .contention)
        #expect((failures.first as? any StorageFault)?.isStorageUnavailable == true)
        let n = try await storage.read { try await $0.queryFirst("SELECT n FROM counter") { try $0.get(0, as: Int.self) } }
        #expect(n == 1)
        await storage.close()
    }
}

/// What the engine does when the server ends a connection under a call (a restart, an
/// administrator): a call that cannot have taken effect runs again on another connection; a
/// COMMIT whose answer was lost is never run again.
@Suite(.timeLimit(.minutes(2)), .enabled(if: TestStorage.isPostgres, "needs STAMPD_TEST_POSTGRES_URL"))
struct PostgresLostConnectionTests {
    let conflicts = PostgresConflictTests()

    @Test func aWriteWhoseConnectionEndsBeforeItsCommitRunsAgainOnAnotherAndCommitsOnce() async throws {
        let storage = try await conflicts.counter(retries: 0)
        let attempts = AttemptCounter()
        try await storage.write { session in
            if attempts.next() == 1 {
                _ = try await session.queryFirst("SELECT pg_terminate_backend(pg_backend_pid())") { try $0.get(0, as: Bool.self) }
            }
            try await session.run("UPDATE counter SET n = n + 1 WHERE id = 1")
        }
        // At least two runs: the pool may hand out the ended connection once more before it
        // has seen it close, and that run fails at its first statement too.
        #expect(attempts.next() >= 3)
        let n = try await storage.read { try await $0.queryFirst("SELECT n FROM counter") { try $0.get(0, as: Int.self) } }
        #expect(n == 1)
        await storage.close()
    }

    @Test func aReadWhoseConnectionEndsRunsAgainOnAnother() async throws {
        let storage = try await conflicts.counter(retries: 0)
        let attempts = AttemptCounter()
        let n = try await storage.read { session in
            if attempts.next() == 1 {
                _ = try await session.queryFirst("SELECT pg_terminate_backend(pg_backend_pid())") { try $0.get(0, as: Bool.self) }
            }
            return try await session.queryFirst("SELECT n FROM counter") { try $0.get(0, as: Int.self) }
        }
        #expect(n == 0)
        #expect(attempts.next() >= 3)
        await storage.close()
    }

    /// A deferred trigger ends the connection inside the COMMIT: the caller cannot know whether
    /// it committed, so the write answers unavailable and its body ran once.
    @Test func aWriteWhoseConnectionEndsInItsCommitIsUnavailableAndNotRunAgain() async throws {
        let storage = try await conflicts.counter(retries: 3)
        try await storage.write { session in
            try await session.run("""
                CREATE FUNCTION end_own_session() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(1); RETURN NULL; END $$
                """)
            try await session.run("""
                CREATE CONSTRAINT TRIGGER end_at_commit AFTER UPDATE ON counter
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION end_own_session()
                """)
        }
        let attempts = AttemptCounter()
        let error = await #expect(throws: (any Error).self) {
            try await storage.write { session in
                _ = attempts.next()
                try await session.run("UPDATE counter SET n = n + 1 WHERE id = 1")
            }
        }
        #expect((error as? any StorageFault)?.isStorageUnavailable == true, "\(String(describing: error))")
        #expect(attempts.next() == 2)
        await storage.close()
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// Lets `count` tasks go on only once all of them arrived.
final class AsyncBarrier: Sendable {
    private let state: Mutex<(left: Int, waiting: [CheckedContinuation<Void, Never>])>
    init(count: Int) { state = Mutex((count, [])) }

    func arrive() async {
        await withCheckedContinuation { continuation in
            let released = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.left -= 1
                state.waiting.append(continuation)
                guard state.left <= 0 else { return [] }
                defer { state.waiting.removeAll() }
                return state.waiting
            }
            released.forEach { $0.resume() }
        }
    }
}

final class AttemptCounter: Sendable {
    private let value = Mutex(0)
    func next() -> Int { value.withLock { $0 += 1; return $0 } }
}

/// Deployments in two schemas of one database keep to themselves: notifications and advisory
/// locks are database-wide in PostgreSQL, so the engine scopes both to the schema.
@Suite(.timeLimit(.minutes(2)), .enabled(if: TestStorage.isPostgres, "needs STAMPD_TEST_POSTGRES_URL"))
struct PostgresDeploymentTests {
    func storage(schema: String) throws -> PostgresStorage {
        var configuration = try PostgresConfiguration(url: TestStorage.postgresURL!, tls: .disable, poolSize: 2)
        configuration.schema = schema
        return PostgresStorage(configuration: configuration)
    }

    @Test func aDeploymentInAnotherSchemaNeitherWakesNorBlocksThisOne() async throws {
        let (mine, theirs) = (TestStorage.newLocation(), TestStorage.newLocation())
        let listener = try storage(schema: mine), neighbour = try storage(schema: mine), stranger = try storage(schema: theirs)
        let (heard, hear) = AsyncStream.makeStream(of: DatabaseNotice.self)
        let listening = Task { await listener.listen(to: ["stampd_events"]) { hear.yield($0) } }
        var notices = heard.makeAsyncIterator()
        #expect(await notices.next() == .listening)
        // The stranger's commit comes first; notifications reach a listener in commit order.
        try await stranger.write { try await $0.notify("stampd_events", "theirs") }
        try await neighbour.write { try await $0.notify("stampd_events", "mine") }
        #expect(await notices.next() == .message(channel: "stampd_events", payload: "mine"))

        // Housekeeping's claim: the neighbour in the same schema is refused, the stranger is not.
        let claimed = AsyncBarrier(count: 2), done = AsyncBarrier(count: 2)
        async let holding = listener.exclusively("housekeeping") {
            await claimed.arrive()
            await done.arrive()
        }
        await claimed.arrive()
        #expect(try await neighbour.exclusively("housekeeping") {} == false)
        #expect(try await stranger.exclusively("housekeeping") {} == true)
        await done.arrive()
        #expect(try await holding == true)

        listening.cancel()
        await listening.value
        for storage in [listener, neighbour, stranger] { await storage.close() }
    }
}
