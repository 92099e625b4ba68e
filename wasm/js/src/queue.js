// The beacon queue: exposure and metric events on their way to `POST /api/v1/events`
// (docs/api.md, "Events").
//
// - Every event gets its UUID `event_id` when it is queued and keeps it through retries,
//   persistence and reloads; the origin stores an id once, so delivery is at least once and
//   counting is exactly once. An event is never given a second id.
// - Events are sent in batches whose JSON body is at most `maxBodyBytes` (60 KiB, under the
//   origin's 64 KiB limit for text/plain bodies and the browsers' 64 KiB keepalive quota):
//   as soon as that much is queued, every `flushIntervalMs`, and when the page is hidden or
//   left (`visibilitychange`, `pagehide`) with `navigator.sendBeacon`, falling back to
//   `fetch` with `keepalive`.
// - A failed send (network error, 408, 429, 5xx) keeps its batch and retries after an
//   exponential backoff, or after the server's Retry-After. Other 4xx answers mean the batch
//   can never succeed; it is dropped and reported.
// - Unsent events (including those in flight) are kept in storage, so a reload or a crash
//   sends them later under the same ids.

import { systemClock } from './clock.js';
import { AbxError } from './errors.js';
import { SafeStorage, defaultStorage } from './storage.js';

/** The origin refuses single events over 32 KiB (docs/api.md). */
export const MAX_EVENT_BYTES = 32 * 1024;
/** `{"events":[` + `]}` */
const ENVELOPE_BYTES = 13;
/** How many sent ids are remembered, so that persisting never resurrects a sent event. */
const SENT_MEMORY = 10_000;

/** UTF-8 length of a string (JSON.stringify output has no lone surrogates). */
export function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

function batchBody(batch) {
  return `{"events":[${batch.map((record) => record.json).join(',')}]}`;
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date. */
function retryAfterMs(value, now) {
  if (value === null || value === undefined || value === '') return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

function isRetryable(status) {
  return status === 0 || status === 408 || status === 429 || status >= 500;
}

/**
 * The transport that speaks to the origin: `send` posts a body with `fetch` and reports the
 * status (0 for a network error); `beacon` hands a body to `navigator.sendBeacon`.
 * The key travels as `?key=` because a beacon cannot set headers, and the body is
 * `text/plain`, which needs no CORS preflight.
 */
export function originTransport({ origin, sdkKey, fetch = globalThis.fetch, navigator = globalThis.navigator }) {
  const url = `${origin.replace(/\/+$/, '')}/api/v1/events?key=${encodeURIComponent(sdkKey)}`;
  return {
    async send(body, { keepalive = false } = {}) {
      try {
        const response = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'text/plain;charset=UTF-8' },
          body,
          keepalive,
        });
        return { status: response.status, retryAfter: response.headers.get('retry-after') };
      } catch (error) {
        return { status: 0, error };
      }
    },
    beacon(body) {
      if (typeof navigator?.sendBeacon !== 'function') return false;
      try {
        return navigator.sendBeacon(url, body);
      } catch {
        return false;
      }
    },
  };
}

/**
 * @typedef {{ event_id: string, [field: string]: unknown }} EventRecord
 * @typedef {{ id: string, json: string, bytes: number }} Queued
 */

export class EventQueue {
  /**
   * @param {object} options
   * @param {{ send(body: string, options: { keepalive: boolean }): Promise<{ status: number,
   *   retryAfter?: string | null }>, beacon?(body: string): boolean }} options.transport
   */
  constructor({
    transport,
    storage = defaultStorage(),
    storageKey = 'abx:events',
    clock = systemClock,
    maxBodyBytes = 60 * 1024,
    flushIntervalMs = 5_000,
    maxQueuedEvents = 10_000,
    retryBaseMs = 1_000,
    retryMaxMs = 5 * 60_000,
    random = Math.random,
    randomUUID = () => crypto.randomUUID(),
    onError = () => {},
  }) {
    this.transport = transport;
    this.clock = clock;
    this.maxBodyBytes = maxBodyBytes;
    this.flushIntervalMs = flushIntervalMs;
    this.maxQueuedEvents = maxQueuedEvents;
    this.retryBaseMs = retryBaseMs;
    this.retryMaxMs = retryMaxMs;
    this.random = random;
    this.randomUUID = randomUUID;
    this.onError = onError;
    this.storage = new SafeStorage(storage, onError);
    this.storageKey = storageKey;

    /** @type {Queued[]} waiting to be sent, oldest first */
    this.pending = [];
    this.pendingBytes = 0;
    /** @type {Set<Queued[]>} batches being sent */
    this.inFlight = new Set();
    /** ids known here (pending or in flight) */
    this.known = new Set();
    /** recently sent or dropped ids, oldest first */
    this.done = new Set();
    this.attempt = 0;
    this.retryAt = 0;
    this.timer = null;
    this.timerAt = Infinity;
    this.sending = null;
    this.persistQueued = false;
    this.detach = null;
    this.adopt();
  }

  /** Events waiting or in flight. */
  get size() {
    let n = this.pending.length;
    for (const batch of this.inFlight) n += batch.length;
    return n;
  }

  /**
   * Queues an event, giving it an `event_id` unless it has one. Returns the id, or null when
   * the event is too large to ever be accepted.
   * @param {Record<string, unknown>} event
   */
  enqueue(event) {
    const record = { ...event, event_id: typeof event.event_id === 'string' ? event.event_id : this.randomUUID() };
    if (this.known.has(record.event_id) || this.done.has(record.event_id)) return record.event_id;
    const json = JSON.stringify(record);
    const bytes = utf8Length(json);
    if (bytes > MAX_EVENT_BYTES || bytes + ENVELOPE_BYTES > this.maxBodyBytes) {
      this.onError(new AbxError('event_too_large', `an event of ${bytes} bytes cannot be sent`));
      return null;
    }
    if (this.size >= this.maxQueuedEvents && this.pending.length > 0) {
      // Offline for long: keep the newest events rather than grow without bound.
      const dropped = this.pending.shift();
      this.pendingBytes -= dropped.bytes;
      this.forget(dropped.id);
      this.onError(new AbxError('queue_full', 'dropped the oldest queued event'));
    }
    this.pending.push({ id: record.event_id, json, bytes });
    this.pendingBytes += bytes;
    this.known.add(record.event_id);
    this.persistSoon();
    if (this.pendingBytes + this.pending.length + ENVELOPE_BYTES > this.maxBodyBytes) {
      void this.flush();
    } else {
      this.schedule(this.flushIntervalMs);
    }
    return record.event_id;
  }

  /**
   * Sends everything queued, one batch at a time; resolves when done or when a failure made
   * it back off. Never rejects.
   */
  flush() {
    if (this.sending) return this.sending;
    if (this.pending.length === 0 || this.clock.now() < this.retryAt) return Promise.resolve();
    this.sending = this.drain().finally(() => {
      this.sending = null;
    });
    return this.sending;
  }

  async drain() {
    while (this.pending.length > 0 && this.clock.now() >= this.retryAt) {
      const batch = this.takeBatch();
      let result;
      try {
        result = await this.transport.send(batchBody(batch), { keepalive: false });
      } catch (error) {
        result = { status: 0, error };
      }
      if (!this.settle(batch, result)) return;
    }
  }

  /**
   * The page is being hidden or left: hand everything to the browser now. While the origin
   * asks to back off, only persist; the next page load sends the events.
   */
  flushOnExit() {
    if (this.clock.now() >= this.retryAt) {
      while (this.pending.length > 0) {
        const batch = this.takeBatch();
        const body = batchBody(batch);
        if (this.transport.beacon?.(body)) {
          this.settle(batch, { status: 202 });
          continue;
        }
        // sendBeacon is missing or over its quota; a keepalive fetch also outlives the page.
        this.transport.send(body, { keepalive: true }).then(
          (result) => this.settle(batch, result),
          (error) => this.settle(batch, { status: 0, error }),
        );
      }
    }
    this.persistNow();
  }

  /**
   * Flushes on `pagehide` and when the document becomes hidden. Returns a function that
   * detaches the listeners.
   */
  attach(win = globalThis, doc = globalThis.document) {
    const onPageHide = () => this.flushOnExit();
    const onVisibility = () => {
      if (doc?.visibilityState === 'hidden') this.flushOnExit();
    };
    win?.addEventListener?.('pagehide', onPageHide);
    doc?.addEventListener?.('visibilitychange', onVisibility);
    this.detach = () => {
      win?.removeEventListener?.('pagehide', onPageHide);
      doc?.removeEventListener?.('visibilitychange', onVisibility);
      this.detach = null;
    };
    return this.detach;
  }

  /** Stops timers and listeners and persists what is unsent. */
  close() {
    this.detach?.();
    this.cancelTimer();
    this.persistNow();
  }

  takeBatch() {
    const batch = [];
    let bytes = ENVELOPE_BYTES;
    while (this.pending.length > 0) {
      const next = this.pending[0];
      const added = next.bytes + (batch.length > 0 ? 1 : 0);
      if (bytes + added > this.maxBodyBytes) break;
      bytes += added;
      batch.push(this.pending.shift());
      this.pendingBytes -= next.bytes;
    }
    this.inFlight.add(batch);
    return batch;
  }

  /** Applies a send result to its batch; returns whether sending may go on. */
  settle(batch, result) {
    if (!this.inFlight.delete(batch)) return true;
    const status = result?.status ?? 0;
    if (status >= 200 && status < 300) {
      for (const record of batch) this.forget(record.id);
      this.attempt = 0;
      this.retryAt = 0;
      this.persistSoon();
      return true;
    }
    if (isRetryable(status)) {
      // Back to the front, in their original order, under the same ids.
      this.pending.unshift(...batch);
      for (const record of batch) this.pendingBytes += record.bytes;
      this.attempt += 1;
      const backoff = Math.min(this.retryMaxMs, this.retryBaseMs * 2 ** (this.attempt - 1));
      const delay =
        retryAfterMs(result.retryAfter, this.clock.now()) ?? backoff * (1 + 0.2 * this.random());
      this.retryAt = this.clock.now() + delay;
      this.schedule(delay, true);
      this.persistSoon();
      return false;
    }
    for (const record of batch) this.forget(record.id);
    this.onError(new AbxError('events_rejected', `the origin refused ${batch.length} events with status ${status}`));
    this.persistSoon();
    return true;
  }

  forget(id) {
    this.known.delete(id);
    this.done.add(id);
    if (this.done.size > SENT_MEMORY) this.done.delete(this.done.values().next().value);
  }

  schedule(ms, replace = false) {
    const at = this.clock.now() + ms;
    if (this.timer !== null && !replace && this.timerAt <= at) return;
    this.cancelTimer();
    this.timerAt = at;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.timerAt = Infinity;
      void this.flush().then(() => {
        if (this.pending.length > 0 && this.timer === null) this.schedule(this.flushIntervalMs);
      });
    }, ms);
  }

  cancelTimer() {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
  }

  readStored() {
    const text = this.storage.get(this.storageKey);
    if (!text) return [];
    try {
      const stored = JSON.parse(text);
      return Array.isArray(stored) ? stored.filter((e) => typeof e?.event_id === 'string') : [];
    } catch {
      return [];
    }
  }

  /** Takes over what an earlier page (or a crashed one) left unsent. */
  adopt() {
    for (const record of this.readStored()) {
      if (this.known.has(record.event_id)) continue;
      const json = JSON.stringify(record);
      const bytes = utf8Length(json);
      this.pending.push({ id: record.event_id, json, bytes });
      this.pendingBytes += bytes;
      this.known.add(record.event_id);
    }
    if (this.pending.length > 0) this.schedule(0);
  }

  persistSoon() {
    if (this.persistQueued) return;
    this.persistQueued = true;
    queueMicrotask(() => {
      this.persistQueued = false;
      this.persistNow();
    });
  }

  /**
   * Writes this queue's unsent events, keeping what other tabs stored under the same key
   * (their events are neither known nor done here).
   */
  persistNow() {
    const mine = [];
    for (const batch of this.inFlight) for (const record of batch) mine.push(record.json);
    for (const record of this.pending) mine.push(record.json);
    const others = this.readStored()
      .filter((e) => !this.known.has(e.event_id) && !this.done.has(e.event_id))
      .map((e) => JSON.stringify(e));
    const all = others.concat(mine);
    if (all.length === 0) this.storage.remove(this.storageKey);
    else this.storage.set(this.storageKey, `[${all.join(',')}]`);
  }
}
