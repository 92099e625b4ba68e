#!/usr/bin/env python3
"""Reference values for quantile metrics: unit-level (cluster) bootstrap intervals.

Run from the repository root:

    pip install numpy scipy
    python3 stats/reference/quantile_bootstrap.py

It rewrites stats/reference/quantile.json, which stats/tests/quantile.rs reads. Each case is
two groups of units with 1-50 events each (lognormal latencies with a per-unit level, so the
events of one unit are correlated), the raw events themselves (rounded to 0.1 ms, which is what
the Rust side reads), and what a bootstrap that resamples whole units says of the
p-quantile of each group and of the difference: the standard error and the 95 % percentile
interval, and how far the delta method's standard error may be from the bootstrap's on
that one sample. The bootstrap is the reference the delta method of abx-stats must agree with; it
knows nothing of buckets or of the delta method.
"""

import json
from pathlib import Path

import numpy as np
import scipy

RNG = np.random.default_rng(20261205)
OUT = Path(__file__).with_name("quantile.json")
REPLICATES = 4000


def group(units, median_ms, sigma_unit, sigma_event, shift_ms, max_events=50):
    """Per unit, its events: a unit level times event noise, plus a fixed shift."""
    out = []
    for _ in range(units):
        events = int(RNG.integers(1, max_events + 1))
        level = median_ms * np.exp(RNG.normal(0.0, sigma_unit))
        values = level * np.exp(RNG.normal(0.0, sigma_event, events)) + shift_ms
        out.append([round(float(v), 1) for v in values])
    return out


def sample_quantile(values, p):
    """The order statistic at rank ceil(p * n): the definition abx-stats uses."""
    ordered = np.sort(values)
    rank = max(1, int(np.ceil(p * len(ordered))))
    return float(ordered[rank - 1])


def bootstrap(units, p):
    """Quantile of each replicate that resamples whole units with replacement."""
    arrays = [np.asarray(u) for u in units]
    n = len(arrays)
    estimates = np.empty(REPLICATES)
    for r in range(REPLICATES):
        chosen = RNG.integers(0, n, n)
        estimates[r] = sample_quantile(np.concatenate([arrays[i] for i in chosen]), p)
    return estimates


def case(name, p, control, treatment, se_tolerance=0.15):
    c = bootstrap(control, p)
    t = bootstrap(treatment, p)
    diff = t - c
    return {
        "name": name,
        "p": p,
        "se_tolerance": se_tolerance,
        "control": control,
        "treatment": treatment,
        "control_quantile": sample_quantile(np.concatenate(control), p),
        "treatment_quantile": sample_quantile(np.concatenate(treatment), p),
        "control_se": float(np.std(c, ddof=1)),
        "treatment_se": float(np.std(t, ddof=1)),
        "difference_se": float(np.std(diff, ddof=1)),
        "difference_ci": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))],
    }


def main():
    cases = [
        case(
            "p95 latency, treatment +30 ms",
            0.95,
            group(300, 120.0, 0.5, 0.4, 0.0),
            group(300, 120.0, 0.5, 0.4, 30.0),
        ),
        case(
            "median latency, no effect",
            0.5,
            group(200, 80.0, 0.6, 0.3, 0.0),
            group(200, 80.0, 0.6, 0.3, 0.0),
        ),
        case(
            "p99 over 800 units",
            0.99,
            group(800, 200.0, 0.5, 0.4, 0.0, max_events=20),
            group(800, 200.0, 0.5, 0.4, 10.0, max_events=20),
            # One sample's standard error of a 99th percentile is itself uncertain: over
            # repeated samples of this design the delta method's varies by 26 % (coefficient
            # of variation) around the true spread, so one sample's two estimates may part by
            # about that much.
            se_tolerance=0.35,
        ),
    ]
    OUT.write_text(
        json.dumps(
            {"numpy": np.__version__, "scipy": scipy.__version__, "replicates": REPLICATES,
             "cases": cases},
            separators=(",", ":"),
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
