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
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fuzz() {
  local name=$1 url=$2
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local args=(serve --data-dir "$work/$name" --listen "127.0.0.1:$port")
  [ -n "$url" ] && args+=(--database-url "$url")
  ABX_BOOTSTRAP_ADMIN_KEY=$key ABX_ADMIN_RATE_LIMIT=100000 RUST_LOG=warn \
    target/debug/abx-origin "${args[@]}" >"$work/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  log "schemathesis against the origin on $name"
  (cd "$work" && "$venv/bin/st" run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --header "Authorization: Bearer $key" --max-examples 20 --seed 7 \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

fuzz sqlite ""
db="abx_fuzz_$$"
psql "$ABX_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db"
fuzz postgres "${ABX_TEST_POSTGRES_URL%/*}/$db"
psql "$ABX_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
log "API fuzzing found no server errors or contract violations"
