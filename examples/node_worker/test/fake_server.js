'use strict';
// An in-process control plane for protocol tests: a real gRPC server on 127.0.0.1:0
// whose WorkerGatewayService records what the worker sends and lets the test reply,
// plus an in-memory PayloadService.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const { loadContract } = require('../lib/proto');

class FakeServer {
  constructor({ token = '', welcome = {}, refuse = null } = {}) {
    this.contract = loadContract();
    this.token = token;
    this.welcomeFields = welcome;
    this.refuse = refuse;
    this.received = []; // ConnectRequest messages, in order
    this.metadata = [];
    this.calls = [];
    this.payloads = new Map();
    this.waiters = [];
    this.acks = true; // answer outcomes with an Ack
    this.keepRunning = false;
    this.heartbeatAcks = true; // a hung server answers nothing
    this.uploadRefusals = 0; // uploads refused first, as by a server standing by
    this.holdWelcome = false; // keep the Welcome until releaseWelcome(), as a slow start
    this.heldWelcomes = [];
    this.server = new grpc.Server();
    this.server.addService(this.contract.WorkerGatewayService.service, { Connect: (call) => this.#connect(call) });
    this.server.addService(this.contract.PayloadService.service, {
      UploadPayload: (call, callback) => this.#upload(call, callback),
      DownloadPayload: (call) => this.#download(call),
    });
  }

  async start() {
    const port = await new Promise((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.address = `127.0.0.1:${port}`;
    return this;
  }

  stop() {
    for (const call of this.calls) call.end();
    this.server.forceShutdown();
  }

  #connect(call) {
    this.calls.push(call);
    this.metadata.push(call.metadata.get('authorization'));
    if (this.refuse) {
      call.emit('error', { code: this.refuse, details: 'refused by the test' });
      return;
    }
    call.on('data', (message) => {
      this.received.push(message);
      if (message.message === 'hello') {
        const welcome = {
          session_id: 's1',
          protocol_version: 1,
          heartbeat_interval: { seconds: 0, nanos: 50e6 },
          heartbeat_timeout: { seconds: 5, nanos: 0 },
          inline_payload_limit: 1 << 20,
          // After a "restart" the server keeps what the worker says it holds (or nothing).
          keep_running: this.keepRunning ? message.hello.running : [],
          ...this.welcomeFields,
        };
        if (this.holdWelcome) this.heldWelcomes.push(() => call.write({ welcome }));
        else call.write({ welcome });
      } else if (message.message === 'heartbeat' && this.heartbeatAcks) {
        call.write({ heartbeat_ack: { cancel: this.ackCancel ?? [] } });
      } else if (['result', 'failure', 'skipped'].includes(message.message) && this.acks) {
        call.write({ ack: { token: message[message.message].token, accepted: true } });
      }
      this.#notify();
    });
    call.on('error', () => {});
    call.on('end', () => call.end());
  }

  /** End the current stream (status OK), as a server that restarts would drop it. */
  drop() {
    this.calls[this.calls.length - 1].end();
  }

  releaseWelcome() {
    this.holdWelcome = false;
    for (const send of this.heldWelcomes.splice(0)) send();
  }

  send(response) {
    this.calls[this.calls.length - 1].write(response);
  }

  #notify() {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Resolves with the first message of `kind` matching `predicate` received at index
   * `since` or later (5 s bound). */
  waitFor(kind, predicate = () => true, since = 0) {
    const find = () => this.received.slice(since).find((m) => m.message === kind && predicate(m[kind]));
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = find();
        if (found) {
          this.waiters = this.waiters.filter((w) => w !== check);
          clearTimeout(timer);
          resolve(found[kind]);
        }
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check);
        reject(new Error(`no ${kind} received; got ${this.received.map((m) => m.message).join(', ')}`));
      }, 5000);
      this.waiters.push(check);
      check();
    });
  }

  count(kind) {
    return this.received.filter((m) => m.message === kind).length;
  }

  #upload(call, callback) {
    if (this.uploadRefusals > 0) {
      this.uploadRefusals -= 1;
      call.on('data', () => {});
      call.on('end', () =>
        callback({ code: grpc.status.UNAVAILABLE, details: 'this Headwater server is a standby (the test)' }),
      );
      return;
    }
    let header = null;
    const chunks = [];
    call.on('data', (req) => {
      if (req.part === 'header') header = req.header;
      else chunks.push(req.chunk);
    });
    call.on('end', () => {
      const data = Buffer.concat(chunks);
      const sha256 = crypto.createHash('sha256').update(data).digest('hex');
      if (!header || data.length !== Number(header.size_bytes) || sha256 !== header.sha256) {
        callback({ code: grpc.status.INVALID_ARGUMENT, details: 'bad upload' });
        return;
      }
      const id = crypto.randomBytes(16).toString('hex');
      this.payloads.set(id, { data, metadata: header.metadata });
      callback(null, { ref: { payload_id: id, size_bytes: data.length, metadata: header.metadata, sha256 } });
    });
  }

  #download(call) {
    const stored = this.payloads.get(call.request.payload_id);
    if (!stored) {
      call.emit('error', { code: grpc.status.NOT_FOUND, details: 'unknown payload' });
      return;
    }
    const size = stored.data.length;
    for (let offset = Number(call.request.offset); offset < size; offset += 1 << 20) {
      call.write({ chunk: stored.data.subarray(offset, offset + (1 << 20)), offset, size_bytes: size });
    }
    call.end();
  }

  /** Store bytes as the real server would; returns the PayloadRef. */
  put(data, metadata) {
    const id = crypto.randomBytes(16).toString('hex');
    this.payloads.set(id, { data, metadata });
    const sha256 = crypto.createHash('sha256').update(data).digest('hex');
    return { payload_id: id, size_bytes: data.length, metadata, sha256 };
  }
}

const json = (value) => ({ kind: 'value', value: { inline: { data: Buffer.from(JSON.stringify(value)), metadata: { encoding: 'json' } } } });

function assignment(name, taskType, fields = {}) {
  return {
    token: { task_run_id: `run/${name}`, attempt: fields.attempt ?? 1 },
    flow_run_id: 'run',
    task_id: name,
    task_type: taskType,
    task_name: name,
    map_index: -1,
    inputs: {},
    argument_order: [],
    ...fields,
  };
}

module.exports = { FakeServer, assignment, json };
