// Scenario 3 of e2e/README.md: the origin is killed (SIGKILL) and restarted in the middle of
// an event stream while the edge keeps assigning; no acknowledged event is lost or counted
// twice. A tampered snapshot is refused by the edge (the other runtimes refuse the same
// tampered files in admin.test.mjs). Bursts beyond the rate limit get 429 and the package
// retries them until everything is in.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { after, test } from 'node:test';

import { AbxClient, MemoryStorage, init } from '../wasm/js/src/index.js';
import { missingPieces, sleep, startEdge, startOrigin, writeSuite, tempDir } from './lib.mjs';

const skip = missingPieces() ?? false;
const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function experiment(origin, key) {
  await origin.create('/api/v1/metrics', { key: 'purchase', kind: 'conversion', event_type: 'purchase' });
  const e = await origin.create('/api/v1/experiments', { key, primary_metric: 'purchase', variants: [{ name: 'control', weight: 50 }, { name: 'treatment', weight: 50 }] });
  await origin.create(`/api/v1/experiments/${e.id}/start`, {});
  return e;
}

async function countedUnits(origin, id, want) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = (await origin.call('GET', `/api/v1/experiments/${id}/results`)).body;
    const units = Object.values(r.variants ?? {}).reduce((sum, v) => sum + v.impressions, 0);
    const conversions = Object.values(r.variants ?? {}).reduce((sum, v) => sum + v.conversions, 0);
    if (units >= want || Date.now() > deadline) return { units, conversions };
    await sleep(200);
  }
}

test('kill -9 of the origin mid-stream: the edge keeps assigning, acknowledged events are neither lost nor doubled', { skip, timeout: 300_000 }, async () => {
  const origin = await startOrigin();
  cleanups.push(() => origin.cleanup());
  const sdk = await origin.sdkKey();
  const e = await experiment(origin, 'resilience');
  const edge = await startEdge({ originUrl: origin.url, sdkKey: sdk, publicKey: await origin.publicKey() });
  cleanups.push(() => edge.stop());

  // The edge has served traffic before the outage, so it holds the snapshot.
  assert.equal((await fetch(edge.url('edge', '/abx/assignments?user_id=before'))).status, 200);

  const UNITS = 3_000;
  // Each unit's exposure names the variant the origin assigns it: the origin refuses any
  // other (a forged exposure), and this test counts what it acknowledged.
  const variants = [];
  for (let u = 0; u < UNITS; u += 100) {
    variants.push(...(await Promise.all(Array.from({ length: 100 }, async (_, k) => {
      const reply = await fetch(`${origin.url}/api/v1/experiments/resilience/assignment?user_id=k-${u + k}`, { headers: { authorization: `Bearer ${sdk}` } });
      return (await reply.json()).variant;
    }))));
  }
  const batches = [];
  for (let u = 0; u < UNITS; u += 100) {
    const events = [];
    for (let i = u; i < u + 100; i++) {
      events.push({ event_id: randomUUID(), kind: 'exposure', unit: `k-${i}`, experiment_id: e.id, variant: variants[i], timestamp: Date.now() });
      events.push({ event_id: randomUUID(), kind: 'metric', unit: `k-${i}`, event_type: 'purchase', value: 1, timestamp: Date.now() + 1 });
    }
    batches.push(events);
  }
  const send = async (events) => {
    try {
      const reply = await fetch(`${origin.url}/api/v1/events`, { method: 'POST', headers: { authorization: `Bearer ${sdk}`, 'content-type': 'application/json' }, body: JSON.stringify({ events }) });
      return reply.status;
    } catch {
      return 0;
    }
  };

  const acknowledged = new Set();
  const refused = [];
  for (const [n, batch] of batches.entries()) {
    if (n === batches.length / 2) {
      await origin.kill();
      // While the origin is down, the edge answers from the snapshot it holds.
      for (let i = 0; i < 50; i++) {
        const reply = await fetch(edge.url('edge', `/abx/assignments?user_id=down-${i}`));
        assert.equal(reply.status, 200);
        assert.equal((await reply.json()).experiments.resilience.reason, 'assigned');
      }
    }
    if (n === batches.length / 2 + 3) await origin.start();
    const status = await send(batch);
    if (status === 202) batch.forEach((event) => acknowledged.add(event.event_id));
    else refused.push(batch);
  }
  assert.ok(refused.length >= 3, `the origin was down for ${refused.length} batches`);
  // The client retries what was not acknowledged, and (a lost answer looks the same) resends
  // some that were: idempotency keeps the counts exact.
  for (const batch of [...refused, ...batches.slice(0, 5)]) assert.equal(await send(batch), 202);

  const counted = await countedUnits(origin, e.id, UNITS);
  assert.deepEqual(counted, { units: UNITS, conversions: UNITS });
  assert.equal(acknowledged.size, (batches.length - refused.length) * 200);
});

test('a tampered snapshot is refused by the edge, which keeps no snapshot rather than a forged one', { skip, timeout: 60_000 }, async () => {
  const origin = await startOrigin();
  cleanups.push(() => origin.cleanup());
  const sdk = await origin.sdkKey();
  await experiment(origin, 'tamper_target');
  const publicKey = await origin.publicKey();
  const genuine = Buffer.from(await (await fetch(`${origin.url}/api/v1/snapshot`, { headers: { authorization: `Bearer ${sdk}` } })).arrayBuffer());
  const { tampered } = writeSuite(tempDir('tamper'), { snapshot: genuine, publicKey, cases: [] });

  // A man in the middle between the edge and the origin serves one forged file after another.
  let forged = tampered['tampered_resealed.abxs'];
  const mitm = createServer((request, response) => {
    if (request.url.startsWith('/api/v1/snapshot')) response.writeHead(200, { 'content-type': 'application/vnd.abx.snapshot', etag: `"forged-${forged.length}-${forged[forged.length - 1]}"` }).end(forged);
    else response.writeHead(404).end();
  });
  await new Promise((r) => mitm.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => mitm.close(r)));
  const edge = await startEdge({ originUrl: `http://127.0.0.1:${mitm.address().port}`, sdkKey: sdk, publicKey, ttlSeconds: 0.2 });
  cleanups.push(() => edge.stop());

  for (const [file, code] of [['tampered_resealed.abxs', 'bad_signature'], ['tampered_signature.abxs', 'bad_signature'], ['tampered_truncated.abxs', 'truncated']]) {
    forged = tampered[file];
    await sleep(300);
    const reply = await fetch(edge.url('edge', '/abx/assignments?user_id=u1'));
    assert.equal(reply.status, 503, `${file}: the edge must not assign from a forged snapshot`);
    const status = await (await fetch(edge.url('edge', '/abx/status'))).json();
    assert.equal(status.snapshot, null, file);
    assert.equal(status.last_error?.code, code, `${file}: ${JSON.stringify(status.last_error)}`);
  }
  // The genuine file is accepted once the edge tries again (it backs off after failures).
  forged = genuine;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const reply = await fetch(edge.url('edge', '/abx/assignments?user_id=u1'));
    if (reply.status === 200) {
      assert.equal((await reply.json()).experiments.tamper_target.reason, 'assigned');
      break;
    }
    assert.ok(Date.now() < deadline, `the genuine snapshot was not taken: ${reply.status}`);
    await sleep(200);
  }
});

test('bursts beyond the rate limit get 429 with Retry-After, and the package retries until all are in', { skip, timeout: 120_000 }, async () => {
  // Ten requests a second per sdk key.
  const origin = await startOrigin({ env: { ABX_SDK_RATE_LIMIT: '10' } });
  cleanups.push(() => origin.cleanup());
  const sdk = await origin.sdkKey();
  const e = await experiment(origin, 'burst');
  await init();
  const statuses = [];
  const recordingFetch = async (url, options) => {
    const reply = await fetch(url, options);
    statuses.push([reply.status, reply.headers.get('retry-after')]);
    return reply;
  };
  const client = await AbxClient.connect({
    origin: origin.url, sdkKey: sdk, publicKey: await origin.publicKey(), stream: false, refreshIntervalMs: 0,
    storage: new MemoryStorage(), fetch: recordingFetch,
    // Small batches, so that a burst is many requests.
    events: { maxBodyBytes: 2_000, flushIntervalMs: 50, retryBaseMs: 100, retryMaxMs: 2_000 },
  });
  const UNITS = 600;
  for (let i = 0; i < UNITS; i++) {
    const unit = { user_id: `burst-${i}` };
    client.variant('burst', unit);
    client.track('purchase', 1, unit);
  }
  const deadline = Date.now() + 90_000;
  while (client.queue.pending.length > 0 || client.queue.inFlight.size > 0) {
    assert.ok(Date.now() < deadline, `${client.queue.pending.length} events still queued`);
    await client.flush();
    await sleep(20);
  }
  client.close();
  const limited = statuses.filter(([status]) => status === 429);
  assert.ok(limited.length > 0, `the burst was never limited: ${JSON.stringify(statuses.slice(0, 20))}`);
  assert.ok(limited.every(([, retryAfter]) => retryAfter !== null), '429 answers carry Retry-After');
  assert.deepEqual(await countedUnits(origin, e.id, UNITS), { units: UNITS, conversions: UNITS });
});
