// The time use cases read in a running server: the wall clock, made never to run backwards.
import Dispatch
import Foundation
import Synchronization

/// The wall clock as stampd uses it: it follows the system's wall clock forwards (time passing,
/// a suspended machine waking, a clock set forward: each is the time everyone else sees), and
/// never goes back. When the system clock steps back (an administrator, a bad NTP source, a
/// restart on a host whose clock is behind the database), this clock goes on from where it
/// was, at `1 - catchUpRate` of the monotonic clock's pace, until the wall clock has caught up.
///
/// Why: stored times are compared with this clock for durations (request lifetimes, cool-downs,
/// sign-in locks, rate windows, undo windows, token lifetimes). A clock that went back an hour
/// would make every such duration an hour longer: a customer's 5-minute cool-down would last
/// 65 minutes, a sign-in lock an hour more. Run slow instead, every duration is at most
/// `1 / (1 - catchUpRate)` times its length while the clocks differ, and the two agree again
/// after `step / catchUpRate` (an hour back: 20 hours at 5 %).
public final class ForwardClock: StampClock {
    /// How much slower than real time this clock runs while the wall clock is behind it.
    public static let catchUpRate = 0.05

    private struct Reading {
        var issued: Int64          // nanoseconds since 1970, the last time given out
        var monotonic: UInt64      // the monotonic clock when it was given out
        var gap: Int64             // how far the wall clock was behind `issued` then (0: in step)
    }

    private let state: Mutex<Reading>
    private let wall: @Sendable () -> Int64
    private let monotonic: @Sendable () -> UInt64
    private let stepped: @Sendable (_ seconds: Double) -> Void

    /// `wall` and `monotonic` in nanoseconds (tests move them); `stepped` hears each step of the
    /// wall clock of more than a second relative to the monotonic clock (negative: back), from
    /// the thread that read the time, so it should only log or count.
    public init(wall: @escaping @Sendable () -> Int64 = ForwardClock.systemWall,
                monotonic: @escaping @Sendable () -> UInt64 = { DispatchTime.now().uptimeNanoseconds },
                stepped: @escaping @Sendable (_ seconds: Double) -> Void = { _ in }) {
        self.wall = wall
        self.monotonic = monotonic
        self.stepped = stepped
        state = Mutex(Reading(issued: wall(), monotonic: monotonic(), gap: 0))
    }

    public static let systemWall: @Sendable () -> Int64 = {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }

    /// Never earlier than `floor`: started after the wall clock went back (the newest time the
    /// database holds is ahead of it), this clock starts there and catches up as after a step.
    public func notBefore(_ floor: Date) {
        // Clamped: a corrupt stored time must not trap (Int64 nanoseconds end in 2262).
        let floor = Int64(min(max(floor.timeIntervalSince1970, 0), 9e9) * 1e9)
        let step = state.withLock { reading -> Double? in
            guard floor > reading.issued else { return nil }
            let step = Double(reading.issued - floor) / 1e9
            reading.gap += floor - reading.issued
            reading.issued = floor
            return step
        }
        if let step, step <= -1 { stepped(step) }
    }

    /// How far the wall clock is behind this clock, in seconds (0 when they agree).
    public var wallBehind: Double {
        let wallNow = wall()
        return state.withLock { max(0, Double($0.issued - wallNow) / 1e9) }
    }

    public func now() -> Date {
        var step: Double?
        let issued = state.withLock { reading -> Int64 in
            // Both clocks are read under the lock, so readings are in order across threads.
            let wallNow = wall(), monotonicNow = monotonic()
            let elapsed = max(0, Int64(bitPattern: monotonicNow &- reading.monotonic))
            let steady = reading.issued &+ elapsed
            // A wall clock that kept pace with the monotonic one is `gap` behind `steady`; any
            // other change is a step (back when the gap grew, forward when it shrank), or a
            // machine that slept, which looks like a step forward and is followed as one.
            let drift = (steady &- wallNow) &- reading.gap
            if abs(drift) > 1_000_000_000 { step = -Double(drift) / 1e9 }
            let next: Int64
            if wallNow >= steady {
                next = wallNow  // in step, caught up, or ahead: the wall clock's time
            } else {
                let slow = reading.issued &+ Int64(Double(elapsed) * (1 - Self.catchUpRate))
                next = max(wallNow, slow)
            }
            reading.issued = max(reading.issued, next)
            reading.monotonic = monotonicNow
            reading.gap = max(0, reading.issued &- wallNow)
            return reading.issued
        }
        if let step { stepped(step) }
        return Date(timeIntervalSince1970: Double(issued) / 1e9)
    }
}
