// The values a statement binds and a row returns, the same for every engine.

/// A stored value: one of the five kinds both engines share (SQLite's storage classes;
/// PostgreSQL's bigint, double precision, text and bytea, and NULL).
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
    /// Reads from a non-NULL column value; throws `StorageError.mismatch` when the type does not fit.
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

private func mismatch(_ value: SQLValue, _ type: String) -> StorageError {
    StorageError(.mismatch, "cannot read \(value) as \(type)")
}

/// Where a row's columns come from: an engine's cursor or a row it already holds.
public protocol RowSource: AnyObject {
    var columnCount: Int { get }
    func value(at index: Int) -> SQLValue
}

/// One row of a result, valid only inside the closure that maps it.
public struct Row: ~Copyable {
    let source: any RowSource

    public init(_ source: any RowSource) { self.source = source }

    public var columnCount: Int { source.columnCount }

    public func value(at index: Int) -> SQLValue { source.value(at: index) }

    /// Reads a column that must not be NULL.
    public func get<T: SQLColumnReadable>(_ index: Int, as type: T.Type = T.self) throws -> T {
        let value = source.value(at: index)
        if case .null = value {
            throw StorageError(.mismatch, "column \(index) is NULL, expected \(T.self)")
        }
        return try T.read(from: value)
    }

    /// Reads a column that may be NULL.
    public func optional<T: SQLColumnReadable>(_ index: Int, as type: T.Type = T.self) throws -> T? {
        let value = source.value(at: index)
        if case .null = value { return nil }
        return try T.read(from: value)
    }
}
