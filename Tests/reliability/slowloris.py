#!/usr/bin/env python3
"""Slow and greedy clients.

1. Load: N connections trickle their request head one byte at a time (never finishing it), and M
   connections send pipelined requests but never read the answers. Meanwhile an ordinary client
   (a separate process) measures p50/p99 of GET /healthz and of an authenticated GET /v1/me on a
   keep-alive connection, and of GET /healthz on a new connection each time. Checked: the ordinary
   client always gets 200 within its timeout; every slow connection gets 408 and is closed within
   the request timeout (+ slack); the server's memory stays bounded while the greedy clients do not
   read (--rss-limit-mb); after all close, the server's open descriptors return to their level
   before.
2. Connection cap: a server with --max-connections 200 answers the 201st connection with 503 and
   closes it cleanly, keeps serving the 200, and takes new connections again once some close.
3. Descriptor limit: a server started under `prlimit --nofile=300:300` with --max-connections 1000
   is sent 400 connections: it must not crash, and must serve again (reads and writes) once they close.

    slowloris.py [--binary PATH] [--slow N] [--greedy M] [--local]
"""
import heapq
import http.client
import multiprocessing
import os
import random
import selectors
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (HOST, Server, Tally, base_arguments, check_binary, create_account, make_workdir, percentile,
                    raise_fd_limit, request)


# --------------------------------------------------------------------------------------------
# The ordinary client: runs in its own process so the swarm's Python loop does not slow it down.

def measure(port, token, seconds, out):
    """Alternates GET /healthz and GET /v1/me on a keep-alive connection, and every fifth round
    GET /healthz on a fresh connection; puts {name: [seconds...]}, failures into `out`."""
    samples = {"healthz": [], "me": [], "healthz_new_connection": []}
    failures = []
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and n < 100_000:
        n += 1
        for name, path, tok, fresh in (("healthz", "/healthz", None, False), ("me", "/v1/me", token, False),
                                       ("healthz_new_connection", "/healthz", None, True)):
            if fresh and n % 5:
                continue
            began = time.monotonic()
            try:
                status, _, _ = request(port, "GET", path, token=tok, timeout=10, conn=None if fresh else conn)
                took = time.monotonic() - began
                if status == 200:
                    samples[name].append(took)
                else:
                    failures.append(f"{name}: {status}")
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"{name}: {error!r}"[:150])
                if not fresh:
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=10)
        time.sleep(0.01)
    conn.close()
    out.put({"samples": samples, "failures": failures})


def start_measuring(port, token, seconds):
    out = multiprocessing.Queue()
    proc = multiprocessing.Process(target=measure, args=(port, token, seconds, out), daemon=True)
    proc.start()
    return proc, out


def finish_measuring(proc, out, timeout):
    try:
        result = out.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - queue.Empty
        result = {"samples": {}, "failures": ["the measuring process did not report"]}
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
    return result


def summary(samples):
    return {name: (len(v), percentile(v, 50) * 1000, percentile(v, 99) * 1000, (max(v) if v else float("nan")) * 1000)
            for name, v in samples.items()}


def print_summary(label, stats):
    for name, (n, p50, p99, worst) in stats.items():
        print(f"  {label:<9} {name:<24} n={n:<6} p50={p50:8.1f} ms  p99={p99:8.1f} ms  max={worst:8.1f} ms")


# --------------------------------------------------------------------------------------------
# The swarm: slow and greedy connections in one selector loop.

class Swarm:
    def __init__(self, port, slow, greedy, greedy_bytes, greedy_path, trickle_interval, rng):
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.slow_target = slow
        self.greedy_target = greedy
        self.greedy_bytes = greedy_bytes
        self.greedy_blob = f"GET {greedy_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 2000
        self.interval = trickle_interval
        self.rng = rng
        self.slow = {}     # fd -> state
        self.greedy = {}   # fd -> state
        self.timers = []   # (when, fd)
        self.head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
        self.connect_failures = 0

    def _connect(self, kind):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if kind == "greedy":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        err = s.connect_ex((HOST, self.port))
        if err not in (0, 115):  # EINPROGRESS
            s.close()
            self.connect_failures += 1
            return
        state = {"sock": s, "kind": kind, "connected": False, "opened": time.monotonic(), "first_byte": None,
                 "sent": 0, "got": b"", "closed": None, "status": None}
        (self.slow if kind == "slow" else self.greedy)[s.fileno()] = state
        self.sel.register(s, selectors.EVENT_WRITE, state)

    def open_all(self, ramp_seconds):
        """Opens the connections spread over `ramp_seconds`, serving events meanwhile."""
        total = self.slow_target + self.greedy_target
        kinds = ["slow"] * self.slow_target + ["greedy"] * self.greedy_target
        self.rng.shuffle(kinds)
        began = time.monotonic()
        for i, kind in enumerate(kinds):
            self._connect(kind)
            if i % 200 == 199:
                target = began + ramp_seconds * (i + 1) / total
                self.run_until(target)
        self.run_until(time.monotonic() + 0.2)

    def _close(self, state, reason):
        if state["closed"] is None:
            state["closed"] = time.monotonic()
            state["close_reason"] = reason
            try:
                self.sel.unregister(state["sock"])
            except (KeyError, ValueError):
                pass
            state["sock"].close()

    def run_until(self, deadline, on_tick=None):
        last_tick = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if on_tick and now - last_tick >= 0.5:
                last_tick = now
                on_tick()
            while self.timers and self.timers[0][0] <= now:
                _, fd = heapq.heappop(self.timers)
                state = self.slow.get(fd)
                if state and state["closed"] is None:
                    self._trickle(state)
            timeout = min(0.05, max(0.0, deadline - now))
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - now))
            for key, events in self.sel.select(timeout):
                state = key.data
                if state["closed"] is not None:
                    continue
                if events & selectors.EVENT_WRITE:
                    self._writable(state)
                if state["closed"] is None and events & selectors.EVENT_READ:
                    self._readable(state)

    def _writable(self, state):
        s = state["sock"]
        if not state["connected"]:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.connect_failures += 1
                self._close(state, f"connect error {err}")
                return
            state["connected"] = True
            if state["kind"] == "slow":
                self.sel.modify(s, selectors.EVENT_READ, state)
                self._trickle(state)
                return
        if state["kind"] == "greedy":
            if state["sent"] >= self.greedy_bytes:
                self.sel.unregister(s)  # done: it never reads
                state["done_sending"] = True
                return
            try:
                n = s.send(self.greedy_blob[: self.greedy_bytes - state["sent"]])
                state["sent"] += n
                if state["first_byte"] is None:
                    state["first_byte"] = time.monotonic()
            except BlockingIOError:
                pass
            except OSError as error:
                self._close(state, repr(error))

    def _trickle(self, state):
        s = state["sock"]
        if state["sent"] >= len(self.head):
            return
        try:
            s.send(self.head[state["sent"]: state["sent"] + 1])
            state["sent"] += 1
            if state["first_byte"] is None:
                state["first_byte"] = time.monotonic()
        except BlockingIOError:
            pass
        except OSError as error:
            self._close(state, repr(error))
            return
        when = time.monotonic() + self.interval * self.rng.uniform(0.5, 1.5)
        heapq.heappush(self.timers, (when, s.fileno()))

    def _readable(self, state):
        s = state["sock"]
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            self._close(state, repr(error))
            return
        if not data:
            self._close(state, "eof")
            return
        state["got"] += data
        if state["status"] is None and len(state["got"]) >= 12:
            try:
                state["status"] = int(state["got"][9:12])
            except ValueError:
                state["status"] = -1

    def close_all(self):
        for state in list(self.slow.values()) + list(self.greedy.values()):
            if state["closed"] is None:
                self._close(state, "client")
        self.sel.close()


def tcp_wmem_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


def answered_count(metrics_port, route):
    """stampd_http_requests_total for `route` with status 200, from /metrics (its own listener)."""
    _, _, text = request(metrics_port, "GET", "/metrics", timeout=30)
    text = text.decode() if isinstance(text, bytes) else str(text)
    needle = f'stampd_http_requests_total{{route="{route}",status="200"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return int(float(line[len(needle):]))
    return 0


def wait_for_fds(server, level, seconds=10.0):
    fds = server.open_fds()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (fds is None or fds > level):
        time.sleep(0.1)
        fds = server.open_fds()
    return fds


def wait_until_served(server, token, seconds=30.0):
    """Seconds until GET /v1/me answers 200 again (None if it does not within `seconds`)."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        try:
            status, _, _ = request(server.port, "GET", "/v1/me", token=token, timeout=5)
            if status == 200:
                return time.monotonic() - began
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    return None


def phase_load(args, workdir, tally, rng):
    server = Server(args.binary, os.path.join(workdir, "load.sqlite"), workdir, name="load",
                    extra=["--request-timeout", str(args.request_timeout)])
    swarm = None
    figures = {}
    try:
        server.start()
        _, token = create_account(server.port, "customer", "slow-reader@example.com")
        proc, out = start_measuring(server.port, token, args.baseline)
        base = finish_measuring(proc, out, args.baseline + 30)
        figures["idle"] = summary(base["samples"])
        print_summary("idle", figures["idle"])
        rss_before = server.rss_kib()
        fds_before = server.open_fds()
        peak = {"rss": rss_before or 0, "fds": fds_before or 0}

        def tick():
            rss, fds = server.rss_kib(), server.open_fds()
            if rss:
                peak["rss"] = max(peak["rss"], rss)
            if fds:
                peak["fds"] = max(peak["fds"], fds)

        # --- slow: trickled request heads
        if args.slow:
            duration = float(args.request_timeout + args.slack + 1)
            print(f"slow: {args.slow} connections trickle a request head, 1 byte every ~{args.trickle} s, "
                  f"for {duration:.0f} s (server --request-timeout {args.request_timeout})", flush=True)
            swarm = Swarm(server.port, args.slow, 0, 0, "/", args.trickle, rng)
            proc, out = start_measuring(server.port, token, duration)
            began = time.monotonic()
            swarm.open_all(ramp_seconds=min(3.0, duration / 4))
            opened_in = time.monotonic() - began
            tick()
            swarm.run_until(began + duration, on_tick=tick)
            loaded = finish_measuring(proc, out, 60)
            figures["slow"] = summary(loaded["samples"])
            print_summary("slow", figures["slow"])
            slow = list(swarm.slow.values())
            connected = [x for x in slow if x["first_byte"]]
            got_408 = [x for x in slow if x["status"] == 408]
            now = time.monotonic()
            late = [x for x in connected if ((x["closed"] or now) - x["first_byte"]) > args.request_timeout + args.slack]
            cut_after = [x["closed"] - x["first_byte"] for x in connected if x["closed"]]
            print(f"  {len(connected)}/{args.slow} connected in {opened_in:.1f} s; {len(got_408)} answered 408; "
                  f"cut {percentile(cut_after, 50):.1f} s (p50) / {max(cut_after or [float('nan')]):.1f} s (max) "
                  f"after their first byte; {len(late)} open longer than {args.request_timeout + args.slack:.0f} s; "
                  f"server fds peak {peak['fds']}, RSS peak {peak['rss'] / 1024:.0f} MiB", flush=True)
            tally.check(server.alive(), "slow: server alive", server.log_tail())
            tally.check(not loaded["failures"], "slow: the ordinary client always got 200",
                        f"{len(loaded['failures'])} failures: {loaded['failures'][:3]}")
            for name, (n, p50, p99, _) in figures["slow"].items():
                tally.check(n > 0 and p99 <= args.p99_limit_ms,
                            f"slow: p99 of {name} within {args.p99_limit_ms:.0f} ms", f"n={n}, p99={p99:.0f} ms")
            tally.check(len(connected) >= 0.99 * args.slow, "slow: the slow connections were accepted",
                        f"{len(connected)} of {args.slow}")
            tally.check(len(got_408) >= 0.99 * len(connected) and not late,
                        f"slow: every slow connection gets 408 and is closed within {args.request_timeout}+"
                        f"{args.slack:.0f} s of its first byte", f"{len(got_408)} of {len(connected)} got 408; "
                        f"{len(late)} late")
            swarm.close_all()
            swarm = None
            fds = wait_for_fds(server, (fds_before or 0) + 5)
            tally.check(fds is not None and fds <= (fds_before or 0) + 5,
                        "slow: descriptors return to their level", f"{fds_before} -> {fds}")

        # --- greedy: pipelined requests, answers never read
        if args.greedy:
            duration = args.greedy_seconds
            print(f"greedy: {args.greedy} connections send {args.greedy_bytes // 1024} KiB of pipelined "
                  f"GET {args.greedy_path} each and never read, for {duration:.0f} s", flush=True)
            rss_start = server.rss_kib() or 0
            peak["rss"] = rss_start
            _, _, page = request(server.port, "GET", args.greedy_path)
            answer_bytes = len(page) + 330  # body and head
            answered_before = answered_count(server.metrics_port, args.greedy_path)
            swarm = Swarm(server.port, 0, args.greedy, args.greedy_bytes, args.greedy_path, args.trickle, rng)
            proc, out = start_measuring(server.port, token, duration)
            began = time.monotonic()
            swarm.open_all(ramp_seconds=0.5)
            swarm.run_until(began + duration, on_tick=tick)
            answered = answered_count(server.metrics_port, args.greedy_path) - answered_before
            loaded = finish_measuring(proc, out, 60)
            figures["greedy"] = summary(loaded["samples"])
            print_summary("greedy", figures["greedy"])
            sent = sum(g["sent"] for g in swarm.greedy.values())
            growth = (peak["rss"] - rss_start) / 1024
            figures["greedy_rss_growth_mib"] = growth
            requests_sent = sent * 2000 // len(swarm.greedy_blob)
            # What a server that stops answering a client that does not read could have answered: the
            # kernel's send buffer (tcp_wmem max), NIO's high-water mark (64 KiB) and the client's
            # receive buffer, per connection, in answers of this size.
            bound = args.greedy * ((tcp_wmem_max() + 64 * 1024 + 128 * 1024) // answer_bytes + 2)
            figures["greedy_answered"] = answered
            print(f"  {sent / 1e6:.1f} MB of requests sent ({requests_sent} requests); {answered} answered while "
                  f"nobody read (about {bound} fit in the socket buffers); server RSS {rss_start / 1024:.0f} MiB "
                  f"before, peak {peak['rss'] / 1024:.0f} MiB", flush=True)
            tally.check(answered <= 1.5 * bound,
                        "greedy: the server stops answering a client that does not read once its buffers are full",
                        f"{answered} answers produced for {args.greedy} clients that read nothing, about {bound} fit in "
                        f"the socket buffers: the rest are held in server memory (no backpressure)")
            tally.check(server.alive(), "greedy: server alive", server.log_tail())
            tally.check(not loaded["failures"], "greedy: the ordinary client always got 200",
                        f"{len(loaded['failures'])} failures: {loaded['failures'][:3]}")
            tally.check(growth <= args.rss_limit_mb,
                        f"greedy: server memory bounded while clients do not read (growth <= {args.rss_limit_mb:.0f} MiB)",
                        f"RSS grew {growth:.0f} MiB for {sent / 1e6:.1f} MB of pipelined requests "
                        f"(answers are buffered in the server without backpressure)")
            for name, (n, p50, p99, _) in figures["greedy"].items():
                tally.check(n > 0 and p99 <= args.p99_limit_ms,
                            f"greedy: p99 of {name} within {args.p99_limit_ms:.0f} ms", f"n={n}, p99={p99:.0f} ms")
            swarm.close_all()
            swarm = None
            recovered = wait_until_served(server, token)
            fds = wait_for_fds(server, (fds_before or 0) + 5)
            print(f"  after the close: /v1/me answered in {recovered if recovered is not None else float('nan'):.2f} s, "
                  f"open fds {fds}, RSS {(server.rss_kib() or 0) / 1024:.0f} MiB", flush=True)
            tally.check(recovered is not None, "greedy: serves again once the greedy clients left", server.log_tail())
            tally.check(fds is not None and fds <= (fds_before or 0) + 5,
                        "greedy: descriptors return to their level", f"{fds_before} -> {fds}")
        code = server.stop()
        tally.check(code == 0, "load: server stops cleanly on SIGTERM", f"exit {code}")
        return figures
    finally:
        if swarm is not None:
            swarm.close_all()
        if server.alive():
            server.kill()


# --------------------------------------------------------------------------------------------

def read_all(sock, timeout):
    """Reads until EOF or `timeout`; returns (data, 'eof' | 'reset' | 'timeout')."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "timeout"


def phase_cap(args, workdir, tally):
    cap = 200
    print(f"cap: --max-connections {cap}", flush=True)
    server = Server(args.binary, os.path.join(workdir, "cap.sqlite"), workdir, name="cap",
                    extra=["--max-connections", str(cap)])
    held = []
    try:
        server.start()
        for _ in range(cap):
            conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
            status, _, _ = request(server.port, "GET", "/healthz", conn=conn)
            if status != 200:
                raise RuntimeError(f"connection {len(held)} answered {status}")
            held.append(conn)
        refused = []
        for i in range(20):
            s = socket.create_connection((HOST, server.port), timeout=5)
            if i % 2:  # half of them also send a request, which the refusal does not read
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data, end = read_all(s, 3)
            s.close()
            refused.append((data.split(b"\r\n")[0], b"retry-after" in data.lower(), end, i % 2 == 1))
        silent = [r for r in refused if not r[3]]
        talking = [r for r in refused if r[3]]
        print(f"  over the cap: {sum(r[0].startswith(b'HTTP/1.1 503') for r in refused)}/20 answered 503; "
              f"endings {sorted(set(r[2] for r in refused))}")
        tally.check(all(r[0].startswith(b"HTTP/1.1 503") and r[1] and r[2] == "eof" for r in silent),
                    "cap: a new connection over the cap gets 503 with Retry-After and a clean close",
                    f"{silent[:3]}")
        tally.check(all(r[0].startswith(b"HTTP/1.1 503") and r[2] in ("eof", "reset") for r in talking),
                    "cap: a new connection over the cap that sends a request gets 503 and is closed",
                    f"{talking[:3]}")
        ok = 0
        for conn in held:
            try:
                status, _, _ = request(server.port, "GET", "/healthz", conn=conn)
                ok += status == 200
            except (OSError, http.client.HTTPException):
                pass
        tally.check(ok == cap, "cap: the connections under the cap keep working", f"{ok} of {cap}")
        for conn in held[:50]:
            conn.close()
        held = held[50:]
        served = False
        for _ in range(50):
            try:
                status, _, _ = request(server.port, "GET", "/healthz", timeout=3)
                if status == 200:
                    served = True
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        tally.check(served, "cap: takes new connections again once some close")
        tally.check(server.alive(), "cap: server alive", server.log_tail())
    except Exception as error:  # noqa: BLE001
        tally.check(False, "cap", repr(error)[:500])
    finally:
        for conn in held:
            conn.close()
        if server.alive():
            code = server.stop()
            tally.check(code == 0, "cap: server stops cleanly on SIGTERM", f"exit {code}")


def phase_fd_limit(args, workdir, tally):
    limit, opened = 300, 400
    print(f"fd limit: prlimit --nofile={limit}:{limit}, --max-connections 1000, {opened} connections", flush=True)
    if not shutil.which("prlimit"):
        tally.skip("fd limit", "prlimit is not installed")
        return
    server = Server(args.binary, os.path.join(workdir, "fd.sqlite"), workdir, name="fd",
                    extra=["--max-connections", "1000"], prefix=["prlimit", f"--nofile={limit}:{limit}", "--"])
    socks = []
    try:
        server.start()
        _, token = create_account(server.port, "customer", "fd-limit@example.com")
        with open(f"/proc/{server.proc.pid}/limits") as f:
            line = [l for l in f if l.startswith("Max open files")][0]
        applied = line.split()[3] == str(limit)
        if not tally.check(applied, "fd limit: the limit applies to the server", line.strip()):
            return
        fds_before = server.open_fds()
        held = http.client.HTTPConnection(HOST, server.port, timeout=10)
        request(server.port, "GET", "/healthz", conn=held)
        if args.warm_readers:
            for _ in range(8):
                request(server.port, "GET", "/v1/me", token=token, conn=held)
        for _ in range(opened):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((HOST, server.port))
            socks.append(s)
        time.sleep(0.5)
        sent = 0
        for s in socks:
            try:
                s.setblocking(True)
                s.settimeout(1)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                sent += 1
            except OSError:
                pass
        time.sleep(3)

        def poll(sockets):
            answered, waiting, closed = [], [], []
            for s in sockets:
                s.setblocking(False)
                try:
                    data = s.recv(4096)
                    (answered if data.startswith(b"HTTP/1.1 ") else closed).append(s)
                except BlockingIOError:
                    waiting.append(s)
                except OSError:
                    closed.append(s)
            return answered, waiting, closed

        answered, waiting, closed = poll(socks)
        peak = server.open_fds()
        print(f"  {sent} requests sent: {len(answered)} answered, {len(waiting)} waiting (not accepted), "
              f"{len(closed)} closed; server fds {fds_before} -> {peak}")
        tally.check(server.alive(), "fd limit: server alive at its descriptor limit", server.log_tail())
        # An accepted connection keeps working while no descriptor is left: a read and a write.
        try:
            r1 = request(server.port, "GET", "/v1/me", token=token, conn=held)[0]
            r2 = request(server.port, "POST", "/v1/sessions",
                         {"login": "fd-limit@example.com", "password": "reliable-pass-1"}, conn=held)[0]
        except (OSError, http.client.HTTPException) as error:
            r1 = r2 = repr(error)
        print(f"  at the limit, an accepted connection: GET /v1/me {r1}, POST /v1/sessions {r2}")
        # 503 is a graceful answer here: a reader connection that has not read yet opens the -wal and
        # -shm files on its first read, and there is no descriptor left for them (--warm-readers avoids it).
        tally.check(r1 in (200, 503) and r2 in (201, 503),
                    "fd limit: accepted connections keep answering (200, or 503 for the database) at the limit",
                    f"GET /v1/me {r1}, POST /v1/sessions {r2}")
        held.close()
        # Closing the answered ones frees descriptors: the waiting ones are accepted and answered.
        for s in answered + closed:
            s.close()
        late_answered = []
        deadline = time.monotonic() + 8
        while waiting and time.monotonic() < deadline:
            time.sleep(0.25)
            got, waiting, gone = poll(waiting)
            late_answered += got + gone
        print(f"  after closing the answered ones: {len(late_answered)} of the waiting answered, "
              f"{len(waiting)} still waiting")
        tally.check(not waiting, "fd limit: waiting connections are served once descriptors free up",
                    f"{len(waiting)} still waiting after 8 s")
        for s in socks:
            s.close()
        socks = []
        recovered = None
        began = time.monotonic()
        for _ in range(150):
            try:
                status, _, _ = request(server.port, "GET", "/v1/me", token=token, timeout=3)
                if status == 200:
                    recovered = time.monotonic() - began
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        tally.check(recovered is not None, "fd limit: serves reads again once the connections close",
                    server.log_tail())
        status, _, body = request(server.port, "POST", "/v1/sessions",
                                  {"login": "fd-limit@example.com", "password": "reliable-pass-1"})
        tally.check(status == 201, "fd limit: serves writes again once the connections close", f"{status} {body!r}")
        print(f"  recovered {recovered if recovered is not None else float('nan'):.2f} s after the close; "
              f"server fds {server.open_fds()}")
        code = server.stop()
        tally.check(code == 0, "fd limit: server stops cleanly on SIGTERM", f"exit {code}")
        with open(server.log_path, "rb") as f:
            log = f.read().decode("utf-8", "replace")
        noisy = log.count("\n")
        print(f"  server log: {noisy} lines")
    except Exception as error:  # noqa: BLE001
        tally.check(False, "fd limit", repr(error)[:500])
    finally:
        for s in socks:
            s.close()
        if server.alive():
            server.kill()


def main():
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="local sizes: 8000 slow, 64 greedy for 20 s")
    parser.add_argument("--slow", type=int, default=None, help="slow connections (2000; 8000 with --local)")
    parser.add_argument("--greedy", type=int, default=None, help="greedy connections (16; 64 with --local)")
    parser.add_argument("--greedy-bytes", type=int, default=256 * 1024, help="pipelined request bytes per greedy connection")
    parser.add_argument("--greedy-path", default="/", help="what the greedy clients ask for (the owner page)")
    parser.add_argument("--trickle", type=float, default=1.0, help="seconds between a slow connection's bytes")
    parser.add_argument("--request-timeout", type=int, default=10, help="the server's --request-timeout")
    parser.add_argument("--slack", type=float, default=4.0, help="seconds past the request timeout a slow connection may live")
    parser.add_argument("--greedy-seconds", type=float, default=None, help="seconds of greedy load (8; 15 with --local)")
    parser.add_argument("--baseline", type=float, default=2.0, help="seconds of idle measurement")
    parser.add_argument("--p99-limit-ms", type=float, default=2000.0, help="largest p99 accepted under load")
    parser.add_argument("--rss-limit-mb", type=float, default=256.0, help="largest server RSS growth accepted")
    parser.add_argument("--phases", default="load,cap,fd", help="which phases to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warm-readers", action="store_true", help="fd phase: read before the flood")
    args = parser.parse_args()
    args.slow = args.slow if args.slow is not None else (8000 if args.local else 2000)
    args.greedy = args.greedy if args.greedy is not None else (64 if args.local else 16)
    args.greedy_seconds = args.greedy_seconds or (20.0 if args.local else 10.0)
    check_binary(args.binary, "slowloris")
    fd_soft = raise_fd_limit(args.slow + args.greedy + 1000)
    if fd_soft < args.slow + args.greedy + 200:
        print(f"slowloris: this process may open only {fd_soft} files; lowering --slow", flush=True)
        args.slow = max(0, fd_soft - args.greedy - 500)
    workdir = make_workdir("slowloris", args.keep)
    tally = Tally("slowloris")
    rng = random.Random(args.seed)
    phases = set(args.phases.split(","))
    try:
        if "load" in phases:
            try:
                phase_load(args, workdir, tally, rng)
            except Exception as error:  # noqa: BLE001
                tally.check(False, "load", repr(error)[:800])
        if "cap" in phases:
            phase_cap(args, workdir, tally)
        if "fd" in phases:
            phase_fd_limit(args, workdir, tally)
    finally:
        if args.keep or tally.failed:
            print(f"slowloris: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return tally.finish()


if __name__ == "__main__":
    sys.exit(main())
