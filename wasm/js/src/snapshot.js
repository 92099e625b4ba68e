// One loaded snapshot: the module's engine plus the name tables that turn its packed results
// (docs/wasm-abi.md, "Packed results") into objects. Tables are read from the module once per
// snapshot, and per experiment or flag only when first needed.

import { encodeContext } from './context.js';
import { AbxError } from './errors.js';
import { loadEngine, reasonNames } from './wasm.js';

function parseJson(text) {
  try {
    return deepFreeze(JSON.parse(text));
  } catch {
    // abx-core never parses configs; one that is not JSON is served as its text.
    return text;
  }
}

// Parsed configs are shared by every caller, so they are frozen: one caller cannot change
// what another sees.
function deepFreeze(value) {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze(value[key]);
  }
  return value;
}

class Texts {
  constructor(texts) {
    this.texts = texts;
    this.parsed = new Array(texts.length);
  }

  parsedAt(i) {
    if (i >= this.texts.length) return null;
    if (this.parsed[i] === undefined) this.parsed[i] = parseJson(this.texts[i]);
    return this.parsed[i];
  }
}

export class LoadedSnapshot {
  /**
   * @param {Uint8Array} bytes
   * @param {Uint8Array[] | undefined} publicKeys any of which may have signed the snapshot
   */
  constructor(bytes, publicKeys) {
    const engine = loadEngine(bytes, publicKeys);
    this.engine = engine;
    this.version = engine.snapshotVersion;
    this.publishedAtMs = engine.publishedAtMs;
    this.experimentKeys = engine.experimentKeys();
    this.experimentIds = engine.experimentIds();
    this.experimentUnits = engine.experimentUnits();
    this.experimentHoldoutIds = engine.experimentHoldoutIds();
    this.flagKeys = engine.flagKeys();
    this.experimentIndex = new Map(this.experimentKeys.map((key, i) => [key, i]));
    this.flagIndex = new Map(this.flagKeys.map((key, i) => [key, i]));
    this.variantNames = new Array(this.experimentKeys.length);
    this.variantConfigs = new Array(this.experimentKeys.length);
    this.flagValues = new Array(this.flagKeys.length);
    const names = reasonNames();
    this.reasons = names.reasons;
    this.flagReasons = names.flagReasons;
    this.holdoutArms = names.holdoutArms;
  }

  /**
   * The holdout id and arm of experiment `i`'s result with reason code `reason`, when the
   * result reached the experiment's holdout (docs/assignment.md, "Holdout exposures"), else
   * null. The arm table says `released` for `shipped` whether or not the context has the
   * unit; callers log only with the unit (`AbxClient.expose` checks it), which is exactly
   * when a shipped result reaches the holdout.
   */
  holdoutStep(i, reason) {
    const holdoutId = this.experimentHoldoutIds[i];
    const arm = this.holdoutArms[reason];
    return holdoutId && arm ? { holdoutId, arm } : null;
  }

  /**
   * What an exposure to experiment `i` carries besides its unit: the context's values of the
   * attributes its results are broken down by (format 2 snapshots), or null for none. The
   * module names the attributes whose values count (strings, finite numbers, booleans);
   * their values are the caller's own.
   */
  exposureAttributes(i, context) {
    const names = this.engine.exposureAttributes(i, encodeContext(context));
    if (names.length === 0) return null;
    const carried = {};
    for (const name of names) {
      let value = context[name];
      // A lone surrogate is what the module saw as U+FFFD, and what the origin's JSON parser
      // would refuse the whole batch for.
      if (typeof value === 'string' && typeof value.toWellFormed === 'function') value = value.toWellFormed();
      // Defined rather than assigned, so that an attribute named `__proto__` is kept too.
      Object.defineProperty(carried, name, { value, enumerable: true, writable: true, configurable: true });
    }
    return carried;
  }

  /** Releases the module memory now instead of at garbage collection. */
  free() {
    this.engine.free();
  }

  variants(i) {
    return (this.variantNames[i] ??= this.engine.variantKeys(i));
  }

  configs(i) {
    return (this.variantConfigs[i] ??= new Texts(this.engine.variantConfigs(i)));
  }

  values(i) {
    return (this.flagValues[i] ??= new Texts(this.engine.flagValues(i)));
  }

  /** An experiment result from its two packed words. */
  experimentResult(i, reason, variantPlusOne) {
    const reasonName = this.reasons[reason];
    if (variantPlusOne === 0) {
      return { variant: null, config: null, configJson: null, reason: reasonName };
    }
    const v = variantPlusOne - 1;
    const configs = this.configs(i);
    return {
      variant: this.variants(i)[v] ?? null,
      config: configs.parsedAt(v),
      configJson: configs.texts[v] ?? null,
      reason: reasonName,
    };
  }

  /** A flag result from its two packed words. */
  flagResult(i, reason, valueIndex) {
    const values = this.values(i);
    return {
      value: values.parsedAt(valueIndex),
      valueJson: values.texts[valueIndex] ?? null,
      reason: this.flagReasons[reason],
    };
  }

  /** Every experiment and flag as packed words. */
  evaluatePacked(context, nowMs) {
    try {
      return this.engine.evaluate(encodeContext(context), nowMs);
    } catch (error) {
      throw AbxError.from(error);
    }
  }

  experimentPacked(i, context, nowMs) {
    try {
      return this.engine.experiment(i, encodeContext(context), nowMs);
    } catch (error) {
      throw AbxError.from(error);
    }
  }

  flagPacked(i, context, nowMs) {
    try {
      return this.engine.flag(i, encodeContext(context), nowMs);
    } catch (error) {
      throw AbxError.from(error);
    }
  }
}
