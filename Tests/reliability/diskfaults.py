#!/usr/bin/env python3
"""Disk faults: writes that fail with ENOSPC or EIO, and syncs that fail with EIO, injected into a
running server by libStampdFaults (LD_PRELOAD) at a chosen call: the next write (or sync) after it
is armed, and in random mode at a random one of the next 30. For each fault:

- no create is answered 2xx while the fault is in force (each is 503 with Retry-After), and
  nothing answered 2xx before it is lost;
- a failed write: once the disk is fine again (SIGUSR2) the same server takes writes again, with
  no restart: the refused creates, retried with their Idempotency-Key, are 201, and /readyz is 200;
- a failed sync: the server refuses every write from then on (503) and /readyz is 503, also after
  the disk is fine again, since a file whose sync failed cannot be trusted; after a restart it takes
  writes, and a create retried with its key is stored once (the refused one may have reached the
  log: it is replayed, never duplicated);
- at the end every create answered 2xx is stored once, and PRAGMA integrity_check is ok.

    diskfaults.py [--binary PATH] [--seed S] [--keep]
"""
import os
import random
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (Server, Tally, base_arguments, check_binary, create_account, create_store, fault_library,  # noqa: E402
                    integrity, make_workdir, open_db, request)

MODES = ["write-enospc", "write-eio", "fsync-eio"]


def create(port, token, store, key):
    status, headers, body = request(port, "POST", f"/v1/stores/{store}/requests", {"kind": "stamp", "count": 1},
                                    headers={"Idempotency-Key": key}, token=token)
    return status, headers, body


def run_case(args, mode, chosen, workdir, tally, rng):
    name = f"{mode} at {'the next call' if chosen else 'a random call'}"
    folder = os.path.join(workdir, f"{mode}-{'chosen' if chosen else 'random'}")
    os.makedirs(folder)
    db_path = os.path.join(folder, "db.sqlite")
    after = 1 if chosen else rng.randint(1, 30)
    library = args.fault_library
    server = Server(args.binary, db_path, folder,
                    prefix=["env", f"LD_PRELOAD={library}", f"STAMPD_FAULT_PREFIX={folder}/",
                            f"STAMPD_FAULT_MODE={mode}", f"STAMPD_FAULT_AFTER={after}",
                            # A short log, so that faults also come in the writer's checkpoints.
                            "STAMPD_DB_CHECKPOINT_PAGES=16"])
    try:
        server.start()
        port = server.port
        _, owner = create_account(port, "owner", f"owner@{mode}.example")
        store = create_store(port, owner, f"Fault Cafe {mode}")
        _, customer = create_account(port, "customer", f"customer@{mode}.example")
        stored = {}  # key -> request id answered 2xx
        for i in range(10):
            status, _, body = create(port, customer, store, f"before-{i}")
            if status == 201:
                stored[f"before-{i}"] = body["id"]
        tally.check(len(stored) == 10, f"{name}: creates before the fault are 201", f"{len(stored)} of 10")

        server.proc.send_signal(signal.SIGUSR1)
        refused, answered_2xx_during, other = [], [], []
        # Enough creates that the fault comes (at most 30 file calls later), then some under it.
        for i in range(40):
            key = f"during-{i}"
            status, headers, body = create(port, customer, store, key)
            if status == 201:
                # Before the armed call came: a normal write (a fault after it would be a loss).
                stored[key] = body["id"]
                if refused:
                    answered_2xx_during.append(key)
            elif status == 503 and "retry-after" in headers:
                refused.append(key)
            else:
                other.append((key, status, body))
        tally.check(bool(refused), f"{name}: the fault came and writes under it are 503 with Retry-After",
                    f"refused {len(refused)}, other {other[:3]}")
        tally.check(not answered_2xx_during and not other,
                    f"{name}: no write is answered 2xx once the fault came",
                    f"2xx after a refusal: {answered_2xx_during[:5]}, other answers: {other[:3]}")
        ready_during = request(port, "GET", "/readyz")[0]
        if mode == "fsync-eio":
            tally.check(ready_during == 503, f"{name}: /readyz is 503 once a sync failed", f"{ready_during}")

        # The disk is fine again. The kernel delivers the signal before the server reads the next
        # request, and the library looks at it on the next file call.
        server.proc.send_signal(signal.SIGUSR2)
        if mode.startswith("write"):
            retried = {key: create(port, customer, store, key) for key in refused}
            ok = {key: r[2]["id"] for key, r in retried.items() if r[0] == 201}
            tally.check(len(ok) == len(refused), f"{name}: the same server takes the refused creates once the disk is fine",
                        f"{len(ok)} of {len(refused)} retried creates 201: "
                        f"{[(k, r[0]) for k, r in retried.items() if r[0] != 201][:3]}")
            stored.update(ok)
            ready = request(port, "GET", "/readyz")[0]
            tally.check(ready == 200, f"{name}: /readyz is 200 again without a restart", f"{ready}")
        else:
            status, _, body = create(port, customer, store, "after-clear")
            tally.check(status == 503, f"{name}: writes stay refused after a failed sync, disk fine or not",
                        f"{status} {body!r}"[:200])
            ready = request(port, "GET", "/readyz")[0]
            tally.check(ready == 503, f"{name}: /readyz stays 503 until the restart", f"{ready}")
            code = server.stop()
            tally.check(code == 0, f"{name}: the refusing server stops cleanly", f"exit {code}")
            server.prefix = []
            server.start()
            retried = {key: create(port, customer, store, key) for key in refused + ["after-clear"]}
            ok = {key: r[2]["id"] for key, r in retried.items() if r[0] == 201}
            tally.check(len(ok) == len(retried), f"{name}: after a restart the refused creates are taken",
                        f"{len(ok)} of {len(retried)}")
            stored.update(ok)
            ready = request(port, "GET", "/readyz")[0]
            tally.check(ready == 200, f"{name}: /readyz is 200 after the restart", f"{ready}")

        code = server.stop()
        tally.check(code == 0, f"{name}: the server stops cleanly", f"exit {code}")
        db = open_db(db_path)
        try:
            missing = [k for k, rid in stored.items()
                       if db.execute("SELECT count(*) FROM requests WHERE id = ?", (rid,)).fetchone()[0] != 1]
            total = db.execute("SELECT count(*) FROM requests").fetchone()[0]
            keys = db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0]
        finally:
            db.close()
        tally.check(not missing, f"{name}: every create answered 2xx is stored", f"missing {missing[:5]}")
        tally.check(total == len(stored) == keys, f"{name}: each key made one request",
                    f"{total} requests, {keys} keys, {len(stored)} answered 2xx")
        check = integrity(db_path)
        tally.check(check == "ok", f"{name}: PRAGMA integrity_check", check)
        print(f"{name}: {len(refused)} creates refused under the fault, {len(stored)} stored, lost=0"
              if not missing else f"{name}: lost={len(missing)}", flush=True)
    finally:
        if server.alive():
            server.kill()


def main():
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fault-library", default=None, help="libStampdFaults.so (default: next to --binary)")
    args = parser.parse_args()
    check_binary(args.binary, "diskfaults")
    args.fault_library = fault_library(args.fault_library, args.binary, "diskfaults")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"diskfaults: seed {seed}, binary {args.binary}", flush=True)
    rng = random.Random(seed)
    workdir = make_workdir("diskfaults", args.keep)
    tally = Tally("diskfaults")
    try:
        for mode in MODES:
            for chosen in (True, False):
                try:
                    run_case(args, mode, chosen, workdir, tally, rng)
                except Exception as error:  # noqa: BLE001
                    tally.check(False, f"{mode}", repr(error)[:800])
    finally:
        if args.keep or tally.failed:
            print(f"diskfaults: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return tally.finish()


if __name__ == "__main__":
    sys.exit(main())
