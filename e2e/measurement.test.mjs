// Scenario 2 of e2e/README.md: a simulated population with known true effects sends its
// exposures and metric events three ways (the browser package's beacons from a page in
// Chromium, the edge's /abx/events, and straight to the origin). The results find the true
// lift, do not flag the null, and the guardrail monitor pauses the harmful experiment, after
// which the edge and the page stop assigning it. Then the seed's experiment, created from
// its own body, is paused by its p95 latency guardrail when the treatment adds 30 ms to every
// request, and the edge and the page stop assigning it too.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { ADMIN_KEY, REPO, missingPieces, openPage, pool, sleep, startEdge, startOrigin, startSite, tempDir } from './lib.mjs';

const UNITS = 15_000;
const skip = missingPieces() ?? false;

/** Deterministic uniform numbers in [0, 1) per (unit, purpose). */
function uniform(unit, purpose) {
  let h = 2166136261;
  for (const ch of `${unit}/${purpose}`) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
  // `^` yields a signed 32-bit integer: `>>> 0` keeps every step unsigned.
  h = (h ^ (h >>> 15)) >>> 0;
  h = Math.imul(h, 0x2c1b3c6d) >>> 0;
  h = (h ^ (h >>> 12)) >>> 0;
  return h / 2 ** 32;
}

/**
 * The truth. Metric events belong to units, not experiments, so each metric has one cause:
 * purchases convert at 10%, 15% for units in `lift`'s treatment (a +50% relative lift);
 * `null_effect` changes nothing; crashes happen to 1% of units, 8% in `harmful`'s treatment.
 */
const TRUTH = {
  purchase: { experiment: 'lift', control: 0.1, treatment: 0.15 },
  crash: { experiment: 'harmful', control: 0.01, treatment: 0.08 },
};
const EXPERIMENTS = ['lift', 'null_effect', 'harmful'];

let origin;
let sdk;
let publicKey;
let edge;
let site;
let browser;
const ids = {};

before(async () => {
  if (skip) return;
  // The guardrail monitor looks every second here (a minute by default).
  origin = await startOrigin({ args: ['--guardrail-interval', '1'] });
  sdk = await origin.sdkKey();
  publicKey = await origin.publicKey();
  const create = (path, body) => origin.create(path, body);
  await create('/api/v1/metrics', { key: 'purchase', kind: 'conversion', event_type: 'purchase' });
  await create('/api/v1/metrics', { key: 'crash', kind: 'conversion', event_type: 'crash', direction: 'decrease' });
  for (const key of EXPERIMENTS) {
    const e = await create('/api/v1/experiments', {
      key,
      primary_metric: 'purchase',
      guardrail_metrics: key === 'harmful' ? ['crash'] : [],
      // Assignments are salted with the experiment's id, new in every run, so each run is a
      // new random draw: at alpha 0.001 a false positive on the null (or a miss of the lift,
      // about nine standard errors away) is rarer than one run in a thousand.
      analysis: { mode: 'sequential', alpha: 0.001 },
      variants: [{ name: 'control', weight: 50 }, { name: 'treatment', weight: 50 }],
    });
    ids[key] = e.id;
    await create(`/api/v1/experiments/${e.id}/start`, {});
  }
  // The edge has a server key of its own; the page below, like any browser, the sdk key.
  edge = await startEdge({ originUrl: origin.url, sdkKey: await origin.serverKey(), publicKey });
  site = await startSite(origin.url, tempDir('measurement-site'));
  browser = await openPage(site);
});

after(async () => {
  await browser?.close();
  await site?.close();
  await edge?.stop();
  await origin?.cleanup();
});

/** The metric events a unit produces, given its variant in each experiment. */
function outcomes(unit, variant) {
  const events = [];
  for (const [metric, truth] of Object.entries(TRUTH)) {
    // An unassigned unit (e.g. after the guardrail paused `harmful`) converts at the base rate.
    const rate = variant[truth.experiment] === 'treatment' ? truth.treatment : truth.control;
    if (uniform(unit, metric) < rate) events.push(metric);
  }
  return events;
}

async function results(key) {
  return (await origin.call('GET', `/api/v1/experiments/${ids[key]}/results`)).body;
}

const exposed = (r) => Object.values(r.variants).reduce((sum, v) => sum + v.impressions, 0);

test('true effects are found through beacons, the edge and the origin; the harmful experiment is paused everywhere', { skip, timeout: 600_000 }, async () => {
  const units = Array.from({ length: UNITS }, (_, i) => `m-user-${i}`);
  const third = Math.ceil(UNITS / 3);
  const paths = { browser: units.slice(0, third), edge: units.slice(third, 2 * third), origin: units.slice(2 * third) };
  const keys = EXPERIMENTS;
  // Units that purchase, over all paths: the results are read once all of them are counted,
  // so that a batch still on its way cannot skew the estimate.
  let purchases = 0;

  // 1. The page: visits of 100 users each. The package assigns (logging exposures), the page
  // tracks conversions, and then the visit ends, so the queue hands its batches to
  // navigator.sendBeacon (through the site to the origin), as a page being left does.
  await browser.page.evaluate((o) => window.connect(o), { sdkKey: sdk, publicKey });
  let beacons = 0;
  for (let start = 0; start < paths.browser.length; start += 100) {
    const visit = paths.browser.slice(start, start + 100);
    const assigned = {};
    for (const key of keys) assigned[key] = await browser.page.evaluate(({ key, units }) => window.assign(key, units), { key, units: visit });
    const byMetric = {};
    visit.forEach((unit, i) => {
      const variant = Object.fromEntries(keys.map((k) => [k, assigned[k][i]]));
      for (const metric of outcomes(unit, variant)) (byMetric[metric] ??= []).push(unit);
      purchases += outcomes(unit, variant).includes('purchase') ? 1 : 0;
    });
    for (const [metric, list] of Object.entries(byMetric)) await browser.page.evaluate(({ metric, list }) => window.track(metric, list), { metric, list });
    const left = await browser.page.evaluate(() => window.leave());
    assert.equal(left.pending, 0, 'leaving hands every queued event to the browser');
    beacons += left.beacons;
    // A beacon's body is limited to 64 KB in flight; let the previous visit's leave.
    await sleep(50);
  }
  assert.ok(beacons > 0, 'the page used sendBeacon');

  // 2. The edge: its assignment endpoint, then its beacon endpoint, which forwards.
  await pool(paths.edge, 16, async (unit) => {
    const assigned = await (await fetch(edge.url('edge', `/abx/assignments?user_id=${unit}`))).json();
    const variant = Object.fromEntries(keys.map((k) => [k, assigned.experiments[k].variant]));
    const now = Date.now();
    // Only assigned units are exposed (the guardrail may already have paused `harmful`).
    const events = keys.filter((k) => variant[k]).map((k) => ({ event_id: randomUUID(), kind: 'exposure', unit, experiment_id: ids[k], variant: variant[k], timestamp: now }));
    for (const metric of outcomes(unit, variant)) events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: metric, value: 1, timestamp: now + 1 });
    purchases += outcomes(unit, variant).includes('purchase') ? 1 : 0;
    const reply = await fetch(edge.url('edge', '/abx/events'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ events }) });
    assert.equal(reply.status, 202, await reply.text());
  });

  // 3. Straight to the origin, as a server-side integration does.
  const direct = [];
  await pool(paths.origin, 16, async (unit) => {
    const assigned = await origin.call('POST', '/api/v1/evaluate', { context: { user_id: unit } }, sdk);
    const variant = Object.fromEntries(keys.map((k) => [k, assigned.body.experiments[k].variant]));
    const now = Date.now();
    direct.push(...keys.filter((k) => variant[k]).map((k) => ({ event_id: randomUUID(), kind: 'exposure', unit, experiment_id: ids[k], variant: variant[k], timestamp: now })));
    for (const metric of outcomes(unit, variant)) direct.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: metric, value: 1, timestamp: now + 1 });
    purchases += outcomes(unit, variant).includes('purchase') ? 1 : 0;
  });
  for (let i = 0; i < direct.length; i += 1_000) {
    const reply = await origin.call('POST', '/api/v1/events', { events: direct.slice(i, i + 1_000) }, sdk);
    assert.equal(reply.status, 202, JSON.stringify(reply.body));
  }

  // Every unit of every path is counted once in every experiment, however it arrived.
  const deadline = Date.now() + 120_000;
  for (const key of ['lift', 'null_effect']) {
    for (;;) {
      const r = await results(key);
      if (exposed(r) === UNITS) break;
      assert.ok(Date.now() < deadline, `${key}: ${exposed(r)} of ${UNITS} units counted`);
      await sleep(250);
    }
  }

  const converted = (r) => Object.values(r.variants).reduce((sum, v) => sum + (v.metrics.purchase?.count ?? 0), 0);
  for (;;) {
    const counted = converted(await results('lift'));
    if (counted === purchases) break;
    assert.ok(counted < purchases && Date.now() < deadline, `lift: ${counted} of ${purchases} purchases counted`);
    await sleep(250);
  }

  const purchase = (r) => r.metrics.find((m) => m.metric === 'purchase').comparisons[0];
  const lift = purchase(await results('lift'));
  assert.equal(lift.significant, true, `the +50% lift is found: ${JSON.stringify(lift)}`);
  // The relative standard error is about 0.06 here: 0.25 to 0.75 is the truth ± 4 of them.
  assert.ok(lift.relative.estimate > 0.25 && lift.relative.estimate < 0.75, `the estimate is near the true +50%: ${JSON.stringify(lift.relative)}`);
  assert.ok(lift.relative.ci[0] > 0, `the interval excludes zero: ${JSON.stringify(lift.relative)}`);
  const nothing = purchase(await results('null_effect'));
  assert.equal(nothing.significant, false, `the null is not flagged: ${JSON.stringify(nothing)}`);

  // The guardrail monitor pauses the harmful experiment on its own.
  for (;;) {
    const e = (await origin.call('GET', `/api/v1/experiments/${ids.harmful}`)).body;
    if (e.status === 'paused') {
      assert.match(e.status_reason, /crash/);
      break;
    }
    assert.ok(Date.now() < deadline, `the harmful experiment is still ${e.status}`);
    await sleep(250);
  }
  // The edge stops assigning it within its refresh interval (1 s here) ...
  const edgeDeadline = Date.now() + 10_000;
  for (;;) {
    const got = (await (await fetch(edge.url('edge', '/abx/assignments?user_id=m-user-1'))).json()).experiments.harmful;
    if (got.reason === 'not_running') break;
    assert.ok(Date.now() < edgeDeadline, `the edge still assigns harmful: ${JSON.stringify(got)}`);
    await sleep(200);
  }
  // ... and so does the page once it refreshes (every 60 s by default; here on demand).
  await browser.page.evaluate(() => window.refresh());
  assert.deepEqual(await browser.page.evaluate(() => window.detail('harmful', { user_id: 'm-user-1' })), 'null/not_running');
  assert.deepEqual(browser.page.errors, []);
});

/** A standard normal draw per (unit, purpose) (Box–Muller on two uniforms). */
function normal(unit, purpose) {
  const u = Math.max(uniform(unit, `${purpose}/u`), 2 ** -32);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform(unit, `${purpose}/v`));
}

// Issue 27: the seed's POST /api/v1/experiments body, verbatim.
const SEED_BODY = readFileSync(join(REPO, 'origin', 'tests', 'seed_experiment.json'), 'utf8');

test("the seed's experiment, created verbatim, is paused by its p95 latency guardrail; the edge and the page stop assigning it", { skip, timeout: 300_000 }, async () => {
  const create = (path, body) => origin.create(path, body);
  await create('/api/v1/layers', { key: 'checkout_ui' });
  await create('/api/v1/metrics', { key: 'checkout_conversion_rate', kind: 'conversion', event_type: 'checkout' });
  await create('/api/v1/metrics', { key: 'crash_rate', kind: 'conversion', event_type: 'crash', direction: 'decrease' });
  await create('/api/v1/metrics', { key: 'p95_latency', kind: 'quantile', quantile: 0.95, event_type: 'latency_ms', direction: 'decrease' });
  const reply = await fetch(`${origin.url}/api/v1/experiments`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: SEED_BODY,
  });
  const text = await reply.text();
  assert.equal(reply.status, 201, text);
  const seeded = JSON.parse(text);
  assert.equal(seeded.key, 'checkout_button_color');
  await create(`/api/v1/experiments/${seeded.id}/start`, {});
  const key = seeded.key;

  // 12,000 users; a fifth are admitted. Each exposed user makes 1–20 requests around a level
  // of its own, and the treatment adds 30 ms to every request.
  const users = Array.from({ length: 12_000 }, (_, i) => `seed-user-${i}`);
  const events = [];
  const exposedUsers = [];
  await pool(users, 16, async (unit) => {
    const assigned = await origin.call('POST', '/api/v1/evaluate', { context: { user_id: unit } }, sdk);
    const variant = assigned.body.experiments[key]?.variant;
    if (!variant) return;
    exposedUsers.push(unit);
    const now = Date.now();
    events.push({ event_id: randomUUID(), kind: 'exposure', unit, experiment_id: seeded.id, variant, timestamp: now });
    const level = 60 * Math.exp(0.3 * normal(unit, 'level'));
    const requests = 1 + Math.floor(uniform(unit, 'requests') * 20);
    for (let r = 0; r < requests; r += 1) {
      const ms = level * Math.exp(0.2 * normal(unit, `request-${r}`)) + (variant === 'treatment' ? 30 : 0);
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'latency_ms', value: ms, timestamp: now + 1 + r });
    }
  });
  assert.ok(exposedUsers.length > 1_800 && exposedUsers.length < 3_000, `about a fifth admitted: ${exposedUsers.length}`);
  // Before any event arrives, the edge (once its snapshot is refreshed: it answers from the
  // one it has and refreshes behind the request) assigns an admitted user as the origin did.
  const someone = exposedUsers[0];
  const edgeAnswer = async () => (await (await fetch(edge.url('edge', `/abx/assignments?user_id=${someone}`))).json()).experiments[key];
  const caughtUp = Date.now() + 10_000;
  for (;;) {
    const got = await edgeAnswer();
    if (got?.reason === 'assigned') break;
    assert.ok(Date.now() < caughtUp, `the edge does not assign ${key} yet: ${JSON.stringify(got)}`);
    await sleep(200);
  }
  // So does the page.
  const inPage = () => browser.page.evaluate(({ key, unit }) => window.detail(key, { user_id: unit }), { key, unit: someone });
  await browser.page.evaluate(() => window.refresh());
  assert.match(await inPage(), /^(control|treatment)\/assigned$/);
  for (let i = 0; i < events.length; i += 2_000) {
    const sent = await origin.call('POST', '/api/v1/events', { events: events.slice(i, i + 2_000) }, sdk);
    assert.equal(sent.status, 202, JSON.stringify(sent.body));
  }
  // The guardrail monitor (every second here) pauses it, naming the latency guardrail.
  const deadline = Date.now() + 120_000;
  for (;;) {
    const e = (await origin.call('GET', `/api/v1/experiments/${seeded.id}`)).body;
    if (e.status === 'paused') {
      assert.match(e.status_reason, /p95_latency/);
      break;
    }
    assert.ok(Date.now() < deadline, `the seed's experiment is still ${e.status}`);
    await sleep(250);
  }
  const r = (await origin.call('GET', `/api/v1/experiments/${seeded.id}/results`)).body;
  const guardrail = r.guardrails.find((g) => g.metric === 'p95_latency');
  assert.equal(guardrail.status, 'alarm', JSON.stringify(guardrail));
  // The edge stops assigning it within its refresh interval (1 s here) ...
  const edgeDeadline = Date.now() + 10_000;
  for (;;) {
    const got = await edgeAnswer();
    if (got.reason === 'not_running') break;
    assert.ok(Date.now() < edgeDeadline, `the edge still assigns ${key}: ${JSON.stringify(got)}`);
    await sleep(200);
  }
  // ... and so does the page once it refreshes.
  await browser.page.evaluate(() => window.refresh());
  assert.equal(await inPage(), 'null/not_running');
  assert.deepEqual(browser.page.errors, []);
});
