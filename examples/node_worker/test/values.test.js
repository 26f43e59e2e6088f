'use strict';
// A split result too large for one message is refused before anything is uploaded.

const assert = require('node:assert/strict');
const { test } = require('node:test');

const { encodeResult } = require('../lib/values');

function countingTransfer() {
  const transfer = {
    uploads: 0,
    async upload(data) {
      transfer.uploads += 1;
      return { payload_id: transfer.uploads.toString(16).padStart(32, '0'), size_bytes: data.length };
    },
  };
  return transfer;
}

test('a split result that cannot fit one message is refused before any upload', async () => {
  const transfer = countingTransfer();
  const big = Array.from({ length: 1_000_000 }, (_, i) => i);
  await assert.rejects(
    encodeResult(big, { split: true, inlineLimit: 0, transfer }),
    /split into 1,000,000 elements does not fit in one message/,
  );
  assert.equal(transfer.uploads, 0);
});

test('a split result of 100,000 small elements travels inline', async () => {
  const transfer = countingTransfer();
  const value = await encodeResult(
    Array.from({ length: 100_000 }, (_, i) => i),
    { split: true, inlineLimit: 0, transfer },
  );
  assert.equal(transfer.uploads, 0);
  assert.equal(value.items.length, 100_000);
  assert.equal(Buffer.from(value.items[99_999].inline.data).toString('utf8'), '99999');
});
