// How numbers are shown. The browser tests parse these strings back and compare them with
// the API's JSON to the precision shown, so every format here is plain: digits, an optional
// sign (− or +), thousands commas, and a unit suffix (%, pp).

const MINUS = '\u2212';

function signed(text, x) {
  if (x > 0) return `+${text}`;
  if (x < 0) return `${MINUS}${text.replace(/^-/, '')}`;
  return text;
}

function isNumber(x) {
  return typeof x === 'number' && Number.isFinite(x);
}

/** 0.1234 → "12.34%" */
export function percent(x, digits = 2) {
  if (!isNumber(x)) return '—';
  return `${(x * 100).toFixed(digits)}%`;
}

/** 0.1234 → "+12.34%" */
export function signedPercent(x, digits = 2) {
  if (!isNumber(x)) return '—';
  return signed(`${Math.abs(x * 100).toFixed(digits)}%`, Number((x * 100).toFixed(digits)));
}

/** A difference of rates in percentage points: 0.0123 → "+1.23 pp" */
export function points(x, digits = 2) {
  if (!isNumber(x)) return '—';
  return signed(`${Math.abs(x * 100).toFixed(digits)} pp`, Number((x * 100).toFixed(digits)));
}

/** Four significant digits, with thousands separators: 1234.567 → "1,235" */
export function sig(x, digits = 4) {
  if (!isNumber(x)) return '—';
  if (x === 0) return '0';
  const rounded = Number(x.toPrecision(digits));
  const magnitude = Math.floor(Math.log10(Math.abs(rounded)));
  const decimals = Math.max(0, digits - 1 - magnitude);
  return rounded.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals }).replace('-', MINUS);
}

export function signedSig(x, digits = 4) {
  if (!isNumber(x)) return '—';
  return signed(sig(Math.abs(x), digits), Number(x.toPrecision(digits)));
}

export function fixed(x, digits = 2) {
  if (!isNumber(x)) return '—';
  return x.toFixed(digits).replace('-', MINUS);
}

export function count(n) {
  if (!isNumber(n)) return '—';
  return n.toLocaleString('en-US');
}

/** p-values: four decimals, and "< 0.0001" below that. */
export function pValue(p) {
  if (!isNumber(p)) return '—';
  return p < 0.0001 ? '< 0.0001' : p.toFixed(4);
}

/** "[a, b]" with a formatter for the bounds. */
export function interval(ci, format) {
  if (!Array.isArray(ci) || ci.length !== 2) return '';
  return `[${format(ci[0])}, ${format(ci[1])}]`;
}

/** The natural unit of a metric's values: rates for conversions, numbers otherwise. */
export function metricValue(kind, x) {
  return kind === 'conversion' ? percent(x) : sig(x);
}

/** The natural unit of an absolute effect: percentage points for conversions. */
export function metricEffect(kind, x) {
  return kind === 'conversion' ? points(x) : signedSig(x);
}

export function days(x) {
  if (!isNumber(x)) return '—';
  return x < 10 ? x.toFixed(1) : x.toFixed(0);
}

/** "2025-03-04 12:34 UTC" from RFC 3339. */
export function dateTime(text) {
  if (!text) return '—';
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return text;
  return `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** Days between an experiment's start and its end (or now), as the API counts them. */
export function daysRunning(experiment, now = Date.now()) {
  if (!experiment.started_at) return null;
  const start = Date.parse(experiment.started_at);
  const end = experiment.ended_at ? Date.parse(experiment.ended_at) : now;
  return Math.max(0, end - start) / 86_400_000;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** A number of seconds in the largest whole unit: 3 d, 12 h, 90 s. */
export function duration(seconds) {
  if (seconds % 86_400 === 0) return `${seconds / 86_400} d`;
  if (seconds % 3_600 === 0) return `${seconds / 3_600} h`;
  return `${seconds} s`;
}

/** A metric's window after the exposure in words: "first 3 d after exposure". */
export function windowText(window) {
  if (!window) return 'all events after exposure';
  const delay = window.delay_s || 0;
  if (delay === 0) return `first ${duration(window.length_s)} after exposure`;
  return `${duration(delay)} to ${duration(delay + window.length_s)} after exposure`;
}
