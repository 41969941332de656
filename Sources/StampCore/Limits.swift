// Limits on what one party can repeat: each is counted in the database, in the transaction of
// the write it limits, so it holds across restarts and however many requests arrive at once
// (writes are serialised by the writer).
import Foundation
import Storage

/// The numbers behind every per-party limit; each refusal is 429 with `Retry-After`.
public struct PartyLimits: Sendable {
    /// Walk-in cards a store may register per day.
    public var walkInsPerStorePerDay = 200
    /// Claim codes a store may issue per hour.
    public var claimCodesPerStorePerHour = 60
    /// Wrong claim codes tried for one phone number per day, across codes and stores: a new code
    /// does not reset it.
    public var claimFailuresPerPhonePerDay = 10
    /// Wrong tries of one claim code before it is void.
    public var claimAttemptsPerCode = 5
    /// Member codes a customer may show per hour.
    public var memberCodesPerAccountPerHour = 30
    /// Unknown or expired member codes a store may enter per hour.
    public var memberCodeMissesPerStorePerHour = 20
    /// Direct stamp changes (stamps and corrections) a store may make per hour.
    public var directStampsPerStorePerHour = 600
    /// Stores one owner may have.
    public var storesPerOwner = 20
    /// Store changes (PATCH) per store per hour.
    public var storeChangesPerHour = 120
    /// Pending requests one customer may have at one store at once.
    public var pendingRequestsPerCustomerPerStore = 3
    /// Requests one customer may make at one store per hour.
    public var requestsPerCustomerPerStorePerHour = 30
    /// Gifts (and gift attempts to logins that do not exist) a customer may make per hour.
    public var giftsPerHour = 10
    /// Wrong counter codes one customer may send at one store per hour.
    public var counterCodeMissesPerCustomerPerStorePerHour = 5
    /// Staff one store may have (each member's devices get the store's events).
    public var staffPerStore = 20
    /// Staff invitations a store may make per day.
    public var invitationsPerStorePerDay = 20
    /// Unknown or expired invitation codes one account may enter per hour.
    public var invitationMissesPerAccountPerHour = 10
    public init() {}
}

extension StampService {
    /// Refuses (429) when `scope` already counted `limit` actions within `window`; otherwise
    /// counts this one. A refusal counts nothing.
    static func countAction(_ scope: String, limit: Int, window: TimeInterval, what: String, now: Date,
                            on connection: any SQLSession) async throws {
        if let wait = try await secondsUntilAllowed(scope, limit: limit, window: window, now: now, on: connection) {
            throw StampError(.rateLimited, "at most \(what); try again in \(wait) s", retryAfter: wait)
        }
        try await recordAction(scope, now: now, on: connection)
    }

    /// Seconds until `scope` may act again, or nil when it may act now.
    static func secondsUntilAllowed(_ scope: String, limit: Int, window: TimeInterval, now: Date,
                                    on connection: any SQLSession) async throws -> Int? {
        try await claim(scope, now: now, on: connection)
        let since = now.millis - Int64(window * 1000)
        guard let (count, oldest) = try await connection.queryFirst(
            "SELECT count(*), min(at) FROM rate_events WHERE scope = ? AND at > ?", scope, since, row: {
                (try $0.get(0, as: Int.self), try $0.optional(1, as: Int64.self))
            }), count >= limit else { return nil }
        let reopens = (oldest ?? now.millis) + Int64(window * 1000)
        return max(1, Int((reopens - now.millis + 999) / 1000))
    }

    /// Counts an action of `scope`. Call it after `secondsUntilAllowed` for the same scope in the
    /// same transaction, which claimed the scope (every caller checks before it counts).
    static func recordAction(_ scope: String, now: Date, on connection: any SQLSession) async throws {
        try await connection.run("INSERT INTO rate_events (scope, at) VALUES (?, ?)", scope, now.millis)
    }

    /// Marks `scope` as written by this transaction, before the write counts or checks anything
    /// in it. Two concurrent writers that claim one scope update one row, so under snapshot
    /// isolation (PostgreSQL) the later cannot commit a decision taken without seeing the
    /// earlier: it is refused and runs again, and then sees it. Without this, two requests at
    /// once could each count 2 of a limit of 3 and both go ahead. On SQLite one writer runs at a
    /// time and nothing is written: the row's page would be one more 4 KiB written to the WAL,
    /// and again at the checkpoint, on every request.
    static func claim(_ scope: String, now: Date, on connection: any SQLSession) async throws {
        guard !connection.writesOneAtATime else { return }
        try await connection.run("""
            INSERT INTO scope_claims (scope, at) VALUES (?, ?)
            ON CONFLICT (scope) DO UPDATE SET at = excluded.at
            """, scope, now.millis)
    }
}
