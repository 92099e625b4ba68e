#!/usr/bin/env bash
# The warehouse tests again, against today's ClickHouse instead of Debian's 18.16 server that
# `cargo test --workspace` uses (issue 30): chdb from PyPI (the engine as a Python package)
# behind scripts/chdb_http.py, which speaks the part of ClickHouse's HTTP interface the
# warehouse client uses. The warehouse SQL must work on the versions users run.
#
#   bash scripts/test-warehouse-current.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

ensure_postgres
ensure_nats
venv=$(ensure_python_venv scripts/chdb-requirements.txt)

work=$(mktemp -d)
"$venv/bin/python" -u scripts/chdb_http.py 0 "$work/data" >"$work/chdb.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do
  grep -q '^listening on ' "$work/chdb.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/chdb.log" >&2; exit 1; }
  sleep 0.1
done
port=$(sed -n 's/^listening on //p' "$work/chdb.log")
[ -n "$port" ] || { echo "chdb_http.py did not start:" >&2; cat "$work/chdb.log" >&2; exit 1; }

log "warehouse tests against $(head -n 1 "$work/chdb.log") on 127.0.0.1:$port"
# This rebuilds the test binary (about three minutes in CI): with `--test it` cargo resolves
# features for abx-origin alone, not as `cargo test --workspace` did just before, whether or
# not `--workspace` is given. Running the executable that `cargo test --workspace --no-run
# --message-format=json` names would avoid it.
ABX_TEST_CLICKHOUSE_URL="http://127.0.0.1:$port" cargo test --workspace --test it --locked -- warehouse
