// Paces password checks per client address, in memory and bounded, so that nobody can guess a
// password quickly, flood the hashing threads, or lock another person out of their account.
//
// The policy: a (client address, login) pair may try `loginFailureLimit` wrong passwords per
// `loginFailureWindow`; then that pair alone waits, and each further lock doubles (up to
// `loginLockCeiling`). The attempt is reserved before the hash runs, so concurrent tries count
// too. Locks never follow a login to other addresses: a stranger's wrong passwords do not keep
// the account's owner out. Each address may also start only so many password checks a minute
// and have only a few waiting at once, and create only so many accounts an hour.
import Foundation
import Synchronization

final class SignInGuard: Sendable {
    private struct Pair {
        var failures = 0
        var windowStart: Date
        var inFlight = 0
        var locks = 0
        var lockedUntil: Date?
    }

    private struct Address {
        var minuteStart: Date
        var started = 0
        var inFlight = 0
        var hourStart: Date
        var signUps = 0
    }

    private struct State {
        var pairs: [String: Pair] = [:]
        var addresses: [String: Address] = [:]
    }

    /// A password check that may run; hand it back to `finish` whatever happens.
    struct Reservation: Sendable {
        let address: String
        let pair: String?
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

    /// Reserves one password check from `address`, for `loginKey` when it is a sign-in.
    func reserve(address: String, loginKey: String?, now: Date) throws -> Reservation {
        let pairKey = loginKey.map { address + "\u{0}" + $0 }
        let settings = self.settings
        let refusal: StampError? = state.withLock { state in
            Self.bound(&state.addresses, capacity: capacity, now: now) { now.timeIntervalSince($0.hourStart) > 3600 && $0.inFlight == 0 }
            var client = state.addresses[address] ?? Address(minuteStart: now, hourStart: now)
            if now.timeIntervalSince(client.minuteStart) >= 60 {
                client.minuteStart = now
                client.started = 0
            }
            if client.started >= settings.passwordChecksPerAddressPerMinute {
                let wait = Int((60 - now.timeIntervalSince(client.minuteStart)).rounded(.up))
                return StampError(.rateLimited, "too many sign-ins from this address; try again in \(max(wait, 1)) s",
                                  retryAfter: max(wait, 1))
            }
            if client.inFlight >= settings.passwordChecksInFlightPerAddress {
                return StampError(.rateLimited, "too many sign-ins from this address at once", retryAfter: 1)
            }
            if let pairKey {
                Self.bound(&state.pairs, capacity: capacity, now: now) { pair in
                    pair.inFlight == 0 && (pair.lockedUntil ?? .distantPast) < now
                        && now.timeIntervalSince(pair.windowStart) > settings.loginLockCeiling
                }
                var pair = state.pairs[pairKey] ?? Pair(windowStart: now)
                if let until = pair.lockedUntil, until > now {
                    let wait = Int(until.timeIntervalSince(now).rounded(.up))
                    return StampError(.rateLimited, "too many wrong passwords for this login from here; try again in \(wait) s",
                                      retryAfter: max(wait, 1))
                }
                if now.timeIntervalSince(pair.windowStart) >= settings.loginFailureWindow {
                    pair.windowStart = now
                    pair.failures = 0
                }
                // Locks stop doubling once a pair has kept quiet for the longest lock.
                if let until = pair.lockedUntil, now.timeIntervalSince(until) >= settings.loginLockCeiling {
                    pair.locks = 0
                    pair.lockedUntil = nil
                }
                if pair.failures + pair.inFlight >= settings.loginFailureLimit {
                    return StampError(.rateLimited, "too many sign-ins for this login from here at once", retryAfter: 1)
                }
                pair.inFlight += 1
                state.pairs[pairKey] = pair
            }
            client.started += 1
            client.inFlight += 1
            state.addresses[address] = client
            return nil
        }
        if let refusal { throw refusal }
        return Reservation(address: address, pair: pairKey)
    }

    func finish(_ reservation: Reservation, _ outcome: Outcome, now: Date) {
        let settings = self.settings
        state.withLock { state in
            state.addresses[reservation.address]?.inFlight -= 1
            guard let key = reservation.pair, var pair = state.pairs[key] else { return }
            pair.inFlight -= 1
            switch outcome {
            case .rightPassword:
                state.pairs[key] = pair.inFlight > 0 ? Pair(windowStart: now, inFlight: pair.inFlight) : nil
                return
            case .notChecked:
                break
            case .wrongPassword:
                pair.failures += 1
                if pair.failures >= settings.loginFailureLimit {
                    let lock = min(settings.loginLockCeiling, settings.loginFailureWindow * pow(2, Double(pair.locks)))
                    pair.locks += 1
                    pair.lockedUntil = now.addingTimeInterval(lock)
                    pair.failures = 0
                    pair.windowStart = now
                }
            }
            state.pairs[key] = pair
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
    private static func bound<Value>(_ table: inout [String: Value], capacity: Int, now: Date,
                                     stale: (Value) -> Bool) {
        guard table.count >= capacity else { return }
        table = table.filter { !stale($0.value) }
        while table.count >= capacity * 9 / 10, let key = table.keys.first { table[key] = nil }
    }
}
