#!/usr/bin/env bash
# Contract test: checks openapi.yaml with openapi-spec-validator, then runs schemathesis with it
# against a live stampd on a temporary database, once per bearer token (customer, owner, and a
# spare customer session that signs out). The set-up also checks against the document what no
# run reaches: the event a gift sends its receiver, and the claim of a walk-in account.
#
#   Tests/contract/run.sh [path/to/stampd]        (default: .build/debug/stampd)
#
# Environment: VENV (default <repo>/.venv, with schemathesis and openapi-spec-validator),
# MAX_EXAMPLES (30), SEED (1), RUN_TIMEOUT (seconds one schemathesis run may take, 150),
# KEEP=1 keeps the temporary folder (server log, JUnit reports) for a look afterwards.
#
# For CI: the last line is always `contract: N passed, M failed`, counting the schemathesis runs
# (a run that could not start, because the document is invalid or the set-up failed, counts as
# failed). The exit status is 0 only when every run passed; 1 otherwise (2 for a missing tool),
# 130 when interrupted. About 40 s on two cores.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
binary=${1:-$repo/.build/debug/stampd}
VENV=${VENV:-$repo/.venv}
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
SEED=${SEED:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-150}
spec=$repo/openapi.yaml
schemathesis=$VENV/bin/schemathesis
spec_validator=$VENV/bin/openapi-spec-validator
python=$VENV/bin/python

runs=(customer owner session)
passed=()
failed=()
work=""
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

# Always the last words: the count of runs, then the exit status (non-zero when any run failed
# or did not run).
finish() {
    local status=$?
    set +e
    stop_server
    if [[ -n $work ]]; then
        if [[ ${KEEP:-0} == 1 ]]; then echo "contract: kept $work"; else rm -rf "$work"; fi
    fi
    local not_run=$((${#runs[@]} - ${#passed[@]} - ${#failed[@]}))
    ((${#failed[@]})) && echo "contract: failed runs: ${failed[*]}"
    echo "contract: ${#passed[@]} passed, $((${#failed[@]} + not_run)) failed"
    if ((status == 0 && (${#failed[@]} + not_run) > 0)); then status=1; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

[[ -x $binary ]] || { echo "contract: no stampd binary at $binary (build it, or pass its path)" >&2; exit 2; }
[[ -x $schemathesis && -x $spec_validator ]] || {
    echo "contract: schemathesis or openapi-spec-validator not found in $VENV; run: python3 -m venv $VENV && $VENV/bin/pip install openapi-spec-validator schemathesis" >&2
    exit 2
}

# The document itself first: schemathesis accepts some documents that are not valid OpenAPI.
if ! "$spec_validator" "$spec"; then
    echo "contract: $spec is not a valid OpenAPI document" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/stampd-contract.XXXXXX")

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port

# Starts (or restarts, on the same database) the server and waits for /healthz.
start_server() {
    "$binary" --host 127.0.0.1 --port "$port" --database "$work/db.sqlite" --migrations "$repo/migrations" \
        --insecure-fast-password-hashing --log-level warning --hash-queue 1000 \
        --sign-ins-per-address 1000000 --sign-ups-per-address 1000000 --pending-requests-per-customer 1000000 --requests-per-customer-per-hour 1000000 >>"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        if curl -fsS --max-time 2 -o /dev/null "$base/healthz" 2>/dev/null; then return 0; fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "contract: stampd did not become healthy; its log:" >&2
    tail -n 40 "$work/server.log" >&2
    exit 1
}

# expect STATUS METHOD PATH [TOKEN] [JSON] — prints the body, fails unless the answer has that
# status (`2xx`: any success).
expect() {
    local want=$1 method=$2 path=$3 token=${4:-} body=${5:-}
    local args=(-sS --max-time 10 -X "$method" "$base$path" -w '\n%{http_code}')
    [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    local out status
    out=$(curl "${args[@]}")
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    # shellcheck disable=SC2053 # `2xx` is matched as the pattern `2??`
    if [[ $status != ${want/xx/??} ]]; then
        echo "contract: setup $method $path answered $status, not $want: $out" >&2
        exit 1
    fi
    printf '%s' "$out"
}

# call METHOD PATH [TOKEN] [JSON] — prints the body, fails on a non-2xx answer.
call() { expect 2xx "$@"; }

field() { "$python" -c 'import json, sys; v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[int(k)] if k.isdigit() else v[k]
print(v)' "$1"; }

# check SCHEMA [PATH=JSON-VALUE...] — fails unless the JSON on stdin matches that schema of the
# document (components/schemas) and has those values, e.g. `check Problem field='"login"'`.
check() { "$python" -c 'import json, sys, yaml, jsonschema
document, name = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
text = sys.stdin.read()
value = json.loads(text)
try:
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/" + name, "components": document["components"]}).validate(value)
except jsonschema.ValidationError as error:
    sys.exit("contract: setup: not a %s (%s): %s" % (name, error.message, text))
for expectation in sys.argv[3:]:
    path, _, wanted = expectation.partition("=")
    found = value
    for k in path.split("."): found = found[int(k)] if k.isdigit() else found.get(k) if isinstance(found, dict) else None
    if found != json.loads(wanted):
        sys.exit("contract: setup: %s is %s, not %s, in %s" % (path, json.dumps(found), wanted, text))' "$spec" "$@"; }

start_server

# Fixtures: an owner with a store, a customer with a card there (rewards, stamps, pending
# requests), so that the generated calls reach real resources and the long polls have events of
# every kind the fixtures can cause to answer with (and to check against the schema): the
# customer's feed holds request.approved and card.updated, the owner's request.created and
# request.approved.
owner_token=$(call POST /v1/accounts "" '{"role":"owner","login":"owner@contract.test","password":"owner-password","name":"Olive Owner"}' | field token)
customer_token=$(call POST /v1/accounts "" '{"role":"customer","login":"+82 10 0000 0001","password":"customer-password","name":"Cole Customer"}' | field token)
spare_token=$(call POST /v1/sessions "" '{"login":"+82 10 0000 0001","password":"customer-password"}' | field token)
store_id=$(call POST /v1/stores "$owner_token" '{"name":"Contract Cafe","rewardItem":"Americano","stampsPerReward":10,"menu":[{"name":"Latte","price":5000}]}' | field id)
reward_request=$(call POST "/v1/stores/$store_id/requests" "$customer_token" '{"kind":"stamp","count":10}' | field id)
call POST "/v1/requests/$reward_request/approve" "$owner_token" >/dev/null
# 7 stamps, then stampsPerReward 10 → 5: one more reward, 2 stamps left, and a card.updated event.
stamp_request=$(call POST "/v1/stores/$store_id/requests" "$customer_token" '{"kind":"stamp","count":7}' | field id)
call POST "/v1/requests/$stamp_request/approve" "$owner_token" >/dev/null
call PATCH "/v1/stores/$store_id" "$owner_token" '{"stampsPerReward":5}' >/dev/null
call GET "/v1/events?after=0&limit=1000&timeout=1" "$customer_token" | "$python" -c 'import json, sys
events = [e for e in json.load(sys.stdin)["events"] if e["type"] == "card.updated"]
data = events[-1]["data"] if events else None
card = (data or {}).get("card", {})
if not data or data.get("reason") != "stampsPerRewardLowered" or (card.get("stamps"), card.get("rewards"), card.get("stampsPerReward")) != (2, 2, 5):
    sys.exit("contract: setup expected a card.updated event (2 stamps, 2 rewards, stampsPerReward 5, reason stampsPerRewardLowered) in the customer feed, got: %s" % json.dumps(data))'
for count in 1 2 3 4 5; do
    call POST "/v1/stores/$store_id/requests" "$customer_token" "{\"kind\":\"stamp\",\"count\":$count}" >/dev/null
done
# Walk-ins, owner stamps and gifts: a second customer to give stamps to (its login goes to the
# customer's run through a dictionary: schemathesis cannot guess it), a walk-in customer with a
# card (its id, and the customer's, go to the owner's run for the stamps and claim-code calls;
# the stateful phase also chains its own walk-ins through the links). The owner's 2 stamps
# leave the customer's card with 4 (stampsPerReward 5), and the set-up's gift with 3, so that
# gifts of the customer's run can succeed; the customer's feed then holds card.updated events
# of reasons ownerStamped and giftSent as well.
receiver_login="+82 10 0000 0002"
receiver_token=$(call POST /v1/accounts "" "{\"role\":\"customer\",\"login\":\"$receiver_login\",\"password\":\"receiver-password\",\"name\":\"Rita Receiver\"}" | field token)
customer_id=$(call GET /v1/me "$customer_token" | field id)
walk_in_id=$(call POST "/v1/stores/$store_id/customers" "$owner_token" '{"phone":"+82 10 0000 0003","name":"Walter Walk-in"}' | field customer.id)
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$walk_in_id\",\"count\":1}" >/dev/null
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$customer_id\",\"count\":2}" >/dev/null
call POST "/v1/cards/$store_id/gifts" "$customer_token" '{"to":"+821000000002","count":1}' >/dev/null
call GET "/v1/events?after=0&limit=1000&timeout=1" "$receiver_token" | check EventBatch events.0.data.reason='"giftReceived"' \
    events.0.data.stamps=1 events.0.data.counterpart='"Cole Customer"' events.0.data.card.stamps=1
# Claiming a walk-in account, which the runs cannot do (the owner's run leaves POST /v1/accounts
# out, see below): no code 409, a wrong one 400, an owner 409, 5 wrong codes and even the right
# one is 429, a new code, then 201 with the walk-in's id and card.
claim_phone="+82 10 0000 0004"
claim=$(call POST "/v1/stores/$store_id/customers" "$owner_token" "{\"phone\":\" $claim_phone \"}")
printf '%s' "$claim" | check WalkInRegistration customer.walkIn=true customer.name='"Guest 0004"' customer.login="\"$claim_phone\""
claim_id=$(printf '%s' "$claim" | field customer.id)
claim_code=$(printf '%s' "$claim" | field claim.code)
wrong_code=$([[ $claim_code == 000000 ]] && echo 000001 || echo 000000)
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$claim_id\",\"count\":3}" | check OwnerStamping card.stamps=3
sign_up='{"role":"customer","login":"+82-10-0000-0004","password":"claimer-password","name":"Clara Claimer"'
expect 409 POST /v1/accounts "" "$sign_up}" | check Problem field='"claimCode"'
expect 409 POST /v1/accounts "" "${sign_up/customer/owner},\"claimCode\":\"$claim_code\"}" | check Problem field='"login"'
for _ in 1 2 3 4 5; do
    expect 422 POST /v1/accounts "" "$sign_up,\"claimCode\":\"$wrong_code\"}" | check Problem field='"claimCode"'
done
expect 429 POST /v1/accounts "" "$sign_up,\"claimCode\":\"$claim_code\"}" | check Problem
claim=$(call POST "/v1/stores/$store_id/customers/$claim_id/claim-code" "$owner_token")
printf '%s' "$claim" | check ClaimCode
claim_code=$(printf '%s' "$claim" | field code)
claimed=$(call POST /v1/accounts "" "$sign_up,\"claimCode\":\"$claim_code\"}")
printf '%s' "$claimed" | check SignedIn account.id="\"$claim_id\"" account.name='"Clara Claimer"'
call GET /v1/cards "$(printf '%s' "$claimed" | field token)" | check CardList cards.0.storeId="\"$store_id\"" cards.0.stamps=3
expect 409 POST "/v1/stores/$store_id/customers/$claim_id/claim-code" "$owner_token" | check Problem
call GET "/v1/stores/$store_id/customers?phoneEndsWith=00000004" "$owner_token" | check CustomerList customers.0.id="\"$claim_id\"" customers.0.walkIn=false
echo "contract: stampd at $base; store $store_id; work folder $work"

# Per-run settings. Opaque ids and cursors cannot be generated from a schema, so the store id
# and the page cursor are fixed to real ones (`bzow` is the first page); request ids come from
# the stateful phase's links. The long poll is kept short: the owner's run fixes `after=0`
# (answered at once, so `timeout` and `Prefer` are fuzzed freely, with more examples), the
# customer's run fixes `timeout=1` (so `after` and `Last-Event-ID` are fuzzed, and parked polls
# end within a second).
# A reused Idempotency-Key with another body is 422 by design (POST /v1/stores, POST
# /v1/stores/{storeId}/requests and POST /v1/cards/{storeId}/gifts); schemathesis draws the same
# short keys often, so 422 is an acceptable answer to a schema-valid request.
# Real customers for the calls that name one, half the time (the other half is generated): the
# receiver's login for gifts (also written otherwise than at sign-up: logins compare by digits),
# and the customer's and the walk-in's ids for owner stamps and claim codes.
# The customer lookup's unknown query parameters may hold any value but a NUL (400 anywhere in a
# target), which a schema cannot say of every JSON value: no NULs are drawn for it.
write_config() { # NAME EVENTS-PARAMETERS EVENTS-MAX-EXAMPLES
    cat >"$work/$1.toml" <<EOF
[parameters]
"path.storeId" = "$store_id"
"query.cursor" = "bzow"

[dictionaries.receivers]
values = ["+821000000002", "$receiver_login"]

[dictionaries.customers]
values = ["$customer_id", "$walk_in_id"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-operation-id = "pollEvents"
parameters = { $2 }
generation = { max-examples = $3 }

[[operations]]
include-operation-id = "giveStamps"
parameters = { "body.to" = { dictionary = "receivers", probability = 0.5 } }

[[operations]]
include-operation-id = "stampCustomer"
parameters = { "body.customerId" = { dictionary = "customers", probability = 0.5 } }

[[operations]]
include-operation-id = "issueClaimCode"
parameters = { "path.customerId" = { dictionary = "customers", probability = 0.5 } }

[[operations]]
include-operation-id = "findCustomers"
generation = { allow-x00 = false }
EOF
}
write_config owner '"query.after" = "0"' $((MAX_EXAMPLES * 5))
write_config customer '"query.timeout" = 1' "$MAX_EXAMPLES"
write_config session '"query.timeout" = 1' "$MAX_EXAMPLES"

# schemathesis's own entry point, with ast.parse serialised: on the CPython 3.11 of the venv, two
# threads building ASTs at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (the depth counter is shared by all threads; see CPython issue gh-106905).
# Hypothesis parses sources to describe its filters, so --workers 2 now and then made a
# spurious "Runtime Error" of a schemathesis run.
st_main='import ast, sys, threading
parse, lock = ast.parse, threading.Lock()
def serialised_parse(*args, **kwargs):
    with lock:
        return parse(*args, **kwargs)
ast.parse = serialised_parse
from schemathesis.cli import schemathesis
sys.argv[0] = "schemathesis"
sys.exit(schemathesis())'

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
    # schemathesis runs through $st_main (above), not its script.
    (cd "$work" && timeout --signal=INT --kill-after=10 "$RUN_TIMEOUT" "$python" -c "$st_main" --config-file "$work/$name.toml" run "$spec" \
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
    if ((status == 124)); then echo "contract: the $name run took longer than ${RUN_TIMEOUT}s" >&2; fi
    if ((status == 0)); then passed+=("$name"); else failed+=("$name"); fi
}

# The customer's run first: it creates requests that the owner's run then finds and decides.
# Signing out is tried on its own, with a spare token, so it cannot sign the other runs out.
# Sign-up (which needs no token) is left to the customer's run: the owner's run registers walk-in
# customers, and a generated sign-up that reuses one's phone number with a generated claimCode
# is rightly 400 (a wrong code), which schemathesis would take for a valid request rejected. The
# set-up checks the claim instead.
all_phases=examples,coverage,fuzzing,stateful
run_schemathesis customer "$customer_token" "$all_phases" --exclude-operation-id deleteSession
run_schemathesis owner "$owner_token" "$all_phases" --exclude-operation-id deleteSession --exclude-operation-id createAccount
run_schemathesis session "$spare_token" examples,coverage,fuzzing --include-operation-id deleteSession

echo
# finish (the EXIT trap) prints the count and sets the exit status.
