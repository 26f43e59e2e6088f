#!/usr/bin/env node
'use strict';
// headwater-node-worker: connect to a Headwater server and run the handlers of a module.

const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { Worker, WorkerError, captureConsole } = require('../lib');
const tracing = require('../lib/tracing');
const { tlsOptions } = require('../lib/tls');
const { startWatchdog } = require('../lib/watchdog');

/** How long the event loop may be blocked before the server has said how long it waits. */
const BLOCKED_BEFORE_WELCOME_MS = 30000;

const HELP = `usage: worker.js --server HOST:PORT [--token T] [--label K=V ...] [--slots N]
                 [--name NAME] [--handlers FILE] [--tls] [--tls-ca FILE]
                 [--tls-cert FILE --tls-key FILE]

Run a Headwater task worker in Node.js. It dials the server's WorkerGatewayService,
offers the task types its handlers module exports, and runs up to --slots attempts
at once; it reconnects on its own after the server restarts.

options:
  --server HOST:PORT   address of \`headwater server\` (required)
  --token T            bearer token (default: the HEADWATER_TOKEN environment variable)
  --label K=V          affinity label, e.g. --label runtime=node (repeatable)
  --slots N            most attempts running at once (default: 4)
  --name NAME          display name (default: HOSTNAME-PID)
  --handlers FILE      module exporting {taskType: async (inputs, context) => result}
                       (default: handlers.js next to this package)
  --tls                speak TLS, verifying the server with the system's roots
                       (default: HEADWATER_TLS=1)
  --tls-ca FILE        speak TLS, verifying the server with this CA certificate (PEM;
                       default: HEADWATER_TLS_CA)
  --tls-cert FILE      client certificate (PEM) for a server that requires one (mutual
                       TLS; default: HEADWATER_TLS_CERT)
  --tls-key FILE       its private key (PEM; default: HEADWATER_TLS_KEY)
  -h, --help           show this help

SIGTERM or SIGINT stops the worker: it tells the server, gives back the attempts it
runs (dispatched again elsewhere, no loss counted) and exits with status 0; a second
signal exits at once (status 128 + the signal's number). A server that refuses the
worker for good (a bad token, another protocol version) makes it exit with status 2;
a bad command line too.

A handler must not block the event loop (synchronous CPU work: use worker_threads):
while it does, its timeout, the heartbeats and SIGTERM cannot run, and handlers running
at once block it one after the other. Once the loop has been blocked for the server's
heartbeat timeout less one heartbeat interval (20 s - 5 s by default), the server may
have counted this worker lost and dispatched its attempts again: the worker says so on
stderr and kills itself (SIGKILL), for a supervisor to start it again.

Tracing: set OTEL_TRACES_EXPORTER=otlp or console (see README).`;

// grpc-js gives node:tls the address it dials as the server name, which Node warns of
// on every TLS connection to an IP address (DEP0123): a line on stderr that tells the
// user nothing they can act on (a trial). Other warnings are shown as usual.
const emitWarning = process.emitWarning;
process.emitWarning = (warning, ...rest) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? rest[0].code : rest[1];
  if (code === 'DEP0123') return;
  emitWarning.call(process, warning, ...rest);
};

function fail(message) {
  process.stderr.write(`headwater-node-worker: error: ${message}\n`);
  process.exit(2);
}

function main() {
  let args;
  try {
    ({ values: args } = parseArgs({
      options: {
        server: { type: 'string' },
        token: { type: 'string' },
        label: { type: 'string', multiple: true, default: [] },
        slots: { type: 'string', default: '4' },
        name: { type: 'string' },
        handlers: { type: 'string' },
        tls: { type: 'boolean' },
        'tls-ca': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    fail(err.message);
  }
  if (args.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  if (!args.server) fail('--server HOST:PORT is required');
  if (args.server.includes(',')) {
    // (it retried for good, "Name resolution failed for target dns:a,b": a user trial)
    fail(`--server takes one HOST:PORT (this worker does not fail over between servers), got ${args.server}`);
  }
  const slots = Number(args.slots);
  if (!Number.isInteger(slots) || slots < 1) fail(`--slots must be an integer >= 1, got ${args.slots}`);
  const labels = {};
  for (const item of args.label) {
    const eq = item.indexOf('=');
    if (eq <= 0) fail(`--label expects KEY=VALUE, got '${item}'`);
    labels[item.slice(0, eq)] = item.slice(eq + 1);
  }
  const file = path.resolve(args.handlers ?? path.join(__dirname, '..', 'handlers.js'));
  let handlers;
  try {
    handlers = require(file);
  } catch (err) {
    fail(`cannot load handlers from ${file}: ${err.message.split('\n')[0]}`);
  }
  captureConsole(); // a handler's console.log is kept with its task run, as print() in Python
  let worker;
  try {
    const tracer = tracing.fromEnvironment();
    const secure = tlsOptions({ tls: args.tls, tlsCa: args['tls-ca'], tlsCert: args['tls-cert'], tlsKey: args['tls-key'] });
    worker = new Worker({
      ...secure,
      server: args.server,
      token: args.token ?? process.env.HEADWATER_TOKEN,
      labels,
      slots,
      name: args.name,
      handlers,
      tracing: tracer,
    });
  } catch (err) {
    fail(err.message);
  }
  // A handler that blocks the event loop for longer than the server waits for a
  // heartbeat ends the process (lib/watchdog.js): the server has counted it lost then.
  const watchdog = startWatchdog({ limitMs: BLOCKED_BEFORE_WELCOME_MS, name: `headwater-node-worker ${worker.name}` });
  const seconds = (d) => (d ? Number(d.seconds ?? 0) + Number(d.nanos ?? 0) / 1e9 : 0);
  // The server counts the worker lost once it has heard nothing for its heartbeat
  // timeout since the last heartbeat, which went out up to one interval before the loop
  // blocked: blocked for the timeout less an interval, it may have. (With the timeout
  // plus an interval, a block in between failed the run's task as lost 4 times while
  // the worker lived on, a re-trial.)
  const waits = (welcome) => {
    const ms = (seconds(welcome.heartbeat_timeout) - seconds(welcome.heartbeat_interval)) * 1000;
    watchdog.setLimit(Math.max(1000, ms || BLOCKED_BEFORE_WELCOME_MS));
  };
  worker.on('attempts', (list) => watchdog.setRunning(list));
  worker.on('connected', (welcome) => {
    waits(welcome);
    const types = [...worker.handlers.keys()].sort().join(', ');
    process.stderr.write(`headwater-node-worker ${worker.name} connected to ${args.server} (${types})\n`);
  });
  worker.on('reconnected', (welcome) => {
    waits(welcome);
    process.stderr.write(`reconnected to ${args.server}\n`);
  });
  // The first SIGTERM or SIGINT stops the worker (its attempts are given back); a second
  // one ends the process at once, with status 128 + the signal's number.
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      if (stopping) process.exit(128 + os.constants.signals[signal]);
      stopping = true;
      const held = worker.running.size;
      process.stderr.write(
        `headwater-node-worker ${worker.name}: ${signal}; stopping (${held} running attempt(s) given back to the server; a second signal exits at once)\n`,
      );
      worker.stop();
    });
  }
  // Either way, the spans still batched are exported before the process exits (SIGTERM
  // included): process.exit() would drop them.
  const exit = async (code) => {
    watchdog.stop();
    try {
      await worker.tracing?.shutdown();
    } catch (err) {
      process.stderr.write(`headwater-node-worker: could not export the last spans: ${err.message}\n`);
    }
    process.exit(code);
  };
  worker.run().then(
    () => exit(0),
    (err) => {
      // Refused for good (a bad token, another protocol): 2, as the Python worker;
      // anything else 1.
      const refused = err instanceof WorkerError;
      process.stderr.write(`headwater-node-worker: error: ${refused ? err.message : err.stack}\n`);
      return exit(refused ? 2 : 1);
    },
  );
}

main();
