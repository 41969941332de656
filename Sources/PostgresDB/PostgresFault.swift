// PostgreSQL's errors as the storage layer's kinds, by SQLSTATE.
import NIOCore
import NIOPosix
import PostgresNIO
import Storage

public struct PostgresFault: StorageFault, Sendable, CustomStringConvertible {
    /// The SQLSTATE, when the server answered with an error; nil when the connection failed.
    public let sqlState: String?
    public let message: String

    public var isUniqueViolation: Bool { sqlState == "23505" }

    /// A serialization failure or a deadlock: nothing committed, the write may run again.
    public var isConflict: Bool { sqlState == "40001" || sqlState == "40P01" }

    public var isStorageUnavailable: Bool {
        guard let sqlState else { return true }  // no answer: connection refused, lost, pool closed
        // 08 connection, 53 insufficient resources, 57 operator intervention (shutdown, restart),
        // 58 system error; 25006 a read-only standby; conflicts once retries ran out.
        return ["08", "53", "57", "58"].contains(String(sqlState.prefix(2))) || sqlState == "25006" || isConflict
    }

    /// The connection is gone (closed, reset, or ended by the server's shutdown or restart):
    /// whatever it was running did not commit unless it was the COMMIT itself. (Without an
    /// SQLSTATE, only when the connection is also seen closed: `LostConnection.wrapping`.)
    var isConnectionLost: Bool {
        guard let sqlState else { return true }
        // 08 connection exceptions; 57P01/57P02 the server ending sessions (shutdown, crash);
        // 57P03 the server not yet taking connections.
        return sqlState.hasPrefix("08") || ["57P01", "57P02", "57P03"].contains(sqlState)
    }

    public var description: String {
        (sqlState.map { "PostgreSQL error \($0): " } ?? "PostgreSQL unreachable: ") + message
    }

    /// The error as a fault; errors that are not PostgreSQL's (a use case's own) pass unchanged.
    static func classify(_ error: any Error) -> any Error {
        switch error {
        case let fault as PostgresFault:
            return fault
        case let error as PSQLError:
            if let state = error.serverInfo?[.sqlState] {
                return PostgresFault(sqlState: state, message: error.serverInfo?[.message] ?? "\(error)")
            }
            return PostgresFault(sqlState: nil, message: "\(error.code)")
        case let error as PostgresError:
            switch error {
            case .server(let server):
                return PostgresFault(sqlState: server.fields[.sqlState], message: server.fields[.message] ?? "\(error)")
            case .connectionClosed, .protocol:
                return PostgresFault(sqlState: nil, message: "\(error)")
            }
        case is CancellationError:
            return error
        case is IOError, is ChannelError, is NIOConnectionError:
            // The network: refused, reset, timed out.
            return PostgresFault(sqlState: nil, message: "\(error)")
        default:
            return error
        }
    }
}
