// The WebSocket server end to end: a real server on a loopback port and the real `ws` client.
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import type { ClientOptions } from 'ws';
import { z } from 'zod';
import { clientBufferedBytesMax, kibBytes, mibBytes } from '../../src/constants.ts';
import { parseJson, u64 } from '../../src/transport/json64.ts';
import { createDispatcher } from '../../src/transport/jsonRpc.ts';
import { defineMethod } from '../../src/transport/methodTable.ts';
import type { Connection, MethodTable } from '../../src/transport/methodTable.ts';
import { startRpcServer } from '../../src/transport/wsServer.ts';
import type { LogRecord, RpcServer, RpcServerOptions } from '../../src/transport/wsServer.ts';

const token = 'test-token-0123456789';

/** Gates that the `slow` method waits on; the test opens them by key. */
class Gates {
  private readonly gates = new Map<string, { promise: Promise<void>; open: () => void }>();

  get(key: string): { promise: Promise<void>; open: () => void } {
    let gate = this.gates.get(key);
    if (gate === undefined) {
      let open = (): void => undefined;
      const promise = new Promise<void>((resolve) => {
        open = resolve;
      });
      gate = { promise, open };
      this.gates.set(key, gate);
    }
    return gate;
  }
}

interface Fixture {
  server: RpcServer;
  gates: Gates;
  logs: LogRecord[];
  cleanups: string[];
  url: string;
}

function makeTable(gates: Gates, cleanups: string[]): MethodTable {
  return {
    fast: defineMethod({
      description: 'answers at once',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.string(),
      handler: () => 'fast',
    }),
    slow: defineMethod({
      description: 'answers when its gate opens',
      priority: 'foreground',
      params: z.strictObject({ key: z.string() }),
      result: z.string(),
      handler: async ({ key }) => {
        await gates.get(key).promise;
        return `slow ${key}`;
      },
    }),
    echo_u64: defineMethod({
      description: 'returns its u64',
      priority: 'foreground',
      params: z.strictObject({ value: u64 }),
      result: z.object({ value: z.bigint() }),
      handler: ({ value }) => ({ value }),
    }),
    subscribe: defineMethod({
      description: 'sends one notification and registers a cleanup',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.boolean(),
      handler: (_params, connection: Connection) => {
        connection.onClose(() => cleanups.push(`closed ${connection.id}`));
        return connection.notify('event.test', { checksum: 13333283586479230977n });
      },
    }),
    flood: defineMethod({
      description: 'notifies until the client is reported as falling behind',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.number(),
      handler: (_params, connection: Connection) => {
        let sentCount = 0;
        while (sentCount < floodNotificationsMax && connection.notify('event.flood', { filler: floodFiller })) {
          sentCount += 1;
        }
        return sentCount;
      },
    }),
  };
}

const floodFiller = 'f'.repeat(256 * kibBytes);
// Far more than the send buffer limit plus any kernel socket buffer can hold.
const floodNotificationsMax = (64 * clientBufferedBytesMax) / floodFiller.length;

const servers: RpcServer[] = [];
const clients: WebSocket[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.terminate();
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

async function startFixture(options: Partial<RpcServerOptions> = {}): Promise<Fixture> {
  const gates = new Gates();
  const logs: LogRecord[] = [];
  const cleanups: string[] = [];
  const dispatcher = createDispatcher(makeTable(gates, cleanups), { allowBatch: true });
  const server = await startRpcServer({
    host: '127.0.0.1',
    port: 0,
    dispatcher,
    log: (record) => logs.push(record),
    // Without a token the fixture says so by name, as lvnode serve --insecure-no-auth does.
    ...(options.token ? {} : { insecureNoAuth: true }),
    ...options,
  });
  servers.push(server);
  return { server, gates, logs, cleanups, url: `ws://127.0.0.1:${server.address.port}/` };
}

/** A real ws client that records every text frame it receives. */
class TestClient {
  readonly ws: WebSocket;
  readonly texts: string[] = [];
  private readonly parsed: Array<Record<string, unknown>> = [];
  private readonly waiters: Array<() => void> = [];

  constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data) => {
      const text = String(data);
      this.texts.push(text);
      this.parsed.push(parseJson(text) as Record<string, unknown>);
      for (const waiter of this.waiters.splice(0)) waiter();
    });
  }

  replies(): Array<Record<string, unknown>> {
    return [...this.parsed];
  }

  /** Resolves with the first received message that satisfies `predicate`. */
  async waitFor(predicate: (reply: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    for (;;) {
      const found = this.replies().find(predicate);
      if (found !== undefined) return found;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  async call(id: number, method: string, params: unknown = {}): Promise<Record<string, unknown>> {
    this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    return this.waitFor((reply) => reply.id === id);
  }

  closed(): Promise<number> {
    return new Promise((resolve) => this.ws.once('close', (code) => resolve(code)));
  }
}

async function connect(url: string, options: ClientOptions = {}): Promise<TestClient> {
  const ws = new WebSocket(url, options);
  clients.push(ws);
  const client = new TestClient(ws);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return client;
}

/** The HTTP status of a refused upgrade. */
function refusedStatus(url: string, options: ClientOptions = {}): Promise<number> {
  const ws = new WebSocket(url, options);
  ws.on('error', () => undefined); // aborting the refused handshake below reports one
  return new Promise((resolve, reject) => {
    ws.once('unexpected-response', (req, res) => {
      resolve(res.statusCode ?? 0);
      req.destroy();
    });
    ws.once('open', () => {
      clients.push(ws);
      reject(new Error('the upgrade was accepted'));
    });
  });
}

describe('startRpcServer', () => {
  it('listens on port 0 and reports the real port', async () => {
    // Goal: tests and the CLI can ask for any free port.
    const { server } = await startFixture();
    expect(server.address.host).toBe('127.0.0.1');
    expect(server.address.port).toBeGreaterThan(0);
  });

  it('refuses to listen on a non-loopback address without a token', async () => {
    // Goal: an unauthenticated node is never reachable from the network.
    const dispatcher = createDispatcher({}, { allowBatch: true });
    await expect(startRpcServer({ host: '0.0.0.0', port: 0, dispatcher, insecureNoAuth: true })).rejects.toThrow(/without a token/);
    await expect(startRpcServer({ host: '127.0.0.1', port: 0, dispatcher })).rejects.toThrow(/needs a token/);
  });

  it('answers a later fast request before an earlier slow one on the same connection', async () => {
    // Goal: a long request never delays a later one; replies go out as handlers finish.
    const { url, gates } = await startFixture();
    const client = await connect(url);
    client.ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'slow', params: { key: 'a' } }));
    expect(await client.call(2, 'fast')).toEqual({ jsonrpc: '2.0', id: 2, result: 'fast' });
    expect(client.replies().some((reply) => reply.id === 1)).toBe(false);
    gates.get('a').open();
    expect(await client.waitFor((reply) => reply.id === 1)).toEqual({ jsonrpc: '2.0', id: 1, result: 'slow a' });
    expect(client.replies().map((reply) => reply.id)).toEqual([2, 1]);
  });

  it('answers malformed JSON with -32700 and keeps the connection usable', async () => {
    // Goal: in WebSocket mode a bad frame costs one error reply, not the connection.
    const { url } = await startFixture();
    const client = await connect(url);
    client.ws.send('{"jsonrpc":"2.0","id":1,"method":');
    const parseError = await client.waitFor((reply) => (reply.error as { code?: number } | undefined)?.code === -32700);
    expect(parseError).toEqual({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
    expect(await client.call(2, 'fast')).toMatchObject({ result: 'fast' });
  });

  it('closes a connection that sends an oversized frame with 1009 while others keep working', async () => {
    // Goal: the frame limit hits only the offender, and the node survives it.
    const { url, server } = await startFixture();
    const offender = await connect(url);
    const bystander = await connect(url);
    const closed = offender.closed();
    offender.ws.send('x'.repeat(2 * mibBytes));
    expect(await closed).toBe(1009);
    expect(await bystander.call(1, 'fast')).toMatchObject({ result: 'fast' });
    const newcomer = await connect(url);
    expect(await newcomer.call(1, 'fast')).toMatchObject({ result: 'fast' });
    await waitUntil(() => server.connectionCount() === 2);
  });

  it('closes a connection that sends a binary frame with 1003', async () => {
    // Goal: only JSON text frames are accepted.
    const { url } = await startFixture();
    const client = await connect(url);
    const closed = client.closed();
    client.ws.send(Buffer.from('{"jsonrpc":"2.0","id":1,"method":"fast"}'));
    expect(await closed).toBe(1003);
  });

  it('round-trips 2^64-1 exactly in the reply text', async () => {
    // Goal: a u64 parameter and result are written as the exact integer, never rounded or quoted.
    const { url } = await startFixture();
    const client = await connect(url);
    client.ws.send('{"jsonrpc":"2.0","id":7,"method":"echo_u64","params":{"value":18446744073709551615}}');
    await client.waitFor((reply) => reply.id === 7);
    expect(client.texts).toEqual(['{"jsonrpc":"2.0","id":7,"result":{"value":18446744073709551615}}']);
  });

  it('answers a request beyond the in-flight limit with -32000 at once, and frees slots as replies go out', async () => {
    // Goal: a client cannot queue unbounded work; its excess requests fail fast and it can retry.
    const { url, gates } = await startFixture({ limits: { inFlightPerConnectionMax: 2 } });
    const client = await connect(url);
    client.ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'slow', params: { key: 'a' } }));
    client.ws.send(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'slow', params: { key: 'b' } }));
    expect(await client.call(3, 'fast')).toEqual({
      jsonrpc: '2.0',
      id: 3,
      error: { code: -32000, message: 'Too many requests in flight', data: { limit: 2 } },
    });
    gates.get('a').open();
    await client.waitFor((reply) => reply.id === 1);
    expect(await client.call(4, 'fast')).toMatchObject({ result: 'fast' });
    gates.get('b').open();
    expect(await client.waitFor((reply) => reply.id === 2)).toMatchObject({ result: 'slow b' });
  });

  it('budgets received frame bytes: past the budget it stops reading, and goes on as requests finish', async () => {
    // Goal (hostile finding 3, frames): parsed frames are held until their replies are written;
    // their bytes, not only their count, are bounded per connection and for the node.
    const { url, gates } = await startFixture({ limits: { frameBytesInFlightPerConnectionMax: 4 * kibBytes, frameBytesInFlightNodeMax: 6 * kibBytes } });
    const first = await connect(url);
    const second = await connect(url);
    const padding = 'p'.repeat(1500);
    const slow = (id: number, key: string) => JSON.stringify({ jsonrpc: '2.0', id, method: 'slow', params: { key }, padding });
    // ~1.6 KiB each: two fit the connection's 4 KiB, the third waits, unread, behind them.
    for (const [id, key] of [[1, 'a'], [2, 'b'], [3, 'c']] as const) first.ws.send(slow(id, key));
    // The node's 6 KiB: the second client gets one frame in, then waits too.
    second.ws.send(slow(11, 'x'));
    second.ws.send(slow(12, 'y'));
    await new Promise((resolve) => setTimeout(resolve, 100));
    // The waiting frames' gates are open, yet they are not answered: they were never read.
    gates.get('c').open();
    gates.get('y').open();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(first.replies()).toEqual([]);
    expect(second.replies()).toEqual([]);
    gates.get('a').open();
    gates.get('x').open();
    expect(await first.waitFor((reply) => reply.id === 3)).toHaveProperty('id', 3);
    expect(await second.waitFor((reply) => reply.id === 12)).toHaveProperty('id', 12);
    gates.get('b').open();
    expect(await first.waitFor((reply) => reply.id === 2)).toHaveProperty('id', 2);
  });

  it('answers a batch with an array of replies', async () => {
    // Goal: batches work over the socket and notifications inside them get no reply.
    const { url } = await startFixture();
    const client = await connect(url);
    client.ws.send(
      JSON.stringify([
        { jsonrpc: '2.0', id: 1, method: 'fast' },
        { jsonrpc: '2.0', method: 'fast' },
        { jsonrpc: '2.0', id: 2, method: 'missing' },
      ]),
    );
    await new Promise<void>((resolve) => client.ws.once('message', () => resolve()));
    expect(JSON.parse(client.texts[0] ?? '')).toEqual([
      { jsonrpc: '2.0', id: 1, result: 'fast' },
      { jsonrpc: '2.0', id: 2, error: { code: -32601, message: 'Method not found' } },
    ]);
  });

  it('delivers notifications from handlers and runs onClose cleanups once on close', async () => {
    // Goal: the Connection given to handlers can push events and learns when its client leaves.
    const { url, cleanups, logs } = await startFixture();
    const client = await connect(url);
    client.ws.send('{"jsonrpc":"2.0","id":1,"method":"subscribe","params":null}');
    const event = await client.waitFor((message) => message.method === 'event.test');
    expect(client.texts[0]).toBe('{"jsonrpc":"2.0","method":"event.test","params":{"checksum":13333283586479230977}}');
    expect(event).not.toHaveProperty('id');
    expect(await client.waitFor((reply) => reply.id === 1)).toMatchObject({ result: true });
    client.ws.close(1000);
    await client.closed();
    await waitUntil(() => cleanups.length > 0);
    expect(cleanups).toEqual(['closed 1']);
    expect(logs.filter((record) => record.msg.startsWith('ws connection'))).toEqual([
      { level: 'info', msg: 'ws connection opened', connection: 1, remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) },
      { level: 'info', msg: 'ws connection closed', connection: 1, code: 1000, reason: '' },
    ]);
  });

  it('drops notifications once a client that does not read falls behind', async () => {
    // Goal: a slow subscriber costs a bounded send buffer, never unbounded memory.
    const { url } = await startFixture();
    const client = await connect(url);
    client.ws.pause(); // stop reading, as a stuck client would
    client.ws.send('{"jsonrpc":"2.0","id":1,"method":"flood"}');
    await new Promise((resolve) => setTimeout(resolve, 100));
    client.ws.resume();
    const reply = await client.waitFor((message) => message.id === 1);
    const sentCount = reply.result as number;
    expect(sentCount).toBeGreaterThan(0);
    expect(sentCount).toBeLessThan(floodNotificationsMax);
    expect(client.replies().filter((message) => message.method === 'event.flood')).toHaveLength(sentCount);
  });

  it('terminates a client that does not answer pings', async () => {
    // Goal: dead peers are found by the heartbeat and their resources freed.
    const { url, server } = await startFixture({ limits: { heartbeatIntervalMs: 30 } });
    const silent = await connect(url, { autoPong: false });
    const lively = await connect(url);
    expect(await silent.closed()).toBe(1006);
    await waitUntil(() => server.connectionCount() === 1);
    expect(lively.ws.readyState).toBe(WebSocket.OPEN);
    expect(await lively.call(1, 'fast')).toMatchObject({ result: 'fast' });
  });

  it('refuses upgrades beyond the connection limit with HTTP 503', async () => {
    // Goal: the connection count is bounded.
    const { url } = await startFixture({ limits: { connectionsMax: 1 } });
    await connect(url);
    expect(await refusedStatus(url)).toBe(503);
  });
});

describe('token auth', () => {
  it('refuses an upgrade without the token, or with a wrong one, with HTTP 401', async () => {
    // Goal: with --token nothing reaches the dispatcher unauthenticated.
    const { url } = await startFixture({ token });
    expect(await refusedStatus(url)).toBe(401);
    expect(await refusedStatus(url, { headers: { Authorization: 'Bearer wrong-token' } })).toBe(401);
    expect(await refusedStatus(`${url}?token=${token}x`)).toBe(401);
  });

  it('accepts the token as a Bearer header and as a query parameter', async () => {
    // Goal: both documented ways of presenting the token work.
    const { url } = await startFixture({ token });
    const byHeader = await connect(url, { headers: { Authorization: `Bearer ${token}` } });
    expect(await byHeader.call(1, 'fast')).toMatchObject({ result: 'fast' });
    const byQuery = await connect(`${url}?token=${encodeURIComponent(token)}`);
    expect(await byQuery.call(1, 'fast')).toMatchObject({ result: 'fast' });
  });

  it('refuses a cross-origin browser upgrade when no token is configured', async () => {
    // Goal: a web page in a local browser cannot drive an unauthenticated node.
    const { url, server } = await startFixture();
    expect(await refusedStatus(url, { origin: 'https://evil.example' })).toBe(403);
    const sameOrigin = await connect(url, { origin: `http://127.0.0.1:${server.address.port}` });
    expect(await sameOrigin.call(1, 'fast')).toMatchObject({ result: 'fast' });
  });
});

async function waitUntil(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}
