// Runs Swift tasks' jobs on a BlockingPool's threads, so that async code that calls blocking
// functions (a SQLite engine's statements) keeps them off the cooperative pool.

/// A task executor backed by the threads of `pool`. Prefer it with
/// `withTaskExecutorPreference(_:operation:)`: the nonisolated async code inside then runs on the
/// pool's threads, and calls that do not suspend stay on the thread that started them.
public final class PoolExecutor: TaskExecutor {
    public let pool: BlockingPool

    public init(pool: BlockingPool) {
        self.pool = pool
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        if !pool.submit({ job.runSynchronously(on: executor) }) {
            // The pool stopped: a job must still run, or its task waits for ever. What is left
            // after shutdown fails fast (the engine is closed), so the shared pool can take it.
            globalConcurrentExecutor.enqueue(ExecutorJob(job))
        }
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }
}
