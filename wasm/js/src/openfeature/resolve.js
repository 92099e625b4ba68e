// What the server and web OpenFeature providers share: typed resolution of abx flags and
// experiments, the evaluation context as an abx context, tracking, and provider events.
// Neither SDK is imported here (each provider passes its SDK's event emitter); error codes
// and reasons are OpenFeature's standard strings.

const FLAG_REASONS = { rule: 'TARGETING_MATCH', experiment: 'SPLIT', default: 'DEFAULT', disabled: 'DISABLED' };
const EXPERIMENT_REASONS = { assigned: 'SPLIT', forced: 'TARGETING_MATCH', shipped: 'STATIC', not_running: 'DISABLED' };

function isType(kind, value) {
  if (kind === 'object') return value !== null && typeof value === 'object';
  return typeof value === kind;
}

function failed(defaultValue, errorCode, errorMessage) {
  return { value: defaultValue, reason: 'ERROR', errorCode, errorMessage };
}

/** OpenFeature's context as abx attributes: the targeting key is the unit. */
export function abxContext(context, unitAttribute) {
  const attributes = {};
  for (const [name, value] of Object.entries(context ?? {})) {
    if (name !== 'targetingKey') attributes[name] = value;
  }
  if (context?.targetingKey !== undefined) attributes[unitAttribute] = context.targetingKey;
  return attributes;
}

/**
 * Resolves `key` as a flag, or else as an experiment (its variant key as a string, its
 * config as an object). `kind` is `boolean`, `string`, `number` or `object`.
 */
function resolve(client, unitAttribute, kind, key, defaultValue, context) {
  const attributes = abxContext(context, unitAttribute);
  const snapshotVersion = client.snapshotVersion ?? 0;
  const flag = client.flagDetail(key, attributes, defaultValue);
  if (flag.reason === 'not_loaded') return failed(defaultValue, 'PROVIDER_NOT_READY', 'abx has no snapshot yet');
  if (flag.reason === 'error') return failed(defaultValue, 'GENERAL', `flag ${key} could not be evaluated`);
  if (flag.reason !== 'unknown_key') {
    if (!isType(kind, flag.value)) return failed(defaultValue, 'TYPE_MISMATCH', `flag ${key} is not a ${kind}`);
    return { value: flag.value, reason: FLAG_REASONS[flag.reason] ?? 'UNKNOWN', variant: flag.variant, flagMetadata: { abx_reason: flag.reason, snapshot_version: snapshotVersion } };
  }
  const assignment = client.variant(key, attributes);
  if (assignment.reason === 'unknown_key') return failed(defaultValue, 'FLAG_NOT_FOUND', `no flag or experiment ${key}`);
  if (kind !== 'string' && kind !== 'object') {
    return failed(defaultValue, 'TYPE_MISMATCH', `${key} is an experiment: resolve it as a string or an object`);
  }
  const reason = EXPERIMENT_REASONS[assignment.reason] ?? 'DEFAULT';
  const flagMetadata = { abx_reason: assignment.reason, snapshot_version: snapshotVersion };
  if (assignment.variant === null) return { value: defaultValue, reason, flagMetadata };
  const value = kind === 'string' ? assignment.variant : assignment.config;
  if (!isType(kind, value)) return failed(defaultValue, 'TYPE_MISMATCH', `the config of ${key} is not an object`);
  return { value, reason, variant: assignment.variant, flagMetadata };
}

/** OpenFeature's track as an abx metric event for the targeting key. */
function track(client, unitAttribute, name, context, details) {
  const unit = context?.targetingKey;
  if (unit === undefined) {
    client.onError?.(new Error('track() needs a targeting key: it is the unit'));
    return;
  }
  const { value, ...properties } = details ?? {};
  client.track(name, value ?? 1, { [unitAttribute]: unit }, { unitAttribute, properties: Object.keys(properties).length ? properties : undefined });
}

/**
 * A provider without its resolvers, which the server SDK wants asynchronous and the web SDK
 * synchronous. `sdk` is the SDK's `{ OpenFeatureEventEmitter, ProviderEvents }`.
 */
export class ProviderCore {
  metadata = { name: 'abx' };
  hooks = [];

  constructor(client, { unitAttribute = 'user_id' } = {}, sdk) {
    this.client = client;
    this.unitAttribute = unitAttribute;
    this.events = new sdk.OpenFeatureEventEmitter();
    let ready = client.snapshotVersion !== null;
    this.unsubscribe = client.onSnapshot((version) => {
      const details = { message: `abx snapshot ${version}`, metadata: { snapshot_version: version } };
      this.events.emit(ready ? sdk.ProviderEvents.ConfigurationChanged : sdk.ProviderEvents.Ready, details);
      ready = true;
    });
  }

  async initialize() {
    // Rejecting leaves the provider not ready; the first snapshot emits Ready.
    if (this.client.snapshotVersion === null) throw new Error('abx has no snapshot yet');
  }

  async onClose() {
    this.unsubscribe();
    this.client.close();
  }

  resolveAs(kind, flagKey, defaultValue, context) {
    return resolve(this.client, this.unitAttribute, kind, flagKey, defaultValue, context);
  }

  track(trackingEventName, context, trackingEventDetails) {
    track(this.client, this.unitAttribute, trackingEventName, context, trackingEventDetails);
  }
}
