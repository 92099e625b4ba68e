"""The Python side of e2e/python.test.mjs: a backend process using the installed `abx`
package as a service would. It assigns every user of a file to every experiment and flag,
tracks a purchase for every tenth user, flushes, and writes what it saw as JSON.

    python python_journey.py URL KEY PUBLIC_KEY CACHE_FILE USERS_JSON OUT_JSON
"""

import json
import sys

import abx


def main() -> None:
    url, key, public_key, cache, users_file, out_file = sys.argv[1:]
    with open(users_file) as f:
        job = json.load(f)
    errors = []
    client = abx.Client(
        url,
        key,
        public_key=public_key,
        cache_path=cache,
        initial_timeout=10,
        # A service logs a few exposures per request; this one logs 30,000 in a second.
        max_queue=100_000,
        on_error=lambda e: errors.append(e.code),
    )
    now_ms = job["now_ms"]
    results = []
    for context in job["contexts"]:
        row = {
            key: [a.variant, a.reason]
            for key in job["experiments"]
            for a in [client.assign(key, context, now_ms=now_ms)]
        }
        flags = {key: client.flag_detail(key, context, now_ms=now_ms) for key in job["flags"]}
        results.append({"experiments": row, "flags": {k: [d.value, d.reason] for k, d in flags.items()}})
    tracked = []
    if job.get("track"):
        for i, context in enumerate(job["contexts"]):
            if i % 10 == 0:
                tracked.append(client.track(context["user_id"], "purchase", 1.0 + i % 7))
    settled = client.close(timeout=job.get("close_timeout", 60))
    out = {
        "snapshot_version": client.snapshot_version,
        "results": results,
        "tracked": tracked,
        "settled": settled,
        "event_stats": client.event_stats,
        "errors": sorted(set(errors)),
    }
    with open(out_file, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
