#!/usr/bin/env bash
# The experiment console (origin/console/, issue 9) in headless Chromium against a real
# abx-origin: npm packages from origin/console/package-lock.json, Debian's Chromium, the debug
# origin binary (already built by `cargo test --workspace` when scripts/test.sh runs this).
#
#   bash scripts/test-console.sh                # the browser tests
#   bash scripts/test-console.sh --screenshots  # and refresh docs/screenshots/ (review the diff)
#
# Without ABX_REQUIRE_ALL, a machine where Chromium cannot be installed skips the run with a
# printed reason; with ABX_REQUIRE_ALL=1 (CI) that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

case "${1:-}" in
  "") ;;
  --screenshots) export ABX_CONSOLE_SCREENSHOTS="$PWD/docs/screenshots" ;;
  *) echo "usage: $0 [--screenshots]" >&2; exit 2 ;;
esac

if ! ensure_chromium; then
  log "SKIPPED the console tests: chromium is not installed and could not be installed (set ABX_REQUIRE_ALL=1 to make this fail)"
  exit 0
fi
ensure_npm_packages origin/console
build_workspace_executables

log "console browser tests (headless $(chromium --version 2>/dev/null | tail -n 1))"
(cd origin/console && npm test)
