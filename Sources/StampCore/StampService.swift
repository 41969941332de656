// The use cases of stampd: each one reads, or writes in one transaction together with the
// events it causes, then wakes the polls of those events' recipients.
import Blocking
import Foundation
import Logging
import Storage

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
    /// The rules a new store starts with (its owner changes them).
    public var newStoreRules = StoreRules.cafe
    public init() {}
}

public final class StampService: Sendable {
    public let database: any Storage
    public let hub: EventHub
    public let hasher: PasswordHasher
    public let clock: any StampClock
    public let settings: StampSettings
    let signIns: SignInGuard
    let sessions = SessionCache()
    /// This process among those sharing the database: its own notifications are not news to it.
    let instance = Identifier.make("ins")
    let logger: Logger

    public init(database: any Storage, hub: EventHub, hasher: PasswordHasher,
                clock: any StampClock = ForwardClock(), settings: StampSettings = StampSettings(),
                logger: Logger = Logger(label: "stampd.core")) {
        self.database = database
        self.hub = hub
        self.hasher = hasher
        self.clock = clock
        self.settings = settings
        self.signIns = SignInGuard(settings: settings)
        self.logger = logger
    }

    /// Reads; storage faults become `unavailable`.
    func read<T: Sendable>(_ body: @escaping @Sendable (any SQLSession) async throws -> T) async throws -> T {
        do {
            return try await database.read(body)
        } catch let error as any StorageFault where error.isStorageUnavailable {
            throw StampError(.unavailable, "the database is unavailable", retryAfter: 1)
        } catch BlockingPoolError.shutDown {
            throw StampError(.unavailable, "the server is shutting down", retryAfter: 1)
        }
    }

    /// Writes in one transaction with the events the body adds to its outbox; right after the
    /// commit, on the committing thread, the recipients' parked polls wake, those at the position
    /// just before with the events in hand. The body may run more than once (an engine that runs
    /// writers concurrently retries a conflict), each time with an empty outbox.
    func write<T: Sendable>(_ body: @escaping @Sendable (any SQLSession, inout Outbox) async throws -> T) async throws -> T {
        let shared = database.isShared
        let hub = self.hub
        do {
            return try await database.write({ session in
                var outbox = Outbox()
                let value = try await body(session, &outbox)
                // One process alone numbers each account densely (SQLite's single writer takes the
                // newest position + 1), so a commit's events directly follow the position before
                // them; positions taken from a shared sequence leave gaps, and polls read.
                let committed = try await outbox.commit(on: session, dense: !shared)
                // The other processes on a shared database hear the positions at the commit. (A
                // database this process has alone skips building the payloads on every write.)
                if shared {
                    for payload in InstanceChannels.eventPayloads(instance: self.instance,
                                                                  newest: committed.mapValues(\.newest)) {
                        try await session.notify(InstanceChannels.events, payload)
                    }
                }
                return Written(value: value, committed: committed)
            }, committed: { written in hub.publish(written.committed) }).value
        } catch let error as any StorageFault where error.isStorageUnavailable {
            logger.warning("write refused by storage", metadata: ["error": "\(error)"])
            throw StampError(.unavailable, "the database cannot take writes right now", retryAfter: 1)
        } catch BlockingPoolError.shutDown {
            throw StampError(.unavailable, "the server is shutting down", retryAfter: 1)
        }
    }

    private struct Written<T: Sendable>: Sendable {
        let value: T
        let committed: [String: EventHub.Committed]
    }

    /// The newest time the database holds (its newest event, ledger row, rate-limit mark and
    /// idempotency key, each found by an index): a wall clock behind it was set back while this
    /// process was stopped, and `ForwardClock.notBefore` starts from it instead.
    public func newestRecordedTime() async throws -> Date? {
        let newest = try await read { session -> Int64? in
            var newest: Int64?
            for sql in ["SELECT at FROM events ORDER BY id DESC LIMIT 1", "SELECT at FROM ledger ORDER BY id DESC LIMIT 1",
                        "SELECT max(at) FROM rate_events", "SELECT max(created_at) FROM idempotency_keys"] {
                if let at = try await session.queryFirst(sql, row: { try $0.optional(0, as: Int64.self) }) ?? nil {
                    newest = max(newest ?? at, at)
                }
            }
            return newest
        }
        return newest.map(Date.init(millis:))
    }

    /// Whether the database takes writes and answers a query.
    public func isReady() async -> Bool {
        guard database.acceptsWrites else { return false }
        return (try? await database.read { try await $0.queryFirst("SELECT 1") { try $0.get(0, as: Int.self) } }) == 1
    }
}

/// The events a write transaction adds. They are written at the end of the transaction, where
/// each recipient's next positions are taken: the engine holds each recipient's key until the
/// commit (`holdUntilCommit`), so that one account's positions commit in increasing order even
/// when writers run concurrently, and a cursor never skips an event that commits late.
struct Outbox: Sendable {
    init() {}

    private struct Pending: Sendable {
        let type: String
        let at: Int64
        let data: String
    }

    private var pending: [String: [Pending]] = [:]

    mutating func emit<Data: Encodable>(_ type: String, to recipients: [String], data: Data, at: Date) throws {
        let json = try StampJSON.encode(data)
        for account in Set(recipients) {
            pending[account, default: []].append(Pending(type: type, at: at.millis, data: json))
        }
    }

    /// SQLite, one writer at a time: the account's newest position (or its pruned mark) + 1.
    /// PostgreSQL: the next number of events_seq, taken while the account's lock is held.
    static let insertEvent = SQL(
        sqlite: """
            INSERT INTO events (type, at, data, account_id, seq)
            SELECT ?, ?, ?, a.id, max(coalesce((SELECT max(seq) FROM events WHERE account_id = a.id), 0),
                                      coalesce((SELECT pruned_through FROM event_positions WHERE account_id = a.id), 0)) + 1
            FROM (SELECT ? AS id) AS a
            RETURNING seq
            """,
        postgres: "INSERT INTO events (type, at, data, account_id, seq) VALUES (?, ?, ?, ?, nextval('events_seq')) RETURNING seq")

    /// Writes the events; returns what was written per recipient, to publish after the commit:
    /// with `dense` positions, the events themselves and the position before them.
    func commit(on session: any SQLSession, dense: Bool) async throws -> [String: EventHub.Committed] {
        guard !pending.isEmpty else { return [:] }
        let accounts = pending.keys.sorted()
        try await session.holdUntilCommit(accounts.map { "events:" + $0 })
        var written: [String: EventHub.Committed] = [:]
        for account in accounts {
            // The events are kept only where a poll can be answered with them.
            var events: [Event] = []
            var first: Int64 = 0, newest: Int64 = 0
            for event in pending[account]! {
                guard let position = try await session.queryFirst(Self.insertEvent, event.type, event.at, event.data, account,
                                                                  row: { try $0.get(0, as: Int64.self) }) else {
                    throw StorageError(.unavailable, "no event position was returned for \(account)")
                }
                if first == 0 { first = position }
                newest = position
                if dense { events.append(Event(id: position, type: event.type, at: Date(millis: event.at), data: event.data)) }
            }
            written[account] = dense ? EventHub.Committed(newest: newest, previous: first - 1, events: events)
                                     : EventHub.Committed(newest: newest)
        }
        return written
    }
}
