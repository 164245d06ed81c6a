// Goal: the NBD server on a real node and a real loopback socket answers every request a client can
// send — well-formed or hostile — with the protocol's reply or a disconnect, keeps memory within its
// byte budgets, keeps serving other clients, and refuses to delete what it exports.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import type { InspectionRecord } from '../../src/actors/inspector.ts';
import {
  clientFlag,
  command,
  commandFlag,
  encodeRequestHeader,
  nbdErrno,
  option,
  optionReply,
  replyType,
  transmissionFlag,
} from '../../src/transport/nbd/protocol.ts';
import type { NbdAddress } from '../../src/transport/nbd/server.ts';
import { type TestNode, rpcError, startTestNode } from '../integration/helpers.ts';
import { NbdTestClient, connectRaw, goData, optionRequest, readOptionReplies, readOptionReply, startHandshake } from './nbdTestClient.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const mib = 1024 * 1024;
let node: TestNode;
let rpc: RpcClient;
let address: NbdAddress;

function pattern(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let index = 0; index < bytes; index += 4) out.writeUInt32LE((index * 2654435761 + seed) >>> 0, index);
  return out;
}

/** Polls a condition on real state (no timing is asserted; the test timeout bounds it). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10));
}

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 512 * mib, nbdListen: '127.0.0.1:0', nbdInsecureTcp: true });
  rpc = await node.connect();
  address = node.running.nbdAddress!;
  await rpc.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vol', size_in_mib: 64, thin_provision: false });
  await rpc.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'thin', size_in_mib: 64, thin_provision: true });
  await rpc.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'origin', size_in_mib: 8, thin_provision: true });
  await node.running.node.bdev('lvs0/origin').write(0, pattern(mib, 7));
  await rpc.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/origin', snapshot_name: 'snap' });
  await rpc.call('bdev_malloc_create', { name: 'm0', num_blocks: 32768, block_size: 512 });
  // A small store for ENOSPC: 24 MiB with 4 MiB clusters leaves a few data clusters.
  await rpc.call('bdev_malloc_create', { name: 'small', num_blocks: 49152, block_size: 512 });
  await rpc.call('bdev_lvol_create_lvstore', { bdev_name: 'small', lvs_name: 'tiny', cluster_sz: 4 * mib });
  await rpc.call('bdev_lvol_create', { lvs_name: 'tiny', lvol_name: 'full', size_in_mib: 64, thin_provision: true });
  for (const [bdev_name, export_name] of [
    ['lvs0/vol', 'vol'],
    ['lvs0/thin', 'thin'],
    ['lvs0/snap', 'snap'],
    ['m0', 'm0'],
    ['tiny/full', 'full'],
  ] as const) {
    expect(await rpc.call('nbd_start_export', { bdev_name, export_name })).toBe(export_name);
  }
});

afterAll(async () => {
  await node.close();
});

describe('handshake', () => {
  it('lists the exports, refuses unknown options, and enters transmission with NBD_OPT_GO', async () => {
    const { socket, reader } = await connectRaw(address);
    const handshakeFlags = await startHandshake(socket, reader);
    expect(handshakeFlags).toBe(3);
    socket.write(optionRequest(option.list));
    const listed = await readOptionReplies(reader);
    const names = listed.filter((reply) => reply.type === optionReply.server).map((reply) => reply.data.toString('utf8', 4, 4 + reply.data.readUInt32BE(0)));
    expect(names.sort()).toEqual(['full', 'm0', 'snap', 'thin', 'vol']);
    socket.write(optionRequest(option.startTls));
    expect((await readOptionReply(reader)).type).toBe(optionReply.errUnsup);
    socket.write(optionRequest(4242, Buffer.from('whatever')));
    expect(await readOptionReply(reader)).toMatchObject({ option: 4242, type: optionReply.errUnsup });
    socket.write(optionRequest(option.go, goData('nope')));
    expect((await readOptionReply(reader)).type).toBe(optionReply.errUnknown);
    socket.write(optionRequest(option.info, goData('vol')));
    const infoReplies = await readOptionReplies(reader);
    expect(infoReplies.at(-1)!.type).toBe(optionReply.ack);
    // Still in the handshake after INFO: a GO follows on the same connection.
    socket.write(optionRequest(option.go, goData('vol')));
    expect((await readOptionReplies(reader)).at(-1)!.type).toBe(optionReply.ack);
    socket.write(encodeRequestHeader({ type: command.read, cookie: 9n, offsetBytes: 0, lengthBytes: 512 }));
    const reply = await reader.read(16 + 512);
    expect(reply.readUInt32BE(4)).toBe(0);
    expect(reply.readBigUInt64BE(8)).toBe(9n);
    socket.destroy();
  });

  it('answers NBD_OPT_EXPORT_NAME with 124 zero bytes unless the client asked for none', async () => {
    for (const noZeroes of [false, true]) {
      const { socket, reader } = await connectRaw(address);
      await startHandshake(socket, reader, clientFlag.fixedNewstyle | (noZeroes ? clientFlag.noZeroes : 0));
      socket.write(optionRequest(option.exportName, Buffer.from('vol')));
      const reply = await reader.read(noZeroes ? 10 : 134);
      expect(reply.readBigUInt64BE(0)).toBe(BigInt(64 * mib));
      expect(reply.readUInt16BE(8) & transmissionFlag.hasFlags).toBe(1);
      socket.write(encodeRequestHeader({ type: command.read, cookie: 1n, offsetBytes: 0, lengthBytes: 512 }));
      // Had the zeroes been miscounted, this would not start with the simple-reply magic.
      expect((await reader.read(16 + 512)).readUInt32BE(0)).toBe(0x67446698);
      socket.destroy();
    }
  });

  it('discards an oversized option unread, answers NBD_REP_ERR_TOO_BIG, and goes on', async () => {
    const { socket, reader } = await connectRaw(address);
    await startHandshake(socket, reader);
    socket.write(optionRequest(option.info, Buffer.alloc(4 * mib, 0xee)));
    expect((await readOptionReply(reader)).type).toBe(optionReply.errTooBig);
    socket.write(optionRequest(option.go, goData('vol')));
    expect((await readOptionReplies(reader)).at(-1)!.type).toBe(optionReply.ack);
    socket.destroy();
  });

  it('disconnects a client that sends garbage, unknown client flags or endless options', async () => {
    const garbage = await connectRaw(address);
    await garbage.reader.read(18);
    garbage.socket.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await garbage.reader.closed;

    const flags = await connectRaw(address);
    await startHandshake(flags.socket, flags.reader, 0xffff_ffff);
    await flags.reader.closed;

    const chatty = await connectRaw(address);
    await startHandshake(chatty.socket, chatty.reader);
    chatty.socket.write(Buffer.concat(Array.from({ length: 300 }, () => optionRequest(4242))));
    let answered = 0;
    await (async () => {
      for (;;) {
        await readOptionReply(chatty.reader);
        answered++;
      }
    })().catch(() => undefined);
    expect(answered).toBe(256);

    const unknownExport = await connectRaw(address);
    await startHandshake(unknownExport.socket, unknownExport.reader);
    unknownExport.socket.write(optionRequest(option.exportName, Buffer.from('nope')));
    await unknownExport.reader.closed;
    // The node serves on.
    const client = await NbdTestClient.open(address, 'vol');
    expect((await client.read(0, 4096)).error).toBe(0);
    client.close();
  });

  it('refuses meta contexts before structured replies, and selects base:allocation after', async () => {
    const { socket, reader } = await connectRaw(address);
    await startHandshake(socket, reader);
    const { metaContextData } = await import('./nbdTestClient.ts');
    socket.write(optionRequest(option.setMetaContext, metaContextData('thin', ['base:allocation'])));
    expect((await readOptionReply(reader)).type).toBe(optionReply.errInvalid);
    socket.write(optionRequest(option.structuredReply));
    expect((await readOptionReply(reader)).type).toBe(optionReply.ack);
    socket.write(optionRequest(option.listMetaContext, metaContextData('thin', [])));
    const listed = await readOptionReplies(reader);
    expect(listed.map((reply) => reply.type)).toEqual([optionReply.metaContext, optionReply.ack]);
    expect(listed[0]!.data.toString('utf8', 4)).toBe('base:allocation');
    socket.write(optionRequest(option.setMetaContext, metaContextData('thin', ['base:allocation', 'x-other:thing'])));
    const selected = await readOptionReplies(reader);
    expect(selected.map((reply) => reply.type)).toEqual([optionReply.metaContext, optionReply.ack]);
    expect(selected[0]!.data.readUInt32BE(0)).not.toBe(0);
    socket.destroy();
  });
});

describe('transmission: well-formed requests', () => {
  it('writes and reads back through many requests in flight on one connection', async () => {
    const client = await NbdTestClient.open(address, 'vol');
    expect(client.sizeBytes).toBe(64 * mib);
    expect(client.transmissionFlags & transmissionFlag.canMultiConn).not.toBe(0);
    expect(client.transmissionFlags & transmissionFlag.readOnly).toBe(0);
    const writes = Array.from({ length: 64 }, (_, index) => client.write(index * 65536, pattern(65536, index)));
    // Reads of other regions go in flight among the writes.
    const reads = Array.from({ length: 32 }, (_, index) => client.read(32 * mib + index * 4096, 4096));
    expect((await Promise.all(writes)).every((reply) => reply.error === 0)).toBe(true);
    expect((await Promise.all(reads)).every((reply) => reply.error === 0 && reply.data!.length === 4096)).toBe(true);
    const back = await Promise.all(Array.from({ length: 64 }, (_, index) => client.read(index * 65536, 65536)));
    back.forEach((reply, index) => expect(reply.data!.equals(pattern(65536, index))).toBe(true));
    await client.disconnect();
  });

  it('makes one connection’s writes visible and flushed from another (multi-conn)', async () => {
    const a = await NbdTestClient.open(address, 'vol');
    const b = await NbdTestClient.open(address, 'vol');
    expect((await a.write(8 * mib, pattern(8192, 99))).error).toBe(0);
    expect((await b.request(command.flush, 0, 0)).error).toBe(0);
    expect((await b.read(8 * mib, 8192)).data!.equals(pattern(8192, 99))).toBe(true);
    expect((await a.write(9 * mib, pattern(4096, 5), commandFlag.fua)).error).toBe(0);
    a.close();
    b.close();
  });

  it('finishes a write sent just before NBD_CMD_DISC, then closes', async () => {
    const client = await NbdTestClient.open(address, 'vol');
    const write = client.write(10 * mib, pattern(mib, 42));
    await client.disconnect();
    expect((await write).error).toBe(0);
    expect((await readBdev(node.running.node.bdev('lvs0/vol'), 10 * mib, mib)).equals(pattern(mib, 42))).toBe(true);
  });

  it('answers structured reads of holes with OFFSET_HOLE and reports holes in block status', async () => {
    const client = await NbdTestClient.open(address, 'thin', { structured: true, allocation: true });
    const hole = await client.read(0, mib);
    expect(hole.chunks.map((chunk) => chunk.type)).toEqual([replyType.offsetHole]);
    expect(hole.data!.equals(Buffer.alloc(mib))).toBe(true);
    expect((await client.write(4 * mib, pattern(4096, 3))).error).toBe(0);
    const data = await client.read(4 * mib, 8192);
    expect(data.chunks.map((chunk) => chunk.type)).toEqual([replyType.offsetData]);
    expect(data.data!.subarray(0, 4096).equals(pattern(4096, 3))).toBe(true);
    const status = await client.request(command.blockStatus, 0, 16 * mib);
    const payload = status.chunks[0]!.payload;
    const descriptors = [];
    for (let at = 4; at < payload.length; at += 8) descriptors.push([payload.readUInt32BE(at), payload.readUInt32BE(at + 4)]);
    expect(descriptors).toEqual([
      [4 * mib, 3],
      [4 * mib, 0],
      [8 * mib, 3],
    ]);
    const one = await client.request(command.blockStatus, 0, mib, { flags: commandFlag.reqOne });
    expect(one.chunks[0]!.payload.length).toBe(12);
    expect(one.chunks[0]!.payload.readUInt32BE(4)).toBe(mib);
    client.close();
  });

  it('serves a malloc bdev read-write and the lvstore-claimed disk0 read-only', async () => {
    const malloc = await NbdTestClient.open(address, 'm0', { structured: true, allocation: true });
    expect((await malloc.write(0, pattern(4096, 1))).error).toBe(0);
    expect((await malloc.read(0, 4096)).data!.equals(pattern(4096, 1))).toBe(true);
    expect((await malloc.request(command.writeZeroes, 0, 4096)).error).toBe(0);
    expect((await malloc.read(0, 4096)).data!.equals(Buffer.alloc(4096))).toBe(true);
    const status = await malloc.request(command.blockStatus, 0, mib);
    expect(status.chunks[0]!.payload.readUInt32BE(8)).toBe(0);
    malloc.close();

    await rpc.call('nbd_start_export', { bdev_name: 'disk0' });
    const claimed = await NbdTestClient.open(address, 'disk0');
    expect(claimed.transmissionFlags & transmissionFlag.readOnly).not.toBe(0);
    expect((await claimed.write(0, Buffer.alloc(512))).error).toBe(nbdErrno.EPERM);
    expect((await claimed.read(0, 512)).error).toBe(0);
    claimed.close();
    await rpc.call('nbd_stop_export', { export_name: 'disk0' });
  });
});

describe('transmission: refused requests', () => {
  it('answers reads past the end, 4 GiB lengths, unaligned and unknown requests with errors, and serves on', async () => {
    for (const structured of [false, true]) {
      const client = await NbdTestClient.open(address, 'vol', { structured });
      expect((await client.read(64 * mib, 512)).error).toBe(nbdErrno.EINVAL);
      expect((await client.read(64 * mib - 512, 1024)).error).toBe(nbdErrno.EINVAL);
      expect((await client.request(command.read, 0, 0xffff_ffff)).error).toBe(structured ? nbdErrno.EOVERFLOW : nbdErrno.EINVAL);
      expect((await client.request(command.read, 2n ** 64n - 512n, 512)).error).toBe(nbdErrno.EINVAL);
      expect((await client.request(command.read, 2n ** 53n, 512)).error).toBe(nbdErrno.EINVAL);
      expect((await client.read(100, 512)).error).toBe(nbdErrno.EINVAL);
      expect((await client.request(42, 0, 512)).error).toBe(nbdErrno.EINVAL);
      expect((await client.request(command.read, 0, 512, { flags: 0x80 })).error).toBe(nbdErrno.EINVAL);
      expect((await client.request(command.blockStatus, 0, 512)).error).toBe(nbdErrno.EINVAL);
      expect((await client.request(command.trim, 64 * mib, 512)).error).toBe(nbdErrno.EINVAL);
      // A write past the end is ENOSPC; its payload is read past, so the next request parses.
      expect((await client.write(64 * mib, pattern(4096, 1))).error).toBe(nbdErrno.ENOSPC);
      expect((await client.write(7, pattern(512, 1))).error).toBe(nbdErrno.EINVAL);
      expect((await client.read(0, 512)).error).toBe(0);
      if (structured) {
        const reply = await client.read(64 * mib, 512);
        expect(reply.message).toContain('past the end');
      }
      client.close();
    }
  });

  it('answers a 4 GiB WRITE with EINVAL before its payload and reads past what does arrive', async () => {
    const client = await NbdTestClient.open(address, 'vol');
    const reply = client.request(command.write, 0, 0xffff_ffff);
    client.socket.write(Buffer.alloc(8 * mib, 0x55));
    expect((await reply).error).toBe(nbdErrno.EINVAL);
    client.close();
    // Nothing of it was written.
    expect((await readBdev(node.running.node.bdev('lvs0/vol'), 48 * mib, 4096)).includes(0x55)).toBe(false);
  });

  it('refuses writes, trims and zeroes on a snapshot with EPERM and still reads it', async () => {
    const client = await NbdTestClient.open(address, 'snap', { structured: true });
    expect(client.transmissionFlags & transmissionFlag.readOnly).not.toBe(0);
    expect(client.transmissionFlags & transmissionFlag.sendTrim).toBe(0);
    const write = await client.write(0, pattern(4096, 1));
    expect(write.error).toBe(nbdErrno.EPERM);
    expect(write.message).toContain('read-only');
    expect((await client.request(command.trim, 0, 4096)).error).toBe(nbdErrno.EPERM);
    expect((await client.request(command.writeZeroes, 0, 4096)).error).toBe(nbdErrno.EPERM);
    expect((await client.read(0, mib)).data!.equals(pattern(mib, 7))).toBe(true);
    client.close();
  });

  it('answers ENOSPC once a thin lvol finds no free cluster', async () => {
    const client = await NbdTestClient.open(address, 'full');
    const errors: number[] = [];
    for (let cluster = 0; cluster < 8; cluster++) errors.push((await client.write(cluster * 4 * mib, pattern(4096, cluster))).error);
    const firstFailure = errors.indexOf(nbdErrno.ENOSPC);
    expect(firstFailure).toBeGreaterThan(0);
    expect(errors.slice(0, firstFailure).every((error) => error === 0)).toBe(true);
    expect(errors.slice(firstFailure).every((error) => error === nbdErrno.ENOSPC)).toBe(true);
    // What was written before the store filled up is there.
    expect((await client.read(0, 4096)).data!.equals(pattern(4096, 0))).toBe(true);
    client.close();
  });
});

describe('bounds', () => {
  it('keeps payload bytes in flight within the connection budget under a flood of 32 MiB writes', async () => {
    const client = await NbdTestClient.open(address, 'vol');
    const big = pattern(32 * mib, 11);
    const replies = await Promise.all(Array.from({ length: 8 }, (_, index) => client.write((index % 2) * 32 * mib, big)));
    expect(replies.every((reply) => reply.error === 0)).toBe(true);
    const figures = node.running.nbd!.payloadFigures();
    expect(figures.connectionPeakBytes).toBeGreaterThanOrEqual(32 * mib);
    expect(figures.connectionPeakBytes).toBeLessThanOrEqual(64 * mib);
    expect(figures.peakBytes).toBeLessThanOrEqual(256 * mib);
    expect((await client.read(32 * mib, 4096)).data!.equals(big.subarray(0, 4096))).toBe(true);
    client.close();
  });

  it('releases what a client reserved when it disconnects in the middle of a write', async () => {
    const before = await readBdev(node.running.node.bdev('lvs0/vol'), 0, mib);
    const client = await NbdTestClient.open(address, 'vol');
    client.socket.write(encodeRequestHeader({ type: command.write, cookie: 1n, offsetBytes: 0, lengthBytes: 8 * mib }));
    client.socket.write(Buffer.alloc(mib, 0x77));
    await until(() => node.running.nbd!.payloadFigures().inUseBytes >= 8 * mib);
    client.close();
    await until(() => node.running.nbd!.payloadFigures().inUseBytes === 0);
    // Half a write is no write.
    expect((await readBdev(node.running.node.bdev('lvs0/vol'), 0, mib)).equals(before)).toBe(true);
    const again = await NbdTestClient.open(address, 'vol');
    expect((await again.read(0, 4096)).error).toBe(0);
    again.close();
  });
});

describe('export lifecycle', () => {
  it('refuses to delete an exported lvol, lvstore or bdev with -16 until the export is stopped', async () => {
    for (const [method, params] of [
      ['bdev_lvol_delete', { name: 'lvs0/vol' }],
      ['bdev_lvol_delete_lvstore', { lvs_name: 'tiny' }],
      ['bdev_malloc_delete', { name: 'm0' }],
      ['bdev_lvol_create_lvstore', { bdev_name: 'm0', lvs_name: 'other' }],
    ] as const) {
      const error = await rpcError(rpc.call(method, params));
      expect(error).toMatchObject({ code: -16, message: 'Device or resource busy' });
      expect(String((error.data as { detail?: string }).detail)).toContain('in use by NBD export');
    }
    expect(await rpcError(rpc.call('nbd_start_export', { bdev_name: 'lvs0/vol', export_name: 'again' }))).toMatchObject({ code: -17 });
    expect(await rpcError(rpc.call('nbd_start_export', { bdev_name: 'm0', export_name: 'vol' }))).toMatchObject({ code: -17 });
    expect(await rpcError(rpc.call('nbd_start_export', { bdev_name: 'lvs0/nope' }))).toMatchObject({ code: -19 });
    expect(await rpcError(rpc.call('nbd_stop_export', { export_name: 'nope' }))).toMatchObject({ code: -19 });
    expect(await rpcError(rpc.call('nbd_start_export', { bdev_name: 'm0', export_name: 'bad\nname' }))).toMatchObject({ code: -32602 });
  });

  it('stops an export: in-flight requests are answered, the client is disconnected, the actor ends stopped', async () => {
    await rpc.call('bdev_malloc_create', { name: 'm1', num_blocks: 8192, block_size: 512 });
    await rpc.call('nbd_start_export', { bdev_name: 'm1', export_name: 'stoppable' });
    const watcher = await node.connect();
    const events: InspectionRecord[] = [];
    watcher.on('inspect_events', (params) => events.push(...(params as { events: InspectionRecord[] }).events));
    await watcher.call('inspect_subscribe', { actor_id: 'nbd:stoppable' });

    const client = await NbdTestClient.open(address, 'stoppable');
    const [listed] = await rpc.call<Array<{ connections: number; state: string }>>('nbd_get_exports', { export_name: 'stoppable' });
    expect(listed).toMatchObject({ connections: 1, state: 'serving' });
    const requestsOf = async () => (await rpc.call<Array<{ requests: number }>>('nbd_get_exports', { export_name: 'stoppable' }))[0]!.requests;
    const requestsBefore = await requestsOf();
    const inFlight = client.write(0, pattern(mib, 8));
    // The server has the whole write (it counted it) before the stop is asked for: it must finish.
    while ((await requestsOf()) === requestsBefore);
    expect(await rpc.call('nbd_stop_export', { export_name: 'stoppable' })).toBe(true);
    expect((await inFlight).error).toBe(0);
    await client.reader.closed;
    const written = Buffer.alloc(4096);
    await node.running.node.registry.baseBdev('m1').device.readInto(written, 0);
    expect(written.equals(pattern(mib, 8).subarray(0, 4096))).toBe(true);
    expect(await rpc.call('nbd_get_exports', {})).not.toContainEqual(expect.objectContaining({ export_name: 'stoppable' }));
    await expect(NbdTestClient.open(address, 'stoppable')).rejects.toThrow(/GO refused/);

    await until(() => events.some((event) => event.type === 'snapshot' && (event.snapshot as { value: string }).value === 'stopped'));
    const states = events.filter((event) => event.type === 'snapshot').map((event) => (event.snapshot as { value: string }).value);
    expect(states).toContain('serving');
    expect(states.indexOf('draining')).toBeGreaterThan(states.indexOf('serving'));
    expect(states.at(-1)).toBe('stopped');
    // Stopped, the bdev can go.
    expect(await rpc.call('bdev_malloc_delete', { name: 'm1' })).toBe(true);
  });

  it('counts connections, requests and bytes per export', async () => {
    const [before] = await rpc.call<Array<{ bytes_read: number; bytes_written: number; requests: number; connections_total: number }>>('nbd_get_exports', {
      export_name: 'm0',
    });
    const client = await NbdTestClient.open(address, 'm0');
    await client.write(mib, pattern(8192, 2));
    await client.read(mib, 4096);
    client.close();
    const [after] = await rpc.call<typeof before[]>('nbd_get_exports', { export_name: 'm0' });
    expect(after!.bytes_written - before!.bytes_written).toBe(8192);
    expect(after!.bytes_read - before!.bytes_read).toBe(4096);
    expect(after!.requests - before!.requests).toBe(2);
    expect(after!.connections_total - before!.connections_total).toBe(1);
  });
});

describe('a node without an NBD listener', () => {
  it('refuses nbd_start_export, naming the flag', async () => {
    const bare = await startTestNode({ diskBytes: 64 * mib });
    try {
      const client = await bare.connect();
      const error = await rpcError(client.call('nbd_start_export', { bdev_name: 'disk0' }));
      expect(error.code).toBe(-22);
      expect(String((error.data as { detail?: string }).detail)).toContain('--nbd-listen');
    } finally {
      await bare.close();
    }
  });
});
