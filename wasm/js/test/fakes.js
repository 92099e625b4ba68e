// Test doubles: a clock whose time only moves when told, a transport that records what the
// queue sends and answers from a script, an origin for `fetch`, and an EventSource.

import { setImmediate as nextTurn } from 'node:timers/promises';

/** Lets promise callbacks (and microtasks queued by them) run. */
export async function settle() {
  for (let i = 0; i < 5; i++) await nextTurn();
}

export class FakeClock {
  constructor(start = 1_760_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.time;
  }

  setTimeout(callback, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + Math.max(0, ms), callback });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Moves time forward, firing due timers in order and letting their promises settle. */
  async advance(ms) {
    const end = this.time + ms;
    await settle();
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].callback();
      await settle();
    }
    this.time = end;
  }
}

/**
 * Records every body. `answers` is consumed in order (a status number, or `{ status,
 * retryAfter }`, or an Error to throw); when empty every send gets 202.
 */
export class FakeTransport {
  constructor({ answers = [], beacon = true, clock } = {}) {
    this.answers = [...answers];
    this.beaconAnswer = beacon;
    this.clock = clock;
    this.sends = [];
  }

  async send(body, { keepalive }) {
    this.sends.push({ body, keepalive, beacon: false, at: this.clock?.now() });
    const answer = this.answers.length > 0 ? this.answers.shift() : 202;
    if (answer instanceof Error) throw answer;
    return typeof answer === 'number' ? { status: answer } : answer;
  }

  beacon(body) {
    if (!this.beaconAnswer) return false;
    this.sends.push({ body, keepalive: true, beacon: true, at: this.clock?.now() });
    return true;
  }

  /** Every event sent, in order. */
  events() {
    return this.sends.flatMap((s) => JSON.parse(s.body).events);
  }
}

/** An origin serving snapshots to `fetch`, honouring If-None-Match. */
export class FakeOrigin {
  constructor() {
    this.snapshot = null;
    this.etag = null;
    this.requests = [];
    this.down = false;
  }

  serve(bytes, etag) {
    this.snapshot = bytes;
    this.etag = etag;
  }

  fetch = async (url, init = {}) => {
    this.requests.push({ url: String(url), headers: { ...init.headers } });
    if (this.down) throw new TypeError('fetch failed');
    if (this.snapshot === null) return new Response('no snapshot', { status: 503 });
    if (init.headers?.['if-none-match'] === this.etag) return new Response(null, { status: 304 });
    return new Response(this.snapshot, { status: 200, headers: { etag: this.etag } });
  };
}

/** Stands in for the browser's EventSource; `emit` delivers a server-sent event. */
export class FakeEventSource {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.instances.push(this);
  }

  addEventListener(type, listener) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  emit(type, data) {
    for (const listener of this.listeners.get(type) ?? []) listener({ data: JSON.stringify(data) });
  }

  close() {
    this.closed = true;
  }
}
