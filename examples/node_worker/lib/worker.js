'use strict';
// A Headwater task worker: one WorkerGatewayService.Connect stream per session, the
// protocol of docs/worker-protocol.md. Handlers are async functions
// `(inputs, context) => result`; this module knows nothing about what they do.
//
// Lifecycle: dial -> Hello -> Welcome -> heartbeats + assignments -> outcomes. A broken
// stream is dialled again with jittered exponential backoff; Hello.running lists the
// attempts still running and the outcomes not yet acknowledged, and the Welcome's
// keep_running says which to keep (the rest are abandoned silently).

const crypto = require('node:crypto');
const os = require('node:os');
const { EventEmitter } = require('node:events');
const { AsyncLocalStorage } = require('node:async_hooks');
const util = require('node:util');
const grpc = require('@grpc/grpc-js');

const { loadContract } = require('./proto');
const { PayloadTransfer, PayloadTransferError } = require('./payloads');
const { channelCredentials, explainUnreachable, tlsOptions } = require('./tls');
const { UnreadableInput, decodeInputs, encodeResult } = require('./values');
const { CodecError } = require('./codec');
const { thrownText } = require('./thrown');

const PROTOCOL_VERSION = 1;
const SDK_VERSION = require('../package.json').version;
const BACKOFF_INITIAL_MS = 100;
const BACKOFF_MAX_MS = 5000;
// For this long after a welcomed connection broke, tries are at most BACKOFF_SOON_MS
// apart: a restarting server is usually back within seconds (docs/worker-protocol.md §11).
const SOON_WINDOW_MS = 30000;
const BACKOFF_SOON_MS = 500;
const DEFAULT_HEARTBEAT_MS = 10000;
// A stopping worker waits this long for the server to close its stream after giving
// its attempts back; then it cancels the stream (the server counts them lost).
const GIVE_BACK_WAIT_MS = 2000;
/** Tasks' log lines kept while the worker has no server (a restart), for the next one. */
const OFFLINE_LOGS = 10000;
/** Longest message, stack trace or log line sent (a huge trace must not break the stream). */
const TEXT_LIMIT = 64 << 10;
const MAX_CAUSES = 5;
/** Refusals that retrying cannot fix. */
const FATAL = new Set([grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]);
const FATAL_BEFORE_WELCOME = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.UNIMPLEMENTED,
]);
const CHANNEL_OPTIONS = {
  // gRPC's own reconnect backoff (1 s growing to 120 s) would delay ours.
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 5000,
  // The server does not limit what it sends (an assignment may carry many inline inputs).
  'grpc.max_receive_message_length': -1,
};
/** What Hello.max_message_bytes says: gRPC's largest message (the channel sets no limit). */
const ACCEPTED_MESSAGE_BYTES = 2 ** 31 - 1;

/** Thrown by a handler to skip its task run (the run becomes SKIPPED). */
class Skip extends Error {
  constructor(reason = '') {
    super(reason);
    this.name = 'Skip';
  }
}

/** The server refused this worker for good (bad token, incompatible protocol). */
class WorkerError extends Error {
  constructor(message) {
    super(message);
    this.name = 'WorkerError';
  }
}

const keyOf = (token) => `${token.task_run_id}#${Number(token.attempt)}`;
const seconds = (d) => (d ? Number(d.seconds ?? 0) + Number(d.nanos ?? 0) / 1e9 : 0);
// At most TEXT_LIMIT characters, the note included (the server's own cut then leaves it).
const cut = (text) => {
  const s = String(text ?? '');
  if (s.length <= TEXT_LIMIT) return s;
  const marker = `\n... (${s.length} characters cut) ...\n`;
  const half = Math.max(0, Math.floor((TEXT_LIMIT - marker.length) / 2));
  return `${s.slice(0, half)}\n... (${s.length - 2 * half} characters cut) ...\n${s.slice(s.length - half)}`;
};
const timestamp = (ms = Date.now()) => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });

/** The contract's Failure for an error thrown by a handler (causes nested). A value
 * whose description throws (a getter, a revoked Proxy, a custom inspect) is said so:
 * the attempt stayed RUNNING for good when describing it threw (a re-trial). */
function failureOf(err, retryable, depth = 0) {
  let failure;
  try {
    const isError = err instanceof Error;
    failure = {
      type: String((isError && (err.name || err.constructor?.name)) || typeof err),
      message: cut(isError ? err.message : thrownText(err)),
      stack_trace: cut(isError ? err.stack : ''),
      retryable,
      language: 'javascript',
    };
    if (isError && err.cause !== undefined && depth < MAX_CAUSES) failure.cause = failureOf(err.cause, retryable, depth + 1);
  } catch (inner) {
    failure = {
      type: typeof err,
      message: `a thrown value that cannot be described (describing it threw ${describeSafely(inner)})`,
      stack_trace: '',
      retryable,
      language: 'javascript',
    };
  }
  return failure;
}

/** What a value is, however it behaves (describing a hostile value must not throw). */
function describeSafely(value, withStack = false) {
  try {
    if (value instanceof Error) return withStack && value.stack ? String(value.stack) : `${value.name}: ${value.message}`;
    return thrownText(value);
  } catch {
    return `a ${typeof value} that cannot be described`;
  }
}

/** The context of the attempt whose handler is running (its async calls included). */
const currentTask = new AsyncLocalStorage();
/** Whether captureConsole has wrapped console's methods (once per process). */
let consoleCaptured = false;
const CONSOLE_LEVELS = { log: 'INFO', info: 'INFO', debug: 'DEBUG', warn: 'WARNING', error: 'ERROR' };

/**
 * Keep what handlers write with console.log/info/debug/warn/error with their task run
 * (as `context.log`, stored by the server: `headwater runs logs`), as the Python worker
 * keeps what a task prints; the lines still go to the process's stdout/stderr. It went
 * there only, and a task's console.log never reached its run (a trial). Console calls
 * outside a handler are untouched. Process-wide: bin/worker.js calls it; a program
 * embedding a Worker decides for itself.
 */
function captureConsole() {
  if (consoleCaptured) return;
  consoleCaptured = true;
  for (const [name, level] of Object.entries(CONSOLE_LEVELS)) {
    const original = console[name];
    console[name] = (...args) => {
      original.apply(console, args);
      const context = currentTask.getStore();
      if (context) context.log(util.format(...args), level);
    };
  }
}

function workerFailure(type, message, retryable) {
  return { type, message: cut(message), stack_trace: '', retryable, language: 'javascript' };
}

class Worker extends EventEmitter {
  /**
   * @param {object} options
   * @param {string} options.server HOST:PORT of the control plane
   * @param {Record<string, Function>} options.handlers task type -> async (inputs, ctx) => result
   * @param {string} [options.token] bearer token
   * @param {boolean} [options.tls] speak TLS, verifying the server with the system roots
   * @param {string} [options.tlsCa] CA certificate file (PEM) that signed the server's
   * @param {string} [options.tlsCert] client certificate file (PEM) for mutual TLS
   * @param {string} [options.tlsKey] its private key file (PEM)
   * @param {Record<string, string>} [options.labels] affinity labels
   * @param {number} [options.slots] most attempts running at once (default 4)
   * @param {string} [options.name] display name (default HOSTNAME-PID)
   * @param {(message: string) => void} [options.log] diagnostics (default: stderr)
   * @param {object} [options.tracing] hooks from lib/tracing.js (optional)
   */
  constructor({ server, handlers, token, labels = {}, slots = 4, name, log, tracing, protoDir, tls, tlsCa, tlsCert, tlsKey } = {}) {
    super();
    if (!server) throw new Error('the server address must be HOST:PORT');
    if (!Number.isInteger(slots) || slots < 1) throw new Error(`slots must be an integer >= 1, got ${slots}`);
    this.handlers = new Map(Object.entries(handlers ?? {}));
    if (this.handlers.size === 0) throw new Error('a worker needs at least one handler');
    for (const [type, fn] of this.handlers) {
      if (typeof fn !== 'function') throw new Error(`the handler of ${type} is not a function`);
    }
    this.server = server;
    this.labels = { ...labels };
    this.slots = slots;
    this.name = name || `${os.hostname()}-${process.pid}`;
    this.workerId = crypto.randomBytes(16).toString('hex');
    this.token = token || '';
    // Read now: a missing or wrong file is an error at start, not at each reconnect.
    // Unset options fall back to HEADWATER_TLS, _CA, _CERT and _KEY, as in Python.
    this.tlsSettings = tlsOptions({ tls, tlsCa, tlsCert, tlsKey });
    this.credentials = channelCredentials(this.tlsSettings);
    this.log = log ?? ((message) => process.stderr.write(`${message}\n`));
    this.offlineLogs = [];
    this.offlineDropped = 0;
    this.tracing = tracing ?? null;
    this.contract = loadContract(protoDir);
    this.running = new Map(); // key -> attempt
    this.unacked = new Map(); // key -> ConnectRequest (an outcome until its Ack)
    this.session = null;
    this.stopped = false;
    this.inlineLimit = 0;
    this.maxMessageBytes = 0; // the last Welcome's (0: gRPC's 4 MiB)
    this.transfer = null;
    this.connectedOnce = false;
  }

  metadata() {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  // ------------------------------------------------------------------ lifecycle

  /** Serve until stop(); rejects with WorkerError when the server refuses for good. */
  async run() {
    this.transfer = new PayloadTransfer(this.contract, this.server, () => this.metadata(), this.credentials);
    let failures = 0;
    let lostAt = -SOON_WINDOW_MS; // when a welcomed connection last broke
    try {
      while (!this.stopped) {
        const { welcomed, why, fatal } = await this.#sessionOnce();
        if (this.stopped) break;
        if (fatal) throw new WorkerError(`the server at ${this.server} refused this worker: ${why}`);
        if (welcomed) {
          failures = 0;
          lostAt = Date.now();
          this.log(`lost the connection to ${this.server} (${why}); reconnecting`);
        } else if (failures % 10 === 0) {
          // (A TLS mismatch named with its fix, as the Python worker does.)
          const hint = await explainUnreachable(this.server, this.tlsSettings);
          if (this.stopped) break;
          this.log(`cannot connect to ${this.server} (${hint ?? why}); retrying`);
        }
        const cap = Date.now() - lostAt < SOON_WINDOW_MS ? BACKOFF_SOON_MS : BACKOFF_MAX_MS;
        const delay = Math.min(cap, BACKOFF_INITIAL_MS * 2 ** failures) * (0.5 + Math.random() / 2);
        failures += 1;
        await new Promise((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, delay);
        });
      }
    } finally {
      for (const attempt of this.running.values()) this.#drop(attempt, 'the worker stopped');
      this.unacked.clear();
      this.transfer.close();
    }
  }

  /**
   * Stop taking work and make run() resolve. A welcomed worker says it is stopping
   * (`stopping`: the server assigns it nothing more), aborts the attempts it runs and
   * gives them back (a TaskCancelled the server did not ask for: it dispatches them
   * again at once and counts no loss), then ends its stream; one the server has not
   * closed within GIVE_BACK_WAIT_MS is cancelled (and those attempts count as lost).
   */
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    const session = this.session;
    if (session && session.welcome && !session.ended) {
      session.call.write({ stopping: {} });
      for (const attempt of [...this.running.values()]) {
        this.#drop(attempt, 'the worker is stopping');
        session.call.write({ cancelled: { token: attempt.token } });
      }
      session.call.end();
      setTimeout(() => session.call.cancel(), GIVE_BACK_WAIT_MS).unref();
    } else if (session) {
      session.call.cancel();
    }
    if (this.wake) this.wake();
  }

  // ------------------------------------------------------------------ one session

  #sessionOnce() {
    return new Promise((resolve) => {
      const stub = new this.contract.WorkerGatewayService(this.server, this.credentials, CHANNEL_OPTIONS);
      const hello = this.#hello();
      const call = stub.Connect(this.metadata());
      const session = { call, hello, welcome: null, lastReceived: Date.now(), intervalMs: DEFAULT_HEARTBEAT_MS, timer: null };
      this.session = session;
      let status = { code: grpc.status.OK, details: 'the server closed the stream' };
      const finish = () => {
        if (session.ended) return;
        session.ended = true;
        clearInterval(session.timer);
        if (this.session === session) this.session = null;
        stub.close();
        const welcomed = session.welcome !== null;
        const fatal = FATAL.has(status.code) || (!welcomed && FATAL_BEFORE_WELCOME.has(status.code));
        resolve({ welcomed, fatal: fatal && !this.stopped, why: `${codeName(status.code)}: ${status.details}` });
      };
      call.on('data', (response) => {
        session.lastReceived = Date.now();
        try {
          this.#handle(session, response);
        } catch (err) {
          this.log(`could not handle a ${response.message}: ${err.stack}`);
        }
      });
      call.on('error', (err) => {
        status = { code: err.code, details: err.details || err.message };
      });
      call.on('status', (s) => {
        if (s.code !== grpc.status.OK) status = { code: s.code, details: s.details };
        finish();
      });
      call.on('end', () => setImmediate(finish));
      call.write({ hello });
    });
  }

  #hello() {
    return {
      worker_id: this.workerId,
      name: this.name,
      protocol_version: PROTOCOL_VERSION,
      capabilities: [...this.handlers.keys()].sort(),
      labels: this.labels,
      slots: this.slots,
      runtime: {
        language: 'javascript',
        language_version: process.version,
        sdk_version: SDK_VERSION,
        hostname: os.hostname(),
        pid: process.pid,
      },
      running: this.#held().map((key) => this.#tokenOf(key)),
      max_message_bytes: ACCEPTED_MESSAGE_BYTES,
    };
  }

  #held() {
    return [...new Set([...this.running.keys(), ...this.unacked.keys()])].sort();
  }

  #tokenOf(key) {
    const attempt = this.running.get(key);
    if (attempt) return attempt.token;
    const message = this.unacked.get(key);
    return Object.values(message).find((m) => m && m.token).token;
  }

  /** Queue a message on the current session once welcomed. Otherwise a task's log line
   * is kept (up to OFFLINE_LOGS, the oldest go first) for the next Welcome, and anything
   * else dropped (outcomes are kept in `unacked` and sent again after the next Welcome).
   * (What a task logged while its server restarted was lost: a user trial.) */
  #send(message) {
    const session = this.session;
    if (session && session.welcome && !session.ended && !this.stopped) {
      session.call.write(message);
    } else if (message.log && !this.stopped) {
      if (this.offlineLogs.length >= OFFLINE_LOGS) {
        this.offlineLogs.shift();
        this.offlineDropped += 1;
      }
      this.offlineLogs.push(message);
    }
  }

  #heartbeat(session) {
    const silentMs = Date.now() - session.lastReceived;
    const limitMs = seconds(session.welcome.heartbeat_timeout) * 1000;
    if (limitMs > 0 && silentMs > limitMs + session.intervalMs) {
      // Not even a HeartbeatAck for too long: presume the stream dead and dial again.
      this.log(`no message from ${this.server} for ${(silentMs / 1000).toFixed(1)}s`);
      session.call.cancel();
      return;
    }
    const running = [...this.running.values()].map((a) => a.token);
    this.#send({
      heartbeat: { used_slots: running.length, free_slots: Math.max(0, this.slots - running.length), running },
    });
  }

  // ------------------------------------------------------------------ server messages

  #handle(session, response) {
    const kind = response.message;
    if (kind === 'welcome') return this.#welcome(session, response.welcome);
    if (!session.welcome) return this.log(`ignoring a ${kind} sent before the Welcome`);
    switch (kind) {
      case 'assignment':
        return this.#assign(response.assignment);
      case 'cancel':
        return this.#cancel(keyOf(response.cancel.token), response.cancel.reason || 'cancelled');
      case 'heartbeat_ack':
        for (const token of response.heartbeat_ack.cancel) this.#cancel(keyOf(token), 'no longer owned by this worker');
        return undefined;
      case 'ack': {
        const { ack } = response;
        this.unacked.delete(keyOf(ack.token));
        if (!ack.accepted) {
          this.log(`the server refused the outcome of ${ack.token.task_run_id} attempt ${ack.token.attempt}: ${ack.reason || 'no reason given'}`);
        }
        return undefined;
      }
      default:
        return undefined;
    }
  }

  #welcome(session, welcome) {
    const interval = seconds(welcome.heartbeat_interval);
    session.intervalMs = interval > 0 ? interval * 1000 : DEFAULT_HEARTBEAT_MS;
    this.inlineLimit = Number(welcome.inline_payload_limit);
    this.maxMessageBytes = Number(welcome.max_message_bytes);
    const keep = new Set(welcome.keep_running.map(keyOf));
    for (const token of session.hello.running) {
      const key = keyOf(token);
      if (keep.has(key)) continue;
      const attempt = this.running.get(key);
      if (attempt) this.#drop(attempt, 'abandoned at reconnect');
      this.unacked.delete(key);
    }
    session.welcome = welcome;
    // What tasks logged meanwhile, before the outcomes sent again.
    const kept = this.offlineLogs;
    this.offlineLogs = [];
    for (const message of kept) this.#send(message);
    if (this.offlineDropped) {
      this.log(`${this.offlineDropped} log lines of tasks written while the server was away were dropped (more than ${OFFLINE_LOGS})`);
      this.offlineDropped = 0;
    }
    for (const message of this.unacked.values()) this.#send(message);
    this.#heartbeat(session);
    session.timer = setInterval(() => this.#heartbeat(session), session.intervalMs);
    const first = !this.connectedOnce;
    this.connectedOnce = true;
    this.emit(first ? 'connected' : 'reconnected', welcome);
  }

  // ------------------------------------------------------------------ attempts

  #assign(assignment) {
    const { token } = assignment;
    const key = keyOf(token);
    if (this.running.has(key) || this.unacked.has(key)) {
      this.log(`ignoring a second assignment of ${token.task_run_id} attempt ${token.attempt}`);
      return;
    }
    const handler = this.handlers.get(assignment.task_type);
    if (!handler) {
      const why = `this worker cannot run task type '${assignment.task_type}'`;
      this.#send({ failure: { token, failure: workerFailure('headwater.UnknownTaskType', why, false) } });
      return;
    }
    if (this.running.size >= this.slots) {
      const why = `all ${this.slots} slots of worker '${this.name}' are busy`;
      this.#send({ failure: { token, failure: workerFailure('headwater.WorkerFull', why, true) } });
      return;
    }
    const attempt = { key, token, assignment, controller: new AbortController(), timer: null, span: null };
    attempt.span = this.tracing ? this.tracing.start(assignment, this.name) : null;
    this.running.set(key, attempt);
    this.#said();
    const limit = seconds(assignment.timeout);
    // setTimeout cannot wait longer than 2^31-1 ms (~24.8 days); longer limits are left to the server.
    if (limit > 0 && limit * 1000 <= 2 ** 31 - 1) {
      attempt.timer = setTimeout(() => this.#expire(attempt, limit), limit * 1000);
    }
    this.#execute(attempt, handler).catch((err) => {
      // A bug of the worker's own (or a thrown value nothing can describe): the attempt
      // still fails, instead of staying RUNNING with its slot taken for good (a trial).
      const why = `the worker could not report the outcome of this attempt: ${describeSafely(err)}`;
      this.log(`attempt ${key} crashed the worker loop: ${describeSafely(err, true)}`);
      this.#finish(attempt, { failure: { token, failure: workerFailure('headwater.WorkerError', why, false) } });
    });
  }

  #cancel(key, reason) {
    const attempt = this.running.get(key);
    if (!attempt) return;
    this.#drop(attempt, reason);
    this.#send({ cancelled: { token: attempt.token } });
  }

  #expire(attempt, limit) {
    if (this.running.get(attempt.key) !== attempt) return;
    const why = `task '${attempt.assignment.task_name || attempt.assignment.task_type}' exceeded its timeout of ${limit}s`;
    this.#drop(attempt, 'timed out');
    this.#report(attempt.key, {
      failure: { token: attempt.token, failure: workerFailure('headwater.TaskTimeout', why, true), timed_out: true },
    });
  }

  /** The attempts running now, as 'attempts' (e.g. for bin/worker.js's watchdog). */
  #said() {
    const list = [...this.running.values()].map(
      (a) => `${a.assignment.task_name || a.assignment.task_type} (${a.token.task_run_id} attempt ${a.token.attempt})`,
    );
    this.emit('attempts', list);
  }

  /** Forget an attempt and abort its handler; it will report nothing more. */
  #drop(attempt, reason) {
    this.running.delete(attempt.key);
    this.#said();
    clearTimeout(attempt.timer);
    attempt.span?.interrupt(reason);
    attempt.controller.abort(new Error(reason));
  }

  /** Send an outcome and keep it until acknowledged. */
  #report(key, message) {
    this.unacked.set(key, message);
    this.#send(message);
  }

  /** Report the outcome only if nobody else (cancel, timeout, abandon) did already. */
  #finish(attempt, message) {
    if (this.running.get(attempt.key) !== attempt) return;
    this.running.delete(attempt.key); // the slot is free before the outcome leaves
    this.#said();
    clearTimeout(attempt.timer);
    // When it ended: an outcome held while the server was away arrives late, and its
    // duration would take in the outage (worker.proto, ended_at).
    Object.values(message)[0].ended_at = timestamp();
    this.#report(attempt.key, message);
  }

  async #execute(attempt, handler) {
    const { assignment, token } = attempt;
    this.#send({ started: { token, started_at: timestamp() } });
    const { span } = attempt;
    let inputs;
    try {
      inputs = await decodeInputs(assignment, this.transfer);
    } catch (err) {
      const unreadable = err instanceof UnreadableInput || err instanceof CodecError;
      const why = `cannot decode the inputs of ${assignment.task_type}: ${err.message}`;
      span?.fail(err);
      this.#finish(attempt, { failure: { token, failure: workerFailure('headwater.InputError', why, !unreadable) } });
      return;
    }
    const context = this.#context(attempt);
    let result;
    try {
      result = await currentTask.run(context, () => handler(inputs, context));
    } catch (err) {
      let skipped = false;
      try {
        skipped = err instanceof Skip; // (a revoked Proxy throws on instanceof)
      } catch {
        skipped = false;
      }
      if (skipped) {
        span?.skip(err.message);
        this.#finish(attempt, { skipped: { token, reason: err.message } });
        return;
      }
      let retryable = true;
      try {
        retryable = !(err && err.retryable === false);
      } catch {
        retryable = true; // (a property that throws: as an ordinary failure)
      }
      const failure = failureOf(err, retryable);
      span?.fail(err, failure);
      this.#finish(attempt, { failure: { token, failure } });
      return;
    }
    if (this.running.get(attempt.key) !== attempt) return span?.end(); // cancelled meanwhile
    try {
      const value = await encodeResult(result === undefined ? null : result, {
        split: assignment.split_result,
        inlineLimit: this.inlineLimit,
        transfer: this.transfer,
        maxMessageBytes: this.maxMessageBytes,
      });
      span?.end();
      this.#finish(attempt, { result: { token, result: value } });
    } catch (err) {
      span?.fail(err);
      const lost = err instanceof PayloadTransferError;
      const type = lost ? 'headwater.PayloadTransferError' : 'headwater.EncodingError';
      const why = lost ? err.message : `the result of task '${assignment.task_name}' cannot be json: ${err.message}`;
      this.#finish(attempt, { failure: { token, failure: workerFailure(type, why, lost) } });
    }
  }

  #context(attempt) {
    const { assignment, token } = attempt;
    return {
      signal: attempt.controller.signal,
      attempt: Number(token.attempt),
      taskRunId: token.task_run_id,
      flowRunId: assignment.flow_run_id,
      taskId: assignment.task_id,
      taskName: assignment.task_name,
      taskType: assignment.task_type,
      mapIndex: Number(assignment.map_index),
      workerName: this.name,
      /** Send a log line to the server (stored with the task run). */
      log: (message, level = 'INFO') => {
        if (this.running.get(attempt.key) !== attempt) return;
        this.#send({
          log: { token, timestamp: timestamp(), level: String(level).toUpperCase(), logger: 'node', message: cut(message) },
        });
      },
    };
  }
}

function codeName(code) {
  const entry = Object.entries(grpc.status).find(([, value]) => value === code);
  return entry ? entry[0] : String(code);
}

module.exports = { PROTOCOL_VERSION, Skip, Worker, WorkerError, captureConsole };
