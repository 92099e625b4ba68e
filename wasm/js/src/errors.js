// The one error type of the package: every failure has a stable machine-readable `code`
// (the snapshot codes of docs/snapshot-format.md, the module's own codes, and the package's).

export class AbxError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {unknown} [cause]
   */
  constructor(code, message, cause) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'AbxError';
    this.code = code;
  }

  /**
   * Wraps anything thrown by the module as an AbxError: the module throws its error code as
   * a bare string (it links no message formatting), anything else is a trap or a bug.
   */
  static from(error) {
    if (error instanceof AbxError) return error;
    if (typeof error === 'string') return new AbxError(error, MESSAGES[error] ?? error);
    const code = typeof error?.code === 'string' ? error.code : 'internal';
    return new AbxError(code, error?.message ?? String(error), error);
  }
}

/** The module's codes (docs/snapshot-format.md, docs/wasm-abi.md) and what they mean. */
const MESSAGES = {
  truncated: 'the snapshot is shorter than its header says',
  bad_magic: 'not an abx snapshot (bad magic)',
  unsupported_version: 'the snapshot format version is not supported',
  unknown_flags: 'the snapshot has unknown flag bits',
  too_large: 'the snapshot declares a payload over 64 MiB',
  trailing_bytes: 'the snapshot has bytes after its end',
  bad_checksum: 'the snapshot checksum does not match',
  unsigned: 'a public key was given but the snapshot is not signed',
  bad_signature: 'the snapshot signature does not verify with the public key',
  bad_public_key: 'the public key is not a valid Ed25519 key',
  malformed_payload: 'the snapshot payload cannot be decoded',
  invalid_snapshot: 'the snapshot breaks an invariant of the format',
  invalid_context: 'the context could not be decoded',
  invalid_argument: 'an argument is out of range',
  internal: 'an internal error in the abx module',
};
