// The deadlines of one event loop's connections (parked polls' timeouts, request and idle
// timeouts), without a NIO `Scheduled` task each.
//
// NIO keeps scheduled tasks in a heap, and cancelling one searches it: with 10,000 polls parked
// on a loop, every wake-up (which cancels the poll's timeout) scanned the heap, and each task
// carries a promise and its closure. Here deadlines
// fall into slots of `resolution` (a hashed timing wheel without the ring): adding and
// cancelling are dictionary operations, and one tick per loop, scheduled only while a deadline is
// pending, fires the slots that are due. A deadline fires at most one `resolution` late, never
// early. Everything runs on the loop: `add`, `cancel` and the firing. Time is the loop's own
// (`EventLoop.now`), so a test loop's clock drives it.
import NIOCore
import Synchronization

final class LoopDeadlines {
    /// How late a deadline may fire: a tick every 20 ms while any poll is parked on the loop.
    static let resolution: TimeAmount = .milliseconds(20)

    struct Token: Hashable {
        fileprivate let slot: Int64
        fileprivate let id: UInt64
    }

    private let loop: any EventLoop
    private var slots: [Int64: [UInt64: () -> Void]] = [:]
    private var nextID: UInt64 = 0
    /// The slots up to this one have fired.
    private var done: Int64
    private var tick: Scheduled<Void>?

    init(loop: any EventLoop) {
        self.loop = loop
        done = Self.slot(of: loop.now) - 1
    }

    var count: Int { slots.values.reduce(0) { $0 + $1.count } }

    /// Calls `fire` on the loop once `deadline` has passed, unless cancelled first.
    func add(deadline: NIODeadline, _ fire: @escaping () -> Void) -> Token {
        loop.preconditionInEventLoop()
        // The slot whose end is at or after the deadline: never early.
        let slot = max(Self.slot(of: deadline) + 1, done + 1)
        nextID &+= 1
        slots[slot, default: [:]][nextID] = fire
        armIfIdle()
        return Token(slot: slot, id: nextID)
    }

    /// Forgets a deadline (the poll was answered another way). A deadline that fired or was
    /// cancelled already is no error.
    func cancel(_ token: Token) {
        loop.preconditionInEventLoop()
        // In place: a copy of the slot's entries would make a cancel cost the slot's size.
        guard slots[token.slot]?.removeValue(forKey: token.id) != nil else { return }
        if slots[token.slot]?.isEmpty == true { slots[token.slot] = nil }
        if slots.isEmpty {
            tick?.cancel()  // the one task of this loop: nothing to scan
            tick = nil
        }
    }

    private static func slot(of deadline: NIODeadline) -> Int64 {
        Int64(deadline.uptimeNanoseconds / UInt64(resolution.nanoseconds))
    }

    private func armIfIdle() {
        guard tick == nil else { return }
        // While idle the slots did not move on; none that is due was skipped (those are empty).
        done = max(done, Self.slot(of: loop.now) - 1)
        tick = loop.scheduleTask(in: Self.resolution) { [self] in fireDue() }
    }

    private func fireDue() {
        tick = nil
        let now = Self.slot(of: loop.now)
        var due: [() -> Void] = []
        while done < now {
            done += 1
            if let entries = slots.removeValue(forKey: done) { due.append(contentsOf: entries.values) }
        }
        if !slots.isEmpty { tick = loop.scheduleTask(in: Self.resolution) { [self] in fireDue() } }
        for fire in due { fire() }
    }
}

extension LoopDeadlines {
    private final class Box: @unchecked Sendable {  // touched only on its loop
        let deadlines: LoopDeadlines
        init(_ deadlines: LoopDeadlines) { self.deadlines = deadlines }
    }

    private static let perLoop = Mutex<[ObjectIdentifier: Box]>([:])

    /// The deadlines of `loop` (one per loop, made on first use).
    static func of(_ loop: any EventLoop) -> LoopDeadlines {
        let key = ObjectIdentifier(loop as AnyObject)
        return perLoop.withLock { boxes in
            if let box = boxes[key] { return box.deadlines }
            let box = Box(LoopDeadlines(loop: loop))
            boxes[key] = box
            return box.deadlines
        }
    }
}
