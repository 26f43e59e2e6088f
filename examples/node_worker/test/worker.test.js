'use strict';
// The worker protocol against an in-process fake control plane (a real gRPC server).

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { test } = require('node:test');
const grpc = require('@grpc/grpc-js');

const { Worker, WorkerError } = require('../lib');
const { FakeServer, assignment, json } = require('./fake_server');

const untilAborted = (signal) => new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));

async function session(t, { handlers, slots = 2, token = 'secret', welcome, labels } = {}) {
  const server = await new FakeServer({ token, welcome }).start();
  const worker = new Worker({ server: server.address, token, slots, labels, handlers, name: 'test-worker', log: () => {} });
  const running = worker.run();
  t.after(async () => {
    worker.stop();
    await running;
    server.stop();
  });
  await server.waitFor('hello');
  return { server, worker };
}

test('Hello first with the contract fields, bearer token, then heartbeats at the interval', async (t) => {
  const { server } = await session(t, {
    handlers: { 'b.task': async () => 1, 'a.task': async () => 2 },
    labels: { runtime: 'node' },
    slots: 3,
  });
  assert.equal(server.received[0].message, 'hello');
  const hello = server.received[0].hello;
  assert.equal(hello.protocol_version, 1);
  assert.deepEqual(hello.capabilities, ['a.task', 'b.task']);
  assert.deepEqual(hello.labels, { runtime: 'node' });
  assert.equal(hello.slots, 3);
  assert.equal(hello.name, 'test-worker');
  assert.match(hello.worker_id, /^[0-9a-f]{32}$/);
  assert.equal(hello.runtime.language, 'javascript');
  assert.equal(Number(hello.runtime.pid), process.pid);
  assert.deepEqual(server.metadata[0], ['Bearer secret']);
  await server.waitFor('heartbeat');
  // The interval is 50 ms: a third heartbeat proves they repeat (bounded by waitFor's 5 s).
  await new Promise((resolve) => {
    const poll = setInterval(() => server.count('heartbeat') >= 3 && (clearInterval(poll), resolve()), 10);
  });
});

test('runs a handler: started, logs, then a json result; values decoded and selected', async (t) => {
  const seen = [];
  const { server } = await session(t, {
    handlers: {
      echo: async (inputs, ctx) => {
        seen.push(inputs);
        ctx.log('hello from node', 'warning');
        return { got: inputs.x, attempt: ctx.attempt };
      },
    },
  });
  const inputs = {
    x: { ...json({ rows: [10, 20, 30] }), path: [{ selector: 'key', key: 'rows' }, { selector: 'index', index: -1 }] },
    pair: { kind: 'list', list: { items: [json(1), json('two')], tuple: true } },
    named: { kind: 'map', map: { entries: [{ key: 'z', value: json(null) }, { key: 'a', value: json(true) }] } },
  };
  server.send({ assignment: assignment('e', 'echo', { inputs, argument_order: ['x'], attempt: 3 }) });
  const started = await server.waitFor('started');
  assert.equal(started.token.task_run_id, 'run/e');
  const log = await server.waitFor('log');
  assert.equal(log.level, 'WARNING');
  assert.equal(log.message, 'hello from node');
  const result = await server.waitFor('result');
  assert.equal(Number(result.token.attempt), 3);
  assert.equal(result.result.inline.metadata.encoding, 'json');
  assert.equal(result.result.inline.data.toString(), '{"got":30,"attempt":3}');
  assert.deepEqual(seen[0], { x: 30, pair: [1, 'two'], named: { z: null, a: true } });
  assert.deepEqual(Object.keys(seen[0].named), ['z', 'a']);
});

test('never runs more than its slots: an extra assignment is refused as WorkerFull', async (t) => {
  let active = 0;
  let most = 0;
  const { server } = await session(t, {
    slots: 1,
    handlers: {
      hold: async (_inputs, ctx) => {
        active += 1;
        most = Math.max(most, active);
        await untilAborted(ctx.signal);
        active -= 1;
      },
    },
  });
  server.send({ assignment: assignment('first', 'hold') });
  await server.waitFor('started');
  server.send({ assignment: assignment('second', 'hold') });
  const full = await server.waitFor('failure', (f) => f.token.task_run_id === 'run/second');
  assert.equal(full.failure.type, 'headwater.WorkerFull');
  assert.equal(full.failure.retryable, true);
  assert.equal(most, 1);
});

test('handler errors become structured failures; retryable=false and causes are kept', async (t) => {
  const { server } = await session(t, {
    handlers: {
      boom: async ({ fatal }) => {
        const err = new RangeError('width out of range', { cause: new Error('root cause') });
        if (fatal) err.retryable = false;
        throw err;
      },
    },
  });
  server.send({ assignment: assignment('soft', 'boom', { inputs: { fatal: json(false) } }) });
  server.send({ assignment: assignment('hard', 'boom', { inputs: { fatal: json(true) } }) });
  const soft = await server.waitFor('failure', (f) => f.token.task_run_id === 'run/soft');
  const hard = await server.waitFor('failure', (f) => f.token.task_run_id === 'run/hard');
  assert.equal(soft.failure.type, 'RangeError');
  assert.equal(soft.failure.message, 'width out of range');
  assert.equal(soft.failure.language, 'javascript');
  assert.match(soft.failure.stack_trace, /RangeError: width out of range/);
  assert.equal(soft.failure.retryable, true);
  assert.equal(soft.failure.cause.message, 'root cause');
  assert.equal(hard.failure.retryable, false);
});

test('a thrown value that is no Error is reported as it reads, not [object Object]', async (t) => {
  const { server } = await session(t, {
    handlers: {
      object: async () => {
        throw { code: 42, where: ['a'] }; // eslint-disable-line no-throw-literal
      },
      text: async () => {
        throw 'a plain string'; // eslint-disable-line no-throw-literal
      },
    },
  });
  server.send({ assignment: assignment('o', 'object') });
  server.send({ assignment: assignment('s', 'text') });
  const object = await server.waitFor('failure', (f) => f.token.task_run_id === 'run/o');
  const text = await server.waitFor('failure', (f) => f.token.task_run_id === 'run/s');
  assert.deepEqual([object.failure.type, object.failure.message], ['object', "{ code: 42, where: [ 'a' ] }"]);
  assert.deepEqual([text.failure.type, text.failure.message], ['string', 'a plain string']);
  assert.equal(object.failure.stack_trace, '');
});

test('a thrown value that cannot be described still fails its attempt', async (t) => {
  // Describing it threw, and the attempt stayed RUNNING with its slot taken (a re-trial).
  const { server } = await session(t, {
    slots: 3,
    handlers: {
      custom: async () => {
        throw { [Symbol.for('nodejs.util.inspect.custom')]() { throw new Error('inspect boom'); } }; // eslint-disable-line no-throw-literal
      },
      revoked: async () => {
        const p = Proxy.revocable({}, {});
        p.revoke();
        throw p.proxy;
      },
      getter: async () => {
        const err = new Error('x');
        Object.defineProperty(err, 'message', { get() { throw new Error('getter boom'); } });
        throw err;
      },
    },
  });
  for (const name of ['custom', 'revoked', 'getter']) server.send({ assignment: assignment(name, name) });
  for (const name of ['custom', 'revoked', 'getter']) {
    const report = await server.waitFor('failure', (f) => f.token.task_run_id === `run/${name}`);
    assert.match(report.failure.message, /cannot be described|could not report the outcome/, name);
  }
});

test("with captureConsole, a handler's console lines are kept with its task run", async (t) => {
  const { captureConsole } = require('../lib');
  captureConsole();
  const { server } = await session(t, {
    handlers: {
      chatty: async (_inputs, ctx) => {
        console.log('hello', 42, { a: 1 });
        await new Promise((resolve) => setTimeout(resolve, 5)); // (its async calls too)
        console.error('something bad');
        return ctx.attempt;
      },
    },
  });
  const quiet = console.log; // outside a handler: nothing is sent
  quiet.call(console, 'not a task line');
  server.send({ assignment: assignment('c', 'chatty') });
  await server.waitFor('result');
  const logs = server.received.filter((m) => m.message === 'log').map((m) => [m.log.level, m.log.message]);
  assert.deepEqual(logs, [
    ['INFO', 'hello 42 { a: 1 }'],
    ['ERROR', 'something bad'],
  ]);
});

test('a pickle input is refused without retries, naming the argument', async (t) => {
  let called = false;
  const { server } = await session(t, { handlers: { f: async () => (called = true) } });
  const pickled = { kind: 'value', value: { inline: { data: Buffer.from([0x80, 5]), metadata: { encoding: 'pickle' } } } };
  server.send({ assignment: assignment('p', 'f', { inputs: { frame: pickled } }) });
  const { failure } = await server.waitFor('failure');
  assert.equal(failure.type, 'headwater.InputError');
  assert.equal(failure.retryable, false);
  assert.match(failure.message, /argument 'frame': it is encoded as 'pickle'/);
  assert.equal(called, false);
});

test('a timeout aborts the handler and reports timed_out', async (t) => {
  let aborted = false;
  const { server } = await session(t, {
    handlers: {
      slow: async (_inputs, ctx) => {
        await untilAborted(ctx.signal);
        aborted = true;
        return 'too late';
      },
    },
  });
  server.send({ assignment: assignment('s', 'slow', { timeout: { seconds: 0, nanos: 50e6 } }) });
  const report = await server.waitFor('failure');
  assert.equal(report.timed_out, true);
  assert.equal(report.failure.type, 'headwater.TaskTimeout');
  assert.equal(report.failure.retryable, true);
  assert.equal(aborted, true);
  assert.equal(server.count('result'), 0);
});

test('CancelTaskRun and HeartbeatAck.cancel abort the handler and send TaskCancelled', async (t) => {
  const reasons = [];
  const { server } = await session(t, {
    handlers: {
      hold: async (_inputs, ctx) => {
        await untilAborted(ctx.signal);
        reasons.push(ctx.signal.reason.message);
        return 'ignored';
      },
    },
  });
  server.send({ assignment: assignment('a', 'hold') });
  server.send({ assignment: assignment('b', 'hold') });
  await server.waitFor('started', (s) => s.token.task_run_id === 'run/b');
  server.send({ cancel: { token: { task_run_id: 'run/a', attempt: 1 }, reason: 'flow cancelled' } });
  await server.waitFor('cancelled', (c) => c.token.task_run_id === 'run/a');
  server.ackCancel = [{ task_run_id: 'run/b', attempt: 1 }];
  await server.waitFor('cancelled', (c) => c.token.task_run_id === 'run/b');
  assert.deepEqual(reasons.sort(), ['flow cancelled', 'no longer owned by this worker']);
  assert.equal(server.count('result'), 0);
});

test('large values move by reference both ways, checked by sha256; split results', async (t) => {
  const { server } = await session(t, {
    welcome: { inline_payload_limit: 1024 },
    handlers: { grow: async ({ data }) => [data.toString('utf8').repeat(2), 'small'] },
  });
  const big = Buffer.from(JSON.stringify('x'.repeat(3000)));
  const ref = server.put(big, { encoding: 'json' });
  server.send({
    assignment: assignment('g', 'grow', { inputs: { data: { kind: 'value', value: { ref } } }, split_result: true }),
  });
  const { result } = await server.waitFor('result');
  assert.equal(result.kind, 'ref');
  assert.equal(result.ref.metadata['headwater.length'], '2');
  const stored = server.payloads.get(result.ref.payload_id).data;
  assert.equal(result.ref.sha256, crypto.createHash('sha256').update(stored).digest('hex'));
  assert.equal(JSON.parse(stored)[0].length, 6000);
  assert.equal(result.items.length, 2);
  assert.equal(result.items[0].kind, 'ref');
  assert.equal(result.items[1].inline.data.toString(), '"small"');
});

test('a refused token stops the worker with a clear error instead of retrying', async () => {
  const server = await new FakeServer({ refuse: grpc.status.UNAUTHENTICATED }).start();
  const worker = new Worker({ server: server.address, handlers: { f: async () => 1 }, log: () => {} });
  await assert.rejects(worker.run(), (err) => err instanceof WorkerError && /refused this worker/.test(err.message));
  server.stop();
});

test('after a reconnect, kept attempts resend their unacknowledged outcome; others are abandoned', async (t) => {
  let runs = 0;
  const aborted = [];
  const { server } = await session(t, {
    handlers: {
      quick: async () => {
        runs += 1;
        return 42;
      },
      hold: async (_inputs, ctx) => {
        await untilAborted(ctx.signal);
        aborted.push(ctx.signal.reason.message);
      },
    },
  });
  server.acks = false; // the outcome is received but not committed when the server "crashes"
  server.send({ assignment: assignment('q', 'quick') });
  server.send({ assignment: assignment('h', 'hold') });
  await server.waitFor('result');
  await server.waitFor('started', (s) => s.token.task_run_id === 'run/h');
  server.keepRunning = false;
  server.drop();
  // The new Hello names both attempts; this Welcome keeps none: both are abandoned silently.
  const hellos = () => server.received.filter((m) => m.message === 'hello');
  await server.waitFor('hello', (h) => h.running.length === 2);
  const second = hellos()[1].hello;
  assert.deepEqual(second.running.map((tok) => tok.task_run_id).sort(), ['run/h', 'run/q']);
  assert.equal(second.worker_id, hellos()[0].hello.worker_id);
  const afterHello = server.received.indexOf(hellos()[1]);
  await server.waitFor('heartbeat', () => true, afterHello);
  assert.equal(server.received.slice(afterHello).find((m) => m.message === 'heartbeat').heartbeat.running.length, 0);
  assert.deepEqual(aborted, ['abandoned at reconnect']);
  assert.equal(server.count('result'), 1);
  assert.equal(server.count('cancelled'), 0);

  // Now an outcome the server keeps: it is sent again after the Welcome, not re-run.
  server.send({ assignment: assignment('k', 'quick') });
  await server.waitFor('result', (r) => r.token.task_run_id === 'run/k');
  server.keepRunning = true;
  server.drop();
  await server.waitFor('hello', (h) => h.running.some((tok) => tok.task_run_id === 'run/k'));
  const resent = () => server.received.filter((m) => m.message === 'result' && m.result.token.task_run_id === 'run/k');
  await new Promise((resolve) => {
    const poll = setInterval(() => resent().length === 2 && (clearInterval(poll), resolve()), 10);
  });
  assert.equal(resent()[1].result.result.inline.data.toString(), '42');
  assert.equal(runs, 2); // q and k ran once each
});

test('what a task logs while its server is away is sent after the next Welcome', async (t) => {
  // (It was dropped: the lines a task wrote during a server restart were lost; a user trial.)
  const gates = [];
  const opened = (i) => new Promise((resolve) => (gates[i] = resolve));
  const first = opened(0);
  const second = opened(1);
  const { server } = await session(t, {
    handlers: {
      chatty: async (_inputs, ctx) => {
        ctx.log('one');
        await first;
        ctx.log('two');
        await second;
        return 1;
      },
    },
  });
  server.send({ assignment: assignment('c', 'chatty') });
  await server.waitFor('log', (l) => l.message === 'one');
  server.keepRunning = true;
  server.holdWelcome = true;
  server.drop();
  await server.waitFor('hello', (h) => h.running.length === 1);
  const since = server.received.length;
  gates[0](); // "two" is logged with no welcomed server
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(server.received.slice(since).filter((m) => m.message === 'log').length, 0);
  server.releaseWelcome();
  await server.waitFor('log', (l) => l.message === 'two', since);
  gates[1]();
  await server.waitFor('result', (r) => r.token.task_run_id === 'run/c');
});

test('a server that stops answering is presumed dead after timeout + interval; the worker dials again', async (t) => {
  const { server } = await session(t, {
    welcome: { heartbeat_interval: { seconds: 0, nanos: 20e6 }, heartbeat_timeout: { seconds: 0, nanos: 60e6 } },
    handlers: { f: async () => 1 },
  });
  server.heartbeatAcks = false;
  await server.waitFor('hello', () => true, 1);
  assert.ok(server.count('hello') >= 2);
});

test('stop() says stopping, gives every running attempt back as TaskCancelled, then ends its stream', async () => {
  const server = await new FakeServer({ token: 'secret' }).start();
  const aborted = [];
  const worker = new Worker({
    server: server.address,
    token: 'secret',
    slots: 2,
    name: 'stopping-worker',
    log: () => {},
    handlers: {
      hold: async (_inputs, ctx) => {
        await untilAborted(ctx.signal);
        aborted.push(ctx.signal.reason.message);
        return 'never reported';
      },
    },
  });
  const running = worker.run();
  try {
    await server.waitFor('hello');
    server.send({ assignment: assignment('a', 'hold') });
    server.send({ assignment: assignment('b', 'hold') });
    await server.waitFor('started', (s) => s.token.task_run_id === 'run/b');
    worker.stop();
    await running; // the server closed the stream once the worker ended its side
    const kinds = server.received.map((m) => m.message);
    const stopping = kinds.indexOf('stopping');
    assert.ok(stopping > 0, `no stopping in ${kinds}`);
    const given = server.received.filter((m) => m.message === 'cancelled').map((m) => m.cancelled.token.task_run_id);
    assert.deepEqual(given.sort(), ['run/a', 'run/b']);
    assert.ok(kinds.indexOf('cancelled') > stopping, 'the give-backs follow the stopping message');
    assert.deepEqual(aborted, ['the worker is stopping', 'the worker is stopping']);
    assert.equal(server.count('result'), 0);
    assert.equal(server.count('hello'), 1); // it does not dial again
  } finally {
    worker.stop();
    server.stop();
  }
});
