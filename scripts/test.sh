#!/usr/bin/env bash
# Runs every test of abx on this machine, installing what they need first (idempotent).
# With ABX_REQUIRE_ALL=1 (as in CI) tests that need an external service fail instead of
# skipping when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

ensure_rust_targets
ensure_postgres
ensure_nats
ensure_clickhouse
drop_stale_test_databases

log "workspace tests"
cargo test --workspace --locked
export ABX_WORKSPACE_TESTED=1

bash scripts/test-warehouse-current.sh

log "abx-core builds for wasm32-unknown-unknown"
cargo build -p abx-core --target wasm32-unknown-unknown --locked

bash scripts/test-api-fuzz.sh
bash scripts/test-console.sh
bash scripts/test-wasm.sh
bash scripts/test-edge.sh
bash scripts/test-python.sh
bash scripts/test-e2e.sh

log "all tests passed"
