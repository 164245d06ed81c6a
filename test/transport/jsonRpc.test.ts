// The JSON-RPC dispatcher on its own: envelopes, ids, notifications, batches, params and error mapping.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { rpcBatchLengthMax } from '../../src/constants.ts';
import { StorageError } from '../../src/errors.ts';
import { rpcError } from '../../src/transport/errorMapping.ts';
import { u64 } from '../../src/transport/json64.ts';
import { createDispatcher, serializeResponse } from '../../src/transport/jsonRpc.ts';
import type { DispatcherOptions } from '../../src/transport/jsonRpc.ts';
import { defineMethod } from '../../src/transport/methodTable.ts';
import type { Connection, MethodTable } from '../../src/transport/methodTable.ts';

const connection: Connection = { id: 1, notify: () => true, onClose: () => undefined };

/** A promise with its resolve function exposed. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => undefined;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

function makeTable(calls: string[] = []) {
  const gate = deferred();
  const table: MethodTable = {
    echo: defineMethod({
      description: 'returns its text',
      priority: 'foreground',
      params: z.strictObject({ text: z.string(), nested: z.strictObject({ n: z.number() }).optional() }),
      result: z.string(),
      handler: ({ text }) => {
        calls.push(`echo:${text}`);
        return text;
      },
    }),
    options_only: defineMethod({
      description: 'all params optional',
      priority: 'foreground',
      params: z.strictObject({ verbose: z.boolean().optional() }),
      result: z.boolean(),
      handler: ({ verbose }) => verbose ?? false,
    }),
    nothing: defineMethod({
      description: 'returns undefined',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.null(),
      handler: () => undefined as unknown as null,
    }),
    add_one: defineMethod({
      description: 'u64 arithmetic',
      priority: 'foreground',
      params: z.strictObject({ value: u64 }),
      result: z.bigint(),
      handler: ({ value }) => value + 1n,
    }),
    no_device: defineMethod({
      description: 'throws ENODEV',
      priority: 'foreground',
      params: z.strictObject({ detail: z.string().optional() }),
      result: z.never(),
      handler: ({ detail }) => {
        throw new StorageError('ENODEV', detail === undefined ? {} : { detail });
      },
    }),
    interrupted: defineMethod({
      description: 'throws an internal EINTR',
      priority: 'background',
      params: z.strictObject({}),
      result: z.never(),
      handler: async () => {
        throw new StorageError('EINTR', { wire: 'internal', detail: 'preempted by delete', data: { cluster_index: 7 } });
      },
    }),
    crash: defineMethod({
      description: 'a bug',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.never(),
      handler: () => {
        throw new Error('secret at /var/lib/lvnode/private.key');
      },
    }),
    wait_gate: defineMethod({
      description: 'resolves when open_gate runs',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.string(),
      handler: async () => {
        await gate.promise;
        return 'waited';
      },
    }),
    open_gate: defineMethod({
      description: 'opens the gate',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.string(),
      handler: () => {
        gate.resolve();
        return 'opened';
      },
    }),
  };
  return table;
}

function dispatcher(options: Partial<DispatcherOptions> = {}, calls: string[] = []) {
  return createDispatcher(makeTable(calls), { allowBatch: true, ...options });
}

function request(id: unknown, method: string, params?: unknown): Record<string, unknown> {
  return params === undefined ? { jsonrpc: '2.0', id, method } : { jsonrpc: '2.0', id, method, params };
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('single requests', () => {
  it('answers with jsonrpc, id and result in that member order', async () => {
    // Goal: replies look exactly like SPDK's (begin_response writes jsonrpc, id, then result).
    const reply = await dispatcher().handleMessage(request(3, 'echo', { text: 'hi' }), connection);
    expect(reply).toEqual({ jsonrpc: '2.0', id: 3, result: 'hi' });
    expect(Object.keys(reply as object)).toEqual(['jsonrpc', 'id', 'result']);
    expect(Object.keys((await dispatcher().handleMessage(request(4, 'nope'), connection)) as object)).toEqual([
      'jsonrpc',
      'id',
      'error',
    ]);
  });

  it('echoes string, number, bigint and null ids verbatim', async () => {
    // Goal: clients match replies by id, including ids beyond 2^53.
    const d = dispatcher();
    for (const id of ['abc', 42, 18446744073709551615n, null]) {
      expect(await d.handleMessage(request(id, 'echo', { text: 'x' }), connection)).toMatchObject({ id, result: 'x' });
    }
  });

  it('refuses an id of another type with -32600 and id null', async () => {
    // Goal: an object or boolean id is an invalid request, answered with id null.
    const d = dispatcher();
    for (const id of [{ a: 1 }, true, [1]]) {
      expect(await d.handleMessage(request(id, 'echo', { text: 'x' }), connection)).toEqual({
        jsonrpc: '2.0',
        id: null,
        error: { code: -32600, message: 'Invalid request', data: { detail: 'id must be a string, a number or null' } },
      });
    }
  });

  it('refuses a jsonrpc version other than "2.0" and a non-string method', async () => {
    // Goal: the envelope is checked before any method runs.
    const calls: string[] = [];
    const d = dispatcher({}, calls);
    const wrongVersion = { jsonrpc: '1.0', id: 5, method: 'echo', params: { text: 'x' } };
    expect(await d.handleMessage(wrongVersion, connection)).toMatchObject({ id: 5, error: { code: -32600 } });
    expect(await d.handleMessage({ jsonrpc: '2.0', id: 6, method: 12 }, connection)).toMatchObject({
      id: 6,
      error: { code: -32600 },
    });
    expect(await d.handleMessage('just a string', connection)).toMatchObject({ id: null, error: { code: -32600 } });
    expect(calls).toEqual([]);
  });

  it('answers an unknown method, including prototype member names, with -32601', async () => {
    // Goal: "toString" or "__proto__" must not reach Object.prototype members.
    const d = dispatcher();
    for (const method of ['bdev_nope', 'toString', '__proto__', 'constructor', 'hasOwnProperty']) {
      expect(await d.handleMessage(request(1, method), connection)).toEqual({
        jsonrpc: '2.0',
        id: 1,
        error: { code: -32601, message: 'Method not found' },
      });
    }
  });

  it('treats absent and null params as {} and refuses array params with -32602', async () => {
    // Goal: SPDK clients send params null when there are none; positional params are not supported.
    const d = dispatcher();
    expect(await d.handleMessage(request(1, 'options_only'), connection)).toMatchObject({ result: false });
    expect(await d.handleMessage(request(2, 'options_only', null), connection)).toMatchObject({ result: false });
    expect(await d.handleMessage(request(3, 'options_only', [true]), connection)).toMatchObject({
      id: 3,
      error: { code: -32602, message: 'Invalid params', data: { issues: [{ path: '', message: expect.any(String) }] } },
    });
  });

  it('answers an unknown param key with -32602 naming the key in data.field', async () => {
    // Goal: strict params are enforced, and the client learns which key was wrong.
    const reply = await dispatcher().handleMessage(request(9, 'echo', { text: 'x', bogus: 1 }), connection);
    expect(reply).toEqual({
      jsonrpc: '2.0',
      id: 9,
      error: {
        code: -32602,
        message: 'Invalid params',
        data: { issues: [{ path: 'bogus', message: 'unknown parameter' }], field: 'bogus' },
      },
    });
  });

  it('names a nested failing field with a dotted path', async () => {
    // Goal: data.field points at the first failing field wherever it is.
    const reply = await dispatcher().handleMessage(request(1, 'echo', { text: 'x', nested: { n: 'one' } }), connection);
    expect(reply).toMatchObject({ error: { code: -32602, data: { field: 'nested.n' } } });
    const missing = await dispatcher().handleMessage(request(2, 'echo', {}), connection);
    expect(missing).toMatchObject({ error: { code: -32602, data: { field: 'text' } } });
  });

  it('passes exact u64 params to handlers and returns their bigint results as-is', async () => {
    // Goal: 64-bit values survive the dispatcher both ways.
    const reply = await dispatcher().handleMessage(request(1, 'add_one', { value: 18446744073709551614n }), connection);
    expect(reply).toEqual({ jsonrpc: '2.0', id: 1, result: 18446744073709551615n });
  });

  it('answers a handler that returns nothing with result null', async () => {
    // Goal: a reply always carries result or error.
    expect(await dispatcher().handleMessage(request(1, 'nothing'), connection)).toEqual({
      jsonrpc: '2.0',
      id: 1,
      result: null,
    });
  });
});

describe('error mapping', () => {
  it('maps a StorageError ENODEV to code -19 "No such device"', async () => {
    // Goal: real SPDK clients branch on -19 for a missing bdev.
    const d = dispatcher();
    expect(await d.handleMessage(request(1, 'no_device'), connection)).toEqual({
      jsonrpc: '2.0',
      id: 1,
      error: { code: -19, message: 'No such device' },
    });
    expect(await d.handleMessage(request(2, 'no_device', { detail: 'lvs/vol1' }), connection)).toEqual({
      jsonrpc: '2.0',
      id: 2,
      error: { code: -19, message: 'No such device', data: { detail: 'lvs/vol1' } },
    });
  });

  it('maps an internal EINTR to -32603 "Interrupted system call" with detail and data', async () => {
    // Goal: a preempted registration reads exactly as in SPDK, with lvnode's extra data alongside.
    expect(await dispatcher().handleMessage(request(1, 'interrupted'), connection)).toEqual({
      jsonrpc: '2.0',
      id: 1,
      error: {
        code: -32603,
        message: 'Interrupted system call',
        data: { cluster_index: 7, detail: 'preempted by delete' },
      },
    });
  });

  it('answers any other error with a bare -32603 and logs the stack to stderr only', async () => {
    // Goal: bugs do not leak paths or messages to clients, but are not lost either.
    const written: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    const reply = await dispatcher().handleMessage(request(1, 'crash'), connection);
    expect(reply).toEqual({ jsonrpc: '2.0', id: 1, error: { code: -32603, message: 'Internal error' } });
    expect(JSON.stringify(reply)).not.toContain('secret');
    expect(written).toHaveLength(1);
    const line = JSON.parse(written[0] ?? '') as Record<string, unknown>;
    expect(line).toMatchObject({ level: 'error', msg: 'unhandled error in handler', method: 'crash' });
    expect(line.error).toContain('secret at /var/lib/lvnode/private.key');
  });
});

describe('notifications', () => {
  it('runs a notification but sends no reply, even when it fails', async () => {
    // Goal: JSON-RPC 2.0 never answers a request without an id.
    const calls: string[] = [];
    const d = dispatcher({}, calls);
    expect(await d.handleMessage({ jsonrpc: '2.0', method: 'echo', params: { text: 'n' } }, connection)).toBeUndefined();
    expect(calls).toEqual(['echo:n']);
    expect(await d.handleMessage({ jsonrpc: '2.0', method: 'unknown_method' }, connection)).toBeUndefined();
    expect(await d.handleMessage({ jsonrpc: '2.0', method: 'echo', params: { bad: 1 } }, connection)).toBeUndefined();
    expect(await d.handleMessage({ jsonrpc: '2.0', method: 'no_device' }, connection)).toBeUndefined();
  });

  it('still answers a malformed request that has no id, with id null', async () => {
    // Goal: an invalid envelope is not a notification (JSON-RPC 2.0 §7 examples).
    expect(await dispatcher().handleMessage({ jsonrpc: '2.0', method: 1, params: 'bar' }, connection)).toMatchObject({
      id: null,
      error: { code: -32600 },
    });
  });
});

describe('batches', () => {
  it('answers a batch as an array in request order, leaving out notifications', async () => {
    // Goal: mixed batches get one reply per request that has an id.
    const calls: string[] = [];
    const reply = await dispatcher({}, calls).handleMessage(
      [
        request(1, 'echo', { text: 'a' }),
        { jsonrpc: '2.0', method: 'echo', params: { text: 'note' } },
        request('two', 'nope'),
        42,
        request(3, 'no_device'),
      ],
      connection,
    );
    expect(reply).toEqual([
      { jsonrpc: '2.0', id: 1, result: 'a' },
      { jsonrpc: '2.0', id: 'two', error: { code: -32601, message: 'Method not found' } },
      { jsonrpc: '2.0', id: null, error: { code: -32600, message: 'Invalid request', data: expect.any(Object) } },
      { jsonrpc: '2.0', id: 3, error: { code: -19, message: 'No such device' } },
    ]);
    expect(calls).toContain('echo:note');
  });

  it('runs the requests of a batch concurrently', async () => {
    // Goal: wait_gate only finishes once open_gate, later in the same batch, has run.
    const reply = await dispatcher().handleMessage([request(1, 'wait_gate'), request(2, 'open_gate')], connection);
    expect(reply).toEqual([
      { jsonrpc: '2.0', id: 1, result: 'waited' },
      { jsonrpc: '2.0', id: 2, result: 'opened' },
    ]);
  });

  it('sends nothing for a batch of notifications only', async () => {
    // Goal: an all-notification batch gets no reply at all, not an empty array.
    const batch = [
      { jsonrpc: '2.0', method: 'echo', params: { text: 'a' } },
      { jsonrpc: '2.0', method: 'echo', params: { text: 'b' } },
    ];
    expect(await dispatcher().handleMessage(batch, connection)).toBeUndefined();
  });

  it('answers an empty or oversized batch with a single -32600 object', async () => {
    // Goal: refused batches get one error object (not an array) with id null.
    const d = dispatcher();
    expect(await d.handleMessage([], connection)).toMatchObject({ id: null, error: { code: -32600 } });
    const tooLong = Array.from({ length: rpcBatchLengthMax + 1 }, (_, index) => request(index, 'options_only'));
    const reply = await d.handleMessage(tooLong, connection);
    expect(Array.isArray(reply)).toBe(false);
    expect(reply).toMatchObject({ id: null, error: { code: -32600 } });
  });

  it('refuses every batch with -32600 when batches are not allowed', async () => {
    // Goal: the SPDK Unix-socket mode answers arrays like SPDK does.
    const calls: string[] = [];
    const reply = await dispatcher({ allowBatch: false }, calls).handleMessage(
      [request(1, 'echo', { text: 'a' })],
      connection,
    );
    expect(reply).toMatchObject({ id: null, error: { code: -32600 } });
    expect(calls).toEqual([]);
  });
});

describe('dispatcher helpers', () => {
  it('reports each call of a known method with its latency and outcome', async () => {
    // Goal: metrics see method, latency from the injected clock, and whether it succeeded.
    const reports: Array<[string, number, boolean]> = [];
    let nowMs = 0;
    const d = dispatcher({
      nowMs: () => (nowMs += 5),
      onCall: (method, latencyMs, ok) => reports.push([method, latencyMs, ok]),
    });
    await d.handleMessage(request(1, 'echo', { text: 'a' }), connection);
    await d.handleMessage(request(2, 'no_device'), connection);
    await d.handleMessage(request(3, 'not_in_table'), connection);
    expect(reports).toEqual([
      ['echo', 5, true],
      ['no_device', 5, false],
    ]);
  });

  it('builds refusals for every request that expects a reply, and counts batch elements', () => {
    // Goal: the in-flight limit can answer a message without running it.
    const d = dispatcher();
    const error = rpcError('tooManyRequests');
    const batch = [request(1, 'echo'), { jsonrpc: '2.0', method: 'echo' }, request(2, 'echo')];
    expect(d.requestCount(batch)).toBe(3);
    expect(d.requestCount(request(1, 'echo'))).toBe(1);
    expect(d.reject(batch, error)).toEqual([
      { jsonrpc: '2.0', id: 1, error: { code: -32000, message: 'Too many requests in flight' } },
      { jsonrpc: '2.0', id: 2, error: { code: -32000, message: 'Too many requests in flight' } },
    ]);
    expect(d.reject({ jsonrpc: '2.0', method: 'echo' }, error)).toBeUndefined();
  });

  it('serializes a reply whose result cannot be written as -32603 for that request only', () => {
    // Goal: a handler returning a cycle still gets its client an answer, and the batch survives.
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const cyclic: Record<string, unknown> = { big: 1n };
    cyclic.self = cyclic;
    const text = serializeResponse([
      { jsonrpc: '2.0', id: 1, result: cyclic },
      { jsonrpc: '2.0', id: 2, result: 18446744073709551615n },
    ]);
    expect(text).toBe(
      '[{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error"}},' +
        '{"jsonrpc":"2.0","id":2,"result":18446744073709551615}]',
    );
  });
});
