// Statement text for both engines: one text where the dialects agree, two side by side where not.

/// The text of a statement, with `?` for each parameter in both dialects (the PostgreSQL engine
/// numbers them). A string literal is text both engines run as it is.
public struct SQL: Hashable, Sendable, ExpressibleByStringLiteral {
    public let sqlite: String
    public let postgres: String

    /// Text that both engines run as it is.
    public init(_ shared: String) {
        self.sqlite = shared
        self.postgres = shared
    }

    /// Text that differs: each engine runs its own.
    public init(sqlite: String, postgres: String) {
        self.sqlite = sqlite
        self.postgres = postgres
    }

    public init(stringLiteral value: String) {
        self.init(value)
    }

    public static func + (lhs: SQL, rhs: String) -> SQL {
        SQL(sqlite: lhs.sqlite + rhs, postgres: lhs.postgres + rhs)
    }
}
