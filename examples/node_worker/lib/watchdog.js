'use strict';
// The process's last resort when a handler blocks the event loop (synchronous CPU work:
// `for (;;) {}`, a huge JSON.parse). Nothing on the loop runs then: not the attempt's
// timeout, not the heartbeats, not a SIGTERM handler. The server counts the worker lost
// once it has heard nothing for its heartbeat timeout and dispatches the attempts
// elsewhere; the process stayed at 100% CPU for good, "connected" in its log, and only
// SIGKILL ended it (a user trial). A thread of its own sees the loop stop ticking and,
// once it has been blocked long enough for the server to count the worker lost, says
// so on stderr and kills the process, so that a supervisor starts a fresh one.
//
// Used by bin/worker.js, not by the library: a program that embeds a Worker decides
// itself what a blocked loop means for its process.

const fs = require('node:fs');
const { Worker: Thread } = require('node:worker_threads');

/** How often the loop says it is alive, and the thread looks. */
const TICK_MS = 250;

const THREAD = `
const fs = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const ticks = new Int32Array(workerData.shared);
let limitMs = workerData.limitMs;
let running = [];
let seen = Atomics.load(ticks, 0);
let lastSeen = Date.now();
parentPort.on('message', (m) => {
  if (m.limitMs !== undefined) limitMs = m.limitMs;
  if (m.running !== undefined) running = m.running;
});
setInterval(() => {
  const now = Date.now();
  const current = Atomics.load(ticks, 0);
  if (current !== seen) {
    seen = current;
    lastSeen = now;
    return;
  }
  if (now - lastSeen <= limitMs) return;
  const what = running.length ? running.join(', ') : 'no attempt';
  // (Written straight to the file descriptor: this thread's process.stderr goes
  // through the blocked main thread.)
  fs.writeSync(2, workerData.name + ': the event loop has been blocked for ' +
    ((now - lastSeen) / 1000).toFixed(1) + ' s, long enough for the server to count ' +
    'this worker lost (running: ' + what + '): a handler runs synchronous code that never ' +
    'yields, so its timeout, the heartbeats and SIGTERM cannot run; the server ' +
    'dispatches its attempts again. Exiting (SIGKILL).\\n');
  process.kill(process.pid, 'SIGKILL');
}, ${TICK_MS});
`;

/**
 * Watch the event loop from a thread of its own.
 * @param {object} options
 * @param {number} options.limitMs how long the loop may be blocked before the process is killed
 * @param {string} options.name what the message on stderr starts with
 * @returns {{setLimit(ms: number): void, setRunning(list: string[]): void, stop(): void}}
 */
function startWatchdog({ limitMs, name }) {
  const shared = new SharedArrayBuffer(4);
  const ticks = new Int32Array(shared);
  const thread = new Thread(THREAD, { eval: true, workerData: { shared, limitMs, name } });
  thread.unref(); // it never keeps the process alive
  thread.on('error', (err) => fs.writeSync(2, `${name}: the event loop watchdog failed: ${err.message}\n`));
  const tick = setInterval(() => Atomics.add(ticks, 0, 1), TICK_MS);
  tick.unref();
  return {
    setLimit: (ms) => thread.postMessage({ limitMs: ms }),
    setRunning: (list) => thread.postMessage({ running: list }),
    stop: () => {
      clearInterval(tick);
      thread.terminate();
    },
  };
}

module.exports = { startWatchdog, TICK_MS };
