// The OpenFeature providers through the official SDKs (@openfeature/server-sdk and
// @openfeature/web-sdk from npm): typed resolution, errors, the targeting key as the unit,
// tracking, and provider events on snapshot changes. The web provider also runs in
// headless Chromium (browser/run.js).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { OpenFeature as ServerFeatures, ProviderEvents as ServerEvents } from '@openfeature/server-sdk';
import { OpenFeature as WebFeatures } from '@openfeature/web-sdk';

import { AbxClient, MemoryStorage, init } from '../src/index.js';
import { AbxServerProvider } from '../src/openfeature/server.js';
import { AbxWebProvider } from '../src/openfeature/web.js';
import { FakeEventSource, FakeOrigin, FakeTransport, settle } from './fakes.js';

const golden = (name) => readFileSync(new URL(`../../../snapshots/golden/${name}`, import.meta.url));
await init();

/** A connected client whose snapshot and events go through fakes. */
async function connected(snapshot = golden('flags.abxs')) {
  FakeEventSource.instances.length = 0;
  const origin = new FakeOrigin();
  if (snapshot) origin.serve(snapshot, '"v5"');
  const transport = new FakeTransport();
  const errors = [];
  const client = await AbxClient.connect({
    origin: 'https://abx.test', sdkKey: 'k', fetch: origin.fetch, EventSource: FakeEventSource,
    storage: new MemoryStorage(), refreshIntervalMs: 0, initialTimeoutMs: 50,
    events: { transport, flushIntervalMs: 1 }, onError: (e) => errors.push(e),
  });
  return { client, origin, transport, errors, source: FakeEventSource.instances[0] };
}

const sentEvents = (transport) => transport.events();

test('server provider: typed resolution with reasons, variants and metadata', async () => {
  const { client } = await connected();
  await ServerFeatures.setProviderAndWait('typed', new AbxServerProvider(client));
  const features = ServerFeatures.getClient('typed');
  const user = { targetingKey: 'user-1', plan: 'free' };
  const everyone = await features.getBooleanDetails('everyone', false, user);
  assert.deepEqual([everyone.value, everyone.reason, everyone.errorCode], [true, 'TARGETING_MATCH', undefined]);
  assert.equal((await features.getBooleanDetails('killed', true, user)).reason, 'DISABLED');
  const limit = await features.getNumberDetails('tiered_limit', -1, user);
  assert.ok([10, 25, 50, 100].includes(limit.value));
  assert.equal(await features.getStringValue('no_rules', 'x', user), 'plain');
  assert.ok('text' in (await features.getObjectValue('banner_config', {}, user)));
  const theme = await features.getStringDetails('theme', 'none', { targetingKey: 'user-2' });
  assert.deepEqual([theme.value, theme.reason, theme.variant, theme.flagMetadata.abx_reason], ['dark', 'SPLIT', 'dark', 'experiment']);
  // Experiments: the variant key as a string, the config as an object.
  for (let n = 0; n < 50; n++) {
    const direct = client.variant('theme_experiment', { user_id: `user-${n}` });
    const variant = await features.getStringDetails('theme_experiment', 'none', { targetingKey: `user-${n}` });
    const config = await features.getObjectValue('theme_experiment', {}, { targetingKey: `user-${n}` });
    assert.deepEqual([variant.value, config], direct.variant === null ? ['none', {}] : [direct.variant, direct.config]);
  }
  await ServerFeatures.clearProviders();
});

test('server provider: errors carry OpenFeature codes and the default', async () => {
  const { client } = await connected();
  await ServerFeatures.setProviderAndWait('errors', new AbxServerProvider(client));
  const features = ServerFeatures.getClient('errors');
  const user = { targetingKey: 'user-1' };
  const missing = await features.getBooleanDetails('no_such_flag', true, user);
  assert.deepEqual([missing.value, missing.errorCode, missing.reason], [true, 'FLAG_NOT_FOUND', 'ERROR']);
  const mismatch = await features.getBooleanDetails('tiered_limit', false, user);
  assert.deepEqual([mismatch.value, mismatch.errorCode], [false, 'TYPE_MISMATCH']);
  assert.equal((await features.getNumberDetails('theme_experiment', 7, user)).errorCode, 'TYPE_MISMATCH');
  await ServerFeatures.clearProviders();
});

test('server provider: the targeting key is the unit, tracking records metric events', async () => {
  const { client, transport } = await connected();
  await ServerFeatures.setProviderAndWait('unit', new AbxServerProvider(client));
  const features = ServerFeatures.getClient('unit');
  for (let n = 0; n < 300; n++) {
    const plan = n % 2 ? 'pro' : 'free';
    const want = client.flagDetail('tiered_limit', { user_id: `user-${n}`, plan }, -1);
    assert.equal(await features.getNumberValue('tiered_limit', -1, { targetingKey: `user-${n}`, plan }), want.value);
  }
  features.track('purchase', { targetingKey: 'user-42' }, { value: 9.5, sku: 'a-1' });
  features.track('signup', { targetingKey: 'user-43' });
  await client.flush();
  const metrics = sentEvents(transport).filter((e) => e.kind === 'metric').map((e) => [e.unit, e.event_type, e.value, e.properties]);
  assert.deepEqual(metrics, [['user-42', 'purchase', 9.5, { sku: 'a-1' }], ['user-43', 'signup', 1, undefined]]);
  await ServerFeatures.clearProviders();
});

test('server provider: a new snapshot emits ConfigurationChanged; the first one Ready', async () => {
  const { client, origin, source } = await connected(null);
  assert.equal(client.snapshotVersion, null);
  const events = [];
  const provider = new AbxServerProvider(client);
  ServerFeatures.setProvider('events', provider);
  const features = ServerFeatures.getClient('events');
  features.addHandler(ServerEvents.Ready, () => events.push('ready'));
  features.addHandler(ServerEvents.ConfigurationChanged, (d) => events.push(`changed ${d.metadata?.snapshot_version}`));
  const before = await features.getBooleanDetails('everyone', false, { targetingKey: 'u' });
  assert.equal(before.errorCode, 'PROVIDER_NOT_READY');
  origin.serve(golden('basic.abxs'), '"v1"');
  source.emit('snapshot', { version: 1, etag: '"v1"' });
  await settle();
  origin.serve(golden('flags.abxs'), '"v5"');
  source.emit('snapshot', { version: 5, etag: '"v5"' });
  await settle();
  assert.deepEqual(events, ['ready', 'changed 5']);
  assert.equal(await features.getBooleanValue('everyone', false, { targetingKey: 'u' }), true);
  await ServerFeatures.clearProviders();
});

test('web provider: synchronous resolution against the global context', async () => {
  const { client, transport } = await connected();
  await WebFeatures.setContext({ targetingKey: 'user-2', plan: 'free' });
  await WebFeatures.setProviderAndWait(new AbxWebProvider(client));
  const features = WebFeatures.getClient();
  const theme = features.getStringDetails('theme', 'none');
  assert.deepEqual([theme.value, theme.reason, theme.variant], ['dark', 'SPLIT', 'dark']);
  assert.equal(features.getBooleanValue('everyone', false), true);
  assert.equal(features.getBooleanDetails('nope', true).errorCode, 'FLAG_NOT_FOUND');
  assert.equal(features.getStringDetails('tiered_limit', 'x').errorCode, 'TYPE_MISMATCH');
  features.track('purchase', { value: 3 });
  await client.flush();
  const sent = sentEvents(transport);
  assert.ok(sent.some((e) => e.kind === 'exposure' && e.unit === 'user-2'), 'the theme experiment exposure is logged');
  assert.ok(sent.some((e) => e.kind === 'metric' && e.unit === 'user-2' && e.value === 3));
  await WebFeatures.close();
});
