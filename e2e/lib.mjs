// What the journeys share: the real processes (origin, workerd, Chromium, the wasmtime host),
// a page server for the browser package, the suite format every runtime replays, and a
// chi-squared check. Processes come from edge-worker/harness/lib.mjs, shared with the edge
// worker's own tests.

import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize, sep } from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';

import { chromium } from 'playwright-core';

export { ADMIN_KEY, pool, sleep, startOrigin } from '../edge-worker/harness/lib.mjs';
import { REPO, startCacheService, startUpstream, startWorkerd } from '../edge-worker/harness/lib.mjs';

export { REPO };
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const WASMTIME_HOST = join(REPO, 'target', 'debug', 'abx-wasmtime-host');
const ABI_MODULE = join(REPO, 'target', 'abx-wasm', 'abx_wasm_abi.wasm');

/**
 * What the journeys need that the build makes; `null` when everything is there. With
 * ABX_REQUIRE_ALL set a missing piece is an error, not a reason to skip.
 */
export function missingPieces() {
  const needed = [
    [join(REPO, 'target', 'debug', 'abx-origin'), 'cargo build -p abx-origin'],
    [WASMTIME_HOST, 'cargo build -p abx-wasmtime-host'],
    [ABI_MODULE, 'bash wasm/build.sh'],
    [join(REPO, 'wasm', 'js', 'pkg', 'abx_wasm_bg.wasm'), 'bash wasm/build.sh'],
    [join(REPO, 'edge-worker', 'build', 'index_bg.wasm'), 'bash scripts/test-edge.sh'],
    [CHROMIUM, 'apt-get install chromium'],
  ].filter(([path]) => !existsSync(path));
  if (needed.length === 0) return null;
  const reason = `missing ${needed.map(([path, how]) => `${path} (${how})`).join(', ')}; scripts/test-e2e.sh builds everything`;
  if (process.env.ABX_REQUIRE_ALL) throw new Error(reason);
  return reason;
}

/** A fresh PostgreSQL database for one origin, or null (with ABX_REQUIRE_ALL: an error). */
export function freshPostgres(label) {
  const admin = process.env.ABX_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const name = `abx_t_e2e_${label}_${process.pid}_${Date.now() % 1e6}`;
  try {
    execFileSync('psql', [admin, '-qc', `CREATE DATABASE ${name}`], { stdio: 'pipe' });
  } catch (error) {
    if (process.env.ABX_REQUIRE_ALL) throw new Error(`PostgreSQL is required (ABX_REQUIRE_ALL is set): ${error.stderr ?? error}`);
    return null;
  }
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: () => execFileSync('psql', [admin, '-qc', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { stdio: 'pipe' }),
  };
}

/**
 * The edge worker on workerd in front of `originUrl` (with its Cache API backend and an
 * upstream site), verifying snapshots with `publicKey`. `url('edge', path)` addresses it;
 * `stop()` stops all three.
 */
export async function startEdge({ originUrl, sdkKey, publicKey, ttlSeconds = 1 }) {
  const cache = await startCacheService();
  const upstream = await startUpstream('site', { record: false });
  const bindings = { ABX_ORIGIN_URL: originUrl, ABX_SDK_KEY: sdkKey, ABX_PUBLIC_KEY: publicKey, ABX_UPSTREAM_URL: upstream.url, ABX_SNAPSHOT_TTL_S: String(ttlSeconds) };
  const workers = await startWorkerd([{ name: 'edge', bindings }], { cachePort: cache.port });
  return {
    url: workers.url,
    logs: workers.logs,
    stop: async () => {
      await workers.stop();
      await cache.close();
      await upstream.close();
    },
  };
}

// ---------------------------------------------------------------------------------------
// The suite: the conformance format of snapshots/ (README there), filled with the origin's
// own answers, so that every runtime's existing replay checks it.

/**
 * Writes `dir/golden/e2e.abxs` (the origin's signed snapshot), `dir/vectors/e2e.json` (each
 * context with what the origin answered) and `dir/vectors/invalid.json`: tampered copies of
 * the snapshot that every runtime must refuse.
 */
export function writeSuite(dir, { snapshot, publicKey, cases }) {
  mkdirSync(join(dir, 'golden'), { recursive: true });
  mkdirSync(join(dir, 'vectors'), { recursive: true });
  writeFileSync(join(dir, 'golden', 'e2e.abxs'), snapshot);
  // The wasmtime host's ABI misuse checks load this one.
  copyFileSync(join(REPO, 'snapshots', 'golden', 'basic.abxs'), join(dir, 'golden', 'basic.abxs'));
  writeFileSync(join(dir, 'vectors', 'e2e.json'), JSON.stringify({ snapshot: 'e2e.abxs', public_key: publicKey, cases }));

  const length = snapshot.readUInt32LE(8);
  const signature = Buffer.from(snapshot);
  signature[signature.length - 1] ^= 0x01;
  // An attacker who knows the format: a changed payload with a recomputed checksum.
  const resealed = Buffer.from(snapshot);
  resealed[12 + Math.floor(length / 2)] ^= 0x40;
  resealed.writeUInt32LE(crc32(resealed.subarray(12, 12 + length)), 12 + length);
  const otherKey = JSON.parse(readFileSync(join(REPO, 'snapshots', 'vectors', 'signed.json'), 'utf8')).public_key;
  const tampered = [
    ['tampered_signature.abxs', signature, publicKey, 'bad_signature'],
    ['tampered_resealed.abxs', resealed, publicKey, 'bad_signature'],
    ['e2e.abxs', snapshot, otherKey, 'bad_signature'],
    ['tampered_truncated.abxs', snapshot.subarray(0, snapshot.length - 10), publicKey, 'truncated'],
    ['tampered_flipped.abxs', (() => { const b = Buffer.from(snapshot); b[12] ^= 0x01; return b; })(), null, 'bad_checksum'],
  ];
  for (const [file, bytes] of tampered) if (file !== 'e2e.abxs') writeFileSync(join(dir, 'golden', file), bytes);
  writeFileSync(join(dir, 'vectors', 'invalid.json'), JSON.stringify({
    cases: tampered.map(([file, , key, error]) => ({ file, public_key: key, error })),
  }));
  return { tampered: Object.fromEntries(tampered.map(([file, bytes]) => [file, bytes])) };
}

/** The suite through the C-ABI module in wasmtime (and native abx-core beside it). */
export async function replayInWasmtime(dir) {
  try {
    const { stdout } = await promisify(execFile)(WASMTIME_HOST, ['conformance', ABI_MODULE, dir], { maxBuffer: 64 << 20 });
    return { ok: true, output: stdout };
  } catch (error) {
    return { ok: false, output: `${error.stdout ?? ''}${error.stderr ?? ''}` };
  }
}

// ---------------------------------------------------------------------------------------
// A site for the browser package: its modules, the suite, and /api/v1 proxied to the origin
// (so that the page talks to "its" origin, as a site behind a CDN does).

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.json': 'application/json', '.wasm': 'application/wasm', '.abxs': 'application/octet-stream' };

export async function startSite(originUrl, suiteDir) {
  const roots = { '/wasm/js/src/': 'wasm/js/src/', '/wasm/js/pkg/': 'wasm/js/pkg/', '/wasm/js/test/': 'wasm/js/test/', '/e2e/browser/': 'e2e/browser/' };
  const proxied = { requests: 0 };
  const server = createServer(async (request, response) => {
    const url = new URL(request.url, 'http://127.0.0.1');
    if (url.pathname.startsWith('/api/v1/')) {
      proxied.requests += 1;
      const chunks = [];
      for await (const chunk of request) chunks.push(chunk);
      try {
        const upstream = await fetch(originUrl + url.pathname + url.search, {
          method: request.method,
          headers: Object.fromEntries(['content-type', 'authorization', 'if-none-match'].filter((h) => request.headers[h]).map((h) => [h, request.headers[h]])),
          body: chunks.length ? Buffer.concat(chunks) : undefined,
        });
        const headers = {};
        for (const h of ['content-type', 'etag', 'retry-after', 'x-abx-snapshot-version']) if (upstream.headers.get(h)) headers[h] = upstream.headers.get(h);
        response.writeHead(upstream.status, headers).end(Buffer.from(await upstream.arrayBuffer()));
      } catch {
        response.writeHead(502).end();
      }
      return;
    }
    let file = null;
    if (url.pathname === '/') file = join(REPO, 'e2e', 'browser', 'index.html');
    else if (url.pathname.startsWith('/suite/')) file = join(suiteDir, normalize(url.pathname.slice('/suite/'.length)));
    else {
      const prefix = Object.keys(roots).find((p) => url.pathname.startsWith(p));
      if (prefix) file = join(REPO, roots[prefix], normalize(url.pathname.slice(prefix.length)));
    }
    if (!file || url.pathname.includes('..') || !existsSync(file) || !statSync(file).isFile()) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, proxied, close: () => new Promise((r) => server.close(r)) };
}

/** Headless Chromium on the site's page; page errors are collected in `page.errors`. */
export async function openPage(site) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
  const page = await browser.newPage();
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(String(error)));
  await page.goto(`${site.url}/`);
  await page.waitForFunction(() => typeof window.replaySuite === 'function');
  return { page, close: () => browser.close() };
}

export function tempDir(label) {
  return mkdtempSync(join(tmpdir(), `abx-e2e-${label}-`));
}

// ---------------------------------------------------------------------------------------
// Statistics for the split checks.

function logGamma(x) {
  // Lanczos (g = 7, n = 9), accurate to about 1e-15 for x > 0.
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** The regularized upper incomplete gamma Q(a, x): a series below a + 1, Lentz's continued fraction above. */
function upperGamma(a, x) {
  if (x <= 0) return 1;
  const front = Math.exp(-x + a * Math.log(x) - logGamma(a));
  if (x < a + 1) {
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < 500 && Math.abs(term) > Math.abs(sum) * 1e-15; n++) {
      term *= x / (a + n);
      sum += term;
    }
    return 1 - sum * front;
  }
  let b = x + 1 - a;
  let c = 1e300;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 500; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    d = Math.abs(d) < 1e-300 ? 1e-300 : d;
    c = b + an / c;
    c = Math.abs(c) < 1e-300 ? 1e-300 : c;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return front * h;
}

/** Pearson's chi-squared goodness of fit of `observed` counts to `shares` (summing to 1). */
export function chiSquared(observed, shares) {
  const total = observed.reduce((a, b) => a + b, 0);
  const statistic = observed.reduce((sum, o, i) => sum + (o - total * shares[i]) ** 2 / (total * shares[i]), 0);
  return { statistic, p: upperGamma((observed.length - 1) / 2, statistic / 2) };
}
