// Runs the built worker locally on workerd, configured from ABX_* environment variables (the
// same names as the wrangler vars), until interrupted:
//
//   ABX_ORIGIN_URL=http://127.0.0.1:8080 ABX_SDK_KEY=... ABX_PUBLIC_KEY=... \
//   ABX_UPSTREAM_URL=http://127.0.0.1:3000 node edge-worker/harness/serve.mjs [--port 8787]
//
// `request.cf` can be simulated with a `cf-blob` header, e.g.
//   curl -H 'cf-blob: {"country":"DE","colo":"FRA"}' http://127.0.0.1:8787/abx/assignments

import * as h from './lib.mjs';

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 8787;
const bindings = Object.fromEntries(Object.entries(process.env).filter(([name]) => name.startsWith('ABX_')));
const cache = await h.startCacheService();
const worker = await h.startWorkerd([{ name: 'edge', port, bindings }], { cachePort: cache.port });
console.log(`abx edge worker on http://127.0.0.1:${port} (workerd ready in ${worker.startupMs.toFixed(0)} ms); bindings: ${Object.keys(bindings).join(', ') || 'none'}`);
const print = setInterval(() => {
  while (worker.logs.length) process.stdout.write(worker.logs.shift());
}, 200);
process.on('SIGINT', async () => {
  clearInterval(print);
  await worker.stop();
  await cache.close();
  process.exit(0);
});
