#!/usr/bin/env bash
# PostgreSQL integration test for leanjax.tune: two workers on one study, and a worker killed mid-trial.
#
# Starts a throwaway PostgreSQL cluster on 127.0.0.1 in a temporary directory (installing Debian's
# `postgresql` package first when run as root and no server is found), points
# LEANJAX_TEST_POSTGRES_URL at it and runs the PostgreSQL cases of tests/test_tune_workers.py. It exits 0
# with a "skipped" line where PostgreSQL or psycopg2 is unavailable: the same protocol is covered with
# JournalStorage and SQLite in the normal suite.
#
#   scripts/ci_postgres.sh            # PYTHON=... picks the interpreter (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PORT=${LEANJAX_PG_PORT:-55432}

skip() { echo "ci_postgres: skipped: $*"; exit 0; }
server_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

BIN=$(server_bin)
if [ -z "$BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 || true
  BIN=$(server_bin)
fi
[ -n "$BIN" ] || skip "no PostgreSQL server binaries (apt-get install postgresql)"
"$PY" -c "import psycopg2" 2>/dev/null || skip "psycopg2 is not importable by $PY (pip install psycopg2-binary)"

DIR=$(mktemp -d /tmp/leanjax-pg.XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
  id postgres >/dev/null 2>&1 || skip "running as root and there is no 'postgres' user to run the server"
  chown postgres "$DIR"
  AS=(runuser -u postgres --)
fi
stop() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap stop EXIT

"${AS[@]}" "$BIN/initdb" -D "$DIR/data" -U leanjax --auth=trust -E UTF8 >/dev/null \
  || skip "initdb failed"
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR" start >/dev/null \
  || skip "the server did not start: $(tail -3 "$DIR/server.log" 2>/dev/null)"
"${AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U leanjax leanjax_test

# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; name the driver installed.
export LEANJAX_TEST_POSTGRES_URL="postgresql+psycopg2://leanjax@127.0.0.1:$PORT/leanjax_test"
echo "ci_postgres: server up at $LEANJAX_TEST_POSTGRES_URL"
# -n 0: in this process (pyproject's addopts run two xdist workers); the cases share one database.
"$PY" -m pytest tests/test_tune_workers.py -k postgresql -p no:cacheprovider -q -n 0
