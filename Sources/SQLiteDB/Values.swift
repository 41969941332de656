// Typed binding of Swift values to statement parameters, and typed reading of columns.
import CSQLite

/// A value SQLite stores: one of its five storage classes.
public enum SQLValue: Sendable, Equatable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
}

/// A Swift value that can be bound to a statement parameter.
public protocol SQLBindable: Sendable {
    var sqlValue: SQLValue { get }
}

/// A Swift value that can be read from a result column.
public protocol SQLColumnReadable {
    /// Reads from a non-NULL column value; throws a `.mismatch` error when the type does not fit.
    static func read(from value: SQLValue) throws -> Self
}

extension SQLValue: SQLBindable {
    public var sqlValue: SQLValue { self }
}

extension Int64: SQLBindable, SQLColumnReadable {
    public var sqlValue: SQLValue { .integer(self) }
    public static func read(from value: SQLValue) throws -> Int64 {
        guard case .integer(let v) = value else { throw mismatch(value, "Int64") }
        return v
    }
}

extension Int: SQLBindable, SQLColumnReadable {
    public var sqlValue: SQLValue { .integer(Int64(self)) }
    public static func read(from value: SQLValue) throws -> Int {
        Int(try Int64.read(from: value))
    }
}

extension Bool: SQLBindable, SQLColumnReadable {
    public var sqlValue: SQLValue { .integer(self ? 1 : 0) }
    public static func read(from value: SQLValue) throws -> Bool {
        try Int64.read(from: value) != 0
    }
}

extension Double: SQLBindable, SQLColumnReadable {
    public var sqlValue: SQLValue { .real(self) }
    public static func read(from value: SQLValue) throws -> Double {
        switch value {
        case .real(let v): return v
        case .integer(let v): return Double(v)
        default: throw mismatch(value, "Double")
        }
    }
}

extension String: SQLBindable, SQLColumnReadable {
    public var sqlValue: SQLValue { .text(self) }
    public static func read(from value: SQLValue) throws -> String {
        guard case .text(let v) = value else { throw mismatch(value, "String") }
        return v
    }
}

extension Array: SQLBindable where Element == UInt8 {
    public var sqlValue: SQLValue { .blob(self) }
}

extension Array: SQLColumnReadable where Element == UInt8 {
    public static func read(from value: SQLValue) throws -> [UInt8] {
        switch value {
        case .blob(let v): return v
        case .text(let v): return Array(v.utf8)
        default: throw mismatch(value, "[UInt8]")
        }
    }
}

extension Optional: SQLBindable where Wrapped: SQLBindable {
    public var sqlValue: SQLValue { self?.sqlValue ?? .null }
}

private func mismatch(_ value: SQLValue, _ type: String) -> SQLiteError {
    SQLiteError(extendedCode: SQLITE_MISMATCH, message: "cannot read \(value) as \(type)")
}

/// The current row of a stepping statement. Valid only until the next step.
public struct Row: ~Copyable {
    let statement: OpaquePointer

    public var columnCount: Int32 { sqlite3_column_count(statement) }

    public func value(at index: Int32) -> SQLValue {
        switch sqlite3_column_type(statement, index) {
        case SQLITE_NULL:
            return .null
        case SQLITE_INTEGER:
            return .integer(sqlite3_column_int64(statement, index))
        case SQLITE_FLOAT:
            return .real(sqlite3_column_double(statement, index))
        case SQLITE_BLOB:
            let count = Int(sqlite3_column_bytes(statement, index))
            guard count > 0, let base = sqlite3_column_blob(statement, index) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: base, count: count)))
        default:
            let count = Int(sqlite3_column_bytes(statement, index))
            guard let base = sqlite3_column_text(statement, index) else { return .text("") }
            return .text(String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self))
        }
    }

    /// Reads a column that must not be NULL.
    public func get<T: SQLColumnReadable>(_ index: Int32, as type: T.Type = T.self) throws -> T {
        let value = value(at: index)
        if case .null = value {
            throw SQLiteError(extendedCode: SQLITE_MISMATCH, message: "column \(index) is NULL, expected \(T.self)")
        }
        return try T.read(from: value)
    }

    /// Reads a column that may be NULL.
    public func optional<T: SQLColumnReadable>(_ index: Int32, as type: T.Type = T.self) throws -> T? {
        let value = value(at: index)
        if case .null = value { return nil }
        return try T.read(from: value)
    }
}
