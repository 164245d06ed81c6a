// SPDK's Unix-socket framing end to end: a real socket, a client that writes like SPDK's clients.
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { StorageError } from '../../src/errors.ts';
import { u64 } from '../../src/transport/json64.ts';
import { createDispatcher } from '../../src/transport/jsonRpc.ts';
import { type MethodTable, defineMethod } from '../../src/transport/methodTable.ts';
import { JsonValueSplitter, type SpdkSocketServer, startSpdkSocketServer } from '../../src/transport/spdkSocket.ts';
import { SpdkSocketClient } from '../spdkSocketClient.ts';

const longRows = Array.from({ length: 20_000 }, (_, index) => ({ index, name: `lvol-${index}`, pad: 'x'.repeat(200) }));
const gates = new Map<string, () => void>();
const gate = (key: string) => new Promise<void>((resolve) => gates.set(key, resolve));

const table: MethodTable = {
  slow: defineMethod({
    description: 'answers when its gate opens',
    priority: 'foreground',
    params: z.strictObject({ key: z.string() }),
    result: z.string(),
    handler: async ({ key }) => (await gate(key), `slow ${key}`),
  }),
  echo_u64: defineMethod({
    description: 'returns its u64',
    priority: 'foreground',
    params: z.strictObject({ value: u64 }),
    result: z.object({ value: z.bigint() }),
    handler: ({ value }) => ({ value }),
  }),
  long: defineMethod({
    description: 'a listing long enough to be written in pieces',
    priority: 'foreground',
    params: z.strictObject({}),
    result: z.array(z.unknown()),
    handler: () => longRows,
  }),
  no_params: defineMethod({
    description: 'takes nothing',
    priority: 'foreground',
    params: z.strictObject({}),
    result: z.boolean(),
    handler: () => true,
  }),
  // Named like SPDK methods, to see the per-method error flavor.
  bdev_lvol_create: defineMethod({
    description: 'fails as an asynchronous completion',
    priority: 'foreground',
    params: z.strictObject({ errno: z.enum(['ENOSPC', 'EEXIST']) }),
    result: z.string(),
    handler: ({ errno }) => {
      throw new StorageError(errno, { wire: errno === 'EEXIST' ? 'errno' : 'internal', detail: 'test' });
    },
  }),
  bdev_lvol_delete: defineMethod({
    description: 'fails as an asynchronous completion',
    priority: 'foreground',
    params: z.strictObject({}),
    result: z.boolean(),
    handler: () => {
      throw new StorageError('EBUSY', { wire: 'internal' });
    },
  }),
};

let dir: string | undefined;
let server: SpdkSocketServer | undefined;
const clients: SpdkSocketClient[] = [];

async function start(limits = {}): Promise<string> {
  const made = await mkdtemp(join(tmpdir(), 'lvnode-spdk-'));
  dir = made;
  const path = join(made, 'spdk.sock');
  server = await startSpdkSocketServer({ path, dispatcher: createDispatcher(table, { allowBatch: false, flavor: 'spdk' }), log: () => {}, limits });
  return path;
}

async function client(path: string): Promise<SpdkSocketClient> {
  const connected = await SpdkSocketClient.connect(path);
  clients.push(connected);
  return connected;
}

afterEach(async () => {
  for (const open of clients.splice(0)) open.socket.destroy();
  for (const open of gates.values()) open();
  gates.clear();
  await server?.close();
  server = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('SPDK Unix-socket framing', () => {
  it('splits back-to-back, multi-line values across arbitrary chunk boundaries', () => {
    const splitter = new JsonValueSplitter(1024);
    const text = '{\n\t"a": "}{\\"",\n\t"b": [1, {"c": 2}]\n}  \t\n{"d":3}[1]';
    const values: string[] = [];
    for (let index = 0; index < text.length; index += 3) values.push(...splitter.push(Buffer.from(text.slice(index, index + 3))).map(String));
    expect(values.map((value) => JSON.parse(value))).toEqual([{ a: '}{"', b: [1, { c: 2 }] }, { d: 3 }, [1]]);
    expect(() => new JsonValueSplitter(1024).push(Buffer.from('42'))).toThrow(SyntaxError);
    expect(() => new JsonValueSplitter(8).push(Buffer.from('{"long": "value"'))).toThrow(RangeError);
  });

  it('answers tab-indented requests out of order, one object and "\\n" each, members in SPDK order', async () => {
    const path = await start();
    const spdk = await client(path);
    const slow = spdk.send('slow', { key: 'a' });
    const fast = spdk.send('echo_u64', { value: 18446744073709551615n });
    expect(await spdk.reply(fast)).toEqual({ jsonrpc: '2.0', id: fast, result: { value: 18446744073709551615n } });
    // The running request did not hold back the later one.
    expect(spdk.replies).toHaveLength(1);
    gates.get('a')!();
    await spdk.reply(slow);
    expect(spdk.rawReplies[0]).toBe(`{"jsonrpc":"2.0","id":${String(fast)},"result":{"value":18446744073709551615}}`);
    expect(spdk.rawReplies[1]).toBe(`{"jsonrpc":"2.0","id":${String(slow)},"result":"slow a"}`);
  });

  it('writes a long reply in pieces with turns between them, and no other reply comes between its pieces', { timeout: 20_000 }, async () => {
    // A turn after every piece, so that the other replies surely complete while it is written.
    const path = await start({ replySliceMs: 0 });
    const spdk = await client(path);
    const long = spdk.send('long');
    // Asked once the long reply has begun to arrive: they complete while it is still written.
    await new Promise((resolve) => spdk.socket.once('data', resolve));
    const echoes = Array.from({ length: 30 }, (_, n) => spdk.send('echo_u64', { value: BigInt(n) }));
    const reply = (await spdk.reply(long)) as { result: Array<{ index: number }> };
    expect(reply.result).toHaveLength(longRows.length);
    expect(reply.result[19_999]).toEqual(longRows[19_999]);
    for (const [n, id] of echoes.entries()) expect(await spdk.reply(id)).toEqual({ jsonrpc: '2.0', id, result: { value: n } });
    // Every reply is one whole line of JSON.
    expect(spdk.rawReplies).toHaveLength(31);
  });

  it('accepts params absent or null; answers no-id and null-id requests only on error', async () => {
    const path = await start();
    const spdk = await client(path);
    expect(await spdk.call('no_params')).toBe(true);
    expect(await spdk.call('no_params', null)).toBe(true);
    spdk.writeRaw('{"jsonrpc":"2.0","method":"no_params"}');
    spdk.writeRaw('{"jsonrpc":"2.0","method":"no_params","id":null}');
    spdk.writeRaw('{"jsonrpc":"2.0","method":"no_such_method"}');
    const error = await spdk.waitFor((reply) => reply.error !== undefined);
    expect(error).toEqual({ jsonrpc: '2.0', id: null, error: { code: -32601, message: 'Method not found' } });
    expect(await spdk.call('no_params')).toBe(true);
    // Only the error and the two calls were answered.
    expect(spdk.replies).toHaveLength(4);
  });

  it('uses SPDK error codes: decode failures -32603, batches -32600, operation failures per method', async () => {
    const path = await start();
    const spdk = await client(path);
    expect((await spdk.reply(spdk.send('echo_u64', { value: 1, extra: 2 }))).error).toMatchObject({ code: -32603, message: 'spdk_json_decode_object failed' });
    expect((await spdk.reply(spdk.send('bdev_lvol_create', { errno: 'ENOSPC' }))).error).toMatchObject({ code: -32602, message: 'No space left on device' });
    expect((await spdk.reply(spdk.send('bdev_lvol_create', { errno: 'EEXIST' }))).error).toMatchObject({ code: -17, message: 'File exists' });
    expect((await spdk.reply(spdk.send('bdev_lvol_delete'))).error).toMatchObject({ code: -32603, message: 'Device or resource busy' });
    spdk.writeRaw('[{"jsonrpc":"2.0","method":"no_params","id":1}]');
    expect((await spdk.waitFor((reply) => reply.id === null)).error).toMatchObject({ code: -32600 });
  });

  it('answers unparseable input with -32700 and closes the connection; other clients go on', async () => {
    const path = await start();
    const bad = await client(path);
    const good = await client(path);
    bad.writeRaw('{"jsonrpc": "2.0", "method": nope}');
    expect(await bad.waitFor((reply) => reply.error !== undefined)).toEqual({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
    await bad.closed;
    expect(await good.call('no_params')).toBe(true);
  });

  it('bounds requests in flight per connection by pausing the socket, not by refusing', async () => {
    const path = await start({ inFlightPerConnectionMax: 2 });
    const spdk = await client(path);
    const ids = ['x', 'y', 'z'].map((key) => spdk.send('slow', { key }));
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Two are running; the third waits unread.
    expect([...gates.keys()].sort()).toEqual(['x', 'y']);
    gates.get('x')!();
    await spdk.reply(ids[0]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(gates.has('z')).toBe(true);
    gates.get('y')!();
    gates.get('z')!();
    expect((await spdk.reply(ids[2])).result).toBe('slow z');
  });

  it('creates the socket owner-only, replaces a stale one, and refuses a live one or a regular file', async () => {
    const path = await start();
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    // A second server on a live socket is refused.
    await expect(startSpdkSocketServer({ path, dispatcher: createDispatcher(table, { allowBatch: false, flavor: 'spdk' }) })).rejects.toThrow(/in use/);
    // A stale socket (nobody listening) is replaced.
    const stale = join(dir!, 'stale.sock');
    // A process that dies with SIGKILL while listening leaves its socket file behind.
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect((await stat(stale)).isSocket()).toBe(true);
    const replaced = await startSpdkSocketServer({ path: stale, dispatcher: createDispatcher(table, { allowBatch: false, flavor: 'spdk' }), log: () => {} });
    expect(await (await client(stale)).call('no_params')).toBe(true);
    await replaced.close();
    const file = join(dir!, 'file.sock');
    await writeFile(file, 'not a socket');
    await expect(startSpdkSocketServer({ path: file, dispatcher: createDispatcher(table, { allowBatch: false, flavor: 'spdk' }) })).rejects.toThrow(/not a socket/);
  });
});

describe('SPDK Unix socket, half-open clients', () => {
  it('answers every request of a client that closed its side after sending, then ends', async () => {
    const path = await start();
    const socket = connect(path);
    let text = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
    const ended = new Promise((resolve) => socket.once('end', resolve));
    socket.end('{"jsonrpc":"2.0","method":"no_params","id":1}\n{"jsonrpc":"2.0","method":"slow","params":{"key":"h"},"id":2}');
    await new Promise((resolve) => setTimeout(resolve, 30));
    gates.get('h')!();
    await ended;
    expect(text).toBe('{"jsonrpc":"2.0","id":1,"result":true}\n{"jsonrpc":"2.0","id":2,"result":"slow h"}\n');
  });
});
