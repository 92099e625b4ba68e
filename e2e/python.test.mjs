// Issue 29's journey: a Python service (the installed `abx` package, in its own process, with
// a server key) and the browser package (in headless Chromium, with the public sdk key)
// assign the same 20,000 users identically from the real origin; every event either sends
// is stored once; with the origin down, a new Python process keeps assigning from its
// snapshot file.
//
// Needs ABX_PYTHON: an interpreter with `abx` installed (scripts/test-e2e.sh sets it).

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { missingPieces, openPage, sleep, startOrigin, startSite, tempDir } from './lib.mjs';

const USERS = 20_000;
const NOW = Date.now();
const PLANS = ['free', 'free', 'pro', 'team'];
const COUNTRIES = ['US', 'CA', 'DE', 'BR'];
const contexts = Array.from({ length: USERS }, (_, i) => ({
  user_id: `py-user-${i}`,
  plan: PLANS[(i * 7 + 3) % PLANS.length],
  country: COUNTRIES[(i * 5 + 1) % COUNTRIES.length],
}));
const EXPERIMENTS = ['checkout_button', 'checkout_copy', 'search_ranker'];
const FLAGS = ['new_nav'];

function python() {
  if (process.env.ABX_PYTHON) return process.env.ABX_PYTHON;
  if (process.env.ABX_REQUIRE_ALL) throw new Error('ABX_PYTHON is not set: run scripts/test-e2e.sh');
  return null;
}
const skip = missingPieces() ?? (python() ? false : 'ABX_PYTHON is not set (an interpreter with the abx package); run scripts/test-e2e.sh');

function runPython(args) {
  const run = spawnSync(python(), ['-P', join(import.meta.dirname, 'python_journey.py'), ...args], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(run.status, 0, `python_journey.py failed:\n${run.stdout}\n${run.stderr}`);
}

/** Event ids in the origin's event log, with how often each is stored. */
function storedEventCounts(origin) {
  const file = readdirSync(origin.dataDir).find((f) => /-events\.db$/.test(f));
  const script = 'import json, sqlite3, sys\n'
    + 'db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)\n'
    + 'print(json.dumps(dict(db.execute("SELECT event_id, COUNT(*) FROM events GROUP BY event_id").fetchall())))';
  return JSON.parse(execFileSync('python3', ['-c', script, join(origin.dataDir, file)], { maxBuffer: 64 << 20 }).toString());
}

describe('a Python service and the browser package', { skip }, () => {
  let origin;
  const work = tempDir('python');
  const cache = join(work, 'snapshot.abxs');
  const usersFile = join(work, 'users.json');
  let pythonRun;
  let publicKey;
  let site;
  let browser;

  before(async () => {
    origin = await startOrigin();
    const create = (path, body) => origin.create(path, body);
    await create('/api/v1/metrics', { key: 'purchase', kind: 'conversion', event_type: 'purchase' });
    await create('/api/v1/layers', { key: 'checkout', name: 'Checkout page' });
    await create('/api/v1/segments', { key: 'paying', condition: { attr: 'plan', op: 'in', value: ['pro', 'team'] } });
    const experiments = [
      await create('/api/v1/experiments', {
        key: 'checkout_button', layer: 'checkout', traffic_percent: 50, primary_metric: 'purchase',
        variants: [{ name: 'control', weight: 50, config: { color: 'blue' } }, { name: 'treatment', weight: 50, config: { color: 'green' } }],
      }),
      await create('/api/v1/experiments', {
        key: 'checkout_copy', layer: 'checkout', traffic_percent: 40, primary_metric: 'purchase',
        variants: [{ name: 'control', weight: 34 }, { name: 'short', weight: 33 }, { name: 'friendly', weight: 33 }],
      }),
      await create('/api/v1/experiments', {
        key: 'search_ranker', traffic_percent: 100, primary_metric: 'purchase', targeting: { segment: 'paying' },
        variants: [{ name: 'control', weight: 50 }, { name: 'learned', weight: 50 }],
      }),
    ];
    await create('/api/v1/flags', {
      key: 'new_nav', default_value: false,
      rules: [{ condition: { attr: 'country', op: 'in', value: ['US', 'CA'] }, rollout_percent: 30, value: true }],
    });
    for (const e of experiments) await create(`/api/v1/experiments/${e.id}/start`, {});
  });

  after(async () => {
    await browser?.close();
    await site?.close();
    await origin?.cleanup();
    rmSync(work, { recursive: true, force: true });
  });

  test(`${USERS} users: identical assignments, every event stored once`, { timeout: 600_000 }, async () => {
    publicKey = await origin.publicKey();
    const serverKey = await origin.serverKey();
    const sdkKey = await origin.sdkKey();
    writeFileSync(usersFile, JSON.stringify({ contexts, now_ms: NOW, experiments: EXPERIMENTS, flags: FLAGS, track: true }));
    runPython([origin.url, serverKey, publicKey, cache, usersFile, join(work, 'python.json')]);
    pythonRun = JSON.parse(readFileSync(join(work, 'python.json'), 'utf8'));
    assert.deepEqual(pythonRun.errors, []);
    assert.equal(pythonRun.settled, true);

    // The browser package in headless Chromium, on a site whose /api/v1 is the origin: it
    // reads the client snapshot with the public (sdk) key and logs exposures as pages do.
    site = await startSite(origin.url, work);
    browser = await openPage(site);
    const connected = await browser.page.evaluate((o) => window.connect(o), { sdkKey, publicKey });
    assert.deepEqual(connected, { version: pythonRun.snapshot_version, errors: [] });
    let assigned = 0;
    // In pages of 2,000 users, flushing between them, as the queue holds at most 10,000 events.
    for (let start = 0; start < USERS; start += 2000) {
      const page = contexts.slice(start, start + 2000);
      const answers = await browser.page.evaluate(
        ({ experiments, flags, page, now }) => window.answers(experiments, flags, page, now),
        { experiments: EXPERIMENTS, flags: FLAGS, page, now: NOW },
      );
      answers.forEach((got, j) => {
        const py = pythonRun.results[start + j];
        assert.deepEqual(got, py, `user ${start + j}: Chromium ${JSON.stringify(got)}, Python ${JSON.stringify(py)}`);
        assigned += EXPERIMENTS.filter((key) => got.experiments[key][1] === 'assigned').length;
      });
      await browser.page.evaluate(() => window.flush());
    }
    assert.deepEqual(browser.page.errors, []);

    const tracked = pythonRun.tracked.length;
    assert.equal(tracked, USERS / 10);
    assert.ok(pythonRun.tracked.every((id) => typeof id === 'string'));
    // Each side logs one exposure per assigned unit and experiment.
    const stats = pythonRun.event_stats;
    assert.deepEqual(stats, { sent: assigned + tracked, dropped: 0, rejected: 0, retries: stats.retries, queued: 0 });
    let stored = storedEventCounts(origin);
    for (let waited = 0; Object.keys(stored).length < 2 * assigned + tracked && waited < 20_000; waited += 200) {
      await sleep(200);
      stored = storedEventCounts(origin);
    }
    const counts = Object.values(stored);
    assert.equal(counts.length, 2 * assigned + tracked, 'every event the two clients sent is stored');
    assert.ok(counts.every((n) => n === 1), 'and stored once');
    assert.ok(pythonRun.tracked.every((id) => stored[id] === 1));
    console.log(`python e2e: ${USERS} users, ${assigned} assignments alike; ${counts.length} events stored once`);
  });

  test('with the origin down, a new Python process assigns from its snapshot file', { timeout: 300_000 }, async () => {
    assert.ok(pythonRun, 'the first test ran');
    await origin.stop();
    const offline = join(work, 'offline.json');
    writeFileSync(usersFile, JSON.stringify({ contexts: contexts.slice(0, 2000), now_ms: NOW, experiments: EXPERIMENTS, flags: FLAGS, track: false, close_timeout: 2 }));
    runPython([origin.url, 'abx_server_unused', publicKey, cache, usersFile, offline]);
    const run = JSON.parse(readFileSync(offline, 'utf8'));
    assert.equal(run.snapshot_version, pythonRun.snapshot_version);
    assert.deepEqual(run.results, pythonRun.results.slice(0, 2000));
    // Its exposures wait for the origin; at exit, after close()'s timeout, they are reported.
    assert.equal(run.settled, false);
    assert.ok(run.event_stats.queued > 0 && run.event_stats.dropped === 0, JSON.stringify(run.event_stats));
    assert.deepEqual(run.errors, ['events_unsent', 'fetch_failed']);
  });
});
