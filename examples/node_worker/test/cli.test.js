'use strict';
// The command line (bin/worker.js) refuses what it cannot do, in one line, exit 2.

const test = require('node:test');
const assert = require('node:assert/strict');

test('the command line takes one --server address', () => {
  // It retried for good, "Name resolution failed for target dns:a:1,b:2" (a user trial).
  const { spawnSync } = require('node:child_process');
  const path = require('node:path');
  const script = path.join(__dirname, '..', 'bin', 'worker.js');
  const handlers = path.join(__dirname, '..', 'handlers.js');
  const run = spawnSync(process.execPath, [script, '--server', 'a:1,b:2', '--handlers', handlers], {
    encoding: 'utf8',
    timeout: 20000,
  });
  assert.equal(run.status, 2);
  assert.match(run.stderr, /--server takes one HOST:PORT \(this worker does not fail over between servers\), got a:1,b:2/);
});
