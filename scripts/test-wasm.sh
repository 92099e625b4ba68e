#!/usr/bin/env bash
# The browser package and the portable WebAssembly module (wasm/, issue 6). Installs what they
# need (idempotent: the wasm-bindgen CLI into $ABX_TOOLS keyed by version, npm packages from
# wasm/js/package-lock.json, Debian's Chromium), builds both modules, then replays the
# conformance suite in Node, in headless Chromium and in wasmtime, and runs the package's tests.
#
#   bash scripts/test-wasm.sh           # the tests
#   bash scripts/test-wasm.sh --bench   # then the benchmarks recorded in docs/benchmarks.md
#
# Without ABX_REQUIRE_ALL, a machine where Chromium cannot be installed skips the browser run
# with a printed reason; with ABX_REQUIRE_ALL=1 (CI) that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

parse_bench_flag "$@"
start=$(date +%s)

ensure_rust_targets
# The CLI must be exactly the crate's version (pinned with `=` in Cargo.toml). It is installed
# without --locked: its own lockfile wants a webpki-roots version this registry lacks.
wasm_bindgen_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
ensure_cargo_tool wasm-bindgen-cli "$wasm_bindgen_version" wasm-bindgen

ensure_npm_packages wasm/js

browser=true
ensure_chromium || browser=false

log "building the WebAssembly modules (wasm/build.sh)"
bash wasm/build.sh

# Built together, Cargo would unify abx-wasm-abi's features and leak its C exports into the
# browser module (wasm/build.sh builds them apart); check that it did not happen.
node -e '
  const exports = WebAssembly.Module.exports(new WebAssembly.Module(require("fs").readFileSync(process.argv[1])));
  const leaked = exports.map((e) => e.name).filter((n) => n.startsWith("abx_"));
  if (leaked.length > 0) { console.error("C-ABI exports in the browser module:", leaked); process.exit(1); }
' wasm/js/pkg/abx_wasm_bg.wasm

log "sizes (raw / gzip -9)"
size_line() {
  printf '  %-44s %8d B  %7d B gzip\n' "$1" "$(cat "${@:2}" | wc -c)" "$(cat "${@:2}" | gzip -9 | wc -c)"
}
size_line "wasm/js/pkg/abx_wasm_bg.wasm (wasm-opt -Oz)" wasm/js/pkg/abx_wasm_bg.wasm
size_line "wasm/js/pkg/abx_wasm.js (wasm-bindgen glue)" wasm/js/pkg/abx_wasm.js
size_line "wasm/js/src/*.js (the package)" wasm/js/src/*.js
size_line "total, unminified" wasm/js/pkg/abx_wasm_bg.wasm wasm/js/pkg/abx_wasm.js wasm/js/src/*.js
# What a page downloads after a bundler: the package and glue minified into one file.
wasm/js/node_modules/.bin/esbuild wasm/js/src/index.js --bundle --minify --format=esm --platform=browser \
  --external:node:fs/promises --log-level=warning --outfile=target/abx-wasm/abx.min.js
size_line "target/abx-wasm/abx.min.js (esbuild --minify)" target/abx-wasm/abx.min.js
size_line "total, minified JS + wasm" target/abx-wasm/abx.min.js wasm/js/pkg/abx_wasm_bg.wasm
size_line "target/abx-wasm/abx_wasm_abi.wasm (-O3)" target/abx-wasm/abx_wasm_abi.wasm

log "the package's types (tsc)"
(cd wasm/js && node_modules/.bin/tsc -p tsconfig.json)

log "Node $(node --version): conformance, beacon queue, client"
(cd wasm/js && node --test test/)

log "wasmtime: conformance through the C-ABI module"
build_workspace_executables
target/debug/abx-wasmtime-host conformance target/abx-wasm/abx_wasm_abi.wasm

if [ "$browser" = true ]; then
  log "headless Chromium ($(chromium --version 2>/dev/null | tail -n 1)): conformance, connect, beacon"
  (cd wasm/js && node browser/run.js)
else
  log "SKIPPED the Chromium run: chromium is not installed and could not be installed (set ABX_REQUIRE_ALL=1 to make this fail)"
fi

if [ "$bench" = true ]; then
  log "benchmark: wasmtime host vs native abx-core (release)"
  cargo build --locked -q --release -p abx-wasmtime-host
  bench_out=$(target/release/abx-wasmtime-host bench target/abx-wasm/abx_wasm_abi.wasm)
  echo "$bench_out"
  native_us=$(echo "$bench_out" | sed -n 's/^native abx-core evaluate: \([0-9.]*\) µs$/\1/p')
  log "benchmark: Node, abx vs GrowthBook"
  (cd wasm/js && node bench/bench.js --native-us "$native_us")
fi

log "wasm tests passed in $(( $(date +%s) - start )) s"
