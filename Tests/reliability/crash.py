#!/usr/bin/env python3
"""Crash durability: concurrent customers create stamp requests (with an Idempotency-Key) and owners
approve them, while the server is killed with SIGKILL at a random moment and restarted on the same
database. The clients retry through the crash (same key for creates), then the database and the
event log are checked:

- every create and every approval answered 2xx is in the database (lost = 0), with its ledger rows;
- every card equals the sum of its ledger;
- no retried create made a duplicate (requests per customer = distinct keys answered 2xx, and each
  idempotency_keys row replays the id the client got);
- the events each account is served by GET /v1/events after the restart are exactly the rows of
  the events table, and they match the requests (created + approved per owner, approved per customer);
- the restarted server stops cleanly on SIGTERM; on SQLite PRAGMA integrity_check is ok, on
  PostgreSQL no connection of the server is left open after its stop.

With --power-cut (SQLite only) the kill is a simulated power loss instead of a SIGKILL: the server
runs over libStampdFaults (LD_PRELOAD, built with the package next to the binary), which keeps what
each write to the database's files replaced since that file's last sync. At the moment the kill
would come the harness arms it (SIGUSR1); at a random one of the next 24 writes the "power goes":
every unsynced write is undone (in a random half of the rounds, torn: undone sector by sector at
random), the -shm index is emptied, and the process ends at once. A SIGKILL leaves the kernel's
page cache intact; this does not, so it tests that every 2xx waited for its sync.

    crash.py [--binary PATH] [--rounds N] [--seed S] [--customers C] [--owners O] [--creates K]
             [--database postgres://USER:PW@HOST:PORT/DB] [--power-cut]

The engine: a SQLite file per round in a temporary folder, or, with --database (default
$STAMPD_TEST_DATABASE when that is a postgres:// URL), that PostgreSQL database. Its schema
(public, or the URL's ?search_path=) is dropped and created again before each round, so every
round starts empty and the database is left empty after a passing run; a round that failed, or
every round with --keep, is kept as schema crash_round_N. Give it a database of its own: one that
holds other tables is refused. Events' positions (seq) are compared as they are stored: on
PostgreSQL they come from a global sequence, increasing per account but not dense.
"""
import http.client
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (HOST, Server, Tally, base_arguments, check_binary, create_account, create_store, fault_library,
                    integrity, is_postgres_url, make_workdir, open_database, postgres_sessions, redact_url,
                    request, reset_postgres, test_database_url)

RETRYABLE = (OSError, http.client.HTTPException)
POWER_CUT_STATUS = 86  # how libStampdFaults ends the process when it cuts the power
OP_DEADLINE = 60.0  # seconds one create or approval may keep retrying


class Client:
    """A keep-alive connection that reconnects after any failure; `call` retries until answered."""

    def __init__(self, port, stats):
        self.port = port
        self.conn = None
        self.stats = stats

    def _reset(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def call(self, method, path, body=None, headers=None, token=None):
        """Returns (status, headers, body, attempts); retries connection failures and 503 until answered."""
        deadline = time.monotonic() + OP_DEADLINE
        attempts = 0
        while True:
            attempts += 1
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=15)
            try:
                status, rh, parsed = request(self.port, method, path, body, headers, token, conn=self.conn)
                if rh.get("connection", "").lower() == "close":
                    self._reset()
                if status == 503:
                    self.stats.bump("answered_503")
                    if time.monotonic() > deadline:
                        return status, rh, parsed, attempts
                    time.sleep(min(1.0, float(rh.get("retry-after", "1") or 1)))
                    continue
                return status, rh, parsed, attempts
            except RETRYABLE:
                self._reset()
                self.stats.bump("connection_failures")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{method} {path}: no answer within {OP_DEADLINE} s")
                time.sleep(0.02)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.answered_writes = 0

    def bump(self, name, by=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + by

    def wrote(self):
        with self.lock:
            self.answered_writes += 1

    def get(self, name):
        with self.lock:
            return self.counts.get(name, 0)


def run_round(args, number, binary, workdir, tally, rng):
    server_box = []
    try:
        return _run_round(args, number, binary, workdir, tally, rng, server_box)
    finally:
        for server in server_box:
            if server.alive():
                server.kill()


def _run_round(args, number, binary, workdir, tally, rng, server_box):
    folder = os.path.join(workdir, f"round-{number}")
    os.makedirs(folder)
    postgres = bool(args.database)
    # The --database of the server: a file of this round, or the PostgreSQL database that main
    # emptied for this round.
    db_path = args.database if postgres else os.path.join(folder, "db.sqlite")
    cut = None
    if args.power_cut:
        cut = {"after": rng.randint(1, 24), "tear": rng.randint(0, 1), "seed": rng.randrange(1 << 30)}
        fault_env = ["env", f"LD_PRELOAD={args.fault_library}", f"STAMPD_FAULT_PREFIX={folder}/",
                     "STAMPD_FAULT_MODE=power-cut", f"STAMPD_FAULT_AFTER={cut['after']}",
                     f"STAMPD_FAULT_TEAR={cut['tear']}", f"STAMPD_FAULT_SEED={cut['seed']}",
                     # A short log, so that cuts also come while the writer checkpoints.
                     "STAMPD_DB_CHECKPOINT_PAGES=16"]
        server = Server(binary, db_path, folder, prefix=fault_env)
    else:
        server = Server(binary, db_path, folder)
    server_box.append(server)
    server.start()
    port = server.port
    stats = Stats()
    problems = []  # (what, detail) found by the client threads
    problems_lock = threading.Lock()

    def problem(what, detail):
        with problems_lock:
            problems.append((what, detail))

    # Set-up (before the kill): owners with one store each, customers.
    owners = []
    for o in range(args.owners):
        oid, token = create_account(port, "owner", f"owner{o}@round{number}.example")
        sid = create_store(port, token, f"Crash Cafe {o}", stamps_per_reward=rng.choice([3, 5, 10]))
        owners.append({"id": oid, "token": token, "store": sid, "queue": queue.Queue()})
    customers = []
    for c in range(args.customers):
        cid, token = create_account(port, "customer", f"customer{c}@round{number}.example")
        customers.append({"id": cid, "token": token})

    created = {}   # (customer_id, key) -> request id, for creates answered 2xx
    counts = {}    # request id -> count asked
    approved_2xx = set()
    approved_after_retry = set()
    record_lock = threading.Lock()
    customers_done = threading.Event()

    def customer_main(index, customer):
        client = Client(port, stats)
        local_rng = random.Random(rng.random())
        try:
            for i in range(args.creates):
                owner = owners[(index + i) % len(owners)]
                key = f"r{number}-c{index}-{i}"
                count = local_rng.randint(1, 3)
                status, _, body, _ = client.call("POST", f"/v1/stores/{owner['store']}/requests",
                                                 {"kind": "stamp", "count": count},
                                                 headers={"Idempotency-Key": key}, token=customer["token"])
                if status in (200, 201) and isinstance(body, dict) and "id" in body:
                    stats.wrote()
                    with record_lock:
                        created[(customer["id"], key)] = body["id"]
                        counts[body["id"]] = count
                    owner["queue"].put(body["id"])
                else:
                    problem("create answered", f"{key}: {status} {body!r}"[:300])
        except Exception as error:  # noqa: BLE001 - reported as a failure of the round
            problem("customer thread", repr(error))

    def owner_main(owner):
        client = Client(port, stats)
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline:
                try:
                    request_id = owner["queue"].get(timeout=0.1)
                except queue.Empty:
                    if customers_done.is_set() and owner["queue"].empty():
                        return
                    continue
                status, _, body, attempts = client.call("POST", f"/v1/requests/{request_id}/approve",
                                                        token=owner["token"])
                if status == 200:
                    stats.wrote()
                    with record_lock:
                        approved_2xx.add(request_id)
                elif status == 409 and attempts > 1:
                    # The first attempt may have committed before its answer was lost.
                    s2, _, got, _ = client.call("GET", f"/v1/requests/{request_id}", token=owner["token"])
                    if s2 == 200 and isinstance(got, dict) and got.get("status") == "approved":
                        stats.bump("approve_409_already_approved")
                        with record_lock:
                            approved_after_retry.add(request_id)
                    else:
                        problem("approve retry 409", f"{request_id}: GET says {s2} {got!r}"[:300])
                else:
                    problem("approve answered", f"{request_id}: {status} after {attempts} attempts: {body!r}"[:300])
        except Exception as error:  # noqa: BLE001
            problem("owner thread", repr(error))

    # Kill while writes are in flight: once a random share of the round's writes is answered.
    total_writes = 2 * args.customers * args.creates
    # A power cut is armed there and comes within the next writes, so it leaves more of them.
    kill_target = rng.randint(max(1, int(0.05 * total_writes)), int((0.6 if cut else 0.9) * total_writes))
    restart_delay = rng.uniform(0.0, 0.3)
    kill_info = {}

    def killer():
        deadline = time.monotonic() + 120
        while stats.answered_writes < kill_target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))
        kill_info["answered_before"] = stats.answered_writes
        if cut is None:
            server.kill()
        else:
            # Armed now, the power goes inside one of the next writes; the process ends itself.
            server.proc.send_signal(signal.SIGUSR1)
            try:
                code = server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
                server.kill()
            if code != POWER_CUT_STATUS:
                problem("power cut", f"the server ended with {code}, not by the cut; {server.log_tail(5)}")
            with open(server.log_path, errors="replace") as log:
                said = re.findall(r"faults: power cut: (\d+) unsynced writes undone.*?\((\d+) sectors", log.read())
            if said:
                kill_info["undone"], kill_info["torn"] = (int(n) for n in said[-1])
            server.prefix = []  # the disk is whole again: restart without the library
        kill_info["killed_at"] = time.monotonic() - began
        time.sleep(restart_delay)
        started = time.monotonic()
        try:
            server.start(timeout=30)
            kill_info["restart_seconds"] = time.monotonic() - started
        except RuntimeError as error:
            problem("restart", str(error)[:500])

    threads = [threading.Thread(target=customer_main, args=(i, c), daemon=True) for i, c in enumerate(customers)]
    threads += [threading.Thread(target=owner_main, args=(o,), daemon=True) for o in owners]
    kill_thread = threading.Thread(target=killer, daemon=True)
    began = time.monotonic()
    for t in threads:
        t.start()
    kill_thread.start()
    for t in threads[:len(customers)]:
        t.join(timeout=max(1.0, 240 - (time.monotonic() - began)))
    customers_done.set()
    for t in threads[len(customers):]:
        t.join(timeout=max(1.0, 300 - (time.monotonic() - began)))
    kill_thread.join(timeout=60)
    elapsed = time.monotonic() - began
    hung = [t for t in threads if t.is_alive()]
    tally.check(not hung, f"round {number}: clients finished", f"{len(hung)} client threads still running")
    for what, detail in problems:
        tally.check(False, f"round {number}: {what}", detail)
    if not server.alive():
        tally.check(False, f"round {number}: server running after restart", server.log_tail())
        return {"lost": None}

    # The events every account is served after the restart.
    accounts = [o["id"] for o in owners] + [c["id"] for c in customers]
    tokens = {o["id"]: o["token"] for o in owners}
    tokens.update({c["id"]: c["token"] for c in customers})
    served = {}

    def poll_all(account):
        ids = []
        cursor = "0"
        for _ in range(200):
            status, _, body = request(port, "GET", f"/v1/events?after={cursor}&limit=1000&timeout=1",
                                      token=tokens[account], timeout=15)
            if status != 200 or not isinstance(body, dict):
                served[account] = ("error", f"{status} {body!r}"[:200])
                return
            if body.get("reset"):
                served[account] = ("error", "reset: true after a restart")
                return
            if not body["events"]:
                break
            ids.extend(int(e["id"]) for e in body["events"])
            cursor = body["cursor"]
        served[account] = ("ok", ids)

    pollers = [threading.Thread(target=poll_all, args=(a,), daemon=True) for a in accounts]
    for t in pollers:
        t.start()
    for t in pollers:
        t.join(timeout=60)

    # The database.
    lost_creates, lost_approvals = [], []
    db = open_database(db_path)
    try:
        for (customer_id, key), request_id in created.items():
            row = db.execute("SELECT customer_id FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None or row[0] != customer_id:
                lost_creates.append(request_id)
        for request_id in approved_2xx | approved_after_retry:
            row = db.execute("SELECT status, count FROM requests WHERE id = ?", (request_id,)).fetchone()
            added = db.execute("SELECT count(*), coalesce(sum(stamps_delta), 0) FROM ledger "
                               "WHERE request_id = ? AND kind = 'stamp_added'", (request_id,)).fetchone()
            if row is None or row[0] != "approved" or added != (1, row[1]) or row[1] != counts.get(request_id):
                lost_approvals.append((request_id, row, added))
        lost = len(lost_creates) + len([r for r in lost_approvals if r[0] in approved_2xx])
        tally.check(not lost_creates, f"round {number}: every create answered 2xx is stored",
                    f"missing {lost_creates[:5]}")
        tally.check(not lost_approvals, f"round {number}: every approval answered is stored with its ledger rows",
                    f"{lost_approvals[:5]}")

        bad_cards = db.execute("""
            SELECT c.customer_id, c.store_id, c.stamps, c.rewards,
                   coalesce(sum(l.stamps_delta), 0), coalesce(sum(l.rewards_delta), 0)
            FROM cards c LEFT JOIN ledger l ON l.customer_id = c.customer_id AND l.store_id = c.store_id
            GROUP BY c.customer_id, c.store_id
            HAVING c.stamps != coalesce(sum(l.stamps_delta), 0) OR c.rewards != coalesce(sum(l.rewards_delta), 0)
            """).fetchall()
        orphans = db.execute("""
            SELECT count(*) FROM ledger l LEFT JOIN cards c
              ON c.customer_id = l.customer_id AND c.store_id = l.store_id WHERE c.customer_id IS NULL
            """).fetchone()[0]
        n_cards = db.execute("SELECT count(*) FROM cards").fetchone()[0]
        tally.check(not bad_cards and orphans == 0, f"round {number}: every card equals the sum of its ledger",
                    f"{bad_cards[:5]}, {orphans} ledger rows without a card")

        # Approved requests in the database whose approval nobody saw are fine (the answer was lost);
        # but every approved request must have been approved by us, once.
        stray = db.execute("SELECT count(*) FROM requests WHERE status NOT IN ('pending', 'approved')").fetchone()[0]
        tally.check(stray == 0, f"round {number}: no request in an unexpected state", f"{stray} rows")
        double = db.execute("SELECT request_id, count(*) FROM ledger WHERE kind = 'stamp_added' "
                            "GROUP BY request_id HAVING count(*) > 1").fetchall()
        tally.check(not double, f"round {number}: no approval applied twice", f"{double[:5]}")

        duplicates = []
        keys_by_customer = {}
        for (customer_id, key), request_id in created.items():
            keys_by_customer.setdefault(customer_id, {})[key] = request_id
        for customer in customers:
            mine = keys_by_customer.get(customer["id"], {})
            n_requests = db.execute("SELECT count(*) FROM requests WHERE customer_id = ?",
                                    (customer["id"],)).fetchone()[0]
            stored = dict(db.execute("SELECT key, response FROM idempotency_keys WHERE account_id = ?",
                                     (customer["id"],)).fetchall())
            if n_requests != len(mine) or len(stored) != len(mine):
                duplicates.append((customer["id"], n_requests, len(mine), len(stored)))
            for key, request_id in mine.items():
                if key not in stored or f'"id":"{request_id}"' not in stored[key]:
                    duplicates.append((customer["id"], key, request_id, "replay differs"))
        tally.check(not duplicates, f"round {number}: no retried create made a duplicate",
                    f"(customer, requests, keys answered, keys stored): {duplicates[:5]}")

        event_problems = []
        for account in accounts:
            in_db = [r[0] for r in db.execute("SELECT seq FROM events WHERE account_id = ? ORDER BY seq", (account,))]
            kind, got = served.get(account, ("error", "poll did not finish"))
            if kind != "ok":
                event_problems.append((account, got))
            elif got != in_db:
                event_problems.append((account, f"served {len(got)}, stored {len(in_db)}",
                                       sorted(set(in_db) ^ set(got))[:5]))
        for o in owners:
            n_req = db.execute("SELECT count(*) FROM requests WHERE store_id = ?", (o["store"],)).fetchone()[0]
            n_app = db.execute("SELECT count(*) FROM requests WHERE store_id = ? AND status = 'approved'",
                               (o["store"],)).fetchone()[0]
            types = dict(db.execute("SELECT type, count(*) FROM events WHERE account_id = ? GROUP BY type",
                                    (o["id"],)).fetchall())
            if types.get("request.created", 0) != n_req or types.get("request.approved", 0) != n_app:
                event_problems.append((o["id"], "owner events do not match requests", types, n_req, n_app))
        for c in customers:
            n_app = db.execute("SELECT count(*) FROM requests WHERE customer_id = ? AND status = 'approved'",
                               (c["id"],)).fetchone()[0]
            types = dict(db.execute("SELECT type, count(*) FROM events WHERE account_id = ? GROUP BY type",
                                    (c["id"],)).fetchall())
            if types.get("request.approved", 0) != n_app:
                event_problems.append((c["id"], "customer events do not match approvals", types, n_app))
        tally.check(not event_problems, f"round {number}: every committed event is served after the restart",
                    f"{event_problems[:3]}")
        n_requests = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        n_approved = db.execute("SELECT count(*) FROM requests WHERE status = 'approved'").fetchone()[0]
        n_events = db.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        db.close()

    code = server.stop()
    tally.check(code == 0, f"round {number}: the restarted server stops cleanly on SIGTERM",
                f"exit {code}; {server.log_tail(10)}")
    if postgres:
        # SIGKILL closed the first server's sockets and SIGTERM should close the pool of the
        # second: PostgreSQL ends those sessions, none lingers.
        left = postgres_sessions(db_path, wait=10.0)
        tally.check(left == 0, f"round {number}: no connection of the server left open after its stop",
                    f"{left} sessions with application_name stampd after 10 s")
    else:
        check = integrity(db_path)
        tally.check(check == "ok", f"round {number}: PRAGMA integrity_check", check)

    figures = {
        "lost": lost,
        "writes": stats.answered_writes,
        "before": kill_info.get("answered_before"),
        "kill_at": kill_info.get("killed_at"),
        "restart": kill_info.get("restart_seconds"),
        "conn_failures": stats.get("connection_failures"),
        "answered_503": stats.get("answered_503"),
        "replayed_409": stats.get("approve_409_already_approved"),
        "requests": n_requests, "approved": n_approved, "events": n_events, "cards": n_cards,
        "elapsed": elapsed,
    }
    how = "" if cut is None else (f"power cut at the {cut['after']}. write after arming, "
                                  f"{kill_info.get('undone', '?')} unsynced writes undone"
                                  + (f" ({kill_info.get('torn', '?')} sectors torn back)" if cut["tear"] else "") + ", ")
    figures["undone"] = kill_info.get("undone", 0)
    figures["torn"] = kill_info.get("torn", 0) if cut and cut["tear"] else None
    print(f"round {number}: {how}writes answered {figures['writes']} ({figures['before']} before the kill), "
          f"kill at {figures['kill_at'] or float('nan'):.2f} s, restart {figures['restart'] or float('nan'):.2f} s, "
          f"connection failures {figures['conn_failures']}, 503 answers {figures['answered_503']}, approve 409-then-approved {figures['replayed_409']}, "
          f"requests {n_requests}, approved {n_approved}, events {n_events}, cards {n_cards}, "
          f"lost={lost}, {elapsed:.1f} s", flush=True)
    return figures


def main(argv=None, tag="crash"):
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="kill/restart rounds (default 3; 30+ locally)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--customers", type=int, default=12)
    parser.add_argument("--owners", type=int, default=3)
    parser.add_argument("--creates", type=int, default=40, help="creates per customer per round")
    parser.add_argument("--power-cut", action="store_true",
                        help="cut the power (drop or tear unsynced writes) instead of SIGKILL; SQLite only")
    parser.add_argument("--fault-library", default=None,
                        help="libStampdFaults.so (default: next to --binary)")
    parser.add_argument("--database", default=test_database_url(),
                        help="a postgres:// URL of an empty database to run on PostgreSQL (default: "
                             "$STAMPD_TEST_DATABASE when it is one; else SQLite files)")
    args = parser.parse_args(argv)
    check_binary(args.binary, tag)
    if args.database and not is_postgres_url(args.database):
        print(f"{tag}: --database must be a postgres:// URL, not {args.database!r}", file=sys.stderr)
        return 2
    if args.power_cut:
        if args.database:
            print(f"{tag}: --power-cut runs on SQLite files only", file=sys.stderr)
            return 2
        args.fault_library = fault_library(args.fault_library, args.binary, tag)
    engine = f"PostgreSQL {redact_url(args.database)}" if args.database else "SQLite"
    kill = "power cuts" if args.power_cut else "SIGKILL"
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"{tag}: {args.rounds} rounds of {kill}, seed {seed}, {args.customers} customers x {args.creates} creates, "
          f"{args.owners} owners, binary {args.binary}, database {engine}", flush=True)
    rng = random.Random(seed)
    workdir = make_workdir(tag, args.keep)
    tally = Tally(tag)
    totals = {"writes": 0, "lost": 0}
    keep_schema = None  # on PostgreSQL: the name to keep the previous round's schema under
    try:
        for number in range(1, args.rounds + 1):
            failed_before = tally.failed
            try:
                if args.database:
                    reset_postgres(args.database, keep_as=keep_schema)
                figures = run_round(args, number, args.binary, workdir, tally, rng)
            except Exception as error:  # noqa: BLE001
                tally.check(False, f"round {number}", repr(error)[:800])
                figures = {}
            keep_schema = f"crash_round_{number}" if args.keep or tally.failed > failed_before else None
            totals["writes"] += figures.get("writes", 0) or 0
            totals["lost"] += figures.get("lost") or 0
            totals["undone"] = totals.get("undone", 0) + (figures.get("undone") or 0)
            if figures.get("torn") is not None:
                totals["torn rounds"] = totals.get("torn rounds", 0) + 1
        on = " on PostgreSQL" if args.database else ""
        cuts = (f", {totals.get('undone', 0)} unsynced writes undone, {totals.get('torn rounds', 0)} rounds torn"
                if args.power_cut else "")
        print(f"{tag}: {args.rounds} rounds of {kill}{on}, {totals['writes']} writes answered{cuts}, lost={totals['lost']}")
    finally:
        if args.database:
            try:
                reset_postgres(args.database, keep_as=keep_schema)
            except Exception as error:  # noqa: BLE001
                print(f"crash: could not empty {redact_url(args.database)} after the rounds: {error!r}")
        if args.keep or tally.failed:
            print(f"{tag}: kept {workdir}" + (" (failed or --keep rounds' tables: schemas crash_round_N)"
                                              if args.database else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return tally.finish()


if __name__ == "__main__":
    sys.exit(main())
