#!/usr/bin/env python3
"""The review's attacks, replayed against a live stampd at the production password cost.

Starts the given binary on loopback with a fresh database and the default limits (no relaxed
flags, real scrypt), replays each attack from issue 11's findings, and prints what it gets now.
Not a test: it prints figures (timings depend on the machine) for the issue's note.

    scripts/probes/attacks.py [path/to/stampd]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, ".build", "debug", "stampd")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT = free_port()


class Client:
    def __init__(self, source="127.0.0.1"):
        self.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60, source_address=(source, 0))

    def call(self, method, path, body=None, token=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = "Bearer " + token
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode()
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = text
        return response.status, data


def call(method, path, body=None, token=None, source="127.0.0.1"):
    return Client(source).call(method, path, body, token)


def account(role, login, password="correct horse battery", source="127.0.0.1"):
    for _ in range(20):
        status, body = call("POST", "/v1/accounts", {"role": role, "login": login, "password": password, "name": login[:20]},
                            source=source)
        if status != 503:
            break
        time.sleep(1)  # the hashing line was full: Retry-After says 1 s
    assert status == 201, (status, body)
    return body["token"], body["account"]["id"]


def say(title, text):
    print(f"- {title}: {text}", flush=True)


def main():
    work = tempfile.mkdtemp(prefix="stampd-attacks-")
    log = open(os.path.join(work, "server.log"), "wb")
    server = subprocess.Popen([BINARY, "--port", str(PORT), "--metrics-port", "0", "--database", os.path.join(work, "db.sqlite"),
                               "--migrations", os.path.join(REPO, "migrations"), "--log-level", "warning"],
                              stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                if call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        # Each party signs up from an address of its own (one address may create 20 accounts an hour).
        owner_x, _ = account("owner", "owner-x@example.com", source="127.0.1.1")
        owner_y, _ = account("owner", "owner-y@example.com", source="127.0.1.2")
        store_x = call("POST", "/v1/stores", {"name": "X Cafe", "rewardItem": "Tea"}, owner_x)[1]["id"]
        store_y = call("POST", "/v1/stores", {"name": "Y Cafe", "rewardItem": "Tea"}, owner_y)[1]["id"]

        # 1. Walk-in takeover.
        _, walk = call("POST", f"/v1/stores/{store_x}/customers", {"phone": "+49 170 555 0001", "name": "Walter"}, owner_x)
        walk_id, code_x = walk["customer"]["id"], walk["claim"]["code"]
        call("POST", f"/v1/stores/{store_x}/stamps", {"customerId": walk_id, "count": 9}, owner_x)
        found = call("GET", f"/v1/stores/{store_y}/customers?login=%2B491705550001", token=owner_y)
        plus = call("POST", f"/v1/stores/{store_y}/stamps", {"customerId": walk_id, "count": 1}, owner_y)
        code = call("POST", f"/v1/stores/{store_y}/customers/{walk_id}/claim-code", token=owner_y)
        say("1 walk-in takeover", f"Y's lookup by login finds {len(found[1]['customers'])}; Y stamps X's walk-in: {plus[0]}; "
            f"Y asks for its claim code: {code[0]}")
        own = call("POST", f"/v1/stores/{store_y}/customers", {"phone": "+49 170 555 0001"}, owner_y)[1]
        thief, _ = account("customer", "+491705550001", source="127.0.1.3")
        got = call("POST", "/v1/me/claims", {"code": own["claim"]["code"]}, thief)
        real = call("POST", "/v1/me/claims", {"code": code_x}, thief)
        say("1 walk-in takeover", f"Y's own code claims {got[1]['card']['stamps']} stamps at {got[1]['card']['storeName']}; "
            f"X's code still claims X's {real[1]['card']['stamps']} stamps (the number's holder gets them)")

        # 2. Phone squatting.
        started = time.monotonic()
        statuses = [call("POST", f"/v1/stores/{store_x}/customers", {"phone": f"+1 555 {2000000 + i}"}, owner_x)[0]
                    for i in range(250)]
        blocked = sum(1 for i in range(20) if call("POST", "/v1/accounts", {
            "role": "customer", "login": f"+1555{2000000 + i}", "password": "correct horse battery", "name": "Real"},
            source=f"127.0.2.{1 + i}")[0] != 201)
        say("2 phone squatting", f"250 walk-ins in {time.monotonic() - started:.2f} s: {statuses.count(201)} created, "
            f"{statuses.count(429)} refused 429; real owners of 20 of those numbers refused at sign-up: {blocked}")

        # 3. No directory; timing of known, unknown and held logins.
        def timed(login):
            started = time.monotonic()
            status = call("POST", "/v1/sessions", {"login": login, "password": "wrong password!"}, source="127.0.3.1")[0]
            return status, (time.monotonic() - started) * 1000
        known = [timed("owner-x@example.com") for _ in range(3)]
        unknown = [timed("nobody-here@example.com") for _ in range(3)]
        held = [timed("+15552000100") for _ in range(3)]
        say("3 sign-in timing", "known %.0f ms, unknown %.0f ms, a held walk-in's phone %.0f ms (median of 3)" % (
            sorted(t for _, t in known)[1], sorted(t for _, t in unknown)[1], sorted(t for _, t in held)[1]))

        # 4. Throttle race at the production cost.
        victim, _ = account("owner", "victim@example.com", source="127.0.4.1")
        results = []
        def guess(password):
            results.append(call("POST", "/v1/sessions", {"login": "victim@example.com", "password": password},
                                source="127.0.4.2")[0])
        threads = [threading.Thread(target=guess, args=("wrong guess %d" % i,)) for i in range(40)]
        threads.append(threading.Thread(target=guess, args=("correct horse battery",)))
        for t in threads: t.start()
        for t in threads: t.join()
        say("4 throttle race", f"41 concurrent sign-ins (40 wrong, 1 right) from one address: "
            f"{results.count(401)} verified wrong, {results.count(201)} right, {results.count(429)} refused before hashing")
        # 6. Lockout of anyone: the owner from another address.
        status = call("POST", "/v1/sessions", {"login": "victim@example.com", "password": "correct horse battery"},
                      source="127.0.4.3")[0]
        say("6 lockout", f"the owner signs in from their own address after the stranger's guesses: {status}")

        # 5. Hash-queue flood: 300 fire-and-forget sign-ins from 30 addresses, then an honest one.
        def fire(source, index):
            try:
                s = socket.create_connection(("127.0.0.1", PORT), source_address=(source, 0))
                body = json.dumps({"login": f"flood{index}@example.com", "password": "whatever it is"})
                s.sendall(f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
                s.close()
            except OSError:
                pass
        started = time.monotonic()
        for i in range(300):
            fire(f"127.0.5.{1 + i % 30}", i)
        sent = time.monotonic() - started
        started = time.monotonic()
        status = call("POST", "/v1/sessions", {"login": "owner-x@example.com", "password": "correct horse battery"},
                      source="127.0.6.1")[0]
        say("5 hash-queue flood", f"300 sign-ins sent and abandoned in {sent:.2f} s from 30 addresses; "
            f"an honest sign-in from another address right after: {status} in {time.monotonic() - started:.2f} s")
        # The same flood from clients that stay connected (they wait for their answers): from one
        # address, as in the review, and spread over 30.
        for spread in (1, 30):
            holders = []
            def hold(index):
                holders.append(call("POST", "/v1/sessions", {"login": f"held{index}@example.com", "password": "whatever it is"},
                                    source=f"127.0.{9 + spread}.{1 + index % spread}")[0])
            flood = [threading.Thread(target=hold, args=(i,)) for i in range(300)]
            for t in flood: t.start()
            time.sleep(0.2)
            started = time.monotonic()
            status = call("POST", "/v1/sessions", {"login": "owner-x@example.com", "password": "correct horse battery"},
                          source=f"127.0.6.{spread + 1}")[0]
            honest = time.monotonic() - started
            for t in flood: t.join()
            say("5 hash-queue flood", f"300 waiting sign-ins from {spread} address(es): {holders.count(401)} checked, "
                f"{holders.count(429)} refused 429, {holders.count(503)} shed 503; an honest sign-in meanwhile: "
                f"{status} in {honest:.2f} s")
            time.sleep(61)  # the per-address minute allowance starts again

        # 7. Look-alike logins and hostile text.
        nfc = call("POST", "/v1/accounts", {"role": "customer", "login": "jos\u00e9@example.com", "password": "correct horse battery",
                                            "name": "J"}, source="127.0.7.1")[0]
        nfd = call("POST", "/v1/accounts", {"role": "customer", "login": "jose\u0301@example.com", "password": "correct horse battery",
                                            "name": "J"}, source="127.0.7.1")[0]
        bidi = call("POST", "/v1/stores", {"name": "Cafe \u202eefac", "rewardItem": "Tea"}, owner_x)
        say("7 look-alikes", f"NFC sign-up {nfc}, NFD spelling {nfd}; a store name with U+202E: {bidi[0]} ({bidi[1].get('field')})")

        # 8. Unbounded work: one customer's request burst.
        customer, _ = account("customer", "burst@example.com", source="127.0.8.1")
        client = Client()
        started = time.monotonic()
        burst = [client.call("POST", f"/v1/stores/{store_x}/requests", {"kind": "stamp"}, customer)[0] for _ in range(300)]
        say("8 request burst", f"300 requests in {time.monotonic() - started:.2f} s: {burst.count(201)} created, "
            f"{burst.count(429)} refused 429")
        stranger, _ = account("customer", "stranger@example.com", source="127.0.8.2")
        pushed = call("POST", f"/v1/stores/{store_y}/stamps", {"customerId": "acc_x", "count": 1}, owner_y)[0]
        say("8 stamps onto a stranger", f"an owner stamps an account with no card at the store: {pushed}")

        # 9. Sessions: a parked poll after sign-out.
        poll_client = Client()
        cursor = poll_client.call("GET", "/v1/events?timeout=1", token=customer)[1]["cursor"]
        answer = {}
        def poll():
            started = time.monotonic()
            answer["status"] = Client().call("GET", f"/v1/events?after={cursor}&timeout=50", token=customer)[0]
            answer["seconds"] = time.monotonic() - started
        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)
        revoked_at = time.monotonic()
        call("DELETE", "/v1/sessions/current", token=customer)
        t.join()
        say("9 poll after sign-out", f"the parked poll answered {answer['status']} "
            f"{(time.monotonic() - revoked_at) * 1000:.0f} ms after the sign-out")

        # 11. /metrics on the public port.
        say("11 /metrics", f"on the API port: {call('GET', '/metrics')[0]}")
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
