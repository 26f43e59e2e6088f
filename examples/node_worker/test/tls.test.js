'use strict';
// TLS options: explicit values over HEADWATER_TLS* variables, and one clear error for a
// file that cannot be used. (tests/test_security_e2e.py runs this worker against a
// real TLS and mutual-TLS server with certificates made there.)

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { channelCredentials, tlsOptions } = require('../lib/tls');

test('explicit options win over the environment, which fills the rest', () => {
  const env = { HEADWATER_TLS: '1', HEADWATER_TLS_CA: '/env/ca.pem', HEADWATER_TLS_CERT: '/env/c.crt', HEADWATER_TLS_KEY: '/env/c.key' };
  assert.deepEqual(tlsOptions({ tlsCa: '/flag/ca.pem' }, env), {
    tls: true,
    tlsCa: '/flag/ca.pem',
    tlsCert: '/env/c.crt',
    tlsKey: '/env/c.key',
  });
  assert.deepEqual(tlsOptions({}, {}), { tls: false, tlsCa: undefined, tlsCert: undefined, tlsKey: undefined });
});

test('a client certificate needs its key', () => {
  assert.throws(() => tlsOptions({ tlsCert: 'c.crt' }, {}), /needs both --tls-cert and --tls-key/);
});

test('plaintext unless TLS is asked for; unreadable files are named', () => {
  assert.equal(channelCredentials({})._isSecure(), false);
  assert.equal(channelCredentials({ tls: true })._isSecure(), true);
  assert.throws(() => channelCredentials({ tlsCa: '/no/such/ca.pem' }), /cannot read the CA certificate \(--tls-ca\) '\/no\/such\/ca.pem': No such file/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-tls-'));
  try {
    const notPem = path.join(dir, 'ca.pem');
    fs.writeFileSync(notPem, 'hello');
    assert.throws(() => channelCredentials({ tlsCa: notPem }), /is not a PEM file/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.ok(grpc.credentials.createInsecure());
});
