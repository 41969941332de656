// Errors from SQLite, catchable by result code.
import CSQLite
import Storage

/// A SQLite result code. Compare with the primary codes, e.g. `error.code == .constraint`.
public struct ResultCode: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let error = ResultCode(rawValue: SQLITE_ERROR)
    public static let busy = ResultCode(rawValue: SQLITE_BUSY)
    public static let locked = ResultCode(rawValue: SQLITE_LOCKED)
    public static let readOnly = ResultCode(rawValue: SQLITE_READONLY)
    public static let ioError = ResultCode(rawValue: SQLITE_IOERR)
    public static let corrupt = ResultCode(rawValue: SQLITE_CORRUPT)
    public static let full = ResultCode(rawValue: SQLITE_FULL)
    public static let cantOpen = ResultCode(rawValue: SQLITE_CANTOPEN)
    public static let constraint = ResultCode(rawValue: SQLITE_CONSTRAINT)
    public static let mismatch = ResultCode(rawValue: SQLITE_MISMATCH)
    public static let misuse = ResultCode(rawValue: SQLITE_MISUSE)
    public static let range = ResultCode(rawValue: SQLITE_RANGE)
    public static let notADatabase = ResultCode(rawValue: SQLITE_NOTADB)

    public var description: String { String(cString: sqlite3_errstr(rawValue)) }
}

public struct SQLiteError: StorageFault, Sendable, CustomStringConvertible {
    /// The primary result code (extended code with its high bits removed).
    public var code: ResultCode { ResultCode(rawValue: extendedCode & 0xff) }
    /// The extended result code, e.g. SQLITE_CONSTRAINT_UNIQUE.
    public let extendedCode: Int32
    public let message: String
    public let sql: String?

    public init(extendedCode: Int32, message: String, sql: String? = nil) {
        self.extendedCode = extendedCode
        self.message = message
        self.sql = sql
    }

    /// A UNIQUE or PRIMARY KEY constraint was violated.
    public var isUniqueViolation: Bool {
        extendedCode == Self.constraintUnique || extendedCode == Self.constraintPrimaryKey
    }

    /// The storage cannot take writes right now (disk full, read-only, locked, I/O error);
    /// the request may succeed later.
    public var isStorageUnavailable: Bool {
        [.busy, .locked, .readOnly, .ioError, .full, .cantOpen].contains(code)
    }

    // Extended codes are C macro expressions, which Swift does not import.
    static let constraintUnique = SQLITE_CONSTRAINT | (8 << 8)
    static let constraintPrimaryKey = SQLITE_CONSTRAINT | (6 << 8)

    public var description: String {
        "SQLite error \(extendedCode) (\(code)): \(message)" + (sql.map { " in \($0)" } ?? "")
    }
}
