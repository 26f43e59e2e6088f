'use strict';
// Example task handlers, kept apart from the protocol code in lib/. Each is an async
// function (inputs, context) -> json-encodable result; `context` has `signal` (aborted
// on cancel or timeout), `attempt`, `log(message, level)` and the run's ids.

const crypto = require('node:crypto');
const fs = require('node:fs');

/**
 * images.resize: nearest-neighbour scaling of a greyscale image
 * ({width, height, pixels: Buffer of width*height bytes}) to `width` columns,
 * keeping the aspect ratio.
 */
async function resize({ image, width }, context) {
  const { width: w, height: h, pixels } = image ?? {};
  if (!Number.isInteger(w) || !Number.isInteger(h) || !Buffer.isBuffer(pixels) || pixels.length !== w * h) {
    throw new TypeError('image must be {width, height, pixels} with width*height bytes of pixels');
  }
  if (!Number.isInteger(width) || width < 1) throw new RangeError(`width must be a positive integer, got ${width}`);
  const height = Math.max(1, Math.round((h * width) / w));
  const out = Buffer.alloc(width * height);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(h - 1, Math.floor((y * h) / height));
    for (let x = 0; x < width; x++) out[y * width + x] = pixels[sy * w + Math.min(w - 1, Math.floor((x * w) / width))];
  }
  context.log(`resized ${w}x${h} to ${width}x${height}`);
  return { width, height, pixels: out };
}

/** text.stats: word and character counts of a text, with when it was measured. */
async function textStats({ text, at }) {
  if (typeof text !== 'string') throw new TypeError(`text must be a string, got ${typeof text}`);
  const words = text.split(/\s+/).filter(Boolean);
  return { words: words.length, chars: [...text].length, upper: text.toUpperCase(), at };
}

/** math.scale: x * factor (used mapped). BigInt inputs stay exact. */
async function scale({ x, factor }) {
  if (typeof x === 'bigint' || typeof factor === 'bigint') return BigInt(x) * BigInt(factor);
  return x * factor;
}

/** flaky.once: fails on the first attempt of each run, succeeds on a retry. */
async function flakyOnce({ value }, context) {
  if (context.attempt === 1) {
    const err = new Error(`transient failure on attempt ${context.attempt}`);
    err.name = 'TransientError';
    throw err;
  }
  return { value, attempt: context.attempt };
}

/** blob.digest: sha256 of bytes (or a string) plus the data reversed, to move large values both ways. */
async function blobDigest({ data }) {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  if (!Buffer.isBuffer(bytes)) throw new TypeError('data must be bytes or a string');
  return { sha256: crypto.createHash('sha256').update(bytes).digest('hex'), size: bytes.length, reversed: Buffer.from(bytes).reverse() };
}

/** wait.cancel: waits until it is cancelled (or times out), then logs that it stopped. */
async function waitForCancel(_inputs, context) {
  context.log('waiting to be cancelled');
  process.stderr.write(`wait.cancel started ${context.taskRunId}\n`);
  await new Promise((resolve) => context.signal.addEventListener('abort', resolve, { once: true }));
  process.stderr.write(`wait.cancel aborted ${context.taskRunId}: ${context.signal.reason.message}\n`);
  return null;
}

/** files.await: a sensor that waits until the file `path` exists, then returns its text. */
async function awaitFile({ path: file }, context) {
  process.stderr.write(`files.await started ${context.taskRunId} attempt ${context.attempt}\n`);
  while (!fs.existsSync(file)) {
    if (context.signal.aborted) return null;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return fs.readFileSync(file, 'utf8');
}

module.exports = {
  'files.await': awaitFile,
  'images.resize': resize,
  'text.stats': textStats,
  'math.scale': scale,
  'flaky.once': flakyOnce,
  'blob.digest': blobDigest,
  'wait.cancel': waitForCancel,
};
