// A request's task runs its jobs on its connection's event loop: a database round trip is then
// loop → database thread → loop, with no hop through Swift's cooperative pool on either side.
// Endpoints only await (blocking work has threads of its own), so the loop is never blocked.
import NIOCore
import Synchronization

/// A task executor over one event loop. Prefer it with `Task(executorPreference:)`: the
/// nonisolated async code of the task then runs on the loop's thread.
final class LoopExecutor: TaskExecutor {
    let loop: any EventLoop

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }

    func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    private static let perLoop = Mutex<[ObjectIdentifier: LoopExecutor]>([:])

    /// The executor of `loop` (one per loop, made on first use).
    static func of(_ loop: any EventLoop) -> LoopExecutor {
        let key = ObjectIdentifier(loop as AnyObject)
        return perLoop.withLock { executors in
            if let executor = executors[key] { return executor }
            let executor = LoopExecutor(loop: loop)
            executors[key] = executor
            return executor
        }
    }
}

extension LoopExecutor {
    /// Runs `work` in a task on the loop and completes the returned future with its value, on
    /// the loop (so its callbacks run at once, with no further hop).
    func run<T: Sendable>(_ work: @escaping @Sendable () async -> T) -> (task: Task<Void, Never>, value: EventLoopFuture<T>) {
        let promise = loop.makePromise(of: T.self)
        let task = Task(executorPreference: self) { promise.succeed(await work()) }
        return (task, promise.futureResult)
    }
}
