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
# The test executable `cargo test --workspace` built (scripts/test.sh runs that just before,
# so nothing is rebuilt), run directly: `cargo test --test it` would resolve features for
# abx-origin alone and rebuild it (about three minutes in CI). Cargo runs a package's tests
# from the package's folder; so does this.
executable=$(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    artifact = json.loads(line)
    target = artifact.get("target", {})
    if (artifact.get("executable") and target.get("name") == "it" and "test" in target.get("kind", [])
            and "#abx-origin@" in artifact.get("package_id", "")):
        print(artifact["executable"])
')
[ -n "$executable" ] || { echo "no abx-origin integration test executable" >&2; exit 1; }
(cd origin && ABX_TEST_CLICKHOUSE_URL="http://127.0.0.1:$port" "$executable" warehouse)
