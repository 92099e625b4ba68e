// Runs inside headless Chromium (driven by browser/run.js): the conformance suite through the
// package as a page imports it, plus the browser-only paths of connect() and the beacon queue.

import { AbxClient, EventQueue, init, originTransport } from '../src/index.js';
import { replayInvalid, replayVectors } from '../test/conformance-lib.js';

const suite = '/snapshots/';

async function bytesOf(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

window.runConformance = async (files) => {
  await init();
  const results = [];
  for (const file of files) {
    const vectors = await (await fetch(`${suite}vectors/${file}`)).json();
    const bytes = await bytesOf(`${suite}golden/${vectors.snapshot}`);
    const { cases, failed, mismatches } = replayVectors(AbxClient, file, vectors, bytes);
    results.push({ file, cases, failed, mismatches: mismatches.slice(0, 10) });
  }
  const manifest = await (await fetch(`${suite}vectors/invalid.json`)).json();
  const invalid = await replayInvalid(AbxClient, manifest, (file) => bytesOf(`${suite}golden/${file}`));
  results.push({ file: 'invalid.json', ...invalid });
  return results;
};

/** connect(): first visit fetches and caches in localStorage; with the origin down, the cache serves. */
window.runConnect = async () => {
  localStorage.clear();
  const errors = [];
  const options = { origin: location.origin, sdkKey: 'sdk-browser', stream: false, refreshIntervalMs: 0, onError: (e) => errors.push(e.code) };
  const first = await AbxClient.connect(options);
  const firstVersion = first.snapshotVersion;
  const cached = localStorage.getItem(`abx:snapshot:${location.origin}`) !== null;
  first.close();
  await fetch('/__origin/down', { method: 'POST' });
  const second = await AbxClient.connect(options);
  const variant = second.variant('checkout_button_color', { user_id: 'user-411192', country: 'CA' });
  const secondVersion = second.snapshotVersion;
  // connect() returned at once from the cache; its background refresh fails afterwards.
  for (let waited = 0; waited < 3_000 && !errors.includes('fetch_failed'); waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  second.close();
  await fetch('/__origin/up', { method: 'POST' });
  return { firstVersion, cached, secondVersion, variant, errors };
};

/** The default transport in a real browser: one beacon (pagehide path) and one fetch. */
window.runBeacon = async () => {
  localStorage.clear();
  const queue = new EventQueue({
    transport: originTransport({ origin: location.origin, sdkKey: 'sdk-browser' }),
    storageKey: 'abx:events:browser-test',
  });
  const event = (i) => ({ kind: 'metric', unit: `u${i}`, unit_attribute: 'user_id', event_type: 'visit', value: 1, timestamp: Date.now() });
  const beaconed = [queue.enqueue(event(1)), queue.enqueue(event(2))];
  queue.flushOnExit();
  const fetched = [queue.enqueue(event(3))];
  await queue.flush();
  queue.close();
  return { beaconed, fetched, left: localStorage.getItem('abx:events:browser-test') };
};
