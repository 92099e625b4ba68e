// A real abx-origin for the browser tests: the debug binary (cargo build -p abx-origin) on a
// free loopback port with a fresh data directory, and a small client for its API.

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../', import.meta.url));
export const ADMIN_KEY = 'abx_admin_console_test_key_000001';

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export class Origin {
  constructor(base, child, dir) {
    this.base = base;
    this.child = child;
    this.dir = dir;
    this.log = [];
  }

  /** Starts the binary and waits until /health answers. */
  static async start() {
    const binary = process.env.ABX_ORIGIN_BIN ?? join(root, 'target/debug/abx-origin');
    const dir = mkdtempSync(join(tmpdir(), 'abx-console-'));
    const port = await freePort();
    const child = spawn(
      binary,
      // Generous rate limits: seeding sends thousands of requests with one key, all of them
      // from this one address. The guardrail monitor is slowed down so that it never pauses
      // an experiment mid-test.
      ['serve', '--data-dir', dir, '--listen', `127.0.0.1:${port}`, '--admin-rate-limit', '100000', '--sdk-rate-limit', '100000', '--guardrail-interval', '3600'],
      { env: { ...process.env, ABX_BOOTSTRAP_ADMIN_KEY: ADMIN_KEY, RUST_LOG: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const origin = new Origin(`http://127.0.0.1:${port}`, child, dir);
    for (const stream of [child.stdout, child.stderr]) stream.on('data', (d) => origin.log.push(String(d)));
    const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + 30_000;
    for (;;) {
      const early = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 100))]);
      if (early !== undefined) throw new Error(`abx-origin exited with ${early}:\n${origin.log.join('')}`);
      try {
        const reply = await fetch(`${origin.base}/api/v1/health`);
        if (reply.ok) return origin;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new Error(`abx-origin did not start:\n${origin.log.join('')}`);
    }
  }

  async stop() {
    if (this.child.exitCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGTERM');
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** One API call; returns {status, body}. */
  async call(method, path, body, key = ADMIN_KEY) {
    const headers = { Authorization: `Bearer ${key}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const reply = await fetch(`${this.base}/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await reply.text();
    return { status: reply.status, body: text ? JSON.parse(text) : null };
  }

  /** A call that must succeed. */
  async ok(method, path, body, key) {
    const reply = await this.call(method, path, body, key);
    if (reply.status >= 300) throw new Error(`${method} ${path}: ${reply.status} ${JSON.stringify(reply.body)}`);
    return reply.body;
  }

  get(path, key) {
    return this.ok('GET', path, undefined, key);
  }

  post(path, body = {}, key) {
    return this.ok('POST', path, body, key);
  }

  async key(role) {
    return (await this.post('/keys', { name: `console-test-${role}`, role })).secret;
  }

  /** Waits until the pipeline has consumed every logged event. */
  async drain() {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const status = await this.get('/pipeline');
      if (status.lag_events === 0) return;
      if (Date.now() > deadline) throw new Error(`the pipeline is stuck: ${JSON.stringify(status)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Deterministic numbers in [0, 1) (splitmix64 over the seed). */
export function uniform(seed) {
  let z = (BigInt(seed) + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  z ^= z >> 31n;
  return Number(z >> 11n) / 2 ** 53;
}

/**
 * `units` users of a shipped experiment that respects `holdout`: each logs the arm its
 * assignment names as an exposure to the holdout, as the SDKs do, and converts at the
 * arm's rate.
 */
async function holdoutTraffic(origin, sdk, holdout, experiment, { units, conversion }) {
  const now = Date.now();
  const events = [];
  for (let u = 0; u < units; u += 1) {
    const unit = `${holdout.key}-u${u}`;
    const reply = await origin.get(`/experiments/${experiment.key}/assignment?user_id=${unit}`, sdk);
    const arm = reply.holdout.arm;
    const at = now - (u % 5) * 86_400_000 - 3_600_000;
    events.push({ event_id: randomUUID(), kind: 'exposure', unit, experiment_id: holdout.id, variant: arm, timestamp: at });
    if (uniform(7_000_003 + u) < conversion[arm]) {
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'purchase', value: 1, timestamp: at + 60_000 });
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'revenue', value: Math.round(20 + 60 * uniform(9_000_011 + u)), timestamp: at + 60_000 });
    }
  }
  const reply = await origin.call('POST', '/events', { events }, sdk);
  if (reply.status !== 202) throw new Error(`holdout events: ${reply.status} ${JSON.stringify(reply.body)}`);
  await origin.drain();
}

/**
 * Traffic for a running experiment: each unit is assigned by the origin itself (GET
 * /experiments/{key}/assignment), exposed on one of the last `days` days, and converts,
 * spends and crashes with the given per-variant probabilities. `drop` loses a share of a
 * variant's exposures, as a broken client would (a sample ratio mismatch).
 */
export async function traffic(origin, sdk, experiment, { units, days = 5, conversion = {}, crash = {}, drop = {}, seed = 1 }) {
  const now = Date.now();
  const assignments = new Array(units);
  let next = 0;
  const worker = async () => {
    while (next < units) {
      const u = next++;
      const reply = await origin.get(`/experiments/${experiment.key}/assignment?user_id=${experiment.key}-u${u}`, sdk);
      assignments[u] = reply.variant;
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  const events = [];
  assignments.forEach((variant, u) => {
    if (!variant) return;
    const r = (k) => uniform(seed * 1_000_003 + u * 8 + k);
    if (r(0) < (drop[variant] ?? 0)) return;
    const unit = `${experiment.key}-u${u}`;
    const day = u % days;
    const at = now - (days - 1 - day) * 86_400_000 - 3_600_000;
    // Every third unit on mobile: the context attribute that drill-downs group by.
    const attributes = { platform: u % 3 === 0 ? 'mobile' : 'desktop', country: u % 2 === 0 ? 'US' : 'DE' };
    events.push({ event_id: randomUUID(), kind: 'exposure', unit, experiment_id: experiment.id, variant, timestamp: at, attributes });
    if (r(1) < (conversion[variant] ?? 0)) {
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'purchase', value: 1, timestamp: at + 60_000 });
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'revenue', value: Math.round(20 + 60 * r(2)), timestamp: at + 60_000 });
    }
    if (r(3) < (crash[variant] ?? 0)) {
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'crash', value: 1, timestamp: at + 120_000 });
    }
    // One to three page loads, with a latency that differs by unit and by request.
    for (let k = 0; k < 1 + Math.floor(3 * r(4)); k += 1) {
      const ms = Math.round(80 * (0.5 + r(5)) * (0.7 + 0.6 * r(6 + k)) * 10) / 10;
      events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'latency_ms', value: ms, timestamp: at + 1_000 + k });
    }
  });
  for (let i = 0; i < events.length; i += 2_000) {
    const reply = await origin.call('POST', '/events', { events: events.slice(i, i + 2_000) }, sdk);
    if (reply.status !== 202) throw new Error(`events: ${reply.status} ${JSON.stringify(reply.body)}`);
  }
  await origin.drain();
}

/** Metrics, a layer, a flag and two running experiments (one tripping a guardrail, one with a sample ratio mismatch) and a draft. */
export async function seed(origin, sdk) {
  // Every experiment can be broken down by country (the instance's dimension) besides its own.
  await origin.ok('PUT', '/dimensions', { dimensions: ['country'] });
  await origin.post('/metrics', { key: 'purchase', name: 'Purchase', kind: 'conversion', event_type: 'purchase', direction: 'increase' });
  await origin.post('/metrics', { key: 'revenue', name: 'Revenue per user', kind: 'mean', event_type: 'revenue', direction: 'increase' });
  await origin.post('/metrics', { key: 'crash_rate', name: 'Crash rate', kind: 'conversion', event_type: 'crash', direction: 'decrease' });
  await origin.post('/metrics', { key: 'p95_latency', name: 'Page load p95', kind: 'quantile', quantile: 0.95, event_type: 'latency_ms', direction: 'decrease' });
  await origin.post('/metrics', { key: 'revenue_capped', name: 'Revenue per user, whales capped', kind: 'mean', event_type: 'revenue', cap: { percentile: 0.99 }, direction: 'increase' });
  await origin.post('/metrics', { key: 'purchase_3d', name: 'Purchase within 3 days', kind: 'conversion', event_type: 'purchase', window: { delay_s: 0, length_s: 259_200 }, direction: 'increase' });
  await origin.post('/layers', { key: 'checkout_ui', name: 'Checkout UI', description: 'Experiments on the checkout page never share a user.' });
  await origin.post('/layers', { key: 'search', name: 'Search' });
  const ranking = await origin.post('/experiments', {
    key: 'search_ranking',
    name: 'Search ranking v2',
    hypothesis: 'Learned ranking lifts purchases',
    layer: 'checkout_ui',
    traffic_percent: 30,
    variants: [
      { name: 'control', weight: 50 },
      { name: 'treatment', weight: 50 },
    ],
    primary_metric: 'purchase',
    guardrail_metrics: ['crash_rate'],
  });
  await origin.post(`/experiments/${ranking.id}/start`);
  const onboarding = await origin.post('/experiments', {
    key: 'onboarding_flow',
    name: 'Shorter onboarding',
    variants: [
      { name: 'control', weight: 50 },
      { name: 'short', weight: 50 },
    ],
    primary_metric: 'purchase',
    analysis: { mode: 'fixed_horizon', planned_units_per_variant: 1500 },
  });
  await origin.post(`/experiments/${onboarding.id}/start`);
  await origin.post('/experiments', {
    key: 'pricing_page',
    name: 'Annual plan first',
    layer: 'search',
    traffic_percent: 50,
    variants: [
      { name: 'control', weight: 50 },
      { name: 'annual_first', weight: 50 },
    ],
    primary_metric: 'purchase',
  });
  await origin.post('/flags', {
    key: 'new_checkout',
    description: 'The redesigned checkout',
    default_value: false,
    rules: [
      { condition: { attr: 'country', op: 'in', value: ['US', 'CA'] }, rollout_percent: 25, value: true },
      { rollout_percent: 5, value: true },
    ],
  });
  await origin.post('/flags', { key: 'dark_mode', description: 'Dark theme', default_value: true, rules: [] });
  // A holdout of what a shipped navigation change did: held units convert at 6 %, released
  // ones at 14 %.
  const holdout = await origin.post('/holdouts', { key: 'everything_shipped', name: 'Everything shipped in Q4', percent: 20, metrics: ['purchase', 'revenue'] });
  const navigation = await origin.post('/experiments', {
    key: 'new_navigation',
    holdout: 'everything_shipped',
    variants: [
      { name: 'control', weight: 50 },
      { name: 'treatment', weight: 50 },
    ],
    primary_metric: 'purchase',
  });
  await origin.post(`/experiments/${navigation.id}/start`);
  await origin.post(`/experiments/${navigation.id}/complete`, { ship: 'treatment' });
  await holdoutTraffic(origin, sdk, holdout, navigation, { units: 3_000, conversion: { held: 0.06, released: 0.14 } });
  await traffic(origin, sdk, ranking, { units: 10_000, conversion: { control: 0.1, treatment: 0.1 }, crash: { control: 0.01, treatment: 0.06 }, seed: 2 });
  await traffic(origin, sdk, onboarding, { units: 4_000, conversion: { control: 0.1, short: 0.11 }, drop: { short: 0.3 }, seed: 3 });
  return { ranking, onboarding, holdout };
}

/** The experiment the browser test creates, as an API body (for seeding a dev origin). */
export const CHECKOUT = {
  key: 'checkout_button_color',
  name: 'Checkout button colour',
  hypothesis: 'A green button increases purchases by 5%',
  layer: 'checkout_ui',
  traffic_percent: 40,
  variants: [
    { name: 'control', weight: 50, config: { button_color: 'blue' } },
    { name: 'treatment', weight: 50, config: { button_color: 'green' } },
  ],
  primary_metric: 'purchase',
  secondary_metrics: ['revenue', 'p95_latency', 'revenue_capped', 'purchase_3d'],
  guardrail_metrics: ['crash_rate'],
  dimensions: ['platform'],
};

export const CHECKOUT_TRAFFIC = { units: 15_000, conversion: { control: 0.1, treatment: 0.15 }, crash: { control: 0.01, treatment: 0.01 }, seed: 4 };

// `node test/origin.js URL` seeds an origin you run yourself (a dev server) with the same data.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const origin = new Origin(process.argv[2] ?? 'http://127.0.0.1:18999', { exitCode: 0 }, null);
  const sdk = await origin.key('sdk');
  await seed(origin, sdk);
  const checkout = await origin.post('/experiments', CHECKOUT);
  await origin.post(`/experiments/${checkout.id}/start`);
  await traffic(origin, sdk, checkout, CHECKOUT_TRAFFIC);
  console.log(`seeded; viewer key: ${await origin.key('viewer')}`);
}
