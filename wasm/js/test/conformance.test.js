// Every conformance vector replayed in Node through the package, as a page would use it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { AbxClient, init } from '../src/index.js';
import { replayInvalid, replayVectors } from './conformance-lib.js';

const suite = fileURLToPath(new URL('../../../snapshots/', import.meta.url));
const files = readdirSync(`${suite}vectors`)
  .filter((f) => f.endsWith('.json') && f !== 'invalid.json')
  .sort();

await init();

let total = 0;

test('the suite is complete', () => {
  assert.ok(files.length >= 8, `vector files: ${files}`);
});

for (const file of files) {
  test(`vectors/${file}`, () => {
    const vectors = JSON.parse(readFileSync(`${suite}vectors/${file}`, 'utf8'));
    const bytes = readFileSync(`${suite}golden/${vectors.snapshot}`);
    const { cases, failed, mismatches } = replayVectors(AbxClient, file, vectors, bytes);
    total += cases;
    console.log(`node: ${file}: ${cases} cases, ${failed} failed`);
    assert.deepEqual(mismatches.slice(0, 10), []);
    assert.ok(cases > 0);
  });
}

test('vectors/invalid.json', async () => {
  const manifest = JSON.parse(readFileSync(`${suite}vectors/invalid.json`, 'utf8'));
  const { cases, mismatches } = await replayInvalid(AbxClient, manifest, (file) => readFileSync(`${suite}golden/${file}`));
  console.log(`node: invalid.json: ${cases} broken snapshots refused with their codes`);
  assert.deepEqual(mismatches, []);
});

test('at least 20,000 cases replayed', () => {
  console.log(`node: ${total} conformance cases`);
  assert.ok(total >= 20_000, `${total}`);
});
