// A fixed set of dedicated threads for work that blocks (SQLite, password hashing),
// so that neither a NIO event loop nor Swift's cooperative pool ever waits on it.
import Foundation
import Synchronization

/// Why `BlockingPool.run` did not run its body.
public enum BlockingPoolError: Error, Sendable, Equatable {
    /// The pool was shut down before the job could run.
    case shutDown
    /// More jobs are waiting than the caller allows.
    case full
}

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

    /// Jobs queued and not started yet.
    public var waiting: Int {
        condition.lock()
        defer { condition.unlock() }
        return jobs.count - jobHead
    }

    /// Queues `job`; it runs on one of the pool's threads, in submission order per thread.
    /// False (and the job is dropped) once the pool is shutting down, or when `limit` jobs wait.
    @discardableResult
    public func submit(limit: Int = .max, _ job: @escaping @Sendable () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping, jobs.count - jobHead < limit else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Runs `body` on a pool thread and suspends the caller (without blocking it) until done.
    /// Throws `BlockingPoolError.shutDown` after `shutdown()`, `.full` when `limit` jobs already
    /// wait, and `CancellationError` when the calling task is cancelled before the job starts
    /// (the body then never runs: work for a client that left is not done).
    public func run<T: Sendable>(limit: Int = .max, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        let cancelled = Atomic<Bool>(false)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                let accepted = submit(limit: limit) {
                    if cancelled.load(ordering: .relaxed) {
                        continuation.resume(throwing: CancellationError())
                        return
                    }
                    continuation.resume(with: Result { try body() })
                }
                if !accepted {
                    continuation.resume(throwing: isStopping ? BlockingPoolError.shutDown : BlockingPoolError.full)
                }
            }
        } onCancel: {
            cancelled.store(true, ordering: .relaxed)
        }
    }

    private var isStopping: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopping
    }

    /// Lets queued jobs finish, then ends the threads and waits for them. Later `run` calls throw.
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
