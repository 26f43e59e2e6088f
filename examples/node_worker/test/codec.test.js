'use strict';
// The json codec against the vectors the Python tests read too (tests/json_vectors.json).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');

const { CodecError, LocalDate, decode, encode, formatFloat } = require('../lib/codec');

const VECTORS = JSON.parse(
  fs.readFileSync(path.join(__dirname, '..', '..', '..', 'tests', 'json_vectors.json'), 'utf8'),
);

// Test data written by us: a JavaScript expression of the expected native value.
// eslint-disable-next-line no-new-func
const expected = (expression) => new Function('LocalDate', 'Buffer', `return (${expression});`)(LocalDate, Buffer);

for (const vector of VECTORS.valid) {
  test(`valid: ${vector.name}`, () => {
    const value = decode(Buffer.from(vector.json, 'utf8'));
    assert.deepStrictEqual(value, expected(vector.node));
    const want = vector.node_json ?? vector.canonical ?? vector.json;
    assert.equal(encode(value).toString('utf8'), want);
  });
}

for (const vector of VECTORS.invalid) {
  test(`invalid: ${vector.name}`, () => {
    const data = vector.hex !== undefined ? Buffer.from(vector.hex, 'hex') : Buffer.from(vector.json, 'utf8');
    assert.throws(
      () => decode(data),
      (err) => err instanceof CodecError && err.message.includes(vector.error ?? '') && !err.message.includes('\n'),
    );
  });
}

test('Python float repr for numbers that are not safe integers', () => {
  const cases = [
    [0.5, '0.5'], [1e16, '1e+16'], [1e22, '1e+22'], [123456.789, '123456.789'],
    [1e-4, '0.0001'], [1e-5, '1e-05'], [-2.5e-300, '-2.5e-300'], [9007199254740994, '9007199254740994.0'],
    [1.5e15, '1500000000000000.0'], [-0, '-0.0'],
  ];
  for (const [x, text] of cases) assert.equal(formatFloat(x), text, String(x));
});

test('values json cannot hold are refused with a clear error', () => {
  const bad = [
    [undefined, 'undefined'], [{ a: undefined }, 'undefined'], [() => 1, 'function'], [Symbol('s'), 'symbol'],
    [new Map(), 'Map'], [new Set(), 'Set'], ['lone \ud800', 'surrogate'], [new Date(NaN), 'invalid Date'],
    [new Date(Date.UTC(10000, 0, 1)), 'year 10000'],
  ];
  for (const [value, fragment] of bad) {
    assert.throws(() => encode(value), (err) => err instanceof CodecError && err.message.includes(fragment), fragment);
  }
  let deep = [];
  for (let i = 0; i < 101; i++) deep = [deep];
  assert.throws(() => encode(deep), /nested more than 100/);
  // (a user trial: "a undefined cannot be json", and "nested more than 100 levels" for
  // an object that contains itself)
  assert.throws(() => encode([1, undefined]), { message: 'undefined cannot be json (use null)' });
  const loop = { name: 'a' };
  loop.self = loop;
  assert.throws(() => encode({ outer: loop }), /contains itself \(a circular reference\)/);
  const shared = { x: 1 };
  assert.deepEqual(decode(encode([shared, shared])), [{ x: 1 }, { x: 1 }]); // twice is no loop
});

test('a typed array of bytes is written as $bytes and read back as a Buffer', () => {
  const view = new Uint8Array([9, 8, 7, 6]).subarray(1, 3);
  assert.equal(encode(view).toString(), '{"$bytes":"CAc="}');
  assert.deepStrictEqual(decode(encode(view)), Buffer.from([8, 7]));
});

test('LocalDate refuses impossible dates', () => {
  assert.throws(() => new LocalDate('2023-02-29'), CodecError);
  assert.equal(new LocalDate('2024-02-29').toString(), '2024-02-29');
});
