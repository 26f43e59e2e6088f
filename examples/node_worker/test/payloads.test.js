'use strict';
// A transfer waits for a server that is away (a restart, a standby until its lease is
// its own): a task's large result was lost, its run FAILED, when the server restarted
// during the upload (the tries gave up after ~1.4 s; a user trial).

const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { FakeServer } = require('./fake_server');
const { PATIENCE_MS, PayloadTransfer, pauseAfter } = require('../lib/payloads');

test('an upload waits out a server that refuses it as a standby', async () => {
  const server = await new FakeServer().start();
  const transfer = new PayloadTransfer(server.contract, server.address, () => new grpc.Metadata());
  try {
    server.uploadRefusals = 4; // it gave up at the fourth
    const ref = await transfer.upload(Buffer.from('x'.repeat(2000)), { encoding: 'json' });
    assert.equal(server.uploadRefusals, 0);
    assert.equal(server.payloads.get(ref.payload_id).data.length, 2000);
  } finally {
    transfer.close();
    server.stop();
  }
});

test('only an unavailable server is waited for, growing pauses up to 5 s, for 5 minutes', () => {
  const now = Date.now();
  const away = { code: grpc.status.UNAVAILABLE };
  assert.deepEqual([0, 1, 2, 5, 9].map((n) => pauseAfter(away, n, now)), [200, 400, 800, 5000, 5000]);
  assert.equal(pauseAfter({ code: grpc.status.INVALID_ARGUMENT }, 0, now), null);
  assert.equal(pauseAfter(away, 3, now - PATIENCE_MS), null);
});
