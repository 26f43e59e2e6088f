'use strict';
// Channel credentials: plaintext, TLS (a CA file or the system roots) and mutual TLS
// (a client certificate and key), with the same options and HEADWATER_TLS* variables
// as the Python worker.

const fs = require('node:fs');
const net = require('node:net');
const tls = require('node:tls');
const grpc = require('@grpc/grpc-js');

/** How long the diagnosing handshake of explainUnreachable may take. */
const PROBE_TIMEOUT_MS = 3000;

const TRUE = new Set(['1', 'true', 'yes', 'on']);

/**
 * TLS options from explicit values, then the environment (HEADWATER_TLS, _CA, _CERT, _KEY).
 * @param {{tls?: boolean, tlsCa?: string, tlsCert?: string, tlsKey?: string}} given
 * @param {Record<string, string | undefined>} [env]
 */
function tlsOptions(given = {}, env = process.env) {
  const options = {
    tls: given.tls ?? TRUE.has(String(env.HEADWATER_TLS ?? '').toLowerCase()),
    tlsCa: given.tlsCa || env.HEADWATER_TLS_CA || undefined,
    tlsCert: given.tlsCert || env.HEADWATER_TLS_CERT || undefined,
    tlsKey: given.tlsKey || env.HEADWATER_TLS_KEY || undefined,
  };
  if (Boolean(options.tlsCert) !== Boolean(options.tlsKey)) {
    throw new Error('a client certificate needs both --tls-cert and --tls-key');
  }
  return options;
}

function read(path, what) {
  let data;
  try {
    data = fs.readFileSync(path);
  } catch (err) {
    throw new Error(`cannot read the ${what} '${path}': ${err.code === 'ENOENT' ? 'No such file or directory' : err.message}`);
  }
  if (!data.includes('-----BEGIN')) throw new Error(`the ${what} '${path}' is not a PEM file`);
  return data;
}

/** gRPC channel credentials for these options (insecure when none asks for TLS). */
function channelCredentials({ tls, tlsCa, tlsCert, tlsKey } = {}) {
  if (!tls && !tlsCa && !tlsCert) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(
    tlsCa ? read(tlsCa, 'CA certificate (--tls-ca)') : null,
    tlsKey ? read(tlsKey, 'private key (--tls-key)') : null,
    tlsCert ? read(tlsCert, 'certificate (--tls-cert)') : null,
  );
}

/**
 * Why a connection to `address` failed, as one line with the fix, when the cause is a
 * TLS mismatch: a plaintext worker at a server that speaks TLS, or a TLS worker at a
 * plaintext server (gRPC said "Failed to connect" with an empty note, or "wrong version
 * number", where the Python worker names the flag to pass: a trial). It repeats the
 * handshake with node:tls, bounded by PROBE_TIMEOUT_MS; null when that is not it
 * (nothing listens there, a certificate problem gRPC already names).
 * @param {string} address HOST:PORT
 * @param {{tls?: boolean, tlsCa?: string, tlsCert?: string}} options
 * @returns {Promise<string | null>}
 */
function explainUnreachable(address, options = {}) {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (!match) return Promise.resolve(null);
  const [, host, port] = match;
  const secure = Boolean(options.tls || options.tlsCa || options.tlsCert);
  return new Promise((resolve) => {
    let done = false;
    const settle = (answer) => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve(answer);
    };
    const socket = tls.connect({
      host,
      port: Number(port),
      servername: net.isIP(host) ? undefined : host,
      rejectUnauthorized: false, // (only whether it speaks TLS matters here)
      ALPNProtocols: ['h2'],
    });
    socket.setTimeout(PROBE_TIMEOUT_MS, () => settle(null));
    socket.on('secureConnect', () =>
      settle(
        secure
          ? null
          : `the server at ${address} speaks TLS: pass --tls-ca FILE with the CA that signed its ` +
              "certificate (or --tls for the system's roots; HEADWATER_TLS_CA / HEADWATER_TLS=1)",
      ),
    );
    socket.on('error', (err) => {
      const plaintext = /wrong version number|WRONG_VERSION_NUMBER|ECONNRESET|socket hang up|packet length too long/i;
      const refused = err.code === 'ECONNREFUSED' || err.code === 'EHOSTUNREACH' || err.code === 'ENOTFOUND';
      settle(
        secure && !refused && plaintext.test(`${err.code} ${err.message}`)
          ? `the server at ${address} does not speak TLS: drop --tls/--tls-ca, or start the server ` +
              'with --tls-cert and --tls-key'
          : null,
      );
    });
  });
}

module.exports = { tlsOptions, channelCredentials, explainUnreachable };
