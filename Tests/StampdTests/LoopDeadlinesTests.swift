// The deadlines of one event loop (a hashed wheel instead of a NIO task per poll), on a
// test loop whose clock the test moves: never early, at most one slot late, cancelled in O(1).
import NIOCore
import NIOEmbedded
@testable import StampHTTP
import Testing

@Suite(.timeLimit(.minutes(1))) struct LoopDeadlinesTests {
    @Test func aDeadlineFiresOnceNeverEarlyAndAtMostOneSlotLate() throws {
        let loop = EmbeddedEventLoop()
        let deadlines = LoopDeadlines(loop: loop)
        let start = loop.now
        var fired: [String: NIODeadline] = [:]
        _ = deadlines.add(deadline: start + .milliseconds(100)) { fired["a"] = loop.now }
        let b = deadlines.add(deadline: start + .milliseconds(100)) { fired["b"] = loop.now }
        _ = deadlines.add(deadline: start + .seconds(25)) { fired["c"] = loop.now }
        deadlines.cancel(b)
        deadlines.cancel(b)  // twice is no error
        #expect(deadlines.count == 2)

        loop.advanceTime(by: .milliseconds(99))
        #expect(fired.isEmpty)  // never early
        loop.advanceTime(by: LoopDeadlines.resolution + .milliseconds(20))
        let a = try #require(fired["a"])
        #expect(a >= start + .milliseconds(100) && a <= start + .milliseconds(100) + LoopDeadlines.resolution * 2)
        #expect(fired["b"] == nil)  // cancelled
        #expect(deadlines.count == 1)

        loop.advanceTime(by: .seconds(25))
        #expect(fired["c"] != nil)
        #expect(deadlines.count == 0)
        loop.advanceTime(by: .seconds(60))
        #expect(fired.count == 2)  // each once
    }

    @Test func aDeadlineAddedAfterAnIdleSpellFiresOnTime() {
        let loop = EmbeddedEventLoop()
        let deadlines = LoopDeadlines(loop: loop)
        loop.advanceTime(by: .seconds(300))  // nothing pending: no ticks meanwhile
        var firedAt: NIODeadline?
        let deadline = loop.now + .seconds(1)
        _ = deadlines.add(deadline: deadline) { firedAt = loop.now }
        loop.advanceTime(by: .milliseconds(990))
        #expect(firedAt == nil)
        loop.advanceTime(by: .milliseconds(60))
        #expect(firedAt.map { $0 >= deadline } == true)
    }

    @Test func tenThousandCancelledDeadlinesLeaveNothingScheduled() {
        let loop = EmbeddedEventLoop()
        let deadlines = LoopDeadlines(loop: loop)
        var fired = 0
        let tokens = (0..<10_000).map { index in
            deadlines.add(deadline: loop.now + .seconds(Int64(1 + index % 25))) { fired += 1 }
        }
        for token in tokens { deadlines.cancel(token) }
        #expect(deadlines.count == 0)
        loop.advanceTime(by: .seconds(30))
        #expect(fired == 0)
    }
}
