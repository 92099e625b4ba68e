"""Every conformance vector (snapshots/README.md) replayed through the Python package, as a
backend would use it: ``evaluate`` for everything at once, then ``assign`` and
``flag_detail`` one key at a time. Every broken snapshot must be refused with its code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import abx

SUITE = Path(__file__).resolve().parents[2] / "snapshots"
VECTORS = sorted(p.name for p in (SUITE / "vectors").glob("*.json") if p.name != "invalid.json")
TOTAL = {"cases": 0}


def load(name: str) -> dict:
    return json.loads((SUITE / "vectors" / name).read_text())


def replay(name: str, vectors: dict) -> list[str]:
    data = (SUITE / "golden" / vectors["snapshot"]).read_bytes()
    client = abx.Client.from_snapshot(data, public_key=vectors.get("public_key"))
    mismatches: list[str] = []
    for n, case in enumerate(vectors["cases"]):
        where = f"{name} case {n}"
        context, now_ms = case["context"], case["now_ms"]
        got = client.evaluate(context, now_ms=now_ms)
        prepared = abx.Context(context)
        if set(got.experiments) != set(case["expected"]):
            mismatches.append(f"{where}: experiments {sorted(got.experiments)}")
        for key, want in case["expected"].items():
            every = got.experiments.get(key)
            if every is None or (every.variant, every.reason) != (want["variant"], want["reason"]):
                mismatches.append(f"{where} {key}: got {every!r}, want {want}")
            # The snapshot's own key object (a program's literal keys are interned, and the
            # extension finds those by address), then the JSON's equal copy (found by value).
            one = client.assign(sys.intern(key), context, now_ms=now_ms)
            if one != every:
                mismatches.append(f"{where} {key} (single): got {one!r}, want {every!r}")
            if client.assign(key, prepared, now_ms=now_ms) != every:
                mismatches.append(f"{where} {key} (prepared context)")
        if set(got.flags) != set(case["flags"]):
            mismatches.append(f"{where}: flags {sorted(got.flags)}")
        for key, want in case["flags"].items():
            expected_value = json.loads(want["value"])
            every = got.flags.get(key)
            if every is None or (every.value, every.reason) != (expected_value, want["reason"]):
                mismatches.append(f"{where} flag {key}: got {every!r}, want {want}")
            one = client.flag_detail(sys.intern(key), context, now_ms=now_ms)
            # `==` would take 1 for True; the JSON types must match too.
            if (json.dumps(one.value), one.reason) != (json.dumps(expected_value), want["reason"]):
                mismatches.append(f"{where} flag {key} (single): got {one!r}")
            by_text = client.flag_detail(key, context, now_ms=now_ms)
            if (json.dumps(by_text.value), by_text.reason) != (json.dumps(expected_value), want["reason"]):
                mismatches.append(f"{where} flag {key} (by an equal key): got {by_text!r}")
        if len(mismatches) > 20:
            break
    TOTAL["cases"] += len(vectors["cases"])
    print(f"python: {name}: {len(vectors['cases'])} cases, {len(mismatches)} mismatches")
    return mismatches


def test_the_suite_is_complete() -> None:
    assert len(VECTORS) >= 8, VECTORS


@pytest.mark.parametrize("name", VECTORS)
def test_vectors(name: str) -> None:
    assert replay(name, load(name)) == []


def test_broken_snapshots_are_refused_with_their_codes() -> None:
    manifest = load("invalid.json")
    got = []
    for case in manifest["cases"]:
        data = (SUITE / "golden" / case["file"]).read_bytes()
        try:
            abx.Client.from_snapshot(data, public_key=case["public_key"])
            got.append((case["file"], None))
        except abx.AbxError as error:
            got.append((case["file"], error.code))
    assert got == [(case["file"], case["error"]) for case in manifest["cases"]]
    print(f"python: invalid.json: {len(got)} broken snapshots refused with their codes")


def test_every_case_was_replayed() -> None:
    # Runs last (pytest keeps file order): the vector tests above have counted their cases.
    print(f"python: {TOTAL['cases']} conformance cases")
    assert TOTAL["cases"] >= 20_000, TOTAL
