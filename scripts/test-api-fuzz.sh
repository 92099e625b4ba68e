#!/usr/bin/env bash
# Fuzzes the origin's HTTP API from its own OpenAPI document with schemathesis (PyPI), on
# SQLite and on PostgreSQL. Any server error, or a response that contradicts the document
# (status code, content type, body schema, headers), fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

version=4.32.5
venv="$ABX_TOOLS/schemathesis-$version"
if [ ! -x "$venv/bin/st" ]; then
  log "installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi
ensure_postgres
build_workspace_executables

key=abx_admin_api_fuzz_key_0000000001
work=$(mktemp -d)
cleanup() {
  # The two runs below, and through their own traps the origins and schemathesis they
  # started.
  kill $(jobs -p) 2>/dev/null || true
  wait
  rm -rf "$work"
}
trap cleanup EXIT

# One origin on the given database (SQLite in a directory of its own when the URL is empty)
# at the given port, and schemathesis against it; a subshell (its variables are its own),
# whose trap stops both however it ends.
fuzz() (
  name=$1 url=$2 port=$3
  args=(serve --data-dir "$work/$name" --listen "127.0.0.1:$port")
  [ -n "$url" ] && args+=(--database-url "$url")
  ABX_BOOTSTRAP_ADMIN_KEY=$key ABX_ADMIN_RATE_LIMIT=100000 RUST_LOG=warn \
    target/debug/abx-origin "${args[@]}" >"$work/$name.log" 2>&1 &
  pid=$!
  st_pid=""
  trap 'kill $st_pid "$pid" 2>/dev/null; wait 2>/dev/null' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  log "schemathesis against the origin on $name"
  mkdir -p "$work/st-$name"
  cd "$work/st-$name"
  "$venv/bin/st" run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --header "Authorization: Bearer $key" --max-examples 20 --seed 7 \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance &
  st_pid=$!
  wait "$st_pid"
  # An origin that stopped (or never listened) leaves the run's answers to something else.
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the origin on $name was not running at the end of its run" >&2
    exit 1
  fi
)

# Both databases at once: a run hardly uses the processors (on two cores each took 267-270 s
# beside the other, as long as alone), so together they take the time of one. Both ports are
# taken in one call, so that they differ.
read -r sqlite_port postgres_port < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
db="abx_fuzz_$$"
psql "$ABX_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db"
fuzz sqlite "" "$sqlite_port" >"$work/sqlite.out" 2>&1 &
sqlite_run=$!
fuzz postgres "${ABX_TEST_POSTGRES_URL%/*}/$db" "$postgres_port" >"$work/postgres.out" 2>&1 &
postgres_run=$!
failed=""
wait "$sqlite_run" || failed+=" sqlite"
wait "$postgres_run" || failed+=" postgres"
cat "$work/sqlite.out" "$work/postgres.out"
psql "$ABX_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
if [ -n "$failed" ]; then
  for name in $failed; do
    echo "--- the origin's log on $name (last 40 lines)" >&2
    tail -40 "$work/$name.log" >&2
  done
  echo "API fuzzing failed on:$failed" >&2
  exit 1
fi
log "API fuzzing found no server errors or contract violations"
