// A disk that fails the way real ones do, for the reliability tests only: loaded into stampd with
// LD_PRELOAD, it wraps the file calls libsqlite3 makes (open64, pwrite64, write, ftruncate64,
// fdatasync, fsync) on the files under STAMPD_FAULT_PREFIX, and passes everything else through.
//
// It keeps, per file, what was written since that file's last sync: the bytes each write
// replaced. Armed by SIGUSR1, it injects STAMPD_FAULT_MODE at the STAMPD_FAULT_AFTER-th write
// (or sync) from then on:
//
//   power-cut     the power goes: every write not yet synced is undone (newest first), or, with
//                 STAMPD_FAULT_TEAR=1, undone sector by sector at random (512-byte sectors, as a
//                 disk may have written some of them), the shared-memory index (-shm, never
//                 durable) is emptied, and the process ends at once with status 86.
//   fsync-eio     every sync from then on fails with EIO and syncs nothing.
//   write-enospc  every write from then on fails with ENOSPC and writes nothing.
//   write-eio     every write from then on fails with EIO and writes nothing.
//
// SIGUSR2 clears an injected fault (the disk is fine again). Each event is one line on stderr,
// starting "faults:". SQLite's own crash tests simulate power loss the same way (its test VFS
// drops or tears unsynced writes); file creation and removal are not simulated (a directory
// entry is taken as durable at once).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_FD 65536
#define SECTOR 512

enum mode { MODE_NONE, MODE_POWER_CUT, MODE_FSYNC_EIO, MODE_WRITE_ENOSPC, MODE_WRITE_EIO };

/// What one write (or truncate) replaced: enough to undo it.
struct undo {
    struct undo *next;  // older
    char *path;
    off_t offset;
    size_t length;       // bytes written at offset (a truncate: 0)
    off_t size_before;   // the file's size before the change
    unsigned char *old;  // the bytes [offset, min(offset + length, size_before)) before (a truncate: [offset, size_before))
    size_t old_length;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char prefix[1024];
static size_t prefix_length;
static char *tracked[MAX_FD];  // path of each tracked descriptor (not -shm)
static char *shm_paths[64];
static int shm_count;
static struct undo *newest;
static enum mode mode;
static long after = 1;
static int tear;
static unsigned long long rng_state = 88172645463325252ULL;
static volatile sig_atomic_t armed;    // SIGUSR1
static volatile sig_atomic_t cleared;  // SIGUSR2
static long countdown = -1;            // writes (or syncs) left before the fault, once armed
static int active;                     // the injected fault is in force

static int (*real_open64)(const char *, int, ...);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);
static int (*real_close)(int);

static void say(const char *format, ...) {
    char line[512];
    va_list arguments;
    va_start(arguments, format);
    int n = vsnprintf(line, sizeof line, format, arguments);
    va_end(arguments);
    if (n > 0) syscall(SYS_write, 2, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
}

static unsigned long long next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void on_arm(int signal) { (void)signal; armed = 1; }
static void on_clear(int signal) { (void)signal; cleared = 1; }

__attribute__((constructor)) static void start(void) {
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_write = dlsym(RTLD_NEXT, "write");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_close = dlsym(RTLD_NEXT, "close");
    const char *given = getenv("STAMPD_FAULT_PREFIX");
    if (given && *given) {
        snprintf(prefix, sizeof prefix, "%s", given);
        prefix_length = strlen(prefix);
    }
    const char *name = getenv("STAMPD_FAULT_MODE");
    if (name) {
        if (!strcmp(name, "power-cut")) mode = MODE_POWER_CUT;
        else if (!strcmp(name, "fsync-eio")) mode = MODE_FSYNC_EIO;
        else if (!strcmp(name, "write-enospc")) mode = MODE_WRITE_ENOSPC;
        else if (!strcmp(name, "write-eio")) mode = MODE_WRITE_EIO;
    }
    if (getenv("STAMPD_FAULT_AFTER")) after = atol(getenv("STAMPD_FAULT_AFTER"));
    if (after < 1) after = 1;
    tear = getenv("STAMPD_FAULT_TEAR") && atoi(getenv("STAMPD_FAULT_TEAR")) == 1;
    if (getenv("STAMPD_FAULT_SEED")) rng_state = strtoull(getenv("STAMPD_FAULT_SEED"), NULL, 10) * 2654435761ULL + 1;
    struct sigaction action = {0};
    action.sa_handler = on_arm;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &action, NULL);
    action.sa_handler = on_clear;
    sigaction(SIGUSR2, &action, NULL);
    if (prefix_length) say("faults: watching %s, mode %s, after %ld, tear %d\n", prefix, name ? name : "none", after, tear);
}

static int under_prefix(const char *path) {
    return prefix_length && path && strncmp(path, prefix, prefix_length) == 0;
}

static int ends_with(const char *text, const char *suffix) {
    size_t a = strlen(text), b = strlen(suffix);
    return a >= b && strcmp(text + a - b, suffix) == 0;
}

/// Takes the signals' news into account; true when the fault is in force for this call.
/// `counts` says whether this call is the kind the mode counts (writes, or syncs).
static int fault_now(int counts) {
    if (cleared) {
        cleared = 0;
        armed = 0;
        if (active || countdown >= 0) say("faults: cleared\n");
        active = 0;
        countdown = -1;
    }
    if (armed && countdown < 0 && !active) {
        armed = 0;
        countdown = after;
        say("faults: armed, at the %ld-th call from now\n", after);
    }
    if (!active && countdown > 0 && counts) {
        countdown -= 1;
        if (countdown == 0) {
            countdown = -1;
            active = 1;
            say("faults: injecting\n");
        }
    }
    return active;
}

static off_t file_size(const char *path) {
    struct stat status;
    if (syscall(SYS_newfstatat, AT_FDCWD, path, &status, 0) != 0) return -1;
    return status.st_size;
}

/// Keeps what [offset, offset + length) of `path` holds now, before a write (or, with length 0,
/// a truncate to `offset`) changes it. Called with the lock held.
static void remember(int fd, const char *path, off_t offset, size_t length, int truncating) {
    struct undo *record = calloc(1, sizeof *record);
    if (!record) return;
    record->path = strdup(path);
    record->offset = offset;
    record->length = truncating ? 0 : length;
    record->size_before = file_size(path);
    off_t end = truncating ? record->size_before : offset + (off_t)length;
    if (record->size_before > offset) {
        off_t until = end < record->size_before ? end : record->size_before;
        record->old_length = (size_t)(until - offset);
        record->old = malloc(record->old_length ? record->old_length : 1);
        ssize_t got = syscall(SYS_pread64, fd, record->old, record->old_length, offset);
        if (got < 0) got = 0;
        record->old_length = (size_t)got;
    }
    record->next = newest;
    newest = record;
}

/// A sync made `path` durable: its undo records go.
static void forget(const char *path) {
    struct undo **link = &newest;
    while (*link) {
        struct undo *record = *link;
        if (strcmp(record->path, path) == 0) {
            *link = record->next;
            free(record->path);
            free(record->old);
            free(record);
        } else {
            link = &record->next;
        }
    }
}

static void write_at(int fd, const unsigned char *bytes, size_t length, off_t offset) {
    while (length > 0) {
        ssize_t done = syscall(SYS_pwrite64, fd, bytes, length, offset);
        if (done <= 0) return;
        bytes += done;
        length -= (size_t)done;
        offset += done;
    }
}

/// The power goes. Called with the lock held; never returns.
static void cut_power(void) {
    long records = 0, torn = 0;
    static const unsigned char zeros[SECTOR];
    for (struct undo *record = newest; record; record = record->next) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, record->path, O_WRONLY);
        if (fd < 0) continue;
        records += 1;
        if (record->length == 0) {
            // A truncate not yet synced: the cut-off bytes come back.
            write_at(fd, record->old, record->old_length, record->offset);
        } else if (!tear) {
            write_at(fd, record->old, record->old_length, record->offset);
            if (record->size_before >= 0 && record->size_before < record->offset + (off_t)record->length)
                syscall(SYS_ftruncate, fd, record->size_before < 0 ? 0 : record->size_before);
        } else {
            // Each sector the write touched is either as written or as before, at random.
            off_t first = record->offset / SECTOR * SECTOR;
            for (off_t sector = first; sector < record->offset + (off_t)record->length; sector += SECTOR) {
                if (next_random() & 1) continue;
                torn += 1;
                off_t from = sector > record->offset ? sector : record->offset;
                off_t to = sector + SECTOR < record->offset + (off_t)record->length ? sector + SECTOR
                                                                                    : record->offset + (off_t)record->length;
                for (off_t at = from; at < to;) {
                    off_t inside = at - record->offset;
                    size_t n;
                    if (inside < (off_t)record->old_length) {
                        n = (size_t)((off_t)record->old_length - inside < to - at ? (off_t)record->old_length - inside : to - at);
                        write_at(fd, record->old + inside, n, at);
                    } else {
                        n = (size_t)(to - at);
                        write_at(fd, zeros, n, at);
                    }
                    at += (off_t)n;
                }
            }
        }
        syscall(SYS_close, fd);
    }
    for (int i = 0; i < shm_count; i++) syscall(SYS_truncate, shm_paths[i], 0);
    say("faults: power cut: %ld unsynced writes undone%s (%ld sectors torn back)\n", records, tear ? " sector by sector" : "",
        torn);
    syscall(SYS_exit_group, 86);
    for (;;) {}
}

int open64(const char *path, int flags, ...) {
    mode_t permissions = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list arguments;
        va_start(arguments, flags);
        permissions = (mode_t)va_arg(arguments, int);
        va_end(arguments);
    }
    if (!real_open64) real_open64 = dlsym(RTLD_NEXT, "open64");
    int fd = real_open64(path, flags, permissions);
    if (fd >= 0 && fd < MAX_FD && under_prefix(path)) {
        pthread_mutex_lock(&lock);
        free(tracked[fd]);
        tracked[fd] = NULL;
        if (ends_with(path, "-shm")) {
            int known = 0;
            for (int i = 0; i < shm_count; i++) known |= strcmp(shm_paths[i], path) == 0;
            if (!known && shm_count < 64) shm_paths[shm_count++] = strdup(path);
        } else {
            tracked[fd] = strdup(path);
        }
        pthread_mutex_unlock(&lock);
    }
    return fd;
}

int close(int fd) {
    if (fd >= 0 && fd < MAX_FD && tracked[fd]) {
        // Its unsynced writes stay unsynced: only a sync makes them durable.
        pthread_mutex_lock(&lock);
        free(tracked[fd]);
        tracked[fd] = NULL;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

/// A write of `length` bytes at `offset` to a tracked descriptor.
static ssize_t tracked_write(int fd, const void *bytes, size_t length, off_t offset, int positional) {
    pthread_mutex_lock(&lock);
    const char *path = tracked[fd];
    if (!path) {
        pthread_mutex_unlock(&lock);
        return positional ? real_pwrite64(fd, bytes, length, offset) : real_write(fd, bytes, length);
    }
    int counts = mode == MODE_POWER_CUT || mode == MODE_WRITE_ENOSPC || mode == MODE_WRITE_EIO;
    if (fault_now(counts)) {
        if (mode == MODE_WRITE_ENOSPC || mode == MODE_WRITE_EIO) {
            pthread_mutex_unlock(&lock);
            errno = mode == MODE_WRITE_ENOSPC ? ENOSPC : EIO;
            return -1;
        }
        if (mode == MODE_POWER_CUT) {
            // This write reaches the page cache (and may be torn) like the others since the last sync.
            if (!positional) offset = lseek(fd, 0, SEEK_CUR);
            remember(fd, path, offset, length, 0);
            syscall(SYS_pwrite64, fd, bytes, length, offset);
            cut_power();
        }
    }
    if (!positional) offset = lseek(fd, 0, SEEK_CUR);
    remember(fd, path, offset, length, 0);
    pthread_mutex_unlock(&lock);
    return positional ? real_pwrite64(fd, bytes, length, offset) : real_write(fd, bytes, length);
}

ssize_t pwrite64(int fd, const void *bytes, size_t length, off_t offset) {
    if (fd < 0 || fd >= MAX_FD || !tracked[fd]) return real_pwrite64(fd, bytes, length, offset);
    return tracked_write(fd, bytes, length, offset, 1);
}

ssize_t write(int fd, const void *bytes, size_t length) {
    if (fd < 0 || fd >= MAX_FD || !tracked[fd]) return real_write(fd, bytes, length);
    return tracked_write(fd, bytes, length, 0, 0);
}

int ftruncate64(int fd, off_t size) {
    if (fd < 0 || fd >= MAX_FD || !tracked[fd]) return real_ftruncate64(fd, size);
    pthread_mutex_lock(&lock);
    if (tracked[fd]) {
        int counts = mode == MODE_WRITE_ENOSPC || mode == MODE_WRITE_EIO;
        if (fault_now(counts) && counts) {
            pthread_mutex_unlock(&lock);
            errno = mode == MODE_WRITE_ENOSPC ? ENOSPC : EIO;
            return -1;
        }
        remember(fd, tracked[fd], size, 0, 1);
    }
    pthread_mutex_unlock(&lock);
    return real_ftruncate64(fd, size);
}

static int tracked_sync(int fd, int (*real)(int)) {
    if (fd < 0 || fd >= MAX_FD || !tracked[fd]) return real(fd);
    pthread_mutex_lock(&lock);
    if (tracked[fd] && fault_now(mode == MODE_FSYNC_EIO) && mode == MODE_FSYNC_EIO) {
        // Like Linux after a failed writeback: the error is reported once the data is gone, and a
        // later sync may well succeed without the lost pages (why a failed sync cannot be retried).
        pthread_mutex_unlock(&lock);
        errno = EIO;
        return -1;
    }
    int result = real(fd);
    if (result == 0 && tracked[fd]) forget(tracked[fd]);
    pthread_mutex_unlock(&lock);
    return result;
}

int fdatasync(int fd) { return tracked_sync(fd, real_fdatasync); }
int fsync(int fd) { return tracked_sync(fd, real_fsync); }
