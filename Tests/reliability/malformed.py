#!/usr/bin/env python3
"""Malformed HTTP corpus over raw sockets: request smuggling, bad chunks, obs-fold, NUL and control
bytes, overlong request lines and headers, HTTP/0.9, the HTTP/2 preface, unknown methods, bad
percent-encoding, hostile JSON bodies and wrong media types.

Each case must be answered with a 4xx within a few seconds; where the framing is ambiguous (smuggling,
bad chunks, parse errors) the connection must then be closed and nothing after the bad request may
be answered. Meanwhile a separate keep-alive client keeps asking GET /healthz and must always get 200;
the server must stay alive. A 2xx, a 5xx or a hang is a finding.

An unknown transfer coding before `chunked` may also be answered 501 (RFC 9112 section 6.1 says
SHOULD); an unsupported HTTP version 505. Cases marked `info` are ones where RFC 9112 lets a server choose (e.g. whitespace leniency): their
answer is shown but not counted.

    malformed.py [--binary PATH] [--only NAME,...]
"""
import http.client
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Server, Tally, base_arguments, check_binary, integrity, make_workdir, request

HANG_SECONDS = 3.0      # no complete answer by then: a hang
CLOSE_SECONDS = 1.5     # after the answer, the connection must close within this when framing is ambiguous

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def post(path, headers, body=b""):
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + headers + b"\r\n" + body


def json_post(body, content_type=b"application/json", path="/v1/accounts"):
    ct = b"Content-Type: " + content_type + b"\r\n" if content_type is not None else b""
    return post(path, ct + b"Content-Length: " + str(len(body)).encode() + b"\r\n", body)


def get(target=b"/healthz", extra=b"", version=b"HTTP/1.1", method=b"GET"):
    return method + b" " + target + b" " + version + b"\r\nHost: x\r\n" + extra + b"\r\n"


ACCOUNT = b'"role":"customer","password":"password-1","name":"x"'

# (name, category, raw bytes, expectation, notes)
# category: smuggling | chunks | parse (ambiguous framing: 4xx and close), app (4xx, may keep alive),
#           info (not counted).  expectation: a set of statuses, or None for "any 4xx".
CASES = [
    # --- request smuggling
    ("cl+te", "smuggling", post("/v1/sessions", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                b"0\r\n\r\n" + SMUGGLED), None),
    ("te+cl", "smuggling", post("/v1/sessions", b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                                b"0\r\n\r\n" + SMUGGLED), None),
    ("two differing content-lengths", "smuggling",
     post("/v1/sessions", b"Content-Length: 5\r\nContent-Length: 41\r\n", b"hello" + SMUGGLED), None),
    ("content-length list 5, 41", "smuggling", post("/v1/sessions", b"Content-Length: 5, 41\r\n", b"hello" + SMUGGLED), None),
    ("content-length -1", "smuggling", post("/v1/sessions", b"Content-Length: -1\r\n", SMUGGLED), None),
    ("content-length +2", "smuggling", post("/v1/sessions", b"Content-Length: +2\r\n", b"{}" + SMUGGLED), None),
    ("content-length 0x2", "smuggling", post("/v1/sessions", b"Content-Length: 0x2\r\n", b"{}" + SMUGGLED), None),
    ("content-length overflow", "smuggling",
     post("/v1/sessions", b"Content-Length: 99999999999999999999999\r\n", b"{}" + SMUGGLED), None),
    ("te: xchunked", "smuggling", post("/v1/sessions", b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te with space before colon", "smuggling",
     post("/v1/sessions", b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te line starting with space", "smuggling",
     b"POST /v1/sessions HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n0\r\n\r\n" + SMUGGLED, None),
    ("te folded onto next line", "smuggling",
     post("/v1/sessions", b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te: chunked, identity", "smuggling",
     post("/v1/sessions", b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te: chunked,", "smuggling", post("/v1/sessions", b"Transfer-Encoding: chunked,\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te: identity, chunked", "smuggling",
     post("/v1/sessions", b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n" + SMUGGLED), {400, 501}),
    ("te: gzip, chunked", "smuggling",
     post("/v1/sessions", b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + SMUGGLED), {400, 501}),
    ("te: gzip (not chunked)", "smuggling", post("/v1/sessions", b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te twice", "smuggling",
     post("/v1/sessions", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), None),
    ("te empty", "smuggling", post("/v1/sessions", b"Transfer-Encoding: \r\n", SMUGGLED), None),
    # --- bad chunks
    ("chunk size not hex", "chunks", post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), None),
    ("chunk size overflow", "chunks",
     post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), None),
    ("chunk size negative", "chunks", post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"), None),
    ("chunk size with space", "chunks", post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"), None),
    ("chunk data longer than size", "chunks",
     post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"2\r\nhello\r\n0\r\n\r\n" + SMUGGLED), None),
    ("chunk without crlf", "chunks", post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"), None),
    ("chunks with bare lf", "chunks", post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"), None),
    ("huge trailer", "chunks",
     post("/v1/sessions", b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\nX-T: " + b"a" * 100_000 + b"\r\n\r\n"), {431, 400}),
    # --- parse errors: obs-fold, NUL and control bytes, sizes, versions, methods
    ("obs-fold", "parse", get(extra=b"X-A: a\r\n b\r\n"), None),
    ("NUL in request line", "parse", b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ("control byte in request line", "parse", b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ("DEL in request line", "parse", b"GET /heal\x7fthz HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ("8-bit byte in request line", "parse", b"GET /heal\xffthz HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ("tab as separator", "parse", b"GET\t/healthz HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ("NUL in header value", "parse", get(extra=b"X-A: a\x00b\r\n"), None),
    ("control byte in header value", "parse", get(extra=b"X-A: a\x01b\r\n"), None),
    ("bare CR in header value", "parse", get(extra=b"X-A: a\rb\r\n"), None),
    ("DEL in header name", "parse", get(extra=b"X\x7fA: b\r\n"), None),
    ("space in header name", "parse", get(extra=b"X A: b\r\n"), None),
    ("header without colon", "parse", get(extra=b"NoColon\r\n"), None),
    ("header with empty name", "parse", get(extra=b": v\r\n"), None),
    ("bare LF line endings", "parse", b"GET /healthz HTTP/1.1\nHost: x\n\n", None),
    ("request line 20 KB", "parse", get(b"/" + b"a" * 20_000), {414, 431, 400}),
    ("request line 1 MB", "parse", get(b"/" + b"a" * 1_000_000), {414, 431, 400}),
    ("header value 20 KB", "parse", get(extra=b"X-A: " + b"a" * 20_000 + b"\r\n"), {431, 400}),
    ("300 headers", "parse", get(extra=b"".join(b"X-%d: a\r\n" % i for i in range(300))), {431, 400}),
    ("header block 18 KB", "parse", get(extra=b"".join(b"X-%d: %s\r\n" % (i, b"a" * 900) for i in range(20))), {431, 400}),
    ("HTTP/0.9", "parse", b"GET /\r\n\r\n", None),
    ("HTTP/2 preface", "parse", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
    ("HTTP/1.2", "parse", get(version=b"HTTP/1.2"), {400, 505}),
    ("HTTP/2.0 request line", "parse", get(version=b"HTTP/2.0"), {400, 505}),
    ("HTTP/1.1 without Host", "parse", b"GET /healthz HTTP/1.1\r\n\r\n", {400}),
    ("two Host headers", "parse", b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", {400}),
    ("invalid Host value", "parse", b"GET /healthz HTTP/1.1\r\nHost: a b@c\r\n\r\n", {400}),
    ("unknown method BREW", "app", get(method=b"BREW"), None),
    ("lower-case method", "app", get(method=b"get"), None),
    # --- targets
    ("bad percent-encoding %zz", "app", get(b"/v1/stores/%zz"), {400}),
    ("truncated percent-encoding", "app", get(b"/healthz%"), {400}),
    ("percent-encoded NUL", "app", get(b"/v1/stores/%00"), {400}),
    ("percent-encoded bad UTF-8", "app", get(b"/v1/stores?q=%C3%28"), {400}),
    ("absolute-form target", "app", get(b"http://x/healthz"), None),
    ("asterisk-form OPTIONS", "app", get(b"*", method=b"OPTIONS"), None),
    ("CONNECT authority-form", "app", get(b"x:443", method=b"CONNECT"), None),
    # --- bodies
    ("JSON nested 20000 deep", "app", json_post(b'{"role":' + b"[" * 20_000 + b"]" * 20_000 + b"}"), {400}),
    ("JSON nested 17 deep", "app", json_post(b'{"role":' + b"[" * 16 + b"]" * 16 + b"}"), {400}),
    ("JSON over 64 KiB", "app", json_post(b'{"login":"' + b"a" * 70_000 + b'",' + ACCOUNT + b"}"), {413}),
    ("JSON over 64 KiB, chunked", "app",
     post("/v1/accounts", b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
          b"".join(b"1000\r\n" + b"a" * 4096 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"), {413}),
    ("Expect 100-continue, 1 MB", "app",
     post("/v1/accounts", b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n"), {413}),
    ("invalid UTF-8 in JSON", "app", json_post(b'{"login":"\xff\xfeabc",' + ACCOUNT + b"}"), {400}),
    ("overlong UTF-8 in JSON", "app", json_post(b'{"login":"\xc0\xafabc",' + ACCOUNT + b"}"), {400}),
    ("UTF-8 surrogate in JSON", "app", json_post(b'{"login":"\xed\xa0\x80abc",' + ACCOUNT + b"}"), {400}),
    ("lone surrogate escape", "app", json_post(b'{"login":"\\ud800abc",' + ACCOUNT + b"}"), {400}),
    ("NUL escape in a field", "app", json_post(b'{"login":"a\\u0000bc",' + ACCOUNT + b"}"), {400}),
    ("number 1e400", "app", json_post(b'{"role":1e400}'), {400}),
    ("trailing garbage after JSON", "app", json_post(b'{"role":"customer"} x'), {400}),
    ("JSON array body", "app", json_post(b"[]"), {400}),
    ("text/plain body", "app", json_post(b'{"role":"customer"}', b"text/plain"), {415}),
    ("missing Content-Type", "app", json_post(b'{"role":"customer"}', None), {415}),
    ("application/jsonx", "app", json_post(b'{"role":"customer"}', b"application/jsonx"), {415}),
    ("form-encoded body", "app", json_post(b"role=customer", b"application/x-www-form-urlencoded"), {415}),
    # --- RFC 9112 lets a server choose here: shown, not counted
    ("double space in request line", "info", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ("te: chunked on HTTP/1.0", "info",
     b"POST /v1/sessions HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", None),
    ("duplicate JSON keys", "info", json_post(b'{"role":"owner","role":"customer"}'), None),
    ("JSON with a BOM", "info", json_post(b'\xef\xbb\xbf{"role":"customer"}'), None),
    ("GET with a body, then a pipelined GET", "info",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + get(), None),
]


def parse_responses(data):
    """Complete responses in `data`: a list of (status, headers dict)."""
    out = []
    rest = data
    while True:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            break
        head = rest[:end].split(b"\r\n")
        try:
            status = int(head[0].split(b" ")[1])
        except (IndexError, ValueError):
            out.append((None, {"raw": head[0][:80]}))
            break
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        length = int(headers.get("content-length", "0") or 0)
        if status < 200:
            rest = rest[end + 4:]
            continue
        if len(rest) < end + 4 + length:
            break
        out.append((status, headers))
        rest = rest[end + 4 + length:]
    return out


def run_case(port, raw, close_wait):
    """Sends `raw`; returns (responses, closed, seconds to first answer or None). After the first
    answer it waits `close_wait` seconds for more answers or the close."""
    s = socket.create_connection((HOST, port), timeout=5)
    s.settimeout(0.1)
    began = time.monotonic()
    data = b""
    closed = False
    answered_at = None
    send_error = None
    try:
        try:
            s.sendall(raw)
        except OSError as error:  # the server may close before reading it all (e.g. 431); read what it said
            send_error = error
        while True:
            now = time.monotonic()
            if answered_at is None and now - began > HANG_SECONDS:
                break
            if answered_at is not None and now - answered_at > close_wait:
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if answered_at is None and parse_responses(data):
                answered_at = time.monotonic()
    finally:
        s.close()
    responses = parse_responses(data)
    first = (answered_at - began) if answered_at else None
    return responses, closed, first


class HealthClient(threading.Thread):
    """One keep-alive connection asking GET /healthz every 20 ms until stopped."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.ok = 0
        self.bad = []
        self.worst = 0.0
        self.reconnects = 0

    def run(self):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        deadline = time.monotonic() + 600
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            try:
                status, _, _ = request(self.port, "GET", "/healthz", conn=conn)
                if status == 200:
                    self.ok += 1
                else:
                    self.bad.append(f"status {status}")
            except (OSError, http.client.HTTPException) as error:
                self.bad.append(repr(error)[:120])
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                self.reconnects += 1
            self.worst = max(self.worst, time.monotonic() - began)
            self.stop_event.wait(0.02)
        conn.close()


def verdict(category, expectation, responses, closed, first):
    """(counted, ok, text)"""
    statuses = [r[0] for r in responses]
    if not responses:
        text = "hang" if not closed else "closed without an answer"
        return category != "info", False, text
    status = statuses[0]
    problems = []
    if status is None:
        problems.append("unparsable answer")
    elif expectation is not None and status not in expectation:
        problems.append(f"expected {sorted(expectation)}")
    elif expectation is None and not 400 <= status < 500:
        problems.append("expected a 4xx")
    if category in ("smuggling", "chunks", "parse"):
        if len(responses) > 1:
            problems.append(f"answered {len(responses)} requests (smuggled request answered)")
        if not closed:
            problems.append("connection left open")
    if category == "info":
        return False, True, "info"
    return True, not problems, "; ".join(problems) or "ok"


def main():
    parser = base_arguments(__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated case names to run")
    args = parser.parse_args()
    check_binary(args.binary, "malformed")
    workdir = make_workdir("malformed", args.keep)
    db_path = os.path.join(workdir, "db.sqlite")
    server = Server(args.binary, db_path, workdir)
    tally = Tally("malformed")
    try:
        server.start()
        health = HealthClient(server.port)
        health.start()
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        rows = []
        for name, category, raw, expectation in CASES:
            if wanted and name not in wanted:
                continue
            must_close = category in ("smuggling", "chunks", "parse")
            responses, closed, first = run_case(server.port, raw, CLOSE_SECONDS if must_close else 0.3)
            counted, ok, text = verdict(category, expectation, responses, closed, first)
            if counted:
                tally.check(ok, f"case '{name}'",
                            f"{text}; got {[r[0] for r in responses]}, closed={closed}")
            rows.append((name, category, [r[0] for r in responses], closed, first, "PASS" if ok and counted
                         else ("info" if not counted else "FAIL"), text))
            if not server.alive():
                tally.check(False, f"server alive after '{name}'", server.log_tail())
                break
        health.stop_event.set()
        health.join(timeout=10)

        width = max(len(r[0]) for r in rows) if rows else 10
        print(f"{'case':<{width}}  {'kind':<9}  {'answer':<10}  {'closed':<6}  {'ms':>6}  result")
        for name, category, statuses, closed, first, result, text in rows:
            answer = ",".join(str(s) for s in statuses) or "-"
            ms = f"{first * 1000:.0f}" if first is not None else "-"
            note = "" if text in ("ok", "info") else f" ({text})"
            print(f"{name:<{width}}  {category:<9}  {answer:<10}  {str(closed).lower():<6}  {ms:>6}  {result}{note}")

        tally.check(health.ok > 0 and not health.bad,
                    "the keep-alive client got 200 from /healthz throughout",
                    f"{health.ok} ok, {len(health.bad)} bad: {health.bad[:3]}")
        print(f"health client: {health.ok} x 200 on one keep-alive connection, {len(health.bad)} failures, "
              f"slowest {health.worst * 1000:.0f} ms")
        tally.check(server.alive(), "server alive after the corpus", server.log_tail())
        status, _, _ = request(server.port, "GET", "/healthz")
        tally.check(status == 200, "GET /healthz after the corpus", str(status))
        code = server.stop()
        tally.check(code == 0, "server stops cleanly on SIGTERM", f"exit {code}")
        check = integrity(db_path)
        tally.check(check == "ok", "PRAGMA integrity_check", check)
    except Exception as error:  # noqa: BLE001
        tally.check(False, "malformed run", repr(error)[:800])
    finally:
        if server.alive():
            server.kill()
        if not (args.keep or tally.failed):
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"malformed: kept {workdir}")
    return tally.finish()


if __name__ == "__main__":
    sys.exit(main())
