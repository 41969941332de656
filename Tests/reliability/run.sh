#!/usr/bin/env bash
# The reliability checks: crash durability (SIGKILL, and simulated power cuts), the malformed HTTP
# corpus, slow and greedy clients, storage faults, overload, a soak. See RELIABILITY.md.
#
#   Tests/reliability/run.sh [path/to/stampd] [--quick | --local] [--only SUITE[,SUITE...]]
#
#   (default)  CI sizes: crash 3 rounds, 24 power cuts, slowloris 2000 slow connections
#   --quick    the same CI sizes (kept as a name for scripts)
#   --local    crash 30 rounds, 1000 power cuts, slowloris 8000 slow connections, a minute of overload
#              over 10,000 parked polls, a 30-minute soak (about an hour and a half)
#   --only     run only these of crash, powercut, diskfaults, malformed, slowloris, storage, overload, soak (also --only=crash)
#
# The binary defaults to $STAMPD_BIN, else .build/debug/stampd. Storage faults need root for the
# tmpfs and read-only mounts (skipped with a message otherwise). Environment: PYTHON (default
# .venv/bin/python, else python3), KEEP=1 keeps every temporary folder, CRASH_ROUNDS, POWER_CUTS
# and SLOW_CONNECTIONS override the sizes. Power cuts need libStampdFaults.so next to the binary
# (`swift build` builds it). STAMPD_TEST_DATABASE=postgres://... runs the crash rounds
# on that PostgreSQL database (an empty one of their own: its schema is dropped and created
# again for each round; needs psycopg); the other suites are SQLite-only and ignore it.
#   STAMPD_TEST_DATABASE=postgres://stampd:pw@127.0.0.1:5432/crash Tests/reliability/run.sh --only crash
# Exits non-zero when any check fails; the last line is `reliability: N passed, M failed`.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=${STAMPD_BIN:-$repo/.build/debug/stampd}
mode=ci
all_suites=(crash powercut diskfaults malformed slowloris storage overload soak)
only=""
while (($#)); do
    case $1 in
        --quick) mode=ci ;;
        --local) mode=local ;;
        --only) [[ $# -ge 2 ]] || { echo "reliability: --only needs a suite name" >&2; exit 2; }
            only+=",$2"; shift ;;
        --only=*) only+=",${1#--only=}" ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "reliability: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) binary=$1 ;;
    esac
    shift
done
selected=()
if [[ -z $only ]]; then
    selected=("${all_suites[@]}")
else
    IFS=, read -ra wanted <<<"${only#,}"
    for name in "${wanted[@]}"; do
        [[ -z $name ]] && continue
        [[ " ${all_suites[*]} " == *" $name "* ]] \
            || { echo "reliability: no suite '$name' (one of: ${all_suites[*]})" >&2; exit 2; }
        [[ " ${selected[*]} " == *" $name "* ]] || selected+=("$name")
    done
    ((${#selected[@]})) || { echo "reliability: --only names no suite" >&2; exit 2; }
fi
selected_suite() { [[ " ${selected[*]} " == *" $1 "* ]]; }
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
[[ -x $binary ]] || { echo "reliability: no stampd binary at $binary (build it, or pass its path)" >&2; exit 2; }

if [[ $mode == local ]]; then
    rounds=${CRASH_ROUNDS:-30}
    cuts=${POWER_CUTS:-1000}
    slow_args=(--local)
    overload_args=(--local)
    soak_args=(--local)
    [[ -n ${SLOW_CONNECTIONS:-} ]] && slow_args+=(--slow "$SLOW_CONNECTIONS")
else
    rounds=${CRASH_ROUNDS:-3}
    cuts=${POWER_CUTS:-24}
    slow_args=(--slow "${SLOW_CONNECTIONS:-2000}")
    overload_args=()
    soak_args=()
fi
keep=()
[[ ${KEEP:-0} == 1 ]] && keep=(--keep)

total_passed=0
total_failed=0
failed_suites=()
started=$SECONDS

suite() {
    local name=$1
    shift
    printf '\n== %s\n' "$name"
    local out
    out=$(mktemp)
    local began=$SECONDS
    "$PYTHON" "$here/$name.py" --binary "$binary" "${keep[@]}" "$@" 2>&1 | tee "$out"
    local code=${PIPESTATUS[0]}
    local last
    last=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed$" "$out" | tail -n 1)
    rm -f "$out"
    if [[ -z $last ]]; then
        echo "-- $name did not report (exit $code)"
        total_failed=$((total_failed + 1))
        failed_suites+=("$name")
        return
    fi
    local p f
    p=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$last")
    f=$(sed -E 's/.*, ([0-9]+) failed/\1/' <<<"$last")
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
    if ((f > 0 || code != 0)); then
        failed_suites+=("$name")
        ((f == 0)) && total_failed=$((total_failed + 1))
    fi
    echo "-- $name: $p passed, $f failed in $((SECONDS - began)) s"
}

if [[ -n ${STAMPD_TEST_DATABASE:-} ]]; then
    case $STAMPD_TEST_DATABASE in
        postgres://*|postgresql://*) echo "reliability: crash rounds on PostgreSQL (STAMPD_TEST_DATABASE); other suites on SQLite" ;;
        *) echo "reliability: STAMPD_TEST_DATABASE is not a postgres:// URL; ignored (SQLite)" ;;
    esac
fi

selected_suite crash && suite crash --rounds "$rounds"
# Smaller rounds than the SIGKILL ones: what matters is how many cuts, each at a random write.
selected_suite powercut && suite powercut --rounds "$cuts" --customers 6 --owners 2 --creates 15
selected_suite diskfaults && suite diskfaults
selected_suite malformed && suite malformed
selected_suite slowloris && suite slowloris "${slow_args[@]}"
selected_suite storage && suite storage
# stampd-bench, built next to the binary, is the crowd.
selected_suite overload && suite overload "${overload_args[@]}"
# A day of load compressed: steady flows over parked polls, events pruned many times.
selected_suite soak && suite soak "${soak_args[@]}"

printf '\n== summary (%d s)\n' "$((SECONDS - started))"
((${#failed_suites[@]})) && echo "failing: ${failed_suites[*]}"
echo "reliability: $total_passed passed, $total_failed failed"
((total_failed == 0))
