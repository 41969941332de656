// Parked long polls, keyed by account, woken after the transactions that write their events commit.
import Metrics
import Synchronization
import Foundation

/// Why a parked poll was resumed. Each waiter is resumed exactly once, by whoever removes it.
public enum WakeReason: Sendable, Equatable {
    /// An event for the account committed; `publishedAt` is when the hub heard of it. The poll
    /// reads what is after its cursor.
    case event(publishedAt: UInt64)
    /// The events that directly follow the poll's cursor, in order, as the commit wrote them:
    /// the poll is answered with them, with no read.
    case events([Event], publishedAt: UInt64)
    case timeout
    case disconnected
    case shutdown
    /// The session the poll signed in with was revoked (sign-out, new password, deleted account).
    case revoked
}

public enum ParkOutcome: Sendable, Equatable {
    /// Parked; keep the id to cancel it (timeout, disconnect).
    case parked(WaiterID)
    /// Events newer than the cursor committed meanwhile: read again instead of parking.
    case ready
    case tooManyForAccount
    case tooManyForServer
    case shuttingDown
}

public struct WaiterID: Hashable, Sendable {
    let value: UInt64
}

public final class EventHub: Sendable {
    public let maximumPerAccount: Int
    public let maximumTotal: Int

    private struct Waiter {
        let account: String
        let session: [UInt8]
        let cursor: Int64
        let wake: @Sendable (WakeReason) -> Void
    }

    /// What one commit wrote for one account.
    public struct Committed: Sendable {
        /// The account's newest position after the commit.
        public var newest: Int64
        /// The position just before the commit's first event, when the events follow it with
        /// nothing between (one writer numbering each account densely); nil when unknown.
        public var previous: Int64?
        /// The commit's events for the account, oldest first (empty when not carried).
        public var events: [Event]

        public init(newest: Int64, previous: Int64? = nil, events: [Event] = []) {
            self.newest = newest
            self.previous = previous
            self.events = events
        }
    }

    private struct State {
        var nextID: UInt64 = 0
        var waiters: [UInt64: Waiter] = [:]
        var byAccount: [String: [UInt64]] = [:]
        /// The newest event position per account (seeded at start, then published): parking
        /// with an older cursor would miss an event that committed between the poll's read and
        /// its park.
        var latest: [String: Int64] = [:]
        var shuttingDown = false
        /// Set once `seed` has told the hub what the whole log holds: then an account it has no
        /// entry for has no events.
        var seeded = false
        /// False while writes of another process may go unheard (a shared database whose
        /// notifications do not flow): then nothing is certain, and every poll reads.
        var following = true
        /// Counts the times knowledge was dropped: a read that began before cannot teach the hub.
        var epoch: UInt64 = 0
        /// Callers of `waitUntilParked`, with the count each waits for.
        var countWatchers: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var shutdownWatchers: [CheckedContinuation<Void, Never>] = []
        var followWatchers: [CheckedContinuation<Void, Never>] = []

        mutating func watchersSatisfied() -> [CheckedContinuation<Void, Never>] {
            guard !countWatchers.isEmpty else { return [] }
            let count = waiters.count
            let ready = countWatchers.filter { $0.count == count }.map(\.continuation)
            countWatchers.removeAll { $0.count == count }
            return ready
        }
    }

    private let state = Mutex(State())
    private let parkedGauge = Gauge(label: "stampd_parked_polls")
    private let published = Counter(label: "stampd_events_published_total")
    private let delivered = Counter(label: "stampd_events_delivered_total")

    public init(maximumPerAccount: Int = 16, maximumTotal: Int = 19_000) {
        self.maximumPerAccount = maximumPerAccount
        self.maximumTotal = maximumTotal
    }

    public var parkedCount: Int { state.withLock { $0.waiters.count } }

    /// Parks a poll of `account` that has seen events up to `cursor`, found by a read (or a
    /// `hasNothingAfter`) that began at `epoch`. `wake` runs exactly once, outside the hub's lock,
    /// unless the outcome is not `.parked` (then it never runs).
    public func park(account: String, session: [UInt8] = [], after cursor: Int64, readAt epoch: UInt64,
                     wake: @escaping @Sendable (WakeReason) -> Void) -> ParkOutcome {
        let outcome = state.withLock { state -> ParkOutcome in
            if state.shuttingDown { return .shuttingDown }
            // Knowledge was dropped since the read began: a commit of another process may have
            // come between the read and the listener's return, heard by no one, and the polls
            // woken when it returned did not include this one. Read again.
            if state.epoch != epoch { return .ready }
            if let latest = state.latest[account], latest > cursor { return .ready }
            if state.waiters.count >= maximumTotal { return .tooManyForServer }
            if state.byAccount[account, default: []].count >= maximumPerAccount { return .tooManyForAccount }
            state.nextID &+= 1
            let id = state.nextID
            state.waiters[id] = Waiter(account: account, session: session, cursor: cursor, wake: wake)
            state.byAccount[account, default: []].append(id)
            return .parked(WaiterID(value: id))
        }
        if case .parked = outcome { parkedChanged() }
        return outcome
    }

    /// Tells the hub what the committed log holds at start: the newest position of each account
    /// (accounts with no events are at 0), so a poll can park without reading when nothing is newer.
    public func seed(newest: [String: Int64]) {
        state.withLock { state in
            for (account, position) in newest where position > state.latest[account, default: 0] {
                state.latest[account] = position
            }
            state.seeded = true
        }
    }

    /// True when the log certainly holds no event for `account` after `cursor` and the cursor is
    /// the account's newest position (so neither pruned, which stays at or below it, nor beyond
    /// the stream): the poll may park without reading. An event that commits meanwhile is
    /// published after its commit, which wakes the parked poll, or makes `park` say `.ready` if
    /// it came first.
    public func hasNothingAfter(_ cursor: Int64, for account: String) -> Bool {
        state.withLock { state in
            guard state.following else { return false }
            if let latest = state.latest[account] { return latest == cursor }
            return state.seeded && cursor == 0
        }
    }

    /// Where the hub's knowledge stands; hand it back to `learn`.
    public var epoch: UInt64 { state.withLock { $0.epoch } }

    /// A read found `newest` to be the account's newest position. Kept only if nothing was
    /// dropped since the read began (`epoch`): the positions committed later reach the hub by
    /// `publish`, so from here on it knows the account.
    public func learn(account: String, newest: Int64, since epoch: UInt64) {
        state.withLock { state in
            guard state.following, state.epoch == epoch else { return }
            if newest > state.latest[account, default: 0] { state.latest[account] = newest }
        }
    }

    /// Another process's commits may go unheard from now on: drop what the hub knows of the log.
    public func notificationsStopped() {
        state.withLock { state in
            state.following = false
            state.seeded = false
            state.latest.removeAll()
            state.epoch &+= 1
        }
    }

    /// Other processes' commits are heard again (or for the first time): anything committed
    /// meanwhile may have gone unheard, so every parked poll reads again, and the hub learns
    /// each account anew from reads and notifications.
    public func notificationsFlowing() {
        let now = DispatchTime.now().uptimeNanoseconds
        let (woken, watchers) = state.withLock { state -> ([Waiter], [CheckedContinuation<Void, Never>]) in
            state.following = true
            state.seeded = false
            state.latest.removeAll()
            state.epoch &+= 1
            let all = Array(state.waiters.values)
            state.waiters.removeAll()
            state.byAccount.removeAll()
            defer { state.followWatchers.removeAll() }
            return (all, state.followWatchers)
        }
        watchers.forEach { $0.resume() }
        guard !woken.isEmpty else { return }
        parkedChanged()
        for waiter in woken { waiter.wake(.event(publishedAt: now)) }
    }

    /// Removes the waiter and resumes it with `reason`. False when it was already resumed.
    @discardableResult
    public func cancel(_ id: WaiterID, reason: WakeReason) -> Bool {
        let waiter = state.withLock { state in Self.remove(id.value, from: &state) }
        guard let waiter else { return false }
        parkedChanged()
        waiter.wake(reason)
        return true
    }

    /// Called after a transaction commits (or another process's commit is heard), with the
    /// newest event position written per recipient.
    public func publish(_ newest: [String: Int64]) {
        publish(newest.mapValues { Committed(newest: $0) })
    }

    /// Called right after a transaction commits, with what it wrote per recipient. A poll parked
    /// at the position just before the commit's events is handed them; any other reads.
    public func publish(_ committed: [String: Committed]) {
        guard !committed.isEmpty else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        var woken: [(Waiter, [Event])] = []
        state.withLock { state in
            for (account, commit) in committed {
                if commit.newest > state.latest[account, default: 0] { state.latest[account] = commit.newest }
                guard let ids = state.byAccount.removeValue(forKey: account) else { continue }
                for id in ids {
                    guard let waiter = state.waiters.removeValue(forKey: id) else { continue }
                    woken.append((waiter, commit.previous == waiter.cursor ? commit.events : []))
                }
            }
        }
        published.increment(by: Int64(committed.count))
        guard !woken.isEmpty else { return }
        parkedChanged()
        delivered.increment(by: Int64(woken.count))
        for (waiter, events) in woken {
            waiter.wake(events.isEmpty ? .event(publishedAt: now) : .events(events, publishedAt: now))
        }
    }

    /// Resumes the parked polls of `account` made with one of `sessions` (every one when nil)
    /// with `.revoked`, after the revocation committed.
    public func revoke(account: String, sessions: Set<[UInt8]>?) {
        let woken = state.withLock { state -> [Waiter] in
            guard let ids = state.byAccount[account] else { return [] }
            var woken: [Waiter] = []
            for id in ids {
                guard let waiter = state.waiters[id], sessions?.contains(waiter.session) ?? true else { continue }
                if let removed = Self.remove(id, from: &state) { woken.append(removed) }
            }
            return woken
        }
        guard !woken.isEmpty else { return }
        parkedChanged()
        for waiter in woken { waiter.wake(.revoked) }
    }

    /// Refuses new parks and resumes every parked poll with `.shutdown`.
    public func shutdown() {
        let (all, watchers) = state.withLock { state -> ([Waiter], [CheckedContinuation<Void, Never>]) in
            state.shuttingDown = true
            let all = Array(state.waiters.values)
            state.waiters.removeAll()
            state.byAccount.removeAll()
            defer { state.shutdownWatchers.removeAll() }
            return (all, state.shutdownWatchers)
        }
        parkedChanged()
        for waiter in all { waiter.wake(.shutdown) }
        watchers.forEach { $0.resume() }
    }

    /// Returns once exactly `count` polls are parked: lets tests await what the gauge shows.
    public func waitUntilParked(_ count: Int) async {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Bool in
                if state.waiters.count == count { return true }
                state.countWatchers.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    private func parkedChanged() {
        let (count, ready) = state.withLock { state in (state.waiters.count, state.watchersSatisfied()) }
        parkedGauge.record(count)
        ready.forEach { $0.resume() }
    }

    /// Returns once other processes' commits are heard (at once when there are none to hear).
    public func waitUntilFollowing() async {
        await withCheckedContinuation { continuation in
            let following = state.withLock { state -> Bool in
                if state.following { return true }
                state.followWatchers.append(continuation)
                return false
            }
            if following { continuation.resume() }
        }
    }

    /// Returns once `shutdown()` has run: the server has begun to drain its connections.
    public func waitUntilShutDown() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.shuttingDown { return true }
                state.shutdownWatchers.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    private static func remove(_ id: UInt64, from state: inout State) -> Waiter? {
        guard let waiter = state.waiters.removeValue(forKey: id) else { return nil }
        if var ids = state.byAccount[waiter.account] {
            ids.removeAll { $0 == id }
            state.byAccount[waiter.account] = ids.isEmpty ? nil : ids
        }
        return waiter
    }
}
