'use strict';
// The Headwater `json` payload encoding (docs/payloads.md): JSON plus `$` tags for
// big integers, non-finite floats, bytes, timestamps and calendar dates.
//
// decode(bytes) -> value and encode(value) -> Buffer (canonical bytes). Both throw
// CodecError with a one-line message. tests/json_vectors.json is the shared oracle.

const MAX_SAFE = Number.MAX_SAFE_INTEGER; // 2^53 - 1
const MAX_DEPTH = 100;

class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

const DATE_RE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/;

/** A calendar date without a time zone ("YYYY-MM-DD"), so that `$date` round-trips. */
class LocalDate {
  constructor(text) {
    if (!isValidDate(text)) {
      throw new CodecError(`$date needs a valid YYYY-MM-DD date, got ${show(text)}`);
    }
    this.text = text;
    Object.freeze(this);
  }

  toString() {
    return this.text;
  }

  toJSON() {
    return this.text;
  }
}

function isValidDate(text) {
  const m = typeof text === 'string' ? DATE_RE.exec(text) : null;
  if (!m) return false;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (year < 1 || month < 1 || month > 12 || day < 1) return false;
  const d = new Date(Date.UTC(2000, month - 1, day));
  d.setUTCFullYear(year);
  return d.getUTCMonth() === month - 1 && d.getUTCDate() === day;
}

function show(value) {
  try {
    return typeof value === 'bigint' ? `${value}n` : JSON.stringify(value);
  } catch {
    return String(value);
  }
}

// ---------------------------------------------------------------- writing

/** Python's float repr (shortest round-trip digits), which Python reads as a float. */
function formatFloat(x) {
  if (Object.is(x, -0)) return '-0.0';
  const [mantissa, expText] = x.toExponential().split('e');
  const exp = Number(expText);
  const negative = mantissa.startsWith('-');
  const digits = mantissa.replace('-', '').replace('.', '');
  const sign = negative ? '-' : '';
  if (exp < -4 || exp >= 16) {
    const head = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp) < 10 ? `0${Math.abs(exp)}` : String(Math.abs(exp));
    return `${sign}${head}e${exp < 0 ? '-' : '+'}${e}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const whole = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
  const fraction = digits.slice(exp + 1) || '0';
  return `${sign}${whole}.${fraction}`;
}

function formatNumber(x) {
  if (Number.isNaN(x)) return '{"$float":"NaN"}';
  if (x === Infinity) return '{"$float":"Infinity"}';
  if (x === -Infinity) return '{"$float":"-Infinity"}';
  if (Number.isInteger(x) && Math.abs(x) <= MAX_SAFE && !Object.is(x, -0)) return String(x);
  return formatFloat(x);
}

function formatDatetime(date) {
  const ms = date.getTime();
  if (Number.isNaN(ms)) throw new CodecError('an invalid Date cannot be json');
  const year = date.getUTCFullYear();
  if (year < 1 || year > 9999) {
    throw new CodecError(`a Date in year ${year} cannot be json (years 1 to 9999)`);
  }
  // toISOString gives YYYY-MM-DDTHH:MM:SS.mmmZ for years 0..9999.
  const iso = date.toISOString();
  return iso.endsWith('.000Z') ? `${iso.slice(0, -5)}Z` : iso;
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function writeString(text) {
  if (!text.isWellFormed()) throw new CodecError('a string with a lone surrogate cannot be UTF-8');
  return JSON.stringify(text);
}

function write(value, depth, within = new Set()) {
  if (depth > MAX_DEPTH) throw new CodecError(`the value is nested more than ${MAX_DEPTH} levels deep`);
  if (value === undefined) throw new CodecError('undefined cannot be json (use null)');
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      return writeString(value);
    case 'number':
      return formatNumber(value);
    case 'bigint':
      return value >= -MAX_SAFE && value <= MAX_SAFE ? String(value) : `{"$int":"${value}"}`;
    case 'object':
      break;
    default:
      throw new CodecError(`a ${typeof value} cannot be json`);
  }
  if (value === null) return 'null';
  if (within.has(value)) {
    // (it said "nested more than 100 levels deep": a user trial)
    throw new CodecError('the value contains itself (a circular reference), which json cannot hold');
  }
  if (Array.isArray(value)) {
    within.add(value);
    const items = value.map((v) => write(v, depth + 1, within)).join(',');
    within.delete(value);
    return `[${items}]`;
  }
  if (value instanceof Date) return `{"$datetime":"${formatDatetime(value)}"}`;
  if (value instanceof LocalDate) return `{"$date":"${value.text}"}`;
  if (value instanceof Uint8Array) {
    const b64 = Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
    return `{"$bytes":"${b64}"}`;
  }
  if (!isPlainObject(value)) {
    const kind = value.constructor && value.constructor.name ? value.constructor.name : 'object';
    throw new CodecError(`a ${kind} cannot be json (use plain objects, arrays, Date, LocalDate, Buffer)`);
  }
  const keys = Object.keys(value);
  within.add(value);
  const members = keys.map((k) => {
    if (value[k] === undefined) throw new CodecError(`property ${show(k)} is undefined, which json cannot hold`);
    return `${writeString(k)}:${write(value[k], depth + 1, within)}`;
  });
  within.delete(value);
  const text = `{${members.join(',')}}`;
  // A user object that a reader would take for a tag is wrapped.
  return keys.length === 1 && keys[0].startsWith('$') ? `{"$object":${text}}` : text;
}

/** The canonical json bytes of a value (throws CodecError naming what cannot be json). */
function encode(value) {
  if (value === undefined) throw new CodecError('undefined cannot be json (use null)');
  return Buffer.from(write(value, 0), 'utf8');
}

// ---------------------------------------------------------------- reading

const INT_RE = /^-?(?:0|[1-9][0-9]*)$/;
// A plain character class (no repeated group): V8 recurses on groups over megabytes.
const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
const DATETIME_RE =
  /^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$/;
const FLOATS = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

function readDatetime(text) {
  const m = typeof text === 'string' ? DATETIME_RE.exec(text) : null;
  if (!m) throw new CodecError(`$datetime needs an RFC 3339 date-time string, got ${show(text)}`);
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  const bad = () => new CodecError(`$datetime ${show(text)} is not a valid date-time`);
  if (!isValidDate(`${m[1]}-${m[2]}-${m[3]}`) || hour > 23 || minute > 59 || second > 59) throw bad();
  const ms = m[7] ? Number((m[7].slice(1) + '00').slice(0, 3)) : 0; // truncated to ms
  let offset = 0;
  if (m[8] !== 'Z' && m[8] !== 'z') {
    const oh = Number(m[8].slice(1, 3));
    const om = Number(m[8].slice(4, 6));
    if (oh > 23 || om > 59) throw bad();
    offset = (m[8][0] === '-' ? -1 : 1) * (oh * 60 + om) * 60000;
  }
  const date = new Date(Date.UTC(2000, month - 1, day, hour, minute, second, ms));
  date.setUTCFullYear(year);
  return new Date(date.getTime() - offset);
}

function readBytes(text) {
  if (typeof text !== 'string' || text.length % 4 !== 0 || !B64_RE.test(text)) {
    throw new CodecError(`$bytes needs padded standard base64, got ${show(text)}`);
  }
  const data = Buffer.from(text, 'base64');
  if (data.toString('base64') !== text) throw new CodecError(`$bytes ${show(text)} has non-zero padding bits`);
  return data;
}

const READERS = {
  $int(text) {
    if (typeof text !== 'string' || !INT_RE.test(text)) {
      throw new CodecError(`$int needs a string of decimal digits, got ${show(text)}`);
    }
    return BigInt(text);
  },
  $float(text) {
    if (typeof text !== 'string' || !Object.hasOwn(FLOATS, text)) {
      throw new CodecError(`$float must be "NaN", "Infinity" or "-Infinity", got ${show(text)}`);
    }
    return FLOATS[text];
  },
  $bytes: readBytes,
  $datetime: readDatetime,
  $date(text) {
    if (!isValidDate(text)) throw new CodecError(`$date needs a valid YYYY-MM-DD date, got ${show(text)}`);
    return new LocalDate(text);
  },
};

function resolve(value) {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = resolve(value[i]);
    return value;
  }
  if (value === null || typeof value !== 'object') return value;
  const keys = Object.keys(value);
  if (keys.length === 1 && keys[0].startsWith('$')) {
    const [tag] = keys;
    const inner = value[tag];
    if (tag === '$object') {
      if (inner === null || typeof inner !== 'object' || Array.isArray(inner)) {
        throw new CodecError('$object needs a JSON object');
      }
      for (const k of Object.keys(inner)) inner[k] = resolve(inner[k]);
      return inner;
    }
    const reader = READERS[tag];
    if (!reader) throw new CodecError(`unknown json tag ${show(tag)}`);
    return reader(inner);
  }
  for (const k of keys) value[k] = resolve(value[k]);
  return value;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The value of json bytes (Buffer/Uint8Array or string); throws CodecError. */
function decode(data) {
  let text = data;
  if (typeof data !== 'string') {
    try {
      text = UTF8.decode(data);
    } catch {
      throw new CodecError('json payload is not valid UTF-8');
    }
  }
  let parsed;
  try {
    // JSON.parse creates own "__proto__" properties (no prototype pollution).
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CodecError(`json payload is not valid JSON (${err.message.split('\n')[0]})`);
  }
  return resolve(parsed);
}

module.exports = { CodecError, LocalDate, decode, encode, formatFloat, MAX_SAFE };
