# A throwaway PostgreSQL for tests: a cluster of its own in a temporary folder, on a free
# loopback port, with role and database stampd (password stampd). Meant to be sourced:
#
#   source scripts/postgres.sh
#   pg_throwaway_start || exit 1          # exports PG_THROWAWAY_URL, _PORT, _DIR, _BIN
#   url=$(pg_throwaway_createdb run_1)    # another empty database owned by stampd
#   pg_throwaway_restart                  # pg_ctl -m fast restart (reconnect tests)
#   pg_throwaway_stop                     # stops it and removes the folder; safe to repeat
#
# It installs Debian's postgresql package when no initdb is found. As root it runs the server
# as the postgres user (PostgreSQL refuses root). Functions return non-zero on failure; nothing
# here sets shell options or exits.

# Runs a command as the owner of the cluster: postgres when we are root, else ourselves.
_pg_throwaway_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd "$PG_THROWAWAY_DIR" && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

_pg_throwaway_pg_ctl() {
  _pg_throwaway_as_owner "$PG_THROWAWAY_BIN/pg_ctl" -D "$PG_THROWAWAY_DIR/data" \
    -l "$PG_THROWAWAY_DIR/log" -w -t 60 "$@"
}

_pg_throwaway_options() {
  printf '%s' "-p $PG_THROWAWAY_PORT -k '$PG_THROWAWAY_DIR' -c listen_addresses=127.0.0.1" \
    " -c fsync=on -c synchronous_commit=on -c max_connections=400"
}

# psql as the superuser over TCP (trust), quiet, stopping at the first error.
_pg_throwaway_psql() {
  "$PG_THROWAWAY_BIN/psql" -h 127.0.0.1 -p "$PG_THROWAWAY_PORT" -U postgres -d postgres \
    -X -q -v ON_ERROR_STOP=1 "$@"
}

_pg_throwaway_fail() {
  echo "pg_throwaway: $*" >&2
  if [[ -n ${PG_THROWAWAY_DIR:-} && -f $PG_THROWAWAY_DIR/log ]]; then
    echo "pg_throwaway: last lines of the server log:" >&2
    tail -n 20 "$PG_THROWAWAY_DIR/log" >&2
  fi
  pg_throwaway_stop
  return 1
}

pg_throwaway_start() {
  if [[ -n ${PG_THROWAWAY_DIR:-} && -d $PG_THROWAWAY_DIR ]]; then
    echo "pg_throwaway: already running on port ${PG_THROWAWAY_PORT:-?}" >&2
    return 0
  fi
  local sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "pg_throwaway: installing postgresql" >&2
    $sudo_cmd apt-get update -qq \
      && $sudo_cmd env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
      || { echo "pg_throwaway: apt-get could not install postgresql" >&2; return 1; }
    # The package creates and may start a "main" cluster on 5432; we do not use it.
    if command -v pg_lsclusters >/dev/null; then
      local ver name _rest
      while read -r ver name _rest; do
        $sudo_cmd pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1
      done < <(pg_lsclusters -h 2>/dev/null)
    fi
  fi
  local version
  version=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
    | awk -F/ '{print $5}' | sort -n | tail -n 1)
  [[ -n $version ]] || { echo "pg_throwaway: no /usr/lib/postgresql/*/bin/initdb" >&2; return 1; }
  export PG_THROWAWAY_BIN="/usr/lib/postgresql/$version/bin"

  PG_THROWAWAY_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pg-throwaway.XXXXXX") \
    || { echo "pg_throwaway: mktemp failed" >&2; unset PG_THROWAWAY_DIR; return 1; }
  export PG_THROWAWAY_DIR
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$PG_THROWAWAY_DIR" || { _pg_throwaway_fail "cannot chown to postgres"; return 1; }
  fi
  # C locale: text sorts by bytes and lower() folds ASCII only, as SQLite's BINARY and NOCASE.
  _pg_throwaway_as_owner "$PG_THROWAWAY_BIN/initdb" -D "$PG_THROWAWAY_DIR/data" -U postgres \
    --auth=trust -E UTF8 --locale=C >"$PG_THROWAWAY_DIR/initdb.log" 2>&1 \
    || { cat "$PG_THROWAWAY_DIR/initdb.log" >&2; _pg_throwaway_fail "initdb failed"; return 1; }

  # A free port can be taken by someone else before the server binds it: try a few.
  local attempt started=""
  for attempt in 1 2 3; do
    PG_THROWAWAY_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()') \
      || { _pg_throwaway_fail "python3 could not pick a port"; return 1; }
    export PG_THROWAWAY_PORT
    if _pg_throwaway_pg_ctl -o "$(_pg_throwaway_options)" start >/dev/null; then
      started=1
      break
    fi
  done
  [[ -n $started ]] || { _pg_throwaway_fail "the server did not start"; return 1; }

  _pg_throwaway_psql -c "CREATE ROLE stampd LOGIN PASSWORD 'stampd'" \
    -c "CREATE DATABASE stampd OWNER stampd" \
    || { _pg_throwaway_fail "cannot create role and database stampd"; return 1; }
  export PG_THROWAWAY_URL="postgres://stampd:stampd@127.0.0.1:$PG_THROWAWAY_PORT/stampd"
}

# pg_throwaway_createdb NAME: creates an empty database NAME owned by stampd, prints its URL.
pg_throwaway_createdb() {
  local name=${1:-}
  [[ -n ${PG_THROWAWAY_PORT:-} ]] || { echo "pg_throwaway: not started" >&2; return 1; }
  [[ $name =~ ^[a-z_][a-z0-9_]{0,62}$ ]] \
    || { echo "pg_throwaway: database name must match [a-z_][a-z0-9_]*: '$name'" >&2; return 1; }
  _pg_throwaway_psql -c "CREATE DATABASE $name OWNER stampd" || return 1
  echo "postgres://stampd:stampd@127.0.0.1:$PG_THROWAWAY_PORT/$name"
}

pg_throwaway_restart() {
  [[ -n ${PG_THROWAWAY_DIR:-} ]] || { echo "pg_throwaway: not started" >&2; return 1; }
  _pg_throwaway_pg_ctl -m fast -o "$(_pg_throwaway_options)" restart >/dev/null \
    || { echo "pg_throwaway: restart failed" >&2; tail -n 20 "$PG_THROWAWAY_DIR/log" >&2; return 1; }
}

pg_throwaway_stop() {
  [[ -n ${PG_THROWAWAY_DIR:-} ]] || return 0
  if [[ -f $PG_THROWAWAY_DIR/data/postmaster.pid ]]; then
    _pg_throwaway_pg_ctl -m fast stop >/dev/null 2>&1 \
      || _pg_throwaway_pg_ctl -m immediate stop >/dev/null 2>&1
  fi
  rm -rf "$PG_THROWAWAY_DIR"
  unset PG_THROWAWAY_DIR PG_THROWAWAY_PORT PG_THROWAWAY_URL
  return 0
}
