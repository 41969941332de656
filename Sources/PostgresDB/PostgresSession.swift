// A use case's statements on one pooled connection.
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Storage

final class PostgresSession: SQLSession {
    let connection: PostgresConnection
    let texts: StatementTexts
    let logger: Logger
    let scope: DeploymentScope

    init(connection: PostgresConnection, texts: StatementTexts, logger: Logger, scope: DeploymentScope) {
        self.connection = connection
        self.texts = texts
        self.logger = logger
        self.scope = scope
    }

    @discardableResult
    func run(_ sql: SQL, parameters: [any SQLBindable]) async throws -> Int {
        let result = try await execute(sql, parameters)
        return result.metadata.rows ?? 0
    }

    func query<T>(_ sql: SQL, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> [T] {
        let result = try await execute(sql, parameters)
        var mapped: [T] = []
        mapped.reserveCapacity(result.rows.count)
        for row in result.rows {
            mapped.append(try map(Row(CellRow(row))))
        }
        return mapped
    }

    func queryFirst<T>(_ sql: SQL, parameters: [any SQLBindable], row map: (borrowing Row) throws -> T) async throws -> T? {
        let result = try await execute(sql, parameters)
        guard let first = result.rows.first else { return nil }
        return try map(Row(CellRow(first)))
    }

    /// Transaction-scoped advisory locks in the space of class 1 (class 2 is housekeeping's,
    /// 3 the migrations'), sorted, so two writers never wait for each other.
    /// Many connections write at once, under snapshot isolation.
    var writesOneAtATime: Bool { false }

    func holdUntilCommit(_ keys: [String]) async throws {
        for key in Set(keys).sorted() {
            try await run("SELECT pg_advisory_xact_lock(1, hashtext(?))", scope.lockKey(key))
        }
    }

    /// `pg_notify` in the transaction: PostgreSQL delivers it to the listeners at commit.
    func notify(_ channel: String, _ payload: String) async throws {
        try await run("SELECT pg_notify(?, ?)", scope.channel(channel), payload)
    }

    /// Runs text without parameters, several statements allowed (transaction control, migrations).
    func simple(_ text: String) async throws {
        _ = try await connection.simpleQuery(text).get()
    }

    private func execute(_ sql: SQL, _ parameters: [any SQLBindable]) async throws -> PostgresQueryResult {
        let binds = parameters.map { parameter -> PostgresData in
            switch parameter.sqlValue {
            case .null: return .null
            case .integer(let value): return PostgresData(int64: value)
            case .real(let value): return PostgresData(double: value)
            case .text(let value): return PostgresData(string: value)
            case .blob(let value): return PostgresData(bytes: value)
            }
        }
        return try await connection.query(texts.text(sql), binds).get()
    }
}

/// A result row's cells as the values both engines share.
final class CellRow: RowSource {
    private let cells: PostgresRandomAccessRow

    init(_ row: PostgresRow) {
        cells = row.makeRandomAccess()
    }

    var columnCount: Int { cells.count }

    func value(at index: Int) -> SQLValue {
        guard index >= 0 && index < cells.count else { return .null }
        let cell = cells[index]
        guard cell.bytes != nil else { return .null }
        do {
            switch cell.dataType {
            case .int8, .int4, .int2, .oid:
                return .integer(try cell.decode(Int64.self))
            case .bool:
                return .integer(try cell.decode(Bool.self) ? 1 : 0)
            case .float8, .float4:
                return .real(try cell.decode(Double.self))
            case .numeric:
                // sum() of bigint is numeric: whole numbers come back as integers.
                let decimal = try cell.decode(Decimal.self)
                let number = NSDecimalNumber(decimal: decimal)
                if decimal == Decimal(number.int64Value) { return .integer(number.int64Value) }
                return .real(number.doubleValue)
            case .bytea:
                var buffer = cell.bytes!
                return .blob(buffer.readBytes(length: buffer.readableBytes) ?? [])
            default:
                return .text(try cell.decode(String.self))
            }
        } catch {
            return .text(String(describing: cell))
        }
    }
}
