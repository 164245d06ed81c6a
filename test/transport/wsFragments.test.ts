// A long reply goes out as one WebSocket message in several frames, with turns of the event loop
// between them (SPEC §10); nothing else may come between its frames (RFC 6455 §5.4), so other
// replies and notifications sent meanwhile wait and follow it, each intact.
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { RpcClient } from '../../src/cli/rpcClient.ts';
import { createDispatcher } from '../../src/transport/jsonRpc.ts';
import { type Connection, defineMethod } from '../../src/transport/methodTable.ts';
import { type RpcServer, startRpcServer } from '../../src/transport/wsServer.ts';

let server: RpcServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const rowCount = 20_000;
const rows = Array.from({ length: rowCount }, (_, index) => ({ index, name: `lvol-${index}`, pad: 'x'.repeat(200), big: (1n << 63n) + BigInt(index) }));

describe('replies in pieces', () => {
  it('arrive whole and in order with the notifications and replies sent while they were going out', { timeout: 20_000 }, async () => {
    let turnsWhileSending = 0;
    let subscriber: Connection | undefined;
    const table = {
      long: defineMethod({ description: 'long', priority: 'foreground', params: z.object({}), result: z.array(z.unknown()), handler: () => rows }),
      ping: defineMethod({ description: 'ping', priority: 'foreground', params: z.object({ n: z.number() }), result: z.number(), handler: (p) => p.n }),
      watch: defineMethod({
        description: 'watch',
        priority: 'foreground',
        params: z.object({}),
        result: z.literal(true),
        handler: (_p, connection) => {
          subscriber = connection;
          return true as const;
        },
      }),
    };
    server = await startRpcServer({
      host: '127.0.0.1',
      port: 0,
      dispatcher: createDispatcher(table, { allowBatch: true }),
      insecureNoAuth: true,
      log: () => {},
      // A turn after every frame, so that other sends surely fall between two of them.
      limits: { replySliceMs: 0 },
    });
    const client = await RpcClient.connect(`ws://127.0.0.1:${server.address.port}/`);
    const notes: unknown[] = [];
    client.on('note', (params) => notes.push(params));
    await client.call('watch');
    let sending = true;
    const order: string[] = [];
    const tick = (): void => {
      if (!sending) return;
      turnsWhileSending++;
      subscriber!.notify('note', { turn: turnsWhileSending });
      setImmediate(tick);
    };
    const long = client.call<typeof rows>('long').then((result) => {
      order.push('long');
      return result;
    });
    setImmediate(tick);
    const pings = Array.from({ length: 20 }, (_, n) => client.call<number>('ping', { n }).then((value) => order.push(`ping${value}`)));
    const result = await long;
    await Promise.all(pings);
    sending = false;
    expect(result).toHaveLength(rowCount);
    expect(result[rowCount - 1]).toEqual(rows[rowCount - 1]);
    expect(result[12_345]!.big).toBe((1n << 63n) + 12_345n);
    expect(order).toHaveLength(21);
    // Notifications sent at every turn all arrived, in order, none lost inside the long reply.
    await new Promise((resolve) => setTimeout(resolve, 50));
    const turns = notes.map((note) => (note as { turn: number }).turn);
    expect(turns.length).toBeGreaterThan(10);
    expect(turns).toEqual([...turns].sort((a, b) => a - b));
    expect(new Set(turns).size).toBe(turns.length);
    expect(client.raw.readyState).toBe(client.raw.OPEN);
    await client.close();
  });
});
