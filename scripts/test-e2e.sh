#!/usr/bin/env bash
# End-to-end journeys (e2e/, issue 8): the real origin (SQLite and PostgreSQL), the edge
# worker on workerd, the browser package in headless Chromium and in Node, and the C-ABI
# module in wasmtime, driven only through their public interfaces. Runs after
# scripts/test-wasm.sh and scripts/test-edge.sh, which build the modules it loads.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

ensure_postgres
ensure_chromium || true
ensure_npm_packages e2e
# The Python service of e2e/python.test.mjs.
ABX_PYTHON="$(ensure_python_package)/bin/python"
export ABX_PYTHON
build_workspace_executables
[ -f wasm/js/pkg/abx_wasm_bg.wasm ] && [ -f target/abx-wasm/abx_wasm_abi.wasm ] || bash wasm/build.sh
[ -f edge-worker/build/index_bg.wasm ] || bash scripts/test-edge.sh

log "end-to-end journeys (e2e/*.test.mjs)"
(cd e2e && npm test)
