// Issue 26: a split deployment, as docs/api.md ("Processes and roles") describes it: a
// collector-and-admin process, a second admin process and a pipeline process over one
// database (SQLite, then PostgreSQL), with the edge worker on workerd in front of the second
// admin. The pipeline's guardrail monitor pauses a harmful experiment; both admins serve the
// paused snapshot within the stated bound (every process follows the newest stored snapshot
// within 2 s), and the edge stops assigning within its snapshot TTL (1 s) after that.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { freshPostgres, missingPieces, pool, sleep, startEdge, startOrigin, tempDir } from './lib.mjs';

const skip = missingPieces() ?? false;
const UNITS = 3_000;
/** Every process signs with this key: a deployment has one (docs/api.md, "Signing keys"). */
const SIGNING_KEY = 'a5'.repeat(32);
/** What the processes promise (`FOLLOW_INTERVAL`), plus the edge's TTL and some slack. */
const ADMIN_BOUND_MS = 3_000;
const EDGE_BOUND_MS = ADMIN_BOUND_MS + 2_000;

for (const backend of ['sqlite', 'postgres']) {
  describe(`a split deployment on ${backend}`, { skip }, () => {
    let database;
    let front;
    let second;
    let pipeline;
    let edge;
    let experiment;
    let sdk;
    let serverKey;

    before(async () => {
      const url = backend === 'postgres'
        ? (database = freshPostgres('split'))?.url
        : `sqlite://${join(tempDir('split-sqlite'), 'abx.db')}?mode=rwc`;
      if (!url) return;
      const env = { ABX_SIGNING_KEY: SIGNING_KEY };
      // The first process creates the schema and the admin key; the others find them.
      front = await startOrigin({ databaseUrl: url, args: ['--role', 'collector,admin'], env });
      // Keys made before the other processes start are theirs at once (later ones within the
      // 10 s key refresh).
      sdk = await front.sdkKey();
      serverKey = await front.serverKey();
      second = await startOrigin({ databaseUrl: url, args: ['--role', 'admin'], env });
      pipeline = await startOrigin({ databaseUrl: url, args: ['--role', 'pipeline', '--guardrail-interval', '1'], env });
      await front.create('/api/v1/metrics', { key: 'purchase', kind: 'conversion', event_type: 'purchase' });
      await front.create('/api/v1/metrics', { key: 'crash_rate', kind: 'conversion', event_type: 'crash', direction: 'decrease' });
      experiment = await front.create('/api/v1/experiments', {
        key: 'split', primary_metric: 'purchase', guardrail_metrics: ['crash_rate'],
        variants: [{ name: 'control', weight: 50 }, { name: 'treatment', weight: 50 }],
      });
      await front.create(`/api/v1/experiments/${experiment.id}/start`, {});
      edge = await startEdge({ originUrl: second.url, sdkKey: serverKey, publicKey: await second.publicKey() });
    });

    after(async () => {
      await edge?.stop();
      for (const p of [pipeline, second, front]) await p?.cleanup();
      database?.drop();
    });

    test('the pipeline pauses a harmful experiment; both admins and the edge serve the pause within the bound', { timeout: 300_000 }, async (t) => {
      if (!front) return t.skip('PostgreSQL is unreachable (ABX_TEST_POSTGRES_URL)');
      // Before: the second admin follows the first's publications, and the edge assigns.
      const version = async (origin) => Number((await fetch(`${origin.url}/api/v1/snapshot`, { headers: { authorization: `Bearer ${sdk}` } })).headers.get('x-abx-snapshot-version'));
      const started = await version(front);
      for (let deadline = Date.now() + ADMIN_BOUND_MS; await version(second) < started;) {
        assert.ok(Date.now() < deadline, 'the second admin never served the start');
        await sleep(50);
      }
      const atEdge = async () => (await (await fetch(edge.url('edge', '/abx/assignments?user_id=probe'))).json()).experiments.split;
      for (let deadline = Date.now() + EDGE_BOUND_MS; (await atEdge())?.reason !== 'assigned';) {
        assert.ok(Date.now() < deadline, `the edge does not assign: ${JSON.stringify(await atEdge())}`);
        await sleep(100);
      }

      // Traffic through the collector: each unit exposed to the variant the origin assigns
      // it; crashes for 1% of control and 10% of treatment.
      const units = Array.from({ length: UNITS }, (_, i) => `split-${i}`);
      const events = [];
      await pool(units, 16, async (unit, i) => {
        const reply = await front.call('GET', `/api/v1/experiments/split/assignment?user_id=${unit}`, undefined, sdk);
        const variant = reply.body.variant;
        if (!variant) return;
        const now = Date.now();
        events.push({ event_id: randomUUID(), kind: 'exposure', unit, experiment_id: experiment.id, variant, timestamp: now });
        const crashes = variant === 'treatment' ? i % 10 === 0 : i % 100 === 0;
        if (crashes) events.push({ event_id: randomUUID(), kind: 'metric', unit, event_type: 'crash', timestamp: now + 1 });
      });
      for (let i = 0; i < events.length; i += 1_000) {
        const reply = await front.call('POST', '/api/v1/events', { events: events.slice(i, i + 1_000) }, sdk);
        assert.equal(reply.status, 202, JSON.stringify(reply.body));
      }

      // The pipeline process rolls the events up and its monitor pauses the experiment,
      // storing the paused snapshot; the status is in the shared database at once.
      for (let deadline = Date.now() + 120_000; ;) {
        const e = (await second.call('GET', `/api/v1/experiments/${experiment.id}`)).body;
        if (e.status === 'paused') {
          assert.match(e.status_reason, /crash/);
          break;
        }
        assert.ok(Date.now() < deadline, `the experiment is still ${e.status}`);
        await sleep(100);
      }
      const pausedAt = Date.now();
      for (const [name, origin] of [['the first admin', front], ['the second admin', second]]) {
        for (;;) {
          const reply = await origin.call('GET', '/api/v1/experiments/split/assignment?user_id=probe', undefined, sdk);
          if (reply.body.reason === 'not_running') break;
          assert.ok(Date.now() - pausedAt < ADMIN_BOUND_MS, `${name} still assigns: ${JSON.stringify(reply.body)}`);
          await sleep(20);
        }
        assert.ok(await version(origin) > started, `${name} serves a newer snapshot`);
      }
      const adminsMs = Date.now() - pausedAt;
      while ((await atEdge())?.reason !== 'not_running') {
        assert.ok(Date.now() - pausedAt < EDGE_BOUND_MS, `the edge still assigns: ${JSON.stringify(await atEdge())}`);
        await sleep(50);
      }
      t.diagnostic(`pause seen: admins within ${adminsMs} ms, the edge within ${Date.now() - pausedAt} ms of the status change`);
    });
  });
}
