// Exact 64-bit JSON text, with no Node APIs: integers beyond 2^53 are read as exact bigints and
// bigints written as bare integers. The node's transports, the CLI and the browser dashboard all
// use it (src/transport/json64.ts adds the zod schemas).
import { parse } from 'lossless-json';
import type { DuplicateKeyInfo } from 'lossless-json';

// Incoming JSON integers longer than this are not made exact (BigInt parsing is superlinear in
// the digit count, and no parameter needs more than the 20 digits of a u64).
export const jsonExactIntegerDigitsMax = 64;

const integerTextPattern = /^-?[0-9]+$/;
// Integers of up to 15 digits are always exact as a number; only text with a longer digit run
// (possibly inside a string, which costs nothing but the slower parser) needs lossless-json.
const longDigitRunPattern = /[0-9]{16}/;

/** Integers stay `number` while exact and become `bigint` beyond; other numbers are `number`. */
function parseNumberText(text: string): number | bigint {
  const value = Number(text);
  if (Number.isSafeInteger(value) || !integerTextPattern.test(text)) return value;
  // Longer integers can never be a valid parameter; parsing them exactly only costs CPU.
  const digitCount = text.startsWith('-') ? text.length - 1 : text.length;
  return digitCount <= jsonExactIntegerDigitsMax ? BigInt(text) : value;
}

/**
 * Parses JSON text as JSON.parse does (a repeated key keeps its last value), except that
 * integers beyond 2^53-1 become exact bigints. Throws (a SyntaxError, or a RangeError for
 * absurd nesting) on malformed input.
 */
export function parseJson(text: string): unknown {
  // The native parser is about a hundred times faster on string-heavy frames (e.g. write data).
  if (!longDigitRunPattern.test(text)) return JSON.parse(text);
  return parse(text, undefined, { parseNumber: parseNumberText, onDuplicateKey: lastValueWins });
}

/** JSON.parse's rule, so that both paths of parseJson agree. */
function lastValueWins(duplicate: DuplicateKeyInfo): unknown {
  return duplicate.newValue;
}

// Strings with none of these can be written between quotes as they are (JSON.stringify escapes
// exactly these: quote, backslash, control characters and lone surrogates).
const stringNeedsEscapePattern = /["\\\u0000-\u001f\ud800-\udfff]/;
// Outgoing values nested deeper than this are treated as cyclic (a handler bug), not written.
const stringifyDepthMax = 1000;

/** Writes `value` as compact JSON with every `bigint` as a bare, exact integer. */
export function stringifyJson(value: unknown): string {
  // The native writer is about twice as fast; it throws a TypeError at the first bigint, and is
  // skipped when someone gave BigInt a toJSON (it would then quietly write strings).
  if (!bigintHasToJson()) {
    try {
      const text = JSON.stringify(value) as string | undefined;
      if (text !== undefined) return text;
    } catch {
      // A bigint (or a cycle, which the exact writer reports with its own error).
    }
  }
  const text = writeValue(value, '', 0);
  if (text === undefined) throw new TypeError('value has no JSON representation');
  return text;
}

function bigintHasToJson(): boolean {
  return 'toJSON' in BigInt.prototype;
}

/** JSON.stringify's rules, plus `bigint` as an integer; undefined means "omit this member". */
function writeValue(value: unknown, key: string, depth: number): string | undefined {
  switch (typeof value) {
    case 'string':
      return writeString(value);
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'bigint':
      return value.toString();
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      return value === null ? 'null' : writeObjectLike(value, key, depth + 1);
    default:
      return undefined; // undefined, functions and symbols have no JSON form
  }
}

function writeObjectLike(value: object, key: string, depth: number): string | undefined {
  if (depth > stringifyDepthMax) throw new TypeError('value is cyclic or nested too deeply to write as JSON');
  const toJson = (value as { toJSON?: unknown }).toJSON;
  if (typeof toJson === 'function') return writeValue(toJson.call(value, key), key, depth);
  if (value instanceof Number || value instanceof String || value instanceof Boolean) {
    return writeValue(value.valueOf(), key, depth);
  }
  if (Array.isArray(value)) return writeArray(value, depth);
  return writeObject(value as Record<string, unknown>, depth);
}

function writeArray(array: readonly unknown[], depth: number): string {
  let text = '[';
  for (let index = 0; index < array.length; index += 1) {
    if (index > 0) text += ',';
    text += writeValue(array[index], String(index), depth) ?? 'null';
  }
  return `${text}]`;
}

function writeObject(object: Record<string, unknown>, depth: number): string {
  let text = '{';
  for (const key of Object.keys(object)) {
    const member = writeValue(object[key], key, depth);
    if (member === undefined) continue;
    text += `${text.length > 1 ? ',' : ''}${writeString(key)}:${member}`;
  }
  return `${text}}`;
}

function writeString(value: string): string {
  return stringNeedsEscapePattern.test(value) ? JSON.stringify(value) : `"${value}"`;
}

// ---------------------------------------------------------------------------------------------
// zod helpers for unsigned 64-bit parameters.
