// The default VFS with every xSync timed. Each file opened through it is the default VFS's file
// placed right after a small header of ours; every method delegates to it, and xSync measures
// the call with CLOCK_MONOTONIC. This is SQLite's documented way of wrapping a VFS ("shims").
#include "stampd_sync_vfs.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

const char *const stampd_sync_vfs_name = "stampd-timed";

static sqlite3_vfs *base_vfs;
static _Atomic(stampd_sync_observer) observer;
static sqlite3_vfs timed_vfs;

typedef struct {
    sqlite3_file header;   // our methods: must be first
    int kind;              // enum stampd_sync_file
    sqlite3_file *real;    // the default VFS's file, right after this struct
} timed_file;

#define REAL(file) (((timed_file *)(file))->real)

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int t_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int t_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) { return REAL(f)->pMethods->xRead(REAL(f), b, n, o); }
static int t_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o) { return REAL(f)->pMethods->xWrite(REAL(f), b, n, o); }
static int t_truncate(sqlite3_file *f, sqlite3_int64 size) { return REAL(f)->pMethods->xTruncate(REAL(f), size); }
static int t_sync(sqlite3_file *f, int flags) {
    long long start = now_ns();
    int result = REAL(f)->pMethods->xSync(REAL(f), flags);
    stampd_sync_observer tell = atomic_load_explicit(&observer, memory_order_acquire);
    if (tell) tell(now_ns() - start, ((timed_file *)f)->kind, result);
    return result;
}
static int t_file_size(sqlite3_file *f, sqlite3_int64 *size) { return REAL(f)->pMethods->xFileSize(REAL(f), size); }
static int t_lock(sqlite3_file *f, int level) { return REAL(f)->pMethods->xLock(REAL(f), level); }
static int t_unlock(sqlite3_file *f, int level) { return REAL(f)->pMethods->xUnlock(REAL(f), level); }
static int t_check_reserved(sqlite3_file *f, int *out) { return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out); }
static int t_file_control(sqlite3_file *f, int op, void *arg) { return REAL(f)->pMethods->xFileControl(REAL(f), op, arg); }
static int t_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int t_device(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int t_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **out) {
    return REAL(f)->pMethods->xShmMap(REAL(f), page, size, extend, out);
}
static int t_shm_lock(sqlite3_file *f, int offset, int n, int flags) { return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags); }
static void t_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int t_shm_unmap(sqlite3_file *f, int delete_flag) { return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag); }
static int t_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **out) { return REAL(f)->pMethods->xFetch(REAL(f), o, n, out); }
static int t_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) { return REAL(f)->pMethods->xUnfetch(REAL(f), o, p); }

// One table per version the real file offers: a method it lacks stays absent here too.
static sqlite3_io_methods methods_v1, methods_v2, methods_v3;

static void fill_methods(void) {
    sqlite3_io_methods m = {
        1, t_close, t_read, t_write, t_truncate, t_sync, t_file_size, t_lock, t_unlock, t_check_reserved,
        t_file_control, t_sector_size, t_device, 0, 0, 0, 0, 0, 0,
    };
    methods_v1 = m;
    m.iVersion = 2;
    m.xShmMap = t_shm_map; m.xShmLock = t_shm_lock; m.xShmBarrier = t_shm_barrier; m.xShmUnmap = t_shm_unmap;
    methods_v2 = m;
    m.iVersion = 3;
    m.xFetch = t_fetch; m.xUnfetch = t_unfetch;
    methods_v3 = m;
}

static int t_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags) {
    (void)vfs;
    timed_file *ours = (timed_file *)file;
    ours->real = (sqlite3_file *)&ours[1];
    ours->kind = (flags & SQLITE_OPEN_MAIN_DB) ? STAMPD_SYNC_DATABASE : (flags & SQLITE_OPEN_WAL) ? STAMPD_SYNC_WAL : STAMPD_SYNC_OTHER;
    int result = base_vfs->xOpen(base_vfs, name, ours->real, flags, out_flags);
    const sqlite3_io_methods *real = ours->real->pMethods;
    if (!real) {
        file->pMethods = 0;
        return result;
    }
    file->pMethods = real->iVersion >= 3 ? &methods_v3 : real->iVersion == 2 ? &methods_v2 : &methods_v1;
    return result;
}

static int t_delete(sqlite3_vfs *v, const char *n, int sync) { (void)v; return base_vfs->xDelete(base_vfs, n, sync); }
static int t_access(sqlite3_vfs *v, const char *n, int f, int *out) { (void)v; return base_vfs->xAccess(base_vfs, n, f, out); }
static int t_full_pathname(sqlite3_vfs *v, const char *n, int size, char *out) {
    (void)v; return base_vfs->xFullPathname(base_vfs, n, size, out);
}
static void *t_dl_open(sqlite3_vfs *v, const char *n) { (void)v; return base_vfs->xDlOpen(base_vfs, n); }
static void t_dl_error(sqlite3_vfs *v, int n, char *out) { (void)v; base_vfs->xDlError(base_vfs, n, out); }
static void (*t_dl_sym(sqlite3_vfs *v, void *h, const char *s))(void) { (void)v; return base_vfs->xDlSym(base_vfs, h, s); }
static void t_dl_close(sqlite3_vfs *v, void *h) { (void)v; base_vfs->xDlClose(base_vfs, h); }
static int t_randomness(sqlite3_vfs *v, int n, char *out) { (void)v; return base_vfs->xRandomness(base_vfs, n, out); }
static int t_sleep(sqlite3_vfs *v, int us) { (void)v; return base_vfs->xSleep(base_vfs, us); }
static int t_current_time(sqlite3_vfs *v, double *out) { (void)v; return base_vfs->xCurrentTime(base_vfs, out); }
static int t_last_error(sqlite3_vfs *v, int n, char *out) {
    (void)v; return base_vfs->xGetLastError ? base_vfs->xGetLastError(base_vfs, n, out) : 0;
}
static int t_current_time_int64(sqlite3_vfs *v, sqlite3_int64 *out) {
    (void)v; return base_vfs->xCurrentTimeInt64(base_vfs, out);
}

int stampd_sync_vfs_register(stampd_sync_observer tell) {
    atomic_store_explicit(&observer, tell, memory_order_release);
    if (sqlite3_vfs_find(stampd_sync_vfs_name)) return SQLITE_OK;
    base_vfs = sqlite3_vfs_find(0);
    if (!base_vfs) return SQLITE_ERROR;
    fill_methods();
    memset(&timed_vfs, 0, sizeof timed_vfs);
    timed_vfs.iVersion = 2;
    timed_vfs.szOsFile = (int)sizeof(timed_file) + base_vfs->szOsFile;
    timed_vfs.mxPathname = base_vfs->mxPathname;
    timed_vfs.zName = stampd_sync_vfs_name;
    timed_vfs.xOpen = t_open;
    timed_vfs.xDelete = t_delete;
    timed_vfs.xAccess = t_access;
    timed_vfs.xFullPathname = t_full_pathname;
    timed_vfs.xDlOpen = t_dl_open;
    timed_vfs.xDlError = t_dl_error;
    timed_vfs.xDlSym = t_dl_sym;
    timed_vfs.xDlClose = t_dl_close;
    timed_vfs.xRandomness = t_randomness;
    timed_vfs.xSleep = t_sleep;
    timed_vfs.xCurrentTime = t_current_time;
    timed_vfs.xGetLastError = t_last_error;
    timed_vfs.xCurrentTimeInt64 = base_vfs->iVersion >= 2 && base_vfs->xCurrentTimeInt64 ? t_current_time_int64 : 0;
    return sqlite3_vfs_register(&timed_vfs, 0);
}
