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

test('a handler that blocks the event loop ends the process once the server has given up on it', async () => {
  // A synchronous busy loop stopped the attempt's timeout, the heartbeats and SIGTERM:
  // the process stayed at 100% CPU for good, "connected" in its log, until SIGKILL (a
  // user trial). Its watchdog thread kills it once the loop has been blocked for the
  // server's heartbeat timeout less an interval (here 1 s - 0.05 s; at least 1 s).
  const { spawn } = require('node:child_process');
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const { FakeServer, assignment } = require('./fake_server');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-node-blocked-'));
  const handlers = path.join(dir, 'handlers.js');
  fs.writeFileSync(handlers, "module.exports = { 'js.spin': async () => { for (;;) {} } };\n");
  const server = await new FakeServer({ welcome: { heartbeat_timeout: { seconds: 1, nanos: 0 } } }).start();
  const script = path.join(__dirname, '..', 'bin', 'worker.js');
  const child = spawn(process.execPath, [script, '--server', server.address, '--handlers', handlers, '--name', 'spinner'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const ended = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const bound = setTimeout(() => child.kill('SIGKILL'), 20000);
  try {
    await server.waitFor('hello');
    server.send({ assignment: assignment('spin', 'js.spin', { timeout: { seconds: 0, nanos: 100e6 } }) });
    const { signal } = await ended;
    assert.equal(signal, 'SIGKILL');
    assert.match(stderr, /headwater-node-worker spinner: the event loop has been blocked for \d+\.\d s, long enough for the server to count this worker lost \(running: spin \(run\/spin attempt 1\)\)/);
    assert.match(stderr, /the server dispatches its attempts again\. Exiting \(SIGKILL\)\./);
  } finally {
    clearTimeout(bound);
    server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a worker the server refuses for good exits with status 2, as the Python worker', async () => {
  // It exited 1, where the Python worker's help says a refused token exits 2 (a trial).
  const { spawn } = require('node:child_process');
  const path = require('node:path');
  const grpc = require('@grpc/grpc-js');
  const { FakeServer } = require('./fake_server');
  const server = await new FakeServer({ refuse: grpc.status.UNAUTHENTICATED }).start();
  const script = path.join(__dirname, '..', 'bin', 'worker.js');
  const handlers = path.join(__dirname, '..', 'handlers.js');
  const child = spawn(process.execPath, [script, '--server', server.address, '--handlers', handlers], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const bound = setTimeout(() => child.kill('SIGKILL'), 20000);
  try {
    const code = await new Promise((resolve) => child.on('exit', (c) => resolve(c)));
    assert.equal(code, 2);
    assert.match(stderr, /headwater-node-worker: error: the server at 127\.0\.0\.1:\d+ refused this worker: UNAUTHENTICATED/);
  } finally {
    clearTimeout(bound);
    server.stop();
  }
});
