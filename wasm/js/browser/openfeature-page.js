// Runs inside headless Chromium (driven by browser/run.js): the web provider through the
// official @openfeature/web-sdk, connected to run.js's stand-in origin (basic.abxs).

import { OpenFeature } from '@openfeature/web-sdk';

import { AbxClient, init } from '../src/index.js';
import { AbxWebProvider } from '../src/openfeature/web.js';

window.runOpenFeature = async () => {
  localStorage.clear();
  await init();
  const client = await AbxClient.connect({ origin: location.origin, sdkKey: 'sdk-openfeature', stream: false, refreshIntervalMs: 0, events: { flushIntervalMs: 1 } });
  const context = { targetingKey: 'user-411192', country: 'CA' };
  await OpenFeature.setContext(context);
  await OpenFeature.setProviderAndWait(new AbxWebProvider(client));
  const features = OpenFeature.getClient();
  const expected = client.variant('checkout_button_color', { user_id: 'user-411192', country: 'CA' });
  const variant = features.getStringDetails('checkout_button_color', 'none');
  const config = features.getObjectValue('checkout_button_color', {});
  const missing = features.getBooleanDetails('no_such_flag', true);
  const mismatch = features.getNumberDetails('checkout_button_color', 7);
  features.track('purchase', { value: 12 });
  await client.flush();
  await OpenFeature.close();
  return { expected, variant: { value: variant.value, reason: variant.reason, variant: variant.variant }, config, missing: missing.errorCode, mismatch: mismatch.errorCode };
};
