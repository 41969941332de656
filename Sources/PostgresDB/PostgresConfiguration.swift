// Where the PostgreSQL engine connects, read from a `postgres://` URL and the pool settings.
import Foundation

public struct PostgresConfiguration: Sendable, Equatable {
    public enum TLSMode: String, Sendable, CaseIterable {
        /// Plain TCP.
        case disable
        /// TLS when the server offers it, plain otherwise (PostgreSQL's own default).
        case prefer
        /// TLS or no connection; the server's certificate is verified against the system's roots.
        case require
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// The most connections the pool opens.
    public var poolSize: Int
    /// How long one connection attempt may take.
    public var connectTimeout: Duration
    /// How long one read, or one write transaction, may take on its connection before the
    /// connection is closed and the caller answered 503: a connection that stopped answering
    /// (seen after a server restart) would otherwise hold its caller for ever.
    public var queryTimeout: Duration
    /// The schema to keep the tables in (the connection's `search_path`); nil is the server's
    /// default (`public`). From `?search_path=` in the URL.
    public var schema: String?
    /// How many times a write that conflicted with a concurrent one (serialization failure,
    /// deadlock) runs again before the caller gets 503.
    public var conflictRetries: Int

    /// True for the URLs that select PostgreSQL: `postgres://` and `postgresql://`.
    public static func isPostgresURL(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    /// Reads `postgres://user:password@host:port/database?sslmode=disable|prefer|require`.
    /// A `sslmode` in the URL wins over `tls`.
    public init(url text: String, tls: TLSMode = .prefer, poolSize: Int = 20,
                connectTimeout: Duration = .seconds(10), queryTimeout: Duration = .seconds(10),
                conflictRetries: Int = 10) throws {
        guard Self.isPostgresURL(text), let url = URLComponents(string: text) else {
            throw PostgresConfigurationError("not a postgres:// URL")
        }
        guard let host = url.host, !host.isEmpty else { throw PostgresConfigurationError("the URL names no host") }
        guard let user = url.user, !user.isEmpty else { throw PostgresConfigurationError("the URL names no user") }
        let name = String(url.path.drop { $0 == "/" })
        guard !name.isEmpty else { throw PostgresConfigurationError("the URL names no database") }
        guard poolSize >= 1 else { throw PostgresConfigurationError("the pool needs at least one connection") }
        self.host = host
        self.port = url.port ?? 5432
        self.username = user.removingPercentEncoding ?? user
        self.password = url.password.map { $0.removingPercentEncoding ?? $0 }
        self.database = name.removingPercentEncoding ?? name
        self.poolSize = poolSize
        self.connectTimeout = connectTimeout
        self.queryTimeout = queryTimeout
        self.conflictRetries = conflictRetries
        self.schema = url.queryItems?.first(where: { $0.name == "search_path" })?.value
        if let mode = url.queryItems?.first(where: { $0.name == "sslmode" })?.value {
            guard let parsed = TLSMode(rawValue: mode) else {
                throw PostgresConfigurationError("sslmode \(mode) is not one of disable, prefer, require")
            }
            self.tls = parsed
        } else {
            self.tls = tls
        }
    }

    /// Host, port and database, without the password: for logs and errors.
    public var location: String { "postgres://\(username)@\(host):\(port)/\(database)" }
}

public struct PostgresConfigurationError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
