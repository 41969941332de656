#!/usr/bin/env python3
"""Two stampd instances on one PostgreSQL under load, as a load balancer would use them, while
instance A is killed with SIGKILL (and later started again) and then PostgreSQL itself is
restarted. Checks:

- B keeps serving while A is dead: no request sent to B fails;
- after PostgreSQL's restart both instances recover by themselves (no restart of stampd): /readyz
  answers 200 on each, and the polls parked at the restart are answered within seconds;
- nothing acknowledged is lost: every create and approval answered 2xx is in the database;
- no event is missed: each account's poller (parked on A or on B, moving to the other one when its
  instance is down, as a client behind the balancer would) receives exactly the rows of the events
  table for its account, each once, in order, and is never told to reset.

    failover.py [--binary PATH] [--database postgres://…] [--seconds S] [--keep]

The database (default $STAMPD_TEST_DATABASE) is emptied first; PostgreSQL is restarted with the
command in $STAMPD_TEST_PG_RESTART (for example `bash -c 'source scripts/postgres.sh &&
pg_throwaway_restart'`); without it that part is skipped and says so.
"""
import http.client
import os
import queue
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reliability"))
from common import (HOST, Server, Tally, base_arguments, check_binary, create_account, create_store,
                    make_workdir, must, open_database, redact_url, request, reset_postgres, test_database_url)

FAILURES = (OSError, http.client.HTTPException)
SLOW = []  # (sent, answered, instance, what): calls that took over 2 s, for the report
POLL_TIMEOUT = 25  # seconds a poll may stay parked: longer than any recovery the checks allow


class Instances:
    """A and B, and which are up. Clients try their own first and fail over to the other."""

    def __init__(self, servers):
        self.servers = servers
        self.lock = threading.Lock()
        self.down = set()
        # Failures of requests sent to an instance while it was meant to be up (by name).
        self.failures = {server_name: [] for server_name in servers}

    def order(self, preferred):
        names = list(self.servers)
        first = names.index(preferred)
        return names[first:] + names[:first]

    def mark(self, name, is_down):
        with self.lock:
            (self.down.add if is_down else self.down.discard)(name)

    def is_down(self, name):
        with self.lock:
            return name in self.down

    def record_failure(self, name, what):
        with self.lock:
            if name not in self.down:
                self.failures[name].append((time.monotonic(), what))


class Writer:
    """One party's requests: sent to its preferred instance, moved to the other on a connection
    failure or a 503 (an Idempotency-Key makes a create safe to repeat), until answered."""

    def __init__(self, instances, preferred, deadline=90.0):
        self.instances = instances
        self.preferred = preferred
        self.deadline = deadline
        self.conns = {}

    def call(self, method, path, body=None, headers=None, token=None):
        """(status, body, attempts) of the first answer that is not a 503."""
        give_up = time.monotonic() + self.deadline
        attempts = 0
        while True:
            for name in self.instances.order(self.preferred):
                if self.instances.is_down(name):
                    continue
                attempts += 1
                server = self.instances.servers[name]
                conn = self.conns.get(name) or http.client.HTTPConnection(HOST, server.port, timeout=15)
                self.conns[name] = conn
                sent = time.monotonic()
                try:
                    status, rh, parsed = request(server.port, method, path, body, headers, token, conn=conn)
                    if time.monotonic() - sent > 2:
                        SLOW.append((sent, time.monotonic(), name, f"{method} {path} {status}"))
                    if rh.get("connection", "").lower() == "close":
                        self.conns.pop(name).close()
                    if status != 503:
                        if status >= 500:
                            self.instances.record_failure(name, f"{method} {path}: {status}")
                        return status, parsed, attempts
                    self.instances.record_failure(name, f"{method} {path}: 503")
                except FAILURES as error:
                    if time.monotonic() - sent > 2:
                        SLOW.append((sent, time.monotonic(), name, f"{method} {path} {error!r}"))
                    self.conns.pop(name, None)
                    conn.close()
                    self.instances.record_failure(name, f"{method} {path}: {error!r}")
            if time.monotonic() > give_up:
                raise TimeoutError(f"{method} {path}: no answer within {self.deadline} s")
            time.sleep(0.05)


class Poller(threading.Thread):
    """Follows one account's events with long polls on its instance (the other while it is down),
    keeping every event it is given and every poll's start and end."""

    def __init__(self, instances, preferred, account, token):
        super().__init__(daemon=True)
        self.instances = instances
        self.preferred = preferred
        self.account = account
        self.token = token
        self.ids = []
        self.arrivals = []  # (time, event id)
        self.problems = []
        self.polls = []  # (started, ended, instance, outcome)
        self.stop = threading.Event()
        self.cursor = None

    def run(self):
        while not self.stop.is_set():
            name = next((n for n in self.instances.order(self.preferred) if not self.instances.is_down(n)), None)
            if name is None:
                time.sleep(0.05)
                continue
            port = self.instances.servers[name].port
            path = f"/v1/events?timeout={POLL_TIMEOUT}&limit=100" + (f"&after={self.cursor}" if self.cursor else "")
            started = time.monotonic()
            try:
                status, _, body = request(port, "GET", path, token=self.token, timeout=POLL_TIMEOUT + 10)
            except FAILURES as error:
                self.polls.append((started, time.monotonic(), name, repr(error)))
                time.sleep(0.05)
                continue
            self.polls.append((started, time.monotonic(), name, status))
            if status != 200 or not isinstance(body, dict):
                time.sleep(0.1)  # 503 while the database is away: the client tries again
                continue
            if body.get("reset"):
                self.problems.append(f"told to reset at cursor {self.cursor}")
            for event in body["events"]:
                event_id = int(event["id"])
                if self.ids and event_id <= self.ids[-1]:
                    self.problems.append(f"event {event_id} after {self.ids[-1]}")
                self.ids.append(event_id)
                self.arrivals.append((time.monotonic(), event_id))
            self.cursor = body["cursor"]


def main():
    parser = base_arguments(__doc__.split("\n")[0])
    parser.add_argument("--database", default=test_database_url(), help="an empty PostgreSQL database (postgres://…)")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the load runs")
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--owners", type=int, default=2)
    args = parser.parse_args()
    check_binary(args.binary, "failover")
    if not args.database:
        print("failover: needs a PostgreSQL database (--database or STAMPD_TEST_DATABASE)", file=sys.stderr)
        return 2
    restart_command = os.environ.get("STAMPD_TEST_PG_RESTART", "").strip()
    tally = Tally("failover")
    workdir = make_workdir("stampd-failover", args.keep)
    reset_postgres(args.database)
    print(f"failover: database {redact_url(args.database)}, {args.customers} customers, {args.owners} owners, "
          f"{args.seconds:.0f} s of load", flush=True)

    servers = {name: Server(args.binary, args.database, workdir, name=name, extra=["--log-level", "info"]) for name in ("a", "b")}
    instances = Instances(servers)
    broke = True
    try:
        for server in servers.values():
            server.start(timeout=60)
        run(args, servers, instances, restart_command, tally)
        broke = False
    finally:
        for server in servers.values():
            if server.alive():
                server.stop()
        if tally.failed or broke:
            for name, server in servers.items():
                print(f"--- log of {name}:\n{server.log_tail(40)}")
    return tally.finish()


def run(args, servers, instances, restart_command, tally):
    a, b = servers["a"], servers["b"]
    owners = []
    for index in range(args.owners):
        account, token = create_account(b.port, "owner", f"failover-owner{index}@example.com")
        store = create_store(a.port, token, f"Failover Cafe {index}")
        owners.append({"id": account, "token": token, "store": store, "queue": queue.Queue(), "instance": "ab"[index % 2]})
    customers = []
    for index in range(args.customers):
        account, token = create_account(a.port, "customer", f"failover-customer{index}@example.com")
        customers.append({"id": account, "token": token, "instance": "ab"[index % 2]})

    # Two customers who write nothing, one on each instance: their polls stay parked until
    # something wakes them, such as PostgreSQL going away.
    quiet = []
    for index in range(2):
        account, token = create_account(b.port, "customer", f"failover-quiet{index}@example.com")
        quiet.append({"id": account, "token": token, "instance": "ab"[index]})
    pollers = [Poller(instances, party["instance"], party["id"], party["token"]) for party in owners + customers + quiet]
    for poller in pollers:
        poller.start()

    created, approved = {}, set()
    problems = []
    record = threading.Lock()
    stop_creating = threading.Event()
    customers_done = threading.Event()

    def customer_main(index, customer):
        writer = Writer(instances, customer["instance"])
        i = 0
        try:
            while not stop_creating.is_set():
                owner = owners[(index + i) % len(owners)]
                key = f"failover-{index}-{i}"
                status, body, _ = writer.call("POST", f"/v1/stores/{owner['store']}/requests", {"kind": "stamp", "count": 1},
                                              headers={"Idempotency-Key": key}, token=customer["token"])
                if status in (200, 201):
                    with record:
                        created[body["id"]] = customer["id"]
                    owner["queue"].put(body["id"])
                else:
                    problems.append(f"create {key}: {status} {body!r}"[:300])
                i += 1
                time.sleep(0.02)
        except Exception as error:  # noqa: BLE001 - a failure of the run
            problems.append(f"customer {index}: {error!r}")

    def owner_main(owner):
        writer = Writer(instances, owner["instance"])
        try:
            while True:
                try:
                    request_id = owner["queue"].get(timeout=0.1)
                except queue.Empty:
                    if customers_done.is_set():
                        return
                    continue
                status, body, attempts = writer.call("POST", f"/v1/requests/{request_id}/approve", token=owner["token"])
                if status == 200:
                    with record:
                        approved.add(request_id)
                elif status == 409 and attempts > 1:
                    # An attempt that failed over may have committed before its answer was lost.
                    check, got, _ = writer.call("GET", f"/v1/requests/{request_id}", token=owner["token"])
                    if check == 200 and got.get("status") == "approved":
                        with record:
                            approved.add(request_id)
                    else:
                        problems.append(f"approve {request_id}: 409, then {check} {got!r}"[:300])
                else:
                    problems.append(f"approve {request_id}: {status} {body!r}"[:300])
        except Exception as error:  # noqa: BLE001
            problems.append(f"owner {owner['id']}: {error!r}")

    workers = [threading.Thread(target=customer_main, args=(i, c), daemon=True) for i, c in enumerate(customers)]
    workers += [threading.Thread(target=owner_main, args=(o,), daemon=True) for o in owners]
    began = time.monotonic()
    for worker in workers:
        worker.start()

    def at(fraction):
        time.sleep(max(0.0, began + fraction * args.seconds - time.monotonic()))

    # SIGKILL of A a sixth into the load; started again at a third (as an orchestrator would).
    at(1 / 6)
    before_kill = len(approved)
    instances.mark("a", True)
    a.kill()
    print(f"failover: A killed at {time.monotonic() - began:.1f} s ({before_kill} approvals answered)", flush=True)
    at(1 / 3)
    a.start(timeout=60)
    instances.mark("a", False)
    print(f"failover: A started again at {time.monotonic() - began:.1f} s", flush=True)
    with instances.lock:
        b_failures = list(instances.failures["b"])
    tally.check(not b_failures, "B served every request sent to it while A was down", f"{b_failures[:5]}")

    # PostgreSQL restarted half way in.
    restarted_at = None
    if restart_command:
        at(1 / 2)
        restarted_at = time.monotonic()
        result = subprocess.run(restart_command, shell=True, capture_output=True, text=True, timeout=120)
        back_at = time.monotonic()
        tally.check(result.returncode == 0, "PostgreSQL restarted", (result.stdout + result.stderr)[-500:])
        print(f"failover: PostgreSQL restarted at {restarted_at - began:.1f} s, took {back_at - restarted_at:.1f} s",
              flush=True)
        for name, server in servers.items():
            deadline = time.monotonic() + 30
            ready = None
            while time.monotonic() < deadline:
                try:
                    ready = request(server.port, "GET", "/readyz", timeout=2)[0]
                except FAILURES:
                    ready = None
                if ready == 200:
                    break
                time.sleep(0.1)
            tally.check(ready == 200 and server.alive(), f"{name.upper()} ready again by itself after PostgreSQL's restart",
                        f"/readyz {ready}, alive {server.alive()}")
            if ready == 200:
                print(f"failover: {name.upper()} ready {time.monotonic() - back_at:.1f} s after PostgreSQL came back",
                      flush=True)
        # The quiet customers' polls, parked on A and on B through the restart, are woken by a
        # write through the other instance once PostgreSQL is back: each instance listens again.
        # The poll must be told the approval's event (the newest of the account's stream once the
        # approval is answered); it may arrive before the writer has read its own answer.
        store = owners[0]
        for party, poller in zip(quiet, pollers[-len(quiet):]):
            other = servers["b" if party["instance"] == "a" else "a"]
            written_at = time.monotonic()
            body = must(request(other.port, "POST", f"/v1/stores/{store['store']}/requests", {"kind": "stamp", "count": 1},
                                token=party["token"]), 201, "a quiet customer's request")
            must(request(other.port, "POST", f"/v1/requests/{body['id']}/approve", token=store["token"]), 200,
                 "its approval")
            approved_at = time.monotonic()
            newest = int(must(request(other.port, "GET", "/v1/events?timeout=1&limit=1000", token=party["token"]), 200,
                              "the quiet customer's events")["cursor"])
            deadline = approved_at + 15
            while time.monotonic() < deadline and not any(event >= newest for _, event in poller.arrivals):
                time.sleep(0.02)
            heard = [t - written_at for t, event in poller.arrivals if event >= newest]
            tally.check(bool(heard), f"a poll parked on {party['instance'].upper()} through the restart hears a write "
                        f"through the other instance", f"event {newest} not within 15 s; its polls since the restart: " + "; ".join(
                            f"{started - restarted_at:+.2f}..{ended - restarted_at:+.2f} s on {name}: {outcome}"
                            for started, ended, name, outcome in poller.polls if ended > restarted_at)
                        + f"; the write was sent at {written_at - restarted_at:+.2f} s and answered at "
                        f"{approved_at - restarted_at:+.2f} s")
            if heard:
                print(f"failover: the quiet poll on {party['instance'].upper()} heard the write through the other "
                      f"{heard[0] * 1000:.0f} ms after it was sent", flush=True)
    else:
        tally.skip("PostgreSQL restart", "STAMPD_TEST_PG_RESTART is not set")

    at(1.0)
    stop_creating.set()
    for worker in workers[:len(customers)]:
        worker.join(timeout=120)
    customers_done.set()
    for worker in workers[len(customers):]:
        worker.join(timeout=120)
    hung = [worker for worker in workers if worker.is_alive()]
    tally.check(not hung, "every writer finished", f"{len(hung)} still running")
    for problem in problems:
        tally.check(False, "a write was answered as it should be", problem)
    print(f"failover: {len(created)} creates and {len(approved)} approvals answered", flush=True)

    # Nothing acknowledged is lost.
    db = open_database(args.database)
    try:
        lost = [rid for rid, customer in created.items()
                if (row := db.execute("SELECT customer_id FROM requests WHERE id = ?", (rid,)).fetchone()) is None
                or row[0] != customer]
        tally.check(not lost, "every create answered 2xx is stored", f"{len(lost)} missing: {lost[:5]}")
        unapproved = [rid for rid in approved
                      if (db.execute("SELECT status FROM requests WHERE id = ?", (rid,)).fetchone() or [None])[0] != "approved"]
        tally.check(not unapproved, "every approval answered 2xx is stored", f"{len(unapproved)}: {unapproved[:5]}")
        stored = {poller.account: [row[0] for row in db.execute(
            "SELECT seq FROM events WHERE account_id = ? ORDER BY seq", (poller.account,)).fetchall()] for poller in pollers}
    finally:
        db.close()

    # Every poller catches up with its account's rows (bounded), then is compared with them.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(p.ids) < len(stored[p.account]) for p in pollers):
        time.sleep(0.05)
    for poller in pollers:
        poller.stop.set()
    seen = sum(len(p.ids) for p in pollers)
    for poller in pollers:
        want = stored[poller.account]
        tally.check(poller.ids == want, f"{poller.account} received each of its {len(want)} events once, in order",
                    f"received {len(poller.ids)}; missing {sorted(set(want) - set(poller.ids))[:5]}, "
                    f"extra {sorted(set(poller.ids) - set(want))[:5]}")
        for problem in poller.problems:
            tally.check(False, f"{poller.account}'s polls", problem)
    print(f"failover: {seen} events received by {len(pollers)} pollers", flush=True)

    # The polls parked on the survivors when PostgreSQL went away were answered, within seconds.
    if restarted_at is not None:
        # ... and none of the polls parked at the restart outlived the timeout it asked for.
        spans = [ended - started for poller in pollers for (started, ended, name, _) in poller.polls
                 if started < restarted_at < ended]
        tally.check(bool(spans), "polls were parked when PostgreSQL restarted", "none were")
        longest = max(spans, default=0.0)
        tally.check(longest < POLL_TIMEOUT + 3, f"every poll parked at PostgreSQL's restart was answered within its "
                    f"{POLL_TIMEOUT} s", f"the longest took {longest:.1f} s")
        print(f"failover: {len(spans)} polls parked at the restart, the longest answered after {longest:.1f} s", flush=True)
        for sent, answered, name, what in SLOW[:20]:
            print(f"  slow call on {name}: {sent - restarted_at:+.2f} s to {answered - restarted_at:+.2f} s: {what}")
        if longest >= POLL_TIMEOUT + 3 or os.environ.get("FAILOVER_VERBOSE"):
            for poller in pollers:
                for started, ended, name, outcome in poller.polls:
                    if started < restarted_at + 10 and ended > restarted_at - 1 and ended - started > 5:
                        print(f"  poll of {poller.account} on {name}: {started - restarted_at:+.2f} s to "
                              f"{ended - restarted_at:+.2f} s: {outcome}")


if __name__ == "__main__":
    sys.exit(main())
