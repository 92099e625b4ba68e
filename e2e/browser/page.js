// Runs in headless Chromium, served by e2e/lib.mjs next to a proxy to the real origin. The
// page imports the browser package as a site would and exposes what the journeys drive.

import { AbxClient, init } from '/wasm/js/src/index.js';
import { replayInvalid, replayVectors } from '/wasm/js/test/conformance-lib.js';

async function bytesOf(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** The journey's suite (written by the test from the origin's answers) through the package. */
window.replaySuite = async () => {
  await init();
  const vectors = await (await fetch('/suite/vectors/e2e.json')).json();
  const replayed = replayVectors(AbxClient, 'e2e.json', vectors, await bytesOf(`/suite/golden/${vectors.snapshot}`));
  const manifest = await (await fetch('/suite/vectors/invalid.json')).json();
  const invalid = await replayInvalid(AbxClient, manifest, (file) => bytesOf(`/suite/golden/${file}`));
  return { ...replayed, mismatches: replayed.mismatches.slice(0, 10), invalid };
};

let client = null;

/** connect() against the origin (through this page's server), as a site's page does. */
window.connect = async ({ sdkKey, publicKey }) => {
  const errors = [];
  client = await AbxClient.connect({ origin: location.origin, sdkKey, publicKey, stream: false, refreshIntervalMs: 0, onError: (e) => errors.push(e.code) });
  return { version: client.snapshotVersion, errors };
};

/** Fetches the newest snapshot now; returns its version. */
window.refresh = async () => {
  await client.refresh();
  return client.snapshotVersion;
};

/** One experiment's variant for each unit; the package logs the exposures. */
window.assign = (key, units) => units.map((unit) => client.variant(key, { user_id: unit }).variant);

/** Metric events for units, as a page's tracking calls. */
window.track = (eventType, units) => units.map((unit) => client.track(eventType, 1, { user_id: unit }));

/** The page is left: the queue hands everything to navigator.sendBeacon. */
window.leave = () => {
  let beacons = 0;
  const original = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = (url, body) => {
    beacons += 1;
    return original(url, body);
  };
  window.dispatchEvent(new PageTransitionEvent('pagehide', { persisted: false }));
  navigator.sendBeacon = original;
  return { beacons, pending: client.queue.pending.length };
};

/** One experiment for one context: `variant/reason`, or `gone` when the snapshot lacks it. */
window.detail = (key, context) => {
  const got = client.variant(key, context);
  return got.reason === 'unknown_key' ? 'gone' : `${got.variant}/${got.reason}`;
};

/**
 * Every context's answers from the connected client: `[variant, reason]` per experiment (the
 * package logs the exposures) and `[value, reason]` per flag.
 */
window.answers = (experimentKeys, flagKeys, contexts, nowMs) => contexts.map((context) => ({
  experiments: Object.fromEntries(experimentKeys.map((key) => {
    const got = client.variant(key, context, { nowMs });
    return [key, [got.variant, got.reason]];
  })),
  flags: Object.fromEntries(flagKeys.map((key) => {
    const got = client.flagDetail(key, context, null, { nowMs });
    return [key, [got.value, got.reason]];
  })),
}));

/** Sends the queued events now; resolves once they are settled. */
window.flush = () => client.flush();
