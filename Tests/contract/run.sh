#!/usr/bin/env bash
# Contract test: checks openapi.yaml with openapi-spec-validator, then runs schemathesis with it
# against a live stampd on a temporary database, once per bearer token (customer, owner, and two
# throwaway customers: one signs out, the other has its password checks tried). The set-up also
# checks against the document what no run reaches: the event a gift sends its receiver, cards a
# store holds for phone numbers and their claims (with the limits on wrong codes), member codes,
# and the session operations that would end the fixtures' sessions (password change, signing
# out everywhere, account deletion).
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
# 130 when interrupted. About 70 s on two cores.
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

runs=(customer owner session password)
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
    "$binary" --host 127.0.0.1 --port "$port" --database "${STAMPD_TEST_DATABASE:-$work/db.sqlite}" --migrations "$repo/migrations" \
        --insecure-fast-password-hashing --log-level warning --hash-queue 1000 --metrics-port 0 \
        --sign-ins-per-address 1000000 --sign-ups-per-address 1000000 --pending-requests-per-customer 1000000 --requests-per-customer-per-hour 1000000 --new-store-limits off >>"$work/server.log" 2>&1 &
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
# status (`2xx`: any success). The answer's headers are kept in $work/headers (see `header`).
expect() {
    local want=$1 method=$2 path=$3 token=${4:-} body=${5:-}
    local args=(-sS --max-time 10 -X "$method" "$base$path" -D "$work/headers" -w '\n%{http_code}')
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

# header NAME — fails unless the last answer of `expect` had that header (e.g. Retry-After).
header() {
    grep -qi "^$1: *[^ ]" "$work/headers" || { echo "contract: setup: the last answer had no $1 header" >&2; exit 1; }
}

field() { "$python" -c 'import json, sys; v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[int(k)] if k.isdigit() else v[k]
print(v)' "$1"; }

# check SCHEMA [PATH=JSON-VALUE...] — fails unless the JSON on stdin matches that schema of the
# document (components/schemas) and has those values, e.g. `check Problem field='"login"'`
# (`null` for a value that is absent, e.g. `customers.1=null`: at most one customer).
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
    for k in path.split("."):
        if isinstance(found, list) and k.isdigit(): found = found[int(k)] if int(k) < len(found) else None
        else: found = found.get(k) if isinstance(found, dict) else None
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
# Owner stamps and gifts: a second customer to give stamps to (its login goes to the customer's
# run through a dictionary: schemathesis cannot guess it), and a card the store holds for a phone
# number (its id, and the customer's, go to the owner's run for the stamps and claim-code calls;
# the stateful phase also chains its own walk-ins through the links). The customer has a card
# here from the approved requests, so the owner can stamp it: the owner's 2 stamps leave it with
# 4 (stampsPerReward 5), and the set-up's gift with 3, so that gifts of the customer's run can
# succeed; the customer's feed then holds card.updated events of reasons ownerStamped and
# giftSent as well.
receiver_login="+82 10 0000 0002"
receiver_token=$(call POST /v1/accounts "" "{\"role\":\"customer\",\"login\":\"$receiver_login\",\"password\":\"receiver-password\",\"name\":\"Rita Receiver\"}" | field token)
customer_id=$(call GET /v1/me "$customer_token" | field id)
walk_in=$(call POST "/v1/stores/$store_id/customers" "$owner_token" '{"phone":"+82 10 0000 0003","name":"Walter Walk-in"}')
printf '%s' "$walk_in" | check CustomerAdded customer.walkIn=true customer.name='"Walter Walk-in"'
walk_in_id=$(printf '%s' "$walk_in" | field customer.id)
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$walk_in_id\",\"count\":1}" | check OwnerStamping card.stamps=1
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$customer_id\",\"count\":2}" | check OwnerStamping card.stamps=4
call POST "/v1/cards/$store_id/gifts" "$customer_token" '{"to":"+821000000002","count":1}' | check Gift toName='"Rita Receiver"' card.stamps=3
call GET "/v1/events?after=0&limit=1000&timeout=1" "$receiver_token" | check EventBatch events.0.data.reason='"giftReceived"' \
    events.0.data.stamps=1 events.0.data.counterpart='"Cole Customer"' events.0.data.card.stamps=1
# A held card is nobody's login: a gift to its number finds no one (and counts as a gift).
expect 404 POST "/v1/cards/$store_id/gifts" "$customer_token" '{"to":"+82 10 0000 0003","count":1}' | check Problem field='"to"'
call GET "/v1/stores/$store_id/customers?login=%2B82%2010-0000-0003" "$owner_token" | check CustomerList \
    customers.0.id="\"$walk_in_id\"" customers.0.walkIn=true customers.1=null

# Cards a store holds for a phone number, and their claims, which the runs cannot do (they cannot
# know a code). Phone A: a held card with 3 stamps; its number signs up freely (no code needed);
# 5 wrong codes void the code (the right one is then wrong too), a new code works, and the held
# card joins the claimer's own card.
claim_phone="+82 10 0000 0004"
held=$(call POST "/v1/stores/$store_id/customers" "$owner_token" "{\"phone\":\" $claim_phone \"}")
printf '%s' "$held" | check CustomerAdded customer.walkIn=true customer.name='"Guest 0004"' customer.login="\"$claim_phone\""
held_id=$(printf '%s' "$held" | field customer.id)
claim_code=$(printf '%s' "$held" | field claim.code)
wrong_code=$([[ $claim_code == 000000 ]] && echo 000001 || echo 000000)
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$held_id\",\"count\":3}" | check OwnerStamping card.stamps=3
expect 409 POST "/v1/stores/$store_id/customers" "$owner_token" '{"phone":"+82-10-0000-0004"}' | check Problem field='"phone"'
claimer=$(call POST /v1/accounts "" '{"role":"customer","login":"+82-10-0000-0004","password":"claimer-password","name":"Clara Claimer"}')
printf '%s' "$claimer" | check SignedIn account.login='"+82-10-0000-0004"'
claimer_token=$(printf '%s' "$claimer" | field token)
claimer_id=$(printf '%s' "$claimer" | field account.id)
call GET "/v1/stores/$store_id/customers?phoneEndsWith=00000004" "$owner_token" | check CustomerList \
    customers.0.id="\"$held_id\"" customers.0.walkIn=true customers.1=null
expect 400 POST /v1/me/claims "$claimer_token" '{"code":"12345"}' | check Problem field='"code"'
expect 403 POST /v1/me/claims "$owner_token" "{\"code\":\"$claim_code\"}" | check Problem
for _ in 1 2 3 4 5; do
    expect 422 POST /v1/me/claims "$claimer_token" "{\"code\":\"$wrong_code\"}" | check Problem field='"code"'
done
expect 422 POST /v1/me/claims "$claimer_token" "{\"code\":\"$claim_code\"}" | check Problem field='"code"'
claim_code=$(call POST "/v1/stores/$store_id/customers/$held_id/claim-code" "$owner_token" | tee "$work/claim" | field code)
check ClaimCode <"$work/claim"
call POST /v1/me/claims "$claimer_token" "{\"code\":\"${claim_code:0:3}-${claim_code:3}\"}" | check Claimed \
    card.storeId="\"$store_id\"" card.customerId="\"$claimer_id\"" card.stamps=3 card.rewards=0
expect 422 POST /v1/me/claims "$claimer_token" "{\"code\":\"$claim_code\"}" | check Problem field='"code"'
expect 404 POST "/v1/stores/$store_id/customers/$held_id/claim-code" "$owner_token" | check Problem
expect 409 POST "/v1/stores/$store_id/customers/$customer_id/claim-code" "$owner_token" | check Problem
call GET "/v1/stores/$store_id/customers?phoneEndsWith=00000004" "$owner_token" | check CustomerList \
    customers.0.id="\"$claimer_id\"" customers.0.walkIn=false customers.1=null
call GET "/v1/events?after=0&limit=1000&timeout=1" "$claimer_token" | check EventBatch events.0.type='"card.updated"' \
    events.0.data.reason='"claimed"' events.0.data.stamps=3 events.0.data.card.stamps=3 events.1=null
call GET "/v1/cards/$store_id/ledger" "$claimer_token" | check LedgerList entries.0.kind='"manual_stamp"' entries.0.stampsDelta=3 entries.1=null
# Phone B: the phone's 10 wrong codes a day hold across codes: 4 wrong on a first code, 4 on a
# second (each new code starts its own tries again), 2 on a third, and then even the third's
# right code, still live, is 429.
limit_phone="+82 10 0000 0005"
limit_code=$(call POST "/v1/stores/$store_id/customers" "$owner_token" "{\"phone\":\"$limit_phone\"}" | field claim.code)
limit_id=$(call GET "/v1/stores/$store_id/customers?phoneEndsWith=00000005" "$owner_token" | field customers.0.id)
limit_token=$(call POST /v1/accounts "" "{\"role\":\"customer\",\"login\":\"$limit_phone\",\"password\":\"limited-password\",\"name\":\"Lou Limit\"}" | field token)
for tries in 4 4 2; do
    wrong_code=$([[ $limit_code == 000000 ]] && echo 000001 || echo 000000)
    for _ in $(seq 1 "$tries"); do
        expect 422 POST /v1/me/claims "$limit_token" "{\"code\":\"$wrong_code\"}" | check Problem field='"code"'
    done
    limit_code=$(call POST "/v1/stores/$store_id/customers/$limit_id/claim-code" "$owner_token" | field code)
done
expect 429 POST /v1/me/claims "$limit_token" "{\"code\":\"$limit_code\"}" | check Problem
header Retry-After
# Phone C: claimed at sign-up. A claim code only for a customer with a phone login (400), a
# wrong one is 422 and creates nothing, the right one gives the new account the held card.
sign_up_phone="+82 10 0000 0006"
sign_up_code=$(call POST "/v1/stores/$store_id/customers" "$owner_token" "{\"phone\":\"$sign_up_phone\",\"name\":\"Cora Counter\"}" | field claim.code)
sign_up_id=$(call GET "/v1/stores/$store_id/customers?phoneEndsWith=00000006" "$owner_token" | field customers.0.id)
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$sign_up_id\",\"count\":2}" >/dev/null
wrong_code=$([[ $sign_up_code == 000000 ]] && echo 000001 || echo 000000)
sign_up='{"role":"customer","login":"(+82) 10-0000-0006","password":"cora-password","name":"Cora Claimer"'
expect 400 POST /v1/accounts "" "${sign_up/customer/owner},\"claimCode\":\"$sign_up_code\"}" | check Problem field='"claimCode"'
expect 400 POST /v1/accounts "" "${sign_up/(+82) 10-0000-0006/cora@contract.test},\"claimCode\":\"$sign_up_code\"}" | check Problem field='"claimCode"'
expect 400 POST /v1/accounts "" "$sign_up,\"claimCode\":\"12345\"}" | check Problem field='"claimCode"'
expect 422 POST /v1/accounts "" "$sign_up,\"claimCode\":\"$wrong_code\"}" | check Problem field='"claimCode"'
expect 401 POST /v1/sessions "" '{"login":"+821000000006","password":"cora-password"}' | check Problem
signed_up=$(call POST /v1/accounts "" "$sign_up,\"claimCode\":\"$sign_up_code\"}")
printf '%s' "$signed_up" | check SignedIn account.name='"Cora Claimer"' account.login='"(+82) 10-0000-0006"'
sign_up_token=$(printf '%s' "$signed_up" | field token)
call GET /v1/cards "$sign_up_token" | check CardList cards.0.storeId="\"$store_id\"" cards.0.stamps=2 cards.1=null
call GET "/v1/events?after=0&limit=1000&timeout=1" "$sign_up_token" | check EventBatch events.0.data.reason='"claimed"' events.0.data.stamps=2

# Member codes: an app user without a card here cannot be stamped (404) until the owner enters
# the code the user's phone shows; a new code voids the previous one.
member=$(call POST /v1/accounts "" '{"role":"customer","login":"+82 10 0000 0007","password":"member-password","name":"Mia Member"}')
member_token=$(printf '%s' "$member" | field token)
member_id=$(printf '%s' "$member" | field account.id)
expect 404 POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$member_id\",\"count\":1}" | check Problem field='"customerId"'
expect 403 POST /v1/me/member-code "$owner_token" | check Problem
member_code=$(call POST /v1/me/member-code "$member_token" '{}' | tee "$work/member" | field code)
check MemberCode <"$work/member"
wrong_member=$([[ $member_code == 00000000 ]] && echo 00000001 || echo 00000000)
expect 422 POST "/v1/stores/$store_id/customers" "$owner_token" "{\"memberCode\":\"$wrong_member\"}" | check Problem field='"memberCode"'
expect 400 POST "/v1/stores/$store_id/customers" "$owner_token" "{\"memberCode\":\"$member_code\",\"name\":null}" | check Problem field='"name"'
call POST "/v1/stores/$store_id/customers" "$owner_token" "{\"memberCode\":\"${member_code:0:4} ${member_code:4}\"}" | check CustomerAdded \
    customer.id="\"$member_id\"" customer.walkIn=false customer.name='"Mia Member"' claim=null
call POST "/v1/stores/$store_id/stamps" "$owner_token" "{\"customerId\":\"$member_id\",\"count\":2}" | check OwnerStamping \
    card.customerId="\"$member_id\"" card.stamps=2
call GET "/v1/events?after=0&limit=1000&timeout=1" "$member_token" | check EventBatch events.0.data.reason='"added"' \
    events.0.data.card.stamps=0 events.1.data.reason='"ownerStamped"' events.1.data.stamps=2
call POST /v1/me/member-code "$member_token" >/dev/null
expect 422 POST "/v1/stores/$store_id/customers" "$owner_token" "{\"memberCode\":\"$member_code\"}" | check Problem field='"memberCode"'
call GET "/v1/stores/$store_id/customers?name=mia%20mem" "$owner_token" | check CustomerList customers.0.id="\"$member_id\"" customers.1=null

# The session operations that the runs must not try with the fixtures' tokens. A throwaway
# customer (an e-mail login, so claims are 409 for it): a password change ends the other
# sessions only; signing out everywhere ends every session and answers a parked poll 401 at once.
tess='{"login":"tess@contract.test","password":"tess-password-1"}'
tess_token=$(call POST /v1/accounts "" '{"role":"customer","login":"tess@contract.test","password":"tess-password-1","name":"Tess Throwaway"}' | field token)
tess_other=$(call POST /v1/sessions "" "$tess" | field token)
expect 409 POST /v1/me/claims "$tess_token" '{"code":"123456"}' | check Problem field='"code"'
expect 403 POST /v1/me/password "$tess_token" '{"currentPassword":"not-the-password","newPassword":"tess-password-2"}' | check Problem field='"currentPassword"'
expect 400 POST /v1/me/password "$tess_token" '{"currentPassword":"tess-password-1","newPassword":"         "}' | check Problem field='"newPassword"'
expect 204 POST /v1/me/password "$tess_token" '{"currentPassword":"tess-password-1","newPassword":"tess-password-2"}' >/dev/null
expect 401 GET /v1/me "$tess_other" | check Problem
call GET /v1/me "$tess_token" | check Account login='"tess@contract.test"'
expect 401 POST /v1/sessions "" "$tess" | check Problem
tess='{"login":"TESS@contract.test","password":"tess-password-2"}'
tess_polling=$(call POST /v1/sessions "" "$tess" | field token)
curl -sS --max-time 20 -o "$work/poll" -w '%{http_code}' -H "Authorization: Bearer $tess_polling" "$base/v1/events?timeout=15" >"$work/poll-status" &
poll_pid=$!
sleep 0.5
poll_started=$SECONDS
expect 204 DELETE /v1/sessions "$tess_token" >/dev/null
wait "$poll_pid" || true
if [[ $(cat "$work/poll-status") != 401 ]] || ((SECONDS - poll_started > 5)); then
    echo "contract: setup: a parked poll answered $(cat "$work/poll-status") after $((SECONDS - poll_started)) s when its session was revoked, not 401 at once" >&2
    exit 1
fi
check Problem <"$work/poll"
expect 401 GET /v1/me "$tess_token" | check Problem
expect 401 GET /v1/me "$tess_polling" | check Problem
session_token=$(call POST /v1/sessions "" "$tess" | field token)
password_token=$(call POST /v1/accounts "" '{"role":"customer","login":"pat@contract.test","password":"pat-password","name":"Pat Password"}' | field token)
# Another throwaway customer deletes the account: wrong password 403, then 204; the login is
# free, the pending request cancelled, and the store still sees the card as Deleted customer.
dora='{"role":"customer","login":"dora@contract.test","password":"dora-password","name":"Dora Deleted"}'
dora_token=$(call POST /v1/accounts "" "$dora" | field token)
dora_id=$(call GET /v1/me "$dora_token" | field id)
dora_request=$(call POST "/v1/stores/$store_id/requests" "$dora_token" '{"kind":"stamp"}' | field id)
call POST "/v1/requests/$dora_request/approve" "$owner_token" >/dev/null
dora_request=$(call POST "/v1/stores/$store_id/requests" "$dora_token" '{"kind":"stamp","count":2}' | field id)
expect 403 DELETE /v1/me "$dora_token" '{"password":"not-the-password"}' | check Problem field='"password"'
expect 204 DELETE /v1/me "$dora_token" '{"password":"dora-password"}' >/dev/null
expect 401 GET /v1/me "$dora_token" | check Problem
expect 401 POST /v1/sessions "" '{"login":"dora@contract.test","password":"dora-password"}' | check Problem
call GET "/v1/requests/$dora_request" "$owner_token" | check StampRequest status='"cancelled"' customerName='"Deleted customer"'
call GET "/v1/stores/$store_id/customers?name=deleted" "$owner_token" | check CustomerList customers.0.id="\"$dora_id\"" \
    customers.0.name='"Deleted customer"' customers.0.login="\"deleted:$dora_id\""
call POST /v1/accounts "" "$dora" | check SignedIn account.login='"dora@contract.test"'
expect 409 DELETE /v1/me "$owner_token" '{"password":"owner-password"}' | check Problem
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
# and the ids of the customer, the held card and the member for owner stamps and claim codes.
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
values = ["$customer_id", "$walk_in_id", "$member_id"]

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
write_config password '"query.timeout" = 1' "$MAX_EXAMPLES"

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
# The session operations are left out of both, since they would end the fixtures' sessions
# (signing out, here or everywhere) or lock their password checks (wrong passwords for a
# password change or a deletion). They run on their own, with throwaway customers' tokens: the
# sign-outs in one run (the first 204 signs it out: the rest is 401), the password checks in
# another (wrong passwords: 403, then 429 once that login is locked from this address).
# Sign-up (which needs no token) is left to the customer's run, to keep the owner's run short.
all_phases=examples,coverage,fuzzing,stateful
sign_outs=(deleteSession signOutEverywhere)
password_checks=(changePassword deleteAccount)
not_shared=("${sign_outs[@]/#/--exclude-operation-id=}" "${password_checks[@]/#/--exclude-operation-id=}")
run_schemathesis customer "$customer_token" "$all_phases" "${not_shared[@]}"
run_schemathesis owner "$owner_token" "$all_phases" "${not_shared[@]}" --exclude-operation-id createAccount
run_schemathesis session "$session_token" examples,coverage,fuzzing "${sign_outs[@]/#/--include-operation-id=}"
run_schemathesis password "$password_token" examples,coverage,fuzzing "${password_checks[@]/#/--include-operation-id=}"

echo
# finish (the EXIT trap) prints the count and sets the exit status.
