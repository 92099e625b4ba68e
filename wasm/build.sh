#!/usr/bin/env bash
# Builds both WebAssembly modules:
#   wasm/js/pkg/                        the browser package's module (wasm-bindgen, wasm-opt -Oz)
#   target/abx-wasm/abx_wasm_abi.wasm   the portable C-ABI module (wasm-opt -O3)
# Needs the wasm32-unknown-unknown target, the wasm-bindgen CLI of the version in Cargo.lock on
# PATH, and wasm/js/node_modules (npm ci) for binaryen's wasm-opt. scripts/test-wasm.sh installs
# all three.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/wasm32-unknown-unknown/wasm-release
wasm_opt=wasm/js/node_modules/.bin/wasm-opt

# Two cargo invocations, not one: built together, Cargo would unify abx-wasm-abi's features and
# link its C exports into the wasm-bindgen module as well.
cargo build --locked -p abx-wasm --target wasm32-unknown-unknown --profile wasm-release
cargo rustc --locked -p abx-wasm-abi --lib --crate-type cdylib --target wasm32-unknown-unknown --profile wasm-release

rm -rf wasm/js/pkg
wasm-bindgen --target web --out-dir wasm/js/pkg "$out/abx_wasm.wasm"
"$wasm_opt" -Oz --strip-producers --strip-target-features wasm/js/pkg/abx_wasm_bg.wasm -o wasm/js/pkg/abx_wasm_bg.wasm

mkdir -p target/abx-wasm
"$wasm_opt" -O3 "$out/abx_wasm_abi.wasm" -o target/abx-wasm/abx_wasm_abi.wasm
