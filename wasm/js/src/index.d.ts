// Types of @abx/browser (hand-written; the module's own bindings are internal).

/** Attribute values; anything else in a context (null, objects, mixed lists) is ignored. */
export type AttributeValue = string | number | boolean | string[];
export type Context = Record<string, AttributeValue | null | undefined | unknown>;
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type Reason =
  | 'not_running' | 'shipped' | 'forced' | 'missing_unit' | 'not_targeted' | 'holdout'
  | 'not_in_traffic' | 'assigned'
  /** No snapshot is loaded. */
  | 'not_loaded'
  /** The snapshot has no experiment (or flag) with this key. */
  | 'unknown_key'
  /** Evaluation failed; reported to `onError`. */
  | 'error';

export type FlagReason = 'disabled' | 'rule' | 'experiment' | 'default' | 'not_loaded' | 'unknown_key' | 'error';

/** Snapshot error codes (docs/snapshot-format.md) and the package's own. */
export type ErrorCode =
  | 'truncated' | 'bad_magic' | 'unsupported_version' | 'unknown_flags' | 'too_large'
  | 'trailing_bytes' | 'bad_checksum' | 'unsigned' | 'bad_signature' | 'bad_public_key'
  | 'malformed_payload' | 'invalid_snapshot'
  | 'invalid_context' | 'invalid_argument' | 'internal'
  | 'wasm_unavailable' | 'not_initialized' | 'fetch_failed' | 'cache_unreadable'
  | 'event_too_large' | 'queue_full' | 'events_rejected' | 'invalid_event';

export class AbxError extends Error {
  readonly code: ErrorCode | string;
  constructor(code: string, message: string, cause?: unknown);
}

export interface VariantResult {
  variant: string | null;
  /** The variant's config, parsed and frozen (its text if it is not JSON). */
  config: Json | null;
  reason: Reason;
}

export interface ExperimentEvaluation extends VariantResult {
  configJson: string | null;
  experimentId: string;
  logExposure: boolean;
}

export interface FlagDetail {
  value: Json;
  reason: FlagReason;
  /** The variant of the experiment that supplied the value, when one did. */
  variant?: string;
}

export interface FlagEvaluation extends FlagDetail {
  valueJson: string | null;
}

export interface Evaluation {
  snapshotVersion: number | null;
  experiments: Record<string, ExperimentEvaluation>;
  flags: Record<string, FlagEvaluation>;
}

export interface EvalOptions {
  /** Evaluation time in ms since the epoch; defaults to the client's clock. */
  nowMs?: number;
}

export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(timer: unknown): void;
}

export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ExposureEvent {
  event_id: string | null;
  kind: 'exposure';
  unit: string;
  unit_attribute: string;
  experiment_id: string;
  variant: string;
  timestamp: number;
  /**
   * The context's values of the attributes the experiment's results are broken down by (its
   * dimensions and the instance's), when it has any; never on holdout exposures.
   */
  attributes?: Record<string, string | number | boolean>;
}

export interface ClientOptions {
  /**
   * Ed25519 public key (64 hex digits or 32 bytes): only snapshots it signed are used. A
   * list accepts a snapshot signed by any of its keys, for rotating the origin's key.
   */
  publicKey?: string | Uint8Array | Array<string | Uint8Array>;
  clock?: Clock;
  onError?: (error: AbxError) => void;
  /**
   * Called for every exposure logged (after it is queued), holdout exposures included: those
   * name the holdout's id as `experiment_id` and the unit's arm (`held` or `released`) as
   * `variant`.
   */
  onExposure?: (event: ExposureEvent) => void;
  /** Where exposures and metric events go. `connect` creates one for the origin. */
  queue?: EventQueue;
}

export interface ConnectOptions extends ClientOptions {
  origin: string;
  sdkKey: string;
  fetch?: typeof fetch;
  /** Used for the change stream; pass one in Node (which has none before v22). */
  EventSource?: new (url: string) => { addEventListener(type: string, listener: (event: { data: string }) => void): void; close(): void };
  storage?: KeyValueStorage;
  /** Background refresh period; 0 disables it. Default 60 s. */
  refreshIntervalMs?: number;
  /** How long `connect` waits for the first snapshot when none is cached. Default 3 s. */
  initialTimeoutMs?: number;
  /** Listen to `/api/v1/snapshot/stream` for changes. Default true. */
  stream?: boolean;
  /** Options for the event queue, or false for none. */
  events?: Partial<EventQueueOptions> | false;
  /** Where to load the module from (see `init`). */
  wasm?: WasmSource;
}

export type WasmSource = BufferSource | WebAssembly.Module | URL | string | Response | Promise<Response>;

/** Loads the WebAssembly module (once). Rejects with an AbxError `wasm_unavailable`. */
export function init(source?: WasmSource): Promise<void>;

export class AbxClient {
  /** Requires `await init()`. Throws AbxError with the snapshot's error code. */
  static fromSnapshot(bytes: Uint8Array | ArrayBuffer, options?: ClientOptions): AbxClient;
  /** Never rejects: with nothing loaded, experiments give no variant and flags their fallback. */
  static connect(options: ConnectOptions): Promise<AbxClient>;
  readonly snapshotVersion: number | null;
  evaluate(context: Context, options?: EvalOptions & { logExposures?: boolean }): Evaluation;
  variant(key: string, context: Context, options?: EvalOptions): VariantResult;
  flag<T extends Json = Json>(key: string, context: Context, fallback?: T, options?: EvalOptions): Json | T;
  flagDetail(key: string, context: Context, fallback?: Json, options?: EvalOptions): FlagDetail;
  track(
    eventType: string,
    value?: number,
    context?: Context,
    options?: EvalOptions & { unitAttribute?: string; properties?: Record<string, unknown> },
  ): string | null;
  /** Calls `listener(version)` after each new snapshot; returns a function that removes it. */
  onSnapshot(listener: (version: number) => void): () => void;
  /** Swaps in new snapshot bytes if they verify and are not older; never throws. */
  loadSnapshot(bytes: Uint8Array, etag?: string | null): boolean;
  refresh(): Promise<boolean>;
  flush(): Promise<void>;
  close(): void;
}

export interface SendResult {
  /** HTTP status, 0 for a network error. */
  status: number;
  retryAfter?: string | null;
}

export interface Transport {
  send(body: string, options: { keepalive: boolean }): Promise<SendResult>;
  beacon?(body: string): boolean;
}

export interface EventQueueOptions {
  transport: Transport;
  storage?: KeyValueStorage;
  storageKey?: string;
  clock?: Clock;
  /** Largest request body in bytes. Default 60 KiB. */
  maxBodyBytes?: number;
  flushIntervalMs?: number;
  maxQueuedEvents?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  random?: () => number;
  randomUUID?: () => string;
  onError?: (error: AbxError) => void;
}

export const MAX_EVENT_BYTES: number;

export class EventQueue {
  constructor(options: EventQueueOptions);
  readonly size: number;
  enqueue(event: Record<string, unknown>): string | null;
  flush(): Promise<void>;
  flushOnExit(): void;
  attach(win?: EventTarget, doc?: EventTarget & { visibilityState?: string }): () => void;
  close(): void;
}

export function originTransport(options: {
  origin: string;
  sdkKey: string;
  fetch?: typeof fetch;
  navigator?: { sendBeacon?(url: string, body: string): boolean };
}): Transport;

export class MemoryStorage implements KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Postcard bytes of a context (what the module decodes); valid until the next call. */
export function encodeContext(context: Context | null | undefined): Uint8Array;
