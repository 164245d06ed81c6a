// Exact 64-bit JSON: integers beyond 2^53 travel as bare JSON integers and arrive as `bigint`.
import { z } from 'zod';
import { parseJson } from './jsonParse.ts';

export { parseJson };

export const u64Max = (1n << 64n) - 1n;

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

const integerInputMessage = 'expected a non-negative integer';

/** Checks the range and exactness shared by `u64` and `u64AsNumber`; NEVER on failure. */
function toU64(value: number | bigint, ctx: z.RefinementCtx): bigint {
  if (typeof value === 'number' && !Number.isInteger(value)) {
    ctx.addIssue({ code: 'custom', message: `${integerInputMessage}, got ${value}`, input: value });
    return z.NEVER;
  }
  if (typeof value === 'number' && !Number.isSafeInteger(value)) {
    // Only an inexact writer (JSON.stringify, a float literal) produces such a number.
    const message = `integer ${value} lost precision on the way in; write it as an exact JSON integer`;
    ctx.addIssue({ code: 'custom', message, input: value });
    return z.NEVER;
  }
  const exact = BigInt(value);
  if (exact < 0n || exact > u64Max) {
    ctx.addIssue({ code: 'custom', message: `${exact} is outside 0..${u64Max}`, input: value });
    return z.NEVER;
  }
  return exact;
}

/**
 * A number-or-bigint input carrying its own JSON Schema. The override sits on this input
 * schema because every clone of the outer pipe (`.describe()`, `.meta()`, `.optional()`) shares
 * it, while an override on the pipe itself would be lost by such clones.
 */
function integerInput(jsonSchema: Record<string, unknown>) {
  const schema = z.union([z.number(), z.bigint()], { error: integerInputMessage });
  // `_zod.toJSONSchema` is zod's per-instance hook that replaces the generated JSON Schema.
  schema._zod.toJSONSchema = () => ({ type: 'integer', minimum: 0, ...jsonSchema });
  return schema;
}

/**
 * An unsigned 64-bit integer, given as a `number` (exact only up to 2^53-1) or a `bigint` (from
 * `parseJson`); always `bigint` after parsing. JSON Schema documents hold plain numbers, so
 * their `maximum` is 2^64-1's nearest double.
 */
export const u64 = integerInput({ maximum: Number(u64Max) }).transform(toU64);

/** Like `u64`, for quantities that are used as a JS `number` and so must stay within 2^53-1. */
export const u64AsNumber = integerInput({ maximum: Number.MAX_SAFE_INTEGER }).transform(
  (value, ctx): number => {
    const exact = toU64(value, ctx);
    if (typeof exact !== 'bigint') return z.NEVER;
    if (exact > BigInt(Number.MAX_SAFE_INTEGER)) {
      const message = `${exact} is above ${Number.MAX_SAFE_INTEGER}, the largest value this parameter accepts`;
      ctx.addIssue({ code: 'custom', message, input: value });
      return z.NEVER;
    }
    return Number(exact);
  },
);
