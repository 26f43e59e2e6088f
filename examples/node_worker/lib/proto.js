'use strict';
// Loads the wire contract from the repository's proto/ directory at run time, so
// there is exactly one copy of it (proto/headwater/v1/*.proto).

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** proto/ at the repository root (examples/node_worker/lib -> ../../../proto). */
const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'proto');

const LOADER_OPTIONS = {
  keepCase: true, // field names exactly as in the .proto files (snake_case)
  longs: Number, // int64 fields (sizes, offsets, pids) fit in a double here
  enums: String,
  defaults: true,
  oneofs: true, // a virtual field names the member of each oneof that is set
};

const cache = new Map();

/** The `headwater.v1` package: services and message types. */
function loadContract(protoDir = process.env.HEADWATER_PROTO_DIR || DEFAULT_PROTO_DIR) {
  if (!cache.has(protoDir)) {
    const files = ['worker.proto', 'payload.proto'].map((f) => path.join('headwater', 'v1', f));
    const definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
    cache.set(protoDir, grpc.loadPackageDefinition(definition).headwater.v1);
  }
  return cache.get(protoDir);
}

module.exports = { DEFAULT_PROTO_DIR, loadContract };
