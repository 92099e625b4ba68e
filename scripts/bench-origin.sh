#!/usr/bin/env bash
# The origin's benchmarks (docs/benchmarks.md, "abx-origin"): each part starts a release
# origin on a fresh SQLite database in a temporary directory and prints its figures.
#
#   bash scripts/bench-origin.sh assign    # issue 3: assignment endpoint (wrk at saturation, then a bounded load), publish time, 1,000 experiments
#   bash scripts/bench-origin.sh ingest    # issue 4: events/s acknowledged, ack latency, pipeline lag
#   bash scripts/bench-origin.sh results   # issue 5: results of 10 metrics over 10M events
#   bash scripts/bench-origin.sh warehouse # issues 10, 30: rollups in ClickHouse over 100M events, full and incremental
#
# The load generators run on the same two cores as the origin, so the figures are lower
# bounds of what the origin does on a machine of its own.
#
# Environment: ABX_BENCH_RATE, ABX_BENCH_SECONDS and ABX_BENCH_IN_FLIGHT set the offered
# rate (events/s, default 100000), length (default 30 s) and requests in flight (default 16)
# of `ingest`; ABX_BENCH_PROPERTIES=1 gives every event properties (exposures: platform and
# country, the experiment's two dimensions) and adds a metric filtered on them;
# ABX_BENCH_LATENCY=1 gives metric events values spread like latencies (20–420 ms), and
# ABX_BENCH_QUANTILE=1 (with it) adds a p95 quantile metric on them as a guardrail;
# ABX_BENCH_NATS_URL (e.g. nats://127.0.0.1:4222) sends the events through a JetStream stream
# of the run's own (deleted afterwards) instead of straight into the event log, and prints
# nats-server's CPU time (ABX_NATS_STREAMS=4 spreads them over four streams); with ABX_BENCH_COLLECTOR_ONLY=1 as well, the origin only collects
# (no loader, no pipeline), which measures the collector and the stream alone;
# ABX_BENCH_CLICKHOUSE_URL (e.g. http://127.0.0.1:8123; needs ABX_BENCH_NATS_URL) loads the
# stream into a ClickHouse database of the run's own (dropped afterwards) and computes
# results there; `warehouse` needs both and writes its 100M events straight into ClickHouse;
# ABX_BENCH_BIN runs that origin binary instead of building this checkout's (to compare
# builds in one sitting); RUST_LOG is passed to the origin (default warn; for the
# pipeline's per-batch timings: warn,abx_origin_pipeline::attribution=debug).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

part=${1:-}
case "$part" in
  assign | ingest | results | warehouse) ;;
  *) echo "usage: $0 assign|ingest|results|warehouse" >&2; exit 2 ;;
esac

bin=${ABX_BENCH_BIN:-target/release/abx-origin}
[ -n "${ABX_BENCH_BIN:-}" ] || cargo build --release --locked -p abx-origin
# The load generators (tools/load), the same whichever origin binary is measured.
cargo build --release --locked -p abx-load
load=target/release/abx-load
admin=abx_admin_bench_key_0123456789abcdef
dir=$(mktemp -d)
port=18191
url=http://127.0.0.1:$port
stream= drain=()
if [ -n "${ABX_BENCH_NATS_URL:-}" ]; then
  stream=ABX_BENCH_$$
  export ABX_NATS_URL=$ABX_BENCH_NATS_URL ABX_NATS_STREAM=$stream ABX_NATS_SUBJECT_PREFIX=abx_bench_$$
  if [ -n "${ABX_BENCH_COLLECTOR_ONLY:-}" ]; then
    export ABX_NO_PIPELINE=1
    drain=(--drain-timeout 0)
  fi
fi
warehouse_db=
if [ -n "${ABX_BENCH_CLICKHOUSE_URL:-}" ]; then
  warehouse_db=abx_bench_$$
  export ABX_CLICKHOUSE_URL=$ABX_BENCH_CLICKHOUSE_URL ABX_CLICKHOUSE_DATABASE=$warehouse_db
fi
if [ "$part" = warehouse ] && [ -z "$warehouse_db" ]; then
  echo "warehouse needs ABX_BENCH_NATS_URL and ABX_BENCH_CLICKHOUSE_URL" >&2; exit 2
fi
clickhouse() { curl -sfS "$ABX_BENCH_CLICKHOUSE_URL" --data-binary "$1"; }
# utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat).
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# The generator plants each unit's variant (u mod 2) rather than asking the snapshot, so the
# exposure check is off: with it, half its exposures would be refused as forged.
# The load comes from this one address: the per-address caps are lifted like the rate limits.
ABX_BOOTSTRAP_ADMIN_KEY=$admin ABX_ADMIN_RATE_LIMIT=1000000 ABX_SDK_RATE_LIMIT=10000000 RUST_LOG=${RUST_LOG:-warn} \
  ABX_MAX_CONCURRENT_REQUESTS_PER_CLIENT=1000000 ABX_MAX_CONNECTIONS_PER_CLIENT=1000000 \
  ABX_VERIFY_EXPOSURES=false "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" --guardrail-interval 3600 &
origin=$!
# Deletes the run's streams through the JetStream API (core NATS protocol, no client needed).
delete_streams() {
  python3 - "$ABX_BENCH_NATS_URL" "$stream" "${ABX_NATS_STREAMS:-1}" <<'PY'
import socket, sys
host, port = sys.argv[1].removeprefix("nats://").split(":")
with socket.create_connection((host, int(port)), timeout=5) as s:
    s.recv(4096)
    s.sendall(b"CONNECT {}\r\nSUB _INBOX.abx_bench 1\r\n")
    # The log's further streams ({stream}_1, …; ABX_NATS_STREAMS) and the dead letters.
    for name in [sys.argv[2], sys.argv[2] + "_DEAD"] + [f"{sys.argv[2]}_{k}" for k in range(1, int(sys.argv[3]))]:
        s.sendall(f"PUB $JS.API.STREAM.DELETE.{name} _INBOX.abx_bench 0\r\n\r\n".encode())
        reply = b""
        while b"success" not in reply and b"error" not in reply:
            reply += s.recv(4096)
PY
}
trap 'kill $origin 2>/dev/null; wait $origin 2>/dev/null; rm -rf "$dir"; [ -z "$stream" ] || delete_streams; [ -z "$warehouse_db" ] || clickhouse "DROP DATABASE IF EXISTS $warehouse_db"' EXIT
for _ in $(seq 100); do curl -sf "$url/api/v1/health" >/dev/null && break; sleep 0.1; done

# One API call with the admin key; prints the JSON answer.
api() {
  curl -sf -X "$1" "$url/api/v1$2" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
sdk=$(api POST /keys '{"name":"bench","role":"sdk"}' | json_field secret)

case "$part" in
assign)
  command -v wrk >/dev/null || apt_install wrk
  log "1,000 running experiments (10 layers of 100) and 200 flags"
  python3 - "$url" "$admin" <<'PY'
import json, sys, urllib.request
url, key = sys.argv[1], sys.argv[2]
def call(method, path, body):
    request = urllib.request.Request(f"{url}/api/v1{path}", method=method, data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))
call("POST", "/metrics", {"key": "conversion", "kind": "conversion", "event_type": "conversion"})
for layer in range(10):
    call("POST", "/layers", {"key": f"layer_{layer}"})
for i in range(1000):
    body = {"key": f"exp_{i}", "layer": f"layer_{i % 10}", "traffic_percent": 1, "primary_metric": "conversion",
            "variants": [{"name": "control", "weight": 50, "config": {"v": 0}}, {"name": "treatment", "weight": 50, "config": {"v": 1}}]}
    if i % 4 == 0:
        body["targeting"] = {"attr": "country", "op": "in", "value": ["US", "CA", "DE"]}
    e = call("POST", "/experiments", body)
    call("POST", f"/experiments/{e['id']}/start", {})
for i in range(200):
    call("POST", "/flags", {"key": f"flag_{i}", "default_value": False, "rules": [{"rollout_percent": i % 100, "value": True}]})
PY
  version=$(curl -sf "$url/api/v1/snapshot" -H "Authorization: Bearer $sdk" -o /dev/null -D - | awk -F': ' 'tolower($1)=="x-abx-snapshot-version" {print $2}' | tr -d '\r')
  log "snapshot version $version; GET /api/v1/experiments/exp_N/assignment under wrk (2 threads, 64 connections, 20 s)"
  script=$(mktemp)
  cat >"$script" <<LUA
counter = 0
request = function()
  counter = counter + 1
  local path = "/api/v1/experiments/exp_" .. (counter % 1000) .. "/assignment?user_id=user-" .. counter .. "&country=US"
  return wrk.format("GET", path, { ["Authorization"] = "Bearer $sdk" })
end
LUA
  wrk -t2 -c64 -d20s --latency -s "$script" "$url" | sed -n '/Thread Stats/,$p'
  rm -f "$script"
  log "GET /api/v1/experiments/exp_N/assignment at a bounded load: 20,000 requests/s on schedule for 20 s, 64 connections (abx-load assign)"
  "$load" assign --url "$url" --key "$sdk" --rate 20000 --seconds 20 --connections 64 --experiments 1000
  log "publish time at 1,000 experiments: 40 flag toggles, then 40 experiment pauses/resumes (each commits and publishes a snapshot)"
  python3 - "$url" "$admin" <<'PY'
import json, sys, time, urllib.request
url, key = sys.argv[1], sys.argv[2]
def timed(label, paths):
    times = []
    for path in paths:
        request = urllib.request.Request(f"{url}/api/v1{path}", method="POST", data=b"{}",
                                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        start = time.perf_counter()
        urllib.request.urlopen(request).read()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(f"{label}: median {times[len(times)//2]:.1f} ms, p90 {times[int(len(times)*0.9)]:.1f} ms, max {times[-1]:.1f} ms (n={len(times)})")
timed("flag toggle + publish", [f"/flags/flag_7/{'disable' if i % 2 == 0 else 'enable'}" for i in range(40)])
timed("experiment pause/resume + publish", [f"/experiments/exp_{i // 2}/{'pause' if i % 2 == 0 else 'resume'}" for i in range(40)])
PY
  ;;
ingest)
  api POST /metrics '{"key":"conversion","kind":"conversion","event_type":"conversion"}' >/dev/null
  experiment='{"key":"bench","primary_metric":"conversion","variants":[{"name":"control","weight":50},{"name":"treatment","weight":50}]}'
  properties=()
  if [ -n "${ABX_BENCH_PROPERTIES:-}" ]; then
    properties=(--properties)
    api POST /metrics '{"key":"usd_conversion","kind":"conversion","event_type":"conversion","filter":{"all":[{"attr":"currency","op":"eq","value":"USD"},{"attr":"items","op":"gte","value":2}]}}' >/dev/null
    experiment='{"key":"bench","primary_metric":"conversion","secondary_metrics":["usd_conversion"],"dimensions":["platform","country"],"variants":[{"name":"control","weight":50},{"name":"treatment","weight":50}]}'
  fi
  if [ -n "${ABX_BENCH_LATENCY:-}" ]; then
    properties+=(--latency-values)
  fi
  if [ -n "${ABX_BENCH_QUANTILE:-}" ]; then
    api POST /metrics '{"key":"p95","kind":"quantile","quantile":0.95,"event_type":"conversion","direction":"decrease"}' >/dev/null
    experiment=$(python3 -c 'import json, sys; e = json.loads(sys.argv[1]); e["guardrail_metrics"] = ["p95"]; print(json.dumps(e))' "$experiment")
  fi
  id=$(api POST /experiments "$experiment" | json_field id)
  api POST "/experiments/$id/start" '{}' >/dev/null
  rate=${ABX_BENCH_RATE:-100000} events=$((${ABX_BENCH_RATE:-100000} * ${ABX_BENCH_SECONDS:-30}))
  in_flight=${ABX_BENCH_IN_FLIGHT:-16}
  log "abx-load ingest: $events events offered at $rate/s, 500 per request, $in_flight in flight, 500k units"
  nats=$( [ -z "$stream" ] || pgrep -o -x nats-server || true)
  [ -z "$nats" ] || nats_before=$(cpu_seconds "$nats")
  ch=$( [ -z "$warehouse_db" ] || pgrep -o -f clickhouse-server || true)
  [ -z "$ch" ] || ch_before=$(cpu_seconds "$ch")
  /usr/bin/time -f "load generator CPU time: %U s user, %S s system" "$load" ingest --url "$url" --key "$admin" --experiment-id "$id" --rate "$rate" --events "$events" --batch 500 --concurrency "$in_flight" --units 500000 "${properties[@]}" "${drain[@]}"
  echo "origin CPU time for the whole run: $(cpu_seconds "$origin") s"
  if [ -z "$stream" ]; then
    # The event log's file (with its WAL, checkpointed by then) per event sent.
    log_bytes=$(du -cb "$dir"/*-events.db* | tail -n 1 | cut -f 1)
    awk -v b="$log_bytes" -v n="$events" 'BEGIN { printf "event log on disk: %d bytes, %.0f bytes per event\n", b, b / n }'
  fi
  [ -z "$nats" ] || awk -v a="$nats_before" -v b="$(cpu_seconds "$nats")" 'BEGIN { printf "nats-server CPU time during the run: %.1f s\n", b - a }'
  [ -z "$ch" ] || awk -v a="$ch_before" -v b="$(cpu_seconds "$ch")" 'BEGIN { printf "clickhouse-server CPU time during the run: %.1f s\n", b - a }'
  [ -z "$warehouse_db" ] || echo "events in the warehouse: $(clickhouse "SELECT (SELECT count() FROM $warehouse_db.exposures FINAL) + (SELECT count() FROM $warehouse_db.metric_events FINAL)")"
  ;;
results)
  metrics='"conversion_0"'
  for m in $(seq 0 9); do
    kind=conversion; [ $((m % 2)) = 1 ] && kind=mean
    api POST /metrics "{\"key\":\"conversion_$m\",\"kind\":\"$kind\",\"event_type\":\"conversion_$m\"}" >/dev/null
    [ "$m" -gt 0 ] && metrics="$metrics,\"conversion_$m\""
  done
  id=$(api POST /experiments "{\"key\":\"bench\",\"primary_metric\":\"conversion_0\",\"secondary_metrics\":[${metrics#\"conversion_0\",}],\"variants\":[{\"name\":\"control\",\"weight\":50},{\"name\":\"treatment\",\"weight\":50}]}" | json_field id)
  api POST "/experiments/$id/start" '{}' >/dev/null
  log "10M events (1M exposures, 9M metric events over 10 event types), then GET results"
  "$load" ingest --url "$url" --key "$admin" --experiment-id "$id" --events 10000000 --batch 1000 --concurrency 8 --units 1000000 --event-types 10 --drain-timeout 900
  python3 - "$url" "$admin" "$id" <<'PY'
import json, sys, time, urllib.request
url, key, id = sys.argv[1:4]
def get(path):
    request = urllib.request.Request(f"{url}/api/v1{path}", headers={"Authorization": f"Bearer {key}"})
    start = time.perf_counter()
    body = json.load(urllib.request.urlopen(request))
    return (time.perf_counter() - start) * 1000, body
_, body = get(f"/experiments/{id}/results")
units = sum(v["impressions"] for v in body["variants"].values())
print(f"results cover {units} units and {len(body['metrics'])} metrics")
for path in (f"/experiments/{id}/results", f"/experiments/{id}/results?granularity=day"):
    times = sorted(get(path)[0] for _ in range(20))
    print(f"GET {path.split('/')[-1]}: median {times[10]:.1f} ms, p90 {times[18]:.1f} ms, max {times[-1]:.1f} ms (n=20)")
PY
  ;;
warehouse)
  # 10M users, each exposed once over 13 days; 90M metric events over three metrics
  # (conversion, revenue, sessions for revenue per session), a tenth of them before the
  # user's exposure. Written with INSERT … SELECT: the loader's own speed is `ingest`'s.
  # ABX_BENCH_NON_ADDITIVE=1 adds a capped mean and a quantile of revenue (metrics that
  # do not add up over units, computed from the units' rows at each tick).
  metrics=('"key":"conversion","kind":"conversion","event_type":"conversion"' '"key":"revenue","kind":"mean","event_type":"revenue"'
           '"key":"rps","kind":"ratio","event_type":"revenue","denominator_event_type":"session"')
  secondary='"revenue","rps"'
  if [ -n "${ABX_BENCH_NON_ADDITIVE:-}" ]; then
    metrics+=('"key":"revenue_capped","kind":"mean","event_type":"revenue","cap":{"percentile":0.99}'
              '"key":"revenue_p90","kind":"quantile","quantile":0.9,"event_type":"revenue"')
    secondary+=',"revenue_capped","revenue_p90"'
  fi
  for m in "${metrics[@]}"; do
    api POST /metrics "{$m}" >/dev/null
  done
  id=$(api POST /experiments "{\"key\":\"bench\",\"primary_metric\":\"conversion\",\"secondary_metrics\":[$secondary],\"variants\":[{\"name\":\"control\",\"weight\":50},{\"name\":\"treatment\",\"weight\":50}]}" | json_field id)
  api POST "/experiments/$id/start" '{}' >/dev/null
  t0=$(( ($(date +%s) - 14 * 86400) * 1000 ))
  log "writing 10M exposures and 90M metric events into ClickHouse"
  start=$(date +%s.%N)
  clickhouse "INSERT INTO $warehouse_db.exposures (event_id, experiment_id, variant, unit_key, ts_ms, received_ms)
      SELECT concat('x', toString(number)), '$id',
      if(cityHash64(number) % 2 = 0, 'control', 'treatment'), concat('user_id:u', toString(number)),
      $t0 + intDiv(number * 1123200000, 10000000), $t0 FROM system.numbers LIMIT 10000000"
  clickhouse "INSERT INTO $warehouse_db.metric_events (event_id, event_type, unit_key, value, ts_ms, received_ms)
      SELECT concat('m', toString(number)),
      ['conversion', 'revenue', 'session'][number % 3 + 1], concat('user_id:u', toString(intDiv(number, 9))),
      if(number % 3 = 1, toFloat64(cityHash64(number) % 10000) / 100, 1.0),
      $t0 + intDiv(intDiv(number, 9) * 1123200000, 10000000) + if(number % 10 = 0, -3600000, toInt64(cityHash64(number) % 86400000)), $t0
      FROM system.numbers LIMIT 90000000"
  awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "written in %.1f s\n", b - a }'
  clickhouse "SELECT formatReadableSize(sum(bytes)) FROM system.parts WHERE active AND database = '$warehouse_db'" | sed 's/^/on disk: /'
  python3 - "$url" "$admin" "$id" <<'PY'
import json, sys, time, urllib.request
url, key, id = sys.argv[1:4]
def get(path):
    request = urllib.request.Request(f"{url}/api/v1{path}", headers={"Authorization": f"Bearer {key}"})
    start = time.perf_counter()
    body = json.load(urllib.request.urlopen(request, timeout=3600))
    return time.perf_counter() - start, body
# Nothing is stored yet: the first request computes the rollups (as the pipeline's tick
# would) and stores them; later ones read the stored computation.
seconds, body = get(f"/experiments/{id}/results")
units = sum(v["impressions"] for v in body["variants"].values())
print(f"first GET results (computes the rollups): {seconds:.1f} s; {units} units, {len(body['metrics'])} metrics")
for path in (f"/experiments/{id}/results", f"/experiments/{id}/results?granularity=day"):
    times = sorted(get(path)[0] * 1000 for _ in range(50))
    print(f"GET {path.split('/')[-1]} from the stored rollups: median {times[25]:.1f} ms, p90 {times[45]:.1f} ms, max {times[-1]:.1f} ms")
PY
  # The repair command, then a tick after 1M new events: a day 14 of conversions, revenue
  # and sessions from 333,334 of the users (every 30th), loaded now.
  cli=(--data-dir "$dir" --clickhouse-url "$ABX_BENCH_CLICKHOUSE_URL" --clickhouse-database "$warehouse_db")
  log "full computation (abx-origin warehouse rebuild)"
  "$bin" warehouse rebuild "${cli[@]}"
  log "writing 1M new metric events (loaded now), then one tick (abx-origin warehouse tick)"
  now=$(( $(date +%s) * 1000 ))
  clickhouse "INSERT INTO $warehouse_db.metric_events (event_id, event_type, unit_key, value, ts_ms, received_ms, loaded_ms)
      SELECT concat('n', toString(number)), ['conversion', 'revenue', 'session'][number % 3 + 1],
      concat('user_id:u', toString(intDiv(number, 3) * 30)), if(number % 3 = 1, toFloat64(cityHash64(number) % 10000) / 100, 1.0),
      $now - 3600000 + number % 3600000, $now, $now FROM system.numbers LIMIT 1000000"
  "$bin" warehouse tick "${cli[@]}"
  log "a tick with nothing new"
  "$bin" warehouse tick "${cli[@]}"
  ;;
esac
