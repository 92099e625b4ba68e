// The beacon queue against a fake clock and a fake transport.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { EventQueue, MemoryStorage, MAX_EVENT_BYTES } from '../src/index.js';
import { FakeClock, FakeTransport, settle } from './fakes.js';

const KEY = 'abx:events:test';

function setup({ answers, beacon, storage = new MemoryStorage(), ...options } = {}) {
  const clock = new FakeClock();
  const transport = new FakeTransport({ answers, beacon, clock });
  const errors = [];
  const queue = new EventQueue({
    transport,
    storage,
    storageKey: KEY,
    clock,
    random: () => 0,
    onError: (error) => errors.push(error),
    ...options,
  });
  return { clock, transport, queue, storage, errors };
}

function metric(i, padding = '') {
  return {
    kind: 'metric',
    unit: `user-${i}-ünïcødé-😀${padding}`,
    unit_attribute: 'user_id',
    event_type: 'conversion',
    value: i,
    timestamp: 1_760_000_000_000 + i,
  };
}

function stored(storage) {
  return JSON.parse(storage.getItem(KEY) ?? '[]');
}

test('batches stay within 60 KiB of UTF-8 and carry every event exactly once, in order', async () => {
  const { clock, transport, queue } = setup();
  const ids = [];
  for (let i = 0; i < 3_000; i++) ids.push(queue.enqueue(metric(i, 'x'.repeat(i % 300))));
  // More than a body's worth was queued, so sending started without waiting for the interval.
  await settle();
  assert.ok(transport.sends.length > 0, 'a size-triggered flush happened at once');
  await clock.advance(5_000);
  assert.ok(transport.sends.length >= 10, `${transport.sends.length} bodies`);
  for (const send of transport.sends) {
    assert.ok(Buffer.byteLength(send.body, 'utf8') <= 60 * 1024, `${Buffer.byteLength(send.body)} bytes`);
  }
  const sent = transport.events();
  assert.deepEqual(sent.map((e) => e.event_id), ids);
  assert.equal(new Set(ids).size, ids.length);
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.deepEqual(sent[7], { ...metric(7, 'x'.repeat(7)), event_id: ids[7] });
  assert.equal(queue.size, 0);
});

test('a few events are sent when the flush interval elapses, not before', async () => {
  const { clock, transport, queue } = setup();
  queue.enqueue(metric(1));
  queue.enqueue(metric(2));
  await clock.advance(4_999);
  assert.equal(transport.sends.length, 0);
  await clock.advance(1);
  assert.equal(transport.sends.length, 1);
  assert.equal(transport.events().length, 2);
  assert.equal(transport.sends[0].keepalive, false);
});

test('pagehide hands everything to sendBeacon as text bodies within the limit', async () => {
  const { transport, queue, storage } = setup();
  // The size-triggered request never answers, so most events are still queued at pagehide.
  const hanging = [];
  transport.send = (body) => {
    hanging.push(body);
    return new Promise(() => {});
  };
  const win = new EventTarget();
  queue.attach(win, new EventTarget());
  const ids = [];
  for (let i = 0; i < 1_000; i++) ids.push(queue.enqueue(metric(i, 'y'.repeat(100))));
  await settle();
  assert.equal(hanging.length, 1);
  win.dispatchEvent(new Event('pagehide'));
  const beacons = transport.sends;
  assert.ok(beacons.length >= 2 && beacons.every((s) => s.beacon), `${beacons.length} beacons`);
  for (const s of beacons) assert.ok(Buffer.byteLength(s.body) <= 60 * 1024);
  const inFlight = JSON.parse(hanging[0]).events.map((e) => e.event_id);
  const beaconed = transport.events().map((e) => e.event_id);
  assert.deepEqual([...inFlight, ...beaconed], ids);
  // Only the unanswered request's events remain persisted, for the next page to resend.
  assert.deepEqual(stored(storage).map((e) => e.event_id), inFlight);
});

test('a hidden document flushes too; a visible one does not', async () => {
  const { transport, queue } = setup();
  const doc = new EventTarget();
  queue.attach(new EventTarget(), doc);
  queue.enqueue(metric(1));
  doc.visibilityState = 'visible';
  doc.dispatchEvent(new Event('visibilitychange'));
  assert.equal(transport.sends.length, 0);
  doc.visibilityState = 'hidden';
  doc.dispatchEvent(new Event('visibilitychange'));
  assert.equal(transport.sends.length, 1);
  assert.ok(transport.sends[0].beacon);
});

test('when sendBeacon refuses, a keepalive fetch carries the events', async () => {
  const { transport, queue, storage } = setup({ beacon: false });
  const win = new EventTarget();
  queue.attach(win, new EventTarget());
  const id = queue.enqueue(metric(1));
  win.dispatchEvent(new Event('pagehide'));
  assert.equal(transport.sends.length, 1);
  assert.equal(transport.sends[0].keepalive, true);
  assert.equal(transport.sends[0].beacon, false);
  await settle();
  assert.deepEqual(transport.events().map((e) => e.event_id), [id]);
  assert.deepEqual(stored(storage), []);
});

test('network failures are retried with exponential backoff under the same ids', async () => {
  const failure = new TypeError('network down');
  const { clock, transport, queue } = setup({ answers: [0, failure, 503] });
  const start = clock.now();
  const ids = [queue.enqueue(metric(1)), queue.enqueue(metric(2))];
  await clock.advance(5_000); // first attempt: status 0
  await clock.advance(1_000); // retry after 1 s: throws
  await clock.advance(1_999);
  assert.equal(transport.sends.length, 2, 'no attempt before the 2 s backoff');
  await clock.advance(1); // retry after 2 s: 503
  await clock.advance(4_000); // retry after 4 s: accepted
  assert.deepEqual(
    transport.sends.map((s) => s.at - start),
    [5_000, 6_000, 8_000, 12_000],
  );
  for (const send of transport.sends) {
    assert.deepEqual(JSON.parse(send.body).events.map((e) => e.event_id), ids);
  }
  await clock.advance(60_000);
  assert.equal(transport.sends.length, 4, 'nothing is sent again after success');
});

test('429 and 503 honour Retry-After', async () => {
  const { clock, transport, queue } = setup({
    answers: [{ status: 429, retryAfter: '7' }, { status: 503, retryAfter: '2' }],
  });
  const start = clock.now();
  queue.enqueue(metric(1));
  await clock.advance(5_000);
  await clock.advance(6_999);
  assert.equal(transport.sends.length, 1);
  await clock.advance(1);
  assert.equal(transport.sends.length, 2);
  await clock.advance(2_000);
  assert.deepEqual(transport.sends.map((s) => s.at - start), [5_000, 12_000, 14_000]);
  assert.equal(queue.size, 0);
});

test('while backing off, leaving the page only persists; the next page sends', async () => {
  const storage = new MemoryStorage();
  const first = setup({ storage, answers: [{ status: 503, retryAfter: '30' }] });
  const win = new EventTarget();
  first.queue.attach(win, new EventTarget());
  const id = first.queue.enqueue(metric(1));
  await first.clock.advance(5_000);
  win.dispatchEvent(new Event('pagehide'));
  assert.equal(first.transport.sends.length, 1, 'no beacon into a refusing origin');
  assert.deepEqual(stored(storage).map((e) => e.event_id), [id]);
  const next = setup({ storage });
  await next.clock.advance(0);
  assert.deepEqual(next.transport.events().map((e) => e.event_id), [id]);
});

test('unsent events survive a reload and are sent once, under their original ids', async () => {
  const storage = new MemoryStorage();
  const first = setup({ storage, answers: [503, 503, 503] });
  const events = [metric(1), metric(2), metric(3)];
  const ids = events.map((e) => first.queue.enqueue(e));
  await first.clock.advance(5_000); // fails; the page then dies without closing the queue
  assert.deepEqual(stored(storage).map((e) => e.event_id), ids);

  const second = setup({ storage });
  await second.clock.advance(0);
  assert.deepEqual(second.transport.events(), events.map((e, i) => ({ ...e, event_id: ids[i] })));
  await settle();
  assert.deepEqual(stored(storage), []);

  const third = setup({ storage });
  await third.clock.advance(60_000);
  assert.equal(third.transport.sends.length, 0, 'a delivered event is not sent again');
});

test('events in flight when the page dies are persisted and resent under the same id', async () => {
  const storage = new MemoryStorage();
  const first = setup({ storage });
  // A send that never answers: the page is torn down mid-request.
  first.transport.send = (body) => {
    first.transport.sends.push({ body });
    return new Promise(() => {});
  };
  const id = first.queue.enqueue(metric(1));
  await first.clock.advance(5_000);
  assert.equal(first.transport.sends.length, 1);
  assert.deepEqual(stored(storage).map((e) => e.event_id), [id]);
  const second = setup({ storage });
  await second.clock.advance(0);
  assert.deepEqual(second.transport.events().map((e) => e.event_id), [id]);
});

test('an event is never queued twice or given a second id', async () => {
  const { clock, transport, queue } = setup({ answers: [500] });
  const event = { ...metric(1), event_id: '0b9e7c52-3c6a-4d8e-9f61-2f1c7c1b8a01' };
  assert.equal(queue.enqueue(event), event.event_id);
  assert.equal(queue.enqueue(event), event.event_id);
  await clock.advance(5_000);
  await clock.advance(1_000);
  assert.equal(queue.enqueue(event), event.event_id, 'resubmitting a sent event is a no-op');
  await clock.advance(10_000);
  const ids = transport.sends.map((s) => JSON.parse(s.body).events.map((e) => e.event_id));
  assert.deepEqual(ids, [[event.event_id], [event.event_id]]);
});

test('two tabs sharing storage keep each other\'s unsent events', async () => {
  const storage = new MemoryStorage();
  const tabA = setup({ storage, answers: [503] });
  const tabB = setup({ storage, answers: [503] });
  const a = tabA.queue.enqueue(metric(1));
  const b = tabB.queue.enqueue(metric(2));
  await settle();
  assert.deepEqual(new Set(stored(storage).map((e) => e.event_id)), new Set([a, b]));
  await tabB.clock.advance(5_000); // B fails once
  await tabB.clock.advance(1_000); // B's retry succeeds
  await settle();
  assert.deepEqual(stored(storage).map((e) => e.event_id), [a], 'A\'s event is still kept');
});

test('the origin refusing a batch for good (400) drops it and reports', async () => {
  const { clock, transport, queue, errors, storage } = setup({ answers: [400] });
  queue.enqueue(metric(1));
  await clock.advance(5_000);
  await clock.advance(60_000);
  assert.equal(transport.sends.length, 1);
  assert.equal(errors[0]?.code, 'events_rejected');
  await settle();
  assert.deepEqual(stored(storage), []);
});

test('events larger than the origin accepts are refused at once', () => {
  const { queue, errors } = setup();
  assert.equal(queue.enqueue(metric(1, 'z'.repeat(MAX_EVENT_BYTES))), null);
  assert.equal(errors[0]?.code, 'event_too_large');
  assert.equal(queue.size, 0);
});

test('a long outage keeps the newest events up to the cap', async () => {
  const { queue, errors } = setup({ maxQueuedEvents: 5, answers: Array(100).fill(0) });
  const ids = [];
  for (let i = 0; i < 8; i++) ids.push(queue.enqueue(metric(i)));
  assert.equal(queue.size, 5);
  assert.equal(errors.filter((e) => e.code === 'queue_full').length, 3);
});
