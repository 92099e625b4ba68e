"""The cost of one call, split into its parts, in one process: the minimum of several
rounds of `timeit` (steadier than bench.py's medians on a noisy machine), for comparing two
builds of the extension. docs/benchmarks.md records its figures ("Experiments and flags found
by a hash of their key", "A dict read in place").

    python -P python/bench/calls.py [rounds]
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

import abx
from abx import _abx

# bench.py's snapshot, clock and user (`-P` leaves this folder off the path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import GOLDEN, NOW_MS, USER  # noqa: E402


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    data = (GOLDEN / "realistic_1000.abxs").read_bytes()
    twin = json.loads((GOLDEN / "realistic_1000.json").read_text())
    # bench.py's experiment, whose targeting this user fails (as 677 of the 1,000 do; 281
    # are out of traffic, 42 assign a variant), and one that assigns it a variant. Interned,
    # as the literal keys of a program's source are.
    one = sys.intern(twin["experiments"][42]["key"])
    assigned = sys.intern(twin["experiments"][43]["key"])
    # An equal key made at run time (or a literal with a `-` or a `.`, which Python does
    # not intern): found by its text.
    made = "".join(list(one))
    assert made == one and made is not one
    client = abx.Client.from_snapshot(data)
    engine = client._engine
    assert engine is not None
    prepared = _abx.Context(USER)
    # A client of a service checks every assignment against the exposures it has logged;
    # this one has no queue, so after the first call that check is all the logging costs.
    # (`one` does not target this user, so nothing is checked: that case measures a logging
    # client's own cost; the check itself is in the variant's case.)
    logging = abx.Client.from_snapshot(data)
    logging._logs_exposures = True
    cases = {
        "Python call cost (Engine.assign of an unknown key)": lambda: engine.assign("no such key", USER, NOW_MS),
        "Python call cost, Client.assign's shape (_call_cost)": lambda: client._call_cost(one, USER, now_ms=NOW_MS),
        "Engine.assign, prepared abx.Context": lambda: engine.assign(one, prepared, NOW_MS),
        "Engine.assign, dict": lambda: engine.assign(one, USER, NOW_MS),
        "Client.assign, prepared abx.Context": lambda: client.assign(one, prepared, now_ms=NOW_MS),
        "Client.assign, dict": lambda: client.assign(one, USER, now_ms=NOW_MS),
        "Client.assign, dict, a key made at run time": lambda: client.assign(made, USER, now_ms=NOW_MS),
        "Client.assign, dict, a logging client": lambda: logging.assign(one, USER, now_ms=NOW_MS),
        "Client.assign, dict, a variant assigned": lambda: client.assign(assigned, USER, now_ms=NOW_MS),
        "Client.assign, dict, a variant assigned, exposure memory checked": lambda: logging.assign(
            assigned, USER, now_ms=NOW_MS
        ),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, call in cases.items():
            seconds = min(timeit.repeat(call, number=100_000, repeat=3)) / 100_000
            best[name] = min(best[name], seconds * 1e6)
    native = {}
    for key, name in ((one, ""), (assigned, ", a variant assigned")):
        native[name] = min(engine.time_native(key, USER, NOW_MS, 200_000) for _ in range(3 * rounds)) * 1e6
        print(f"{'native abx-core (Engine.time_native)' + name:52s} {native[name]:.3f} µs")
    for name, micros in best.items():
        print(f"{name:52s} {micros:.3f} µs")
    # The goal: what a call adds to the bare call of its shape within the native
    # evaluation again (2 × native + the call cost).
    call = best["Python call cost, Client.assign's shape (_call_cost)"]
    for name, case in (("", ""), ("", ", a key made at run time"), (", a variant assigned", ", a variant assigned")):
        goal = 2 * native[name] + call
        got = best["Client.assign, dict" + case]
        print(f"{'goal for Client.assign, dict' + case:52s} {goal:.3f} µs: {got - goal:+.3f} µs")


if __name__ == "__main__":
    main()
