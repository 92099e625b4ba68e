// Persistent key-value storage for the last good snapshot and unsent events. The default is
// the page's localStorage; where that is missing or refused (Node, privacy modes, quota) an
// in-memory map keeps the client working for the page's lifetime.

/**
 * @typedef {{ getItem(key: string): string | null, setItem(key: string, value: string): void,
 *             removeItem(key: string): void }} KeyValueStorage
 */

export class MemoryStorage {
  constructor() {
    this.items = new Map();
  }

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }

  removeItem(key) {
    this.items.delete(key);
  }
}

/** @returns {KeyValueStorage} */
export function defaultStorage() {
  try {
    const storage = globalThis.localStorage;
    if (storage) {
      // Touch it: Safari's private mode and blocked third-party storage throw only on use.
      const probe = '__abx_probe__';
      storage.setItem(probe, probe);
      storage.removeItem(probe);
      return storage;
    }
  } catch {
    // Fall through to memory.
  }
  return new MemoryStorage();
}

/** Storage calls that never throw: a full or revoked store must not break the page. */
export class SafeStorage {
  /** @param {KeyValueStorage} storage */
  constructor(storage, onError) {
    this.storage = storage;
    this.onError = onError;
  }

  get(key) {
    try {
      return this.storage.getItem(key);
    } catch (error) {
      this.onError(error);
      return null;
    }
  }

  set(key, value) {
    try {
      this.storage.setItem(key, value);
      return true;
    } catch (error) {
      this.onError(error);
      return false;
    }
  }

  remove(key) {
    try {
      this.storage.removeItem(key);
    } catch (error) {
      this.onError(error);
    }
  }
}

export function toBase64(bytes) {
  let text = '';
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(text);
}

export function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
