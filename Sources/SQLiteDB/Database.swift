// The database: one writer connection on its own thread, with group commit, and reader
// connections on threads of their own. Async callers suspend; no SQLite call ever runs
// on a NIO event loop or on Swift's cooperative pool.
import Blocking
import Logging
import Synchronization

public final class Database: @unchecked Sendable {
    public let path: String

    /// When every `write` that returned has been made durable by `fsync`: WAL with
    /// `synchronous = FULL` syncs the log at each commit, so a 2xx survives a power loss,
    /// not only a crash of the process. Group commit pays that sync once per batch.
    public static let synchronousMode = "FULL"

    /// The most writes grouped into one transaction.
    public static let maximumBatch = 256

    // `writer` is touched only on `writerThread`, each reader only while checked out on a reader thread.
    private let writer: Connection
    private let writerThread: BlockingPool
    private let readerThreads: BlockingPool?
    private let idleReaders: Mutex<[Connection]>
    private let queue = Mutex(PendingWrites())
    private let logger: Logger

    private struct PendingWrites {
        var jobs: [WriteJob] = []
        var draining = false
    }

    private struct WriteJob: Sendable {
        /// Runs the body in a savepoint; returns what to do once the transaction's fate is known.
        let run: @Sendable (Connection) -> @Sendable (_ commitError: (any Error)?) -> Void
        /// Fails the job without running it.
        let fail: @Sendable (any Error) -> Void
    }

    /// Opens the database at `path` (`:memory:` for a private in-memory one) with WAL,
    /// `synchronous = FULL`, a busy timeout and foreign keys. `readers` threads serve reads
    /// (an in-memory database reads through its writer).
    public init(path: String, readers: Int = 2, logger: Logger = Logger(label: "stampd.db")) throws {
        self.path = path
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
            """)
        writer.guardTransactionControl()
        self.writer = writer
        self.writerThread = BlockingPool(name: "sqlite-writer", threads: 1)
        if readers > 0 && !inMemory {
            var connections: [Connection] = []
            for _ in 0..<readers {
                let reader = try Connection(path: path, readOnly: true)
                // Reading once opens the -wal and -shm files now, not at the first request,
                // which might come when no file descriptor is left.
                try reader.execute("PRAGMA query_only = 1; SELECT count(*) FROM sqlite_master;")
                connections.append(reader)
            }
            self.idleReaders = Mutex(connections)
            self.readerThreads = BlockingPool(name: "sqlite-reader", threads: readers)
        } else {
            self.idleReaders = Mutex([])
            self.readerThreads = nil
        }
    }

    /// Runs a read on a reader connection; sees every write that has returned.
    public func read<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws -> T {
        guard let readerThreads else {
            return try await writerThread.run { [writer] in try body(writer) }
        }
        return try await readerThreads.run {
            // There are as many connections as threads, so one is always idle here.
            let connection = self.idleReaders.withLock { $0.removeLast() }
            defer { self.idleReaders.withLock { $0.append(connection) } }
            return try body(connection)
        }
    }

    /// Runs `body` inside a write transaction and returns once it is committed and durable.
    /// Concurrent writes share one transaction (group commit), each in its own savepoint:
    /// when a body throws, only its own changes are undone and only its caller sees the error.
    public func write<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let job = WriteJob(
                run: { connection in
                    let result = Result { try connection.savepoint { try body(connection) } }
                    return { commitError in
                        if let commitError, case .success = result {
                            continuation.resume(throwing: commitError)
                        } else {
                            continuation.resume(with: result)
                        }
                    }
                },
                fail: { continuation.resume(throwing: $0) }
            )
            let startDrain = queue.withLock { state -> Bool in
                state.jobs.append(job)
                if state.draining { return false }
                state.draining = true
                return true
            }
            if startDrain, !writerThread.submit({ self.drain() }) {
                // Closed: fail what waits instead of leaving it suspended for ever.
                let waiting = queue.withLock { state -> [WriteJob] in
                    defer { state.jobs.removeAll() }
                    state.draining = false
                    return state.jobs
                }
                waiting.forEach { $0.fail(BlockingPoolError.shutDown) }
            }
        }
    }

    /// Runs the pending writes in batches until none is left. Only on the writer thread.
    private func drain() {
        while true {
            let batch = queue.withLock { state -> [WriteJob] in
                if state.jobs.isEmpty {
                    state.draining = false
                    return []
                }
                let count = min(state.jobs.count, Self.maximumBatch)
                let batch = Array(state.jobs.prefix(count))
                state.jobs.removeFirst(count)
                return batch
            }
            if batch.isEmpty { return }
            commit(batch[...])
        }
    }

    private func commit(_ batch: ArraySlice<WriteJob>) {
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
            let finish = batch[index].run(writer)
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
            commit(batch[index...])
            return
        }
        do {
            try writer.execute("COMMIT")
        } catch {
            if writer.isInTransaction { try? writer.execute("ROLLBACK") }
            logger.warning("write transaction could not commit", metadata: ["error": "\(error)"])
            finishers.forEach { $0(error) }
            return
        }
        finishers.forEach { $0(nil) }
    }

    /// Applies the migrations in `directory`; see `Migrator`.
    @discardableResult
    public func migrate(directory: String) async throws -> [Migration] {
        let migrator = try Migrator(directory: directory)
        return try await writerThread.run { [writer] in try migrator.migrate(writer) }
    }

    /// Finishes queued writes, then closes every connection. The database is unusable afterwards.
    public func close() {
        writerThread.shutdown()
        readerThreads?.shutdown()
        writer.close()
        idleReaders.withLock { readers in readers.forEach { $0.close() } }
    }
}
