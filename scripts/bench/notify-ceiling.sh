#!/usr/bin/env bash
# How many commits a second PostgreSQL takes with and without a NOTIFY in the transaction, on a
# throwaway cluster (scripts/postgres.sh): pgbench runs one-row insert transactions, then the same
# with stampd's kind of pg_notify, at several client counts, with two connections listening.
# A notifying commit holds a cluster-wide lock until it ends (WAL flush included), so notifying
# commits run one at a time: their rate stops growing with clients. See BENCHMARKS.md.
#
#   scripts/bench/notify-ceiling.sh [SECONDS_PER_RUN]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECONDS_PER_RUN=${1:-8}
# shellcheck source=scripts/postgres.sh
source "$ROOT/scripts/postgres.sh"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/notify-ceiling.XXXXXX")
LISTENERS=()
cleanup() {
  for pid in "${LISTENERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  pg_throwaway_stop || true
  rm -rf "$WORK"
}
trap cleanup EXIT
TMPDIR="${BENCH_TMPDIR:-/var/tmp}" pg_throwaway_start >/dev/null
url=$(pg_throwaway_createdb notify_ceiling)
"$PG_THROWAWAY_BIN/psql" -X -q "$url" -c "CREATE TABLE t (id bigserial PRIMARY KEY, v int)"
printf 'BEGIN;\nINSERT INTO t (v) VALUES (1);\nCOMMIT;\n' >"$WORK/plain.sql"
printf "BEGIN;\nINSERT INTO t (v) VALUES (1);\nSELECT pg_notify('stampd_events', 'ins_0123456789abcdef acc_0123456789abcdef:123456');\nCOMMIT;\n" \
  >"$WORK/notify.sql"
# Two listeners, as two stampd instances would be (each reads every notification).
for _ in 1 2; do
  (while true; do echo "LISTEN stampd_events; SELECT pg_sleep(1);"; done) | "$PG_THROWAWAY_BIN/psql" -X -q "$url" >/dev/null 2>&1 &
  LISTENERS+=($!)
done
sleep 1
printf '%-8s %14s %14s\n' clients "plain tps" "notify tps"
for clients in 1 4 16 32; do
  plain=$("$PG_THROWAWAY_BIN/pgbench" -n -c "$clients" -j 2 -T "$SECONDS_PER_RUN" -f "$WORK/plain.sql" "$url" 2>/dev/null \
          | awk '/^tps/ {printf "%.0f", $3}')
  notify=$("$PG_THROWAWAY_BIN/pgbench" -n -c "$clients" -j 2 -T "$SECONDS_PER_RUN" -f "$WORK/notify.sql" "$url" 2>/dev/null \
           | awk '/^tps/ {printf "%.0f", $3}')
  printf '%-8s %14s %14s\n' "$clients" "$plain" "$notify"
done
echo "PostgreSQL $("$PG_THROWAWAY_BIN/psql" -X -At "$url" -c 'SHOW server_version'), fsync on, synchronous_commit on, $(nproc) cores"
