// Compiled with `tsc --noEmit` by scripts/test-wasm.sh: the hand-written declarations in
// src/index.d.ts must type-check against typical use (it fails to compile if they drift).

import { AbxClient, AbxError, EventQueue, MemoryStorage, init, originTransport } from '../src/index.js';
import type { Evaluation, FlagDetail, Transport, VariantResult } from '../src/index.js';

export async function usage(bytes: Uint8Array): Promise<void> {
  await init();
  const local = AbxClient.fromSnapshot(bytes, { publicKey: '00'.repeat(32) });
  const client = await AbxClient.connect({
    origin: 'https://abx.example',
    sdkKey: 'sdk',
    publicKey: new Uint8Array(32),
    storage: new MemoryStorage(),
    refreshIntervalMs: 30_000,
    events: { flushIntervalMs: 1_000, maxBodyBytes: 32 * 1024 },
    onError: (error: AbxError) => console.warn(error.code, error.message),
  });
  const context = { user_id: 'u1', country: 'US', age: 34, tags: ['beta'], beta: true };
  const result: VariantResult = client.variant('checkout_button_color', context);
  const variant: string | null = result.variant;
  const all: Evaluation = local.evaluate(context, { nowMs: Date.now(), logExposures: false });
  const version: number | null = all.snapshotVersion;
  const on = client.flag('new_nav', context, false);
  const detail: FlagDetail = client.flagDetail('new_nav', context);
  const id: string | null = client.track('purchase', 19.99, context, { unitAttribute: 'user_id' });
  const transport: Transport = originTransport({ origin: 'https://abx.example', sdkKey: 'sdk' });
  const queue = new EventQueue({ transport, random: Math.random });
  queue.attach();
  await client.flush();
  void [variant, version, on, detail, id, queue.size];
  client.close();
}

// The OpenFeature providers must satisfy each SDK's own Provider type.
import { OpenFeature as ServerFeatures } from '@openfeature/server-sdk';
import { OpenFeature as WebFeatures } from '@openfeature/web-sdk';
import { AbxServerProvider } from '../src/openfeature/server.js';
import { AbxWebProvider } from '../src/openfeature/web.js';

export async function openFeatureUsage(client: AbxClient): Promise<void> {
  await ServerFeatures.setProviderAndWait(new AbxServerProvider(client, { unitAttribute: 'user_id' }));
  const server: boolean = await ServerFeatures.getClient().getBooleanValue('new_nav', false, { targetingKey: 'u1' });
  await WebFeatures.setProviderAndWait(new AbxWebProvider(client));
  const web: string = WebFeatures.getClient().getStringValue('theme', 'light');
  void [server, web];
}
