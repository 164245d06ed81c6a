// Goal (issue 20, items 1 and 5): the WebSocket endpoint's credential. The token is compared in
// constant time (timingSafeEqual on equal-length digests, whatever was presented), never appears
// in a log line or an error message, and a client that found it in a data directory sends it only
// to a node that proved it knows it, so a process squatting the port or relaying to the node
// never receives it.
import { type IncomingHttpHeaders, createServer as createHttpServer, request } from 'node:http';
import { type Server, type Socket, createConnection, createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocketServer } from 'ws';
import { z } from 'zod';
import { ConnectionRefusedError, RpcClient, TokenNotProvedError } from '../../src/cli/rpcClient.ts';
import { createDispatcher } from '../../src/transport/jsonRpc.ts';
import { defineMethod } from '../../src/transport/methodTable.ts';
import { type LogRecord, type RpcServer, startRpcServer, tokenChallengeHeader, tokenProof, tokenProofHeader } from '../../src/transport/wsServer.ts';

// Every call of crypto.timingSafeEqual, by the lengths it compared.
const compared = vi.hoisted(() => [] as Array<[number, number]>);
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  const timingSafeEqual = (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView): boolean => {
    compared.push([a.byteLength, b.byteLength]);
    return actual.timingSafeEqual(a, b);
  };
  return { ...actual, default: { ...actual, timingSafeEqual }, timingSafeEqual };
});

const token = 'Zx8-the-right-token-of-this-node-0123456789';
const table = {
  ping: defineMethod({ description: 'pong', priority: 'foreground', params: z.strictObject({}), result: z.string(), handler: () => 'pong' }),
};

const closers: Array<() => Promise<unknown> | unknown> = [];

afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
  compared.length = 0;
});

async function startServer(options: { token?: string; httpHandler?: () => boolean } = {}): Promise<{ server: RpcServer; url: string; logs: LogRecord[] }> {
  const logs: LogRecord[] = [];
  const server = await startRpcServer({
    host: '127.0.0.1',
    port: 0,
    dispatcher: createDispatcher(table, { allowBatch: true }),
    token: options.token ?? token,
    log: (record) => logs.push(record),
    ...(options.httpHandler ? { httpHandler: options.httpHandler } : {}),
  });
  closers.push(() => server.close());
  return { server, url: `ws://127.0.0.1:${server.address.port}/`, logs };
}

async function refusal(url: string, headers: Record<string, string> = {}): Promise<unknown> {
  return RpcClient.connect(url, headers.Authorization ? { token: headers.Authorization.slice('Bearer '.length) } : {}).then(
    async (client) => {
      await client.close();
      return 'open';
    },
    (error: unknown) => error,
  );
}

/** A bare upgrade request with `headers`; the refusal's status and headers. */
function upgradeRefusal(url: string, headers: Record<string, string>): Promise<{ status: number | undefined; headers: IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = request(url.replace(/^ws:/, 'http:'), {
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', ...headers },
    });
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode, headers: res.headers });
    });
    req.on('upgrade', () => reject(new Error('the upgrade was accepted')));
    req.on('error', reject);
    req.end();
  });
}

function listenOn(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

describe('the token check', () => {
  it('compares in constant time: timingSafeEqual on two 32-byte digests for every presented token, right, wrong, short or long', async () => {
    const { url } = await startServer();
    for (const presented of ['x', 'Zx8-the-right-token-of-this-node-012345678', `${token}0`, 'y'.repeat(200)]) {
      compared.length = 0;
      expect(await refusal(url, { Authorization: `Bearer ${presented}` })).toBeInstanceOf(ConnectionRefusedError);
      expect(compared).toEqual([[32, 32]]);
    }
    compared.length = 0;
    const client = await RpcClient.connect(url, { token });
    expect(await client.call('ping')).toBe('pong');
    await client.close();
    expect(compared).toEqual([[32, 32]]);
    // Both places a token may be presented are compared, not just the first that is there.
    compared.length = 0;
    expect(await refusal(`${url}?token=wrong`, { Authorization: 'Bearer also-wrong' })).toMatchObject({ status: 401 });
    expect(compared).toEqual([
      [32, 32],
      [32, 32],
    ]);
  });

  it('never logs the token or what was presented, also when the HTTP handler fails on a request carrying ?token=', async () => {
    const wrong = 'a-wrong-guess-0987654321';
    const { url, logs } = await startServer({
      httpHandler: () => {
        throw new Error('handler broke');
      },
    });
    await refusal(url, { Authorization: `Bearer ${wrong}` });
    await refusal(`${url}?token=${wrong}`);
    const client = await RpcClient.connect(`${url}?token=${token}`);
    await client.close();
    await fetch(`${url.replace(/^ws:/, 'http:')}page?token=${token}`);
    const text = JSON.stringify(logs);
    expect(logs.some((record) => record.msg === 'ws upgrade refused')).toBe(true);
    expect(logs.some((record) => record.msg === 'http handler failed' && record.url === '/page')).toBe(true);
    expect(text).not.toContain(token);
    expect(text).not.toContain(wrong);
  });

  it("names the HTTP status in a refused client's error, never the token", async () => {
    const { url } = await startServer();
    const error = await refusal(url, { Authorization: 'Bearer not-it' });
    expect(error).toBeInstanceOf(ConnectionRefusedError);
    expect((error as Error).message).toBe('server refused the connection: HTTP 401');
  });
});

describe('a token found in the data directory', () => {
  it('goes to the node that proves it knows it, over the address that proved it', async () => {
    const { server, url } = await startServer();
    const client = await RpcClient.connect(url, { token, tokenNeedsProof: true });
    expect(await client.call('ping')).toBe('pong');
    await client.close();
    // The proof is the HMAC of the challenge and the node's own side of the connection.
    const response = await upgradeRefusal(url, { [tokenChallengeHeader]: 'c'.repeat(43) });
    expect(response.status).toBe(401);
    expect(response.headers[tokenProofHeader]).toBe(tokenProof(token, 'c'.repeat(43), '127.0.0.1', server.address.port));
    // A challenge out of bounds gets no proof at all.
    const malformed = await upgradeRefusal(url, { [tokenChallengeHeader]: 'short' });
    expect(malformed.status).toBe(401);
    expect(malformed.headers[tokenProofHeader]).toBeUndefined();
  });

  it('is not sent to a process squatting the port that cannot prove it (it answers 401, or lets the client in)', async () => {
    const seen: string[] = [];
    const squatter = createHttpServer((req, res) => res.end());
    squatter.on('upgrade', (req, socket: Socket) => {
      seen.push(JSON.stringify({ url: req.url, headers: req.headers }));
      socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\nlvnode-token-proof: made-up\r\n\r\n');
    });
    const port = await listenOn(squatter);
    closers.push(() => new Promise((resolve) => squatter.close(resolve)));
    const error = await RpcClient.connect(`ws://127.0.0.1:${port}/`, { token, tokenNeedsProof: true }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TokenNotProvedError);
    expect((error as Error).message).not.toContain(token);
    expect(seen).toHaveLength(1);
    expect(seen.join()).not.toContain(token);

    // One that accepts every upgrade (as a node without auth would) gets a client, not the token.
    const open = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    const upgrades: string[] = [];
    open.on('headers', (_headers, req) => upgrades.push(JSON.stringify({ url: req.url, headers: req.headers })));
    await new Promise((resolve) => open.once('listening', resolve));
    closers.push(() => new Promise((resolve) => open.close(resolve)));
    const client = await RpcClient.connect(`ws://127.0.0.1:${(open.address() as AddressInfo).port}/`, { token, tokenNeedsProof: true });
    await client.close();
    expect(upgrades).toHaveLength(1);
    expect(upgrades.join()).not.toContain(token);
  });

  it('is not sent through a relay to the real node: the proof names the node’s address, not the one the client reached', async () => {
    const { server } = await startServer();
    const relayed: Buffer[] = [];
    const relay = createServer((inbound) => {
      const outbound = createConnection(server.address.port, '127.0.0.1');
      inbound.on('data', (chunk: Buffer) => relayed.push(chunk));
      inbound.pipe(outbound).pipe(inbound);
      inbound.on('error', () => outbound.destroy());
      outbound.on('error', () => inbound.destroy());
    });
    const port = await listenOn(relay);
    closers.push(() => new Promise((resolve) => relay.close(resolve)));
    const error = await RpcClient.connect(`ws://127.0.0.1:${port}/`, { token, tokenNeedsProof: true }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TokenNotProvedError);
    expect(relayed.length).toBeGreaterThan(0);
    expect(Buffer.concat(relayed).toString('latin1')).not.toContain(token);
  });

  it('is not sent to a node that runs with another token (started with --token)', async () => {
    const { url } = await startServer({ token: 'the-node-was-given-this-one' });
    const error = await RpcClient.connect(url, { token, tokenNeedsProof: true }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TokenNotProvedError);
    expect((error as Error).message).toContain('--token or LVNODE_TOKEN');
  });
});
