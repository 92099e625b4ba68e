// An OpenFeature provider for browsers (`@openfeature/web-sdk`) over `AbxClient`:
//
//   import { OpenFeature } from '@openfeature/web-sdk';
//   import { AbxWebProvider } from '@abx/browser/openfeature/web';
//   await OpenFeature.setContext({ targetingKey: userId, country: 'DE' });
//   await OpenFeature.setProviderAndWait(new AbxWebProvider(await AbxClient.connect({ ... })));
//
// The web SDK resolves synchronously against the context given to `setContext`, which suits
// abx: evaluation is local. Resolution, tracking and events are the server provider's.

import { OpenFeatureEventEmitter, ProviderEvents } from '@openfeature/web-sdk';

import { ProviderCore } from './resolve.js';

export class AbxWebProvider extends ProviderCore {
  runsOn = 'client';

  /**
   * @param {import('../index.js').AbxClient} client
   * @param {{ unitAttribute?: string }} [options]
   */
  constructor(client, options) {
    super(client, options, { OpenFeatureEventEmitter, ProviderEvents });
  }

  resolveBooleanEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('boolean', flagKey, defaultValue, context);
  }

  resolveStringEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('string', flagKey, defaultValue, context);
  }

  resolveNumberEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('number', flagKey, defaultValue, context);
  }

  resolveObjectEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('object', flagKey, defaultValue, context);
  }
}
