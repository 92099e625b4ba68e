// AbxClient: connecting (dead origins, the local cache, ETags, the change stream, signature
// checks), exposure logging and metric events.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { readFileSync } from 'node:fs';

import { AbxClient, AbxError, EventQueue, MemoryStorage, init } from '../src/index.js';
import { FakeClock, FakeEventSource, FakeOrigin, FakeTransport, settle } from './fakes.js';

const golden = (name) => new Uint8Array(readFileSync(new URL(`../../../snapshots/golden/${name}`, import.meta.url)));
const vectors = (name) => JSON.parse(readFileSync(new URL(`../../../snapshots/vectors/${name}`, import.meta.url), 'utf8'));

await init();

const basic = vectors('basic.json');
const signed = vectors('signed.json');
const flags = vectors('flags.json');

/** A port on 127.0.0.1 that nothing listens on. */
async function deadPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The first case of a vector file with an experiment whose reason is `reason`. */
function caseWith(file, reason, also = () => true) {
  for (const testCase of file.cases) {
    for (const [key, want] of Object.entries(testCase.expected)) {
      if (want.reason === reason && also(want)) return { testCase, key, want };
    }
  }
  throw new Error(`no ${reason} case`);
}

test('connect() to a dead origin resolves with a client that serves defaults', async () => {
  const port = await deadPort();
  const errors = [];
  const exposures = [];
  const client = await AbxClient.connect({
    origin: `http://127.0.0.1:${port}`,
    sdkKey: 'sdk-test',
    storage: new MemoryStorage(),
    onError: (error) => errors.push(error),
    onExposure: (event) => exposures.push(event),
    refreshIntervalMs: 0,
  });
  assert.equal(client.snapshotVersion, null);
  assert.deepEqual(client.variant('checkout_button_color', { user_id: 'u1' }), {
    variant: null,
    config: null,
    reason: 'not_loaded',
  });
  assert.equal(client.flag('new_nav', { user_id: 'u1' }, 'fallback'), 'fallback');
  assert.deepEqual(client.evaluate({ user_id: 'u1' }), { snapshotVersion: null, experiments: {}, flags: {} });
  assert.deepEqual(exposures, []);
  assert.equal(client.queue.size, 0);
  assert.ok(errors.some((e) => e instanceof AbxError && e.code === 'fetch_failed'));
  client.close();
});

test('a returning visitor starts from the cached snapshot while the origin is down', async () => {
  const storage = new MemoryStorage();
  const origin = new FakeOrigin();
  origin.serve(golden('basic.abxs'), '"v1"');
  const first = await AbxClient.connect({ origin: 'https://abx.test', sdkKey: 'k', fetch: origin.fetch, storage, refreshIntervalMs: 0, stream: false });
  assert.equal(first.snapshotVersion, 1);
  first.close();

  origin.down = true;
  const errors = [];
  const { testCase, key, want } = caseWith(basic, 'assigned');
  const second = await AbxClient.connect({
    origin: 'https://abx.test',
    sdkKey: 'k',
    fetch: origin.fetch,
    storage,
    refreshIntervalMs: 0,
    stream: false,
    initialTimeoutMs: 60_000,
    onError: (error) => errors.push(error),
  });
  assert.equal(second.snapshotVersion, 1);
  const got = second.variant(key, testCase.context, { nowMs: testCase.now_ms });
  assert.equal(got.variant, want.variant);
  assert.equal(got.reason, 'assigned');
  await settle();
  assert.ok(errors.some((e) => e.code === 'fetch_failed'), 'the background refresh failed quietly');
  second.close();
});

test('refresh() sends If-None-Match and keeps the snapshot on 304', async () => {
  const origin = new FakeOrigin();
  origin.serve(golden('basic.abxs'), '"v1"');
  const client = await AbxClient.connect({ origin: 'https://abx.test/', sdkKey: 'sdk key', fetch: origin.fetch, storage: new MemoryStorage(), refreshIntervalMs: 0, stream: false });
  assert.equal(origin.requests[0].url, 'https://abx.test/api/v1/snapshot?format=2');
  assert.equal(origin.requests[0].headers.authorization, 'Bearer sdk key');
  assert.equal(origin.requests[0].headers['if-none-match'], undefined);
  assert.equal(await client.refresh(), false);
  assert.equal(origin.requests[1].headers['if-none-match'], '"v1"');
  assert.equal(client.snapshotVersion, 1);
  client.close();
});

test('a change announced on the stream loads the new snapshot; older ones are refused', async () => {
  FakeEventSource.instances.length = 0;
  const origin = new FakeOrigin();
  origin.serve(golden('basic.abxs'), '"v1"');
  const client = await AbxClient.connect({ origin: 'https://abx.test', sdkKey: 'k&1', fetch: origin.fetch, EventSource: FakeEventSource, storage: new MemoryStorage(), refreshIntervalMs: 0 });
  const [source] = FakeEventSource.instances;
  assert.equal(source.url, 'https://abx.test/api/v1/snapshot/stream?format=2&key=k%261');
  source.emit('snapshot', { version: 1, etag: '"v1"' });
  await settle();
  assert.equal(origin.requests.length, 1, 'the current etag is not fetched again');

  origin.serve(golden('flags.abxs'), '"v5"');
  source.emit('snapshot', { version: 5, etag: '"v5"' });
  await settle();
  assert.equal(client.snapshotVersion, 5);
  assert.notEqual(client.flagDetail('new_nav', { user_id: 'u1' }).reason, 'unknown_key');

  origin.serve(golden('basic.abxs'), '"v1-again"');
  source.emit('snapshot', { version: 1, etag: '"v1-again"' });
  await settle();
  assert.equal(client.snapshotVersion, 5, 'a stale snapshot never replaces a newer one');
  client.close();
  assert.ok(source.closed);
});

test('the background refresh runs on its interval', async () => {
  const clock = new FakeClock();
  const origin = new FakeOrigin();
  origin.serve(golden('basic.abxs'), '"v1"');
  const client = await AbxClient.connect({ origin: 'https://abx.test', sdkKey: 'k', fetch: origin.fetch, storage: new MemoryStorage(), clock, refreshIntervalMs: 30_000, stream: false, events: false });
  assert.equal(origin.requests.length, 1);
  await clock.advance(30_000);
  assert.equal(origin.requests.length, 2);
  await clock.advance(30_000);
  assert.equal(origin.requests.length, 3);
  client.close();
  await clock.advance(60_000);
  assert.equal(origin.requests.length, 3);
});

test('with a public key, only snapshots it signed are used, fetched or cached', async () => {
  const storage = new MemoryStorage();
  const origin = new FakeOrigin();
  origin.serve(golden('basic.abxs'), '"unsigned"');
  const errors = [];
  const client = await AbxClient.connect({ origin: 'https://abx.test', sdkKey: 'k', publicKey: signed.public_key, fetch: origin.fetch, storage, refreshIntervalMs: 0, stream: false, onError: (e) => errors.push(e) });
  assert.equal(client.snapshotVersion, null);
  assert.ok(errors.some((e) => e.code === 'unsigned'));
  assert.equal(storage.getItem('abx:snapshot:https://abx.test'), null, 'a refused snapshot is not cached');

  origin.serve(golden('signed.abxs'), '"signed"');
  assert.equal(await client.refresh(), true);
  assert.equal(client.snapshotVersion, 7);

  const tampered = golden('invalid/tampered_signed.abxs');
  assert.equal(client.loadSnapshot(tampered), false);
  assert.ok(errors.some((e) => e.code === 'bad_signature'));
  assert.equal(client.snapshotVersion, 7, 'the last good snapshot stays');
  client.close();
});

test('fromSnapshot throws AbxError with the snapshot error code', () => {
  assert.throws(() => AbxClient.fromSnapshot(new TextEncoder().encode('not a snapshot at all')), (error) => {
    return error instanceof AbxError && error instanceof Error && error.code === 'bad_magic';
  });
  assert.throws(() => AbxClient.fromSnapshot(golden('basic.abxs'), { publicKey: 'zz' }), { code: 'bad_public_key' });
});

test('during a key rotation, a list of public keys accepts a snapshot signed by any of them', () => {
  const other = vectors('invalid.json').cases.map((c) => c.public_key).find((k) => k && k !== signed.public_key);
  assert.ok(other, 'the suite has a second valid key');
  const bytes = golden('signed.abxs');
  for (const keys of [[other, signed.public_key], [signed.public_key, other]]) {
    assert.equal(AbxClient.fromSnapshot(bytes, { publicKey: keys }).snapshotVersion, 7);
  }
  assert.throws(() => AbxClient.fromSnapshot(bytes, { publicKey: [other] }), { code: 'bad_signature' });
  assert.throws(() => AbxClient.fromSnapshot(bytes, { publicKey: [] }), { code: 'bad_public_key' });
  assert.throws(() => AbxClient.fromSnapshot(bytes, { publicKey: [other, 'zz'] }), { code: 'bad_public_key' });
  assert.throws(() => AbxClient.fromSnapshot(golden('basic.abxs'), { publicKey: [other, signed.public_key] }), { code: 'unsigned' });
});

function recordingClient(snapshot = golden('basic.abxs')) {
  const clock = new FakeClock();
  const transport = new FakeTransport({ clock });
  const queue = new EventQueue({ transport, storage: new MemoryStorage(), clock });
  const client = AbxClient.fromSnapshot(snapshot, { queue, clock });
  return { client, transport, clock, queue };
}

test('an exposure is logged once per unit and experiment, with the origin\'s event shape', async () => {
  const { client, transport, clock } = recordingClient();
  const { testCase, key, want } = caseWith(basic, 'assigned');
  const options = { nowMs: testCase.now_ms };
  client.variant(key, testCase.context, options);
  client.variant(key, testCase.context, options);
  client.evaluate(testCase.context, { ...options, logExposures: true });
  await clock.advance(5_000);
  const events = transport.events().filter((e) => e.experiment_id === client.evaluate(testCase.context, options).experiments[key].experimentId);
  assert.equal(events.length, 1);
  const [event] = events;
  assert.deepEqual(Object.keys(event).sort(), ['event_id', 'experiment_id', 'kind', 'timestamp', 'unit', 'unit_attribute', 'variant']);
  assert.equal(event.kind, 'exposure');
  assert.equal(event.variant, want.variant);
  assert.equal(event.timestamp, testCase.now_ms);
  assert.equal(event.unit, String(testCase.context[event.unit_attribute]));
  client.close();
});

const holdoutArm = (event) => event.variant === 'held' || event.variant === 'released';

test('no exposure without an assignment (forced, shipped, not in traffic) or from plain evaluate', async () => {
  const { client, transport, clock } = recordingClient(golden('holdouts_forced.abxs'));
  const file = vectors('holdouts_forced.json');
  for (const reason of ['forced', 'holdout', 'not_in_traffic', 'not_targeted']) {
    const { testCase, key } = caseWith(file, reason);
    assert.equal(client.variant(key, testCase.context, { nowMs: testCase.now_ms }).reason, reason);
  }
  client.evaluate(file.cases[1].context, { nowMs: file.cases[1].now_ms });
  await clock.advance(10_000);
  // Units that reached a holdout log their arm in it (the next test); nothing else.
  assert.deepEqual(transport.events().filter((e) => !holdoutArm(e)), []);
  client.close();
});

test('a unit logs its arm in each holdout it reaches, once, from variant() and evaluate()', async () => {
  const { client, transport, clock } = recordingClient(golden('holdouts_forced.abxs'));
  const file = vectors('holdouts_forced.json');
  const want = new Set();
  const experimentIds = new Set(client.snapshot.experimentIds);
  for (const testCase of file.cases.slice(0, 20)) {
    const options = { nowMs: testCase.now_ms };
    for (const [key, expected] of Object.entries(testCase.expected)) {
      client.variant(key, testCase.context, options);
      client.variant(key, testCase.context, options);
      if (expected.holdout === undefined) continue;
      const i = client.snapshot.experimentIndex.get(key);
      const holdoutId = client.snapshot.experimentHoldoutIds[i];
      assert.ok(holdoutId && !experimentIds.has(holdoutId), key);
      const unit = String(testCase.context[client.snapshot.experimentUnits[i]]);
      want.add(`${holdoutId} ${unit} ${expected.holdout}`);
    }
    client.evaluate(testCase.context, { ...options, logExposures: true });
  }
  await clock.advance(10_000);
  const logged = transport.events().filter(holdoutArm).map((e) => `${e.experiment_id} ${e.unit} ${e.variant}`);
  assert.equal(logged.length, new Set(logged).size, 'each unit once per holdout');
  assert.deepEqual(new Set(logged), want);
  assert.deepEqual(new Set([...want].map((w) => w.split(' ')[2])), new Set(['held', 'released']));
  client.close();
});

test('a flag logs the arm of the holdout its unit reached through the experiments it consulted', async () => {
  const { client, transport, clock } = recordingClient(golden('holdouts_forced.abxs'));
  const file = vectors('holdouts_forced.json');
  const want = new Set();
  for (const testCase of file.cases.slice(0, 40)) {
    for (const [key, expected] of Object.entries(testCase.flags)) {
      const detail = client.flagDetail(key, testCase.context, null, { nowMs: testCase.now_ms });
      assert.equal(JSON.stringify(detail.value), expected.value, key);
      if (expected.holdout === undefined) continue;
      // The holdout and unit of the experiment the unit reached it through.
      const i = client.snapshot.experimentIndex.get(expected.holdout_experiment);
      const unitAttribute = client.snapshot.experimentUnits[i];
      const unit = String(testCase.context[unitAttribute]);
      want.add(`${client.snapshot.experimentHoldoutIds[i]} ${unitAttribute} ${unit} ${expected.holdout}`);
    }
  }
  await clock.advance(10_000);
  const logged = transport.events().filter(holdoutArm);
  const once = logged.map((e) => `${e.experiment_id} ${e.unit_attribute} ${e.unit}`);
  assert.equal(once.length, new Set(once).size, 'each unit once per holdout');
  assert.deepEqual(new Set(logged.map((e) => `${e.experiment_id} ${e.unit_attribute} ${e.unit} ${e.variant}`)), want);
  // Held units, whose flags fall through to later rules, log their arm too.
  assert.deepEqual(new Set([...want].map((w) => w.split(' ').at(-1))), new Set(['held', 'released']));
  client.close();
});

test('exposures carry the attributes the experiment is broken down by (format 2), holdout arms none', async () => {
  const { client, transport, clock } = recordingClient(golden('dimensions.abxs'));
  const file = vectors('dimensions.json');
  const want = new Map();
  for (const testCase of file.cases.slice(0, 60)) {
    for (const [key, expected] of Object.entries(testCase.expected)) {
      client.variant(key, testCase.context, { nowMs: testCase.now_ms });
      if (expected.reason !== 'assigned') continue;
      const i = client.snapshot.experimentIndex.get(key);
      const unit = String(testCase.context[client.snapshot.experimentUnits[i]]);
      // A unit's first exposure is the one logged, with that context's attributes.
      const exposure = `${client.snapshot.experimentIds[i]} ${unit}`;
      if (!want.has(exposure)) want.set(exposure, expected.attributes);
    }
  }
  await clock.advance(10_000);
  const events = transport.events();
  const experiments = events.filter((e) => !holdoutArm(e));
  assert.equal(experiments.length, want.size);
  let carried = 0;
  for (const event of experiments) {
    const expected = want.get(`${event.experiment_id} ${event.unit}`);
    const empty = expected === undefined || Object.keys(expected).length === 0;
    assert.deepEqual(event.attributes, empty ? undefined : expected, JSON.stringify(event));
    carried += empty ? 0 : 1;
  }
  assert.ok(carried > 20, `${carried} exposures carried attributes`);
  assert.ok(events.filter(holdoutArm).length > 0);
  assert.ok(events.filter(holdoutArm).every((e) => e.attributes === undefined));
  client.close();
});

test('a context that fails to read its attributes again costs the exposure its attributes, not the exposure', async () => {
  const clock = new FakeClock();
  const transport = new FakeTransport({ clock });
  const queue = new EventQueue({ transport, storage: new MemoryStorage(), clock });
  const errors = [];
  const client = AbxClient.fromSnapshot(golden('dimensions.abxs'), { queue, clock, onError: (e) => errors.push(e) });
  const file = vectors('dimensions.json');
  const { testCase, key } = caseWith(file, 'assigned', (want) => Object.keys(want.attributes ?? {}).includes('country'));
  // Evaluating reads each attribute twice (encodeContext counts, then writes); the reads
  // for the exposure's attributes come after.
  let reads = 0;
  const context = { ...testCase.context };
  Object.defineProperty(context, 'country', {
    enumerable: true,
    get() {
      reads += 1;
      if (reads > 2) throw new Error('read again');
      return testCase.context.country;
    },
  });
  assert.equal(client.variant(key, context, { nowMs: testCase.now_ms }).reason, 'assigned');
  await clock.advance(10_000);
  const i = client.snapshot.experimentIndex.get(key);
  const logged = transport.events().filter((e) => e.experiment_id === client.snapshot.experimentIds[i]);
  assert.equal(logged.length, 1);
  assert.equal(logged[0].attributes, undefined);
  assert.equal(errors.length, 1);
  client.close();
});

test('a flag whose value came from an experiment logs that experiment\'s exposure', async () => {
  const { client, transport, clock } = recordingClient(golden('flags.abxs'));
  const found = flags.cases.flatMap((testCase) =>
    Object.entries(testCase.flags)
      .filter(([, f]) => f.reason === 'experiment')
      .map(([key, f]) => ({ testCase, key, f })),
  );
  const assignedSource = found.find(({ testCase }) => Object.values(testCase.expected).some((e) => e.reason === 'assigned'));
  const { testCase, key, f } = assignedSource;
  const detail = client.flagDetail(key, testCase.context, null, { nowMs: testCase.now_ms });
  assert.equal(detail.reason, 'experiment');
  assert.deepEqual(detail.value, JSON.parse(f.value));
  await clock.advance(5_000);
  const exposures = transport.events();
  assert.equal(exposures.length, 1);
  const all = client.evaluate(testCase.context, { nowMs: testCase.now_ms });
  const source = Object.values(all.experiments).find((e) => e.experimentId === exposures[0].experiment_id);
  assert.equal(source.reason, 'assigned');
  assert.equal(source.variant, exposures[0].variant);
  client.close();
});

test('track() queues metric events for the unit; integers name the unit as digits', async () => {
  const { client, transport, clock } = recordingClient();
  const errors = [];
  client.onError = (e) => errors.push(e);
  const id = client.track('purchase', 19.5, { user_id: 'u-1' }, { nowMs: 1_760_000_000_123 });
  assert.match(id, /^[0-9a-f-]{36}$/);
  client.track('visit', undefined, { device_id: 42 }, { unitAttribute: 'device_id', nowMs: 1 });
  assert.equal(client.track('visit', 1, { user_id: '' }), null);
  assert.equal(errors[0].code, 'invalid_event');
  await clock.advance(5_000);
  assert.deepEqual(transport.events(), [
    { kind: 'metric', unit: 'u-1', unit_attribute: 'user_id', event_type: 'purchase', value: 19.5, timestamp: 1_760_000_000_123, event_id: id },
    { kind: 'metric', unit: '42', unit_attribute: 'device_id', event_type: 'visit', value: 1, timestamp: 1, event_id: transport.events()[1].event_id },
  ]);
  client.close();
});

test('configs are parsed once and frozen, so callers cannot change each other\'s', () => {
  const { client } = recordingClient();
  const { testCase, key } = caseWith(basic, 'assigned');
  const a = client.variant(key, testCase.context, { nowMs: testCase.now_ms });
  assert.ok(Object.isFrozen(a.config));
  // Modules are strict, so writing to a frozen object throws.
  assert.throws(() => {
    a.config.injected = true;
  }, TypeError);
  client.close();
});
