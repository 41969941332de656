// Paces password checks per client address, so that nobody can guess a password quickly, flood
// the hashing threads, or lock another person out of their account.
//
// The policy: a (client address, login) pair may try `loginFailureLimit` wrong passwords per
// `loginFailureWindow`; then that pair alone waits, and each further lock doubles (up to
// `loginLockCeiling`). The attempt is reserved before the hash runs, so concurrent tries count
// too. Locks never follow a login to other addresses: a stranger's wrong passwords do not keep
// the account's owner out. Each address may also start only so many password checks a minute
// and have only a few waiting at once, and create only so many accounts an hour.
//
// Where each count lives: a pair's wrong passwords and lock are rows of `login_locks` (a
// `LoginLock`), so every instance on one database and every restart honour the same lock. The
// per-address allowances (checks a minute, sign-ups an hour, checks at once) are kept here in
// memory, bounded, per instance: they pace this instance's hashing line and cost nothing under a
// flood. Counted in the database instead, every sign-in from one busy address (a NAT, a proxy)
// would update one row, and concurrent ones would conflict; so N instances allow an address N
// times the allowance, and an operator running N sets each to the total divided by N. A pair can
// have at most `loginFailureLimit` checks running on each instance.
import Crypto
import Foundation
import Storage
import Synchronization

/// The wrong passwords and lock of one (client address, login) pair, as `login_locks` keeps it.
struct LoginLock: Sendable {
    var failures = 0
    var windowStart: Date
    var locks = 0
    var lockedUntil: Date?

    /// The row's key: a digest of the address and the login's key, never the two themselves.
    static func pair(address: String, loginKey: String) -> [UInt8] {
        Array(SHA256.hash(data: Array((address + "\u{0}" + loginKey).utf8)))
    }

    /// The state as of `now`: a window that has ended starts again, and locks stop doubling
    /// once the pair has kept quiet for the longest lock.
    func current(now: Date, settings: StampSettings) -> LoginLock {
        var lock = self
        if now.timeIntervalSince(lock.windowStart) >= settings.loginFailureWindow {
            lock.windowStart = now
            lock.failures = 0
        }
        if let until = lock.lockedUntil, now.timeIntervalSince(until) >= settings.loginLockCeiling {
            lock.locks = 0
            lock.lockedUntil = nil
        }
        return lock
    }

    /// Why a check must not run now, with `running` checks of the pair in flight here (this one
    /// included); nil when it may.
    func refusal(running: Int, now: Date, settings: StampSettings) -> StampError? {
        if let until = lockedUntil, until > now {
            let wait = Int(until.timeIntervalSince(now).rounded(.up))
            return StampError(.rateLimited, "too many wrong passwords for this login from here; try again in \(wait) s",
                              retryAfter: max(wait, 1))
        }
        let current = current(now: now, settings: settings)
        if current.failures + running > settings.loginFailureLimit {
            return StampError(.rateLimited, "too many sign-ins for this login from here at once", retryAfter: 1)
        }
        return nil
    }

    /// After one more wrong password: the limit reached locks the pair, each lock twice as long.
    func failed(now: Date, settings: StampSettings) -> LoginLock {
        var lock = current(now: now, settings: settings)
        lock.failures += 1
        if lock.failures >= settings.loginFailureLimit {
            let length = min(settings.loginLockCeiling, settings.loginFailureWindow * pow(2, Double(lock.locks)))
            lock.locks += 1
            lock.lockedUntil = now.addingTimeInterval(length)
            lock.failures = 0
            lock.windowStart = now
        }
        return lock
    }

    static func load(_ pair: [UInt8], on session: any SQLSession) async throws -> LoginLock? {
        try await session.queryFirst("SELECT failures, window_start, locks, locked_until FROM login_locks WHERE pair = ?", pair) { row in
            LoginLock(failures: try row.get(0, as: Int.self), windowStart: Date(millis: try row.get(1, as: Int64.self)),
                      locks: try row.get(2, as: Int.self),
                      lockedUntil: try row.optional(3, as: Int64.self).map(Date.init(millis:)))
        }
    }

    func save(_ pair: [UInt8], now: Date, on session: any SQLSession) async throws {
        try await session.run("""
            INSERT INTO login_locks (pair, failures, window_start, locks, locked_until, updated_at) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (pair) DO UPDATE SET failures = excluded.failures, window_start = excluded.window_start,
                locks = excluded.locks, locked_until = excluded.locked_until, updated_at = excluded.updated_at
            """, pair, failures, windowStart.millis, locks, lockedUntil?.millis, now.millis)
    }
}

final class SignInGuard: Sendable {
    private struct Address {
        var minuteStart: Date
        var started = 0
        var inFlight = 0
        var hourStart: Date
        var signUps = 0
    }

    private struct State {
        /// Checks in flight per pair (the `LoginLock.pair` digest).
        var pairs: [[UInt8]: Int] = [:]
        var addresses: [String: Address] = [:]
    }

    /// A password check that may run; hand it back to `finish` whatever happens.
    struct Reservation: Sendable {
        let address: String
        let pair: [UInt8]?
        /// The pair's checks in flight on this instance when this one was reserved, itself included.
        let running: Int
    }

    enum Outcome {
        case rightPassword
        case wrongPassword
        /// The check did not run to a verdict (an error, a client that left): counts as nothing.
        case notChecked
    }

    private let state = Mutex(State())
    private let settings: StampSettings
    private let capacity: Int

    init(settings: StampSettings, capacity: Int = 100_000) {
        self.settings = settings
        self.capacity = capacity
    }

    /// Reserves one password check from `address`, for the pair `pair` when it is a sign-in.
    /// The pair's lock is checked by the caller against the database, with `running`.
    func reserve(address: String, pair: [UInt8]?, now: Date) throws -> Reservation {
        let settings = self.settings
        let outcome: Result<Int, StampError> = state.withLock { state in
            Self.bound(&state.addresses, capacity: capacity) { now.timeIntervalSince($0.hourStart) > 3600 && $0.inFlight == 0 }
            var client = state.addresses[address] ?? Address(minuteStart: now, hourStart: now)
            if now.timeIntervalSince(client.minuteStart) >= 60 {
                client.minuteStart = now
                client.started = 0
            }
            if client.started >= settings.passwordChecksPerAddressPerMinute {
                let wait = Int((60 - now.timeIntervalSince(client.minuteStart)).rounded(.up))
                return .failure(StampError(.rateLimited, "too many sign-ins from this address; try again in \(max(wait, 1)) s",
                                           retryAfter: max(wait, 1)))
            }
            if client.inFlight >= settings.passwordChecksInFlightPerAddress {
                return .failure(StampError(.rateLimited, "too many sign-ins from this address at once", retryAfter: 1))
            }
            var running = 0
            if let pair {
                // Only pairs with checks in flight are kept, so the table is bounded by them.
                running = (state.pairs[pair] ?? 0) + 1
                if running > settings.loginFailureLimit {
                    return .failure(StampError(.rateLimited, "too many sign-ins for this login from here at once", retryAfter: 1))
                }
                state.pairs[pair] = running
            }
            client.started += 1
            client.inFlight += 1
            state.addresses[address] = client
            return .success(running)
        }
        return Reservation(address: address, pair: pair, running: try outcome.get())
    }

    func finish(_ reservation: Reservation) {
        state.withLock { state in
            state.addresses[reservation.address]?.inFlight -= 1
            guard let pair = reservation.pair, let running = state.pairs[pair] else { return }
            state.pairs[pair] = running > 1 ? running - 1 : nil
        }
    }

    /// Counts one account created from `address`; refuses past the hourly allowance.
    func countSignUp(address: String, now: Date) throws {
        let limit = settings.signUpsPerAddressPerHour
        let wait: Int? = state.withLock { state in
            var client = state.addresses[address] ?? Address(minuteStart: now, hourStart: now)
            if now.timeIntervalSince(client.hourStart) >= 3600 {
                client.hourStart = now
                client.signUps = 0
            }
            if client.signUps >= limit { return Int((3600 - now.timeIntervalSince(client.hourStart)).rounded(.up)) }
            client.signUps += 1
            state.addresses[address] = client
            return nil
        }
        if let wait {
            throw StampError(.rateLimited, "at most \(limit) new accounts an hour from one address", retryAfter: max(wait, 1))
        }
    }

    /// Keeps a table under `capacity`: first the entries `stale` says are done with, then (only
    /// under a flood of distinct keys) arbitrary ones, which forgets some counts but never grows.
    private static func bound<Value>(_ table: inout [String: Value], capacity: Int, stale: (Value) -> Bool) {
        guard table.count >= capacity else { return }
        table = table.filter { !stale($0.value) }
        while table.count >= capacity * 9 / 10, let key = table.keys.first { table[key] = nil }
    }
}
