// @abx/browser: abx experiments and feature flags evaluated locally (WebAssembly), with
// exposure logging and a beacon queue for events. See wasm/README.md.

export { init } from './wasm.js';
export { AbxClient } from './client.js';
export { AbxError } from './errors.js';
export { EventQueue, originTransport, MAX_EVENT_BYTES } from './queue.js';
export { MemoryStorage } from './storage.js';
export { encodeContext } from './context.js';
