"""Checks of two stampd instances behind nginx (run by Tests/instances/run.sh).

usage: check.py PROXY_URL A_URL A_METRICS_URL B_URL B_METRICS_URL
"""
import json
import sys
import threading
import time
import urllib.request
import uuid

PROXY, A, A_METRICS, B, B_METRICS = sys.argv[1:6]
failures = []


def call(base, method, path, token=None, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def parked(metrics):
    """The instance's parked-poll gauge."""
    with urllib.request.urlopen(metrics + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("stampd_parked_polls"):
                return float(line.split()[-1])
    return 0.0


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def check(ok, what, detail=""):
    print(("  ok   " if ok else "  FAIL ") + what + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        failures.append(what)


def account(role):
    status, answer = call(PROXY, "POST", "/v1/accounts", body={
        "role": role, "login": f"{role}-{uuid.uuid4().hex[:8]}", "password": "correct horse", "name": role.title()})
    assert status == 201, (status, answer)
    return answer["token"]


owner, customer = account("owner"), account("customer")
status, store = call(PROXY, "POST", "/v1/stores", owner, {"name": "Two Doors", "rewardItem": "Latte"})
assert status == 201, store
_, start = call(PROXY, "GET", "/v1/events?timeout=0", owner)
cursor = start["cursor"]

# A poll longer than the 15 s nginx gives other routes: the events location must wait for it.
began = time.monotonic()
status, answer = call(PROXY, "GET", f"/v1/events?timeout=17&after={cursor}", owner, timeout=40)
took = time.monotonic() - began
check(status == 200 and answer.get("events") == [] and 16 <= took < 25,
      "a 17 s poll comes back through nginx with its own empty answer", f"{status} after {took:.1f} s: {answer}")

# Polls parked directly on A and on B; one request through nginx (either instance) wakes both.
results = {}


def park(name, base):
    began = time.monotonic()
    results[name] = call(base, "GET", f"/v1/events?timeout=20&after={cursor}", owner) + (time.monotonic() - began,)


threads = [threading.Thread(target=park, args=(name, base)) for name, base in (("A", A), ("B", B))]
for thread in threads:
    thread.start()
check(wait_until(lambda: parked(A_METRICS) >= 1 and parked(B_METRICS) >= 1, 10), "a poll is parked on each instance")
status, request = call(PROXY, "POST", f"/v1/stores/{store['id']}/requests", customer, {"kind": "stamp"})
check(status == 201, "a stamp request through nginx", f"{status} {request}")
for thread in threads:
    thread.join(30)
for name in ("A", "B"):
    status, answer, took = results.get(name, (0, {}, 0))
    events = answer.get("events", [])
    check(status == 200 and len(events) == 1 and events[0]["type"] == "request.created" and took < 5,
          f"the poll parked on {name} hears it", f"{status} after {took:.1f} s: {answer}")

print(f"instances: {len(failures)} failed" if failures else "instances: all passed")
sys.exit(1 if failures else 0)
