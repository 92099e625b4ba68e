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

  /** Wraps anything thrown by the module (an `Error` with `code`, or a trap) as an AbxError. */
  static from(error) {
    if (error instanceof AbxError) return error;
    const code = typeof error?.code === 'string' ? error.code : 'internal';
    return new AbxError(code, error?.message ?? String(error), error);
  }
}
