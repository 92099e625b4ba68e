// Benchmarks of the built edge worker on workerd (loopback, bounded load with wrk), with the
// 1,000-experiment snapshot. Run by `scripts/test-edge.sh --bench`; prints a Markdown table and a
// JSON line with every figure.
//
// The realistic golden snapshot is unsigned; it is signed here with a throwaway Ed25519 key
// (the envelope's signed form, docs/snapshot-format.md) so the figures include signature
// verification, as in production.

import { execFile, execFileSync } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

import * as h from './lib.mjs';

const DURATION = process.env.ABX_BENCH_DURATION || '10s';
const CONNECTIONS = Number(process.env.ABX_BENCH_CONNECTIONS || 16);
const COLD_RUNS = Number(process.env.ABX_BENCH_COLD_RUNS || 7);
const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

function signSnapshot(unsigned) {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const signedBody = Buffer.from(unsigned);
  signedBody.writeUInt16LE(signedBody.readUInt16LE(6) | 1, 6);
  const signature = sign(null, signedBody, privateKey);
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
  return { bytes: Buffer.concat([signedBody, signature]), publicKeyHex: raw.toString('hex') };
}

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

// A different visitor per request, so every request evaluates a new unit.
const wrkScript = (method) => {
  const path = join(tmpdir(), `abx-edge-bench-${method}.lua`);
  writeFileSync(path, `
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("${method}", nil, { ["cookie"] = "abx_uid=bench-" .. counter .. "-" .. math.random(1, 1000000000) })
end
`);
  return path;
};

function parseWrk(output) {
  const number = (re) => { const m = output.match(re); return m ? m[1] : null; };
  const ms = (text) => {
    const m = text.match(/([\d.]+)(us|ms|s)/);
    return Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2]];
  };
  const requests = Number(number(/(\d+) requests in/));
  const errors = Number(number(/Non-2xx or 3xx responses: (\d+)/) || 0);
  return {
    requests,
    errors,
    rps: Number(number(/Requests\/sec:\s+([\d.]+)/)),
    p50_ms: ms(number(/50%\s+(\S+)/)),
    p99_ms: ms(number(/99%\s+(\S+)/)),
  };
}

/** Runs wrk without blocking this process, whose servers (upstream, fake origin) must keep
 * answering during the run. */
async function runWrk(url, pid, method = 'GET', connections = CONNECTIONS) {
  const args = ['-t1', `-c${connections}`, `-d${DURATION}`, '--latency', '-s', wrkScript(method), url];
  const before = cpuSeconds(pid);
  const output = await new Promise((resolve, reject) => {
    execFile('wrk', args, (error, stdout) => (error ? reject(error) : resolve(stdout)));
  });
  const cpu = cpuSeconds(pid) - before;
  const result = parseWrk(output);
  return { ...result, cpu_ms_per_request: (cpu * 1000) / result.requests };
}

const fake = await h.startFakeOrigin();
const upstream = await h.startUpstream('upstream', { record: false });
// A constant small page, so the proxy figures measure the worker rather than the echo.
upstream.respond('/page', { headers: { 'cache-control': 'private' }, body: '<!doctype html><p>hello</p>' });
const cache = await h.startCacheService();
const realistic = readFileSync(join(h.GOLDEN, 'realistic_1000.abxs'));
const { bytes, publicKeyHex } = signSnapshot(realistic);
fake.serve('realistic', bytes, 1000);
const bindings = {
  ABX_ORIGIN_URL: fake.url('realistic'),
  ABX_SDK_KEY: h.FAKE_SDK_KEY,
  ABX_PUBLIC_KEY: publicKeyHex,
  ABX_UPSTREAM_URL: upstream.url,
};

const results = { snapshot_bytes: bytes.length };
const build = ['index.js', 'index_bg.wasm'].map((f) => readFileSync(join(h.BUILD, f)));
results.script = {
  js_bytes: build[0].length,
  wasm_bytes: build[1].length,
  gzip_bytes_zlib_level9: gzipSync(Buffer.concat(build), { level: 9 }).length,
};

// Cold starts: a new workerd process (new isolate) per run. "ready" is spawn → socket open;
// "first request" is the first /abx/assignments, which fetches the snapshot from the
// (loopback) origin, verifies the signature, decodes, indexes and evaluates.
// Cold starts: a new workerd process (so a new isolate) per run.
// - ready: spawn → socket accepting (workerd start, module compile, isolate creation);
// - first_request: the isolate's first request (`PUT /abx/status`, a 405 without snapshot
//   work): instantiation and first-call costs;
// - snapshot_load: the first /abx/status, which fetches the snapshot from the loopback
//   origin, verifies the signature, decodes and indexes it;
// - first_assignments / next_assignments: the first and the second /abx/assignments after
//   that (evaluation of 1,200 items and a 215 KB JSON answer; the first one also runs the
//   not yet optimised wasm code);
// - snapshot_load_from_cache: the same first request with the origin down, from the Cache
//   API copy.
const timed = async (url) => {
  const t0 = performance.now();
  const response = await fetch(url, { headers: { cookie: 'abx_uid=cold-visitor' } });
  const body = await response.text();
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}`);
  return { ms: performance.now() - t0, body };
};
const cold = { ready: [], first_request: [], snapshot_load: [], first_assignments: [], next_assignments: [], snapshot_load_from_cache: [] };
for (let run = 0; run < COLD_RUNS; run++) {
  const w = await h.startWorkerd([{ name: 'cold', bindings }], { cachePort: cache.port });
  cold.ready.push(w.startupMs);
  cold.first_request.push(w.firstRequestMs);
  const status = await timed(w.url('cold', '/abx/status'));
  if (JSON.parse(status.body).snapshot?.experiments !== 1000) throw new Error('the snapshot did not load');
  cold.snapshot_load.push(status.ms);
  cold.first_assignments.push((await timed(w.url('cold', '/abx/assignments'))).ms);
  cold.next_assignments.push((await timed(w.url('cold', '/abx/assignments'))).ms);
  await h.sleep(200); // let the Cache API write finish
  await w.restart();
  fake.setDown('realistic', true);
  const fromCache = await timed(w.url('cold', '/abx/status'));
  if (JSON.parse(fromCache.body).snapshot?.source !== 'cache') throw new Error('not loaded from the Cache API copy');
  cold.snapshot_load_from_cache.push(fromCache.ms);
  fake.setDown('realistic', false);
  await w.stop();
}
// A new isolate's first request plus its snapshot load: the cold start a visitor can meet.
cold.isolate_with_snapshot = cold.first_request.map((ms, i) => ms + cold.snapshot_load[i]);
results.cold_start_ms = Object.fromEntries(Object.entries(cold).map(([k, v]) => [k, median(v)]));
results.cold_start_runs_ms = cold;

// Throughput and latency under a bounded loopback load.
const w = await h.startWorkerd([{ name: 'bench', bindings }], { cachePort: cache.port });
const warm = await fetch(w.url('bench', '/abx/assignments'));
const sample = await warm.text();
results.assignments_response_bytes = sample.length;
const pid = w.pid();
// `PUT /abx/status` is answered with a 405 before any snapshot work: what workerd and the
// JS/wasm glue cost per request on their own.
results.baseline = await runWrk(w.url('bench', '/abx/status'), pid, 'PUT');
results.assignments = await runWrk(w.url('bench', '/abx/assignments'), pid);
results.proxy = await runWrk(w.url('bench', '/page'), pid);
// One connection: the latency of a request that never queues behind another.
results.assignments_1 = await runWrk(w.url('bench', '/abx/assignments'), pid, 'GET', 1);
results.proxy_1 = await runWrk(w.url('bench', '/page'), pid, 'GET', 1);
await w.stop();
await fake.close();
await upstream.close();
await cache.close();

const row = (name, connections, r) => `| ${name} | ${connections} | ${Math.round(r.rps)} | ${r.p50_ms.toFixed(2)} | ${r.p99_ms.toFixed(2)} | ${r.cpu_ms_per_request.toFixed(3)} | ${r.errors} |`;
console.log(`| path | connections | req/s | p50 ms | p99 ms | workerd CPU ms/request | non-2xx |`);
console.log('|---|---|---|---|---|---|---|');
console.log(row('`GET /abx/assignments` (1,000 experiments + 200 flags)', CONNECTIONS, results.assignments));
console.log(row('`GET /abx/assignments`', 1, results.assignments_1));
console.log(row('proxy `GET /page` (assign, header, forward)', CONNECTIONS, results.proxy));
console.log(row('proxy `GET /page`', 1, results.proxy_1));
console.log(row('baseline: `PUT /abx/status` (405, no snapshot work)', CONNECTIONS, results.baseline));
console.log('');
console.log(`cold start (median of ${COLD_RUNS}): ${JSON.stringify(results.cold_start_ms)}`);
console.log(`script: ${JSON.stringify(results.script)}`);
console.log(JSON.stringify(results));
