// A fixed set of dedicated threads for work that blocks (SQLite, password hashing),
// so that neither a NIO event loop nor Swift's cooperative pool ever waits on it.
import Foundation
import Synchronization

/// Why `BlockingPool.run` did not run its body.
public enum BlockingPoolError: Error, Sendable, Equatable {
    /// The pool was shut down before the job could run.
    case shutDown
}

/// Lets someone other than the caller take a job out of the line before it starts (a fair
/// scheduler shedding one caller's surplus for another's first). The caller's `run` then throws
/// the error given to `withdraw`.
public final class JobHandle: Sendable {
    private let abandon = Mutex<(@Sendable (any Error) -> Void)?>(nil)
    private let withdrawn = Mutex<(any Error)?>(nil)

    public init() {}

    /// Withdraws the job if it has not started; nothing happens once it has.
    public func withdraw(with error: any Error) {
        let action = abandon.withLock { $0 }
        if let action { action(error) } else { withdrawn.withLock { $0 = error } }
    }

    func attach(_ action: @escaping @Sendable (any Error) -> Void) -> (any Error)? {
        abandon.withLock { $0 = action }
        return withdrawn.withLock { $0 }
    }
}

public final class BlockingPool: @unchecked Sendable {
    // Guarded by `condition`.
    private var jobs: [(id: UInt64, run: @Sendable () -> Void)] = []
    private var jobHead = 0
    private var nextJobID: UInt64 = 0
    private var stopping = false
    private var running = 0
    private let condition = NSCondition()
    private let name: String

    /// Starts `threads` threads named `name`.
    public init(name: String, threads: Int) {
        precondition(threads > 0, "a pool needs at least one thread")
        self.name = name
        for index in 0..<threads {
            let threadName = threads == 1 ? name : "\(name)-\(index)"
            let thread = Thread { [self] in
                #if os(Linux)
                // Foundation's name stays inside the process; the kernel's (15 bytes at most) is
                // what top, perf and /proc show.
                if let comm = fopen("/proc/thread-self/comm", "w") {
                    fputs(String(decoding: threadName.utf8.prefix(15), as: UTF8.self), comm)
                    fclose(comm)
                }
                #endif
                self.workLoop()
            }
            thread.name = threadName
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
    /// False (and the job is dropped) once the pool is shutting down.
    @discardableResult
    public func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        enqueue(job) != nil
    }

    /// Queues `job` and returns its id, or nil once the pool is shutting down.
    private func enqueue(_ job: @escaping @Sendable () -> Void) -> UInt64? {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return nil }
        nextJobID &+= 1
        jobs.append((nextJobID, job))
        condition.signal()
        return nextJobID
    }

    /// Takes a job out of the queue if it has not started; false when it has (or never was).
    private func withdraw(_ id: UInt64) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard let index = jobs[jobHead...].firstIndex(where: { $0.id == id }) else { return false }
        jobs.remove(at: index)
        return true
    }

    /// Runs `body` on a pool thread and suspends the caller (without blocking it) until done.
    /// Throws `BlockingPoolError.shutDown` after `shutdown()`, and `CancellationError` when the
    /// calling task is cancelled (or `handle` withdraws the job, with its error) before the job
    /// starts: the body then never runs, so work for a client that left is not done.
    public func run<T: Sendable>(handle: JobHandle? = nil,
                                 _ body: @escaping @Sendable () throws -> T) async throws -> T {
        // Who resumes the continuation: the job when it starts, or the cancellation when it
        // withdraws the job first. The job's place in the line is freed at once on cancellation.
        let state = Mutex<RunState<T>>(.waitingToSubmit)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                let id = enqueue {
                    let start = state.withLock { state -> Bool? in
                        switch state {
                        case .waitingToSubmit, .queued:
                            state = .finished
                            return true
                        case .cancelled:
                            state = .finished
                            return false
                        case .finished:
                            return nil
                        }
                    }
                    switch start {
                    case true?: continuation.resume(with: Result { try body() })
                    case false?: continuation.resume(throwing: CancellationError())
                    case nil: break
                    }
                }
                guard let id else {
                    continuation.resume(throwing: BlockingPoolError.shutDown)
                    return
                }
                let cancelledEarly = state.withLock { state -> Bool in
                    switch state {
                    case .cancelled: return true
                    case .waitingToSubmit:
                        state = .queued(id, continuation)
                        return false
                    case .queued, .finished: return false  // the job started already
                    }
                }
                // Withdrawn before it started: it never runs, so answer here; otherwise the job
                // finds the cancellation and answers.
                if cancelledEarly, withdraw(id) {
                    state.withLock { $0 = .finished }
                    continuation.resume(throwing: CancellationError())
                }
                if let handle, let error = handle.attach({ abandon($0) }) { abandon(error) }
            }
        } onCancel: {
            abandon(CancellationError())
        }

        /// Takes the job out of the line, if it has not started, and answers `error`.
        @Sendable func abandon(_ error: any Error) {
            let queued = state.withLock { state -> (UInt64, CheckedContinuation<T, Error>)? in
                switch state {
                case .waitingToSubmit:
                    state = .cancelled
                    return nil
                case .queued(let id, let continuation):
                    state = .finished
                    return (id, continuation)
                case .cancelled, .finished:
                    return nil
                }
            }
            guard let (id, continuation) = queued else { return }
            // Not started yet (we hold it): free its place and answer now; a job already taken
            // by a thread finds the state finished and does nothing.
            _ = withdraw(id)
            continuation.resume(throwing: error)
        }
    }

    private enum RunState<T: Sendable>: Sendable {
        case waitingToSubmit
        case queued(UInt64, CheckedContinuation<T, Error>)
        case cancelled
        case finished
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
            let job = jobs[jobHead].run
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
