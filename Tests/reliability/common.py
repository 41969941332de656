"""Shared pieces of the reliability checks: starting stampd, a small HTTP client, the API set-up,
reading the database (the SQLite file, or PostgreSQL through psycopg), and counting passes and
failures.

Standard library only, except psycopg for the PostgreSQL runs (imported only then; see
Tests/requirements.txt). Every loop here is bounded in count and in time; traffic goes only to
127.0.0.1 (and to the PostgreSQL server named by $STAMPD_TEST_DATABASE).
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIGRATIONS = os.path.join(REPO, "migrations")
HOST = "127.0.0.1"
# Every check's clients share one address; the per-address and per-customer limits are tested
# by the Swift tests, not here.
RELAXED_LIMITS = ["--sign-ins-per-address", "1000000", "--sign-ins-at-once-per-address", "100000", "--sign-ups-per-address", "1000000",
                  "--pending-requests-per-customer", "1000000", "--requests-per-customer-per-hour", "1000000",
                  "--new-store-limits", "off",
                  "--hash-queue", "100000"]


def default_binary():
    return os.environ.get("STAMPD_BIN") or os.path.join(REPO, ".build", "debug", "stampd")


def base_arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--binary", default=default_binary(),
                        help="the stampd executable (default: $STAMPD_BIN or .build/debug/stampd)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    return parser


def check_binary(path, tag):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        print(f"{tag}: no stampd binary at {path} (build it, or pass --binary)", file=sys.stderr)
        sys.exit(2)


def fault_library(given, binary, tag):
    """libStampdFaults.so: `given`, else the one `swift build` put next to the binary; exits with
    a message when it is missing."""
    path = given or os.path.join(os.path.dirname(os.path.abspath(binary)), "libStampdFaults.so")
    if not os.path.exists(path):
        print(f"{tag}: {path} is missing (swift build builds it)", file=sys.stderr)
        sys.exit(2)
    return path


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Tally:
    """Counts checks; prints each failure as it happens."""

    def __init__(self, tag):
        self.tag = tag
        self.passed = 0
        self.failed = 0
        self.failures = []

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(f"{what}: {detail}" if detail else what)
            print(f"  FAIL {what}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def skip(self, what, why):
        print(f"  SKIP {what}: {why}", flush=True)

    def finish(self):
        if self.failures:
            print(f"{self.tag} failures:")
            for failure in self.failures:
                print(f"  - {failure}")
        print(f"{self.tag}: {self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


class Server:
    """One stampd process on a database file, its log in `log_path`."""

    def __init__(self, binary, database, workdir, port=None, extra=(), prefix=(), name="server"):
        self.binary = binary
        self.database = database
        self.workdir = workdir
        self.port = port or free_port()
        # Metrics have a listener of their own (kept across restarts, like the API port).
        self.metrics_port = free_port()
        self.extra = list(extra)
        self.prefix = list(prefix)
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc = None
        self.starts = 0

    def command(self):
        return self.prefix + [self.binary, "--host", HOST, "--port", str(self.port), "--database", self.database,
                              "--metrics-port", str(self.metrics_port),
                              "--migrations", MIGRATIONS, "--insecure-fast-password-hashing",
                              "--log-level", "warning"] + RELAXED_LIMITS + self.extra

    def start(self, wait=True, timeout=20.0):
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"--- start {self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stampd exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                status, _, _ = request(self.port, "GET", "/healthz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"stampd did not become healthy in {timeout} s; log tail:\n{self.log_tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL, and reap."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def open_fds(self):
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"


def request(port, method, path, body=None, headers=None, token=None, timeout=10.0, conn=None):
    """One request; returns (status, headers as a lower-cased dict, parsed JSON or raw bytes).
    Raises OSError / http.client exceptions when the connection fails."""
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        rh = {k.lower(): v for k, v in resp.getheaders()}
        parsed = raw
        if raw and "json" in rh.get("content-type", ""):
            try:
                parsed = json.loads(raw)
            except ValueError:
                pass
        return resp.status, rh, parsed
    finally:
        if own:
            conn.close()


def must(result, expected, what):
    status, _, body = result
    if status != expected:
        raise RuntimeError(f"{what}: expected {expected}, got {status}: {body!r}")
    return body


def create_account(port, role, login, name=None, password="reliable-pass-1"):
    body = must(request(port, "POST", "/v1/accounts",
                        {"role": role, "login": login, "password": password, "name": name or login}),
                201, f"create {role} {login}")
    return body["account"]["id"], body["token"]


def create_store(port, owner_token, name, stamps_per_reward=10):
    body = must(request(port, "POST", "/v1/stores",
                        {"name": name, "rewardItem": "Americano", "stampsPerReward": stamps_per_reward,
                         "menu": [{"name": "Latte", "price": 4500}]}, token=owner_token),
                201, f"create store {name}")
    return body["id"]


def open_db(path):
    """A read-only look at the database file (the server may still run; WAL lets us read beside it)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def is_postgres_url(text):
    """True for the --database values that select PostgreSQL (as stampd decides)."""
    return bool(text) and text.startswith(("postgres://", "postgresql://"))


def test_database_url():
    """The PostgreSQL database named by $STAMPD_TEST_DATABASE, or None when it is unset or not a
    postgres:// URL (the checks then use SQLite files of their own)."""
    value = os.environ.get("STAMPD_TEST_DATABASE", "").strip()
    return value if is_postgres_url(value) else None


def redact_url(url):
    """The URL without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _psycopg():
    try:
        import psycopg
    except ImportError as error:
        raise RuntimeError("PostgreSQL checks need psycopg: .venv/bin/pip install 'psycopg[binary]' "
                           "(see Tests/requirements.txt)") from error
    return psycopg


def _postgres_conninfo(url):
    """(libpq URL, connect keywords, schema) for a stampd URL: libpq does not know stampd's
    `?search_path=`, which becomes the session's search_path option instead."""
    parts = urllib.parse.urlsplit(url)
    schema = None
    rest = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key == "search_path":
            schema = value
        else:
            rest.append((key, value))
    conninfo = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    options = {"options": f"-c search_path={schema}"} if schema else {}
    return conninfo, options, schema or "public"


class Database:
    """The checks' read access to the server's database, one interface for both engines: a
    read-only look at the SQLite file (WAL lets us read beside a running server), or a psycopg
    connection in autocommit (each query sees what is committed). Queries are written once with
    SQLite's `?` placeholders; for PostgreSQL they become `%s` (a literal `%` is escaped), and
    `execute` returns a cursor on both (fetchone, fetchall, iteration). PostgreSQL's sum() of
    bigint is numeric (a Decimal), which compares equal to the int SQLite gives."""

    def __init__(self, target):
        self.postgres = is_postgres_url(target)
        if self.postgres:
            psycopg = _psycopg()
            conninfo, options, _ = _postgres_conninfo(target)
            self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10, **options)
        else:
            self.conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=10)

    def execute(self, sql, params=()):
        if self.postgres:
            # Always a tuple: psycopg leaves a query without parameters as it is (`%%` included).
            return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
        return self.conn.execute(sql, params)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_database(target):
    """A `Database` on a SQLite path or a postgres:// URL."""
    return Database(target)


def reset_postgres(url, keep_as=None):
    """Empties the schema stampd uses at `url` (public, or the URL's ?search_path=): drops it with
    all it holds (tables, the events sequence) and creates it again, owned by the connecting role,
    in one transaction. With `keep_as`, the old schema is renamed to that name instead (an older
    one of that name is dropped), its tables kept to look at. Refuses a schema that holds tables
    but no schema_migrations: that is not a database stampd made, and it is not ours to wipe."""
    psycopg = _psycopg()
    from psycopg import sql
    conninfo, _, schema = _postgres_conninfo(url)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        with conn.transaction():
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
            if tables and "schema_migrations" not in tables:
                raise RuntimeError(f"schema {schema} of {redact_url(url)} holds tables that are not stampd's "
                                   f"({', '.join(sorted(tables)[:5])}); give an empty database")
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
            if exists and keep_as:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(keep_as)))
                conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(schema),
                                                                           sql.Identifier(keep_as)))
            elif exists:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def postgres_sessions(url, application="stampd", wait=0.0):
    """How many sessions of `application` are connected to the database of `url` (our own not
    counted), waiting up to `wait` seconds for none."""
    psycopg = _psycopg()
    conninfo, _, _ = _postgres_conninfo(url)
    deadline = time.monotonic() + wait
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        while True:
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND application_name = %s AND pid <> pg_backend_pid()", (application,)).fetchone()[0]
            if n == 0 or time.monotonic() >= deadline:
                return n
            time.sleep(0.1)


def integrity(path):
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("PRAGMA integrity_check").fetchall()
        fk = db.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        db.close()
    text = "; ".join(r[0] for r in rows)
    if fk:
        text += f"; foreign_key_check: {fk[:5]}"
    return text


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


def make_workdir(prefix, keep):
    path = tempfile.mkdtemp(prefix=f"stampd-{prefix}.")
    return path


def raise_fd_limit(wanted):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def problem_json(headers):
    return headers.get("content-type", "").startswith("application/problem+json")


def parse_listen_port(log_text):
    m = re.findall(r":(\d+)\S* \[StampHTTP\] listening", log_text)
    return int(m[-1]) if m else None
