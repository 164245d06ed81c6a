// Exact 64-bit JSON: parsing, writing, and the zod u64 helpers.
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { jsonExactIntegerDigitsMax } from '../../src/transport/jsonText.ts';
import { parseJson, stringifyJson, u64, u64AsNumber, u64Max } from '../../src/transport/json64.ts';

describe('parseJson', () => {
  it('keeps safe integers as numbers and makes larger integers exact bigints', () => {
    // Goal: the 2^53 boundary is where number turns into bigint, in both directions.
    const parsed = parseJson(
      '{"a":9007199254740991,"b":9007199254740992,"c":18446744073709551615,"d":-9007199254740993,"e":0}',
    );
    expect(parsed).toEqual({
      a: 9007199254740991,
      b: 9007199254740992n,
      c: 18446744073709551615n,
      d: -9007199254740993n,
      e: 0,
    });
  });

  it('parses fractions and exponents as numbers', () => {
    // Goal: only integer syntax becomes bigint; 1e3 and 1.5 stay plain numbers.
    expect(parseJson('[1.5,1e3,-0.25,12345678901234567890.5]')).toEqual([1.5, 1000, -0.25, 12345678901234567890.5]);
  });

  it('does not make absurdly long integers exact', () => {
    // Goal: a frame full of digits cannot make the parser spend superlinear BigInt time.
    const long = '9'.repeat(jsonExactIntegerDigitsMax + 1);
    const parsed = parseJson(`[${long}]`) as unknown[];
    expect(typeof parsed[0]).toBe('number');
    const longest = '9'.repeat(jsonExactIntegerDigitsMax);
    expect(parseJson(`[${longest}]`)).toEqual([BigInt(longest)]);
  });

  it('throws a SyntaxError on malformed JSON', () => {
    // Goal: callers can tell malformed input apart by the error type.
    expect(() => parseJson('{"a":')).toThrow(SyntaxError);
    expect(() => parseJson('{"a":1} x')).toThrow(SyntaxError);
  });

  it('agrees with JSON.parse on the lossless path wherever numbers are safe', () => {
    // Goal: a 16-digit run (here inside a string) switches parsers without changing any result.
    const pad = '"pad":"1234567890123456"';
    const texts = [
      `{${pad},"a":1,"a":2,"b":[1.5,-0,1e400,"\\u00e9\\ud800"]}`,
      `{${pad},"__proto__":{"x":1}," spaced ":\t\r\n[ true , false , null ]}`,
    ];
    for (const text of texts) expect(parseJson(text)).toEqual(JSON.parse(text));
    const malformed = [`{${pad},}`, `[${pad}]`, `{${pad},"a":01}`, `{${pad},"a":'x'}`, `{${pad}}\u00a0`];
    for (const text of malformed) {
      expect(() => JSON.parse(text)).toThrow();
      expect(() => parseJson(text)).toThrow();
    }
  });

  it('stores a __proto__ key as data without touching the prototype', () => {
    // Goal: hostile input cannot change the prototype of the parsed object.
    // The second text has a long digit run, so it takes the lossless path.
    for (const text of ['{"__proto__":{"polluted":true}}', '{"__proto__":{"polluted":12345678901234567890}}']) {
      const parsed = parseJson(text) as Record<string, unknown>;
      expect(Object.getPrototypeOf(parsed)).toBe(Object.prototype);
      expect(Object.keys(parsed)).toEqual(['__proto__']);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    }
  });
});

describe('stringifyJson', () => {
  it('writes bigints as bare exact integers in compact output', () => {
    // Goal: checksums above 2^53 reach the client digit for digit, never quoted or rounded.
    const text = stringifyJson({ checksum: 13333283586479230977n, list: [u64Max, 1n, 2] });
    expect(text).toBe('{"checksum":13333283586479230977,"list":[18446744073709551615,1,2]}');
  });

  it('round-trips nested bigints through parseJson', () => {
    // Goal: what the server writes is what a json64 reader gets back.
    const value = { a: [{ b: 18446744073709551615n, c: 'x' }], d: -12345678901234567890n, e: 7 };
    expect(parseJson(stringifyJson(value))).toEqual(value);
  });

  it('writes exactly what JSON.stringify writes for values without bigints, on both code paths', () => {
    // Goal: the hand-written exact writer (taken when a bigint is present) agrees with the native one.
    const corpus = {
      plain: 'abc',
      escapes: 'quote " backslash \\ newline \n tab \t nul \u0000 del \u007f',
      unicode: 'snow ☃ pair 😀 lone \ud800 end \u2028',
      numbers: [0, -0, 1.5, -2e-7, 1e21, Number.NaN, Number.POSITIVE_INFINITY],
      flags: [true, false, null],
      holes: [undefined, () => 1, Symbol('s')],
      omitted: { u: undefined, f: () => 1, s: Symbol('s'), kept: 1 },
      date: new Date(0),
      boxed: [Object(1), Object('s'), Object(false)],
      nested: { deep: { deeper: [[], {}, [{}]] } },
      'key "with" quotes\n': 1,
    };
    expect(stringifyJson(corpus)).toBe(JSON.stringify(corpus));
    expect(stringifyJson({ corpus, big: 1n })).toBe(JSON.stringify({ corpus, big: 1 }));
  });

  it('throws a TypeError instead of overflowing the stack on a cyclic value', () => {
    // Goal: a handler bug that returns a cycle is reported, not a crash.
    const cyclic: Record<string, unknown> = { big: 1n };
    cyclic.self = cyclic;
    expect(() => stringifyJson(cyclic)).toThrow(TypeError);
  });

  it('throws for a value with no JSON form instead of returning undefined', () => {
    // Goal: the string return type is honest.
    expect(() => stringifyJson(undefined)).toThrow(TypeError);
  });
});

describe('u64', () => {
  it('accepts numbers and bigints up to 2^64-1 and outputs bigint', () => {
    // Goal: both input forms give the same exact output.
    expect(u64.parse(5)).toBe(5n);
    expect(u64.parse(0n)).toBe(0n);
    expect(u64.parse(u64Max)).toBe(u64Max);
  });

  it('rejects values outside 0..2^64-1, fractions, inexact numbers and strings', () => {
    // Goal: each bad input fails with a message that names the problem.
    const message = (input: unknown): string => u64.safeParse(input).error?.issues[0]?.message ?? 'accepted';
    expect(message(u64Max + 1n)).toMatch(/outside 0\.\.18446744073709551615/);
    expect(message(-1)).toMatch(/outside/);
    expect(message(1.5)).toMatch(/non-negative integer/);
    expect(message(2 ** 60)).toMatch(/lost precision/);
    expect(message('5')).toMatch(/non-negative integer/);
  });

  it('has an integer JSON Schema, also through describe, meta and optional', () => {
    // Goal: rpc_get_schema can describe u64 parameters (a transform has no schema of its own).
    const schema = z.strictObject({
      a: u64,
      b: u64.describe('b').optional(),
      c: u64AsNumber.meta({ title: 'c' }),
    });
    const json = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as {
      properties: Record<string, Record<string, unknown>>;
    };
    expect(json.properties.a).toEqual({ type: 'integer', minimum: 0, maximum: 18446744073709551615 });
    expect(json.properties.b).toMatchObject({ type: 'integer', minimum: 0, description: 'b' });
    expect(json.properties.c).toEqual({ type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, title: 'c' });
  });
});

describe('u64AsNumber', () => {
  it('outputs a number for values within 2^53-1, from either input form', () => {
    // Goal: sizes and indexes arrive as plain numbers.
    expect(u64AsNumber.parse(4096n)).toBe(4096);
    expect(u64AsNumber.parse(Number.MAX_SAFE_INTEGER)).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('rejects values above 2^53-1 with a message naming the limit', () => {
    // Goal: a too-large size is refused clearly rather than silently rounded.
    const result = u64AsNumber.safeParse(BigInt(Number.MAX_SAFE_INTEGER) + 1n);
    expect(result.success).toBe(false);
    expect(result.error?.issues[0]?.message).toMatch(/above 9007199254740991/);
    expect(u64AsNumber.safeParse(u64Max + 1n).error?.issues[0]?.message).toMatch(/outside/);
  });
});
