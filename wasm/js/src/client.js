// AbxClient: evaluates experiments and flags locally from a snapshot, logs exposures and
// metric events through the beacon queue, and (with `connect`) keeps the snapshot fresh.
//
// The client never throws into the page once it exists: without a usable snapshot every
// experiment answers "no variant" (reason `not_loaded`) and logs no exposure, and every flag
// answers the caller's fallback. Failures are reported to `onError` instead.

import { systemClock } from './clock.js';
import { AbxError } from './errors.js';
import { EventQueue, originTransport } from './queue.js';
import { LoadedSnapshot } from './snapshot.js';
import { SafeStorage, defaultStorage, fromBase64, toBase64 } from './storage.js';
import { unitString } from './context.js';
import { init } from './wasm.js';

const NOT_LOADED = 'not_loaded';
const UNKNOWN = 'unknown_key';
const FAILED = 'error';
/** Bounds the exposure memory of a long-lived page (or a server-side Node process). */
const MAX_REMEMBERED_EXPOSURES = 100_000;

function decodeKey(publicKey) {
  if (publicKey instanceof Uint8Array) return publicKey;
  if (typeof publicKey === 'string' && /^[0-9a-fA-F]{64}$/.test(publicKey)) {
    const bytes = new Uint8Array(32);
    for (let i = 0; i < 32; i++) bytes[i] = parseInt(publicKey.slice(2 * i, 2 * i + 2), 16);
    return bytes;
  }
  throw new AbxError('bad_public_key', 'publicKey must be 64 hex digits or 32 bytes, or a list of them');
}

/**
 * The keys a snapshot may be signed by: one, or several while the origin's signing key is
 * rotated (the old and the new one), so that no client has to switch at the same moment.
 */
function decodeKeys(publicKey) {
  if (publicKey === undefined || publicKey === null) return undefined;
  const keys = Array.isArray(publicKey) ? publicKey.map(decodeKey) : [decodeKey(publicKey)];
  if (!keys.length) throw new AbxError('bad_public_key', 'publicKey lists no key');
  return keys;
}

function trimOrigin(origin) {
  return String(origin).replace(/\/+$/, '');
}

export class AbxClient {
  /** Use `AbxClient.fromSnapshot` or `AbxClient.connect`. */
  constructor(options = {}) {
    this.clock = options.clock ?? systemClock;
    this.onError = options.onError ?? (() => {});
    this.onExposure = options.onExposure ?? null;
    this.publicKey = decodeKeys(options.publicKey);
    this.snapshot = null;
    this.etag = null;
    this.exposed = new Set();
    this.queue = options.queue ?? null;
    this.closers = [];
    this.snapshotListeners = new Set();
  }

  /**
   * Calls `listener(version)` after each new snapshot is swapped in (not for the one given
   * to `fromSnapshot`). Returns a function that removes the listener.
   */
  onSnapshot(listener) {
    this.snapshotListeners.add(listener);
    return () => this.snapshotListeners.delete(listener);
  }

  /**
   * A client over snapshot bytes. Requires `await init()` first. Throws an `AbxError` whose
   * `code` is the snapshot error (docs/snapshot-format.md) when the bytes are refused.
   * @param {Uint8Array | ArrayBuffer} bytes
   */
  static fromSnapshot(bytes, options = {}) {
    const client = new AbxClient(options);
    client.snapshot = new LoadedSnapshot(new Uint8Array(bytes), client.publicKey);
    return client;
  }

  /**
   * A client that loads the snapshot from an origin and keeps it fresh. Resolves once a
   * snapshot is usable (from the local cache at once, else from the origin) or once
   * `initialTimeoutMs` passes; never rejects.
   */
  static async connect(options) {
    let client;
    try {
      client = new AbxClient(options);
    } catch (error) {
      // A malformed public key: refuse to trust any snapshot, but still give the page a client.
      client = new AbxClient({ ...options, publicKey: undefined });
      client.publicKey = null;
      client.onError(AbxError.from(error));
    }
    await client.start(options);
    return client;
  }

  async start({
    origin,
    sdkKey,
    fetch = globalThis.fetch?.bind(globalThis),
    EventSource = globalThis.EventSource,
    storage = defaultStorage(),
    refreshIntervalMs = 60_000,
    initialTimeoutMs = 3_000,
    stream = true,
    events = {},
    wasm,
  }) {
    this.origin = trimOrigin(origin);
    this.sdkKey = sdkKey;
    this.fetch = fetch;
    this.storage = new SafeStorage(storage, (error) => this.onError(AbxError.from(error)));
    this.cacheKey = `abx:snapshot:${this.origin}`;
    if (this.queue === null && events !== false) {
      this.queue = new EventQueue({
        transport: originTransport({ origin: this.origin, sdkKey, fetch }),
        storage,
        storageKey: `abx:events:${this.origin}`,
        clock: this.clock,
        onError: this.onError,
        ...events,
      });
      if (typeof globalThis.document !== 'undefined') this.queue.attach();
    }
    try {
      await init(wasm);
    } catch (error) {
      this.onError(AbxError.from(error));
      return;
    }
    const cached = this.loadCached();
    const first = this.refresh();
    this.keepFresh(refreshIntervalMs, stream ? EventSource : undefined);
    if (!cached) {
      let timer;
      const timeout = new Promise((resolve) => {
        timer = this.clock.setTimeout(resolve, initialTimeoutMs);
      });
      await Promise.race([first, timeout]);
      this.clock.clearTimeout(timer);
    }
  }

  /** The version of the snapshot in use, or null before one is loaded. */
  get snapshotVersion() {
    return this.snapshot?.version ?? null;
  }

  /**
   * Replaces the snapshot if the bytes verify and are not older than the current one.
   * Returns whether it was taken; never throws.
   */
  loadSnapshot(bytes, etag = null) {
    if (this.publicKey === null) return false;
    let next;
    try {
      next = new LoadedSnapshot(bytes, this.publicKey);
    } catch (error) {
      this.onError(AbxError.from(error));
      return false;
    }
    if (this.snapshot !== null && next.version < this.snapshot.version) {
      // A stale cache or CDN must not roll assignments back.
      next.free();
      return false;
    }
    const previous = this.snapshot;
    this.snapshot = next;
    this.etag = etag;
    previous?.free();
    if (previous?.version !== next.version) {
      for (const listener of this.snapshotListeners) {
        try {
          listener(next.version);
        } catch (error) {
          this.onError(AbxError.from(error));
        }
      }
    }
    return true;
  }

  loadCached() {
    const text = this.storage.get(this.cacheKey);
    if (!text) return false;
    try {
      const { etag, bytes } = JSON.parse(text);
      return this.loadSnapshot(fromBase64(bytes), etag ?? null);
    } catch (error) {
      this.onError(new AbxError('cache_unreadable', 'ignoring an unreadable cached snapshot', error));
      return false;
    }
  }

  /**
   * Fetches the snapshot if it changed (If-None-Match) and swaps it in. Resolves to whether
   * a new snapshot was loaded; never rejects.
   */
  async refresh() {
    if (typeof this.fetch !== 'function') return false;
    try {
      const headers = { authorization: `Bearer ${this.sdkKey}` };
      if (this.etag) headers['if-none-match'] = this.etag;
      // Format 2 names the attributes that each experiment's exposures carry.
      const response = await this.fetch(`${this.origin}/api/v1/snapshot?format=2`, { headers, cache: 'no-store' });
      if (response.status === 304) return false;
      if (!response.ok) {
        this.onError(new AbxError('fetch_failed', `GET /api/v1/snapshot answered ${response.status}`));
        return false;
      }
      const bytes = new Uint8Array(await response.arrayBuffer());
      const etag = response.headers.get('etag');
      if (!this.loadSnapshot(bytes, etag)) return false;
      this.storage.set(this.cacheKey, JSON.stringify({ etag, bytes: toBase64(bytes) }));
      return true;
    } catch (error) {
      this.onError(new AbxError('fetch_failed', `cannot fetch the snapshot: ${error?.message ?? error}`, error));
      return false;
    }
  }

  keepFresh(intervalMs, EventSourceClass) {
    if (intervalMs > 0) {
      let timer;
      const tick = () => {
        void this.refresh().finally(() => {
          if (timer !== null) timer = this.clock.setTimeout(tick, intervalMs);
        });
      };
      timer = this.clock.setTimeout(tick, intervalMs);
      this.closers.push(() => {
        this.clock.clearTimeout(timer);
        timer = null;
      });
    }
    if (typeof EventSourceClass === 'function') {
      try {
        // The format the snapshot is fetched in, so that the announced ETags are its own.
        const url = `${this.origin}/api/v1/snapshot/stream?format=2&key=${encodeURIComponent(this.sdkKey)}`;
        const source = new EventSourceClass(url);
        source.addEventListener('snapshot', (event) => {
          let announced;
          try {
            announced = JSON.parse(event.data);
          } catch {
            return;
          }
          if (announced?.etag !== undefined && announced.etag === this.etag) return;
          void this.refresh();
        });
        this.closers.push(() => source.close());
      } catch (error) {
        this.onError(AbxError.from(error));
      }
    }
  }

  now(options) {
    return options?.nowMs ?? this.clock.now();
  }

  /**
   * Every experiment and flag for a context. Bulk evaluation does not count as the unit
   * seeing the variants, so it logs exposures only with `{ logExposures: true }`.
   */
  evaluate(context, options) {
    const snapshot = this.snapshot;
    const result = { snapshotVersion: snapshot?.version ?? null, experiments: {}, flags: {} };
    if (snapshot === null) return result;
    let words;
    try {
      words = snapshot.evaluatePacked(context, this.now(options));
    } catch (error) {
      this.onError(AbxError.from(error));
      return result;
    }
    const experiments = snapshot.experimentKeys;
    for (let i = 0; i < experiments.length; i++) {
      const one = snapshot.experimentResult(i, words[2 * i], words[2 * i + 1]);
      one.experimentId = snapshot.experimentIds[i];
      one.logExposure = one.reason === 'assigned';
      result.experiments[experiments[i]] = one;
      if (options?.logExposures) {
        if (one.logExposure) this.expose(snapshot, i, one.variant, context, options);
        this.exposeHoldout(snapshot, i, words[2 * i], context, options);
      }
    }
    const base = 2 * experiments.length;
    const flags = snapshot.flagKeys;
    for (let i = 0; i < flags.length; i++) {
      result.flags[flags[i]] = snapshot.flagResult(i, words[base + 2 * i], words[base + 2 * i + 1]);
    }
    return result;
  }

  /**
   * One experiment: `{ variant, config, reason }`. Logs the exposure the first time this
   * unit is assigned a variant of it in this page.
   */
  variant(key, context, options) {
    const snapshot = this.snapshot;
    if (snapshot === null) return { variant: null, config: null, reason: NOT_LOADED };
    const i = snapshot.experimentIndex.get(key);
    if (i === undefined) return { variant: null, config: null, reason: UNKNOWN };
    try {
      const words = snapshot.experimentPacked(i, context, this.now(options));
      const { variant, config, reason } = snapshot.experimentResult(i, words[0], words[1]);
      if (reason === 'assigned') this.expose(snapshot, i, variant, context, options);
      this.exposeHoldout(snapshot, i, words[0], context, options);
      return { variant, config, reason };
    } catch (error) {
      this.onError(AbxError.from(error));
      return { variant: null, config: null, reason: FAILED };
    }
  }

  /** A flag's value (parsed JSON), or `fallback` when it cannot be evaluated. */
  flag(key, context, fallback = null, options) {
    return this.flagDetail(key, context, fallback, options).value;
  }

  /**
   * A flag's `{ value, reason }`, with the `variant` of the experiment that supplied the
   * value when one did; that experiment's exposure is logged when it assigned the unit, and
   * the unit's arm in the holdout it reached through the flag's experiments, if any.
   */
  flagDetail(key, context, fallback = null, options) {
    const snapshot = this.snapshot;
    if (snapshot === null) return { value: fallback, reason: NOT_LOADED };
    const i = snapshot.flagIndex.get(key);
    if (i === undefined) return { value: fallback, reason: UNKNOWN };
    try {
      const words = snapshot.flagPacked(i, context, this.now(options));
      const { value, reason } = snapshot.flagResult(i, words[0], words[1]);
      // A held unit falls through the rule that consulted its experiment, so the module
      // names the experiment whose holdout step to log separately from the value's.
      if (words[5] > 0) this.exposeHoldout(snapshot, words[5] - 1, words[6], context, options);
      if (words[2] > 0) {
        const experiment = words[2] - 1;
        const result = snapshot.experimentResult(experiment, words[3], words[4]);
        if (result.reason === 'assigned') this.expose(snapshot, experiment, result.variant, context, options);
        if (result.variant !== null) return { value, reason, variant: result.variant };
      }
      return { value, reason };
    } catch (error) {
      this.onError(AbxError.from(error));
      return { value: fallback, reason: FAILED };
    }
  }

  /**
   * Logs the unit's arm in experiment `i`'s holdout, once per unit and holdout, when the
   * result (reason code `reason`) reached it: the holdout's readout compares the units it
   * holds with those it releases, so both must be logged.
   */
  exposeHoldout(snapshot, i, reason, context, options) {
    const step = snapshot.holdoutStep(i, reason);
    if (step !== null) this.expose(snapshot, i, step.arm, context, options, step.holdoutId);
  }

  /**
   * Logs an exposure to `experimentId` (experiment `i`'s own unless given) of its unit. An
   * exposure to the experiment itself carries the attributes its results are broken down
   * by; one to its holdout (which has no dimensions) carries the unit alone.
   */
  expose(snapshot, i, variant, context, options, experimentId = snapshot.experimentIds[i]) {
    const unitAttribute = snapshot.experimentUnits[i];
    const unit = unitString(context?.[unitAttribute]);
    if (unit === null) return;
    const memory = `${experimentId}\u0000${unitAttribute}\u0000${unit}`;
    if (this.exposed.has(memory)) return;
    const event = {
      kind: 'exposure',
      unit,
      unit_attribute: unitAttribute,
      experiment_id: experimentId,
      variant,
      timestamp: this.now(options),
    };
    if (experimentId === snapshot.experimentIds[i]) {
      const attributes = this.exposureAttributes(snapshot, i, context);
      if (attributes !== null) event.attributes = attributes;
    }
    if (this.exposed.size >= MAX_REMEMBERED_EXPOSURES) this.exposed.clear();
    this.exposed.add(memory);
    this.record(event);
  }

  /**
   * The attributes an exposure to experiment `i` carries, or null. A context that fails to
   * read (a throwing getter) costs the exposure its attributes, reported, not the exposure.
   */
  exposureAttributes(snapshot, i, context) {
    try {
      return snapshot.exposureAttributes(i, context);
    } catch (error) {
      this.onError(AbxError.from(error));
      return null;
    }
  }

  /**
   * Records a metric event (`value` defaults to 1) for the unit in `context`
   * (`options.unitAttribute`, default `user_id`), with `options.properties` if given.
   * Returns the event id, or null when the context has no such unit.
   */
  track(eventType, value = 1, context = {}, options = {}) {
    const unitAttribute = options.unitAttribute ?? 'user_id';
    const unit = unitString(context?.[unitAttribute]);
    if (typeof eventType !== 'string' || eventType === '' || unit === null || !Number.isFinite(value)) {
      this.onError(new AbxError('invalid_event', 'track() needs an event type, a finite value and a unit'));
      return null;
    }
    return this.record({
      kind: 'metric',
      unit,
      unit_attribute: unitAttribute,
      event_type: eventType,
      value,
      timestamp: this.now(options),
      ...(options.properties ? { properties: { ...options.properties } } : {}),
    });
  }

  record(event) {
    let id = null;
    try {
      if (this.queue) id = this.queue.enqueue(event);
      if (this.onExposure && event.kind === 'exposure') this.onExposure({ ...event, event_id: id });
    } catch (error) {
      this.onError(AbxError.from(error));
    }
    return id;
  }

  /** Sends queued events now. */
  flush() {
    return this.queue?.flush() ?? Promise.resolve();
  }

  /** Stops refreshing and listening, persists unsent events and frees the snapshot. */
  close() {
    for (const close of this.closers.splice(0)) close();
    this.queue?.close();
    this.snapshot?.free();
    this.snapshot = null;
  }
}
