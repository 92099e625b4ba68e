"""abx in Python against the Python SDKs of GrowthBook, Unleash and Eppo, in one run, on
snapshots/golden/realistic_1000.abxs (1,000 experiments, 200 flags) translated to each:

- GrowthBook: the payload of wasm/js/bench/growthbook.js (run with Node), which the
  JavaScript benchmark uses too; GrowthBook's SDKs share the payload format.
- Unleash: the toggles of core/benches/assign.rs's translation (`unleash_toggles` below),
  bootstrapped into UnleashClient (which evaluates with Unleash's Rust engine, yggdrasil).
- Eppo: `eppo_flags` below, given to eppo-server-sdk (a Rust core too) as its initial
  configuration, with polling off.
- Statsig: `statsig_specs` below, the config-spec format its servers send, given to
  statsig-python-core (a Rust core too) through a data store, with the network off.

Holdouts are left out of every translation (only abx evaluates the snapshot's holdout), and
peers' exposure logging is off (Eppo `doLog: false`, Statsig `disable_exposure_logging`).

Figures are the median of 7 rounds of about 0.3 s each, in µs per call; the native figures
are abx-core timed inside the extension (`Engine.time_native`) in the same process, and the
Python call cost is a call of `Engine.assign` with the same argument types for a key the
snapshot does not hold (argument passing, the key's failed lookup and the return, without
conversion or evaluation),
and for `Client.assign` a call of `Client._call_cost`, a method of the same shape that does
nothing.
abx is measured with the context as a dict (converted on every call) and as an `abx.Context`
prepared once (as a request that evaluates several experiments would; GrowthBook's SDK
likewise keeps the attributes in its instance). `Client.evaluate` evaluates everything
natively but builds a result object only when it is read, so it is also measured with every
answer read.

    python -P python/bench/bench.py        # after scripts/test-python.sh installed abx
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import abx
import eppo_client
from eppo_client import AssignmentLogger, ClientConfig, Configuration
from growthbook import GrowthBook
from statsig_python_core import (
    DynamicConfigEvaluationOptions,
    ExperimentEvaluationOptions,
    FeatureGateEvaluationOptions,
    Statsig,
    StatsigOptions,
    StatsigUser,
)
from statsig_python_core.data_store import DataStore, DataStoreResponse
from UnleashClient import UnleashClient as Unleash
from UnleashClient.cache import FileCache

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "snapshots" / "golden"
NOW_MS = 1_760_000_000_000
# The user of core/benches/assign.rs and wasm/js/bench/bench.js.
PEERS = [("GrowthBook", "gb"), ("Unleash", "unleash"), ("Eppo", "eppo"), ("Statsig", "statsig")]
USER = {
    "user_id": "8f14e45f-ceea-467f-a0e6-0a1b2c3d4e5f",
    "country": "US",
    "platform": "ios",
    "app_version": "2.4.1",
    "plan": "pro",
    "age": 34,
}


def measure(call: Callable[[], Any]) -> float:
    """Median µs per call over 7 rounds of about 0.3 s."""
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < 0.3:
        call()
        n += 1
    per_round = max(1, round(n * 0.3 / (time.perf_counter() - start)))
    rounds = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(per_round):
            call()
        rounds.append((time.perf_counter() - t) * 1e6 / per_round)
    return sorted(rounds)[3]


def native(engine: Any, key: str | None) -> float:
    """Median µs per native evaluation over 7 timed batches."""
    once = engine.time_native(key, USER, NOW_MS, 1000)
    iterations = max(1, int(0.3 / max(once, 1e-9)))
    return sorted(engine.time_native(key, USER, NOW_MS, iterations) * 1e6 for _ in range(7))[3]


def read_all(evaluation: abx.Evaluation) -> None:
    """Builds every answer of a (lazy) evaluation, as a caller reading them all would."""
    for assignment in evaluation.experiments.values():
        assignment.variant
    for detail in evaluation.flags.values():
        detail.value


def growthbook_payload() -> dict[str, Any]:
    script = (
        "import { readFileSync } from 'node:fs';"
        "import { growthbookFeatures } from './wasm/js/bench/growthbook.js';"
        "const twin = JSON.parse(readFileSync('snapshots/golden/realistic_1000.json', 'utf8'));"
        "process.stdout.write(JSON.stringify(growthbookFeatures(twin)));"
    )
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT, check=True, capture_output=True)
    return json.loads(out.stdout)


def attribute_tests(s: dict[str, Any], node: int) -> Iterator[tuple[str, str, Any]]:
    """The attribute tests an abx condition ANDs together (its `all` nodes and segments
    flattened), as `(attribute, op, operand)` with operand strings resolved; the realistic
    snapshot needs no other shape."""
    condition = s["conditions"][node]
    if "all" in condition:
        for child in condition["all"]:
            yield from attribute_tests(s, child)
    elif "segment" in condition:
        yield from attribute_tests(s, s["segments"][condition["segment"]]["condition"])
    elif "attr" in condition:
        attr, text = condition["attr"], s["strings"]
        operand = attr["operand"]
        if "str_list" in operand:
            value: Any = [text[i] for i in operand["str_list"]]
        elif "str" in operand:
            value = text[operand["str"]]
        else:
            value = operand["num"]
        yield s["attributes"][attr["attr"]], attr["op"], value
    else:
        raise ValueError(f"no translation needed for {condition}")


def unleash_constraints(s: dict[str, Any], node: int) -> list[dict[str, Any]]:
    constraints = []
    for name, op, value in attribute_tests(s, node):
        if op == "in":
            constraints.append({"contextName": name, "operator": "IN", "values": value})
        elif op == "eq" and isinstance(value, str):
            constraints.append({"contextName": name, "operator": "IN", "values": [value]})
        elif op == "semver_gte":
            constraints.append({"contextName": name, "operator": "SEMVER_GT", "value": value})
        elif op == "gte":
            constraints.append({"contextName": name, "operator": "NUM_GTE", "value": str(value)})
        else:
            raise ValueError(f"no Unleash equivalent needed for {op}")
    return constraints


def unleash_toggles(s: dict[str, Any]) -> dict[str, Any]:
    """core/benches/assign.rs's translation: each experiment a flexibleRollout at its traffic
    share with its targeting as constraints and its variants with JSON payloads (Unleash has
    no layers or holdouts); each flag one strategy per rule."""
    features = []
    for e in s["experiments"]:
        allocation = e["allocation"]
        if "traffic" in allocation:
            share_bp = allocation["traffic"]["bp"]
        else:
            share_bp = sum(r["end"] - r["start"] for r in allocation["layer"]["ranges"])
        constraints = [] if e["targeting"] is None else unleash_constraints(s, e["targeting"])
        previous, variants = 0, []
        for v in e["variants"]:
            variants.append(
                {
                    "name": s["strings"][v["key"]],
                    "weight": (v["threshold"] - previous) // 10,
                    "stickiness": "userId",
                    "weightType": "variable",
                    "payload": {"type": "json", "value": v["config"]},
                }
            )
            previous = v["threshold"]
        strategy = {
            "name": "flexibleRollout",
            "constraints": constraints,
            "parameters": {"rollout": str(share_bp // 100), "stickiness": "userId", "groupId": e["key"]},
        }
        features.append({"name": e["key"], "enabled": True, "strategies": [strategy], "variants": variants})
    for f in s["flags"]:
        strategies = []
        for rule in f["rules"]:
            constraints = [] if rule["condition"] is None else unleash_constraints(s, rule["condition"])
            strategies.append(
                {
                    "name": "flexibleRollout",
                    "constraints": constraints,
                    "parameters": {"rollout": str(rule["rollout_bp"] // 100), "stickiness": "userId", "groupId": f["key"]},
                }
            )
        features.append({"name": f["key"], "enabled": f["enabled"], "strategies": strategies})
    return {"version": 2, "features": features}


def eppo_conditions(s: dict[str, Any], node: int) -> list[dict[str, Any]]:
    conditions = []
    for name, op, value in attribute_tests(s, node):
        if op == "in":
            conditions.append({"attribute": name, "operator": "ONE_OF", "value": value})
        elif op == "eq" and isinstance(value, str):
            conditions.append({"attribute": name, "operator": "ONE_OF", "value": [value]})
        elif op in ("semver_gte", "gte"):
            conditions.append({"attribute": name, "operator": "GTE", "value": value})
        else:
            raise ValueError(f"no Eppo equivalent needed for {op}")
    return conditions


def eppo_rules(s: dict[str, Any], node: Any) -> dict[str, Any]:
    return {} if node is None else {"rules": [{"conditions": eppo_conditions(s, node)}]}


def eppo_flags(s: dict[str, Any]) -> dict[str, Any]:
    """The same translation in Eppo's flag configuration (UFC): each experiment a JSON flag
    whose one allocation has its targeting as a rule and one split per variant, gated by a
    traffic shard (or its layer's slot ranges, with the layer's key as salt) and a variant
    shard; each flag one allocation per rule with its rollout as a shard, then the default."""
    flags = {}
    for e in s["experiments"]:
        allocation = e["allocation"]
        if "traffic" in allocation:
            ranges = [{"start": 0, "end": allocation["traffic"]["bp"]}]
            gate = {"salt": f"{e['key']}-traffic", "ranges": ranges}
        else:
            ranges = [{"start": r["start"], "end": r["end"]} for r in allocation["layer"]["ranges"]]
            gate = {"salt": s["layers"][allocation["layer"]["layer"]]["key"], "ranges": ranges}
        previous, splits, variations = 0, [], {}
        for v in e["variants"]:
            name = s["strings"][v["key"]]
            variations[name] = {"key": name, "value": v["config"]}
            shard = {"salt": f"{e['key']}-split", "ranges": [{"start": previous, "end": v["threshold"]}]}
            splits.append({"variationKey": name, "shards": [gate, shard]})
            previous = v["threshold"]
        flags[e["key"]] = {
            "key": e["key"],
            "enabled": True,
            "variationType": "JSON",
            "variations": variations,
            "allocations": [{"key": "experiment", "splits": splits, "doLog": False, **eppo_rules(s, e["targeting"])}],
            "totalShards": 10000,
        }
    for f in s["flags"]:
        values = [f["default_value"]] + [r["value"]["json"] for r in f["rules"]]
        parsed = [json.loads(v) for v in values]
        if all(isinstance(v, bool) for v in parsed):
            kind = "BOOLEAN"
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed):
            kind = "NUMERIC"
        elif all(isinstance(v, str) for v in parsed):
            kind = "STRING"
        else:
            kind = "JSON"
        # Variations are named by their JSON text; a JSON flag's values stay JSON text.
        variations = {t: {"key": t, "value": t if kind == "JSON" else json.loads(t)} for t in values}
        allocations = []
        for i, rule in enumerate(f["rules"]):
            shard = {"salt": f"{f['key']}-{i}", "ranges": [{"start": 0, "end": rule["rollout_bp"]}]}
            split = {"variationKey": rule["value"]["json"], "shards": [shard]}
            allocations.append({"key": f"rule-{i}", "splits": [split], "doLog": False, **eppo_rules(s, rule["condition"])})
        default = {"variationKey": f["default_value"], "shards": []}
        allocations.append({"key": "default", "splits": [default], "doLog": False})
        flags[f["key"]] = {
            "key": f["key"],
            "enabled": f["enabled"],
            "variationType": kind,
            "variations": variations,
            "allocations": allocations,
            "totalShards": 10000,
        }
    return {"createdAt": "2026-12-04T00:00:00Z", "format": "SERVER", "environment": {"name": "bench"}, "flags": flags}


def statsig_targeting(s: dict[str, Any], node: int) -> list[dict[str, Any]]:
    tests = []
    for name, op, value in attribute_tests(s, node):
        if op == "in":
            operator, target = "any_case_sensitive", value
        elif op == "eq" and isinstance(value, str):
            operator, target = "any_case_sensitive", [value]
        elif op == "semver_gte":
            operator, target = "version_gte", value
        elif op == "gte":
            operator, target = "gte", value
        else:
            raise ValueError(f"no Statsig equivalent needed for {op}")
        tests.append({"type": "user_field", "field": name, "operator": operator, "targetValue": target})
    return tests


def statsig_specs(s: dict[str, Any]) -> dict[str, Any]:
    """The same translation in Statsig's config-spec format (download_config_specs v2, as its
    servers send it and statsig-python-core reads it from a data store), shaped the way
    Statsig compiles an experiment: a rule that returns the default to units outside the
    traffic share (a bucket test with the experiment's traffic salt) or outside their
    layer's slots (the layer's key as salt, the slots as a bucket list), a rule failing a
    targeting gate, then one rule per variant testing the variant bucket; each flag a gate
    (boolean values) or a dynamic config with one rule per abx rule, its rollout as pass
    percentage. Statsig buckets are per mille, so abx's basis points are divided by ten."""
    # Specs name their conditions by id in a shared map, as Statsig's servers send them; a
    # condition used twice is one entry.
    conditions: dict[str, dict[str, Any]] = {}
    ids: dict[str, str] = {}

    def condition(**fields: Any) -> str:
        spec = {"targetValue": None, "operator": None, "field": None, "additionalValues": {}, "idType": "userID"}
        spec.update(fields)
        text = json.dumps(spec, sort_keys=True)
        if text not in ids:
            ids[text] = f"c{len(ids)}"
            conditions[ids[text]] = spec
        return ids[text]

    def rule(name: str, conditions: list[str], value: Any, pass_percentage: float = 100, **extra: Any) -> dict[str, Any]:
        return {
            "name": name, "id": name, "salt": name, "groupName": name, "passPercentage": pass_percentage,
            "conditions": conditions, "returnValue": value, "idType": "userID", **extra,
        }

    def gate(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "feature_gate", "salt": name, "enabled": True, "defaultValue": False, "rules": rules,
                "idType": "userID", "entity": "feature_gate"}

    gates: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    for e in s["experiments"]:
        key, allocation = e["key"], e["allocation"]
        if "traffic" in allocation:
            outside = condition(type="user_bucket", operator="gte", targetValue=allocation["traffic"]["bp"] // 10,
                                additionalValues={"salt": f"{key}-traffic"})
        else:
            slots = [b for r in allocation["layer"]["ranges"] for b in range(r["start"] // 10, r["end"] // 10)]
            layer = s["layers"][allocation["layer"]["layer"]]["key"]
            outside = condition(type="user_bucket", operator="none", targetValue=slots, additionalValues={"salt": layer})
        rules = [rule(f"{key}-allocation", [outside], {})]
        if e["targeting"] is not None:
            targeting = f"{key}-targeting"
            gates[targeting] = gate(targeting, [rule(f"{targeting}-rule", [condition(**t) for t in statsig_targeting(s, e["targeting"])], True)])
            rules.append(rule(f"{key}-targeting-gate", [condition(type="fail_gate", targetValue=targeting)], {}))
        for v in e["variants"]:
            bucket = condition(type="user_bucket", operator="lt", targetValue=v["threshold"] // 10,
                               additionalValues={"salt": f"{key}-split"})
            rules.append(rule(f"{key}-{s['strings'][v['key']]}", [bucket], json.loads(v["config"]), isExperimentGroup=True))
        configs[key] = {"type": "dynamic_config", "salt": key, "enabled": True, "defaultValue": {}, "rules": rules,
                        "idType": "userID", "entity": "experiment", "isActive": True, "hasSharedParams": False}
    everyone = condition(type="public")
    for f in s["flags"]:
        default = json.loads(f["default_value"])
        boolean = isinstance(default, bool) and all(isinstance(json.loads(r["value"]["json"]), bool) for r in f["rules"])
        rules = []
        for i, r in enumerate(f["rules"]):
            tests = [everyone] if r["condition"] is None else [condition(**t) for t in statsig_targeting(s, r["condition"])]
            value = json.loads(r["value"]["json"])
            rules.append(rule(f"{f['key']}-{i}", tests, value if boolean else {"value": value}, r["rollout_bp"] / 100))
        if boolean:
            gates[f["key"]] = {**gate(f["key"], rules), "enabled": f["enabled"]}
        else:
            configs[f["key"]] = {"type": "dynamic_config", "salt": f["key"], "enabled": f["enabled"],
                                 "defaultValue": {"value": default}, "rules": rules, "idType": "userID",
                                 "entity": "dynamic_config"}
    return {"dynamic_configs": configs, "feature_gates": gates, "layer_configs": {}, "experiment_to_layer": {},
            "condition_map": conditions, "has_updates": True, "time": 1_764_806_400_000}


class StaticSpecs(DataStore):
    """A data store holding one config-spec response: how statsig-python-core starts
    without its servers (with `disable_network`)."""

    def __init__(self, specs: str) -> None:
        super().__init__()
        self.specs = specs

    def get(self, key: str) -> DataStoreResponse | None:
        return DataStoreResponse(result=self.specs, time=1) if "config_specs" in key else None


def start_statsig(specs: dict[str, Any]) -> Statsig:
    options = StatsigOptions(
        disable_network=True, disable_all_logging=True, data_store=StaticSpecs(json.dumps(specs)), output_log_level="error"
    )
    statsig = Statsig("secret-abx-bench", options)
    statsig.initialize().wait()
    if not statsig.get_experiment_list():
        raise RuntimeError("statsig-python-core did not take the translated specs")
    return statsig


def main() -> None:
    data = (GOLDEN / "realistic_1000.abxs").read_bytes()
    twin = json.loads((GOLDEN / "realistic_1000.json").read_text())
    experiment_keys = [e["key"] for e in twin["experiments"]]
    # Interned, as a program's literal key is when it is made of ASCII identifier characters
    # (abx finds those by address); `made_key` is an equal key made at run time.
    one_key = sys.intern(experiment_keys[42])
    made_key = "".join(list(one_key))
    assert made_key == one_key and made_key is not one_key

    client = abx.Client.from_snapshot(data)
    engine = client._engine
    assert engine is not None
    abx_assigned = sum(1 for a in client.evaluate(USER, now_ms=NOW_MS).experiments.values() if a.variant is not None)

    payload = growthbook_payload()
    gb = GrowthBook(attributes=USER, features=payload["features"])
    feature_keys = list(payload["features"])
    gb_assigned = sum(1 for k in experiment_keys if gb.eval_feature(k).source == "experiment")

    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FileCache("abx-bench", directory=cache_dir)
        cache.bootstrap_from_dict(unleash_toggles(twin))
        unleash = Unleash(
            url="http://127.0.0.1:9/api",
            app_name="abx-bench",
            disable_metrics=True,
            disable_registration=True,
            cache=cache,
        )
        unleash.initialize_client(fetch_toggles=False)
        unleash_context = {"userId": USER["user_id"], "properties": {k: str(v) for k, v in USER.items() if k != "user_id"}}
        toggle_names = [f["name"] for f in unleash_toggles(twin)["features"]]
        unleash_assigned = sum(1 for k in experiment_keys if unleash.get_variant(k, unleash_context)["enabled"])

        prepared = abx.Context(USER)
        eppo = eppo_client.init(
            ClientConfig(
                api_key="offline",
                initial_configuration=Configuration(flags_configuration=json.dumps(eppo_flags(twin)).encode()),
                poll_interval_seconds=None,
                assignment_logger=AssignmentLogger(),
            )
        )
        subject, subject_attributes = USER["user_id"], {k: v for k, v in USER.items() if k != "user_id"}
        eppo_assigned = sum(
            1
            for k in experiment_keys
            if eppo.get_json_assignment_details(k, subject, subject_attributes, {}).evaluation_details["variationKey"]
        )
        flag_keys = [f["key"] for f in twin["flags"]]
        flag_defaults = {f["key"]: json.loads(f["default_value"]) for f in twin["flags"]}

        def eppo_everything() -> None:
            for k in experiment_keys:
                eppo.get_json_assignment(k, subject, subject_attributes, {})
            for k in flag_keys:
                default = flag_defaults[k]
                if isinstance(default, bool):
                    eppo.get_boolean_assignment(k, subject, subject_attributes, default)
                elif isinstance(default, (int, float)):
                    eppo.get_numeric_assignment(k, subject, subject_attributes, float(default))
                elif isinstance(default, str):
                    eppo.get_string_assignment(k, subject, subject_attributes, default)
                else:
                    eppo.get_json_assignment(k, subject, subject_attributes, default)

        statsig = start_statsig(statsig_specs(twin))
        statsig_user = StatsigUser(user_id=USER["user_id"], custom={k: v for k, v in USER.items() if k != "user_id"})
        no_exposure = ExperimentEvaluationOptions(disable_exposure_logging=True)
        gate_options = FeatureGateEvaluationOptions(disable_exposure_logging=True)
        config_options = DynamicConfigEvaluationOptions(disable_exposure_logging=True)
        statsig_gates = set(statsig.get_feature_gate_list())
        variant_rules = {f"{e['key']}-{twin['strings'][v['key']]}" for e in twin["experiments"] for v in e["variants"]}
        statsig_assigned = sum(
            1 for k in experiment_keys if statsig.get_experiment(statsig_user, k, no_exposure).rule_id in variant_rules
        )

        def statsig_everything() -> None:
            for k in experiment_keys:
                statsig.get_experiment(statsig_user, k, no_exposure)
            for k in flag_keys:
                if k in statsig_gates:
                    statsig.check_gate(statsig_user, k, gate_options)
                else:
                    statsig.get_dynamic_config(statsig_user, k, config_options)

        figures = {
            "statsig_one": measure(lambda: statsig.get_experiment(statsig_user, one_key, no_exposure)),
            "statsig_all": measure(statsig_everything),
            "eppo_one": measure(lambda: eppo.get_json_assignment(one_key, subject, subject_attributes, {})),
            "eppo_all": measure(eppo_everything),
            "call": measure(lambda: engine.assign("no such experiment", None, NOW_MS)),
            "call_client": measure(lambda: client._call_cost(one_key, USER, now_ms=NOW_MS)),
            "engine_one_prepared": measure(lambda: engine.assign(one_key, prepared, NOW_MS)),
            "assign_one_prepared": measure(lambda: client.assign(one_key, prepared, now_ms=NOW_MS)),
            "evaluate_all_prepared": measure(lambda: client.evaluate(prepared, now_ms=NOW_MS)),
            "evaluate_read_all": measure(lambda: read_all(client.evaluate(USER, now_ms=NOW_MS))),
            "prepare": measure(lambda: abx.Context(USER)),
            "native_one": native(engine, one_key),
            "native_all": native(engine, None),
            "engine_one": measure(lambda: engine.assign(one_key, USER, NOW_MS)),
            "assign_one": measure(lambda: client.assign(one_key, USER, now_ms=NOW_MS)),
            "assign_one_made_key": measure(lambda: client.assign(made_key, USER, now_ms=NOW_MS)),
            "evaluate_all": measure(lambda: client.evaluate(USER, now_ms=NOW_MS)),
            "engine_all": measure(lambda: engine.evaluate(USER, NOW_MS)),
            "assign_each": measure(lambda: [client.assign(k, USER, now_ms=NOW_MS) for k in experiment_keys]),
            "gb_one": measure(lambda: gb.eval_feature(one_key)),
            "gb_all": measure(lambda: [gb.eval_feature(k) for k in feature_keys]),
            "unleash_one": measure(lambda: unleash.get_variant(one_key, unleash_context)),
            "unleash_all": measure(lambda: [unleash.get_variant(k, unleash_context) for k in toggle_names]),
        }
        unleash.destroy()
        statsig.shutdown().wait()

    import platform

    print(
        f"python {platform.python_version()} ({sys.implementation.name}); abx (abx-core through PyO3), "
        f"growthbook, UnleashClient, eppo-server-sdk and statsig-python-core as pinned in python/requirements-dev.txt; "
        f"{len(experiment_keys)} experiments, {len(twin['flags'])} flags; "
        f"assigned: abx {abx_assigned}, GrowthBook {gb_assigned}, Unleash {unleash_assigned}, Eppo {eppo_assigned}, "
        f"Statsig {statsig_assigned}"
    )

    def line(label: str, key: str) -> None:
        print(f"  {label:<58} {figures[key]:>10.2f} µs")

    print("one experiment for one user:")
    line("native abx-core (Evaluator::experiment, in-process)", "native_one")
    line("Python call cost (Engine.assign of an unknown key)", "call")
    line("Python call cost, Client.assign's shape (Client._call_cost)", "call_client")
    line("abx Engine.assign, prepared abx.Context (extension alone)", "engine_one_prepared")
    line("abx Client.assign, prepared abx.Context", "assign_one_prepared")
    line("abx Engine.assign, dict context (extension alone)", "engine_one")
    line("abx Client.assign, dict context", "assign_one")
    line("abx Client.assign, dict context, a key made at run time", "assign_one_made_key")
    line("abx.Context(dict) (once per request)", "prepare")
    line("GrowthBook eval_feature", "gb_one")
    line("UnleashClient get_variant", "unleash_one")
    line("eppo-server-sdk get_json_assignment", "eppo_one")
    line("statsig-python-core get_experiment", "statsig_one")
    print(f"all {len(experiment_keys)} experiments (and flags) for one user:")
    line("native abx-core (Evaluator::evaluate, in-process)", "native_all")
    line("abx Engine.evaluate (the extension alone)", "engine_all")
    line("abx Client.evaluate, dict context", "evaluate_all")
    line("abx Client.evaluate, prepared abx.Context", "evaluate_all_prepared")
    line("abx Client.evaluate, then every answer read", "evaluate_read_all")
    line(f"abx Client.assign x{len(experiment_keys)}", "assign_each")
    line(f"GrowthBook eval_feature x{len(feature_keys)}", "gb_all")
    line(f"UnleashClient get_variant x{len(toggle_names)}", "unleash_all")
    line(f"eppo-server-sdk typed assignments x{len(experiment_keys) + len(twin['flags'])}", "eppo_all")
    line(f"statsig-python-core get_experiment and check_gate x{len(experiment_keys) + len(twin['flags'])}", "statsig_all")
    # The goal: what a call adds to the bare call of its own shape within the native
    # evaluation again (Client.assign is a keyword-taking method of a Python subclass).
    goal = 2 * figures["native_one"] + figures["call"]
    client_goal = 2 * figures["native_one"] + figures["call_client"]
    print(
        f"goal: one assignment within 2x native + the call cost: "
        f"Engine.assign {goal:.2f} µs, is {figures['engine_one_prepared']:.2f} µs prepared, "
        f"{figures['engine_one']:.2f} µs from a dict; "
        f"Client.assign {client_goal:.2f} µs, is {figures['assign_one_prepared']:.2f} / {figures['assign_one']:.2f} µs"
    )
    print(
        "peers / abx: one assignment (Client.assign, dict context): "
        + ", ".join(f"{name} {figures[key + '_one'] / figures['assign_one']:.1f}x" for name, key in PEERS)
        + " (a key made at run time: "
        + ", ".join(f"{name} {figures[key + '_one'] / figures['assign_one_made_key']:.1f}x" for name, key in PEERS)
        + ")"
        + "; everything, every answer read (Client.evaluate): "
        + ", ".join(f"{name} {figures[key + '_all'] / figures['evaluate_read_all']:.1f}x" for name, key in PEERS)
    )

if __name__ == "__main__":
    main()
