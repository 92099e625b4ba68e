// Test and benchmark infrastructure for the edge worker: workerd with a generated capnp
// config, the real abx-origin, and small loopback servers (a fake origin that serves golden
// snapshots, an upstream that records what it receives, and the Cache API backend workerd
// talks to). Nothing here is used in production.

import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const EDGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = resolve(EDGE_DIR, '..');
export const GOLDEN = join(REPO, 'snapshots', 'golden');
export const VECTORS = join(REPO, 'snapshots', 'vectors');
export const BUILD = join(EDGE_DIR, 'build');
const WORKERD = join(EDGE_DIR, 'node_modules', '@cloudflare', 'workerd-linux-64', 'bin', 'workerd');
// The date in wrangler.toml, so local runs behave like the deployment.
export const COMPATIBILITY_DATE = readFileSync(join(EDGE_DIR, 'wrangler.toml'), 'utf8')
  .match(/compatibility_date\s*=\s*"([^"]+)"/)[1];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Stops one process: SIGTERM, then SIGKILL if it is still running after `graceMs`. The
 * process is captured here because callers reuse their variable for the next process.
 */
async function terminate(proc, graceMs) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** A free loopback port (bind to 0, read it, close). */
export async function freePort() {
  const server = createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

async function waitForPort(port, timeoutMs, child) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`process exited with ${child.exitCode} before listening on ${port}`);
    const ok = await new Promise((r) => {
      const socket = createConnection({ port, host: '127.0.0.1' }, () => { socket.destroy(); r(true); });
      socket.on('error', () => r(false));
    });
    if (ok) return;
    await sleep(10);
  }
  throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function listen(handler) {
  const server = createServer((req, res) => {
    Promise.resolve(handler(req, res)).catch((error) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(error?.stack || error));
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: server.address().port, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

// ---------------------------------------------------------------------------------------
// Fake origin: serves snapshot bytes per name at /NAME/api/v1/snapshot with the origin's
// ETag/304 contract (docs/api.md), so every golden snapshot (signed or not, and the broken
// ones) can be fed to a worker. The real origin only serves snapshots it published itself.

export const FAKE_SDK_KEY = 'fake-origin-sdk-key';

export async function startFakeOrigin() {
  const snapshots = new Map(); // name -> {bytes, etag, version}
  const requests = [];
  const down = new Set();
  const delays = new Map(); // name -> ms before answering
  const failEvents = new Map(); // name -> how many event posts still answer 503
  const events = [];
  const listener = await listen(async (req, res) => {
    const [, name, ...rest] = req.url.split('?')[0].split('/');
    const route = '/' + rest.join('/');
    const record = { name, route, method: req.method, headers: req.headers, status: null };
    requests.push(record);
    // Unreferenced, so a hanging answer does not keep the test process alive at the end.
    if (delays.get(name)) await new Promise((r) => setTimeout(r, delays.get(name)).unref());
    if (down.has(name)) { record.status = 503; res.writeHead(503, { 'retry-after': '1' }); return res.end('down'); }
    if (req.headers.authorization !== `Bearer ${FAKE_SDK_KEY}`) { res.writeHead(401); return res.end(); }
    if (route === '/api/v1/snapshot' && req.method === 'GET') {
      const entry = snapshots.get(name);
      if (!entry) { res.writeHead(404); return res.end(); }
      const headers = { etag: entry.etag, 'x-abx-snapshot-version': String(entry.version), 'cache-control': 'public, max-age=10' };
      if (req.headers['if-none-match'] === entry.etag) { record.status = 304; res.writeHead(304, headers); return res.end(); }
      record.status = 200;
      res.writeHead(200, { ...headers, 'content-type': 'application/vnd.abx.snapshot', 'content-length': entry.bytes.length });
      return res.end(entry.bytes);
    }
    if (route === '/api/v1/events' && req.method === 'POST') {
      const body = JSON.parse((await readBody(req)).toString('utf8'));
      if (failEvents.get(name) > 0) {
        failEvents.set(name, failEvents.get(name) - 1);
        record.status = 503;
        res.writeHead(503, { 'retry-after': '0' });
        return res.end();
      }
      record.status = 202;
      events.push({ name, body, headers: req.headers });
      res.writeHead(202, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ accepted: body.events.length, duplicates: 0 }));
    }
    res.writeHead(404); res.end();
  });
  return {
    ...listener,
    url: (name) => `http://127.0.0.1:${listener.port}/${name}`,
    /** Serves `bytes` (a Buffer) as snapshot `name`; the ETag is derived from the bytes. */
    serve(name, bytes, version = 1) {
      const etag = `"${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}"`;
      snapshots.set(name, { bytes, etag, version });
    },
    serveFile(name, file, version = 1) { this.serve(name, readFileSync(join(GOLDEN, file)), version); },
    setDown(name, isDown) { isDown ? down.add(name) : down.delete(name); },
    /** Every answer for `name` waits this long first (0 to stop). */
    setDelay(name, ms) { delays.set(name, ms); },
    /** The next `n` event posts for `name` answer 503. */
    failEventPosts(name, n) { failEvents.set(name, n); },
    requests,
    events,
  };
}

// ---------------------------------------------------------------------------------------
// Upstream: answers every request with a JSON echo of what it received, and records it.
// `respond(path, {status, headers, body})` overrides the answer for one path.

export async function startUpstream(label = 'upstream', { record: keep = true } = {}) {
  const seen = [];
  const overrides = new Map();
  const listener = await listen(async (req, res) => {
    const body = (await readBody(req)).toString('utf8');
    const url = new URL(req.url, 'http://x');
    const record = { label, method: req.method, path: url.pathname, query: url.search, headers: req.headers, body };
    // Benchmarks turn recording off: an ever-growing list would add GC pauses to the figures.
    if (keep) seen.push(record);
    const override = overrides.get(url.pathname);
    const headers = { 'content-type': 'application/json', ...(override?.headers || {}) };
    res.writeHead(override?.status || 200, headers);
    res.end(override?.body ?? JSON.stringify(record));
  });
  return { ...listener, url: `http://127.0.0.1:${listener.port}`, seen, respond: (path, answer) => overrides.set(path, answer) };
}

// ---------------------------------------------------------------------------------------
// The Cache API backend. Bare workerd sends `caches.default` operations to the service named
// by `cacheApiOutbound`: PUT with the serialized HTTP response as body, GET answered with
// `cf-cache-status: HIT` and the stored response, or MISS. Keeping it in this process lets a
// cached copy survive a workerd restart, like a colo's cache outlives an isolate.

function parseSerializedResponse(raw) {
  const split = raw.indexOf('\r\n\r\n');
  const head = raw.subarray(0, split).toString('latin1').split('\r\n');
  const status = Number(head[0].split(' ')[1]);
  const headers = {};
  for (const line of head.slice(1)) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  let body = raw.subarray(split + 4);
  if ((headers['transfer-encoding'] || '').toLowerCase() === 'chunked') {
    const parts = [];
    let at = 0;
    for (;;) {
      const lineEnd = body.indexOf('\r\n', at);
      const size = parseInt(body.subarray(at, lineEnd).toString('latin1'), 16);
      if (!size) break;
      parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
    delete headers['transfer-encoding'];
  }
  headers['content-length'] = String(body.length);
  return { status, headers, body };
}

export async function startCacheService() {
  const entries = new Map();
  const log = [];
  const listener = await listen(async (req, res) => {
    const key = req.url;
    log.push({ method: req.method, key });
    if (req.method === 'PUT') {
      entries.set(key, parseSerializedResponse(await readBody(req)));
      res.writeHead(204); return res.end();
    }
    if (req.method === 'PURGE') {
      const had = entries.delete(key);
      res.writeHead(had ? 200 : 404); return res.end();
    }
    const entry = entries.get(key);
    if (!entry) { res.writeHead(504, { 'cf-cache-status': 'MISS' }); return res.end(); }
    res.writeHead(entry.status, { ...entry.headers, 'cf-cache-status': 'HIT' });
    res.end(entry.body);
  });
  return { ...listener, entries, log, clear: () => entries.clear() };
}

// ---------------------------------------------------------------------------------------
// workerd: one process, one worker service (and one socket) per test scenario, all running
// the same built module with different bindings.

function capnpString(s) {
  return JSON.stringify(String(s));
}

/**
 * services: [{name, port, bindings: {NAME: value}}]; returns {stop, restart, ports}.
 * Every service's outbound network may reach loopback (`local`), where the origins live.
 */
export function workerdConfig(services, { cachePort, configDir = BUILD } = {}) {
  // `embed` paths are relative to the config file.
  const build = relative(configDir, BUILD) || '.';
  const lines = ['using Workerd = import "/workerd/workerd.capnp";', '', 'const config :Workerd.Config = ('];
  lines.push('  services = [');
  services.forEach((s, i) => lines.push(`    (name = ${capnpString(s.name)}, worker = .worker${i}),`));
  lines.push('    (name = "internet", network = (allow = ["public", "private", "local"])),');
  if (cachePort) lines.push(`    (name = "cache", external = (address = "127.0.0.1:${cachePort}", http = ())),`);
  lines.push('  ],', '  sockets = [');
  for (const s of services) {
    lines.push(`    (name = ${capnpString('s_' + s.name)}, address = "127.0.0.1:${s.port}", http = (cfBlobHeader = "cf-blob"), service = ${capnpString(s.name)}),`);
  }
  lines.push('  ],', ');', '');
  services.forEach((s, i) => {
    lines.push(`const worker${i} :Workerd.Worker = (`);
    lines.push('  modules = [');
    lines.push(`    (name = "index.js", esModule = embed ${capnpString(join(build, 'index.js'))}),`);
    lines.push(`    (name = "index_bg.wasm", wasm = embed ${capnpString(join(build, 'index_bg.wasm'))}),`);
    lines.push('  ],');
    lines.push(`  compatibilityDate = ${capnpString(COMPATIBILITY_DATE)},`);
    lines.push('  bindings = [');
    for (const [name, value] of Object.entries(s.bindings)) lines.push(`    (name = ${capnpString(name)}, text = ${capnpString(value)}),`);
    lines.push('  ],');
    lines.push('  globalOutbound = "internet",');
    if (cachePort) lines.push('  cacheApiOutbound = "cache",');
    lines.push(');', '');
  });
  return lines.join('\n');
}

/**
 * Starts workerd with `services` ([{name, bindings, port?}]); services without a port get a
 * free one. Returns {url(name, path), stop, restart, startupMs, logs, pid, exit}.
 *
 * A port found free can be taken by another process before workerd binds it (other test
 * suites run on the same machine), so a start is only trusted once every socket answers as
 * this worker does; otherwise workerd is stopped and started again on fresh ports.
 */
export async function startWorkerd(services, options = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'abx-edge-workerd-'));
  const configPath = join(dir, 'config.capnp');
  const fixedPorts = services.every((s) => s.port);
  let child;
  const logs = [];
  const url = (name, path = '') => `http://127.0.0.1:${services.find((s) => s.name === name).port}${path}`;
  const answersAsWorker = async (s) => {
    try {
      const response = await fetch(url(s.name, '/abx/status'), { method: 'PUT' });
      return response.status === 405 && (await response.json()).error?.code === 'method_not_allowed';
    } catch {
      return false;
    }
  };
  const stop = () => terminate(child, 3000);
  const start = async () => {
    for (let attempt = 1; ; attempt++) {
      for (const s of services) if (!s.port || (attempt > 1 && !fixedPorts)) s.port = await freePort();
      writeFileSync(configPath, workerdConfig(services, { ...options, configDir: dir }));
      const started = performance.now();
      child = spawn(WORKERD, ['serve', configPath, '--verbose'], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.on('data', (d) => logs.push(d.toString()));
      child.stderr.on('data', (d) => logs.push(d.toString()));
      let ok = true;
      try {
        for (const s of services) await waitForPort(s.port, 15_000, child);
      } catch {
        ok = false;
      }
      const startupMs = performance.now() - started;
      const probed = performance.now();
      if (ok) ok = (await Promise.all(services.map(answersAsWorker))).every(Boolean) && child.exitCode === null;
      // The probe is each isolate's first request: instantiation and first-call costs.
      if (ok) return { startupMs, firstRequestMs: performance.now() - probed };
      await stop();
      if (attempt === 3 || fixedPorts) throw new Error(`workerd did not start:\n${logs.join('').slice(-4000)}`);
    }
  };
  const timing = await start();
  return {
    /** spawn → every socket accepting, and the first (probe) request, of the last start. */
    get startupMs() { return timing.startupMs; },
    get firstRequestMs() { return timing.firstRequestMs; },
    logs,
    pid: () => child.pid,
    /** How the process ended if it is no longer running (null while it runs). */
    exit: () => (child.exitCode !== null || child.signalCode !== null ? { code: child.exitCode, signal: child.signalCode } : null),
    url,
    stop: async () => { await stop(); rmSync(dir, { recursive: true, force: true }); },
    /** Restarts on the same ports (a new isolate for every service). */
    restart: async () => { await stop(); Object.assign(timing, await start()); },
  };
}

// ---------------------------------------------------------------------------------------
// The real origin (target/debug/abx-origin), on SQLite in a temporary directory.

export const ADMIN_KEY = 'edge-harness-admin-key-0123456789';

/**
 * Options: `databaseUrl` (PostgreSQL instead of SQLite in the data directory), `args` (more
 * `serve` arguments) and `env` (more environment variables).
 */
export async function startOrigin({ binary = join(REPO, 'target', 'debug', 'abx-origin'), databaseUrl, args = [], env: extraEnv = {} } = {}) {
  if (!existsSync(binary)) throw new Error(`${binary} is missing: build abx-origin first`);
  const dataDir = mkdtempSync(join(tmpdir(), 'abx-edge-origin-'));
  const port = await freePort();
  let child;
  const logs = [];
  const env = {
    ...process.env,
    ABX_BOOTSTRAP_ADMIN_KEY: ADMIN_KEY,
    ABX_SDK_RATE_LIMIT: '1000000',
    ABX_ADMIN_RATE_LIMIT: '100000',
    // Every simulated user and edge comes from this machine's one address.
    ABX_MAX_CONCURRENT_REQUESTS_PER_CLIENT: '100000',
    RUST_LOG: process.env.RUST_LOG || 'warn',
    ...extraEnv,
  };
  const serveArgs = ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, ...(databaseUrl ? ['--database-url', databaseUrl] : []), ...args];
  const start = async () => {
    child = spawn(binary, serveArgs, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => logs.push(d.toString()));
    child.stderr.on('data', (d) => logs.push(d.toString()));
    await waitForPort(port, 30_000, child);
  };
  const stop = () => terminate(child, 5000);
  await start();
  const base = `http://127.0.0.1:${port}`;
  const call = async (method, path, body, key = ADMIN_KEY) => {
    const response = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    let json;
    try { json = JSON.parse(text); } catch { json = text; }
    return { status: response.status, body: json, headers: response.headers };
  };
  const origin = {
    url: base,
    port,
    dataDir,
    logs,
    call,
    async create(path, body) {
      const reply = await call('POST', path, body);
      if (reply.status !== 201 && reply.status !== 200) throw new Error(`POST ${path}: ${reply.status} ${JSON.stringify(reply.body)}`);
      return reply.body;
    },
    async publicKey() { return (await call('GET', '/api/v1/snapshot/key')).body.public_key; },
    async sdkKey() { return (await origin.create('/api/v1/keys', { name: 'browser', role: 'sdk' })).secret; },
    /** A key of the server class, for edges and backends (never given to browsers). */
    async serverKey() { return (await origin.create('/api/v1/keys', { name: 'edge', role: 'server' })).secret; },
    /** Rows of the origin's event log (its own SQLite file, `abx-events.db`) for one unit key. */
    storedEvents(unitKey) {
      const databases = readdirSync(dataDir).filter((f) => /-events\.(db|sqlite3?)$/.test(f));
      if (databases.length !== 1) throw new Error(`expected one event log in ${dataDir}, found ${databases}`);
      const script = [
        'import json, sqlite3, sys',
        'db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)',
        'rows = db.execute("SELECT event_id, kind, unit_key, experiment_id, variant, event_type, value, properties FROM events WHERE unit_key = ? ORDER BY seq", (sys.argv[2],)).fetchall()',
        'names = ["event_id", "kind", "unit_key", "experiment_id", "variant", "event_type", "value", "properties"]',
        '# properties: a metric event\'s properties, or the attributes an exposure carried.',
        'print(json.dumps([dict(zip(names, r[:-1] + (json.loads(r[-1]) if r[-1] else None,))) for r in rows]))',
      ].join('\n');
      const out = execFileSync('python3', ['-c', script, join(dataDir, databases[0]), unitKey]);
      return JSON.parse(out.toString('utf8'));
    },
    stop,
    start,
    /** SIGKILL: no shutdown work at all, as a crash or an OOM kill. */
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    },
    cleanup: async () => { await stop(); rmSync(dataDir, { recursive: true, force: true }); },
  };
  return origin;
}

// ---------------------------------------------------------------------------------------
// Client helpers

/** The `abx_uid` value set by a response, or null. */
export function setCookieUid(response) {
  const cookies = response.headers.getSetCookie ? response.headers.getSetCookie() : [response.headers.get('set-cookie')].filter(Boolean);
  for (const cookie of cookies) {
    const match = cookie.match(/^abx_uid=([^;]+)/);
    if (match) return { uid: match[1], cookie };
  }
  return null;
}

/** Runs `fn` over `items` with at most `limit` in flight; results in input order. */
export async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  });
  await Promise.all(workers);
  return results;
}

export { randomUUID };
