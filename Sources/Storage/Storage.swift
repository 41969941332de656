// The storage interface the use cases are written against: reads, and write transactions that
// commit durably before they return. The SQLite and PostgreSQL engines implement it.

/// What a read or write body runs statements on. Used only inside that body, by one task.
public protocol SQLSession: AnyObject {
    /// Runs a statement with bound parameters; returns the number of rows it changed.
    @discardableResult
    func run(_ sql: SQL, parameters: [any SQLBindable]) async throws -> Int

    /// Runs a query and maps every row.
    func query<T>(_ sql: SQL, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> [T]

    /// Runs a query and maps its first row, if any.
    func queryFirst<T>(_ sql: SQL, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> T?

    /// In a write: takes a lock per key, held until the transaction ends, so that writers naming
    /// the same key commit one after the other, in the order they took it. Takes them in sorted
    /// order (two writers never wait for each other). Nothing to do for an engine that commits
    /// one writer at a time.
    func holdUntilCommit(_ keys: [String]) async throws

    /// In a write: sends `payload` on `channel` to every process that listens to it on this
    /// database, once the transaction commits (nothing if it rolls back). Nothing to do for an
    /// engine that only one process uses.
    func notify(_ channel: String, _ payload: String) async throws

    /// True when the engine commits one write transaction at a time, so two writes never
    /// overlap: a row written only to make concurrent writers see each other (a scope's claim)
    /// can be left out.
    var writesOneAtATime: Bool { get }
}

extension SQLSession {
    @discardableResult
    public func run(_ sql: SQL, _ parameters: any SQLBindable...) async throws -> Int {
        try await run(sql, parameters: parameters)
    }

    @discardableResult
    public func run(_ sql: String, _ parameters: any SQLBindable...) async throws -> Int {
        try await run(SQL(sql), parameters: parameters)
    }

    @discardableResult
    public func run(_ sql: String, parameters: [any SQLBindable]) async throws -> Int {
        try await run(SQL(sql), parameters: parameters)
    }

    public func query<T>(_ sql: SQL, _ parameters: any SQLBindable..., row map: (borrowing Row) throws -> T) async throws -> [T] {
        try await query(sql, parameters: parameters, row: map)
    }

    public func query<T>(_ sql: String, _ parameters: any SQLBindable..., row map: (borrowing Row) throws -> T) async throws -> [T] {
        try await query(SQL(sql), parameters: parameters, row: map)
    }

    public func query<T>(_ sql: String, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> [T] {
        try await query(SQL(sql), parameters: parameters, row: map)
    }

    public func queryFirst<T>(_ sql: SQL, _ parameters: any SQLBindable..., row map: (borrowing Row) throws -> T) async throws -> T? {
        try await queryFirst(sql, parameters: parameters, row: map)
    }

    public func queryFirst<T>(_ sql: String, _ parameters: any SQLBindable..., row map: (borrowing Row) throws -> T) async throws -> T? {
        try await queryFirst(SQL(sql), parameters: parameters, row: map)
    }

    public func queryFirst<T>(_ sql: String, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> T? {
        try await queryFirst(SQL(sql), parameters: parameters, row: map)
    }
}

/// A database the use cases read and write.
///
/// Every write body runs as if alone (serializable): the engine either runs writes one at a
/// time (SQLite's single writer) or detects a conflict and runs the body again, so a body must
/// have no effect outside the database and may run more than once. It returns only once its
/// transaction is durable.
public protocol Storage: Sendable {
    /// `sqlite` or `postgres`.
    var engine: String { get }
    /// Where the data is, for logs and `/readyz` (a path, or host, port and database; no password).
    var location: String { get }

    func read<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T) async throws -> T

    /// Runs `body` in a write transaction; once it is durable, runs `committed` with the body's
    /// value and then returns it. `committed` runs where the commit finished (the writer's thread)
    /// before the caller resumes, so what the commit makes known (the polls its events wake) waits
    /// for no other thread; it must be quick and must not block.
    @discardableResult
    func write<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T,
                            committed: @escaping @Sendable (T) -> Void) async throws -> T

    /// Checks the applied migrations of `folder` (this engine's own) and applies the new ones.
    @discardableResult
    func migrate(folder: String) async throws -> [Migration]

    /// Finishes what is queued and releases the connections; unusable afterwards.
    func close() async

    /// True when other processes may write this database, so that what a process remembers of
    /// it (the newest event per account, valid sessions) must follow their notifications.
    var isShared: Bool { get }

    /// Whether the engine still takes writes: false once it can no longer trust its own files
    /// (a failed sync), until the process restarts.
    var acceptsWrites: Bool { get }

    /// Delivers what other processes notify on `channels` to `handler`, until the calling task is
    /// cancelled, reconnecting by itself. `.listening` says notifications flow from now on, and
    /// anything sent while they did not may have been missed; `.interrupted` says they stopped.
    /// Returns at once for an engine that only one process uses.
    func listen(to channels: [String], _ handler: @escaping @Sendable (DatabaseNotice) -> Void) async

    /// Runs `body` unless another process runs one of the same `name` now; returns whether it ran.
    /// The claim ends with the body, or with the process. One process alone always runs it.
    @discardableResult
    func exclusively(_ name: String, _ body: @escaping @Sendable () async throws -> Void) async throws -> Bool
}

extension Storage {
    public var acceptsWrites: Bool { true }

    @discardableResult
    public func write<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T) async throws -> T {
        try await write(body, committed: { _ in })
    }
}

/// What a listener hears.
public enum DatabaseNotice: Sendable, Equatable {
    case listening
    case message(channel: String, payload: String)
    case interrupted
}
