'use strict';
// Channel credentials: plaintext, TLS (a CA file or the system roots) and mutual TLS
// (a client certificate and key), with the same options and HEADWATER_TLS* variables
// as the Python worker.

const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');

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

module.exports = { tlsOptions, channelCredentials };
