// A fixed set of dedicated threads for work that blocks (SQLite, password hashing),
// so that neither a NIO event loop nor Swift's cooperative pool ever waits on it.
import Foundation

public final class BlockingPool: @unchecked Sendable {
    // Guarded by `condition`.
    private var jobs: [@Sendable () -> Void] = []
    private var jobHead = 0
    private var stopping = false
    private var running = 0
    private let condition = NSCondition()
    private let name: String

    /// Starts `threads` threads named `name`.
    public init(name: String, threads: Int) {
        precondition(threads > 0, "a pool needs at least one thread")
        self.name = name
        for index in 0..<threads {
            let thread = Thread { [self] in self.workLoop() }
            thread.name = threads == 1 ? name : "\(name)-\(index)"
            thread.stackSize = 1 << 20
            condition.lock()
            running += 1
            condition.unlock()
            thread.start()
        }
    }

    /// Queues `job`; it runs on one of the pool's threads, in submission order per thread.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Runs `body` on a pool thread and suspends the caller (without blocking it) until done.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            submit {
                continuation.resume(with: Result { try body() })
            }
        }
    }

    /// Lets queued jobs finish, then ends the threads and waits for them.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running > 0 { condition.wait() }
        condition.unlock()
    }

    private func workLoop() {
        while true {
            condition.lock()
            while jobHead == jobs.count && !stopping { condition.wait() }
            if jobHead == jobs.count {
                running -= 1
                condition.broadcast()
                condition.unlock()
                return
            }
            let job = jobs[jobHead]
            jobHead += 1
            if jobHead == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                jobHead = 0
            }
            condition.unlock()
            job()
        }
    }
}
