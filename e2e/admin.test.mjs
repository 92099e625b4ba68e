// Scenarios 1 and 4 of e2e/README.md, on SQLite and on PostgreSQL: an admin builds a layered
// set of experiments, a segment and a flag through the API; 20,000 users get identical
// assignments from the origin, the edge worker on workerd, the browser package in Chromium
// and in Node, and the C-ABI module in wasmtime; layers stay exclusive and splits match their
// weights. Then the lifecycle: pause, resume, complete with a shipped variant, archive, seen
// by every runtime.

import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { AbxClient, MemoryStorage, init } from '../wasm/js/src/index.js';
import { replayInvalid, replayVectors } from '../wasm/js/test/conformance-lib.js';
import { chiSquared, freshPostgres, missingPieces, openPage, pool, replayInWasmtime, sleep, startEdge, startOrigin, startSite, tempDir, writeSuite } from './lib.mjs';

const USERS = 20_000;
const NOW = Date.UTC(2026, 10, 24, 12);
const COUNTRIES = ['US', 'CA', 'DE', 'FR', 'BR', 'IN', 'JP'];
const PLANS = ['free', 'free', 'pro', 'team'];
const skip = missingPieces() ?? false;

/** The users: deterministic attributes, so that a failure can be replayed. */
const contexts = Array.from({ length: USERS }, (_, i) => ({
  user_id: `e2e-user-${i}`,
  country: COUNTRIES[(i * 3 + 1) % COUNTRIES.length],
  plan: PLANS[(i * 13 + 1) % PLANS.length],
}));

async function ok(origin, method, path, body, key) {
  const reply = await origin.call(method, path, body, key);
  assert.ok(reply.status < 300, `${method} ${path}: ${reply.status} ${JSON.stringify(reply.body)}`);
  return reply.body;
}

/** Everything an admin sets up, through the public API only. */
async function buildConfiguration(origin) {
  await ok(origin, 'POST', '/api/v1/metrics', { key: 'purchase', kind: 'conversion', event_type: 'purchase' });
  await ok(origin, 'POST', '/api/v1/layers', { key: 'checkout', name: 'Checkout page' });
  await ok(origin, 'POST', '/api/v1/layers', { key: 'search', name: 'Search' });
  await ok(origin, 'POST', '/api/v1/segments', { key: 'paying', condition: { attr: 'plan', op: 'in', value: ['pro', 'team'] } });
  const experiments = {
    checkout_button: await ok(origin, 'POST', '/api/v1/experiments', {
      key: 'checkout_button', layer: 'checkout', traffic_percent: 50, primary_metric: 'purchase',
      variants: [{ name: 'control', weight: 50, config: { color: 'blue' } }, { name: 'treatment', weight: 50, config: { color: 'green' } }],
    }),
    checkout_copy: await ok(origin, 'POST', '/api/v1/experiments', {
      key: 'checkout_copy', layer: 'checkout', traffic_percent: 40, primary_metric: 'purchase',
      variants: [{ name: 'control', weight: 34 }, { name: 'short', weight: 33 }, { name: 'friendly', weight: 33 }],
    }),
    search_ranker: await ok(origin, 'POST', '/api/v1/experiments', {
      key: 'search_ranker', layer: 'search', traffic_percent: 100, primary_metric: 'purchase', targeting: { segment: 'paying' },
      variants: [{ name: 'control', weight: 50 }, { name: 'learned', weight: 50 }],
    }),
  };
  await ok(origin, 'POST', '/api/v1/flags', {
    key: 'new_nav', default_value: false,
    rules: [
      { condition: { attr: 'country', op: 'in', value: ['US', 'CA'] }, rollout_percent: 30, value: true },
      { rollout_percent: 10, value: true },
    ],
  });
  for (const e of Object.values(experiments)) await ok(origin, 'POST', `/api/v1/experiments/${e.id}/start`, {});
  return experiments;
}

const flagJson = (flags) => Object.fromEntries(Object.entries(flags).map(([k, f]) => [k, { value: JSON.stringify(f.value), reason: f.reason }]));
const experimentRows = (experiments) => Object.fromEntries(Object.entries(experiments).map(([k, e]) => [k, { variant: e.variant, reason: e.reason }]));

for (const backend of ['sqlite', 'postgres']) {
  describe(`admin journey and lifecycle on ${backend}`, { skip }, () => {
    let database;
    let origin;
    let sdk;
    let publicKey;
    let edge;
    let site;
    let browser;
    let experiments;
    let cases;
    const suite = tempDir(`suite-${backend}`);

    before(async () => {
      if (backend === 'postgres') {
        database = freshPostgres('admin');
        if (!database) return;
      }
      origin = await startOrigin({ databaseUrl: database?.url });
      sdk = await origin.sdkKey();
      publicKey = await origin.publicKey();
      await init();
    });

    after(async () => {
      await browser?.close();
      await site?.close();
      await edge?.stop();
      await origin?.cleanup();
      database?.drop();
      rmSync(suite, { recursive: true, force: true });
    });

    test('an admin sets up layers, a segment, experiments and a flag; the snapshot version rises', async (t) => {
      if (!origin) return t.skip('PostgreSQL is unreachable (ABX_TEST_POSTGRES_URL)');
      const before = (await ok(origin, 'POST', '/api/v1/evaluate', { context: {} }, sdk)).snapshot_version;
      experiments = await buildConfiguration(origin);
      const after = (await ok(origin, 'POST', '/api/v1/evaluate', { context: {} }, sdk)).snapshot_version;
      assert.ok(after > before, `snapshot version ${before} → ${after}`);
    });

    test(`${USERS} users get identical assignments from the origin, the edge, Chromium, Node and wasmtime`, { timeout: 600_000 }, async (t) => {
      if (!origin) return t.skip('PostgreSQL is unreachable');
      // The origin's answers are the expectation every other runtime must meet.
      cases = new Array(USERS);
      await pool(contexts, 16, async (context, i) => {
        const got = await ok(origin, 'POST', '/api/v1/evaluate', { context, now_ms: NOW }, sdk);
        cases[i] = { context, now_ms: NOW, expected: experimentRows(got.experiments), flags: flagJson(got.flags) };
      });
      // The single-experiment endpoint agrees with the all-at-once one.
      await pool(contexts.slice(0, 500), 16, async (context, i) => {
        const query = new URLSearchParams({ ...context, now_ms: String(NOW) });
        const one = await ok(origin, 'GET', `/api/v1/experiments/checkout_button/assignment?${query}`, undefined, sdk);
        assert.deepEqual([one.variant, one.reason], [cases[i].expected.checkout_button.variant, cases[i].expected.checkout_button.reason]);
      });
      const snapshotReply = await fetch(`${origin.url}/api/v1/snapshot`, { headers: { authorization: `Bearer ${sdk}` } });
      const snapshot = Buffer.from(await snapshotReply.arrayBuffer());
      const served = Number(snapshotReply.headers.get('x-abx-snapshot-version'));
      assert.equal(served, (await ok(origin, 'POST', '/api/v1/evaluate', { context: {} }, sdk)).snapshot_version, 'the suite uses the snapshot the origin evaluates with');
      writeSuite(suite, { snapshot, publicKey, cases });

      // wasmtime: the C-ABI module, and native abx-core beside it.
      const wasmtime = await replayInWasmtime(suite);
      assert.ok(wasmtime.ok, wasmtime.output.slice(-3000));
      assert.match(wasmtime.output, new RegExp(`e2e.json: ${USERS} cases, 0 with mismatches`));

      // Node: the package as a server would use it.
      const vectors = JSON.parse(readFileSync(join(suite, 'vectors', 'e2e.json'), 'utf8'));
      const node = replayVectors(AbxClient, 'e2e.json', vectors, snapshot);
      assert.deepEqual([node.cases, node.failed, node.mismatches.slice(0, 5)], [USERS, 0, []]);
      const manifest = JSON.parse(readFileSync(join(suite, 'vectors', 'invalid.json'), 'utf8'));
      const nodeInvalid = await replayInvalid(AbxClient, manifest, (file) => readFileSync(join(suite, 'golden', file)));
      assert.deepEqual(nodeInvalid.mismatches, [], 'Node refuses every tampered snapshot');

      // Chromium: the package in a page.
      site = await startSite(origin.url, suite);
      browser = await openPage(site);
      const inPage = await browser.page.evaluate(() => window.replaySuite());
      assert.deepEqual([inPage.cases, inPage.failed, inPage.mismatches], [USERS, 0, []]);
      assert.deepEqual(inPage.invalid.mismatches, [], 'Chromium refuses every tampered snapshot');

      // The edge worker on workerd, fetching the signed snapshot from this origin.
      edge = await startEdge({ originUrl: origin.url, sdkKey: sdk, publicKey });
      const mismatches = [];
      await pool(cases, 16, async (c, i) => {
        const query = new URLSearchParams({ exact: '1', now_ms: String(NOW), context: JSON.stringify(c.context) });
        const reply = await fetch(edge.url('edge', `/abx/assignments?${query}`));
        const got = await reply.json();
        if (reply.status !== 200) return mismatches.push(`user ${i}: HTTP ${reply.status} ${JSON.stringify(got)}`);
        for (const [key, want] of Object.entries(c.expected)) {
          const e = got.experiments[key];
          if (!e || e.variant !== want.variant || e.reason !== want.reason) mismatches.push(`user ${i} ${key}: got ${JSON.stringify(e)}, want ${JSON.stringify(want)}`);
        }
        if (Object.keys(got.experiments).length !== Object.keys(c.expected).length) mismatches.push(`user ${i}: ${Object.keys(got.experiments)}`);
        if (JSON.stringify(flagJson(got.flags)) !== JSON.stringify(c.flags)) mismatches.push(`user ${i}: flags ${JSON.stringify(got.flags)}`);
      });
      assert.deepEqual(mismatches.slice(0, 5), []);
      assert.deepEqual(browser.page.errors, []);
    });

    // Layer, experiment and flag salts are ids made anew in every run, so each run is a new
    // random draw: each check's threshold (p > 0.0001) fails a correct build about once in
    // ten thousand runs, while a real skew of a few percent on 20,000 users fails at once.
    test('layers are exclusive, splits match their weights, the segment and the flag rollout hold', async (t) => {
      if (!origin) return t.skip('PostgreSQL is unreachable');
      const assigned = (c, key) => c.expected[key].reason === 'assigned';
      // Mutual exclusion: nobody is in both experiments of the checkout layer.
      const both = cases.filter((c) => assigned(c, 'checkout_button') && assigned(c, 'checkout_copy'));
      assert.equal(both.length, 0);
      // Traffic: 50% and 40% of the layer's slots; the rest of the layer is free.
      const inButton = cases.filter((c) => assigned(c, 'checkout_button')).length;
      const inCopy = cases.filter((c) => assigned(c, 'checkout_copy')).length;
      for (const [n, share, what] of [[inButton, 0.5, 'checkout_button'], [inCopy, 0.4, 'checkout_copy']]) {
        const { p } = chiSquared([n, USERS - n], [share, 1 - share]);
        assert.ok(p > 1e-4, `${what}: ${n} of ${USERS} admitted, p = ${p}`);
      }
      // Weights among the admitted.
      for (const [key, weights] of Object.entries({ checkout_button: { control: 0.5, treatment: 0.5 }, checkout_copy: { control: 0.34, short: 0.33, friendly: 0.33 }, search_ranker: { control: 0.5, learned: 0.5 } })) {
        const names = Object.keys(weights);
        const counts = names.map((v) => cases.filter((c) => assigned(c, key) && c.expected[key].variant === v).length);
        const { p } = chiSquared(counts, names.map((v) => weights[v]));
        assert.ok(p > 1e-4, `${key}: ${JSON.stringify(counts)}, p = ${p}`);
      }
      // The segment: only paying users are in search_ranker, and all of them are (100% traffic).
      for (const c of cases) {
        const paying = c.context.plan !== 'free';
        assert.equal(assigned(c, 'search_ranker'), paying, JSON.stringify(c));
        if (!paying) assert.equal(c.expected.search_ranker.reason, 'not_targeted');
      }
      // The flag: 30% of US/CA users, 10% of everyone else.
      const northAmerica = cases.filter((c) => ['US', 'CA'].includes(c.context.country));
      const rest = cases.filter((c) => !['US', 'CA'].includes(c.context.country));
      for (const [group, share] of [[northAmerica, 0.3], [rest, 0.1]]) {
        const on = group.filter((c) => c.flags.new_nav.value === 'true').length;
        const { p } = chiSquared([on, group.length - on], [share, 1 - share]);
        assert.ok(p > 1e-4, `new_nav: ${on} of ${group.length} on, want ${share}, p = ${p}`);
      }
    });

    test('lifecycle: pause, resume, complete with a shipped variant, archive, as every runtime sees it', { timeout: 120_000 }, async (t) => {
      if (!origin) return t.skip('PostgreSQL is unreachable');
      const sample = cases.slice(0, 300);
      const node = await AbxClient.connect({ origin: origin.url, sdkKey: sdk, publicKey, stream: false, refreshIntervalMs: 0, storage: new MemoryStorage(), events: false });
      await browser.page.evaluate((o) => window.connect(o), { sdkKey: sdk, publicKey });

      /** Every runtime's answer for `key` over the sample, once each has the newest snapshot. */
      const everywhere = async (key) => {
        const version = (await ok(origin, 'POST', '/api/v1/evaluate', { context: {} }, sdk)).snapshot_version;
        await node.refresh();
        assert.equal(node.snapshotVersion, version);
        assert.equal(await browser.page.evaluate(() => window.refresh()), version);
        // The edge refreshes on its own (a 1 s TTL here); it must catch up without help.
        const deadline = Date.now() + 10_000;
        for (;;) {
          // Requests drive the edge's refresh (stale-while-revalidate), as real traffic does.
          await fetch(edge.url('edge', '/abx/assignments?user_id=probe'));
          const status = await (await fetch(edge.url('edge', '/abx/status'))).json();
          if (status.snapshot?.version === version) break;
          assert.ok(Date.now() < deadline, `the edge did not pick up version ${version}: ${JSON.stringify(status)}`);
          await sleep(100);
        }
        const answers = { origin: [], edge: [], node: [], chromium: [] };
        for (const c of sample) {
          const query = new URLSearchParams(c.context);
          const o = await origin.call('GET', `/api/v1/experiments/${key}/assignment?${query}`, undefined, sdk);
          answers.origin.push(o.status === 404 ? 'gone' : `${o.body.variant}/${o.body.reason}`);
          const e = (await (await fetch(edge.url('edge', `/abx/assignments?${query}`))).json()).experiments[key];
          answers.edge.push(e ? `${e.variant}/${e.reason}` : 'gone');
          const n = node.variant(key, c.context);
          answers.node.push(n.reason === 'unknown_key' ? 'gone' : `${n.variant}/${n.reason}`);
        }
        const inPage = await browser.page.evaluate(({ key, contexts }) => contexts.map((c) => window.detail(key, c)), { key, contexts: sample.map((c) => c.context) });
        answers.chromium = inPage;
        for (const runtime of ['edge', 'node', 'chromium']) assert.deepEqual(answers[runtime], answers.origin, `${runtime} disagrees with the origin about ${key}`);
        return answers.origin;
      };

      const id = experiments.checkout_copy.id;
      const running = await everywhere('checkout_copy');
      assert.ok(running.some((a) => a.endsWith('/assigned')));
      await ok(origin, 'POST', `/api/v1/experiments/${id}/pause`, {});
      assert.ok((await everywhere('checkout_copy')).every((a) => a === 'null/not_running'));
      await ok(origin, 'POST', `/api/v1/experiments/${id}/resume`, {});
      assert.deepEqual(await everywhere('checkout_copy'), running, 'resuming keeps every assignment');

      await ok(origin, 'POST', `/api/v1/experiments/${id}/complete`, { ship: 'friendly' });
      assert.ok((await everywhere('checkout_copy')).every((a) => a === 'friendly/shipped'), 'everyone receives the shipped variant');
      await ok(origin, 'POST', `/api/v1/experiments/${id}/archive`, {});
      assert.ok((await everywhere('checkout_copy')).every((a) => a === 'gone'), 'an archived experiment leaves every runtime');
      node.close();
      assert.deepEqual(browser.page.errors, []);
    });
  });
}
