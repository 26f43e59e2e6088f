'use strict';
// Values on the wire: an assignment's InputValue trees in, a task's result out
// (docs/worker-protocol.md sections 6 and 7; docs/payloads.md).

const codec = require('./codec');

/** Used when the Welcome gives no inline limit. */
const DEFAULT_INLINE_LIMIT = 1 << 20;
/** gRPC's default largest message: what a server accepts when its Welcome says nothing. */
const GRPC_MESSAGE_LIMIT = 4 << 20;
/** Room kept, below the server's limit, for the rest of a message around inline values. */
const ENVELOPE_BYTES = 1 << 20;
/** Headroom kept below the server's limit in a message the worker builds. */
const HEADROOM_BYTES = 64 << 10;
/** The least an element sent by reference adds to a split result's message. */
const REF_ITEM_BYTES = 120;
/** What an inline element adds beyond its encoded bytes (metadata and framing). */
const INLINE_ITEM_BYTES = 24;
/** Metadata key on a split result: its number of elements (read by the control plane). */
const LENGTH_KEY = 'headwater.length';

/** An input this worker can never read (e.g. pickle): retrying cannot help. */
class UnreadableInput extends Error {
  constructor(message) {
    super(message);
    this.name = 'UnreadableInput';
  }
}

async function payloadBytes(value, transfer) {
  if (value.kind === 'ref') return { data: await transfer.download(value.ref), metadata: value.ref.metadata };
  if (value.kind === 'inline') return { data: value.inline.data, metadata: value.inline.metadata };
  throw new Error('a Value has neither inline data nor a reference');
}

function select(value, path) {
  let current = value;
  for (const element of path) {
    if (element.selector === 'key' || typeof element === 'string') {
      const key = typeof element === 'string' ? element : element.key;
      if (current === null || typeof current !== 'object' || Array.isArray(current) || !Object.hasOwn(current, key)) {
        throw new Error(`cannot select key ${JSON.stringify(key)}: no such key in the value`);
      }
      current = current[key];
    } else {
      const index = typeof element === 'number' ? element : Number(element.index);
      if (!Array.isArray(current)) throw new Error(`cannot select index ${index}: the value is not an array`);
      const i = index < 0 ? current.length + index : index;
      if (i < 0 || i >= current.length) throw new Error(`index ${index} is out of range (length ${current.length})`);
      current = current[i];
    }
  }
  return current;
}

/** Decode a Value message (including the control plane's structural encodings). */
async function decodeValue(value, transfer) {
  const { data, metadata } = await payloadBytes(value, transfer);
  const encoding = metadata.encoding ?? '';
  switch (encoding) {
    case 'json':
      return codec.decode(data);
    case 'headwater.list':
    case 'headwater.tuple':
      return Promise.all(value.items.map((item) => decodeValue(item, transfer)));
    case 'headwater.dict': {
      const keys = JSON.parse(Buffer.from(data).toString('utf8'));
      const values = await Promise.all(value.items.map((item) => decodeValue(item, transfer)));
      return Object.fromEntries(keys.map((k, i) => [k, values[i]]));
    }
    case 'headwater.select':
      return select(await decodeValue(value.items[0], transfer), JSON.parse(Buffer.from(data).toString('utf8')));
    default:
      throw new UnreadableInput(
        `it is encoded as '${encoding || '(none)'}', which a Node worker cannot read (only json); ` +
          'make the producer return json (docs/payloads.md)',
      );
  }
}

/** Decode one argument's InputValue tree: decode, assemble, then select. */
async function decodeInput(input, transfer) {
  let value;
  if (input.kind === 'value') value = await decodeValue(input.value, transfer);
  else if (input.kind === 'list') value = await Promise.all(input.list.items.map((i) => decodeInput(i, transfer)));
  else if (input.kind === 'map') {
    value = {};
    for (const entry of input.map.entries) value[entry.key] = await decodeInput(entry.value, transfer);
  } else value = null;
  return select(value, input.path ?? []);
}

/** Arguments by name: argument_order first, then the others sorted. Errors name the argument. */
async function decodeInputs(assignment, transfer) {
  const names = assignment.argument_order.filter((n) => Object.hasOwn(assignment.inputs, n));
  const rest = Object.keys(assignment.inputs).filter((n) => !names.includes(n)).sort();
  const out = {};
  for (const name of [...names, ...rest]) {
    try {
      out[name] = await decodeInput(assignment.inputs[name], transfer);
    } catch (err) {
      err.message = `argument '${name}': ${err.message}`;
      throw err;
    }
  }
  return out;
}

/** Turns encoded bytes into Value messages, inline while the budget allows. */
class Packer {
  constructor(transfer, inlineLimit, budget) {
    this.transfer = transfer;
    this.budget = budget;
    this.limit = Math.min(inlineLimit > 0 ? inlineLimit : DEFAULT_INLINE_LIMIT, budget);
    this.inlineTotal = 0;
  }

  async value(data, metadata) {
    if (data.length <= this.limit && this.inlineTotal + data.length <= this.budget) {
      this.inlineTotal += data.length;
      return { inline: { data, metadata }, items: [] };
    }
    return { ref: await this.transfer.upload(data, metadata), items: [] };
  }
}

/**
 * A result as a Value message: json, inline when small, else uploaded; with each
 * element in `items` when the result must be split (an array). `maxMessageBytes`: the
 * largest message the server accepts (Welcome.max_message_bytes; 0: gRPC's 4 MiB).
 * Throws CodecError.
 */
async function encodeResult(result, { split, inlineLimit, transfer, maxMessageBytes = 0 }) {
  const data = codec.encode(result);
  const elements = split && Array.isArray(result) ? result.map((e) => codec.encode(e)) : null;
  const metadata = { encoding: 'json' };
  if (elements) metadata[LENGTH_KEY] = String(elements.length);
  const accepted = maxMessageBytes > 0 ? maxMessageBytes : GRPC_MESSAGE_LIMIT;
  const budget = Math.max(accepted - ENVELOPE_BYTES, Math.floor(accepted / 2));
  const ceiling = Math.max(accepted - HEADROOM_BYTES, Math.floor(accepted / 2));
  const packer = new Packer(transfer, inlineLimit, budget);
  // Smallest first, so as many as possible stay inline; then back in order.
  const order = elements
    ? elements.map((_, i) => i).sort((a, b) => elements[a].length - elements[b].length)
    : [];
  if (elements) checkSplitFits(order.map((i) => elements[i].length), data.length, packer, ceiling);
  const value = await packer.value(data, metadata);
  if (elements) {
    const packed = new Array(elements.length);
    for (const i of order) packed[i] = await packer.value(elements[i], { encoding: 'json' });
    value.items = packed;
  }
  return value;
}

/**
 * Refuse, before anything is uploaded, a split result that cannot fit in one message
 * even with every element that is not inline sent by reference (a lower bound of its
 * size; the Python worker does the same). `lengths`: the elements' encoded sizes,
 * smallest first. Throws CodecError.
 */
function checkSplitFits(lengths, whole, packer, ceiling) {
  const limit = packer.limit;
  let budget = packer.budget;
  let size;
  if (whole <= limit) {
    budget -= whole;
    size = whole + INLINE_ITEM_BYTES;
  } else {
    size = REF_ITEM_BYTES;
  }
  for (const length of lengths) {
    if (length <= limit && length <= budget) {
      budget -= length;
      size += length + INLINE_ITEM_BYTES;
    } else {
      size += REF_ITEM_BYTES;
    }
    if (size > ceiling) {
      throw new codec.CodecError(
        `the result split into ${lengths.length.toLocaleString('en-US')} elements does not ` +
          `fit in one message (${Math.floor(ceiling / 1024).toLocaleString('en-US')} KiB under ` +
          "the server's max_message_bytes), even with elements sent by reference: map over " +
          'fewer, larger elements (chunks of the list), or raise max_message_bytes on the ' +
          'server and its workers (docs/limits.md)',
      );
    }
  }
}

module.exports = { LENGTH_KEY, UnreadableInput, decodeInputs, decodeValue, encodeResult, select };
