// Replays conformance vectors (snapshots/README.md) through the package. Shared by the Node
// test and the Chromium page, which differ only in how they read files.

function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

function sameJson(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Every case through `evaluate` (all results at once, compared exactly: variant, reason, flag
 * value text, flag reason) and through `variant`/`flagDetail` one key at a time.
 * @returns {{ cases: number, failed: number, mismatches: string[] }}
 */
export function replayVectors(AbxClient, name, vectors, snapshotBytes) {
  const publicKey = vectors.public_key ?? undefined;
  const client = AbxClient.fromSnapshot(snapshotBytes, { publicKey: publicKey && hexToBytes(publicKey) });
  const mismatches = [];
  let failed = 0;
  vectors.cases.forEach((testCase, n) => {
    const before = mismatches.length;
    const where = `${name} case ${n}`;
    const options = { nowMs: testCase.now_ms };
    const got = client.evaluate(testCase.context, options);
    const expected = testCase.expected;
    const experimentKeys = Object.keys(got.experiments);
    if (experimentKeys.length !== Object.keys(expected).length) {
      mismatches.push(`${where}: ${experimentKeys.length} experiments, want ${Object.keys(expected).length}`);
    }
    for (const [key, want] of Object.entries(expected)) {
      const all = got.experiments[key];
      if (!all || all.variant !== want.variant || all.reason !== want.reason) {
        mismatches.push(`${where} ${key}: got ${JSON.stringify(all && [all.variant, all.reason])}, want ${JSON.stringify([want.variant, want.reason])}`);
      }
      const one = client.variant(key, testCase.context, options);
      if (one.variant !== want.variant || one.reason !== want.reason || !sameJson(one.config, all?.config)) {
        mismatches.push(`${where} ${key} (single): got ${JSON.stringify([one.variant, one.reason])}`);
      }
    }
    const flagKeys = Object.keys(got.flags);
    if (flagKeys.length !== Object.keys(testCase.flags).length) {
      mismatches.push(`${where}: ${flagKeys.length} flags, want ${Object.keys(testCase.flags).length}`);
    }
    for (const [key, want] of Object.entries(testCase.flags)) {
      const all = got.flags[key];
      if (!all || all.valueJson !== want.value || all.reason !== want.reason) {
        mismatches.push(`${where} flag ${key}: got ${JSON.stringify(all && [all.valueJson, all.reason])}, want ${JSON.stringify([want.value, want.reason])}`);
      }
      const one = client.flagDetail(key, testCase.context, undefined, options);
      if (one.reason !== want.reason || !sameJson(one.value, JSON.parse(want.value))) {
        mismatches.push(`${where} flag ${key} (single): got ${JSON.stringify([one.value, one.reason])}`);
      }
    }
    if (mismatches.length > before) failed++;
  });
  client.close();
  return { cases: vectors.cases.length, failed, mismatches };
}

/**
 * Every broken snapshot must be refused with its error code.
 * @param {(file: string) => Uint8Array | Promise<Uint8Array>} read
 */
export async function replayInvalid(AbxClient, manifest, read) {
  const mismatches = [];
  let failed = 0;
  for (const testCase of manifest.cases) {
    const bytes = await read(testCase.file);
    const publicKey = testCase.public_key ? hexToBytes(testCase.public_key) : undefined;
    let code = null;
    try {
      AbxClient.fromSnapshot(bytes, { publicKey }).close();
    } catch (error) {
      code = error?.name === 'AbxError' ? error.code : `non-AbxError ${error}`;
    }
    if (code !== testCase.error) {
      failed++;
      mismatches.push(`${testCase.file}: got ${code}, want ${testCase.error}`);
    }
  }
  return { cases: manifest.cases.length, failed, mismatches };
}
