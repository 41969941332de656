// A SQLite VFS that is the default one with every xSync timed, so that stampd measures the
// disk's share of a commit itself (stampd_sqlite_sync_seconds in /metrics).
#ifndef STAMPD_SYNC_VFS_H
#define STAMPD_SYNC_VFS_H

/// Which file a sync was of.
enum stampd_sync_file { STAMPD_SYNC_DATABASE = 0, STAMPD_SYNC_WAL = 1, STAMPD_SYNC_OTHER = 2 };

/// Told of every sync: how long it took, of which file, and SQLite's result code (0 is OK).
typedef void (*stampd_sync_observer)(long long nanoseconds, int file, int result);

/// Registers the VFS "stampd-timed" over the default VFS (not as the default). The observer is
/// called on the thread that syncs; it must be quick and must not call SQLite. Answers SQLite's
/// result code; calling it again changes only the observer.
int stampd_sync_vfs_register(stampd_sync_observer observer);

/// The VFS's name, for sqlite3_open_v2.
extern const char *const stampd_sync_vfs_name;

#endif
