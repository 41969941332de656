// The use cases of stampd: each one reads, or writes in one transaction together with the
// events it causes, then wakes the polls of those events' recipients.
import Blocking
import Foundation
import Logging
import SQLiteDB

public struct StampSettings: Sendable {
    public var tokenLifetime: TimeInterval = 30 * 24 * 3600
    public var defaultRequestTTL: Int = 600
    public var idempotencyWindow: TimeInterval = 24 * 3600
    public var eventRetention: TimeInterval = 7 * 24 * 3600
    /// Wrong passwords allowed per (client address, login) within `loginFailureWindow` before
    /// that pair waits (429); each further lock doubles, up to `loginLockCeiling`.
    public var loginFailureLimit: Int = 5
    public var loginFailureWindow: TimeInterval = 15 * 60
    public var loginLockCeiling: TimeInterval = 6 * 3600
    /// Password checks (sign-ins, sign-ups, password changes) one client address may start per
    /// minute, and may have waiting or running at once.
    public var passwordChecksPerAddressPerMinute: Int = 30
    public var passwordChecksInFlightPerAddress: Int = 4
    /// Accounts one client address may create per hour.
    public var signUpsPerAddressPerHour: Int = 20
    /// What one party may repeat.
    public var limits = PartyLimits()
    public init() {}
}

public final class StampService: Sendable {
    public let database: Database
    public let hub: EventHub
    public let hasher: PasswordHasher
    public let clock: any StampClock
    public let settings: StampSettings
    let signIns: SignInGuard
    let sessions = SessionCache()
    let logger: Logger

    public init(database: Database, hub: EventHub, hasher: PasswordHasher,
                clock: any StampClock = SystemClock(), settings: StampSettings = StampSettings(),
                logger: Logger = Logger(label: "stampd.core")) {
        self.database = database
        self.hub = hub
        self.hasher = hasher
        self.clock = clock
        self.settings = settings
        self.signIns = SignInGuard(settings: settings)
        self.logger = logger
    }

    /// Reads through a reader connection; storage faults become `unavailable`.
    func read<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws -> T {
        do {
            return try await database.read(body)
        } catch let error as SQLiteError where error.isStorageUnavailable {
            throw StampError(.unavailable, "the database is unavailable", retryAfter: 1)
        } catch BlockingPoolError.shutDown {
            throw StampError(.unavailable, "the server is shutting down", retryAfter: 1)
        }
    }

    /// Writes in one transaction with the events the body adds to its outbox; once it is
    /// committed, the recipients' parked polls wake.
    func write<T: Sendable>(_ body: @escaping @Sendable (Connection, inout Outbox) throws -> T) async throws -> T {
        let (value, outbox): (T, Outbox)
        do {
            (value, outbox) = try await database.write { connection in
                var outbox = Outbox()
                let value = try body(connection, &outbox)
                return (value, outbox)
            }
        } catch let error as SQLiteError where error.isStorageUnavailable {
            logger.warning("write refused by storage", metadata: ["error": "\(error)"])
            throw StampError(.unavailable, "the database cannot take writes right now", retryAfter: 1)
        } catch BlockingPoolError.shutDown {
            throw StampError(.unavailable, "the server is shutting down", retryAfter: 1)
        }
        hub.publish(outbox.newest)
        return value
    }

    /// Whether the database answers a query.
    public func isReady() async -> Bool {
        (try? await database.read { try $0.queryFirst("SELECT 1") { try $0.get(0, as: Int.self) } }) == 1
    }
}

/// The events a write transaction adds, to publish once it commits.
struct Outbox: Sendable {
    init() {}
    private(set) var newest: [String: Int64] = [:]

    mutating func emit<Data: Encodable>(_ type: String, to recipients: [String], data: Data, at: Date,
                                        on connection: Connection) throws {
        let json = try StampJSON.encode(data)
        for account in Set(recipients) {
            try connection.run("INSERT INTO events (account_id, type, at, data) VALUES (?, ?, ?, ?)",
                               account, type, at.millis, json)
            newest[account] = connection.lastInsertRowID
        }
    }
}
