#!/usr/bin/env python3
"""Summarise a `perf record -g` profile of stampd per thread and per cause.

    perf record -e cpu-clock -F 499 -g -p $(pgrep -n stampd) -o flows.data -- sleep 10
    scripts/bench/perf-summary.py flows.data [--top 12]

Prints, for every thread: its share of the samples, what it mostly is (writer, reader, event
loop, cooperative pool) and the functions most often on its stacks (inclusive), demangled.
Then a breakdown of all samples by cause (SQLite, fsync, JSON, HTTP parsing, NIO timers, ...).
"""
import collections
import re
import subprocess
import sys

CAUSES = [
    # (label, regular expression on a frame's symbol); the first cause matched from the leaf upwards wins.
    ("fsync / fdatasync (durable commit)", r"fsync|fdatasync|jbd2|file_write_and_wait"),
    ("SQLite", r"sqlite3|libsqlite3"),
    ("NIO scheduled-task cancel (linear scan of the timer heap)", r"_prepareToSchedule"),
    ("JSON encode/decode", r"JSONWriter|JSONEncoder|JSONDecoder|JSONMap|JSONScanner|9StampHTTP9JSONValue|9StampHTTP9JSONInput"),
    # llhttp calls the whole pipeline back from inside its parse loop: count it only as the leaf.
    ("HTTP parsing (llhttp, as the leaf)", r"^c_nio_llhttp|llhttp__internal"),
    ("metrics (swift-metrics / prometheus)", r"Prometheus|11HTTPMetrics|CoreMetrics|^\$s7Metrics"),
    ("Swift task creation / switching", r"swift_task_create|swift_job_run|swift_task_switch|swift_task_enqueue|completeWithTask|swift_continuation"),
    ("socket write (kernel)", r"sock_sendmsg|tcp_sendmsg|__x64_sys_write|ksys_write|do_writev"),
    ("socket read (kernel)", r"sock_recvmsg|tcp_recvmsg|__x64_sys_read|ksys_read"),
    ("epoll / futex / thread wake-ups (kernel)", r"epoll|futex|^sem_post|^sem_wait|try_to_wake_up|^schedule$|^__schedule|finish_task_switch"),
    ("malloc / free", r"^malloc|^_int_free|^cfree|^unlink_chunk|^_int_malloc|malloc_consolidate|^free$"),
    ("retain / release", r"swift_retain|swift_release|swift_bridgeObject"),
]

INCLUSIVE = [
    ("bearer-token authentication (StampService.authenticate, one SQLite read per request)", r"authenticate"),
    ("event reads for polls (StampService.events)", r"StampService6events"),
    ("SQLite writer thread (Database.drain / commit)", r"8DatabaseC5drain|8DatabaseC6commit"),
    ("hand-offs to the blocking pools (BlockingPool)", r"12BlockingPool"),
    ("answers written (HTTPHandler.write)", r"11HTTPHandlerC5write"),
    ("request dispatch (HTTPHandler.dispatch)", r"11HTTPHandlerC8dispatch"),
    ("event hub (EventHub)", r"8EventHub"),
    ("ConnectionGuard + ByteArrivalNotifier", r"15ConnectionGuard|19ByteArrivalNotifier"),
]


def demangle(names):
    try:
        out = subprocess.run(["swift", "demangle", "--simplified", "--compact"], input="\n".join(names),
                             capture_output=True, text=True, timeout=60).stdout.split("\n")
        return {n: (out[i] if i < len(out) and out[i] else n) for i, n in enumerate(names)}
    except Exception:
        return {n: n for n in names}


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    top = 12
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
    text = subprocess.run(["perf", "script", "-i", sys.argv[1], "-F", "comm,tid,ip,sym,dso"],
                          capture_output=True, text=True).stdout
    samples = []  # (comm, tid, [frame strings leaf first])
    current = None
    for line in text.split("\n"):
        if not line.strip():
            if current:
                samples.append(current)
            current = None
            continue
        if not line.startswith("\t") and not line.startswith(" " * 8):
            parts = line.split()
            current = (" ".join(parts[:-1]), parts[-1], [])
        elif current is not None:
            current[2].append(line.strip())
    if current:
        samples.append(current)
    if not samples:
        print("no samples")
        return
    total = len(samples)
    by_thread = collections.defaultdict(list)
    for comm, tid, frames in samples:
        by_thread[(comm, tid)].append(frames)

    def frame_symbol(frame):
        # "addr symbol+off (dso)" -> symbol
        parts = frame.split(" ", 1)
        sym = parts[1] if len(parts) > 1 else parts[0]
        return sym.rsplit(" (", 1)[0]

    wanted = set()
    reports = []
    for (comm, tid), stacks in sorted(by_thread.items(), key=lambda kv: -len(kv[1])):
        inclusive = collections.Counter()
        for frames in stacks:
            seen = set()
            for frame in frames:
                sym = frame_symbol(frame)
                if sym in seen or sym.startswith("[unknown]"):
                    continue
                seen.add(sym)
                inclusive[sym] += 1
        role = "other"
        joined = collections.Counter()
        for frames in stacks:
            text_stack = " ".join(frames)
            if "8SQLiteDB8DatabaseC5drain" in text_stack or "SQLiteDB8DatabaseC6commit" in text_stack:
                joined["writer"] += 1
            elif "libsqlite3" in text_stack:
                joined["reader"] += 1
            elif "SelectableEventLoop" in text_stack:
                joined["event loop"] += 1
            elif "swift_job_run" in text_stack or "swift::runJobInEstablishedExecutorContext" in text_stack:
                joined["cooperative pool"] += 1
        if joined:
            role = joined.most_common(1)[0][0]
        interesting = [(s, n) for s, n in inclusive.most_common(400)
                       if any(k in s for k in ("StampHTTP", "StampCore", "SQLiteDB", "Blocking", "sqlite3_", "fsync",
                                               "fdatasync", "NIO", "JSON", "Metrics", "Prometheus", "swift_task", "malloc"))]
        for s, _ in interesting[:top]:
            wanted.add(s)
        reports.append((comm, tid, len(stacks), role, interesting[:top]))
    names = demangle(sorted(wanted))
    for comm, tid, count, role, interesting in reports:
        if count < total * 0.01:
            continue
        print(f"\n== thread {tid} {comm!r}: {100.0 * count / total:.1f}% of samples, looks like: {role}")
        for sym, n in interesting:
            print(f"   {100.0 * n / count:5.1f}%  {names.get(sym, sym)[:150]}")

    compiled = [(label, re.compile(pattern)) for label, pattern in CAUSES]
    causes = collections.Counter()
    for _, _, frames in samples:
        label = "other"
        for depth, frame in enumerate(frames):
            sym = frame_symbol(frame)
            hit = next((l for l, rx in compiled if (depth == 0 or "llhttp" not in l) and (rx.search(sym) or rx.search(frame))), None)
            if hit:
                label = hit
                break
        causes[label] += 1
    print(f"\n== all {total} samples by cause (leaf-most match: each sample counted once)")
    for label, n in causes.most_common():
        print(f"   {100.0 * n / total:5.1f}%  {label}")
    inclusive = collections.Counter()
    for _, _, frames in samples:
        symbols = [frame_symbol(f) for f in frames]
        for label, rx in [c for c in compiled if "llhttp" not in c[0]] + [(l, re.compile(p)) for l, p in INCLUSIVE]:
            if any(rx.search(sym) or rx.search(frame) for sym, frame in zip(symbols, frames)):
                inclusive[label] += 1
    print(f"\n== all {total} samples by what is anywhere on the stack (inclusive: a sample can count in several)")
    for label, n in inclusive.most_common():
        print(f"   {100.0 * n / total:5.1f}%  {label}")


if __name__ == "__main__":
    main()
