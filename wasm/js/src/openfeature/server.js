// An OpenFeature provider for servers (`@openfeature/server-sdk`) over `AbxClient`:
//
//   import { OpenFeature } from '@openfeature/server-sdk';
//   import { AbxServerProvider } from '@abx/browser/openfeature/server';
//   await OpenFeature.setProviderAndWait(new AbxServerProvider(await AbxClient.connect({ ... })));
//
// Flags resolve through the typed resolvers (TYPE_MISMATCH when the value has another JSON
// type); experiments resolve as their variant key (string) or config (object). The
// targeting key is the unit (`unitAttribute`, default `user_id`). `track` records abx metric
// events. New snapshots emit ConfigurationChanged (Ready for the first one when the client
// had none).

import { OpenFeatureEventEmitter, ProviderEvents } from '@openfeature/server-sdk';

import { ProviderCore } from './resolve.js';

export class AbxServerProvider extends ProviderCore {
  runsOn = 'server';

  /**
   * @param {import('../index.js').AbxClient} client
   * @param {{ unitAttribute?: string }} [options]
   */
  constructor(client, options) {
    super(client, options, { OpenFeatureEventEmitter, ProviderEvents });
  }

  async resolveBooleanEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('boolean', flagKey, defaultValue, context);
  }

  async resolveStringEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('string', flagKey, defaultValue, context);
  }

  async resolveNumberEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('number', flagKey, defaultValue, context);
  }

  async resolveObjectEvaluation(flagKey, defaultValue, context) {
    return this.resolveAs('object', flagKey, defaultValue, context);
  }
}
