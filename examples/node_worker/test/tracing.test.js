'use strict';
// Execution spans: children of the assignment's traceparent, with the agreed names,
// attributes and error status; configured by the standard OTEL_* variables.

const assert = require('node:assert/strict');
const http = require('node:http');
const { test } = require('node:test');
const api = require('@opentelemetry/api');
const { InMemorySpanExporter } = require('@opentelemetry/sdk-trace-base');

const { Skip, Worker } = require('../lib');
const { Tracing, TracingConfigError, fromEnvironment } = require('../lib/tracing');
const { FakeServer, assignment, json } = require('./fake_server');

const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const PARENT_ID = 'b7ad6b7169203331';
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`;

test('each attempt is an INTERNAL span, child of Assignment.trace_context', async (t) => {
  const exporter = new InMemorySpanExporter();
  const tracing = new Tracing({ exporters: [exporter], batch: false, serviceName: 'svc-test' });
  const server = await new FakeServer().start();
  const worker = new Worker({
    server: server.address,
    name: 'traced',
    log: () => {},
    tracing,
    handlers: {
      ok: async ({ x }) => x + 1,
      bad: async () => {
        throw new TypeError('not a number');
      },
      text: async () => {
        throw 'a plain string'; // eslint-disable-line no-throw-literal
      },
    },
  });
  const running = worker.run();
  t.after(async () => {
    worker.stop();
    await running;
    server.stop();
  });
  await server.waitFor('hello');
  const traced = { trace_context: { traceparent: TRACEPARENT, tracestate: 'vendor=1' } };
  server.send({ assignment: assignment('good', 'ok', { ...traced, inputs: { x: json(1) }, attempt: 2 }) });
  server.send({ assignment: assignment('boom', 'bad', traced) });
  server.send({ assignment: assignment('plain', 'text', traced) });
  await server.waitFor('result');
  await server.waitFor('failure', (f) => f.token.task_run_id === 'run/boom');
  await server.waitFor('failure', (f) => f.token.task_run_id === 'run/plain');
  const spans = Object.fromEntries(exporter.getFinishedSpans().map((s) => [s.name, s]));
  assert.deepEqual(Object.keys(spans).sort(), ['execute boom', 'execute good', 'execute plain']);
  // A thrown string is recorded as the failure says it: no Error made up around it
  // (its type was "Error" and its stack this worker's own code, a user trial).
  const [plain] = spans['execute plain'].events;
  assert.equal(plain.attributes['exception.type'], 'string');
  assert.equal(plain.attributes['exception.message'], 'a plain string');
  assert.equal(plain.attributes['exception.stacktrace'], undefined);
  const good = spans['execute good'];
  assert.equal(good.kind, api.SpanKind.INTERNAL);
  assert.equal(good.spanContext().traceId, TRACE_ID);
  assert.equal(good.parentSpanContext.spanId, PARENT_ID);
  assert.equal(good.spanContext().traceState.get('vendor'), '1');
  assert.deepEqual(good.attributes, {
    'headwater.task.name': 'good',
    'headwater.task_type': 'ok',
    'headwater.task_run.id': 'run/good',
    'headwater.attempt': 2,
    'headwater.flow_run.id': 'run',
    'headwater.worker.name': 'traced',
  });
  assert.equal(good.status.code, api.SpanStatusCode.UNSET);
  assert.equal(good.resource.attributes['service.name'], 'svc-test');
  const bad = spans['execute boom'];
  assert.equal(bad.status.code, api.SpanStatusCode.ERROR);
  assert.equal(bad.status.message, 'TypeError: not a number');
  const [event] = bad.events;
  assert.equal(event.name, 'exception');
  assert.equal(event.attributes['exception.type'], 'TypeError');
  assert.equal(event.attributes['exception.message'], 'not a number');
});

test('skipped, timed-out and cancelled attempts end their span as the Python worker does', async (t) => {
  const exporter = new InMemorySpanExporter();
  const tracing = new Tracing({ exporters: [exporter], batch: false });
  const server = await new FakeServer().start();
  const untilAborted = (signal) => new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  const worker = new Worker({
    server: server.address,
    name: 'traced',
    log: () => {},
    tracing,
    handlers: {
      skipper: async () => {
        throw new Skip('nothing to do');
      },
      hold: async (_inputs, ctx) => untilAborted(ctx.signal),
    },
  });
  const running = worker.run();
  t.after(async () => {
    worker.stop();
    await running;
    server.stop();
  });
  await server.waitFor('hello');
  server.send({ assignment: assignment('s', 'skipper') });
  await server.waitFor('skipped');
  server.send({ assignment: assignment('slow', 'hold', { timeout: { seconds: 0, nanos: 50e6 } }) });
  await server.waitFor('failure');
  server.send({ assignment: assignment('held', 'hold') });
  await server.waitFor('started', (s) => s.token.task_run_id === 'run/held');
  server.send({ cancel: { token: { task_run_id: 'run/held', attempt: 1 }, reason: 'flow cancelled' } });
  await server.waitFor('cancelled');
  const spans = Object.fromEntries(exporter.getFinishedSpans().map((s) => [s.name, s]));
  assert.equal(spans['execute s'].attributes['headwater.message'], 'nothing to do');
  assert.deepEqual(spans['execute s'].events, []);
  for (const [name, reason] of [['execute slow', 'timed out'], ['execute held', 'flow cancelled']]) {
    const span = spans[name];
    assert.deepEqual(
      span.events.map((e) => [e.name, e.attributes]),
      [['headwater.interrupted', { 'headwater.reason': reason }]],
      name,
    );
  }
  // Not an error of the execution: the attempt span on the server has the outcome.
  for (const span of Object.values(spans)) assert.equal(span.status.code, api.SpanStatusCode.UNSET, span.name);
});

test('mapped children: the span name drops the [i] suffix and headwater.map_index says i', () => {
  const exporter = new InMemorySpanExporter();
  const tracing = new Tracing({ exporters: [exporter], batch: false });
  const traced = { trace_context: { traceparent: TRACEPARENT } };
  const child = assignment('scale[2]', 'math.scale', { ...traced, map_index: 2 });
  tracing.start(child, 'w').end();
  // Not mapped: a name that merely ends in brackets keeps them (map_index -1).
  tracing.start(assignment('odd[2]', 'x', traced), 'w').end();
  // Mapped child 0 of a task whose own name ends in brackets loses only its suffix.
  tracing.start(assignment('odd[1][0]', 'x', { ...traced, map_index: 0 }), 'w').end();
  // SimpleSpanProcessor: each span is exported when it ends.
  const spans = exporter.getFinishedSpans();
  assert.deepEqual(
    spans.map((s) => [s.name, s.attributes['headwater.task.name'], s.attributes['headwater.map_index']]),
    [
      ['execute scale', 'scale', 2],
      ['execute odd[2]', 'odd[2]', undefined],
      ['execute odd[1]', 'odd[1]', 0],
    ],
  );
  assert.ok(!('headwater.map_index' in spans[1].attributes));
  // The task run id keeps the index: it is the server's id of that child.
  assert.equal(spans[0].attributes['headwater.task_run.id'], 'run/scale[2]');
  assert.equal(spans[0].parentSpanContext.spanId, PARENT_ID);
});

test('tracing is off unless OTEL_TRACES_EXPORTER asks for it; bad values are clear', () => {
  assert.equal(fromEnvironment({}), null);
  assert.equal(fromEnvironment({ OTEL_TRACES_EXPORTER: 'none' }), null);
  assert.ok(fromEnvironment({ OTEL_TRACES_EXPORTER: 'console' }) instanceof Tracing);
  assert.ok(fromEnvironment({ OTEL_TRACES_EXPORTER: 'otlp' }) instanceof Tracing);
  // in any case, as the Python processes read it (a shared environment stopped only
  // the Node worker: a user trial)
  assert.ok(fromEnvironment({ OTEL_TRACES_EXPORTER: 'OTLP' }) instanceof Tracing);
  assert.equal(fromEnvironment({ OTEL_TRACES_EXPORTER: 'None' }), null);
  assert.throws(() => fromEnvironment({ OTEL_TRACES_EXPORTER: 'zipkin' }), TracingConfigError);
  assert.throws(
    () => fromEnvironment({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }),
    /http\/json' is not supported/,
  );
});

test('otlp over http/protobuf sends spans to OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces', async (t) => {
  const requests = [];
  const collector = http.createServer((req, res) => {
    const body = [];
    req.on('data', (c) => body.push(c));
    req.on('end', () => {
      requests.push({ url: req.url, type: req.headers['content-type'], body: Buffer.concat(body) });
      res.writeHead(200, { 'content-type': 'application/x-protobuf' });
      res.end();
    });
  });
  await new Promise((resolve) => collector.listen(0, '127.0.0.1', resolve));
  t.after(() => collector.close());
  const tracing = fromEnvironment({
    OTEL_TRACES_EXPORTER: 'otlp',
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.address().port}`,
    OTEL_SERVICE_NAME: 'my-node-workers',
  });
  const span = tracing.start(
    { task_name: 'resize', task_type: 'images.resize', token: { task_run_id: 'r/resize', attempt: 1 }, flow_run_id: 'r', trace_context: { traceparent: TRACEPARENT } },
    'w1',
  );
  span.end();
  await tracing.shutdown(); // flushes the batch
  assert.equal(requests.length, 1);
  assert.equal(requests[0].url, '/v1/traces');
  assert.equal(requests[0].type, 'application/x-protobuf');
  const body = requests[0].body;
  for (const text of ['execute resize', 'my-node-workers', 'headwater.task_run.id']) {
    assert.ok(body.includes(Buffer.from(text)), text);
  }
  assert.ok(body.includes(Buffer.from(TRACE_ID, 'hex')), 'trace id');
});

test('otlp over grpc (the default protocol) exports to OTEL_EXPORTER_OTLP_ENDPOINT', async (t) => {
  const grpc = require('@grpc/grpc-js');
  const received = [];
  const collector = new grpc.Server();
  const identity = (b) => b;
  collector.addService(
    {
      Export: {
        path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
        requestStream: false,
        responseStream: false,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    {
      Export: (call, callback) => {
        received.push(call.request);
        callback(null, Buffer.alloc(0)); // an empty ExportTraceServiceResponse
      },
    },
  );
  const port = await new Promise((resolve, reject) =>
    collector.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  t.after(() => collector.forceShutdown());
  const tracing = fromEnvironment({
    OTEL_TRACES_EXPORTER: 'otlp',
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
  });
  tracing
    .start({ task_name: 'shout', task_type: 'text.shout', token: { task_run_id: 'r/shout', attempt: 1 }, flow_run_id: 'r', trace_context: {} }, 'w2')
    .end();
  await tracing.shutdown();
  assert.equal(received.length, 1);
  assert.ok(received[0].includes(Buffer.from('execute shout')));
  assert.ok(received[0].includes(Buffer.from('headwater-node-worker')), 'default service name');
});
