// Exact 64-bit JSON: integers beyond 2^53 travel as bare JSON integers and arrive as `bigint`.
import { z } from 'zod';
import { parseJson, stringifyJson } from './jsonText.ts';

export { parseJson, stringifyJson };

export const u64Max = (1n << 64n) - 1n;

/**
 * JSON text written ahead of time (a long listing, in slices): a reply embeds it as it is. The
 * pieces are what each slice wrote; a transport that can send a message in parts (WebSocket
 * fragments, a stream socket) can send them one by one instead of the joined text.
 */
export class SerializedJson {
  constructor(readonly chunks: readonly string[]) {}

  get text(): string {
    return this.chunks.join('');
  }
}

/** Arrays at least this long are written in slices by `stringifyJsonInSlices`. */
export const sliceSerializeItemsMin = 512;

/**
 * A chunk is closed once it holds this many characters. A string this long is allocated outside
 * V8's young generation, so the scavenges that run while a 100 MB listing is written do not copy
 * the chunks written so far again and again (at 100,000 lvols that copying was the longest stall).
 */
const chunkCharsMin = 256 * 1024;

/**
 * Writes a JSON array one element at a time, as `stringifyJson` would write the whole array,
 * into a few large chunks: a caller can make each element, write it and let it go (a listing's
 * row never outlives its own turn).
 */
export class JsonArrayWriter {
  private readonly chunks: string[] = [];
  private parts: string[] = [];
  private partChars = 0;
  private written = 0;

  add(item: unknown): void {
    // As JSON.stringify writes an array: members without a JSON form become null.
    const text = item === undefined || typeof item === 'function' || typeof item === 'symbol' ? 'null' : stringifyJson(item);
    this.parts.push(text);
    this.partChars += text.length + 1;
    if (this.partChars >= chunkCharsMin) this.endChunk();
  }

  finish(): SerializedJson {
    this.endChunk();
    if (this.written === 0) this.chunks.push('[');
    this.chunks.push(']');
    return new SerializedJson(this.chunks);
  }

  private endChunk(): void {
    if (this.parts.length === 0) return;
    // A chunk holds its elements with the comma that separates it from the one before.
    this.chunks.push((this.written === 0 ? '[' : ',') + this.parts.join(','));
    this.written += this.parts.length;
    this.parts = [];
    this.partChars = 0;
  }
}

/**
 * The JSON of `array`, as `stringifyJson` writes it, an element at a time with a turn of the
 * event loop whenever `sliceMs` have passed: a 100,000-row listing (~100 MB) is never written in
 * one go. The caller must not change the array meanwhile (a listing's rows are its own).
 */
export async function stringifyJsonInSlices(array: readonly unknown[], sliceMs = 2): Promise<SerializedJson> {
  const writer = new JsonArrayWriter();
  let since = performance.now();
  for (let index = 0; index < array.length; index++) {
    writer.add(array[index]);
    if (performance.now() - since >= sliceMs) {
      await new Promise((resolve) => setImmediate(resolve));
      since = performance.now();
    }
  }
  return writer.finish();
}

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
