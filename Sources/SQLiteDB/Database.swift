// The SQLite engine: one writer connection on its own thread, with group commit, and reader
// connections on threads of their own. Read and write bodies run on those threads (the pools'
// task executors), so no SQLite call ever runs on a NIO event loop or on Swift's cooperative pool.
import Blocking
import Foundation
import Logging
import Storage
import Synchronization

public final class Database: Storage, @unchecked Sendable {
    public let path: String
    public var engine: String { "sqlite" }
    public var location: String { path }

    /// When every `write` that returned has been made durable by `fsync`: WAL with
    /// `synchronous = FULL` syncs the log at each commit, so a 2xx survives a power loss,
    /// not only a crash of the process. Group commit pays that sync once per batch.
    public static let synchronousMode = "FULL"

    /// The most writes grouped into one transaction.
    public static let maximumBatch = 256

    /// The WAL's size in pages (4 KiB) from which the writer checkpoints it into the database,
    /// after answering the batch that made it so. A checkpoint copies each page once however often the log rewrote it, so a longer log
    /// copies the hot pages (the tables' last leaves, the indexes of the busy accounts) fewer
    /// times: at SQLite's default of 1,000 pages the writer checkpointed 16 times a second under
    /// full flows, and 10,000 gave 19 % more flows for 14 % fewer bytes written (BENCHMARKS.md,
    /// issue 16's fourth step). Much longer logs cost more than they save: each page read then
    /// searches a larger WAL index (no checkpoint at all was 14 % slower). The log stays about
    /// 40 MiB: SQLite writes it from the start again after a complete checkpoint.
    public static let checkpointPages = 10_000
    private let checkpointPages: Int

    // `temp_store = MEMORY` keeps the savepoint journal of group commit in memory. Every write
    // of a batch runs in a savepoint, and SQLite copies each page a savepoint changes into that
    // journal so that it can roll the one write back; past 64 KiB the journal spilled into a
    // temporary file, which under full flows was 110,000 pwrite calls a second to a file that is
    // deleted unread (10 % more flows, 60 % fewer write calls).

    // `writer` is touched only on `writerThread`, each reader only while checked out on a reader thread.
    private let writer: Connection
    private let writerThread: BlockingPool
    private let writerExecutor: PoolExecutor
    private let readerThreads: BlockingPool?
    private let readerExecutor: PoolExecutor?
    private let readers: ReaderLine
    private let queue = Mutex(PendingWrites())
    private let logger: Logger

    private struct PendingWrites {
        var jobs: [WriteJob] = []
        var draining = false
        /// Set by `close`: later writes fail at once.
        var closed = false
        /// Set when a sync failed: later writes fail at once, until the process restarts.
        var untrusted = false
        /// `close` waits here for the queued writes to finish.
        var drainWatchers: [CheckedContinuation<Void, Never>] = []
    }

    private struct WriteJob: Sendable {
        /// Runs the body in a savepoint; returns what to do once the transaction's fate is known.
        let run: @Sendable (Connection) async -> @Sendable (_ commitError: (any Error)?) -> Void
        /// Fails the job without running it.
        let fail: @Sendable (any Error) -> Void
    }

    /// Writes waiting for the writer, not yet begun.
    public var queuedWrites: Int { queue.withLock { $0.jobs.count } }

    /// False once a sync of the database's files failed. After a failed fsync Linux may have
    /// dropped the dirty pages it could not write and marked them clean, so a later sync that
    /// succeeds proves nothing about them (PostgreSQL's "fsyncgate"): a WAL header rewritten at a
    /// restart of the log, say, may never reach the disk while the frames after it do, and a
    /// power cut then loses commits that were acknowledged. Nothing the process holds can tell
    /// which pages those were, so it takes no more writes; a restart reopens the files and SQLite
    /// recovers from what is on the disk. A write that fails (ENOSPC, EIO) is different: SQLite
    /// rolls its transaction back, nothing of it was acknowledged, and the next one may succeed.
    public var acceptsWrites: Bool { !queue.withLock { $0.untrusted } }

    static let untrustedMessage = "a sync of the database failed, so its file can no longer be trusted: "
        + "no writes until the server restarts" 

    /// Opens the database at `path` (`:memory:` for a private in-memory one) with WAL,
    /// `synchronous = FULL`, a busy timeout and foreign keys. `readers` threads serve reads
    /// (an in-memory database reads through its writer).
    /// `checkpointPages` other than the default is for tests.
    public init(path: String, readers: Int = 2, checkpointPages: Int = Database.checkpointPages,
                logger: Logger = Logger(label: "stampd.db")) throws {
        self.path = path
        self.checkpointPages = checkpointPages
        self.logger = logger
        let writer = try Connection(path: path)
        let inMemory = path == ":memory:" || path.isEmpty || path.contains("mode=memory")
        // The durability promise rests on WAL with FULL sync: a database that stays in another
        // journal mode (a VFS without shared memory, a file system that refuses it) is not opened.
        let mode = try writer.queryFirst("PRAGMA journal_mode = WAL") { try $0.get(0, as: String.self) } ?? "unknown"
        guard mode.lowercased() == "wal" || (inMemory && mode.lowercased() == "memory") else {
            writer.close()
            throw SQLiteError(extendedCode: ResultCode.cantOpen.rawValue,
                              message: "cannot use \(path): WAL was not applied (journal_mode is \(mode))")
        }
        try writer.execute("""
            PRAGMA synchronous = \(Self.synchronousMode);
            PRAGMA foreign_keys = ON;
            PRAGMA temp_store = MEMORY;
            """)
        writer.guardTransactionControl()
        // The writer checkpoints itself, after a batch's answers (`checkpointIfDue`), not inside
        // a COMMIT: the batch that fills the log does not wait for the copy, and a checkpoint's
        // failure is never taken for its commit's (that batch is durable: its WAL sync succeeded).
        writer.followWALSize()
        self.writer = writer
        self.writerThread = BlockingPool(name: "sqlite-writer", threads: 1)
        self.writerExecutor = PoolExecutor(pool: writerThread)
        if readers > 0 && !inMemory {
            var connections: [Connection] = []
            for _ in 0..<readers {
                let reader = try Connection(path: path, readOnly: true)
                // Reading once opens the -wal and -shm files now, not at the first request,
                // which might come when no file descriptor is left.
                try reader.execute("PRAGMA query_only = 1; SELECT count(*) FROM sqlite_master;")
                connections.append(reader)
            }
            self.readers = ReaderLine(connections)
            let threads = BlockingPool(name: "sqlite-reader", threads: readers)
            self.readerThreads = threads
            self.readerExecutor = PoolExecutor(pool: threads)
        } else {
            self.readers = ReaderLine([])
            self.readerThreads = nil
            self.readerExecutor = nil
        }
    }

    /// Runs a read on a reader connection, on a reader thread; sees every write that has returned.
    public func read<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T) async throws -> T {
        guard let readerExecutor else {
            return try await write(body)
        }
        return try await withTaskExecutorPreference(readerExecutor) {
            let connection = await readers.checkOut()
            defer { readers.checkIn(connection) }
            return try await body(connection)
        }
    }

    /// Runs `body` inside a write transaction and returns once it is committed and durable.
    /// Concurrent writes share one transaction (group commit), each in its own savepoint:
    /// when a body throws, only its own changes are undone and only its caller sees the error.
    /// `committed` runs on the writer thread right after the COMMIT, in the batch's order.
    @discardableResult
    public func write<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T,
                                   committed: @escaping @Sendable (T) -> Void) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let job = WriteJob(
                run: { connection in
                    let result: Result<T, any Error>
                    do {
                        result = .success(try await connection.savepoint { try await body(connection) })
                    } catch {
                        result = .failure(error)
                    }
                    return { commitError in
                        if let commitError, case .success = result {
                            continuation.resume(throwing: commitError)
                        } else {
                            if case .success(let value) = result { committed(value) }
                            continuation.resume(with: result)
                        }
                    }
                },
                fail: { continuation.resume(throwing: $0) }
            )
            let start = queue.withLock { state -> Bool? in
                if state.closed || state.untrusted { return nil }
                state.jobs.append(job)
                if state.draining { return false }
                state.draining = true
                return true
            }
            switch start {
            case nil where !acceptsWrites: job.fail(StorageError(.unavailable, Self.untrustedMessage))
            case nil: job.fail(BlockingPoolError.shutDown)
            case true?: Task(executorPreference: writerExecutor) { await self.drain() }
            case false?: break
            }
        }
    }


    /// Runs the pending writes in batches until none is left. Only on the writer thread.
    private func drain() async {
        while true {
            let (batch, watchers) = queue.withLock { state -> ([WriteJob], [CheckedContinuation<Void, Never>]) in
                SyncMetrics.writerQueue.record(state.jobs.count)
                if state.jobs.isEmpty {
                    state.draining = false
                    defer { state.drainWatchers.removeAll() }
                    return ([], state.drainWatchers)
                }
                let count = min(state.jobs.count, Self.maximumBatch)
                let batch = Array(state.jobs.prefix(count))
                state.jobs.removeFirst(count)
                return (batch, [])
            }
            if batch.isEmpty {
                watchers.forEach { $0.resume() }
                return
            }
            await commit(batch[...])
        }
    }

    private func commit(_ batch: ArraySlice<WriteJob>) async {
        if !acceptsWrites {
            batch.forEach { $0.fail(StorageError(.unavailable, Self.untrustedMessage)) }
            return
        }
        let failedSyncsBefore = SyncMetrics.failedSyncCount.load(ordering: .sequentiallyConsistent)
        do {
            try writer.execute("BEGIN IMMEDIATE")
        } catch {
            logger.warning("write transaction could not begin", metadata: ["error": "\(error)"])
            batch.forEach { $0.fail(error) }
            return
        }
        var finishers: [@Sendable (_ commitError: (any Error)?) -> Void] = []
        finishers.reserveCapacity(batch.count)
        var index = batch.startIndex
        while index < batch.endIndex {
            let finish = await batch[index].run(writer)
            index += 1
            if writer.isInTransaction && !writer.unitRollbackFailed {
                finishers.append(finish)
                continue
            }
            // Either SQLite rolled the whole transaction back by itself (disk full, I/O error), or
            // a failed unit could not be undone alone, so its partial writes must not commit with
            // the others: the batch's earlier units are lost too, and the rest go into a fresh
            // transaction.
            let message = writer.unitRollbackFailed
                ? "a failed write could not be undone alone; the batch was rolled back"
                : "the transaction was rolled back by SQLite"
            writer.unitRollbackFailed = false
            if writer.isInTransaction { try? writer.execute("ROLLBACK") }
            let lost = SQLiteError(extendedCode: ResultCode.ioError.rawValue, message: message)
            finish(lost)
            finishers.forEach { $0(lost) }
            await commit(batch[index...])
            return
        }
        do {
            let started = DispatchTime.now().uptimeNanoseconds
            try writer.execute("COMMIT")
            SyncMetrics.commit.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- started))
        } catch {
            if writer.isInTransaction { try? writer.execute("ROLLBACK") }
            logger.warning("write transaction could not commit", metadata: ["error": "\(error)"])
            distrustIfASyncFailed(since: failedSyncsBefore)
            finishers.forEach { $0(error) }
            return
        }
        // A COMMIT that succeeded has its WAL synced.
        distrustIfASyncFailed(since: failedSyncsBefore)
        finishers.forEach { $0(nil) }
        checkpointIfDue()
    }

    /// Checkpoints once the log has `checkpointPages`. A sync that fails in it makes the
    /// database untrusted like any other (the writes after it are refused); a checkpoint that
    /// fails otherwise is tried again after the next batch, the log holding what it could not copy.
    private func checkpointIfDue() {
        guard writer.walFrames >= checkpointPages else { return }
        let failedSyncsBefore = SyncMetrics.failedSyncCount.load(ordering: .sequentiallyConsistent)
        let started = DispatchTime.now().uptimeNanoseconds
        do {
            try writer.checkpoint()
            SyncMetrics.checkpoint.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- started))
        } catch {
            logger.warning("checkpoint failed", metadata: ["error": "\(error)"])
        }
        distrustIfASyncFailed(since: failedSyncsBefore)
    }

    private func distrustIfASyncFailed(since before: Int) {
        guard SyncMetrics.failedSyncCount.load(ordering: .sequentiallyConsistent) != before else { return }
        let first = queue.withLock { state -> Bool in
            defer { state.untrusted = true }
            return !state.untrusted
        }
        if first { logger.critical("\(Self.untrustedMessage)", metadata: ["database": "\(path)"]) }
    }

    /// Applies the migrations of `folder` (the SQLite ones); see `Migrator`.
    @discardableResult
    public func migrate(folder: String) async throws -> [Migration] {
        let migrator = try Migrator(directory: folder)
        return try await writerThread.run { [writer] in try Self.migrate(migrator, on: writer) }
    }

    private static func migrate(_ migrator: Migrator, on connection: Connection) throws -> [Migration] {
        try connection.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at INTEGER NOT NULL
            ) STRICT;
            """)
        let applied = try connection.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version") { row in
            Migrator.Applied(version: try row.get(0), name: try row.get(1), checksum: try row.get(2))
        }
        let pending = try migrator.pending(applied: applied)
        for migration in pending {
            try connection.transaction {
                try connection.execute(migration.sql)
                try connection.run(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                    migration.version, migration.name, migration.checksum,
                    Int64(Date().timeIntervalSince1970 * 1000))
            }
        }
        return pending
    }

    /// One process uses a SQLite file (its writer holds the lock): nothing to follow.
    public var isShared: Bool { false }

    public func listen(to channels: [String], _ handler: @escaping @Sendable (DatabaseNotice) -> Void) async {}

    @discardableResult
    public func exclusively(_ name: String, _ body: @escaping @Sendable () async throws -> Void) async throws -> Bool {
        try await body()
        return true
    }

    /// Finishes queued writes, then closes every connection. The database is unusable afterwards.
    public func close() async {
        // The writes already queued were accepted: let them finish first.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let wait = queue.withLock { state -> Bool in
                state.closed = true
                if state.draining { state.drainWatchers.append(done) }
                return state.draining
            }
            if !wait { done.resume() }
        }
        writerThread.shutdown()
        readerThreads?.shutdown()
        writer.close()
        readers.closeAll()
    }
}

/// The idle reader connections, handed to one read at a time. A read waits here only when a
/// body suspended and another read took its thread; with bodies that do not suspend there is
/// always one idle connection per idle thread.
private final class ReaderLine: Sendable {
    private struct State {
        var idle: [Connection]
        var waiting: [CheckedContinuation<Connection, Never>] = []
    }
    private let state: Mutex<State>

    init(_ connections: [Connection]) {
        state = Mutex(State(idle: connections))
    }

    func checkOut() async -> Connection {
        if let connection = state.withLock({ $0.idle.popLast() }) { return connection }
        return await withCheckedContinuation { continuation in
            let connection = state.withLock { state -> Connection? in
                if let connection = state.idle.popLast() { return connection }
                state.waiting.append(continuation)
                return nil
            }
            if let connection { continuation.resume(returning: connection) }
        }
    }

    func checkIn(_ connection: Connection) {
        let next = state.withLock { state -> CheckedContinuation<Connection, Never>? in
            if !state.waiting.isEmpty { return state.waiting.removeFirst() }
            state.idle.append(connection)
            return nil
        }
        next?.resume(returning: connection)
    }

    func closeAll() {
        state.withLock { state in state.idle.forEach { $0.close() } }
    }
}
