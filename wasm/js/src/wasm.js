// Loads the WebAssembly module once per page (or Node process) and wraps its engine.

import initModule, { initSync, Engine, reasons, flagReasons, holdoutArms } from '../pkg/abx_wasm.js';
import { AbxError } from './errors.js';

let loading = null;
let names = null;

const isNode = typeof process !== 'undefined' && process.versions?.node !== undefined;

function moduleUrl() {
  return new URL('../pkg/abx_wasm_bg.wasm', import.meta.url);
}

/**
 * Loads the module. Without an argument it fetches `abx_wasm_bg.wasm` next to the package
 * (in Node it reads the file). Pass bytes, a `WebAssembly.Module`, a URL or a `Response` to
 * load it from elsewhere. Idempotent; a failed load can be retried.
 * @param {BufferSource | WebAssembly.Module | URL | string | Response | Promise<Response>} [source]
 */
export function init(source) {
  loading ??= load(source).catch((error) => {
    loading = null;
    throw new AbxError('wasm_unavailable', `cannot load the abx WebAssembly module: ${error?.message ?? error}`, error);
  });
  return loading;
}

async function load(source) {
  if (source === undefined && isNode) {
    const { readFile } = await import('node:fs/promises');
    source = await readFile(moduleUrl());
  }
  if (source instanceof WebAssembly.Module || ArrayBuffer.isView(source) || source instanceof ArrayBuffer) {
    initSync({ module: source });
  } else {
    await initModule({ module_or_path: source ?? moduleUrl() });
  }
  names = { reasons: reasons(), flagReasons: flagReasons(), holdoutArms: holdoutArms() };
}

/** Whether `init()` has completed. */
export function isInitialized() {
  return names !== null;
}

/** Reason names by code (docs/wasm-abi.md); requires `init()`. */
export function reasonNames() {
  if (names === null) throw new AbxError('not_initialized', 'call and await init() first');
  return names;
}

/**
 * Builds an engine from snapshot bytes; throws `AbxError` with the snapshot error code.
 * With several keys (a rotation), the snapshot must verify with one of them; a signature
 * that verifies with none reports the first key's error.
 * @param {Uint8Array} bytes
 * @param {Uint8Array[] | undefined} publicKeys
 */
export function loadEngine(bytes, publicKeys) {
  reasonNames();
  let first;
  for (const key of publicKeys ?? [undefined]) {
    try {
      return Engine.load(bytes, key);
    } catch (error) {
      const refused = AbxError.from(error);
      if (refused.code !== 'bad_signature') throw refused;
      first ??= refused;
    }
  }
  throw first;
}
