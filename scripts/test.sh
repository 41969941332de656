#!/usr/bin/env bash
# Runs every test of stampd: unit and live-socket (swift test), the OpenAPI document check,
# the contract fuzzing (schemathesis), the browser end-to-end test (headless Chromium), the
# reliability checks (crash durability, power cuts, disk faults, malformed HTTP, slow clients,
# storage faults, overload; see
# RELIABILITY.md) in CI sizes, and the benchmark smoke run, on SQLite; then the Swift tests, the
# contract run, the crash rounds and the browser test again on PostgreSQL, two instances
# behind nginx (Tests/instances), and two instances under load while one is killed and
# PostgreSQL restarts (Tests/instances/failover.py), in a throwaway server of its own
# (scripts/postgres.sh) that is stopped at the end. On a fresh machine it first installs what is
# missing: Debian packages (apt-get, as root) and a Python venv in .venv from Tests/requirements.txt.
#
#   scripts/test.sh            everything
#   SKIP=browser,bench scripts/test.sh   leave stages out (build, swift, openapi, contract, browser,
#                                        reliability, bench, postgres)
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
skip=",${SKIP:-},"

say() { printf '\n== %s\n' "$*"; }

# --- what a clean machine lacks -------------------------------------------------------------
apt_packages=(libsqlite3-dev sqlite3 chromium chromium-driver nginx-light libnginx-mod-nchan wrk zbar-tools)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "apt-get could not install ${missing[*]}"; exit 1; }
fi
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import selenium, pytest, schemathesis, openapi_spec_validator, psycopg, axe_core_python, matplotlib' 2>/dev/null; then
  say "preparing .venv"
  python3 -m venv .venv && .venv/bin/pip install -q -r Tests/requirements.txt || { echo "pip install failed"; exit 1; }
fi

# --- the stages -----------------------------------------------------------------------------
passed=0
failed=0
failures=()
stage_logs=$(mktemp -d "${TMPDIR:-/tmp}/stampd-test-logs.XXXXXX")
stage() {
  local name=$1
  shift
  if [[ $skip == *",$name,"* ]]; then
    say "$name: skipped"
    return
  fi
  say "$name"
  local started=$SECONDS status
  # Each stage's output is also kept, so that a failure's last lines can be shown again at the
  # end, where a reader of a long CI log looks first.
  "$@" 2>&1 | tee "$stage_logs/$name.log"
  status=${PIPESTATUS[0]}
  if ((status == 0)); then
    passed=$((passed + 1))
    echo "-- $name passed in $((SECONDS - started)) s"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "-- $name FAILED (exit $status) in $((SECONDS - started)) s"
  fi
}

stage build swift build --build-tests
stage swift swift test --skip-build
stage openapi .venv/bin/openapi-spec-validator openapi.yaml
# The same debug binary that `swift test` built serves the live checks.
binary="$(swift build --show-bin-path)/stampd"
stage contract bash Tests/contract/run.sh "$binary"
stage browser bash Tests/browser/run.sh "$binary"
stage reliability bash Tests/reliability/run.sh "$binary" --quick
# The benchmark's smoke run keeps the load client working; its figures mean nothing.
export BENCH_BIN="$(dirname "$binary")"
stage bench bash scripts/bench/run.sh --smoke

# --- the same on PostgreSQL -------------------------------------------------------------------
if [[ $skip != *",postgres,"* ]]; then
  source scripts/postgres.sh
  if pg_throwaway_start; then
    trap pg_throwaway_stop EXIT
    stage swift-postgres env STAMPD_TEST_POSTGRES_URL="$PG_THROWAWAY_URL" swift test --skip-build
    stage contract-postgres env STAMPD_TEST_DATABASE="$(pg_throwaway_createdb contract)" bash Tests/contract/run.sh "$binary"
    stage browser-postgres env STAMPD_TEST_DATABASE="$(pg_throwaway_createdb browser)" bash Tests/browser/run.sh "$binary"
    stage crash-postgres env STAMPD_TEST_DATABASE="$(pg_throwaway_createdb crash)" \
      bash Tests/reliability/run.sh "$binary" --quick --only crash
    stage instances-postgres env STAMPD_TEST_DATABASE="$(pg_throwaway_createdb instances)" bash Tests/instances/run.sh "$binary"
    # SIGKILL of one instance and a restart of PostgreSQL itself, under load.
    stage failover-postgres env STAMPD_TEST_DATABASE="$(pg_throwaway_createdb failover)" \
      STAMPD_TEST_PG_RESTART="bash -c 'source scripts/postgres.sh && pg_throwaway_restart'" \
      .venv/bin/python Tests/instances/failover.py --binary "$binary"
    pg_throwaway_stop
    trap - EXIT
  else
    failed=$((failed + 1))
    failures+=("postgres (the throwaway server did not start)")
  fi
else
  say "postgres: skipped"
fi

for name in "${failures[@]}"; do
  [[ -f $stage_logs/$name.log ]] || continue
  say "$name failed; its last lines again"
  tail -n 60 "$stage_logs/$name.log"
done
rm -rf "$stage_logs"

say "summary"
((failed)) && echo "failed: ${failures[*]}"
echo "stages: $passed passed, $failed failed"
((failed == 0))
