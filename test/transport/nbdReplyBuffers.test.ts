// Goal: READ replies built in reused buffers are never handed out while a socket write still
// refers to them: many concurrent reads of distinct data, with replies backed up behind a client
// that stops reading, all come back with their own bytes; the pool itself rounds, keeps and
// refuses as it says.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { BufferPool } from '../../src/transport/nbd/bufferPool.ts';
import { executingMax } from '../../src/transport/nbd/connection.ts';
import type { NbdAddress } from '../../src/transport/nbd/server.ts';
import { type TestNode, startTestNode } from '../integration/helpers.ts';
import { NbdTestClient } from './nbdTestClient.ts';

const kib = 1024;
const mib = 1024 * kib;

function pattern(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let index = 0; index < bytes; index += 4) out.writeUInt32LE((index * 2654435761 + seed) >>> 0, index);
  return out;
}

describe('BufferPool', () => {
  it('rounds to power-of-two classes plus headroom and hands a released buffer out again', () => {
    const pool = new BufferPool(mib, 32);
    const first = pool.acquire(256 * kib);
    expect(first.length).toBe(256 * kib + 32);
    expect(pool.acquire(5000).length).toBe(8 * kib + 32);
    expect(pool.acquire(100).length).toBe(4 * kib + 32);
    pool.release(first);
    expect(pool.idleBytes).toBe(256 * kib + 32);
    expect(pool.acquire(200 * kib)).toBe(first);
    expect(pool.idleBytes).toBe(0);
  });

  it('keeps no more than its bound, never keeps outsized or foreign buffers, and refuses a double release', () => {
    const pool = new BufferPool(600 * kib, 32);
    const buffers = [pool.acquire(256 * kib), pool.acquire(256 * kib), pool.acquire(256 * kib)];
    for (const buffer of buffers) pool.release(buffer);
    expect(pool.idleBytes).toBe(2 * (256 * kib + 32));
    const big = pool.acquire(8 * mib);
    expect(big.length).toBe(8 * mib + 32);
    pool.release(big);
    pool.release(Buffer.alloc(4096));
    expect(pool.idleBytes).toBe(2 * (256 * kib + 32));
    expect(() => pool.release(buffers[0]!)).toThrow(/released twice/);
  });
});

describe('READ replies from reused buffers', () => {
  let node: TestNode;
  let rpc: RpcClient;
  let address: NbdAddress;
  const regionBytes = 256 * kib;
  const regions = 128;

  beforeAll(async () => {
    node = await startTestNode({ diskBytes: 256 * mib, nbdListen: '127.0.0.1:0' });
    rpc = await node.connect();
    address = node.running.nbdAddress!;
    await rpc.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vol', size_in_mib: 64, thin_provision: false });
    for (let index = 0; index < regions; index++) await node.running.node.writeLvol('lvs0/vol', index * regionBytes, pattern(regionBytes, index));
    expect(await rpc.call('nbd_start_export', { bdev_name: 'lvs0/vol', export_name: 'vol' })).toBe('vol');
    const target = node.running.node.nbd.lookup('vol')!.target as { readInto?: (offsetBytes: number, into: Buffer) => Promise<void> };
    // Until every target fills the caller's buffer, give this one that form so the pooled path runs.
    if (!target.readInto) {
      const lvols = node.running.node;
      target.readInto = async (offsetBytes, into) => void (await lvols.readLvol('lvs0/vol', offsetBytes, into.length)).copy(into);
    }
  });

  afterAll(async () => {
    await node?.close();
  });

  for (const structured of [false, true]) {
    it(`answers ${regions} concurrent reads with their own bytes while the client stops reading (${structured ? 'structured' : 'simple'} replies)`, async () => {
      const client = await NbdTestClient.open(address, 'vol', { structured });
      // The client stops reading: replies back up in the socket, each still referring to its buffer.
      client.socket.pause();
      const order = Array.from({ length: regions }, (_, index) => (index * 37) % regions);
      const replies = order.map((index) => client.read(index * regionBytes, regionBytes));
      await new Promise((resolve) => setTimeout(resolve, 200));
      // Later reads of the same regions reuse buffers the earlier replies have released.
      client.socket.resume();
      const again = order.map((index) => client.read(index * regionBytes, regionBytes));
      const all = await Promise.all([...replies, ...again]);
      all.forEach((reply, position) => {
        const index = order[position % regions]!;
        expect(reply.error).toBe(0);
        expect(reply.data!.equals(pattern(regionBytes, index))).toBe(true);
      });
      await client.disconnect();
    });
  }

  it('answers more requests than a connection runs at once, in turn, reads and writes alike', async () => {
    const client = await NbdTestClient.open(address, 'vol');
    const replies = await Promise.all(Array.from({ length: executingMax * 4 }, (_, index) => client.read((index % regions) * regionBytes, 4096)));
    replies.forEach((reply, index) => expect(reply.data!.equals(pattern(regionBytes, index % regions).subarray(0, 4096))).toBe(true));
    // Writes interleaved with reads still land and read back.
    const writes = Array.from({ length: executingMax * 2 }, (_, index) => client.write(index * regionBytes, pattern(regionBytes, 1000 + index)));
    expect((await Promise.all(writes)).every((reply) => reply.error === 0)).toBe(true);
    const back = await Promise.all(Array.from({ length: executingMax * 2 }, (_, index) => client.read(index * regionBytes, regionBytes)));
    back.forEach((reply, index) => expect(reply.data!.equals(pattern(regionBytes, 1000 + index))).toBe(true));
    await client.disconnect();
  });
});
