#!/usr/bin/env python3
"""Soak: a day of load, compressed.

stampd-bench (next to the stampd binary) parks other owners' polls (--parked) and starts full
flows open loop at a steady --rate (stamp request, the owner's poll hears it, approve, both
polls hear the approval) for --seconds, while the server keeps events only --retention seconds
and prunes every --prune seconds, so that pruning runs many times. Every --sample seconds this
script records the database and WAL file sizes, the events and requests rows, the server's RSS
and open descriptors, the SQLite writer's queue, and from /metrics the p50/p99 of the
requests (polls aside) and of event deliveries in that interval, and their 5xx. Checked:

- the client saw no error and nothing was refused (the rate is one the machine sustains);
- after the first retention window (warm-up), each of RSS, descriptors, WAL size, events rows,
  writer queue and the p99s levels off: the second half's peak is within a tolerance of the
  first half's (no growth); the database file grows only with the history it keeps (requests
  and ledger rows are never pruned: its bytes per flow do not rise);
- no parked poll was dropped, no 5xx answered;
- nothing acknowledged is lost: every approval answered 200 is stored; integrity_check ok.

With matplotlib (Tests/requirements.txt) the series are drawn to --plot (a PNG).

    soak.py [--binary PATH] [--seconds S] [--rate R] [--parked N] [--local] [--plot FILE]
"""
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Server, base_arguments
from overload import bench_command, check_the_end, number, prepare, read_results


def scrape(port):
    """The metrics text as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        try:
            values[(name, labels.rstrip("}"))] = float(value)
        except ValueError:
            pass
    return values


def label(labels, key):
    for part in labels.split(","):
        name, _, value = part.partition("=")
        if name.strip() == key:
            return value.strip().strip('"')
    return None


def buckets(metrics, name, keep=lambda labels: True):
    """Cumulative counts by upper bound, summed over the label sets `keep` accepts."""
    summed = {}
    for (metric, labels), value in metrics.items():
        if metric != name + "_bucket" or not keep(labels):
            continue
        bound = label(labels, "le")
        bound = float("inf") if bound == "+Inf" else float(bound)
        summed[bound] = summed.get(bound, 0) + value
    return summed


def quantile(before, after, q):
    """The q-quantile (ms) of what was observed between two scrapes of a histogram."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    wanted = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= wanted:
            if bound == float("inf"):
                return previous_bound * 1000
            share = (wanted - previous_count) / max(count - previous_count, 1e-9)
            return (previous_bound + (bound - previous_bound) * share) * 1000
        previous_bound, previous_count = bound, count
    return previous_bound * 1000


def five_hundreds(metrics):
    return sum(value for (name, labels), value in metrics.items()
               if name == "stampd_http_requests_total" and (label(labels, "status") or "").startswith("5"))


class Sampler(threading.Thread):
    def __init__(self, server, database, every):
        super().__init__(daemon=True)
        self.server, self.database, self.every = server, database, every
        self.samples = []
        self.stop = threading.Event()
        self.began = time.monotonic()

    def rows(self):
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            events = db.execute("SELECT count(*) FROM events").fetchone()[0]
            requests = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        finally:
            db.close()
        return events, requests

    def run(self):
        previous = None
        pid = self.server.proc.pid
        first = True
        while not self.stop.wait(0 if first else self.every):
            first = False
            try:
                metrics = scrape(self.server.metrics_port)
                with open(f"/proc/{pid}/status") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                events, requests = self.rows()
            except (OSError, StopIteration, sqlite3.Error, ValueError, http.client.HTTPException) as error:
                print(f"soak: a sample failed: {error}", flush=True)
                continue
            sample = {
                "t": time.monotonic() - self.began, "rss_mib": rss, "fds": fds,
                "db_mib": os.path.getsize(self.database) / 2**20,
                "wal_mib": (os.path.getsize(self.database + "-wal") if os.path.exists(self.database + "-wal") else 0) / 2**20,
                "events_rows": events, "requests_rows": requests,
                "writer_queue": metrics.get(("stampd_sqlite_writer_queue", ""), 0),
                "parked": metrics.get(("stampd_parked_polls", ""), 0),
            }
            requests_hist = buckets(metrics, "stampd_http_request_duration_seconds",
                                    lambda labels: label(labels, "route") not in ("/v1/events", "/metrics", "unmatched"))
            delivery_hist = buckets(metrics, "stampd_event_delivery_seconds")
            if previous:
                for key, hist, old in (("request", requests_hist, previous[0]), ("delivery", delivery_hist, previous[1])):
                    sample[f"{key}_p50_ms"] = quantile(old, hist, 0.50)
                    sample[f"{key}_p99_ms"] = quantile(old, hist, 0.99)
                self.samples.append(sample)
            previous = (requests_hist, delivery_hist)


def levels_off(samples, key, warmup, tolerance, slack, typical=False):
    """(holds, first half's, second half's) peak, or median when `typical` (latencies: one spike
    is not growth), over the samples after the warm-up."""
    values = [s[key] for s in samples if s["t"] >= warmup and s.get(key) is not None]
    if len(values) < 4:
        return False, None, None
    half = len(values) // 2
    pick = (lambda part: sorted(part)[len(part) // 2]) if typical else max
    first, second = pick(values[:half]), pick(values[half:])
    return second <= first * (1 + tolerance) + slack, first, second


def plot(samples, path, warmup, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: no matplotlib; no plot", flush=True)
        return False
    panels = [
        ("Memory (RSS, MiB)", [("rss_mib", "RSS")]),
        ("Files (MiB)", [("db_mib", "database"), ("wal_mib", "WAL")]),
        ("Rows", [("events_rows", "events (pruned)"), ("requests_rows", "requests (history)")]),
        ("Open descriptors", [("fds", "descriptors")]),
        ("Writer queue (writes waiting)", [("writer_queue", "queue")]),
        ("Latency (ms)", [("request_p50_ms", "requests p50"), ("request_p99_ms", "requests p99"),
                          ("delivery_p50_ms", "deliveries p50"), ("delivery_p99_ms", "deliveries p99")]),
    ]
    figure, axes = plt.subplots(3, 2, figsize=(12, 10), constrained_layout=True)
    styles = ["-", "--", "-.", ":"]
    for axis, (name, series) in zip(axes.flat, panels):
        for index, (key, legend) in enumerate(series):
            points = [(s["t"] / 60, s[key]) for s in samples if s.get(key) is not None]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], styles[index % 4], label=legend, linewidth=1.2)
        axis.axvline(warmup / 60, color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(name)
        axis.set_xlabel("minutes")
        tops = [s[key] for key, _ in series for s in samples if s.get(key) is not None]
        axis.set_ylim(0, max(tops) * 1.15 if tops and max(tops) > 0 else 1)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def main():
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="seconds of load (default 120; --local 1800)")
    parser.add_argument("--rate", type=float, default=40, help="full flows started per second (default 40; --local 400)")
    parser.add_argument("--parked", type=int, default=2000, help="other owners' polls parked throughout (default 2000; --local 10000)")
    parser.add_argument("--pairs", type=int, default=256, help="owner/customer pairs the flows run on (default 256)")
    parser.add_argument("--retention", type=int, default=20, help="seconds events are kept (default 20; --local 180)")
    parser.add_argument("--prune", type=int, default=5, help="seconds between pruning rounds (default 5; --local 20)")
    parser.add_argument("--sample", type=float, default=2, help="seconds between samples (default 2; --local 5)")
    parser.add_argument("--plot", help="draw the series to this PNG (default: soak.png in the work folder)")
    parser.add_argument("--series", help="write the samples to this JSON file")
    parser.add_argument("--local", action="store_true", help="the local sizes: 30 minutes, 10,000 parked, 400 flows/s")
    parser.add_argument("--bench", help="stampd-bench (default: next to the binary)")
    args = parser.parse_args()
    if args.local:
        # The local sizes as defaults: an option given on the command line still wins.
        parser.set_defaults(seconds=1800, rate=400, parked=10_000, retention=180, prune=20, sample=5, pairs=1024)
        args = parser.parse_args()
    prepared = prepare(args, "soak")
    if not prepared:
        return 2
    bench, tally, work, database = prepared
    server = Server(args.binary, database, work,
                    # The flows' connections sit idle while the polls park (minutes at 10,000), and
                    # stampd-bench does not open again a connection the server closed for idleness.
                    extra=["--max-connections", "19000", "--max-polls", "19000", "--idle-timeout", "900",
                           "--event-retention-seconds", str(args.retention), "--prune-interval", str(args.prune)])
    server.start()
    results_path = os.path.join(work, "results.tsv")
    # The overload phase at 1 × a given rate is a steady open-loop load.
    command = bench_command(bench, server, args.parked, results_path, args.seconds + 600,
                            ["--flow-seconds", "0", "--overload-seconds", str(args.seconds), "--overload-factor", "1",
                             "--overload-base-rate", str(args.rate), "--overload-pairs", str(args.pairs)])
    print(f"soak: {args.parked} polls parked, {args.rate:g} full flows/s for {args.seconds:.0f} s, events kept "
          f"{args.retention} s and pruned every {args.prune} s, sampled every {args.sample:g} s", flush=True)
    sampler = Sampler(server, database, args.sample)
    began = time.monotonic()
    sampler.start()
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=args.seconds + 900)
    sampler.stop.set()
    sampler.join(timeout=30)
    for line in run.stdout.splitlines():
        if "overload" in line or "error" in line:
            print(f"  | {line}")
    values = read_results(results_path)
    samples = sampler.samples
    # The load starts once the polls are parked: time from the first sample with flows running.
    load_began = next((s["t"] for s in samples if s["requests_rows"] > 0), 0)
    for s in samples:
        s["t"] -= load_began
    samples = [s for s in samples if s["t"] >= 0]
    warmup = args.retention + 2 * args.prune + 10
    tally.check(run.returncode == 0, "the client saw no error (no poll dropped or refused, every flow finished)",
                f"exit {run.returncode}; see above")
    shed = number(values, "o.stampd.shed")
    tally.check(shed == 0, "nothing was refused at the steady rate", f"{shed:.0f} stamp requests refused")
    goodput = number(values, "o.stampd.goodput_flows_per_s")
    print(f"soak: {goodput:.1f} flows/s finished of {args.rate:g} started per second; {len(samples)} samples", flush=True)
    tally.check(goodput >= 0.95 * args.rate, "the flows kept up with the rate", f"{goodput:.1f} of {args.rate:g}/s")
    fewest = number(values, "o.stampd.parked_fewest")
    tally.check(fewest >= args.parked, "no parked poll was dropped", f"fewest parked {fewest:.0f} of {args.parked}")
    # Counted since the server started, setup and the bench's last probes included.
    errors = five_hundreds(scrape(server.metrics_port))
    tally.check(errors == 0, "no 5xx answered during the soak", f"{errors:.0f}")

    rows = [("rss_mib", "RSS (MiB)", 0.10, 16, False), ("fds", "open descriptors", 0.02, 32, False),
            ("wal_mib", "WAL size (MiB)", 0.25, 8, False), ("events_rows", "events rows", 0.25, 2000, False),
            ("writer_queue", "writer queue", 0.5, 64, False),
            ("request_p99_ms", "requests p99 (ms)", 1.0, 10, True), ("delivery_p99_ms", "deliveries p99 (ms)", 1.0, 10, True)]
    print(f"soak: after the warm-up of {warmup} s, the first and the second half (peak; latencies: median):", flush=True)
    for key, name, tolerance, slack, typical in rows:
        holds, first, second = levels_off(samples, key, warmup, tolerance, slack, typical)
        print(f"  {name:22} {first if first is None else round(first, 2)!s:>10} {second if second is None else round(second, 2)!s:>10}")
        tally.check(holds, f"{name} levels off after the first retention window", f"first half {first}, second {second}")
    settled = [s for s in samples if s["t"] >= warmup]
    if len(settled) >= 4:
        half = len(settled) // 2
        def per_flow(a, b):
            flows = b["requests_rows"] - a["requests_rows"]
            return (b["db_mib"] - a["db_mib"]) * 2**20 / flows if flows > 0 else 0
        first, second = per_flow(settled[0], settled[half]), per_flow(settled[half], settled[-1])
        print(f"soak: the database file grew {first:.0f} then {second:.0f} bytes per flow (its kept history)", flush=True)
        tally.check(second <= max(first, 0) * 1.5 + 512, "the database grows only with the history it keeps",
                    f"{first:.0f} then {second:.0f} bytes per flow")
    else:
        tally.check(False, "enough samples after the warm-up", f"{len(settled)}")
    for key in ("request_p50_ms", "request_p99_ms", "delivery_p50_ms", "delivery_p99_ms"):
        series = sorted(s[key] for s in settled if s.get(key) is not None)
        if series:
            print(f"soak: {key} over the samples: median {series[len(series) // 2]:.1f}, worst {series[-1]:.1f}")

    check_the_end(tally, server, database, values, "soak")
    if args.series:
        with open(args.series, "w") as f:
            json.dump({"args": vars(args), "warmup": warmup, "samples": samples}, f)
    kept = args.keep or tally.failed > 0
    plot_path = args.plot or (os.path.join(work, "soak.png") if kept else None)
    if plot_path and plot(samples, plot_path, warmup, f"stampd soak: {args.rate:g} flows/s, {args.parked} parked, "
                                                      f"events kept {args.retention} s, {args.seconds / 60:.0f} min"):
        print(f"soak: plot in {plot_path}")
    print(f"soak: {time.monotonic() - began:.0f} s")
    if kept:
        print(f"soak: kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return tally.finish()


if __name__ == "__main__":
    sys.exit(main())
