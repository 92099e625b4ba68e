// `node browser/run.js` (after wasm/build.sh): serves the repository from 127.0.0.1, opens
// browser/conformance.html in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) and replays the conformance suite there, then checks connect() with
// localStorage, the beacon transport and the OpenFeature web provider against this server.
// Ends with `N passed, M failed`.

import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const served = ['wasm/js/src/', 'wasm/js/pkg/', 'wasm/js/test/', 'wasm/js/browser/', 'snapshots/', 'wasm/js/node_modules/@openfeature/'];
const types = { '.html': 'text/html', '.js': 'text/javascript', '.json': 'application/json', '.wasm': 'application/wasm', '.abxs': 'application/octet-stream' };
const snapshot = readFileSync(join(root, 'snapshots/golden/basic.abxs'));
const etag = '"basic-1"';

let originDown = false;
const received = [];

function readBody(request) {
  return new Promise((resolve) => {
    const chunks = [];
    request.on('data', (c) => chunks.push(c));
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

const server = createServer(async (request, response) => {
  const url = new URL(request.url, 'http://127.0.0.1');
  if (url.pathname === '/__origin/down' || url.pathname === '/__origin/up') {
    originDown = url.pathname.endsWith('down');
    response.writeHead(204).end();
    return;
  }
  if (url.pathname === '/api/v1/snapshot') {
    if (originDown) {
      request.socket.destroy();
      return;
    }
    if (request.headers['if-none-match'] === etag) {
      response.writeHead(304, { etag }).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/vnd.abx.snapshot', etag }).end(snapshot);
    return;
  }
  if (url.pathname === '/api/v1/events' && request.method === 'POST') {
    received.push({ key: url.searchParams.get('key'), type: request.headers['content-type'], body: await readBody(request) });
    response.writeHead(202, { 'content-type': 'application/json' }).end('{"accepted":1,"duplicates":0}');
    return;
  }
  const path = normalize(decodeURIComponent(url.pathname)).replace(/^[/\\]+/, '');
  if (!served.some((prefix) => path.startsWith(prefix.split('/').join(sep))) || path.includes('..')) {
    response.writeHead(404).end();
    return;
  }
  try {
    const file = join(root, path);
    if (!statSync(file).isFile()) throw new Error('not a file');
    response.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
    response.end(readFileSync(file));
  } catch {
    response.writeHead(404).end();
  }
});

await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;
const userDataDir = mkdtempSync(join(tmpdir(), 'abx-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

let passed = 0;
let failed = 0;
const check = (ok, what) => {
  if (ok) passed++;
  else {
    failed++;
    console.error(`chromium: FAILED ${what}`);
  }
};

try {
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  await page.goto(`${base}/wasm/js/browser/conformance.html`);
  await page.waitForFunction(() => typeof window.runConformance === 'function');
  const files = readdirSync(join(root, 'snapshots/vectors')).filter((f) => f.endsWith('.json') && f !== 'invalid.json').sort();
  const results = await page.evaluate((names) => window.runConformance(names), files);
  let total = 0;
  for (const r of results) {
    console.log(`chromium: ${r.file}: ${r.cases} cases, ${r.failed} failed`);
    for (const m of r.mismatches) console.error(`  ${m}`);
    total += r.cases;
    passed += r.cases - r.failed;
    failed += r.failed;
  }
  check(files.length >= 8 && total >= 20_000, `suite size: ${files.length} files, ${total} cases`);

  const connect = await page.evaluate(() => window.runConnect());
  console.log(`chromium: connect: ${JSON.stringify(connect)}`);
  check(connect.firstVersion === 1 && connect.cached, 'first visit fetches and caches the snapshot');
  check(connect.secondVersion === 1 && connect.variant.reason === 'assigned', 'with the origin down, the cached snapshot serves');
  check(connect.errors.includes('fetch_failed'), 'the failed refresh is reported, not thrown');

  const beacon = await page.evaluate(() => window.runBeacon());
  // The browser delivers a beacon on its own schedule; give it a few seconds to arrive.
  const expected = beacon.beaconed.length + beacon.fetched.length;
  for (let waited = 0; waited < 5_000; waited += 50) {
    if (received.flatMap((r) => JSON.parse(r.body).events).length >= expected) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const bodies = received.map((r) => ({ ...r, ids: JSON.parse(r.body).events.map((e) => e.event_id) }));
  console.log(`chromium: events received: ${JSON.stringify(bodies.map(({ key, type, ids }) => ({ key, type, ids })))}`);
  check(bodies.every((b) => b.key === 'sdk-browser' && b.type.startsWith('text/plain')), 'beacon and fetch send text/plain with ?key=');
  const ids = bodies.flatMap((b) => b.ids).sort();
  check(JSON.stringify(ids) === JSON.stringify([...beacon.beaconed, ...beacon.fetched].sort()), 'every event arrived once');
  check(beacon.left === null, 'nothing is left in storage');

  // The OpenFeature web provider through the official web SDK, in its own page.
  received.length = 0;
  await page.goto(`${base}/wasm/js/browser/openfeature.html`);
  await page.waitForFunction(() => typeof window.runOpenFeature === 'function');
  const features = await page.evaluate(() => window.runOpenFeature());
  console.log(`chromium: openfeature: ${JSON.stringify(features)}`);
  check(features.expected.reason === 'assigned' && features.variant.value === features.expected.variant
    && features.variant.reason === 'SPLIT' && features.variant.variant === features.expected.variant, 'the web provider resolves an experiment as its variant');
  check(JSON.stringify(features.config) === JSON.stringify(features.expected.config), 'and as its config');
  check(features.missing === 'FLAG_NOT_FOUND' && features.mismatch === 'TYPE_MISMATCH', 'errors carry OpenFeature codes');
  const sent = received.flatMap((r) => JSON.parse(r.body).events);
  check(sent.some((e) => e.kind === 'metric' && e.event_type === 'purchase' && e.unit === 'user-411192' && e.value === 12), 'track() sends an abx metric event');
  check(sent.some((e) => e.kind === 'exposure' && e.unit === 'user-411192'), 'resolving an experiment logs its exposure');
  check(pageErrors.length === 0, `page errors: ${pageErrors}`);
} finally {
  await context.close();
  server.close();
  rmSync(userDataDir, { recursive: true, force: true });
}

console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
