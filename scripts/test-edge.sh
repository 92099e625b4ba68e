#!/usr/bin/env bash
# Builds the edge worker (edge-worker/) offline and tests it on workerd against the real
# abx-origin: unit tests, clippy for wasm32, the worker-build bundle, then the end-to-end
# suite in edge-worker/harness/edge.test.mjs. Idempotent; installs what it needs once per
# machine (tools are cached in $ABX_TOOLS). With ABX_REQUIRE_ALL=1 (CI) nothing may skip.
#
# `scripts/test-edge.sh --bench` builds the same way, then runs the benchmarks recorded in
# docs/benchmarks.md ("abx-edge-worker (issue 7)") instead of the tests.
# Environment: ABX_EDGE_SKIP_BUILD=1 reuses edge-worker/build as it is (for iterating on
# the harness).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

require_all=${ABX_REQUIRE_ALL:-0}
edge=edge-worker
bench=0
case "${1:-}" in
  --bench) bench=1 ;;
  "") ;;
  *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
esac

# Node 20+ runs workerd's npm launcher, esbuild and the test harness (node:test, fetch).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  if [ "$require_all" = 1 ]; then
    echo "the edge worker tests need Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
  fi
  echo "SKIPPED: edge worker tests (Node.js 20+ is not installed)" >&2
  exit 0
fi
# The harness reads the origin's SQLite event log with Python's sqlite3 module.
if ! python3 -c 'import sqlite3' 2>/dev/null; then
  apt_install python3
fi

ensure_rust_targets
# The wasm-bindgen CLI must be exactly the version of the wasm-bindgen crate in Cargo.lock
# (shared with wasm/); installed without --locked (see ../shared/toolchain.md).
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
ensure_cargo_tool wasm-bindgen-cli "$wasm_bindgen_version" wasm-bindgen
ensure_cargo_tool worker-build 0.8.7 worker-build --locked

# npm packages (workerd, esbuild, binaryen) pinned by package-lock.json.
ensure_npm_packages "$edge"

# scripts/test.sh has run the native unit tests with the workspace's just before (run alone,
# they would compile serde and what depends on it again, with fewer features).
if [ "$bench" = 0 ] && [ -z "${ABX_WORKSPACE_TESTED:-}" ]; then
  log "abx-edge-worker unit tests (native)"
  cargo test -p abx-edge-worker --locked
fi

if [ "$bench" = 0 ]; then
  log "clippy for wasm32 (the Workers glue only compiles there)"
  cargo clippy -p abx-edge-worker --target wasm32-unknown-unknown --locked -- -D warnings
fi

if [ "${ABX_EDGE_SKIP_BUILD:-0}" != 1 ] || [ ! -f "$edge/build/index.js" ]; then
  log "worker-build --release (offline: every tool comes from the caches above)"
  (
    cd "$edge"
    WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" \
      WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt" \
      ESBUILD_BIN="$PWD/node_modules/@esbuild/linux-x64/bin/esbuild" \
      worker-build --release
  )
fi

# Cloudflare's limit for a compressed Worker on the free plan.
size=$(cat "$edge/build/index.js" "$edge/build/index_bg.wasm" | gzip -9 | wc -c)
log "worker script: $size bytes gzip (limit 3 MiB)"
if [ "$size" -gt $((3 * 1024 * 1024)) ]; then
  echo "the worker is over the 3 MiB limit" >&2
  exit 1
fi

if [ "$bench" = 1 ]; then
  command -v wrk >/dev/null 2>&1 || apt_install wrk
  log "benchmarks (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
  node "$edge/harness/bench.mjs"
  exit 0
fi

build_workspace_executables

log "edge worker end to end on workerd"
node --test --test-concurrency=1 "$edge/harness/edge.test.mjs"

log "edge worker tests passed"
