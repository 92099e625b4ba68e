// The origin's API as the console uses it: the key from session storage in
// `Authorization: Bearer`, JSON in and out, and errors as ApiError with the API's
// `{error: {code, message, details}}` (docs/api.md).

const STORAGE_KEY = 'abx.console.key';

export const session = {
  get key() {
    return sessionStorage.getItem(STORAGE_KEY);
  },
  save(key) {
    sessionStorage.setItem(STORAGE_KEY, key);
  },
  clear() {
    sessionStorage.removeItem(STORAGE_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `the origin answered ${status}`);
    this.status = status;
    this.code = error.code || 'http_' + status;
    this.details = error.details ?? null;
  }

  /** Field errors of a 422, as [{field, message}]. */
  get fields() {
    return Array.isArray(this.details) ? this.details : [];
  }
}

/**
 * Calls `/api/v1{path}`. `key` overrides the stored key (sign-in checks a key before
 * storing it). A 401 with the stored key means it was revoked: listeners of
 * `abx:unauthorized` send the user back to the sign-in page.
 */
export async function api(path, { method = 'GET', body, key, ifMatch, signal } = {}) {
  const secret = key ?? session.key;
  const headers = { Accept: 'application/json' };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch !== undefined) headers['If-Match'] = `"${ifMatch}"`;
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, { error: { code: 'network', message: 'the origin could not be reached' } });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401 && key === undefined) {
      window.dispatchEvent(new CustomEvent('abx:unauthorized'));
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

/** Every item of a paged list, following `next_cursor`. */
export async function listAll(path, { signal } = {}) {
  const items = [];
  let cursor = null;
  do {
    const separator = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${separator}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, { signal });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

/** Runs `work` over `items`, at most `limit` at a time (the API rate-limits each key). */
export async function mapLimited(items, limit, work) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export const enc = encodeURIComponent;
