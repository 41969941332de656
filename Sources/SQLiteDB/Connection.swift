// One SQLite connection, used by one thread at a time, with its cache of prepared statements.
import CSQLite
import Storage

// Not safe for concurrent use: `Database` hands each connection to one thread at a time,
// which is the only reason it may cross threads.
public final class Connection: @unchecked Sendable {
    let handle: OpaquePointer
    private var statements: [String: Statement] = [:]

    /// Opens (and creates if needed) the database at `path`; `:memory:` is a private in-memory database.
    public init(path: String, readOnly: Bool = false, busyTimeoutMilliseconds: Int32 = 5_000) throws {
        var handle: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE))
            | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI
        let code = sqlite3_open_v2(path, &handle, flags, SyncMetrics.vfs)
        guard code == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(code))
            if let handle { sqlite3_close_v2(handle) }
            throw SQLiteError(extendedCode: code, message: "cannot open \(path): \(message)")
        }
        self.handle = handle
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, busyTimeoutMilliseconds)
    }

    private var isClosed = false

    deinit {
        close()
    }

    /// Finalizes the cached statements and closes the connection. Later use is a programming error.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        statements.removeAll()
        sqlite3_close_v2(handle)
    }

    /// Runs one or more SQL statements without parameters (schema, pragmas).
    public func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let code = sqlite3_exec(handle, sql, nil, nil, &message)
        if code != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(code))
            sqlite3_free(message)
            throw SQLiteError(extendedCode: sqlite3_extended_errcode(handle), message: text, sql: sql)
        }
    }

    /// Runs a statement with bound parameters; returns the number of rows it changed.
    @discardableResult
    public func run(_ sql: String, _ parameters: any SQLBindable...) throws -> Int {
        try run(sql, parameters: parameters)
    }

    @discardableResult
    public func run(_ sql: String, parameters: [any SQLBindable]) throws -> Int {
        try runNow(sql, parameters: parameters)
    }

    private func runNow(_ sql: String, parameters: [any SQLBindable]) throws -> Int {
        let statement = try prepared(sql)
        try statement.bind(parameters)
        defer { statement.reset() }
        while try statement.step() {}
        return Int(sqlite3_changes(handle))
    }

    /// Runs a query and maps every row.
    public func query<T>(_ sql: String, _ parameters: any SQLBindable..., row map: (borrowing Row) throws -> T) throws -> [T] {
        try query(sql, parameters: parameters, row: map)
    }

    public func query<T>(_ sql: String, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) throws -> [T] {
        try queryNow(sql, parameters: parameters, row: map)
    }

    private func queryNow<T>(_ sql: String, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) throws -> [T] {
        let statement = try prepared(sql)
        try statement.bind(parameters)
        defer { statement.reset() }
        var results: [T] = []
        while try statement.step() {
            results.append(try map(Row(statement)))
        }
        return results
    }

    /// Runs a query and maps its first row, if any.
    public func queryFirst<T>(_ sql: String, _ parameters: any SQLBindable..., row map: (borrowing Row) throws -> T) throws -> T? {
        try queryFirst(sql, parameters: parameters, row: map)
    }

    public func queryFirst<T>(_ sql: String, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) throws -> T? {
        try queryFirstNow(sql, parameters: parameters, row: map)
    }

    private func queryFirstNow<T>(_ sql: String, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) throws -> T? {
        let statement = try prepared(sql)
        try statement.bind(parameters)
        defer { statement.reset() }
        guard try statement.step() else { return nil }
        return try map(Row(statement))
    }

    /// The rowid of the last row inserted on this connection.
    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// False while a transaction is open. SQLite may end one by itself on some errors (disk full, I/O).
    public var isInTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction: committed when it returns, rolled back when it throws.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            if isInTransaction { try? execute("ROLLBACK") }
            throw error
        }
    }

    /// Runs `body` in a savepoint inside the current transaction: released when it returns,
    /// rolled back to when it throws, so one failing unit does not undo the others.
    /// If `ROLLBACK TO` fails, the unit's writes cannot be told apart from the others':
    /// `unitRollbackFailed` is set and the caller must roll the whole transaction back.
    /// While the body runs, it cannot end or undo the transaction or the savepoint itself
    /// (once `guardTransactionControl()` was called): such statements fail to prepare.
    public func savepoint<T>(_ body: () async throws -> T) async throws -> T {
        try execute("SAVEPOINT unit")
        transactionControl.inUnit = true
        do {
            let result = try await body()
            transactionControl.inUnit = false
            try execute("RELEASE unit")
            return result
        } catch {
            transactionControl.inUnit = false
            if isInTransaction {
                do {
                    try execute("ROLLBACK TO unit")
                    try execute("RELEASE unit")
                } catch {
                    unitRollbackFailed = true
                }
            }
            throw error
        }
    }

    /// Set when a unit's `ROLLBACK TO` failed; see `savepoint`.
    public var unitRollbackFailed = false

    /// Whether a savepoint's body is running; read by the authorizer.
    final class TransactionControl {
        var inUnit = false
    }

    private let transactionControl = TransactionControl()

    /// From now on, statements that begin, commit or roll back a transaction, or release or roll
    /// back a savepoint, are refused while a `savepoint` body runs: a unit of a group commit
    /// cannot commit (or undo) the others' writes.
    public func guardTransactionControl() {
        let context = Unmanaged.passUnretained(transactionControl).toOpaque()
        sqlite3_set_authorizer(handle, { context, action, _, _, _, _ in
            guard let context else { return SQLITE_OK }
            let control = Unmanaged<TransactionControl>.fromOpaque(context).takeUnretainedValue()
            guard control.inUnit else { return SQLITE_OK }
            return action == SQLITE_TRANSACTION || action == SQLITE_SAVEPOINT ? SQLITE_DENY : SQLITE_OK
        }, context)
    }

    /// The WAL's length in frames after the last commit on this connection, as SQLite's WAL hook
    /// tells it once `followWALSize` was called (0 before).
    public var walFrames: Int { Int(walSize.frames) }

    final class WALSize {
        var frames: Int32 = 0
    }

    private let walSize = WALSize()

    /// Takes SQLite's WAL hook to follow the log's length after each commit. The hook is the one
    /// SQLite's automatic checkpoint uses: from now on this connection never checkpoints inside
    /// a COMMIT, and the caller checkpoints (`checkpoint`) when it chooses.
    public func followWALSize() {
        let context = Unmanaged.passUnretained(walSize).toOpaque()
        sqlite3_wal_hook(handle, { context, _, _, frames in
            if let context { Unmanaged<WALSize>.fromOpaque(context).takeUnretainedValue().frames = frames }
            return SQLITE_OK
        }, context)
    }

    /// Copies what it can of the WAL into the database without waiting for readers (PASSIVE);
    /// SQLite writes the log from its start again once all of it was copied and no reader needs
    /// it. Returns the log's frames and how many of them are in the database now.
    @discardableResult
    public func checkpoint() throws -> (frames: Int, copied: Int) {
        var frames: Int32 = 0, copied: Int32 = 0
        let code = sqlite3_wal_checkpoint_v2(handle, nil, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied)
        guard code == SQLITE_OK else { throw lastError(code: code, sql: "wal_checkpoint(PASSIVE)") }
        return (Int(frames), Int(copied))
    }

    func prepared(_ sql: String) throws -> Statement {
        if let statement = statements[sql] { return statement }
        let statement = try Statement(connection: self, sql: sql)
        statements[sql] = statement
        return statement
    }

    func lastError(code: Int32, sql: String?) -> SQLiteError {
        let extended = sqlite3_extended_errcode(handle)
        return SQLiteError(extendedCode: extended != 0 ? extended : code,
                           message: String(cString: sqlite3_errmsg(handle)), sql: sql)
    }
}

// The use cases' view of a connection. The calls do not suspend: a body runs on the thread
// that owns the connection (the engine's executor), so SQLite's blocking calls stay there.
extension Connection: SQLSession {
    @discardableResult
    public func run(_ sql: SQL, parameters: [any SQLBindable]) async throws -> Int {
        try runNow(sql.sqlite, parameters: parameters)
    }

    public func query<T>(_ sql: SQL, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> [T] {
        try queryNow(sql.sqlite, parameters: parameters, row: map)
    }

    public func queryFirst<T>(_ sql: SQL, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> T? {
        try queryFirstNow(sql.sqlite, parameters: parameters, row: map)
    }

    /// One writer commits at a time: commit order is already the order of the writes.
    public func holdUntilCommit(_ keys: [String]) async throws {}

    /// One process uses a SQLite file: nobody else to tell.
    public func notify(_ channel: String, _ payload: String) async throws {}

    /// One writer connection, one transaction at a time.
    public var writesOneAtATime: Bool { true }
}
