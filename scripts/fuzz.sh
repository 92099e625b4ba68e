#!/usr/bin/env bash
# Runs every cargo-fuzz target for the given number of seconds (default 60), seeded with
# the golden snapshots. libFuzzer needs a nightly toolchain; without one this says so and
# stops (the same parsers are also covered on stable by core/tests/properties.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh
seconds=${1:-60}

if ! have_nightly; then
  log "fuzzing skipped: no nightly toolchain on this machine (rustup toolchain list)"
  exit 0
fi
ensure_cargo_tool cargo-fuzz 0.13.2 cargo-fuzz --locked

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cp snapshots/golden/*.abxs "$corpus/"
cd core
for target in snapshot context; do
  log "fuzzing $target for ${seconds}s"
  mkdir -p "$corpus/$target"
  [ "$target" = snapshot ] && cp "$corpus"/*.abxs "$corpus/$target/"
  if ! cargo +nightly fuzz run "$target" "$corpus/$target" -- -max_total_time="$seconds" >"$corpus/$target.log" 2>&1; then
    tail -40 "$corpus/$target.log" >&2
    echo "fuzz target $target failed; the input is under core/fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^Done' "$corpus/$target.log"
done
