#!/usr/bin/env bash
# Contract test: runs schemathesis with openapi.yaml against a live stampd on a temporary database.
#
#   Tests/contract/run.sh [path/to/stampd]        (default: .build/debug/stampd)
#
# Environment: VENV (default <repo>/.venv, with schemathesis installed), MAX_EXAMPLES (30),
# SEED (1), KEEP=1 keeps the temporary folder (server log, reports) for a look afterwards.
# Exits non-zero when any schemathesis run fails or the server dies.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
binary=${1:-$repo/.build/debug/stampd}
VENV=${VENV:-$repo/.venv}
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
SEED=${SEED:-1}
spec=$repo/openapi.yaml
schemathesis=$VENV/bin/schemathesis
python=$VENV/bin/python

[[ -x $binary ]] || { echo "contract: no stampd binary at $binary (build it, or pass its path)" >&2; exit 2; }
[[ -x $schemathesis ]] || {
    echo "contract: schemathesis not found in $VENV; run: python3 -m venv $VENV && $VENV/bin/pip install openapi-spec-validator schemathesis" >&2
    exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/stampd-contract.XXXXXX")
server_pid=""

stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    [[ -n $server_pid ]] && wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

cleanup() {
    stop_server
    if [[ ${KEEP:-0} == 1 ]]; then echo "contract: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port

# Starts (or restarts, on the same database) the server and waits for /healthz.
start_server() {
    "$binary" --host 127.0.0.1 --port "$port" --database "$work/db.sqlite" --migrations "$repo/migrations" \
        --insecure-fast-password-hashing --log-level warning >>"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "$base/healthz" 2>/dev/null; then return 0; fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "contract: stampd did not become healthy; its log:" >&2
    tail -n 40 "$work/server.log" >&2
    exit 1
}

# call METHOD PATH [TOKEN] [JSON] — prints the body, fails on a non-2xx answer.
call() {
    local method=$1 path=$2 token=${3:-} body=${4:-}
    local args=(-sS -X "$method" "$base$path" -w '\n%{http_code}')
    [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    local out status
    out=$(curl "${args[@]}")
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    if [[ $status != 2* ]]; then
        echo "contract: setup $method $path answered $status: $out" >&2
        exit 1
    fi
    printf '%s' "$out"
}

field() { "$python" -c 'import json, sys; v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[int(k)] if k.isdigit() else v[k]
print(v)' "$1"; }

start_server

# Fixtures: an owner with a store, a customer with a card there (one reward, pending requests),
# so that the generated calls reach real resources and the long polls have events to answer with.
owner_token=$(call POST /v1/accounts "" '{"role":"owner","login":"owner@contract.test","password":"owner-password","name":"Olive Owner"}' | field token)
customer_token=$(call POST /v1/accounts "" '{"role":"customer","login":"+82 10 0000 0001","password":"customer-password","name":"Cole Customer"}' | field token)
spare_token=$(call POST /v1/sessions "" '{"login":"+82 10 0000 0001","password":"customer-password"}' | field token)
store_id=$(call POST /v1/stores "$owner_token" '{"name":"Contract Cafe","rewardItem":"Americano","stampsPerReward":10,"menu":[{"name":"Latte","price":5000}]}' | field id)
reward_request=$(call POST "/v1/stores/$store_id/requests" "$customer_token" '{"kind":"stamp","count":10}' | field id)
call POST "/v1/requests/$reward_request/approve" "$owner_token" >/dev/null
for count in 1 2 3 4 5; do
    call POST "/v1/stores/$store_id/requests" "$customer_token" "{\"kind\":\"stamp\",\"count\":$count}" >/dev/null
done
echo "contract: stampd at $base; store $store_id; work folder $work"

# Per-run settings. Opaque ids and cursors cannot be generated from a schema, so the store id
# and the page cursor are fixed to real ones (`bzow` is the first page); request ids come from
# the stateful phase's links. The long poll is kept short: the owner's run fixes `after=0`
# (answered at once, so `timeout` and `Prefer` are fuzzed freely, with more examples), the
# customer's run fixes `timeout=1` (so `after` and `Last-Event-ID` are fuzzed, and parked polls
# end within a second).
# A reused Idempotency-Key with another body is 422 by design; schemathesis draws the same short
# keys often, so 422 is an acceptable answer to a schema-valid request.
write_config() { # NAME EVENTS-PARAMETERS EVENTS-MAX-EXAMPLES
    cat >"$work/$1.toml" <<EOF
[parameters]
"path.storeId" = "$store_id"
"query.cursor" = "bzow"

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-operation-id = "pollEvents"
parameters = { $2 }
generation = { max-examples = $3 }
EOF
}
write_config owner '"query.after" = "0"' $((MAX_EXAMPLES * 5))
write_config customer '"query.timeout" = 1' "$MAX_EXAMPLES"
write_config session '"query.timeout" = 1' "$MAX_EXAMPLES"

failed=()
run_schemathesis() { # NAME TOKEN PHASES [extra schemathesis arguments...]
    local name=$1 token=$2 phases=$3
    shift 3
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "contract: stampd had exited; restarting it on the same database" >&2
        start_server
    fi
    echo
    echo "=== contract: schemathesis as $name ==="
    local status=0
    # use_after_free is off: DELETE /v1/requests/{id} cancels, and the request stays readable
    # (cancelled) by design, which that check takes for a deleted resource still served.
    (cd "$work" && "$schemathesis" --config-file "$work/$name.toml" run "$spec" \
        --url "$base" --checks all --exclude-checks use_after_free --phases "$phases" \
        --max-examples "$MAX_EXAMPLES" --seed "$SEED" --request-timeout 10 --workers 2 \
        --generation-database none --output-sanitize false \
        --report junit --report-dir "$work/reports/$name" \
        -H "Authorization: Bearer $token" "$@") || status=$?
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "contract: stampd died during the $name run; the end of its log:" >&2
        grep -m1 -A3 'Fatal error' "$work/server.log" >&2 || tail -n 30 "$work/server.log" >&2
        status=1
    fi
    if [[ $status != 0 ]]; then failed+=("$name"); fi
}

# The customer's run first: it creates requests that the owner's run then finds and decides.
# Signing out is tried on its own, with a spare token, so it cannot sign the other runs out.
all_phases=examples,coverage,fuzzing,stateful
run_schemathesis customer "$customer_token" "$all_phases" --exclude-operation-id deleteSession
run_schemathesis owner "$owner_token" "$all_phases" --exclude-operation-id deleteSession
run_schemathesis session "$spare_token" examples,coverage,fuzzing --include-operation-id deleteSession

echo
if ((${#failed[@]})); then
    echo "contract: FAILED: ${failed[*]}"
    exit 1
fi
echo "contract: all schemathesis runs passed"
