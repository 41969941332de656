#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md against a fresh stampd on SQLite and nginx + nchan, then
# the latency and full-flow phases against a second stampd on a throwaway PostgreSQL (the first
# stampd stopped by then), then the same against two stampd instances on that PostgreSQL and their
# parked-poll capacity, and prints the table of both engines and the table of one against two.
#
#   scripts/bench/run.sh            full run (about 9 minutes after the release build)
#   scripts/bench/run.sh --smoke    tiny sizes, for CI: fails on any error, asserts no timing
#   scripts/bench/run.sh [--smoke] -- --flow-pairs 128 ...   extra flags for both `stampd-bench run`s
#   BENCH_BIN=DIR scripts/bench/run.sh --smoke   use stampd and stampd-bench from DIR, no build
#   BENCH_POSTGRES=0 scripts/bench/run.sh        leave the PostgreSQL runs out
#   BENCH_TWO_INSTANCES=0 scripts/bench/run.sh   leave out the run of two instances on PostgreSQL
#
# Results and logs are kept in .build-bench/bench-results/<time>/ (results.tsv, table.md, logs).
set -euo pipefail

MODE=full
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) MODE=smoke; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRATCH="$ROOT/.build-bench"
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$SCRATCH/bench-results/$STAMP-$MODE"
# The database lives on a real disk (not tmpfs) so that synchronous=FULL pays for real fsyncs.
WORK=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/stampd-bench.XXXXXX")
mkdir -p "$OUT"

PIDS=()
PG_RUNNING=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # The throwaway PostgreSQL (after the stampd that uses it): its log is kept, its folder removed.
    if [[ $PG_RUNNING == 1 ]]; then
        cp -f "$PG_THROWAWAY_DIR/log" "$OUT/postgres.log" 2>/dev/null || true
        pg_throwaway_stop || true
    fi
    cp -f "$WORK"/*.log "$WORK"/nginx/error.log "$OUT"/ 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n== %s\n' "$*"; }

# --- Tools -----------------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
[[ -f $NCHAN_MODULE ]] || missing+=(libnginx-mod-nchan)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]}"
    if ! { apt-get install -y --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 \
           || { apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1; }; }; then
        tail -5 "$WORK/apt.log" >&2
        if [[ $MODE == full ]]; then echo "run.sh: cannot install ${missing[*]}" >&2; exit 1; fi
        echo "run.sh: smoke continues without what could not be installed" >&2
    fi
fi
HAVE_NCHAN=0; command -v nginx >/dev/null && [[ -f $NCHAN_MODULE ]] && HAVE_NCHAN=1
HAVE_WRK=0; command -v wrk >/dev/null && command -v curl >/dev/null && HAVE_WRK=1

# --- Build -----------------------------------------------------------------------------------
if [[ -n ${BENCH_BIN:-} ]]; then
    # Binaries built elsewhere (CI's smoke run uses the debug build it already has).
    BIN=$BENCH_BIN
    say "using the binaries in $BIN"
else
    say "building release into $SCRATCH"
    (cd "$ROOT" && swift build -c release --scratch-path "$SCRATCH" --product stampd 2>&1 | tail -1 \
                && swift build -c release --scratch-path "$SCRATCH" --product stampd-bench 2>&1 | tail -1)
    BIN=$(cd "$ROOT" && swift build -c release --scratch-path "$SCRATCH" --show-bin-path)
fi
STAMPD="$BIN/stampd"
BENCH="$BIN/stampd-bench"
[[ -x $STAMPD && -x $BENCH ]] || { echo "run.sh: build products missing in $BIN" >&2; exit 1; }

# A port nobody listens on (bash's /dev/tcp: a refused connection means free), below the kernel's
# ephemeral range: a port in that range can be the local end of some client's connection, which no
# connect test sees and which makes the server's bind fail.
EPHEMERAL_FIRST=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((10000 + RANDOM % (EPHEMERAL_FIRST - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
    done
    return 1
}

wait_for() { # wait_for SECONDS COMMAND...
    local limit=$1; shift
    for _ in $(seq 1 $((limit * 10))); do "$@" && return 0; sleep 0.1; done
    return 1
}

# wait_listening SECONDS PID LOG: waits for the server to log "listening"; fails at once if it exits.
wait_listening() {
    local limit=$1; shift
    for _ in $(seq 1 $((limit * 10))); do
        grep -q "listening" "$2" && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# --- How busy the machine is before we start (client and servers share its cores) --------------
cpu_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
read -r busy0 total0 < <(cpu_busy); sleep 3; read -r busy1 total1 < <(cpu_busy)
OTHER_BEFORE=$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v n="$(nproc)" 'BEGIN {printf "%.2f", (t > 0 ? b / t * n : 0)}')
say "other processes use $OTHER_BEFORE of $(nproc) cores before the run"
if awk -v o="$OTHER_BEFORE" 'BEGIN {exit !(o > 0.25)}'; then
    echo "run.sh: warning: the machine is not idle; figures will be lower than the servers can do (see the CPU row)" >&2
fi

# Stops one process we started and forgets it: TERM, up to 10 s, then KILL.
stop_pid() {
    local pid=$1 kept=() other
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for other in "${PIDS[@]}"; do [[ $other == "$pid" ]] || kept+=("$other"); done
    PIDS=("${kept[@]}")
}

# --- stampd on a fresh database ---------------------------------------------------------------
# Both stampds (SQLite here, PostgreSQL later) run with the same relaxed limits.
STAMPD_FLAGS=(--migrations "$ROOT/migrations" --insecure-fast-password-hashing --max-connections 19500 --max-polls 19500
              --hash-queue 100000 --sign-ins-per-address 1000000 --sign-ins-at-once-per-address 100000 --sign-ups-per-address 1000000
              --pending-requests-per-customer 1000000 --requests-per-customer-per-hour 1000000 --new-store-limits off)
STAMPD_PORT=$(free_port)
STAMPD_METRICS_PORT=$(free_port)
say "starting stampd on 127.0.0.1:$STAMPD_PORT (database $WORK/stampd.sqlite)"
"$STAMPD" --port "$STAMPD_PORT" --metrics-port "$STAMPD_METRICS_PORT" --database "$WORK/stampd.sqlite" "${STAMPD_FLAGS[@]}" \
    >"$WORK/stampd.log" 2>&1 &
STAMPD_PID=$!
PIDS+=("$STAMPD_PID")
wait_listening 30 "$STAMPD_PID" "$WORK/stampd.log" || { cat "$WORK/stampd.log" >&2; echo "run.sh: stampd did not start" >&2; exit 1; }

# --- nginx + nchan ----------------------------------------------------------------------------
NCHAN_ARGS=()
NGINX_PORT=""
if [[ $HAVE_NCHAN == 1 ]]; then
    NGINX_PORT=$(free_port)
    mkdir -p "$WORK/nginx/tmp"
    sed -e "s|@PREFIX@|$WORK/nginx|g" -e "s|@PORT@|$NGINX_PORT|g" -e "s|@MODULE@|$NCHAN_MODULE|g" \
        "$ROOT/scripts/bench/nginx.conf.template" >"$WORK/nginx/nginx.conf"
    say "starting nginx + nchan on 127.0.0.1:$NGINX_PORT (one worker)"
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_for 10 curl -sf "http://127.0.0.1:$NGINX_PORT/healthz" -o /dev/null \
        || { cat "$WORK/nginx.log" "$WORK/nginx/error.log" >&2 || true; echo "run.sh: nginx did not start" >&2; exit 1; }
    NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)
    NCHAN_ARGS=(--nchan "127.0.0.1:$NGINX_PORT" --nchan-pid "$NGINX_WORKER")
else
    echo "run.sh: nginx + nchan not available: the smoke run measures stampd only" >&2
fi

# --- The client -------------------------------------------------------------------------------
RESULTS="$OUT/results.tsv"
printf 'machine.other_cores_before\t%s\n' "$OTHER_BEFORE" >"$RESULTS"
# The PostgreSQL run has the same latency and full-flow sizes, without phase (a) (--levels '').
if [[ $MODE == smoke ]]; then
    SIZES=(--levels 20,50 --latency-parked 50 --rate 100 --latency-seconds 2 --flow-pairs 8 --flow-seconds 2
           --customers 4 --setup-connections 8 --settle-seconds 0.5 --max-seconds 120)
    PG_SIZES=(--levels '' --latency-parked 50 --rate 100 --latency-seconds 2 --flow-pairs 8 --flow-seconds 2
              --customers 4 --setup-connections 8 --settle-seconds 0.5 --max-seconds 120)
    WRK_ARGS=(-t1 -c8 -d2s)
    printf 'd.wrk_threads\t1\nd.wrk_connections\t8\nd.wrk_seconds\t2\n' >>"$RESULTS"
else
    SIZES=(--levels 1000,5000,10000,18000 --latency-parked 10000 --rate 1000 --latency-seconds 20
           --flow-pairs 128 --flow-seconds 30 --customers 32 --quiet-wait 180 --noisy-retries 2 --max-seconds 3000)
    PG_SIZES=(--levels '' --latency-parked 10000 --rate 1000 --latency-seconds 20
              --flow-pairs 128 --flow-seconds 30 --customers 32 --quiet-wait 180 --noisy-retries 2 --max-seconds 3000)
    WRK_ARGS=(-t2 -c64 -d10s)
    printf 'd.wrk_threads\t2\nd.wrk_connections\t64\nd.wrk_seconds\t10\n' >>"$RESULTS"
fi
say "stampd-bench run ${SIZES[*]} ${EXTRA[*]:-}"
STATUS=0
"$BENCH" run --stampd "127.0.0.1:$STAMPD_PORT" --stampd-metrics "127.0.0.1:$STAMPD_METRICS_PORT" --stampd-pid "$STAMPD_PID" "${NCHAN_ARGS[@]}" \
    --results "$RESULTS" "${SIZES[@]}" "${EXTRA[@]}" > >(tee "$OUT/bench.log") 2>&1 &
BENCH_PID=$!
PIDS+=("$BENCH_PID")
wait "$BENCH_PID" || STATUS=$?
[[ $STATUS == 0 ]] || echo "run.sh: stampd-bench exited with $STATUS" >&2

# --- wrk: /healthz against nginx's return 200, and an authenticated read ------------------------
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
run_wrk() { # run_wrk KEY PID URL [wrk args...]: appends "KEY.round<N> req/s" and the server's CPU per request
    local key=$1 pid=$2 url=$3; shift 3
    local out rps bad ticks0 ticks1 requests
    ticks0=$(cpu_ticks "$pid")
    out=$(wrk "${WRK_ARGS[@]}" "$@" "$url" 2>&1) || { echo "$out" >&2; STATUS=1; return; }
    ticks1=$(cpu_ticks "$pid")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v t=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" -v n="${requests:-0}" -v k="${key%_rps}" -v r="$ROUND" \
        'BEGIN {if (n > 0) printf "%s_server_us.round%s\t%.1f\n", k, r, t / hz / n * 1e6}' >>"$RESULTS"
    echo "$out" | sed "s|^|  [$key round $ROUND] |" >>"$OUT/wrk.log"
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    bad=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {for (i = 4; i <= NF; i += 2) {gsub(",", "", $i); n += $i}} END {print n + 0}')
    printf '  %-22s round %s: %10s req/s, %s errors\n' "$key" "$ROUND" "${rps:-0}" "$bad"
    printf '%s.round%s\t%s\n' "$key" "$ROUND" "${rps:-0}" >>"$RESULTS"
    WRK_ERRORS=$((WRK_ERRORS + bad))
}
median_of() { # median_of KEY: the median of KEY.round* in $RESULTS, written as KEY
    local value
    value=$(awk -F'\t' -v k="$1" 'index($1, k ".round") == 1 {print $2}' "$RESULTS" | sort -g \
            | awk '{a[NR] = $1} END {if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}')
    [[ -n $value ]] && printf '%s\t%s\n' "$1" "$value" >>"$RESULTS"
}
WRK_ERRORS=0
if [[ $HAVE_WRK == 1 ]]; then
    API="http://127.0.0.1:$STAMPD_PORT"
    post() { curl -sf -X POST "$API$1" -H 'Content-Type: application/json' "${@:3}" -d "$2"; }
    field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
    OWNER_TOKEN=$(post /v1/accounts '{"role":"owner","login":"wrk-owner","password":"bench-password","name":"Owner"}' | field token)
    STORE=$(post /v1/stores '{"name":"Wrk Cafe","rewardItem":"Americano"}' -H "Authorization: Bearer $OWNER_TOKEN" | field id)
    TOKEN=$(post /v1/accounts '{"role":"customer","login":"wrk-customer","password":"bench-password","name":"Customer"}' | field token)
    REQUEST=$(post "/v1/stores/$STORE/requests" '{"kind":"stamp","count":1}' -H "Authorization: Bearer $TOKEN" | sed -n 's/.*"id":"\(req_[^"]*\)".*/\1/p')
    post "/v1/requests/$REQUEST/approve" '' -H "Authorization: Bearer $OWNER_TOKEN" >/dev/null
    [[ -n $TOKEN ]] || { echo "run.sh: could not create the wrk customer" >&2; STATUS=1; }
    if [[ $MODE == full ]]; then # the servers are idle now: wait (a bounded time) for everything else to be too
        for _ in $(seq 1 60); do
            read -r b0 t0 < <(cpu_busy); sleep 2; read -r b1 t1 < <(cpu_busy)
            busy=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v n="$(nproc)" 'BEGIN {printf "%.2f", (t > 0 ? b / t * n : 0)}')
            awk -v o="$busy" 'BEGIN {exit !(o < 0.15)}' && break
            echo "run.sh: other processes use $busy cores; waiting for a quiet machine before wrk" >&2
        done
        printf 'd.other_cores_before\t%s\n' "$busy" >>"$RESULTS"
    fi
    ROUNDS=1; [[ $MODE == full ]] && ROUNDS=3
    say "wrk ${WRK_ARGS[*]}, $ROUNDS round(s) alternating stampd and nginx; the median counts"
    for ROUND in $(seq 1 "$ROUNDS"); do
        run_wrk d.stampd.healthz_rps "$STAMPD_PID" "$API/healthz"
        [[ -n $NGINX_PORT ]] && run_wrk d.nginx.healthz_rps "$NGINX_WORKER" "http://127.0.0.1:$NGINX_PORT/healthz"
        run_wrk d.stampd.cards_rps "$STAMPD_PID" "$API/v1/cards" -H "Authorization: Bearer $TOKEN"
    done
    for key in d.stampd.healthz_rps d.nginx.healthz_rps d.stampd.cards_rps \
               d.stampd.healthz_server_us d.nginx.healthz_server_us d.stampd.cards_server_us; do median_of "$key"; done
    printf 'errors.wrk\t%s\n' "$WRK_ERRORS" >>"$RESULTS"
    [[ $WRK_ERRORS == 0 ]] || { echo "run.sh: wrk saw $WRK_ERRORS errors" >&2; STATUS=1; }
fi

# --- Durability cross-check: what the client counted is in the database ------------------------
if command -v sqlite3 >/dev/null; then
    approved=$(sqlite3 "file:$WORK/stampd.sqlite?mode=ro" "SELECT count(*) FROM requests WHERE status = 'approved'" 2>/dev/null || echo "?")
    events=$(sqlite3 "file:$WORK/stampd.sqlite?mode=ro" "SELECT count(*) FROM events" 2>/dev/null || echo "?")
    flows=$(awk -F'\t' '$1 == "c.stampd.flows" {print $2}' "$RESULTS")
    say "database: $approved approved requests, $events events (client counted ${flows:-no} flows inside the window)"
    printf 'db.approved\t%s\ndb.events\t%s\n' "$approved" "$events" >>"$RESULTS"
    if [[ -n $flows && ( $approved == "?" || $approved -lt $flows ) ]]; then
        echo "run.sh: the database holds fewer approved requests than the flows the client counted" >&2
        STATUS=1
    fi
fi

# postgres_outcome LABEL URL LOG...: after the client's run as LABEL on the database at URL,
# checks that the database holds at least the flows the client counted (STATUS=1 if not), and
# records its approved requests and events, the writes stampd gave up on ("write kept
# conflicting") and its warning lines (but the one every benchmark start logs) in LOG...
postgres_outcome() {
    local label=$1 url=$2 approved events flows conflicting warnings
    shift 2
    approved=$("$PSQL" -X -At -d "$url" -c "SELECT count(*) FROM requests WHERE status = 'approved'" 2>/dev/null || echo "?")
    events=$("$PSQL" -X -At -d "$url" -c "SELECT count(*) FROM events" 2>/dev/null || echo "?")
    flows=$(awk -F'\t' -v k="c.$label.flows" '$1 == k {print $2}' "$RESULTS")
    conflicting=$(cat "$@" | grep -c "write kept conflicting" || true)
    warnings=$(cat "$@" | grep -E '^[^ ]+ (warning|error|critical) ' | grep -vc 'insecure fast cost' || true)
    cat "$@" | grep -E '^[^ ]+ (warning|error|critical) ' | grep -v 'insecure fast cost' \
        | sed -E 's/^[^ ]+ //; s/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -20 >"$OUT/stampd-$label-warnings.txt" || true
    say "$label: $approved approved requests, $events events (client counted ${flows:-no} flows inside the window);" \
        "stampd logged $conflicting 'write kept conflicting', $warnings warning/error lines"
    printf 'db.%s.approved\t%s\ndb.%s.events\t%s\nlog.%s.kept_conflicting\t%s\nlog.%s.warnings\t%s\n' \
        "$label" "$approved" "$label" "$events" "$label" "$conflicting" "$label" "$warnings" >>"$RESULTS"
    if [[ -n $flows && ( $approved == "?" || $approved -lt $flows ) ]]; then
        echo "run.sh: PostgreSQL ($label) holds fewer approved requests than the flows the client counted" >&2
        STATUS=1
    fi
}

# --- The same phases on PostgreSQL ------------------------------------------------------------
# The SQLite stampd stops first, so the two do not share the cores (nginx stays, idle, for the
# version line below). The cluster lives under BENCH_TMPDIR (default /var/tmp) like the SQLite file,
# fsync and synchronous_commit on; pg_stat_statements and track_wal_io_timing are switched on to
# count statements, transactions and WAL syncs per flow.
PG_VERSION=""
if [[ ${BENCH_POSTGRES:-1} != 0 ]]; then
    stop_pid "$STAMPD_PID"
    say "starting a throwaway PostgreSQL"
    # shellcheck source=scripts/postgres.sh
    source "$ROOT/scripts/postgres.sh"
    PG_RUNNING=1 # from here cleanup() stops it, also if interrupted while it starts (stopping is safe to repeat)
    if ! TMPDIR="${BENCH_TMPDIR:-/var/tmp}" pg_throwaway_start >"$WORK/postgres-start.log" 2>&1; then
        PG_RUNNING=0
        cat "$WORK/postgres-start.log" >&2
        echo "run.sh: PostgreSQL did not start: no PostgreSQL figures" >&2
        STATUS=1
    fi
fi
if [[ $PG_RUNNING == 1 ]]; then
    PSQL="$PG_THROWAWAY_BIN/psql"
    PG_SUPER_URL="postgres://postgres@127.0.0.1:$PG_THROWAWAY_PORT/stampd"
    if "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "postgres://postgres@127.0.0.1:$PG_THROWAWAY_PORT/postgres" \
            -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" -c "ALTER SYSTEM SET track_wal_io_timing = on" \
            >>"$WORK/postgres-start.log" 2>&1 \
       && pg_throwaway_restart >>"$WORK/postgres-start.log" 2>&1 \
       && "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$PG_SUPER_URL" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" \
            >>"$WORK/postgres-start.log" 2>&1; then
        :
    else
        cat "$WORK/postgres-start.log" >&2
        echo "run.sh: warning: no pg_stat_statements; the table lacks statements per flow" >&2
    fi
    POSTMASTER_PID=$(head -1 "$PG_THROWAWAY_DIR/data/postmaster.pid")
    PG_VERSION=$("$PSQL" -X -At -d "$PG_SUPER_URL" -c "SHOW server_version" 2>/dev/null || echo "?")
    "$PSQL" -X -A -F ' = ' -t -d "$PG_SUPER_URL" -c "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings WHERE name IN
        ('shared_buffers', 'max_connections', 'fsync', 'synchronous_commit', 'wal_sync_method', 'commit_delay', 'wal_level',
         'full_page_writes', 'default_transaction_isolation', 'shared_preload_libraries', 'track_wal_io_timing', 'max_wal_size')
        ORDER BY name" >"$OUT/postgres-settings.txt" 2>&1 || true

    PG_STAMPD_PORT=$(free_port)
    PG_STAMPD_METRICS_PORT=$(free_port)
    say "starting stampd on 127.0.0.1:$PG_STAMPD_PORT (database $PG_THROWAWAY_URL, PostgreSQL $PG_VERSION, postmaster $POSTMASTER_PID)"
    "$STAMPD" --port "$PG_STAMPD_PORT" --metrics-port "$PG_STAMPD_METRICS_PORT" --database "$PG_THROWAWAY_URL" "${STAMPD_FLAGS[@]}" \
        >"$WORK/stampd-postgres.log" 2>&1 &
    PG_STAMPD_PID=$!
    PIDS+=("$PG_STAMPD_PID")
    if ! wait_listening 60 "$PG_STAMPD_PID" "$WORK/stampd-postgres.log"; then
        cat "$WORK/stampd-postgres.log" >&2
        echo "run.sh: stampd on PostgreSQL did not start" >&2
        STATUS=1
    else
        say "stampd-bench run --stampd-label postgres ${PG_SIZES[*]} ${EXTRA[*]:-}"
        PG_BENCH_STATUS=0
        "$BENCH" run --stampd "127.0.0.1:$PG_STAMPD_PORT" --stampd-metrics "127.0.0.1:$PG_STAMPD_METRICS_PORT" \
            --stampd-pid "$PG_STAMPD_PID" --stampd-label postgres --postgres-pid "$POSTMASTER_PID" \
            --postgres-stats-url "$PG_SUPER_URL" --psql "$PSQL" \
            --results "$RESULTS" "${PG_SIZES[@]}" "${EXTRA[@]}" > >(tee "$OUT/bench-postgres.log") 2>&1 &
        BENCH_PID=$!
        PIDS+=("$BENCH_PID")
        wait "$BENCH_PID" || PG_BENCH_STATUS=$?
        [[ $PG_BENCH_STATUS == 0 ]] || { echo "run.sh: stampd-bench (PostgreSQL) exited with $PG_BENCH_STATUS" >&2; STATUS=1; }

        postgres_outcome postgres "$PG_THROWAWAY_URL" "$WORK/stampd-postgres.log"
    fi
    stop_pid "$PG_STAMPD_PID"

    # --- Two instances on the same cluster, on a database of their own ---------------------------
    # The same phases with the client's connections spread over A and B in turn (as a round-robin
    # balancer would): half the deliveries cross instances through NOTIFY. Then the parked-poll
    # capacity of the two: one client per instance (each process under its own fd limit), both
    # parking at once.
    if [[ ${BENCH_TWO_INSTANCES:-1} != 0 ]] && TWO_URL=$(pg_throwaway_createdb stampd_two 2>>"$WORK/postgres-start.log"); then
        TWO_SUPER_URL="postgres://postgres@127.0.0.1:$PG_THROWAWAY_PORT/stampd_two"
        "$PSQL" -X -q -d "$TWO_SUPER_URL" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >>"$WORK/postgres-start.log" 2>&1 || true
        TWO_PORTS=() TWO_METRICS=() TWO_PIDS=()
        for name in a b; do
            port=$(free_port); metrics=$(free_port)
            "$STAMPD" --port "$port" --metrics-port "$metrics" --database "$TWO_URL" "${STAMPD_FLAGS[@]}" >"$WORK/stampd-two-$name.log" 2>&1 &
            PIDS+=($!)
            TWO_PORTS+=("127.0.0.1:$port"); TWO_METRICS+=("127.0.0.1:$metrics"); TWO_PIDS+=($!)
            wait_listening 60 "$!" "$WORK/stampd-two-$name.log" \
                || { cat "$WORK/stampd-two-$name.log" >&2; echo "run.sh: stampd $name on PostgreSQL did not start" >&2; STATUS=1; }
        done
        joined() { local IFS=,; echo "$*"; }
        say "two instances (${TWO_PORTS[*]}): stampd-bench run --stampd-label postgres2 ${PG_SIZES[*]} ${EXTRA[*]:-}"
        TWO_STATUS=0
        "$BENCH" run --stampd "$(joined "${TWO_PORTS[@]}")" --stampd-metrics "$(joined "${TWO_METRICS[@]}")" \
            --stampd-pid "$(joined "${TWO_PIDS[@]}")" --stampd-label postgres2 --postgres-pid "$POSTMASTER_PID" \
            --postgres-stats-url "$TWO_SUPER_URL" --psql "$PSQL" \
            --results "$RESULTS" "${PG_SIZES[@]}" "${EXTRA[@]}" > >(tee "$OUT/bench-two.log") 2>&1 &
        BENCH_PID=$!
        PIDS+=("$BENCH_PID")
        wait "$BENCH_PID" || TWO_STATUS=$?
        [[ $TWO_STATUS == 0 ]] || { echo "run.sh: stampd-bench (two instances) exited with $TWO_STATUS" >&2; STATUS=1; }
        postgres_outcome postgres2 "$TWO_URL" "$WORK"/stampd-two-*.log

        if [[ $MODE == smoke ]]; then CAPACITY=(--levels 20); else CAPACITY=(--levels 18000 --connect-concurrency 128); fi
        say "two instances: parked-poll capacity, one client each (${CAPACITY[*]})"
        CLIENTS=()
        for i in 0 1; do
            label=postgres2_$((i + 1))
            "$BENCH" run --stampd "${TWO_PORTS[$i]}" --stampd-metrics "${TWO_METRICS[$i]}" --stampd-pid "${TWO_PIDS[$i]}" \
                --stampd-label "$label" "${CAPACITY[@]}" --latency-parked 0 --flow-seconds 0 --customers 1 --quiet-wait 5 \
                --source-prefix $((150 + i)) --max-seconds 900 --results "$RESULTS" >"$OUT/bench-capacity-$label.log" 2>&1 &
            CLIENTS+=($!)
            PIDS+=($!)
        done
        for pid in "${CLIENTS[@]}"; do
            wait "$pid" || { echo "run.sh: a capacity client exited with an error (see bench-capacity-*.log)" >&2; STATUS=1; }
        done
        grep -h "parked .* of\|error" "$OUT"/bench-capacity-*.log | head -8
        for pid in "${TWO_PIDS[@]}"; do stop_pid "$pid"; done
    fi
    cp -f "$PG_THROWAWAY_DIR/log" "$OUT/postgres.log" 2>/dev/null || true
    pg_throwaway_stop
    PG_RUNNING=0
fi

# --- Machine and table -------------------------------------------------------------------------
{
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB," \
         "kernel $(uname -r), $(swift --version 2>/dev/null | head -1), ulimit -n $(ulimit -n)"
    echo "stampd: commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')," \
         "$(git -C "$ROOT" status --porcelain -- Sources migrations Package.swift 2>/dev/null | grep -vc 'stampd-bench' || true) files changed since (outside stampd-bench)"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*\///'), nchan: $(curl -s "http://127.0.0.1:${NGINX_PORT:-1}/nchan_status" 2>/dev/null | awk -F': ' '/nchan version/ {print $2}')"
    echo "PostgreSQL: ${PG_VERSION:-not run}"
} | tee "$OUT/machine.txt"
say "results ($MODE) — $OUT"
REPORT_ARGS=(--results "$RESULTS")
[[ $MODE == smoke ]] && REPORT_ARGS+=(--smoke)
"$BENCH" report "${REPORT_ARGS[@]}" | tee "$OUT/table.md"

if [[ $STATUS != 0 ]]; then # the reasons again, after the long table
    say "why the run failed"
    grep -h "error: \|run.sh: \|giving up" "$OUT"/bench*.log 2>/dev/null | head -20
    grep -E '^[^ ]+ (error|critical) ' "$WORK"/stampd*.log 2>/dev/null | head -10
fi
exit "$STATUS"
