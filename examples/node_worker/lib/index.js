'use strict';
// The reusable part of the Node.js worker: protocol, payload transfer and json codec.

const codec = require('./codec');
const { PROTOCOL_VERSION, Skip, Worker, WorkerError, captureConsole } = require('./worker');
const { PayloadTransfer, PayloadTransferError } = require('./payloads');
const { loadContract } = require('./proto');
const { channelCredentials, tlsOptions } = require('./tls');

module.exports = {
  CodecError: codec.CodecError,
  LocalDate: codec.LocalDate,
  PROTOCOL_VERSION,
  PayloadTransfer,
  PayloadTransferError,
  Skip,
  Worker,
  WorkerError,
  captureConsole,
  channelCredentials,
  decode: codec.decode,
  encode: codec.encode,
  loadContract,
  tlsOptions,
};
