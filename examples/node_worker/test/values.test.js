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

test("a server that accepts larger messages (Welcome.max_message_bytes) takes a wider split", async () => {
  const transfer = countingTransfer();
  const wide = Array.from({ length: 1_000_000 }, (_, i) => i);
  const value = await encodeResult(wide, {
    split: true,
    inlineLimit: 0,
    transfer,
    maxMessageBytes: 64 << 20,
  });
  // The whole list (6.9 MB of JSON) is uploaded once; every element stays inline: the
  // inline budget grows with the server's limit.
  assert.equal(transfer.uploads, 1);
  assert.ok(value.ref);
  assert.equal(value.items.length, 1_000_000);
  assert.ok(value.items.every((item) => item.inline));
  transfer.uploads = 0;
  await assert.rejects(
    encodeResult(wide, { split: true, inlineLimit: 0, transfer, maxMessageBytes: 16 << 20 }),
    /\(16,320 KiB under the server's max_message_bytes\)/,
  );
  assert.equal(transfer.uploads, 0);
});
