#!/usr/bin/env python3
"""Storage faults.

1. Locked: another process holds `BEGIN EXCLUSIVE` on the database for ~8 s. A write should answer
   503 problem+json with Retry-After once the busy timeout (5 s) runs out; reads keep working (WAL);
   after the release writes work again, and a create retried with the same Idempotency-Key makes
   exactly one request.
2. Read-only: (a) the database file read-only to the server's user (the server runs as `nobody`,
   since root ignores file modes), (b) the folder read-only too, (c) the filesystem remounted
   read-only under a running server. Each must either refuse writes with 503 (reads still served)
   or refuse to start with a clear message and a non-zero exit; which one is reported.
3. Full disk: the database on a small tmpfs, filled up by another file. Writes must answer 503
   (never 500, never a crash), reads keep working, and once space is freed writes succeed again
   without a restart; every write answered 2xx is in the file afterwards.

After each case `PRAGMA integrity_check` must be ok. A case the sandbox forbids (no root, mount not
permitted) is skipped with a message.

    storage.py [--binary PATH] [--only locked,readonly,full]
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (Server, Tally, base_arguments, check_binary, create_account, create_store, integrity,
                    make_workdir, problem_json, request)

NOBODY = 65534


def setup(port, tag):
    """An owner with a store, and a customer (customer-<tag>@example.com, password reliable-pass-1)."""
    _, owner = create_account(port, "owner", f"owner-{tag}@example.com")
    store = create_store(port, owner, f"Storage Cafe {tag}")
    _, customer = create_account(port, "customer", f"customer-{tag}@example.com")
    return owner, store, customer


def create(port, store, customer, key, timeout=30):
    began = time.monotonic()
    status, headers, body = request(port, "POST", f"/v1/stores/{store}/requests", {"kind": "stamp", "count": 1},
                                    headers={"Idempotency-Key": key}, token=customer, timeout=timeout)
    return status, headers, body, time.monotonic() - began


def describe(status, headers, body):
    detail = body.get("detail") if isinstance(body, dict) else (body[:80] if body else b"")
    return f"{status} {headers.get('content-type', '')} retry-after={headers.get('retry-after')} {detail!r}"


def unavailable_ok(status, headers):
    return status == 503 and problem_json(headers) and headers.get("retry-after") is not None


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------------------------

def case_locked(args, workdir, tally):
    print("locked: another process holds BEGIN EXCLUSIVE for 8 s", flush=True)
    db_path = os.path.join(workdir, "locked.sqlite")
    server = Server(args.binary, db_path, workdir, name="locked")
    try:
        server.start()
        _, store, customer = setup(server.port, "locked")
        status, _, _, _ = create(server.port, store, customer, "before-lock")
        tally.check(status == 201, "locked: a write before the lock", str(status))

        holder = sqlite3.connect(db_path, isolation_level=None, timeout=0)
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO event_positions (account_id, pruned_through) VALUES ('lock-holder', 0) "
                       "ON CONFLICT (account_id) DO NOTHING")
        locked_at = time.monotonic()
        results = {}

        def late_write():
            time.sleep(6.0)
            results["late"] = create(server.port, store, customer, "late-during-lock")

        late = threading.Thread(target=late_write, daemon=True)
        late.start()
        time.sleep(0.3)
        read_began = time.monotonic()
        read_status, _, _ = request(server.port, "GET", "/v1/me", token=customer, timeout=20)
        read_took = time.monotonic() - read_began
        status, headers, body, took = create(server.port, store, customer, "during-lock")
        print(f"  during the lock: GET /v1/me {read_status} in {read_took * 1000:.0f} ms; "
              f"POST answered {describe(status, headers, body)} after {took:.1f} s", flush=True)
        tally.check(read_status == 200, "locked: reads keep working (WAL)", f"{read_status}")
        tally.check(unavailable_ok(status, headers), "locked: a write answers 503 problem+json with Retry-After",
                    describe(status, headers, body))
        tally.check(4.0 <= took <= 7.5, "locked: the 503 comes after the busy timeout (about 5 s)", f"{took:.1f} s")
        remaining = 8.0 - (time.monotonic() - locked_at)
        if remaining > 0:
            time.sleep(remaining)
        holder.execute("ROLLBACK")
        holder.close()
        late.join(timeout=30)
        l_status, l_headers, l_body, l_took = results.get("late", (None, {}, None, 0))
        print(f"  a write started 2 s before the release answered {l_status} after {l_took:.1f} s")
        tally.check(l_status == 201, "locked: a write waiting when the lock is released succeeds",
                    describe(l_status, l_headers, l_body))
        status, headers, body, _ = create(server.port, store, customer, "during-lock")
        tally.check(status == 201, "locked: after the release, the retried create succeeds",
                    describe(status, headers, body))
        retry_status, _, retry_body, _ = create(server.port, store, customer, "during-lock")
        same = isinstance(retry_body, dict) and isinstance(body, dict) and retry_body.get("id") == body.get("id")
        tally.check(retry_status == 201 and same, "locked: the key replays the first answer", f"{retry_status}")
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        n = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        db.close()
        tally.check(n == 3, "locked: exactly one request per key answered 2xx", f"{n} requests, expected 3")
        code = server.stop()
        tally.check(code == 0, "locked: server stops cleanly", f"exit {code}")
        check = integrity(db_path)
        tally.check(check == "ok", "locked: PRAGMA integrity_check", check)
    finally:
        if server.alive():
            server.kill()


# --------------------------------------------------------------------------------------------

def as_nobody():
    if os.geteuid() != 0:
        return []  # already not root: file modes apply to us
    if not shutil.which("setpriv"):
        return None
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def db_files(folder, name="db.sqlite"):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(name))


def chattr(flag, paths):
    for path in paths:
        run(["chattr", flag, path])


def readonly_attempt(args, folder, db_path, tally, label, prefix=()):
    """Starts the server on a read-only database; returns a one-line outcome, checks it is acceptable:
    either it refuses to start with a clear message and a non-zero exit, or it starts, answers writes
    with 503 and still serves reads."""
    server = Server(args.binary, db_path, os.path.dirname(folder), name=f"ro-{label.replace(' ', '-')}",
                    prefix=list(prefix))
    try:
        try:
            server.start(timeout=15)
        except RuntimeError:
            code = server.proc.returncode
            log = server.log_tail(3)
            last = log.splitlines()[-1] if log else ""
            clear = "refusing to start" in log
            tally.check(code is not None and code > 0 and clear,
                        f"read-only ({label}): refusing to start is clear (message, non-zero exit, no crash)", log)
            return f"refused to start, exit {code}: {last[last.find('refusing'):][:160]}"
        status_w, headers_w, body_w = request(server.port, "POST", "/v1/sessions",
                                              {"login": "customer-ro@example.com", "password": "reliable-pass-1"})
        ready = request(server.port, "GET", "/readyz")[0]
        tally.check(unavailable_ok(status_w, headers_w),
                    f"read-only ({label}): a write (sign-in) answers 503 problem+json with Retry-After",
                    describe(status_w, headers_w, body_w))
        tally.check(ready == 200, f"read-only ({label}): reads keep working (/readyz)", str(ready))
        code = server.stop()
        tally.check(code == 0, f"read-only ({label}): server stops cleanly", f"exit {code}")
        return f"started; a write answered {describe(status_w, headers_w, body_w)}; GET /readyz {ready}"
    finally:
        if server.alive():
            server.kill()


def prepare(args, folder, tag, prefix=()):
    """A database in `folder` with an owner, a store and a customer, its server stopped."""
    os.makedirs(folder, exist_ok=True)
    db_path = os.path.join(folder, "db.sqlite")
    server = Server(args.binary, db_path, folder, name="setup", prefix=list(prefix))
    try:
        server.start()
        setup(server.port, tag)
        server.stop()
    finally:
        if server.alive():
            server.kill()
    return db_path


def case_readonly(args, workdir, tally):
    print("read-only: the database file, its folder, its filesystem", flush=True)

    # 1. As an unprivileged user, with file modes (root ignores them).
    prefix = as_nobody()
    if prefix is None:
        tally.skip("read-only (modes)", "running as root without setpriv")
    else:
        folder = os.path.join(workdir, "modes")
        os.makedirs(folder)
        if prefix:
            os.chown(folder, NOBODY, NOBODY)
        probe = Server(args.binary, os.path.join(folder, "db.sqlite"), folder, name="setup", prefix=prefix)
        served = None
        try:
            probe.start(wait=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and probe.alive() and "listening" not in open(probe.log_path).read():
                time.sleep(0.05)
            time.sleep(0.2)
            try:
                served = request(probe.port, "GET", "/healthz", timeout=5)[0]
            except Exception as error:  # noqa: BLE001
                served = repr(error)
        finally:
            probe.kill()
        user = "nobody" if prefix else "this user"
        print(f"  as {user}: GET /healthz -> {served}")
        if not tally.check(served == 200, f"read-only: the server serves requests as an unprivileged user ({user})",
                           f"GET /healthz -> {served} (each accepted connection is closed at once; see `strace -f -e "
                           f"setsockopt`)"):
            tally.skip("read-only (modes)", "the server does not serve as an unprivileged user")
        else:
            shutil.rmtree(folder)
            os.makedirs(folder)
            if prefix:
                os.chown(folder, NOBODY, NOBODY)
            db_path = prepare(args, folder, "ro", prefix)
            for path in db_files(folder):
                os.chmod(path, 0o444)
            print(f"  file mode 0444: {readonly_attempt(args, folder, db_path, tally, 'mode 0444', prefix)}")
            os.chmod(folder, 0o555)
            print(f"  folder mode 0555 too: {readonly_attempt(args, folder, db_path, tally, 'folder 0555', prefix)}")
            os.chmod(folder, 0o755)
            check = integrity(db_path)
            tally.check(check == "ok", "read-only (modes): PRAGMA integrity_check", check)

    # 2. Immutable file (chattr +i: even root cannot write it), then the folder too.
    folder = os.path.join(workdir, "immutable")
    db_path = prepare(args, folder, "ro")
    files = db_files(folder)
    chattr("+i", files)
    if run(["lsattr", "-d", db_path]).stdout.split()[0].find("i") < 0:
        tally.skip("read-only (immutable)", "chattr +i is not supported on this filesystem")
        chattr("-i", files)
    else:
        try:
            print(f"  file immutable ({', '.join(os.path.basename(f) for f in files)}): "
                  f"{readonly_attempt(args, folder, db_path, tally, 'immutable file')}")
            chattr("+i", [folder])
            print(f"  folder immutable too: {readonly_attempt(args, folder, db_path, tally, 'immutable folder')}")
        finally:
            chattr("-i", [folder] + db_files(folder))
        check = integrity(db_path)
        tally.check(check == "ok", "read-only (immutable): PRAGMA integrity_check", check)

    # 3. A read-only mount (EROFS) at start.
    folder = os.path.join(workdir, "ro-mount")
    db_path = prepare(args, folder, "ro")
    bound = run(["mount", "--bind", folder, folder])
    if bound.returncode != 0:
        tally.skip("read-only (mount)", f"mount not permitted: {bound.stderr.strip()}")
    else:
        try:
            ro = run(["mount", "-o", "remount,bind,ro", folder])
            if ro.returncode != 0:
                tally.skip("read-only (mount)", f"remount refused: {ro.stderr.strip()}")
            else:
                print(f"  read-only filesystem: {readonly_attempt(args, folder, db_path, tally, 'read-only mount')}")
        finally:
            run(["umount", folder])
        check = integrity(db_path)
        tally.check(check == "ok", "read-only (mount): PRAGMA integrity_check", check)

    # 4. The files turn read-only under a running server (chattr +i), then writable again.
    folder = os.path.join(workdir, "live")
    db_path = prepare(args, folder, "live")
    server = Server(args.binary, db_path, workdir, name="ro-live")
    try:
        server.start()
        token = request(server.port, "POST", "/v1/sessions",
                        {"login": "customer-live@example.com", "password": "reliable-pass-1"})[2]["token"]
        store = request(server.port, "GET", "/v1/stores?q=Storage", token=token)[2]["stores"][0]["id"]
        status, _, _, _ = create(server.port, store, token, "live-before")
        tally.check(status == 201, "read-only (live): a write before", str(status))
        # Not the -shm file: SQLite maps it into memory, and the kernel answers a store to a mapped
        # immutable file with SIGBUS, which no process survives; that says nothing about the server.
        files = [f for f in db_files(folder) if not f.endswith("-shm")]
        chattr("+i", files)
        try:
            status, headers, body, took = create(server.port, store, token, "live-during")
            more = [create(server.port, store, token, f"live-during-{i}")[0] for i in range(3)]
            reads = request(server.port, "GET", "/v1/me", token=token)[0]
            print(f"  database and WAL made immutable under the running server: POST {describe(status, headers, body)} "
                  f"in {took:.2f} s, then {more}; GET /v1/me {reads}", flush=True)
            tally.check(unavailable_ok(status, headers) and all(m == 503 for m in more),
                        "read-only (live): writes answer 503 problem+json with Retry-After",
                        f"{describe(status, headers, body)}; then {more}")
            tally.check(reads == 200, "read-only (live): reads keep working", str(reads))
        finally:
            chattr("-i", files)
        recovered = None
        began = time.monotonic()
        while time.monotonic() - began < 10:
            status, headers, body, _ = create(server.port, store, token, "live-during")
            if status == 201:
                recovered = time.monotonic() - began
                break
            time.sleep(0.2)
        print(f"  writable again: the refused create, retried with its key, answered "
              f"{status} after {recovered if recovered is not None else float('nan'):.2f} s", flush=True)
        tally.check(recovered is not None, "read-only (live): writes work again without a restart",
                    describe(status, headers, body))
        tally.check(server.alive(), "read-only (live): server alive", server.log_tail())
        code = server.stop()
        tally.check(code == 0, "read-only (live): server stops cleanly", f"exit {code}")
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        n = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        db.close()
        tally.check(n == 2, "read-only (live): exactly the writes answered 2xx are stored", f"{n} requests, expected 2")
        check = integrity(db_path)
        tally.check(check == "ok", "read-only (live): PRAGMA integrity_check", check)
    finally:
        if server.alive():
            server.kill()
        chattr("-i", db_files(folder))


# --------------------------------------------------------------------------------------------

def fill(path, limit_bytes):
    """Writes `path` until the filesystem is full (or `limit_bytes`); returns bytes written."""
    written = 0
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while written < limit_bytes:
            try:
                written += f.write(block)
            except OSError:
                # Fill the last partial block byte range too.
                small = b"\0" * 512
                while written < limit_bytes:
                    try:
                        written += f.write(small)
                    except OSError:
                        return written
    return written


def case_full(args, workdir, tally):
    size_mb = 4
    print(f"full disk: the database on a {size_mb} MiB tmpfs, filled by another file", flush=True)
    mnt = os.path.join(workdir, "full-mount")
    os.makedirs(mnt)
    mounted = run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", mnt])
    if mounted.returncode != 0:
        tally.skip("full disk", f"mount not permitted: {mounted.stderr.strip()}")
        return
    db_path = os.path.join(mnt, "db.sqlite")
    filler = os.path.join(mnt, "filler")
    server = Server(args.binary, db_path, workdir, name="full")
    answered = {}   # key -> request id, for creates answered 2xx
    try:
        server.start()
        owner, store, customer = setup(server.port, "full")
        for i in range(20):
            status, _, body, _ = create(server.port, store, customer, f"before-{i}")
            if status == 201:
                answered[f"before-{i}"] = body["id"]
        filled = fill(filler, size_mb * 1024 * 1024 * 2)
        print(f"  filled {filled / 1024:.0f} KiB; df: {shutil.disk_usage(mnt).free} bytes free", flush=True)
        statuses = {}
        first_failure = None
        n = 0
        for n in range(1, 2001):
            key = f"full-{n}"
            status, headers, body, _ = create(server.port, store, customer, key)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                answered[key] = body["id"]
                continue
            first_failure = (key, status, headers, body)
            break
        if first_failure is None:
            tally.check(False, "full disk: writes are refused once the disk is full",
                        f"{n} writes all answered 201 on a full filesystem")
        else:
            key, status, headers, body = first_failure
            print(f"  {statuses.get(201, 0)} writes still fit before the first refusal, which was "
                  f"{describe(status, headers, body)}", flush=True)
            tally.check(unavailable_ok(status, headers), "full disk: a write answers 503 problem+json with Retry-After",
                        describe(status, headers, body))
            more = [create(server.port, store, customer, f"{key}-again-{i}")[0] for i in range(5)]
            tally.check(all(s == 503 for s in more), "full disk: further writes keep answering 503", f"{more}")
        reads = request(server.port, "GET", "/v1/me", token=customer)
        tally.check(reads[0] == 200, "full disk: reads keep working", str(reads[0]))
        tally.check(server.alive(), "full disk: server alive", server.log_tail())
        os.remove(filler)
        recovered = None
        began = time.monotonic()
        retry_key = first_failure[0] if first_failure else "after-free"
        while time.monotonic() - began < 10:
            status, headers, body, _ = create(server.port, store, customer, retry_key)
            if status == 201:
                answered[retry_key] = body["id"]
                recovered = time.monotonic() - began
                break
            time.sleep(0.2)
        print(f"  after freeing the space: the refused create, retried with its key, answered 201 "
              f"{recovered if recovered is not None else float('nan'):.2f} s later", flush=True)
        tally.check(recovered is not None, "full disk: writes succeed again once space is freed, without a restart",
                    describe(status, headers, body))
        for i in range(20):
            status, _, body, _ = create(server.port, store, customer, f"after-{i}")
            if status == 201:
                answered[f"after-{i}"] = body["id"]
        tally.check(len([k for k in answered if k.startswith("after-")]) == 20, "full disk: later writes all succeed")

        # The disk fills up under concurrent writers (group commit: many writes share a transaction).
        stop = threading.Event()
        seen = {}
        lock = threading.Lock()
        errors = []

        def writer(w):
            for i in range(100_000):
                if stop.is_set():
                    return
                key = f"conc-{w}-{i}"
                try:
                    status, _, body, _ = create(server.port, store, customer, key)
                except Exception as error:  # noqa: BLE001
                    errors.append(repr(error))
                    return
                with lock:
                    seen[status] = seen.get(status, 0) + 1
                    if status == 201:
                        answered[key] = body["id"]
                if status != 201:
                    time.sleep(0.05)

        writers = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(8)]
        for t in writers:
            t.start()
        time.sleep(0.5)
        fill(filler, size_mb * 1024 * 1024 * 2)
        time.sleep(2.0)
        os.remove(filler)
        time.sleep(1.0)
        stop.set()
        for t in writers:
            t.join(timeout=30)
        print(f"  8 concurrent writers while the disk filled and emptied: answers {dict(sorted(seen.items()))}"
              f"{', errors ' + str(errors[:2]) if errors else ''}", flush=True)
        tally.check(not errors and set(seen) <= {201, 503} and seen.get(503, 0) > 0,
                    "full disk (concurrent): every write answered 201 or 503, and some were refused",
                    f"answers {seen}, errors {errors[:2]}")
        tally.check(server.alive(), "full disk (concurrent): server alive", server.log_tail())
        code = server.stop()
        tally.check(code == 0, "full disk: server stops cleanly", f"exit {code}; {server.log_tail(5)}")
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        stored = {r[0] for r in db.execute("SELECT id FROM requests")}
        keys = {r[0] for r in db.execute("SELECT key FROM idempotency_keys")}
        db.close()
        missing = [k for k, rid in answered.items() if rid not in stored]
        tally.check(not missing, "full disk: every write answered 2xx is in the database", f"missing {missing[:5]}")
        tally.check(len(stored) == len(answered) and keys == set(answered),
                    "full disk: nothing refused was stored, nothing answered was lost",
                    f"{len(stored)} requests stored, {len(answered)} answered 2xx")
        check = integrity(db_path)
        tally.check(check == "ok", "full disk: PRAGMA integrity_check", check)
    finally:
        if server.alive():
            server.kill()
        run(["umount", mnt])


def main():
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--only", default="locked,readonly,full")
    args = parser.parse_args()
    check_binary(args.binary, "storage")
    workdir = make_workdir("storage", args.keep)
    os.chmod(workdir, 0o755)
    tally = Tally("storage")
    cases = {"locked": case_locked, "readonly": case_readonly, "full": case_full}
    try:
        for name in args.only.split(","):
            try:
                cases[name.strip()](args, workdir, tally)
            except Exception as error:  # noqa: BLE001
                tally.check(False, name, repr(error)[:800])
    finally:
        if args.keep or tally.failed:
            print(f"storage: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return tally.finish()


if __name__ == "__main__":
    sys.exit(main())
