// The PostgreSQL engine: postgres-nio's client and its pool, NIO-native (no thread waits on the
// network). Every write is one REPEATABLE READ transaction (snapshot isolation): two writers
// that change one row cannot both commit, and the use cases make every rule that counts or
// checks rows change a row of its own first (a card, a request, a claimed scope), so that they
// stay correct when PostgreSQL runs them concurrently. A conflict PostgreSQL refuses
// (serialization failure, deadlock) runs the body again, a bounded number of times.
// SERIALIZABLE would need no such rows, but on a busy store its predicate locks refused most
// concurrent requests (16 to 26 in 960 gave up after 10 retries in the crash rounds). Commits are
// synchronous (`synchronous_commit` is set on for each session), so a returned write is durable.
import Foundation
import Logging
import Metrics
import NIOSSL
import PostgresNIO
import Storage
import Synchronization

public final class PostgresStorage: Storage {
    public let configuration: PostgresConfiguration
    public var engine: String { "postgres" }
    public var location: String { configuration.location }

    private let client: PostgresClient
    private let running: Task<Void, Never>
    private let logger: Logger
    private let texts = StatementTexts()
    private let scope: DeploymentScope

    /// Starts the pool. No connection is made until the first call; `waitUntilReachable` waits for one.
    public init(configuration: PostgresConfiguration, logger: Logger = Logger(label: "stampd.db")) {
        self.configuration = configuration
        self.logger = logger
        self.scope = DeploymentScope(schema: configuration.schema)
        var options = PostgresClient.Configuration(host: configuration.host, port: configuration.port,
                                                   username: configuration.username, password: configuration.password,
                                                   database: configuration.database, tls: configuration.tls.pool)
        options.options.maximumConnections = configuration.poolSize
        options.options.connectTimeout = configuration.connectTimeout
        // Each connection commits synchronously whatever the server's default: a 2xx means durable.
        options.options.additionalStartupParameters = [("synchronous_commit", "on"),
                                                       ("application_name", "stampd")]
            + (configuration.schema.map { [("search_path", $0)] } ?? [])
        // The pool logs every failed connection attempt at info; waitUntilReachable and the 503s
        // already say the database is down, so the pool's own lines start at warning.
        var background = logger
        background.logLevel = max(logger.logLevel, .warning)
        let client = PostgresClient(configuration: options, backgroundLogger: background)
        self.client = client
        self.running = Task { await client.run() }
    }

    public func read<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            do {
                return try await withPooledConnection(limit: configuration.queryTimeout) { connection in
                    do {
                        return try await body(self.session(on: connection))
                    } catch {
                        throw LostConnection.wrapping(error, on: connection)
                    }
                }
            } catch let error as LostConnection {
                // A read has no effect: one on a connection the pool handed out after the server
                // had ended it runs again on another.
                attempt += 1
                guard attempt <= Self.lostConnectionRetries else { throw error.fault }
                logger.info("a read lost its connection; running it again", metadata: ["error": "\(error.fault)"])
                await Self.pauseBeforeAnotherConnection()
            } catch is ClosedUnderCall {
                attempt += 1
                guard attempt <= Self.lostConnectionRetries else { throw ClosedUnderCall.fault }
                logger.info("a read's connection closed under it; running it again")
                await Self.pauseBeforeAnotherConnection()
            } catch {
                throw PostgresFault.classify(error)
            }
        }
    }

    /// How often a call whose connection was lost before it could have taken effect runs again
    /// on another: after a server restart the pool may hand out a few connections it has not yet
    /// seen closed, each failing at its first statement.
    private static let lostConnectionRetries = 3

    /// A short jittered pause before a call lost with its connection runs again: the pool sees
    /// the other connections the server ended close meanwhile, instead of handing them out next.
    private static func pauseBeforeAnotherConnection() async {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 10...50)))
    }

    /// How often a call waiting for an answer looks whether its connection closed under it.
    static let closedCheckInterval = Duration.milliseconds(100)

    @discardableResult
    public func write<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T,
                                   committed: @escaping @Sendable (T) -> Void) async throws -> T {
        var attempt = 0
        var lost = 0
        while true {
            let commitSent = SetOnceFlag()
            do {
                let value = try await withPooledConnection(limit: configuration.queryTimeout) { connection in
                    try await self.transaction(on: connection, body, commitSent: commitSent)
                }
                committed(value)
                return value
            } catch let error as LostConnection {
                // The connection went before the COMMIT was sent: the server rolled the
                // transaction back, so it runs again on another connection, as after a conflict.
                lost += 1
                guard lost <= Self.lostConnectionRetries else { throw error.fault }
                logger.info("a write lost its connection before its commit; running it again",
                            metadata: ["error": "\(error.fault)"])
                await Self.pauseBeforeAnotherConnection()
            } catch is ClosedUnderCall {
                // The same, seen as the connection closing while a statement waited for its answer;
                // once the COMMIT was sent nobody knows whether it committed, and it never runs again.
                lost += 1
                guard !commitSent.isSet, lost <= Self.lostConnectionRetries else { throw ClosedUnderCall.fault }
                logger.info("a write's connection closed before its commit; running it again")
                await Self.pauseBeforeAnotherConnection()
            } catch {
                let fault = PostgresFault.classify(error)
                // A unique violation that the body did not handle is a concurrent writer's row
                // (two first cards of one customer, one Idempotency-Key at once): run again, as
                // if after it. A body that expects one (a login taken) turns it into its own error.
                guard let fault = fault as? PostgresFault, fault.isConflict || fault.isUniqueViolation else { throw fault }
                attempt += 1
                guard attempt <= configuration.conflictRetries else {
                    logger.warning("write kept conflicting; giving up", metadata: ["attempts": "\(attempt)"])
                    throw StorageError(.contention, "the write conflicted with concurrent writes \(attempt) times")
                }
                // Jittered, growing: conflicting writers spread out instead of meeting again.
                let ceiling = min(100, 1 << min(attempt, 7))
                try? await Task.sleep(for: .milliseconds(Int.random(in: 0...ceiling)))
            }
        }
    }

    /// Runs `body` on a pooled connection, waiting at most `connectTimeout` for one. The pool
    /// waits for ever by itself (it retries connecting in the background while the database is
    /// down), which would leave the caller hanging instead of answering 503. With `limit`, a body
    /// still running after it has its connection closed, which fails what waits on it: after a
    /// server restart a pooled connection was seen to take a query and never answer.
    private func withPooledConnection<T: Sendable>(limit: Duration? = nil,
                                                   _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let leased = SetOnceFlag()
        let timeout = configuration.connectTimeout
        let location = self.location
        let logger = self.logger
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await self.client.withConnection { connection in
                    leased.set()
                    guard let limit else { return try await body(connection) }
                    return try await Self.within(limit, location: location, closed: { connection.isClosed },
                                                 body: { try await body(connection) }) {
                        logger.warning("a database call took too long; closing its connection",
                                       metadata: ["limit": "\(limit)", "connection": "\(connection.id)", "closed": "\(connection.isClosed)"])
                        Task { try? await connection.close() }
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            while let outcome = try await group.next() {
                if let value = outcome {
                    group.cancelAll()
                    return value
                }
                // The wait ran out: give up unless a connection was leased (its work then finishes).
                if !leased.isSet {
                    group.cancelAll()
                    throw PostgresFault(sqlState: nil, message: "no connection to \(location) within \(timeout)")
                }
            }
            throw CancellationError()
        }
    }

    /// The body's outcome, or after `limit` a fault (and `abandon` runs) while the body is left
    /// to end by itself: a connection that stopped answering may never fail what waits on it,
    /// so the caller does not wait with it. The body runs in a task of its own for that reason.
    /// With `closed`, looked at every `closedCheckInterval`, the connection found closed ends
    /// the wait with `ClosedUnderCall`: a statement sent on a connection as the server ended it
    /// was seen never to be answered. (Looked at, not awaited: a callback on the connection's
    /// close future per call would stay until the connection closes.)
    static func within<T: Sendable>(_ limit: Duration, location: String, closed: (@Sendable () -> Bool)? = nil,
                                    body: @escaping @Sendable () async throws -> T,
                                    abandon: @escaping @Sendable () -> Void) async throws -> T {
        let outcome = FirstOutcome<T>()
        return try await withCheckedThrowingContinuation { continuation in
            outcome.start(continuation)
            let timer = Task {
                let deadline = ContinuousClock.now + limit
                while let closed, ContinuousClock.now + closedCheckInterval < deadline {
                    try await Task.sleep(for: closedCheckInterval)
                    if closed() {
                        outcome.resume(.failure(ClosedUnderCall()))
                        return
                    }
                }
                try await Task.sleep(until: deadline)
                if outcome.resume(.failure(PostgresFault(sqlState: nil, message: "no answer from \(location) within \(limit)"))) {
                    abandon()
                }
            }
            Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                timer.cancel()
                outcome.resume(result)
            }
        }
    }

    private func transaction<T: Sendable>(on connection: PostgresConnection,
                                          _ body: @Sendable (any SQLSession) async throws -> T,
                                          commitSent: SetOnceFlag) async throws -> T {
        let session = session(on: connection)
        let value: T
        do {
            try await session.simple("BEGIN ISOLATION LEVEL REPEATABLE READ")
            value = try await body(session)
        } catch {
            let lost = LostConnection.wrapping(error, on: connection)
            // A connection that is gone needs no rollback (the server ended its transaction),
            // and a statement sent on one that is closing was seen never to be answered.
            guard lost is LostConnection else {
                try? await session.simple("ROLLBACK")
                throw error
            }
            throw lost
        }
        // A COMMIT refused by the server (a serialization failure found at commit) committed
        // nothing and is retried; one lost with the connection has an unknown outcome, which
        // reaches the caller as unavailable and is never run again here. Its round trip holds
        // the server's WAL flush (synchronous_commit = on): the disk's share, measured.
        let started = DispatchTime.now().uptimeNanoseconds
        commitSent.set()
        try await session.simple("COMMIT")
        Self.commitTimer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- started))
        return value
    }

    private static let commitTimer = Metrics.Timer(label: "stampd_db_commit_seconds", dimensions: [("engine", "postgres")])

    /// Waits until a connection answers, retrying with backoff and logging each failure; a
    /// database that is down at start is waited for, not a crash. Gives up after `attempts`.
    public func waitUntilReachable(attempts: Int = .max) async throws {
        var delay = 0.25
        for attempt in 1... {
            do {
                _ = try await read { try await $0.queryFirst("SELECT 1") { try $0.get(0, as: Int.self) } }
                if attempt > 1 { logger.info("database reachable", metadata: ["database": "\(location)"]) }
                return
            } catch {
                if attempt >= attempts || Task.isCancelled { throw error }
                logger.warning("database not reachable; retrying", metadata: [
                    "database": "\(location)", "attempt": "\(attempt)", "retry.seconds": "\(delay)", "error": "\(error)"])
                try await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 10)
            }
        }
    }

    /// Applies the migrations of `folder` (the PostgreSQL ones), each in its own transaction,
    /// under an advisory lock so that instances of one deployment starting together migrate one
    /// after the other (and other deployments on the database need not wait).
    @discardableResult
    public func migrate(folder: String) async throws -> [Migration] {
        let migrator = try Migrator(directory: folder)
        let key = scope.lockKey("migrations")
        do {
            return try await withPooledConnection { connection in
                let session = self.session(on: connection)
                try await session.run("SELECT pg_advisory_lock(3, hashtext(?))", key)
                do {
                    let applied = try await Self.migrate(migrator, on: session)
                    try await session.run("SELECT pg_advisory_unlock(3, hashtext(?))", key)
                    return applied
                } catch {
                    try? await session.simple("ROLLBACK")
                    _ = try? await session.run("SELECT pg_advisory_unlock(3, hashtext(?))", key)
                    throw error
                }
            }
        } catch let error as MigrationError {
            throw error
        } catch {
            throw PostgresFault.classify(error)
        }
    }

    private static func migrate(_ migrator: Migrator, on session: PostgresSession) async throws -> [Migration] {
        try await session.simple("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version bigint PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at bigint NOT NULL
            )
            """)
        let applied = try await session.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version") { row in
            Migrator.Applied(version: try row.get(0), name: try row.get(1), checksum: try row.get(2))
        }
        let pending = try migrator.pending(applied: applied)
        for migration in pending {
            try await session.simple("BEGIN")
            for statement in Statements.split(migration.sql) { try await session.simple(statement) }
            try await session.run("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                                  migration.version, migration.name, migration.checksum,
                                  Int64(Date().timeIntervalSince1970 * 1000))
            try await session.simple("COMMIT")
        }
        return pending
    }

    public func close() async {
        running.cancel()
        await running.value
    }

    // MARK: - Several processes on one database

    public var isShared: Bool { true }

    /// How often the listening connection is asked a question, so that one that died quietly
    /// (a peer gone without a reset) is noticed and replaced.
    static let listenerCheckInterval: Duration = .seconds(10)

    public func listen(to channels: [String], _ handler: @escaping @Sendable (DatabaseNotice) -> Void) async {
        var delay = 0.25
        var connectionNumber = 0
        while !Task.isCancelled {
            connectionNumber += 1
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: connectionConfiguration(), id: -connectionNumber, logger: logger)
                delay = 0.25
                do {
                    try await follow(channels, on: connection, handler)
                } catch {
                    if !Task.isCancelled {
                        logger.warning("the notification connection failed; reconnecting", metadata: ["error": "\(error)"])
                    }
                }
                handler(.interrupted)
                try? await connection.close()
            } catch {
                if Task.isCancelled { break }
                logger.warning("no notification connection; retrying", metadata: [
                    "database": "\(location)", "retry.seconds": "\(delay)", "error": "\(PostgresFault.classify(error))"])
            }
            try? await Task.sleep(for: .seconds(delay))
            delay = min(delay * 2, 10)
        }
    }

    /// Listens to every channel on `connection` and checks it every few seconds; returns (throws)
    /// when the connection fails or the task is cancelled.
    private func follow(_ channels: [String], on connection: PostgresConnection,
                        _ handler: @escaping @Sendable (DatabaseNotice) -> Void) async throws {
        let registered = Countdown(channels.count)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for channel in channels {
                group.addTask {
                    try await connection.listen(on: self.scope.channel(channel)) { notifications in
                        if registered.tick() { handler(.listening) }
                        for try await notification in notifications {
                            handler(.message(channel: channel, payload: notification.payload))
                        }
                    }
                    throw PostgresFault(sqlState: nil, message: "the notifications of \(channel) ended")
                }
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: Self.listenerCheckInterval)
                    // Bounded like every call: a connection that stopped answering is replaced.
                    let logger = self.logger
                    _ = try await Self.within(self.configuration.queryTimeout, location: self.location,
                                              body: { try await connection.query("SELECT 1", logger: logger) },
                                              abandon: { Task { try? await connection.close() } })
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func session(on connection: PostgresConnection) -> PostgresSession {
        PostgresSession(connection: connection, texts: texts, logger: logger, scope: scope)
    }

    private func connectionConfiguration() -> PostgresConnection.Configuration {
        var options = PostgresConnection.Configuration(host: configuration.host, port: configuration.port,
                                                       username: configuration.username, password: configuration.password,
                                                       database: configuration.database, tls: configuration.tls.connection)
        options.options.connectTimeout = .init(configuration.connectTimeout)
        return options
    }

    @discardableResult
    public func exclusively(_ name: String, _ body: @escaping @Sendable () async throws -> Void) async throws -> Bool {
        do {
            return try await withPooledConnection { connection in
                let session = self.session(on: connection)
                // A session-level lock: it ends with the body, or with this connection if the process dies.
                let name = self.scope.lockKey(name)
                guard try await session.queryFirst("SELECT pg_try_advisory_lock(2, hashtext(?))", name,
                                                   row: { try $0.get(0, as: Bool.self) }) == true else { return false }
                let unlock = "SELECT pg_advisory_unlock(2, hashtext(?))"
                do {
                    try await body()
                } catch {
                    _ = try? await session.run(unlock, name)
                    throw error
                }
                try await session.run(unlock, name)
                return true
            }
        } catch {
            throw PostgresFault.classify(error)
        }
    }
}

/// Resumes a continuation with whichever outcome comes first; later ones are dropped.
final class FirstOutcome<T: Sendable>: Sendable {
    private let continuation = Mutex<CheckedContinuation<T, any Error>?>(nil)

    func start(_ continuation: CheckedContinuation<T, any Error>) {
        self.continuation.withLock { $0 = continuation }
    }

    /// True for the outcome that resumed it.
    @discardableResult
    func resume(_ result: Result<T, any Error>) -> Bool {
        guard let continuation = continuation.withLock({ state -> CheckedContinuation<T, any Error>? in
            defer { state = nil }
            return state
        }) else { return false }
        continuation.resume(with: result)
        return true
    }
}

/// Counts down to zero; `tick` is true for the call that reaches it.
final class Countdown: Sendable {
    private let left: Mutex<Int>
    init(_ count: Int) { left = Mutex(count) }
    func tick() -> Bool { left.withLock { $0 -= 1; return $0 == 0 } }
}

/// Set once a connection was leased.
/// A call's connection was lost before the call could have taken effect: it may run again.
private struct LostConnection: Error {
    let fault: PostgresFault

    /// The error as a `LostConnection` when it says the connection is gone, else unchanged. An
    /// error without an SQLSTATE counts only once the connection is closed: some of the driver's
    /// own errors (too many parameters, a cancelled query) leave it open, inside its transaction.
    static func wrapping(_ error: any Error, on connection: PostgresConnection) -> any Error {
        if error is LostConnection { return error }
        guard let fault = PostgresFault.classify(error) as? PostgresFault, fault.isConnectionLost,
              fault.sqlState != nil || connection.isClosed else { return error }
        return LostConnection(fault: fault)
    }
}

/// A call's connection closed while the call waited for an answer.
struct ClosedUnderCall: Error {
    static let fault = PostgresFault(sqlState: nil, message: "the connection closed under the call")
}

/// A flag set once: a connection was leased, a COMMIT was sent.
final class SetOnceFlag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// The translated text of each statement, made once: `?` numbered as `$1`, `$2`, …
final class StatementTexts: Sendable {
    private let cache = Mutex<[String: String]>([:])
    /// Statements are constants of the code, with few built at run time; a bound keeps a
    /// mistake that builds one per call from growing without end.
    private static let capacity = 4_096

    func text(_ sql: SQL) -> String {
        let source = sql.postgres
        if let known = cache.withLock({ $0[source] }) { return known }
        let numbered = Placeholders.numbered(source)
        cache.withLock { cache in
            if cache.count >= Self.capacity { cache.removeAll(keepingCapacity: true) }
            cache[source] = numbered
        }
        return numbered
    }
}

extension PostgresConfiguration.TLSMode {
    /// The mode for the pool, and for the listening connection, which postgres-nio configures
    /// with types of their own. `require` verifies the server's certificate against the
    /// system's roots.
    var pool: PostgresClient.Configuration.TLS {
        switch self {
        case .disable: .disable
        case .prefer: .prefer(.makeClientConfiguration())
        case .require: .require(.makeClientConfiguration())
        }
    }

    var connection: PostgresConnection.Configuration.TLS {
        // A client context from the default client configuration cannot fail to build.
        switch self {
        case .disable: .disable
        case .prefer: .prefer(try! .init(configuration: .makeClientConfiguration()))
        case .require: .require(try! .init(configuration: .makeClientConfiguration()))
        }
    }
}
