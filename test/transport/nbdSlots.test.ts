// Goal: NBD connection slots cannot be hoarded. A handshake that does not finish is closed; when
// the handshake slots are full, a newcomer drops a connection that got least far (then the longest
// idle), never a client that proved its key; a newcomer is refused only when every slot serves an
// export; and a client with the key connects and reads while 1000 hostile connections keep trying
// (success asserted, not timing; bench/nbdFlood.ts measures latency).
import { mkdtemp, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nbdConnectionsMax, nbdHandshakingConnectionsMax } from '../../src/constants.ts';
import { option, optionReply } from '../../src/transport/nbd/protocol.ts';
import { type NbdAddress, NbdServer, type NbdServerLimits } from '../../src/transport/nbd/server.ts';
import { readPskKeyFile } from '../../src/transport/nbd/tlsPsk.ts';
import { type TestNode, startTestNode } from '../integration/helpers.ts';
import { type PskKey, newPskKey, writePskFile } from '../integration/nbdTools.ts';
import { ConnectionFlood } from './nbdFlood.ts';
import { type ByteReader, NbdTestClient, connectRaw, optionRequest, readOptionReplies, startHandshake, startTls } from './nbdTestClient.ts';

const mib = 1024 * 1024;
// Small limits, so that filling them takes a few dozen connections.
const small: NbdServerLimits = { connectionsMax: 8, handshakingConnectionsMax: 16, listenBacklog: 4 };
const data = Buffer.alloc(4096, 0xc3);
let dir: string;
let key: PskKey;
let keyFile: string;
const nodes: TestNode[] = [];
const servers: NbdServer[] = [];

/** Polls a condition on real state (no timing is asserted; the test timeout bounds it). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

/** A node exporting malloc bdev `m` (holding `data`) on its own NBD listener. */
async function nodeWithListener(listen: (node: TestNode) => Promise<NbdServer>): Promise<NbdServer> {
  const node = await startTestNode({ diskBytes: 64 * mib });
  nodes.push(node);
  const server = await listen(node);
  servers.push(server);
  const rpc = await node.connect();
  await rpc.call('bdev_malloc_create', { name: 'm', num_blocks: 8192, block_size: 512 });
  await node.running.node.registry.baseBdev('m').device.write(0, data);
  await rpc.call('nbd_start_export', { bdev_name: 'm' });
  return server;
}

function unixListener(name: string, limits?: NbdServerLimits): (node: TestNode) => Promise<NbdServer> {
  return (node) => NbdServer.listen({ address: { kind: 'unix', path: join(dir, name) }, exports: node.running.node.nbd, noteForeground: () => {}, ...(limits ? { limits } : {}) });
}

function tlsListener(limits?: NbdServerLimits): (node: TestNode) => Promise<NbdServer> {
  return async (node) =>
    NbdServer.listen({
      address: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      tls: await readPskKeyFile(keyFile),
      exports: node.running.node.nbd,
      noteForeground: () => {},
      ...(limits ? { limits } : {}),
    });
}

interface Raw {
  socket: Socket;
  reader: ByteReader;
  closed: boolean;
}

/** A raw connection the server has accepted (its greeting read), tracking whether it was closed. */
async function openRaw(address: NbdAddress, sendFlags: boolean): Promise<Raw> {
  const { socket, reader } = await connectRaw(address);
  const raw: Raw = { socket, reader, closed: false };
  void reader.closed.then(() => (raw.closed = true));
  if (sendFlags) await startHandshake(socket, reader);
  else await reader.read(18).catch(() => undefined);
  return raw;
}

/** Sends NBD_OPT_LIST and waits for its answer: the client is negotiating, and moved on last. */
async function listExports(raw: Raw): Promise<number> {
  raw.socket.write(optionRequest(option.list));
  return (await readOptionReplies(raw.reader)).at(-1)!.type;
}

/** Opens, reads 4 KiB over TLS and closes; 'ok' or what went wrong. */
async function legitimateRead(address: NbdAddress): Promise<string> {
  return NbdTestClient.open(address, 'm', { tls: key }).then(
    async (client) => {
      const reply = await client.read(0, 4096);
      client.close();
      return reply.error === 0 && reply.data!.equals(data) ? 'ok' : `read error ${reply.error}`;
    },
    (error: unknown) => String(error),
  );
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-slots-'));
  key = newPskKey();
  keyFile = join(dir, 'keys.psk');
  await writePskFile(keyFile, [key]);
});

afterAll(async () => {
  for (const server of servers) await server.close();
  for (const node of nodes) await node.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('handshake slots', () => {
  it('closes a connection that does not finish its handshake in time', async () => {
    const server = await nodeWithListener(unixListener('timeout.sock'));
    const raw = await openRaw(server.address, true);
    await raw.reader.closed;
    await until(() => server.connectionCount() === 0);
  });

  it('drops a handshake that got least far for a newcomer, then the longest idle of equals', async () => {
    const server = await nodeWithListener(unixListener('order.sock', small));
    const negotiating: Raw[] = [];
    for (let index = 0; index < small.handshakingConnectionsMax - 1; index++) {
      const raw = await openRaw(server.address, true);
      expect(await listExports(raw)).toBe(optionReply.ack);
      negotiating.push(raw);
    }
    // The newest connection, but it sent no option: it is the one to go.
    const preOption = await openRaw(server.address, true);
    const newcomer = await openRaw(server.address, false);
    await until(() => preOption.closed);
    expect(negotiating.some((raw) => raw.closed)).toBe(false);
    expect(newcomer.closed).toBe(false);

    // The newcomer negotiates too; then, of equals, the one idle longest goes: the first
    // connection moved on after the second, so the second is dropped.
    newcomer.socket.write(Buffer.from([0, 0, 0, 3]));
    expect(await listExports(newcomer)).toBe(optionReply.ack);
    expect(await listExports(negotiating[0]!)).toBe(optionReply.ack);
    const last = await openRaw(server.address, false);
    await until(() => negotiating[1]!.closed);
    expect(negotiating.filter((raw) => raw.closed)).toEqual([negotiating[1]]);
    expect(newcomer.closed || last.closed).toBe(false);
    for (const raw of [...negotiating, newcomer, last]) raw.socket.destroy();
    await until(() => server.connectionCount() === 0);
  });

  it('does not count options refused for want of TLS as progress: a chatty stranger goes before a quieter, newer one', async () => {
    const server = await nodeWithListener(tlsListener(small));
    const chatty = await openRaw(server.address, true);
    const quiet = await openRaw(server.address, true);
    const askedTls: Raw[] = [];
    for (let index = 0; index < small.handshakingConnectionsMax - 2; index++) {
      const raw = await openRaw(server.address, true);
      raw.socket.write(optionRequest(option.startTls));
      expect((await readOptionReplies(raw.reader)).at(-1)!.type).toBe(optionReply.ack);
      askedTls.push(raw);
    }
    // Busy, but getting nowhere: every option is refused until TLS.
    for (let index = 0; index < 5; index++) {
      chatty.socket.write(optionRequest(option.list));
      expect((await readOptionReplies(chatty.reader)).at(-1)!.type).toBe(optionReply.errTlsReqd);
    }
    const newcomer = await openRaw(server.address, false);
    await until(() => chatty.closed);
    expect(quiet.closed || newcomer.closed || askedTls.some((raw) => raw.closed)).toBe(false);
    for (const raw of [quiet, ...askedTls, newcomer]) raw.socket.destroy();
    await until(() => server.connectionCount() === 0);
  });

  it('never drops a client that proved its key, nor one serving an export; strangers go instead', async () => {
    const server = await nodeWithListener(tlsListener(small));
    const serving = await NbdTestClient.open(server.address, 'm', { tls: key });
    const plainSide = await connectRaw(server.address);
    await startHandshake(plainSide.socket, plainSide.reader);
    const proved = await startTls(plainSide.socket, plainSide.reader, key);
    const strangers: Raw[] = [];
    for (let index = 0; index < 4 * small.handshakingConnectionsMax; index++) strangers.push(await openRaw(server.address, index % 2 === 0));
    await until(() => strangers.filter((raw) => raw.closed).length >= 3 * small.handshakingConnectionsMax);
    // The one past TLS is still negotiating, and goes on to serve; the serving one still reads.
    proved.socket.write(optionRequest(option.list));
    expect((await readOptionReplies(proved.reader)).at(-1)!.type).toBe(optionReply.ack);
    expect((await serving.read(0, 4096)).data!.equals(data)).toBe(true);
    serving.close();
    proved.socket.destroy();
    for (const raw of strangers) raw.socket.destroy();
    await until(() => server.connectionCount() === 0);
  });

  it('refuses a stranger rather than drop any of a full house of clients past TLS', async () => {
    const server = await nodeWithListener(tlsListener(small));
    const proved: Array<{ socket: Socket; reader: ByteReader }> = [];
    for (let index = 0; index < small.handshakingConnectionsMax; index++) {
      const { socket, reader } = await connectRaw(server.address);
      await startHandshake(socket, reader);
      proved.push(await startTls(socket, reader, key));
    }
    // The server's side of TLS is done a moment after the client's.
    await until(() => server.connectionsByProgress().negotiating === small.handshakingConnectionsMax);
    const stranger = await connectRaw(server.address);
    await expect(stranger.reader.read(18)).rejects.toThrow(/closed/);
    for (const client of proved) {
      client.socket.write(optionRequest(option.list));
      expect((await readOptionReplies(client.reader)).at(-1)!.type).toBe(optionReply.ack);
      client.socket.destroy();
    }
    await until(() => server.connectionCount() === 0);
  });

  it('refuses a newcomer only while every serving slot is taken, and admits it once one is free', async () => {
    const server = await nodeWithListener(unixListener('full.sock', small));
    const clients: NbdTestClient[] = [];
    for (let index = 0; index < small.connectionsMax; index++) clients.push(await NbdTestClient.open(server.address, 'm'));
    const refused = await connectRaw(server.address);
    await expect(refused.reader.read(18)).rejects.toThrow(/closed/);
    await clients.pop()!.disconnect();
    await until(() => server.connectionCount() === small.connectionsMax - 1);
    const admitted = await NbdTestClient.open(server.address, 'm');
    expect((await admitted.read(0, 4096)).data!.equals(data)).toBe(true);
    for (const client of [...clients, admitted]) client.close();
    await until(() => server.connectionCount() === 0);
  });
});

describe('a flood of 1000 connections that never finish', () => {
  for (const [what, limits] of [
    ['with the default limits', undefined],
    // As the constants relate them: handshake slots for four accept batches, the flood 16 times that.
    ['beyond the handshake slots (64 of them, accepted 16 at a time)', { connectionsMax: nbdConnectionsMax, handshakingConnectionsMax: 64, listenBacklog: 16 }],
  ] as const) {
    it(`does not keep a client with the key from connecting and reading, ${what}`, async () => {
      const server = await nodeWithListener(tlsListener(limits));
      const flood = new ConnectionFlood(server.address, { connections: 1000 });
      flood.start();
      let peakConnections = 0;
      const sampler = setInterval(() => (peakConnections = Math.max(peakConnections, server.connectionCount())), 5);
      try {
        // The flood is on: every hostile connection is open or was dropped and came back.
        await until(() => flood.opened >= 1000 && server.connectionCount() >= Math.min(1000, limits?.handshakingConnectionsMax ?? nbdHandshakingConnectionsMax) / 2);
        const outcomes: string[] = [];
        for (let attempt = 0; attempt < 20; attempt++) outcomes.push(await legitimateRead(server.address));
        expect(outcomes).toEqual(Array.from({ length: 20 }, () => 'ok'));
        expect(peakConnections).toBeLessThanOrEqual((limits?.handshakingConnectionsMax ?? nbdHandshakingConnectionsMax) + 1);
      } finally {
        clearInterval(sampler);
        await flood.stop();
      }
      await until(() => server.connectionCount() === 0);
    });
  }
});
