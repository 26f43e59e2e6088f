'use strict';
// The reusable part of the Node.js worker: protocol, payload transfer and json codec.

const codec = require('./codec');
const { PROTOCOL_VERSION, Skip, Worker, WorkerError } = require('./worker');
const { PayloadTransfer, PayloadTransferError } = require('./payloads');
const { loadContract } = require('./proto');

module.exports = {
  CodecError: codec.CodecError,
  LocalDate: codec.LocalDate,
  PROTOCOL_VERSION,
  PayloadTransfer,
  PayloadTransferError,
  Skip,
  Worker,
  WorkerError,
  decode: codec.decode,
  encode: codec.encode,
  loadContract,
};
