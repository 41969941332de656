#!/usr/bin/env bash
# Browser end-to-end tests: starts stampd on a free loopback port with a throwaway database,
# runs the pytest + selenium suite against it, stops the server, and exits with pytest's status.
#
#   Tests/browser/run.sh [path/to/stampd]      (default: .build/debug/stampd in the repository)
#
# Needs chromium and chromium-driver (apt-get install -y chromium chromium-driver) and a venv
# with selenium and pytest at .venv (python3 -m venv .venv && .venv/bin/pip install selenium pytest);
# PYTHON overrides the interpreter. STAMPD_WEB_DIR, if set, is passed on to the server so that it
# serves the pages from that folder (e.g. Sources/StampHTTP/Web, to test edits without a rebuild).
# Extra pytest arguments go in PYTEST_ARGS. Screenshots land in artifacts/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
binary="${1:-$repo/.build/debug/stampd}"
python="${PYTHON:-$repo/.venv/bin/python}"

if [[ ! -x "$binary" ]]; then
  echo "run.sh: no server binary at $binary (swift build, or pass its path)" >&2
  exit 2
fi
if [[ ! -x "$python" ]]; then
  echo "run.sh: no Python at $python (python3 -m venv .venv && .venv/bin/pip install selenium pytest)" >&2
  exit 2
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/stampd-browser.XXXXXX")"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port: bind port 0, read what the kernel chose, let it go.
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
metrics_port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

if [[ -n "${STAMPD_WEB_DIR:-}" ]]; then
  export STAMPD_WEB_DIR
  echo "run.sh: pages served from $STAMPD_WEB_DIR"
fi
"$binary" --host 127.0.0.1 --port "$port" --database "${STAMPD_TEST_DATABASE:-$workdir/db.sqlite}" \
  --migrations "$repo/migrations" --insecure-fast-password-hashing --metrics-port "$metrics_port" \
  --sign-ins-per-address 1000000 --sign-ins-at-once-per-address 100000 --sign-ups-per-address 1000000 --pending-requests-per-customer 1000000 --requests-per-customer-per-hour 1000000 --new-store-limits off >"$workdir/server.log" 2>&1 &
server_pid=$!

# Wait (up to 30 s) for /healthz, or for the server to die.
if ! "$python" - "$base/healthz" "$server_pid" <<'EOF'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited")
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("the server did not answer /healthz in 30 s")
EOF
then
  echo "run.sh: server log:" >&2
  cat "$workdir/server.log" >&2
  exit 1
fi
echo "run.sh: stampd is up at $base"

mkdir -p "$repo/artifacts"
set +e
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words
# STAMPD_BINARY lets a test run a server of its own (one it stops and starts again: the outage test).
STAMPD_BASE_URL="$base" STAMPD_METRICS_URL="http://127.0.0.1:$metrics_port" STAMPD_ARTIFACTS="$repo/artifacts" \
  STAMPD_BINARY="$binary" STAMPD_MIGRATIONS="$repo/migrations" \
  "$python" -m pytest -p no:cacheprovider -v "$repo/Tests/browser" ${PYTEST_ARGS:-}
status=$?
set -e
if [[ $status -ne 0 ]]; then
  echo "run.sh: last lines of the server log:" >&2
  tail -n 40 "$workdir/server.log" >&2
fi
exit $status
