'use strict';
// Chunked transfer of large values through PayloadService (docs/payloads.md,
// "Chunked transfer"): uploads send a header then chunks of at most 1 MiB; downloads
// resume from the last offset on UNAVAILABLE; both check size and SHA-256.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');

/** Largest chunk PayloadService accepts in one upload message. */
const CHUNK = 1 << 20;
/**
 * How long a transfer waits for a server that is away (UNAVAILABLE: it restarts,
 * or stands by until its lease is its own), trying again after 0.2 s, 0.4 s, ... up
 * to 5 s: a task's large result was lost, its run FAILED, when the server restarted
 * during the upload (the tries gave up after ~1.4 s; a user trial).
 */
const PATIENCE_MS = 300000;
const PAUSE_MAX_MS = 5000;

/** The pause before trying again after `err`, or null to give up. */
function pauseAfter(err, attempt, startedAt) {
  if (err.code !== grpc.status.UNAVAILABLE || Date.now() - startedAt >= PATIENCE_MS) return null;
  return Math.min(PAUSE_MAX_MS, 200 * 2 ** Math.min(attempt, 5));
}

class PayloadTransferError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PayloadTransferError';
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');
// Generous: a minute plus a second per MiB (only a hung server should hit it).
const deadline = (size) => new Date(Date.now() + 60000 + (1000 * size) / CHUNK);

class PayloadTransfer {
  /**
   * @param {object} contract the loaded headwater.v1 package
   * @param {string} address HOST:PORT
   * @param {() => grpc.Metadata} metadata call metadata (the bearer token)
   * @param {grpc.ChannelCredentials} [credentials] TLS (default: plaintext)
   */
  constructor(contract, address, metadata, credentials = grpc.credentials.createInsecure()) {
    this.stub = new contract.PayloadService(address, credentials);
    this.metadata = metadata;
  }

  close() {
    this.stub.close();
  }

  /** Store bytes; resolves to the PayloadRef the server returns. */
  async upload(data, metadata) {
    const header = { size_bytes: data.length, metadata, sha256: sha256(data) };
    const startedAt = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#uploadOnce(data, header);
      } catch (err) {
        const pause = pauseAfter(err, attempt, startedAt);
        if (pause === null) {
          throw new PayloadTransferError(
            `cannot upload a payload of ${data.length} bytes: ${statusName(err)}: ${err.details ?? err.message}`,
          );
        }
        await sleep(pause);
      }
    }
  }

  #uploadOnce(data, header) {
    return new Promise((resolve, reject) => {
      const call = this.stub.UploadPayload(
        this.metadata(),
        { deadline: deadline(data.length) },
        (err, response) => (err ? reject(err) : resolve(response.ref)),
      );
      call.on('error', () => {}); // reported through the callback
      const chunks = [];
      for (let start = 0; start < data.length; start += CHUNK) chunks.push(data.subarray(start, start + CHUNK));
      const pump = () => {
        while (chunks.length) {
          if (!call.write({ chunk: chunks.shift() })) {
            call.once('drain', pump); // respect flow control: never buffer the whole value twice
            return;
          }
        }
        call.end();
      };
      call.write({ header });
      pump();
    });
  }

  /** The bytes of a stored payload, checked against the reference. */
  async download(ref) {
    if (ref.location) {
      throw new PayloadTransferError(`payload ${ref.payload_id} is held in '${ref.location}', which this worker cannot read`);
    }
    const parts = [];
    let received = 0;
    const startedAt = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        // Resume after what already arrived (offset = bytes received so far).
        received = await this.#downloadFrom(ref, parts.reduce((n, p) => n + p.length, 0), parts);
        break;
      } catch (err) {
        if (err instanceof PayloadTransferError) throw err;
        const pause = pauseAfter(err, attempt, startedAt);
        if (pause === null) {
          throw new PayloadTransferError(
            `cannot download payload ${ref.payload_id}: ${statusName(err)}: ${err.details ?? err.message}`,
          );
        }
        await sleep(pause);
      }
    }
    const data = Buffer.concat(parts, received);
    const size = Number(ref.size_bytes);
    if (size && data.length !== size) {
      throw new PayloadTransferError(`payload ${ref.payload_id}: got ${data.length} bytes, expected ${size}`);
    }
    if (ref.sha256 && sha256(data) !== ref.sha256) {
      throw new PayloadTransferError(`payload ${ref.payload_id}: SHA-256 mismatch`);
    }
    return data;
  }

  #downloadFrom(ref, offset, parts) {
    return new Promise((resolve, reject) => {
      let received = offset;
      const call = this.stub.DownloadPayload(
        { payload_id: ref.payload_id, offset },
        this.metadata(),
        { deadline: deadline(Number(ref.size_bytes)) },
      );
      call.on('data', (part) => {
        if (Number(part.offset) !== received) {
          call.cancel();
          reject(new PayloadTransferError(`payload ${ref.payload_id}: chunk at offset ${part.offset}, expected ${received}`));
          return;
        }
        parts.push(part.chunk);
        received += part.chunk.length;
      });
      call.on('error', reject);
      call.on('end', () => resolve(received));
    });
  }
}

function statusName(err) {
  const entry = Object.entries(grpc.status).find(([, code]) => code === err.code);
  return entry ? entry[0] : 'ERROR';
}

module.exports = { CHUNK, PATIENCE_MS, PayloadTransfer, PayloadTransferError, pauseAfter, sha256 };
