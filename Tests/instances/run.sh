#!/usr/bin/env bash
# Two stampd instances on one PostgreSQL behind nginx, as docker/compose.replicas.yaml runs
# them, on loopback with Debian's nginx and docker/nginx.conf itself (only the addresses are
# changed): the browser tests run through nginx (requests spread over both instances, so a
# page's poll parked on one is woken by a write on the other), then a poll longer than nginx's
# default read timeout must come back through it, and a write through nginx must wake a poll
# parked directly on each instance.
#
#   STAMPD_TEST_DATABASE=postgres://…/empty_db Tests/instances/run.sh [path/to/stampd]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
binary="${1:-$repo/.build/debug/stampd}"
python="${PYTHON:-$repo/.venv/bin/python}"
database="${STAMPD_TEST_DATABASE:?set STAMPD_TEST_DATABASE to the URL of an empty PostgreSQL database}"
command -v nginx >/dev/null || { echo "instances: nginx is not installed (apt-get install nginx-light)" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/stampd-instances.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "instances: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_healthy() { # wait_healthy URL PID LOG
  for _ in $(seq 1 300); do
    curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "instances: $1 did not become healthy; log:" >&2
  tail -n 40 "$3" >&2
  exit 1
}

ports=()
metrics_ports=()
for name in a b; do
  port=$(free_port); metrics=$(free_port)
  "$binary" --host 127.0.0.1 --port "$port" --metrics-port "$metrics" --database "$database" \
    --migrations "$repo/migrations" --trusted-proxies 127.0.0.1 --insecure-fast-password-hashing \
    --sign-ins-per-address 1000000 --sign-ins-at-once-per-address 100000 --sign-ups-per-address 1000000 \
    --pending-requests-per-customer 1000000 --requests-per-customer-per-hour 1000000 --new-store-limits off >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_healthy "http://127.0.0.1:$port/readyz" "$!" "$work/$name.log"
  ports+=("$port")
  metrics_ports+=("$metrics")
done
echo "instances: stampd A on ${ports[0]}, B on ${ports[1]}"

proxy=$(free_port)
sed -e "s|server stampd-1:8080|server 127.0.0.1:${ports[0]}|" -e "s|server stampd-2:8080|server 127.0.0.1:${ports[1]}|" \
    -e "s|listen 80;|listen 127.0.0.1:$proxy;|" "$repo/docker/nginx.conf" >"$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" -g "daemon off; pid $work/nginx.pid;" >"$work/nginx.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$proxy/healthz" "$!" "$work/nginx-error.log"
echo "instances: nginx on $proxy in front of both"

status=0
mkdir -p "$repo/artifacts"
echo "== the browser tests through nginx"
STAMPD_BASE_URL="http://127.0.0.1:$proxy" STAMPD_METRICS_URL="http://127.0.0.1:${metrics_ports[0]},http://127.0.0.1:${metrics_ports[1]}" STAMPD_ARTIFACTS="$repo/artifacts" \
  "$python" -m pytest -p no:cacheprovider -q "$repo/Tests/browser" || status=1

echo "== long polls through nginx, and writes heard by both instances"
"$python" "$repo/Tests/instances/check.py" "http://127.0.0.1:$proxy" \
  "http://127.0.0.1:${ports[0]}" "http://127.0.0.1:${metrics_ports[0]}" \
  "http://127.0.0.1:${ports[1]}" "http://127.0.0.1:${metrics_ports[1]}" || status=1

if [[ $status != 0 ]]; then
  for log in a.log b.log nginx-error.log; do echo "--- $log" >&2; tail -n 20 "$work/$log" >&2; done
fi
exit $status
