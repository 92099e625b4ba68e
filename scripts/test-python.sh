#!/usr/bin/env bash
# The Python package (python/, issue 29): installed with `pip install ./python` exactly as the
# README says, into a venv kept in the tool cache, then its tests: every conformance case and
# broken snapshot, the client against a stand-in origin (cache, stream, event queue, fork),
# and the OpenFeature provider through the official SDK. e2e/python.test.mjs (scripts/test-e2e.sh)
# drives it against the real origin.
#
#   bash scripts/test-python.sh           # the tests
#   bash scripts/test-python.sh --bench   # then the benchmark recorded in docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

parse_bench_flag "$@"

venv=$(ensure_python_package)

log "Python package tests"
# From the tests folder, so that `import abx` is the installed package, not the source tree.
(cd python/tests && "$venv/bin/python" -P -m pytest -q -p no:cacheprovider .)

if $bench; then
  log "Python benchmark: abx against GrowthBook, Unleash and Eppo"
  "$venv/bin/python" -P python/bench/bench.py
fi
