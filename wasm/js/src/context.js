// Encodes a context object into the postcard bytes that the WebAssembly module decodes into
// abx-core's `Context` (a sequence of `(name, Value)` pairs; `Value` is an externally tagged
// enum: 0 string, 1 number as a little-endian f64, 2 boolean, 3 list of strings). Encoding in
// JavaScript keeps a JSON parser out of the module, which is most of its size budget.
//
// Which values count is docs/assignment.md's "Context" rule, applied here exactly as abx-core
// applies it to JSON: strings, numbers, booleans and lists whose elements are all strings are
// attributes; anything else (null, undefined, objects, mixed lists) is absent.

const TAG_STRING = 0;
const TAG_NUMBER = 1;
const TAG_BOOL = 2;
const TAG_LIST = 3;

const encoder = new TextEncoder();

/** A growable byte buffer, reused across calls so that encoding allocates nothing. */
class Writer {
  constructor() {
    this.bytes = new Uint8Array(256);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(extra) {
    const needed = this.length + extra;
    if (needed <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < needed) size *= 2;
    const bytes = new Uint8Array(size);
    bytes.set(this.bytes.subarray(0, this.length));
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer);
  }

  varint(n) {
    this.reserve(5);
    while (n >= 0x80) {
      this.bytes[this.length++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    this.bytes[this.length++] = n;
  }

  string(s) {
    // UTF-8 needs at most three bytes per UTF-16 code unit; write the text after a length
    // prefix sized for that bound, then move it if the real length needs fewer varint bytes.
    const max = s.length * 3;
    const prefix = varintSize(max);
    // The extra 5 bytes cover `varint`'s own reservation, which must not reallocate (and so
    // drop) the text already written past `this.length`.
    this.reserve(prefix + max + 5);
    const start = this.length + prefix;
    const { written } = encoder.encodeInto(s, this.bytes.subarray(start));
    const actual = varintSize(written);
    this.varint(written);
    if (actual !== prefix) this.bytes.copyWithin(this.length, start, start + written);
    this.length += written;
  }

  byte(b) {
    this.reserve(1);
    this.bytes[this.length++] = b;
  }

  f64(n) {
    this.reserve(8);
    this.view.setFloat64(this.length, n, true);
    this.length += 8;
  }
}

function varintSize(n) {
  let size = 1;
  while (n >= 0x80) {
    n >>>= 7;
    size++;
  }
  return size;
}

function isStringList(value) {
  for (let i = 0; i < value.length; i++) {
    if (typeof value[i] !== 'string') return false;
  }
  return true;
}

function isAttribute(value) {
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'boolean':
      return true;
    case 'object':
      return Array.isArray(value) && isStringList(value);
    default:
      return false;
  }
}

const writer = new Writer();

/**
 * Postcard bytes of a context. The returned view is only valid until the next call.
 * @param {Record<string, unknown> | null | undefined} context
 * @returns {Uint8Array}
 */
export function encodeContext(context) {
  writer.length = 0;
  if (context === null || typeof context !== 'object') {
    writer.varint(0);
    return writer.bytes.subarray(0, writer.length);
  }
  const names = Object.keys(context);
  let count = 0;
  for (const name of names) if (isAttribute(context[name])) count++;
  writer.varint(count);
  for (const name of names) {
    const value = context[name];
    if (!isAttribute(value)) continue;
    writer.string(name);
    switch (typeof value) {
      case 'string':
        writer.byte(TAG_STRING);
        writer.string(value);
        break;
      case 'number':
        writer.byte(TAG_NUMBER);
        writer.f64(value);
        break;
      case 'boolean':
        writer.byte(TAG_BOOL);
        writer.byte(value ? 1 : 0);
        break;
      default:
        writer.byte(TAG_LIST);
        writer.varint(value.length);
        for (const item of value) writer.string(item);
    }
  }
  return writer.bytes.subarray(0, writer.length);
}

/**
 * The unit string of an attribute value (docs/assignment.md, "Unit value"): a non-empty
 * string, or a safe integer's decimal digits; otherwise null. Used to fill exposure and
 * metric events, which name the unit the way abx-core hashed it.
 * @param {unknown} value
 * @returns {string | null}
 */
export function unitString(value) {
  if (typeof value === 'string') return value === '' ? null : value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
  return null;
}
