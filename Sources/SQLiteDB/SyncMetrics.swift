// The disk's share of a commit, measured by stampd itself: every sync SQLite asks of the file
// system (the WAL's, at each commit with synchronous = FULL; the database's, at a checkpoint) is
// timed by the "stampd-timed" VFS (CSQLiteSync), and every COMMIT by the writer. The benchmarks
// set these beside the delivery latency, so that what the disk costs is not guessed.
import CSQLiteSync
import Metrics
import Synchronization

enum SyncMetrics {
    /// Syncs of the WAL so far in this process (what the timer counts too), for tests.
    static let walSyncCount = Atomic<Int>(0)
    /// Syncs that failed so far in this process: the writer compares it around each COMMIT.
    static let failedSyncCount = Atomic<Int>(0)

    static let walSync = Metrics.Timer(label: "stampd_sqlite_sync_seconds", dimensions: [("file", "wal")])
    static let databaseSync = Metrics.Timer(label: "stampd_sqlite_sync_seconds", dimensions: [("file", "database")])
    static let otherSync = Metrics.Timer(label: "stampd_sqlite_sync_seconds", dimensions: [("file", "other")])
    static let failedSyncs = Counter(label: "stampd_sqlite_sync_failures_total")
    static let commit = Metrics.Timer(label: "stampd_db_commit_seconds", dimensions: [("engine", "sqlite")])
    /// The writer's checkpoints, run after a batch is answered (not inside its COMMIT).
    static let checkpoint = Metrics.Timer(label: "stampd_sqlite_checkpoint_seconds")
    /// Writes waiting when the writer last looked (each time it takes a batch, 0 once none is left).
    static let writerQueue = Gauge(label: "stampd_sqlite_writer_queue")

    /// The VFS every connection opens through, registered once; nil (the default VFS) if SQLite
    /// refused it.
    static let vfs: String? = {
        let observer: stampd_sync_observer = { nanoseconds, file, result in
            switch Int(file) {
            case Int(STAMPD_SYNC_WAL.rawValue):
                SyncMetrics.walSync.recordNanoseconds(nanoseconds)
                SyncMetrics.walSyncCount.add(1, ordering: .relaxed)
            case Int(STAMPD_SYNC_DATABASE.rawValue): SyncMetrics.databaseSync.recordNanoseconds(nanoseconds)
            default: SyncMetrics.otherSync.recordNanoseconds(nanoseconds)
            }
            if result != 0 {
                SyncMetrics.failedSyncs.increment()
                SyncMetrics.failedSyncCount.add(1, ordering: .sequentiallyConsistent)
            }
        }
        guard stampd_sync_vfs_register(observer) == 0 else { return nil }
        return String(cString: stampd_sync_vfs_name)
    }()
}
