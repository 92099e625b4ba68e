// `node bench/bench.js [--native-us N]` (after wasm/build.sh): evaluates every experiment and
// flag of snapshots/golden/realistic_1000.abxs for one user through the package, and the
// GrowthBook JavaScript SDK on an equivalent payload (bench/growthbook.js) in the same run.
// With --native-us (abx-core's figure from the same machine and run), prints ratios to native.
//
// Each figure is measured in five separate Node processes and reported as their median with
// the range: on this machine a whole process sometimes runs about 1.5× slower than the next
// one (JavaScript and WebAssembly alike, so not V8's tiering), and a single process would
// report whichever mode it happened to get.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { GrowthBook } from '@growthbook/growthbook';

import { AbxClient, init } from '../src/index.js';
import { growthbookFeatures } from './growthbook.js';

const NOW_MS = 1_760_000_000_000;
// The user of core/benches/assign.rs.
const USER = {
  user_id: '8f14e45f-ceea-467f-a0e6-0a1b2c3d4e5f',
  country: 'US',
  platform: 'ios',
  app_version: '2.4.1',
  plan: 'pro',
  age: 34,
};

const PROCESSES = 5;
const nativeArg = process.argv.indexOf('--native-us');
const nativeUs = nativeArg > 0 ? Number(process.argv[nativeArg + 1]) : null;

/** Median µs per call over 7 rounds of about 0.3 s. */
function measure(call) {
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < 300) {
    call();
    n++;
  }
  const perRound = Math.max(1, Math.round((n * 300) / (performance.now() - start)));
  const rounds = [];
  for (let r = 0; r < 7; r++) {
    const t = performance.now();
    for (let i = 0; i < perRound; i++) call();
    rounds.push(((performance.now() - t) * 1000) / perRound);
  }
  rounds.sort((a, b) => a - b);
  return rounds[3];
}

const root = new URL('../../../snapshots/golden/', import.meta.url);
const bytes = new Uint8Array(readFileSync(new URL('realistic_1000.abxs', root)));
const twin = JSON.parse(readFileSync(new URL('realistic_1000.json', root), 'utf8'));

await init();
const client = AbxClient.fromSnapshot(bytes);
const payload = growthbookFeatures(twin);
const payloadJson = JSON.stringify(payload);
const gb = new GrowthBook({ attributes: USER, features: payload.features });
const featureKeys = Object.keys(payload.features);

// Both do real work: count the experiments that assign this user a variant.
const abxAssigned = Object.values(client.evaluate(USER, { nowMs: NOW_MS }).experiments).filter((e) => e.variant !== null).length;
const gbAssigned = twin.experiments.filter((e) => gb.evalFeature(e.key).source === 'experiment').length;

/** One process's figures (µs), printed as JSON for the parent. */
function measureAll() {
  const oneKey = twin.experiments[42].key;
  return {
    oneKey,
    abxAssigned,
    gbAssigned,
    packed: measure(() => client.snapshot.evaluatePacked(USER, NOW_MS)),
    full: measure(() => client.evaluate(USER, { nowMs: NOW_MS })),
    single: measure(() => client.variant(oneKey, USER, { nowMs: NOW_MS })),
    growthbook: measure(() => {
      for (const key of featureKeys) gb.evalFeature(key);
    }),
    loadAbx: measure(() => AbxClient.fromSnapshot(bytes).close()),
    loadGb: measure(() => new GrowthBook({ attributes: USER, features: JSON.parse(payloadJson).features })),
  };
}

if (process.argv.includes('--child')) {
  console.log(JSON.stringify(measureAll()));
  process.exit(0);
}

const runs = [];
for (let i = 0; i < PROCESSES; i++) {
  const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--child'], { encoding: 'utf8' });
  runs.push(JSON.parse(out));
}
/** The median of one figure over the processes. */
const median = (name) => runs.map((r) => r[name]).sort((a, b) => a - b)[Math.floor(PROCESSES / 2)];
const range = (name) => {
  const values = runs.map((r) => r[name]);
  return `${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)}`;
};
const fmt = (us) => `${us.toFixed(2)} µs`;
const vsNative = (us) => (nativeUs ? ` (${(us / nativeUs).toFixed(2)}× native ${fmt(nativeUs)})` : '');
const line = (label, name, ratio = false) =>
  console.log(`${label}: ${fmt(median(name))}${ratio ? vsNative(median(name)) : ''}; range ${range(name)} µs`);

const [packed, full, growthbook] = [median('packed'), median('full'), median('growthbook')];
console.log(
  `node ${process.version}; ${twin.experiments.length} experiments, ${twin.flags.length} flags; assigned: abx ${runs[0].abxAssigned}, GrowthBook ${runs[0].gbAssigned}; median of ${PROCESSES} processes`,
);
line('abx evaluate all (packed words, the wasm call)', 'packed', true);
line('abx client.evaluate all (plain objects for 1,200 results)', 'full', true);
line(`abx client.variant one experiment (${runs[0].oneKey})`, 'single');
line(`GrowthBook evalFeature x${featureKeys.length}`, 'growthbook');
console.log(`ratio GrowthBook / abx: ${(growthbook / packed).toFixed(1)}× (packed), ${(growthbook / full).toFixed(1)}× (client.evaluate)`);
console.log(`load: abx fromSnapshot ${fmt(median('loadAbx'))}, GrowthBook JSON.parse + constructor ${fmt(median('loadGb'))}`);
console.log(
  `payload: abx ${bytes.length} B (gzip ${gzipSync(bytes, { level: 9 }).length} B), GrowthBook ${Buffer.byteLength(payloadJson)} B (gzip ${gzipSync(payloadJson, { level: 9 }).length} B)`,
);
