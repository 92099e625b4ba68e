// End-to-end tests of the built edge worker (build/) running on workerd, against the real
// abx-origin and small loopback servers. Run by scripts/test-edge.sh:
//   node --test --test-concurrency=1 edge-worker/harness/edge.test.mjs
// Needs: `worker-build --release` output in edge-worker/build, target/debug/abx-origin,
// npm ci in edge-worker, python3 (reads the origin's SQLite event log).

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import * as h from './lib.mjs';

const vectorFiles = readdirSync(h.VECTORS).filter((f) => f.endsWith('.json') && f !== 'invalid.json').sort();
const invalidCases = JSON.parse(readFileSync(join(h.VECTORS, 'invalid.json'), 'utf8')).cases;
const signed = JSON.parse(readFileSync(join(h.VECTORS, 'signed.json'), 'utf8'));
const SIGNED_KEY = signed.public_key;

let fake;
let upstream;
let cache;
let workers; // one workerd process with a service per scenario backed by the fake origin

const unsignedFake = (name, extra = {}) => ({
  ABX_ORIGIN_URL: fake.url(name),
  ABX_SDK_KEY: h.FAKE_SDK_KEY,
  ABX_ALLOW_UNSIGNED: 'true',
  ABX_UPSTREAM_URL: upstream.url,
  ...extra,
});

before(async () => {
  fake = await h.startFakeOrigin();
  upstream = await h.startUpstream();
  cache = await h.startCacheService();
  const services = [];
  const add = async (name, bindings) => {
    services.push({ name, bindings: bindings() });
  };
  for (const file of vectorFiles) {
    const vector = JSON.parse(readFileSync(join(h.VECTORS, file), 'utf8'));
    const name = 'v_' + file.replace('.json', '');
    fake.serveFile(name, vector.snapshot);
    await add(name, () => (vector.public_key
      ? { ...unsignedFake(name), ABX_ALLOW_UNSIGNED: 'false', ABX_PUBLIC_KEY: vector.public_key }
      : unsignedFake(name)));
  }
  for (const [i, c] of invalidCases.entries()) {
    const name = `invalid_${i}`;
    fake.serveFile(name, c.file);
    await add(name, () => (c.public_key
      ? { ...unsignedFake(name), ABX_ALLOW_UNSIGNED: 'false', ABX_PUBLIC_KEY: c.public_key }
      : unsignedFake(name)));
  }
  fake.serveFile('tamper', 'signed.abxs', 1);
  await add('tamper', () => ({ ...unsignedFake('tamper'), ABX_ALLOW_UNSIGNED: 'false', ABX_PUBLIC_KEY: SIGNED_KEY, ABX_SNAPSHOT_TTL_S: '0.2' }));
  fake.serveFile('swr', 'basic.abxs', 1);
  await add('swr', () => unsignedFake('swr', { ABX_SNAPSHOT_TTL_S: '0.3' }));
  fake.serveFile('basic', 'basic.abxs', 1);
  await add('basic', () => unsignedFake('basic'));
  await add('cookie_js', () => unsignedFake('basic', { ABX_COOKIE_HTTP_ONLY: 'false', ABX_COOKIE_DOMAIN: 'example.com' }));
  await add('retry', () => unsignedFake('basic'));
  // An origin that accepts connections and never answers: the first request of the isolate
  // waits for the 300 ms timeout, then nothing more waits.
  fake.setDelay('hang', 60_000);
  await add('hang', () => unsignedFake('hang', { ABX_SNAPSHOT_TIMEOUT_MS: '300' }));
  await add('misconfigured', () => ({ ABX_ORIGIN_URL: fake.url('basic'), ABX_SDK_KEY: h.FAKE_SDK_KEY, ABX_UPSTREAM_URL: upstream.url }));
  workers = await h.startWorkerd(services, { cachePort: cache.port });
});

after(async () => {
  const exit = workers?.exit();
  // No request may have crashed the module: the worker-build shim logs a reinitialisation
  // after a trap (a Rust panic).
  const logs = workers ? workers.logs.join('') : '';
  await workers?.stop();
  await fake?.close();
  await upstream?.close();
  await cache?.close();
  if (exit) assert.fail(`workerd exited under the tests (${JSON.stringify(exit)}):\n${logs.slice(-4000)}`);
  assert.doesNotMatch(logs, /Reinitializing Wasm application|panicked at|RuntimeError/, 'the module trapped');
});

const get = (name, path, init) => fetch(workers.url(name, path), init);
const json = async (response) => JSON.parse(await response.text());

// ---------------------------------------------------------------------------------------

describe('conformance: every vector through /abx/assignments matches native', () => {
  let total = 0;
  for (const file of vectorFiles) {
    it(file, async (t) => {
      const vector = JSON.parse(readFileSync(join(h.VECTORS, file), 'utf8'));
      const twin = JSON.parse(readFileSync(join(h.GOLDEN, vector.snapshot.replace('.abxs', '.json')), 'utf8'));
      const experiments = new Map(twin.experiments.map((e) => [e.key, {
        id: e.id,
        configs: new Map(e.variants.map((v) => [twin.strings[v.key], JSON.parse(v.config)])),
      }]));
      const flagKeys = twin.flags.map((f) => f.key).sort();
      const name = 'v_' + file.replace('.json', '');
      const failures = [];
      await h.pool(vector.cases, 16, async (c, i) => {
        const query = new URLSearchParams({ exact: '1', now_ms: String(c.now_ms), context: JSON.stringify(c.context) });
        const response = await get(name, `/abx/assignments?${query}`);
        if (response.status !== 200) {
          failures.push(`case ${i}: HTTP ${response.status} ${await response.text()}`);
          return;
        }
        const got = await json(response);
        const problems = [];
        if (got.snapshot_version !== twin.snapshot_version) problems.push(`snapshot_version ${got.snapshot_version}`);
        if (JSON.stringify(Object.keys(got.experiments).sort()) !== JSON.stringify([...experiments.keys()].sort())) problems.push('experiment keys');
        if (JSON.stringify(Object.keys(got.flags).sort()) !== JSON.stringify(flagKeys)) problems.push('flag keys');
        for (const [key, want] of Object.entries(c.expected)) {
          const a = got.experiments[key];
          const e = experiments.get(key);
          if (!a) { problems.push(`missing ${key}`); continue; }
          if (a.variant !== want.variant || a.reason !== want.reason) problems.push(`${key}: ${a.variant}/${a.reason} != ${want.variant}/${want.reason}`);
          const config = want.variant === null ? null : e.configs.get(want.variant);
          if (JSON.stringify(a.config) !== JSON.stringify(config)) problems.push(`${key}: config ${JSON.stringify(a.config)}`);
          if (a.experiment !== key || a.experiment_id !== e.id) problems.push(`${key}: ids`);
          if (a.log_exposure !== (want.reason === 'assigned')) problems.push(`${key}: log_exposure`);
          if (a.snapshot_version !== twin.snapshot_version) problems.push(`${key}: snapshot_version`);
        }
        for (const [key, want] of Object.entries(c.flags)) {
          const f = got.flags[key];
          if (!f) { problems.push(`missing flag ${key}`); continue; }
          if (JSON.stringify(f.value) !== JSON.stringify(JSON.parse(want.value)) || f.reason !== want.reason) {
            problems.push(`flag ${key}: ${JSON.stringify(f.value)}/${f.reason} != ${want.value}/${want.reason}`);
          }
        }
        if (problems.length) failures.push(`case ${i}: ${problems.slice(0, 3).join('; ')}`);
      });
      assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${vector.cases.length} cases differ`);
      total += vector.cases.length;
      t.diagnostic(`${vector.cases.length} cases match (running total ${total})`);
    });
  }
  it('covers the whole suite', () => {
    assert.ok(total >= 21_520, `only ${total} cases ran`);
  });
});

// ---------------------------------------------------------------------------------------

describe('snapshots the worker must refuse', () => {
  for (const [i, c] of invalidCases.entries()) {
    it(`${c.file} is refused with ${c.error}`, async () => {
      const name = `invalid_${i}`;
      const assignments = await get(name, '/abx/assignments?user_id=u1');
      assert.equal(assignments.status, 503);
      assert.equal((await json(assignments)).error.code, 'unavailable');
      const status = await json(await get(name, '/abx/status'));
      assert.equal(status.snapshot, null);
      assert.equal(status.last_error.code, c.error);
      // The page still works: the request reaches the upstream without assignments.
      const page = await get(name, '/page', { headers: { cookie: 'abx_uid=u1' } });
      assert.equal(page.status, 200);
      const seen = await json(page);
      assert.equal(seen.headers['x-abx-assignments'], undefined);
      assert.equal(seen.headers['x-abx-uid'], 'u1');
    });
  }

  it('a tampered update is refused and the verified snapshot stays in use', async () => {
    const before = await json(await get('tamper', '/abx/assignments?user_id=u7'));
    fake.serveFile('tamper', 'invalid/tampered_signed.abxs', 2);
    let status;
    for (let i = 0; i < 100; i++) {
      await h.sleep(50);
      status = await json(await get('tamper', '/abx/status'));
      if (status.last_error) break;
    }
    assert.equal(status.last_error.code, 'bad_signature');
    assert.equal(status.snapshot.version, before.snapshot_version);
    const afterwards = await json(await get('tamper', '/abx/assignments?user_id=u7'));
    assert.deepEqual(afterwards, before);
  });
});

// ---------------------------------------------------------------------------------------

describe('snapshot refresh', () => {
  it('is decoded once, revalidated with If-None-Match after the TTL, and never waited for', async () => {
    const count = () => fake.requests.filter((r) => r.name === 'swr' && r.route === '/api/v1/snapshot');
    for (let i = 0; i < 30; i++) assert.equal((await get('swr', '/abx/assignments?user_id=u1')).status, 200);
    assert.equal(count().length, 1, 'one fetch serves every request within the TTL');
    await h.sleep(350);
    await get('swr', '/abx/assignments?user_id=u1');
    await h.sleep(100);
    const revalidation = count()[1];
    assert.ok(revalidation, 'revalidated after the TTL');
    assert.equal(count()[0].headers['if-none-match'], undefined);
    assert.match(revalidation.headers['if-none-match'] || '', /^"[0-9a-f]{16}"$/, 'a conditional request');
    assert.equal(revalidation.status, 304);

    // A slow origin: stale answers come at once while the new snapshot loads.
    fake.serveFile('swr', 'flags.abxs', 2);
    fake.setDelay('swr', 1500);
    await h.sleep(350);
    const started = performance.now();
    const stale = await json(await get('swr', '/abx/assignments?user_id=u1'));
    assert.ok(performance.now() - started < 250, 'a request after the TTL does not wait for the origin');
    assert.ok('checkout_button_color' in stale.experiments, 'the old snapshot answered');
    let fresh;
    for (let i = 0; i < 60 && !fresh; i++) {
      await h.sleep(100);
      const body = await json(await get('swr', '/abx/assignments?user_id=u1'));
      if (!('checkout_button_color' in body.experiments)) fresh = body;
    }
    fake.setDelay('swr', 0);
    assert.ok(fresh, 'the new snapshot replaced the old one');
    assert.ok(Object.keys(fresh.flags).length > 0);
  });

  it('with no snapshot at all, requests pass through untouched and only the first waits', async () => {
    const first = performance.now();
    const page = await get('hang', '/landing?q=1', { headers: { cookie: 'abx_uid=u9' } });
    const firstMs = performance.now() - first;
    assert.equal(page.status, 200);
    const seen = await json(page);
    assert.equal(seen.path, '/landing');
    assert.equal(seen.query, '?q=1');
    assert.equal(seen.headers['x-abx-assignments'], undefined);
    assert.ok(firstMs >= 290 && firstMs < 1500, `the first request waited ${firstMs} ms (timeout 300 ms)`);
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      assert.equal((await get('hang', '/landing', { headers: { cookie: 'abx_uid=u9' } })).status, 200);
      assert.ok(performance.now() - t0 < 200, 'later requests do not wait');
    }
    const assignments = await get('hang', '/abx/assignments');
    assert.equal(assignments.status, 503);
  });

  it('a misconfigured worker steps aside', async () => {
    const status = await get('misconfigured', '/abx/status');
    assert.equal(status.status, 503);
    assert.match((await json(status)).config_error, /ABX_PUBLIC_KEY/);
    const response = await get('misconfigured', '/x?y=1', { method: 'POST', body: 'payload', headers: { 'x-abx-assignments': 'spoofed=1', cookie: 'a=b' } });
    assert.equal(response.status, 200);
    assert.equal(h.setCookieUid(response), null, 'no cookie without a configuration');
    const seen = await json(response);
    assert.equal(seen.path, '/x');
    assert.equal(seen.query, '?y=1');
    assert.equal(seen.body, 'payload');
    assert.equal(seen.headers.cookie, 'a=b');
    assert.equal(seen.headers['x-abx-assignments'], undefined, 'a client cannot inject assignments');
    assert.equal((await get('misconfigured', '/abx/assignments')).status, 503);
  });
});

// ---------------------------------------------------------------------------------------

describe('the visitor cookie', () => {
  it('is created once with the required attributes and reused', async () => {
    const first = await get('basic', '/abx/assignments');
    assert.equal(first.status, 200);
    const created = h.setCookieUid(first);
    assert.ok(created, 'Set-Cookie abx_uid');
    assert.match(created.uid, /^[0-9a-f-]{36}$/);
    for (const attribute of ['Path=/', 'Max-Age=31536000', 'Secure', 'HttpOnly', 'SameSite=Lax']) {
      assert.ok(created.cookie.split('; ').includes(attribute), `${attribute} in ${created.cookie}`);
    }
    const firstBody = await json(first);
    const again = await get('basic', '/abx/assignments', { headers: { cookie: `other=1; abx_uid=${created.uid}` } });
    assert.equal(h.setCookieUid(again), null, 'no new cookie for a known visitor');
    assert.deepEqual(await json(again), firstBody, 'same visitor, same assignments');
    const explicit = await json(await get('basic', `/abx/assignments?exact&user_id=${created.uid}`));
    assert.deepEqual(explicit.experiments, firstBody.experiments, 'the cookie is the user_id unit');
    assert.equal(first.headers.get('cache-control'), 'private, no-store');
    assert.equal(first.headers.get('vary'), 'Cookie');
  });

  it('is replaced when malformed, and the proxy forwards it as x-abx-uid', async () => {
    const response = await get('basic', '/anything', { headers: { cookie: 'abx_uid=<script>; x=1' } });
    const created = h.setCookieUid(response);
    assert.ok(created);
    const seen = await json(response);
    assert.equal(seen.headers['x-abx-uid'], created.uid);
    assert.equal(seen.headers.cookie, 'abx_uid=<script>; x=1', 'the page still gets its cookies');
    const reuse = await get('basic', '/anything', { headers: { cookie: `abx_uid=${created.uid}` } });
    assert.equal(h.setCookieUid(reuse), null);
    assert.equal((await json(reuse)).headers['x-abx-uid'], created.uid);
  });

  it('HttpOnly and Domain are configurable', async () => {
    const created = h.setCookieUid(await get('cookie_js', '/abx/assignments'));
    const attributes = created.cookie.split('; ');
    assert.ok(!attributes.includes('HttpOnly'));
    assert.ok(attributes.includes('Domain=example.com'));
    assert.ok(attributes.includes('Secure') && attributes.includes('SameSite=Lax'));
  });
});

// ---------------------------------------------------------------------------------------

describe('malformed requests get 4xx, never a crash', () => {
  const big = (n) => 'x'.repeat(n);
  const cases = [
    ['GET', '/abx/assignments?context=%7B', {}, null, 400, 'invalid_query'],
    ['GET', '/abx/assignments?context=%5B1%5D', {}, null, 400, 'invalid_query'],
    ['GET', '/abx/assignments?now_ms=soon', {}, null, 400, 'invalid_query'],
    ['GET', '/abx/assignments?exact=maybe', {}, null, 400, 'invalid_query'],
    ['POST', '/abx/assignments', {}, '{}', 405, 'method_not_allowed'],
    ['DELETE', '/abx/status', {}, null, 405, 'method_not_allowed'],
    ['GET', '/abx/events', {}, null, 405, 'method_not_allowed'],
    ['PUT', '/abx/events', { 'content-type': 'application/json' }, '[]', 405, 'method_not_allowed'],
    ['POST', '/abx/events', { 'content-type': 'application/json', cookie: 'abx_uid=u1' }, 'not json', 400, 'invalid_json'],
    ['POST', '/abx/events', { 'content-type': 'application/json', cookie: 'abx_uid=u1' }, '', 400, 'invalid_json'],
    ['POST', '/abx/events', { 'content-type': 'application/json', cookie: 'abx_uid=u1' }, '{"events": 5}', 400, 'bad_request'],
    ['POST', '/abx/events', { 'content-type': 'application/json', cookie: 'abx_uid=u1' }, '[]', 400, 'bad_request'],
    ['POST', '/abx/events', { 'content-type': 'application/json', cookie: 'abx_uid=u1' }, '[{"kind": "click"}]', 400, 'bad_request'],
    ['POST', '/abx/events', { 'content-type': 'application/json' }, '[{"kind": "metric", "event_type": "a"}]', 400, 'bad_request'],
    ['POST', '/abx/events', { 'content-type': 'application/xml', cookie: 'abx_uid=u1' }, '<a/>', 415, 'unsupported_media_type'],
    ['POST', '/abx/events', { 'content-type': 'application/json', 'content-encoding': 'gzip', cookie: 'abx_uid=u1' }, 'x', 415, 'unsupported_media_type'],
  ];
  for (const [method, path, headers, body, status, code] of cases) {
    it(`${method} ${path} ${headers['content-type'] || ''} ${body === null ? '' : `(${body.length} bytes)`} → ${status} ${code}`, async () => {
      const response = await get('basic', path, { method, headers, body: body ?? undefined });
      assert.equal(response.status, status);
      assert.equal((await json(response)).error.code, code);
    });
  }

  // The worker answers an oversized upload at once, without reading it, and the connection
  // may then close under the rest of the upload. fetch reports that as `fetch failed` even
  // when the answer had arrived (one run in a few), so these use node:http, which hands over
  // the answer first; an upload error counts only if no answer follows it.
  const uploadAnsweredEarly = (headers, chunks) => new Promise((resolve, reject) => {
    const req = request(workers.url('basic', '/abx/events'), { method: 'POST', headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (part) => { text += part; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(text) }));
    });
    req.on('error', (error) => setTimeout(() => reject(error), 500));
    for (const chunk of chunks) req.write(chunk);
    req.end();
  });
  const oversized = [
    ['text/plain', 70 * 1024],
    ['application/json', 1100 * 1024],
  ];
  for (const [type, length] of oversized) {
    it(`POST /abx/events ${type} (${length} bytes) → 413 payload_too_large`, async () => {
      const headers = { 'content-type': type, 'content-length': String(length), cookie: 'abx_uid=u1' };
      const answer = await uploadAnsweredEarly(headers, [big(length)]);
      assert.equal(answer.status, 413);
      assert.equal(answer.body.error.code, 'payload_too_large');
    });
  }

  it('a body streamed without Content-Length is cut off at the limit', async () => {
    const headers = { 'content-type': 'text/plain', cookie: 'abx_uid=u1', 'transfer-encoding': 'chunked' };
    const answer = await uploadAnsweredEarly(headers, Array.from({ length: 100 }, () => big(1024)));
    assert.equal(answer.status, 413);
    assert.equal(answer.body.error.code, 'payload_too_large');
  });

  it('odd but harmless input is served', async () => {
    for (const path of ['/abx/assignments?%zz=1&&=&a=%ff', '/abx/assignments?user_id=' + big(4000)]) {
      assert.equal((await get('basic', path, { headers: { cookie: 'abx_uid=u1' } })).status, 200, path);
    }
    const cookie = `abx_uid=${big(5000)}; ;;=;abx_uid`;
    const response = await get('basic', '/abx/assignments', { headers: { cookie } });
    assert.equal(response.status, 200);
    assert.ok(h.setCookieUid(response), 'an unusable cookie is replaced');
  });

  it('the worker is healthy afterwards', async () => {
    const status = await json(await get('basic', '/abx/status'));
    assert.ok(status.snapshot.version >= 1);
    assert.equal((await get('basic', '/abx/assignments?user_id=u1')).status, 200);
  });
});

// ---------------------------------------------------------------------------------------

describe('beacons', () => {
  it('are answered at once and forwarded with retries, once', async () => {
    // The fake origin answers events after 1.5 s and refuses the first attempt: the beacon
    // must not wait for either.
    fake.setDelay('basic', 1500);
    fake.failEventPosts('basic', 1);
    const before = fake.events.length;
    const started = performance.now();
    const response = await get('retry', '/abx/events', {
      method: 'POST',
      headers: { 'content-type': 'text/plain;charset=UTF-8', cookie: 'abx_uid=beacon-visitor' },
      body: JSON.stringify({ events: [{ kind: 'metric', event_type: 'purchase', value: 12.5 }, { kind: 'bogus' }] }),
    });
    const elapsed = performance.now() - started;
    assert.equal(response.status, 207);
    const body = await json(response);
    assert.equal(body.queued, 1);
    assert.equal(body.rejected[0].index, 1);
    assert.ok(elapsed < 500, `answered in ${elapsed} ms`);
    for (let i = 0; i < 100 && fake.events.length === before; i++) await h.sleep(100);
    fake.setDelay('basic', 0);
    const delivered = fake.events.slice(before);
    assert.equal(delivered.length, 1, 'one successful delivery after the retry');
    const [event] = delivered[0].body.events;
    assert.equal(event.unit, 'beacon-visitor');
    assert.equal(event.unit_attribute, 'user_id');
    assert.match(event.event_id, /^[0-9a-f-]{36}$/);
    assert.equal(delivered[0].headers.authorization, `Bearer ${h.FAKE_SDK_KEY}`);
    const attempts = fake.requests.filter((r) => r.name === 'basic' && r.route === '/api/v1/events');
    assert.ok(attempts.some((r) => r.status === 503), 'the first attempt was refused and retried');
  });
});

// ---------------------------------------------------------------------------------------

describe('with the real origin', () => {
  let origin;
  let edge;
  let beta;
  let sdkKey;
  let flagId;
  const name = 'real';

  const evaluateAtOrigin = async (context, nowMs) => {
    const reply = await origin.call('POST', '/api/v1/evaluate', { context, now_ms: nowMs }, sdkKey);
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    return reply.body;
  };
  const originVersion = async () => {
    const response = await fetch(`${origin.url}/api/v1/snapshot`, { headers: { authorization: `Bearer ${sdkKey}` } });
    await response.arrayBuffer();
    return Number(response.headers.get('x-abx-snapshot-version'));
  };
  const edgeAssignments = async (path, init) => json(await fetch(edge.url(name, path), init));
  const waitForEdgeVersion = async (version, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await json(await fetch(edge.url(name, '/abx/status')));
      if (status.snapshot && status.snapshot.version >= version) return status;
      if (Date.now() > deadline) throw new Error(`edge at ${JSON.stringify(status.snapshot)}, waiting for ${version}`);
      await h.sleep(50);
    }
  };
  /** A visitor id the edge assigns to `variant` of `experiment`. */
  const visitorIn = async (experiment, variant, extraHeaders = {}) => {
    for (let i = 0; i < 500; i++) {
      const uid = `visitor-${experiment}-${i}`;
      const body = await edgeAssignments('/abx/assignments', { headers: { cookie: `abx_uid=${uid}`, ...extraHeaders } });
      if (body.experiments[experiment].variant === variant) return uid;
    }
    throw new Error(`no visitor in ${experiment}/${variant}`);
  };

  before(async () => {
    origin = await h.startOrigin();
    sdkKey = await origin.sdkKey();
    beta = await h.startUpstream('beta');
    await origin.create('/api/v1/metrics', { key: 'conversion', kind: 'conversion', event_type: 'conversion' });
    const pricing = await origin.create('/api/v1/experiments', {
      key: 'pricing_split',
      // What the edge knows of a visitor that the results can be broken down by.
      dimensions: ['country', 'colo', 'plan'],
      variants: [{ name: 'control', weight: 50, config: {} },
        { name: 'treatment', weight: 50, config: { $route: { '/pricing': '/pricing-v2' } } }],
      primary_metric: 'conversion',
    });
    await origin.create(`/api/v1/experiments/${pricing.id}/start`, {});
    const site = await origin.create('/api/v1/experiments', {
      key: 'beta_site',
      targeting: { attr: 'country', op: 'eq', value: 'NZ' },
      variants: [{ name: 'control', weight: 50, config: {} },
        { name: 'beta', weight: 50, config: { $route: beta.url } }],
      primary_metric: 'conversion',
    });
    await origin.create(`/api/v1/experiments/${site.id}/start`, {});
    // A routed experiment that respects a holdout: the edge logs each visitor's arm in it.
    await origin.create('/api/v1/holdouts', { key: 'edge_holdout', percent: 50, metrics: ['conversion'] });
    const promo = await origin.create('/api/v1/experiments', {
      key: 'promo_split',
      holdout: 'edge_holdout',
      variants: [{ name: 'control', weight: 50, config: {} },
        { name: 'treatment', weight: 50, config: { $route: { '/promo': '/promo-v2' } } }],
      primary_metric: 'conversion',
    });
    await origin.create(`/api/v1/experiments/${promo.id}/start`, {});
    const button = await origin.create('/api/v1/experiments', {
      key: 'button_color', traffic_percent: 100,
      variants: [{ name: 'blue', weight: 50, config: { color: 'blue' } }, { name: 'green', weight: 50, config: { color: 'green' } }],
      primary_metric: 'conversion',
    });
    await origin.create(`/api/v1/experiments/${button.id}/start`, {});
    flagId = (await origin.create('/api/v1/flags', { key: 'edge_flag', enabled: true, off_value: false, default_value: true, rules: [] })).id;
    edge = await h.startWorkerd([{ name, bindings: {
      ABX_ORIGIN_URL: origin.url,
      ABX_SDK_KEY: sdkKey,
      ABX_PUBLIC_KEY: await origin.publicKey(),
      ABX_UPSTREAM_URL: upstream.url,
      ABX_SNAPSHOT_TTL_S: '1',
      ABX_EXPOSURE_FLUSH_MS: '0',
    } }], { cachePort: cache.port });
  });

  after(async () => {
    const exit = edge?.exit();
    const logs = edge ? edge.logs.join('') : '';
    await edge?.stop();
    await beta?.close();
    await origin?.cleanup();
    if (exit) assert.fail(`workerd exited under the tests (${JSON.stringify(exit)}):\n${logs.slice(-4000)}`);
    assert.doesNotMatch(logs, /Reinitializing Wasm application|panicked at|RuntimeError/, 'the module trapped');
  });

  it('serves the origin\'s signed snapshot', async () => {
    const status = await waitForEdgeVersion(await originVersion());
    assert.equal(status.snapshot.source, 'origin');
    assert.equal(status.snapshot.experiments, 4);
    assert.deepEqual(status.snapshot.route_problems, []);
  });

  it('answers exactly what the origin\'s POST /api/v1/evaluate answers', async (t) => {
    const countries = ['NZ', 'US', 'DE', null];
    const contexts = Array.from({ length: 300 }, (_, i) => ({
      user_id: `user-${i}`,
      ...(countries[i % 4] ? { country: countries[i % 4] } : {}),
      ...(i % 7 === 0 ? { user_id: i } : {}),
    }));
    const nowMs = Date.now();
    await h.pool(contexts, 8, async (context) => {
      const query = new URLSearchParams({ exact: '1', now_ms: String(nowMs), context: JSON.stringify(context) });
      const atEdge = await edgeAssignments(`/abx/assignments?${query}`);
      assert.deepEqual(atEdge, await evaluateAtOrigin(context, nowMs), JSON.stringify(context));
    });
    t.diagnostic(`${contexts.length} contexts identical at the edge and the origin`);
  });

  it('proxies with the visitor\'s assignments, stripping spoofed ones', async () => {
    const uid = 'proxy-visitor-1';
    const assignments = await edgeAssignments('/abx/assignments', { headers: { cookie: `abx_uid=${uid}` } });
    const expected = Object.values(assignments.experiments)
      .filter((a) => a.variant !== null)
      .map((a) => `${a.experiment}=${a.variant}`)
      .join(',');
    const response = await fetch(edge.url(name, '/shop/cart?item=7'), {
      method: 'POST',
      headers: { cookie: `abx_uid=${uid}`, 'x-abx-assignments': 'button_color=spoofed', 'x-abx-uid': 'someone-else', 'content-type': 'application/json' },
      body: '{"qty": 2}',
    });
    assert.equal(response.status, 200);
    const seen = await json(response);
    assert.equal(seen.method, 'POST');
    assert.equal(seen.path, '/shop/cart');
    assert.equal(seen.query, '?item=7');
    assert.equal(seen.body, '{"qty": 2}');
    assert.equal(seen.headers['x-abx-assignments'], expected);
    assert.match(expected, /button_color=(blue|green)/);
    assert.equal(seen.headers['x-abx-uid'], uid);
    assert.equal(h.setCookieUid(response), null);
  });

  it('sets cache headers so assignment-dependent responses stay private', async () => {
    // (path, upstream headers) → (cache-control, vary) seen by the visitor
    const cases = [
      ['/static/app.js', { 'cache-control': 'public, max-age=31536000, immutable' }, 'public, max-age=31536000, immutable', null],
      ['/page-default', {}, 'private', null],
      ['/page-varies', { 'cache-control': 'public, max-age=60, s-maxage=600', vary: 'Accept-Encoding, x-abx-assignments' }, 'private, max-age=60', 'Accept-Encoding, Cookie'],
    ];
    for (const [path, headers, cacheControl, vary] of cases) {
      upstream.respond(path, { headers });
      const response = await fetch(edge.url(name, path), { headers: { cookie: 'abx_uid=cache-visitor' } });
      await response.arrayBuffer();
      assert.equal(response.headers.get('cache-control'), cacheControl, path);
      assert.equal(response.headers.get('vary'), vary, path);
    }
    // A response that creates the visitor's cookie is never shareable.
    const fresh = await fetch(edge.url(name, '/static/app.js'));
    await fresh.arrayBuffer();
    assert.ok(h.setCookieUid(fresh));
    assert.equal(fresh.headers.get('cache-control'), 'private, max-age=31536000, immutable');
    // Redirects are passed to the browser, not followed.
    upstream.respond('/old', { status: 301, headers: { location: '/new' } });
    const redirect = await fetch(edge.url(name, '/old'), { redirect: 'manual', headers: { cookie: 'abx_uid=cache-visitor' } });
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.get('location'), '/new');
  });

  it('routes split-URL tests by $route and logs the exposure once', async () => {
    const treated = await visitorIn('pricing_split', 'treatment');
    const control = await visitorIn('pricing_split', 'control');
    const treatedPage = await fetch(edge.url(name, '/pricing?ref=mail'), { headers: { cookie: `abx_uid=${treated}` } });
    const treatedSeen = await json(treatedPage);
    assert.equal(treatedSeen.path, '/pricing-v2');
    assert.equal(treatedSeen.query, '?ref=mail');
    assert.equal(treatedPage.headers.get('vary'), 'Cookie');
    assert.match(treatedPage.headers.get('cache-control'), /^private/);
    const controlSeen = await json(await fetch(edge.url(name, '/pricing'), { headers: { cookie: `abx_uid=${control}` } }));
    assert.equal(controlSeen.path, '/pricing');
    const otherPath = await json(await fetch(edge.url(name, '/about'), { headers: { cookie: `abx_uid=${treated}` } }));
    assert.equal(otherPath.path, '/about', 'only the routed path moves');

    // Upstream rewrite, targeted by the country the edge knows (request.cf).
    const nz = { 'cf-blob': JSON.stringify({ country: 'NZ', colo: 'AKL' }) };
    const betaVisitor = await visitorIn('beta_site', 'beta', nz);
    const betaSeen = await json(await fetch(edge.url(name, '/any/page?x=1'), { headers: { cookie: `abx_uid=${betaVisitor}`, ...nz } }));
    assert.equal(betaSeen.label, 'beta');
    assert.equal(betaSeen.path, '/any/page');
    const elsewhere = await json(await fetch(edge.url(name, '/any/page'), { headers: { cookie: `abx_uid=${betaVisitor}`, 'cf-blob': '{"country":"US"}' } }));
    assert.equal(elsewhere.label, 'upstream', 'targeting keeps other countries on the usual upstream');

    // The exposures reach the origin's event log, once per routed request.
    const experimentId = (await origin.call('GET', '/api/v1/experiments/pricing_split')).body.id;
    const expectations = [[treated, 'treatment'], [control, 'control']];
    for (const [uid, variant] of expectations) {
      let rows = [];
      for (let i = 0; i < 100 && rows.length === 0; i++) {
        await h.sleep(100);
        rows = origin.storedEvents(`user_id:${uid}`);
      }
      assert.equal(rows.length, 1, `${uid}: ${JSON.stringify(rows)}`);
      assert.equal(rows[0].kind, 'exposure');
      assert.equal(rows[0].experiment_id, experimentId);
      assert.equal(rows[0].variant, variant);
      // The experiment's dimensions that the edge's context has (the harness's edge data:
      // no country or colo without `cf-blob`), and nothing else.
      assert.deepEqual(rows[0].properties, null, `${uid}: ${JSON.stringify(rows)}`);
    }
    // A visitor whose request carries edge data: the exposure carries its country and colo
    // (the experiment's `plan` is not something the edge knows).
    const visitor = 'visitor-from-nz';
    await fetch(edge.url(name, '/pricing'), { headers: { cookie: `abx_uid=${visitor}`, ...nz } }).then((r) => r.arrayBuffer());
    let rows = [];
    for (let i = 0; i < 100 && rows.length === 0; i++) {
      await h.sleep(100);
      rows = origin.storedEvents(`user_id:${visitor}`).filter((r) => r.experiment_id === experimentId);
    }
    assert.equal(rows.length, 1, `${visitor}: ${JSON.stringify(rows)}`);
    assert.deepEqual(rows[0].properties, { country: 'NZ', colo: 'AKL' });
  });

  it('logs the arm of each visitor it routes in the experiment\'s holdout', async () => {
    const holdoutId = (await origin.call('GET', '/api/v1/holdouts/edge_holdout')).body.id;
    const visitors = {};
    for (let i = 0; i < 500 && Object.keys(visitors).length < 2; i++) {
      const uid = `visitor-promo-${i}`;
      const body = await edgeAssignments('/abx/assignments', { headers: { cookie: `abx_uid=${uid}` } });
      const step = body.experiments.promo_split.holdout;
      assert.equal(step.holdout_id, holdoutId);
      assert.equal(step.arm === 'held', body.experiments.promo_split.reason === 'holdout');
      visitors[step.arm] ??= uid;
    }
    assert.deepEqual(Object.keys(visitors).sort(), ['held', 'released']);
    for (const [arm, uid] of Object.entries(visitors)) {
      await fetch(edge.url(name, '/promo'), { headers: { cookie: `abx_uid=${uid}` } }).then((r) => r.arrayBuffer());
      let rows = [];
      for (let i = 0; i < 100 && !rows.some((r) => r.experiment_id === holdoutId); i++) {
        await h.sleep(100);
        rows = origin.storedEvents(`user_id:${uid}`);
      }
      const held = rows.filter((r) => r.experiment_id === holdoutId);
      assert.equal(held.length, 1, `${uid}: ${JSON.stringify(rows)}`);
      assert.equal(held[0].variant, arm);
    }
  });

  it('forwards beacons to the origin\'s event store exactly once', async () => {
    // A visitor the snapshot assigns to `blue`: the origin refuses an exposure that names
    // another variant than the unit's (a forged one).
    let uid;
    for (let i = 0; !uid; i++) {
      const candidate = `beacon-real-visitor-${i}`;
      const body = await edgeAssignments('/abx/assignments', { headers: { cookie: `abx_uid=${candidate}` } });
      if (body.experiments.button_color.variant === 'blue') uid = candidate;
    }
    const explicitId = h.randomUUID();
    const experimentId = (await origin.call('GET', '/api/v1/experiments/button_color')).body.id;
    const events = [
      { kind: 'metric', event_type: 'conversion' },
      { kind: 'metric', event_type: 'revenue', value: 30 },
      { kind: 'exposure', event_id: explicitId, experiment_id: experimentId, variant: 'blue', timestamp: Date.now() },
    ];
    const response = await fetch(edge.url(name, '/abx/events'), {
      method: 'POST', headers: { 'content-type': 'text/plain', cookie: `abx_uid=${uid}` }, body: JSON.stringify({ events }),
    });
    assert.equal(response.status, 202);
    assert.deepEqual(await json(response), { queued: 3 });
    // The same beacon sent again (a client retry) keeps its explicit id; only the explicit
    // id deduplicates, which is why clients should send ids.
    let rows = [];
    for (let i = 0; i < 100 && rows.length < 3; i++) {
      await h.sleep(100);
      rows = origin.storedEvents(`user_id:${uid}`);
    }
    await h.sleep(500);
    rows = origin.storedEvents(`user_id:${uid}`);
    assert.equal(rows.length, 3, JSON.stringify(rows));
    assert.equal(new Set(rows.map((r) => r.event_id)).size, 3);
    assert.deepEqual(rows.map((r) => r.kind).sort(), ['exposure', 'metric', 'metric']);
    assert.ok(rows.some((r) => r.event_id === explicitId && r.variant === 'blue'));
    const lookup = await origin.call('GET', `/api/v1/events/${explicitId}`);
    assert.equal(lookup.status, 200);
    assert.equal(lookup.body.unit_key, `user_id:${uid}`);
  });

  it('a configuration change reaches the edge within the TTL', async (t) => {
    const before = await edgeAssignments('/abx/assignments?user_id=ttl-user');
    assert.equal(before.flags.edge_flag.reason, 'default');
    const changedAt = performance.now();
    const disabled = await origin.call('POST', `/api/v1/flags/${flagId}/disable`, {});
    assert.equal(disabled.status, 200, JSON.stringify(disabled.body));
    let seenAfterMs = null;
    while (performance.now() - changedAt < 5_000) {
      const body = await edgeAssignments('/abx/assignments?user_id=ttl-user');
      if (body.flags.edge_flag.reason === 'disabled') {
        seenAfterMs = performance.now() - changedAt;
        assert.ok(body.snapshot_version > before.snapshot_version);
        break;
      }
      await h.sleep(20);
    }
    assert.ok(seenAfterMs !== null, 'the change never arrived');
    // TTL 1 s, plus the background revalidation and slack for a loaded CI machine.
    assert.ok(seenAfterMs <= 3_000, `arrived after ${seenAfterMs} ms`);
    t.diagnostic(`the change arrived after ${Math.round(seenAfterMs)} ms (TTL 1000 ms)`);
  });

  it('keeps serving the last snapshot with the origin down, also on a cold isolate', async () => {
    const query = '/abx/assignments?user_id=outage-user';
    const before = await edgeAssignments(query);
    await origin.stop();
    await h.sleep(2_500);
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await edgeAssignments(query), before);
      await h.sleep(200);
    }
    const status = await json(await fetch(edge.url(name, '/abx/status')));
    assert.equal(status.last_error.code, 'origin_unreachable');
    assert.equal(status.snapshot.version, before.snapshot_version);
    const page = await json(await fetch(edge.url(name, '/page'), { headers: { cookie: 'abx_uid=outage-user' } }));
    assert.ok(page.headers['x-abx-assignments'].includes('button_color='));

    // A new isolate (workerd restarted) with the origin still down loads the Cache API copy.
    await edge.restart();
    assert.deepEqual(await edgeAssignments(query), before);
    const cold = await json(await fetch(edge.url(name, '/abx/status')));
    assert.equal(cold.snapshot.source, 'cache');

    // The origin comes back: the copy is confirmed (304) and refreshes resume.
    await origin.start();
    let confirmed;
    for (let i = 0; i < 100 && !confirmed; i++) {
      await h.sleep(100);
      const s = await json(await fetch(edge.url(name, '/abx/status')));
      if (s.checked_at_ms) confirmed = s;
    }
    assert.ok(confirmed, 'the origin confirmed the cached copy');
    assert.equal(confirmed.snapshot.version, before.snapshot_version);
  });
});
