// Goal (issue 23 item 4): bdev_set_qos_limit caps what every consumer of a bdev moves, on the
// node's injected clock, without starving anyone; bdev_get_iostat counts exactly the I/O done
// through NBD and RPC, in SPDK's shape; bdev_get_bdevs shows the limits; bad params change nothing.
// No wall-clock time is asserted: the limiter waits on a simulated clock whose sleeps advance it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { StorageNode } from '../../src/actors/node.ts';
import type { BdevIoClock } from '../../src/bdev/bdevIo.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { createMethodTable } from '../../src/transport/methods.ts';
import type { NbdAddress } from '../../src/transport/nbd/server.ts';
import { command } from '../../src/transport/nbd/protocol.ts';
import { NbdTestClient } from '../transport/nbdTestClient.ts';
import { type TestNode, rpcError, startTestNode } from './helpers.ts';
import { call } from './tableCalls.ts';

const mib = 1024 * 1024;
let node: TestNode;
let rpc: RpcClient;
let address: NbdAddress;

/**
 * A clock whose time moves only by the limiter's own sleeps: a sleep ends at the time asked for
 * (or now, if later), a macrotask later so that I/O interleaves. Latency ticks count 1 per call.
 */
function simulatedClock(): BdevIoClock & { nowMsValue: number } {
  let tick = 0;
  const clock = {
    nowMsValue: 1_000_000,
    nowMs: () => clock.nowMsValue,
    sleep: (delayMs: number) => {
      clock.nowMsValue = Math.max(clock.nowMsValue, clock.nowMsValue + delayMs);
      return new Promise<void>((resolve) => setImmediate(resolve));
    },
    ticks: () => ++tick,
    tickRate: 1e9,
  };
  return clock;
}

interface IostatRow {
  name: string;
  bytes_read: number;
  num_read_ops: number;
  bytes_written: number;
  num_write_ops: number;
  bytes_unmapped: number;
  num_unmap_ops: number;
  read_latency_ticks: number;
  max_read_latency_ticks: number;
  min_read_latency_ticks: number;
  write_latency_ticks: number;
}

async function iostat(name: string): Promise<IostatRow> {
  const answer = await rpc.call<{ tick_rate: number; ticks: number; bdevs: IostatRow[] }>('bdev_get_iostat', { name });
  expect(answer.tick_rate).toBeGreaterThan(0);
  expect(answer.bdevs).toHaveLength(1);
  return answer.bdevs[0]!;
}

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 256 * mib, nbdListen: '127.0.0.1:0', nbdInsecureTcp: true });
  rpc = await node.connect();
  address = node.running.nbdAddress!;
});

afterAll(async () => {
  await node.close();
});

describe('bdev_set_qos_limit', () => {
  it('caps an NBD write stream to rw_mbytes_per_sec on the injected clock, and lifts the cap with 0', async () => {
    const clock = simulatedClock();
    node.running.node.registry.io.clock = clock;
    await rpc.call('bdev_malloc_create', { name: 'qos0', num_blocks: (64 * mib) / 512, block_size: 512 });
    expect(await rpc.call('bdev_set_qos_limit', { name: 'qos0', rw_mbytes_per_sec: 8 })).toBe(true);
    expect(await rpc.call('nbd_start_export', { bdev_name: 'qos0', export_name: 'qos0' })).toBe('qos0');
    // Four clients write 32 MiB in 256 KiB requests: at 8 MiB/s that needs 4 s of the clock at
    // least (less the last request's own share, which is reserved but not waited for).
    const chunkBytes = 256 * 1024;
    const totalBytes = 32 * mib;
    const clients = await Promise.all([0, 1, 2, 3].map(() => NbdTestClient.open(address, 'qos0')));
    const startMs = clock.nowMs();
    await Promise.all(
      clients.map(async (client, index) => {
        for (let offset = index * chunkBytes; offset < totalBytes; offset += clients.length * chunkBytes) {
          expect((await client.write(offset, Buffer.alloc(chunkBytes, index + 1))).error).toBe(0);
        }
      }),
    );
    const elapsedMs = clock.nowMs() - startMs;
    expect(elapsedMs).toBeGreaterThanOrEqual(((totalBytes - chunkBytes) / (8 * mib)) * 1000);
    // Nobody starves: the clock moved no further than the bytes' share of the rate.
    expect(elapsedMs).toBeLessThanOrEqual((totalBytes / (8 * mib)) * 1000);
    expect((await iostat('qos0')).bytes_written).toBe(totalBytes);

    // 0 lifts the limit: the same stream again moves the clock not at all.
    expect(await rpc.call('bdev_set_qos_limit', { name: 'qos0', rw_mbytes_per_sec: 0 })).toBe(true);
    const liftedAtMs = clock.nowMs();
    for (let offset = 0; offset < 4 * mib; offset += chunkBytes) expect((await clients[0]!.write(offset, Buffer.alloc(chunkBytes, 9))).error).toBe(0);
    expect(clock.nowMs()).toBe(liftedAtMs);
    for (const client of clients) await client.disconnect();
    await rpc.call('nbd_stop_export', { export_name: 'qos0' });
    await rpc.call('bdev_malloc_delete', { name: 'qos0' });
  });

  it('caps writes of node_lvol_write to w_mbytes_per_sec, and rw_ios_per_sec counts requests', async () => {
    const clock = simulatedClock();
    node.running.node.registry.io.clock = clock;
    const uuid = await rpc.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'qosvol', size_in_mib: 16, thin_provision: true });
    expect(await rpc.call('bdev_set_qos_limit', { name: 'lvs0/qosvol', w_mbytes_per_sec: 1 })).toBe(true);
    const startMs = clock.nowMs();
    const data = Buffer.alloc(256 * 1024, 0x5a).toString('base64');
    for (let index = 0; index < 8; index++) await rpc.call('node_lvol_write', { name: uuid, offset: index * 256 * 1024, data });
    expect(clock.nowMs() - startMs).toBeGreaterThanOrEqual(1750); // 7 × 256 KiB waited for at 1 MiB/s
    // Reads are not writes: w_mbytes_per_sec does not hold them back.
    const readAtMs = clock.nowMs();
    for (let index = 0; index < 4; index++) await rpc.call('node_lvol_read', { name: uuid, offset: index * mib, length: 256 * 1024 });
    expect(clock.nowMs()).toBe(readAtMs);
    // 1000 I/Os a second: 10 reads need 9 ms of the clock.
    expect(await rpc.call('bdev_set_qos_limit', { name: uuid, rw_ios_per_sec: 1000, w_mbytes_per_sec: 0 })).toBe(true);
    const iosAtMs = clock.nowMs();
    for (let index = 0; index < 10; index++) await rpc.call('node_lvol_read', { name: uuid, offset: 0, length: 4096 });
    expect(clock.nowMs() - iosAtMs).toBeGreaterThanOrEqual(9);
    await rpc.call('bdev_lvol_delete', { name: uuid });
  });

  it('shows the limits in bdev_get_bdevs, rounds rw_ios_per_sec up as SPDK does, and bad params change nothing', async () => {
    await rpc.call('bdev_malloc_create', { name: 'qos1', num_blocks: 8192, block_size: 512 });
    const uuid = await rpc.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'shown', size_in_mib: 4, thin_provision: true });
    expect(await rpc.call('bdev_set_qos_limit', { name: 'qos1', rw_mbytes_per_sec: 100, rw_ios_per_sec: 1500 })).toBe(true);
    expect(await rpc.call('bdev_set_qos_limit', { name: 'lvs0/shown', r_mbytes_per_sec: 5, w_mbytes_per_sec: 7 })).toBe(true);
    const limitsOf = async (name: string) => (await rpc.call<Array<{ assigned_rate_limits: Record<string, number> }>>('bdev_get_bdevs', { name }))[0]!.assigned_rate_limits;
    const qos1Limits = { rw_ios_per_sec: 2000, rw_mbytes_per_sec: 100, r_mbytes_per_sec: 0, w_mbytes_per_sec: 0 };
    const shownLimits = { rw_ios_per_sec: 0, rw_mbytes_per_sec: 0, r_mbytes_per_sec: 5, w_mbytes_per_sec: 7 };
    expect(await limitsOf('qos1')).toEqual(qos1Limits);
    expect(await limitsOf('lvs0/shown')).toEqual(shownLimits);
    const all = await rpc.call<Array<{ name: string; assigned_rate_limits: Record<string, number> }>>('bdev_get_bdevs', {});
    expect(all.find((row) => row.name === uuid)!.assigned_rate_limits).toEqual(shownLimits);
    expect(all.find((row) => row.name === 'disk0')!.assigned_rate_limits).toEqual({ rw_ios_per_sec: 0, rw_mbytes_per_sec: 0, r_mbytes_per_sec: 0, w_mbytes_per_sec: 0 });

    expect(await rpcError(rpc.call('bdev_set_qos_limit', { name: 'qos1', rw_mbytes_per_sec: -1 }))).toMatchObject({ code: -32602 });
    expect(await rpcError(rpc.call('bdev_set_qos_limit', { name: 'qos1', rw_mbytes_per_sec: 1.5 }))).toMatchObject({ code: -32602 });
    expect(await rpcError(rpc.call('bdev_set_qos_limit', { name: 'qos1', rw_mbytes_per_sec: 0, colour: 1 }))).toMatchObject({ code: -32602 });
    expect(await rpcError(rpc.call('bdev_set_qos_limit', { name: 'qos1' }))).toMatchObject({ code: -22 });
    expect(await rpcError(rpc.call('bdev_set_qos_limit', { name: 'nope', rw_mbytes_per_sec: 1 }))).toMatchObject({ code: -19 });
    expect(await limitsOf('qos1')).toEqual(qos1Limits);
    // A bdev deleted and made again under the same name starts without limits.
    await rpc.call('bdev_malloc_delete', { name: 'qos1' });
    await rpc.call('bdev_malloc_create', { name: 'qos1', num_blocks: 8192, block_size: 512 });
    expect(await limitsOf('qos1')).toEqual({ rw_ios_per_sec: 0, rw_mbytes_per_sec: 0, r_mbytes_per_sec: 0, w_mbytes_per_sec: 0 });
    await rpc.call('bdev_malloc_delete', { name: 'qos1' });
    await rpc.call('bdev_lvol_delete', { name: uuid });
  });
});

describe('bdev_set_qos_limit on a copy destination', () => {
  it('holds a shallow copy to the destination lvol\'s rw_mbytes_per_sec (the rebuild rate) and counts its writes', async () => {
    const clock = simulatedClock();
    const local = new StorageNode(seededRuntime(23), { ioClock: clock });
    try {
      const clusterBytes = 64 * 1024;
      await local.attachBaseDevice('mA', new MemoryDevice(16 * mib, 512));
      await local.attachBaseDevice('mB', new MemoryDevice(16 * mib, 512));
      const table = createMethodTable(local);
      for (const [bdev_name, lvs_name] of [['mA', 'A'], ['mB', 'B']]) await call(table, 'bdev_lvol_create_lvstore', { bdev_name, lvs_name, cluster_sz: clusterBytes });
      await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'src', size_in_mib: 1, thin_provision: true });
      await local.bdev('A/src').write(0, Buffer.alloc(mib, 0x42));
      await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/src', snapshot_name: 'snap' });
      await call(table, 'bdev_lvol_create', { lvs_name: 'B', lvol_name: 'dst', size_in_mib: 1, thin_provision: true });
      expect(await call(table, 'bdev_set_qos_limit', { name: 'B/dst', rw_mbytes_per_sec: 1 })).toBe(true);
      const startMs = clock.nowMs();
      const { operation_id } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_shallow_copy', { src_lvol_name: 'A/snap', dst_bdev_name: 'B/dst' });
      let status: Record<string, unknown>;
      do {
        status = await call<Record<string, unknown>>(table, 'bdev_lvol_check_shallow_copy', { operation_id });
        await new Promise((resolve) => setImmediate(resolve));
      } while (status.state === 'in progress');
      expect(status).toMatchObject({ state: 'complete', copied_clusters: 16 });
      // 16 clusters of 64 KiB at 1 MiB/s: 15 of them waited for.
      expect(clock.nowMs() - startMs).toBeGreaterThanOrEqual(((15 * clusterBytes) / mib) * 1000);
      const stats = await call<{ bdevs: IostatRow[] }>(table, 'bdev_get_iostat', { name: 'B/dst' });
      expect(stats.bdevs[0]).toMatchObject({ bytes_written: mib, num_write_ops: 16 });
    } finally {
      await local.shutdown();
    }
  });
});

describe('bdev_get_iostat', () => {
  it('counts exactly the reads, writes and trims done over NBD on a malloc bdev and over RPC on an lvol', async () => {
    await rpc.call('bdev_malloc_create', { name: 'stat0', num_blocks: 8192, block_size: 512 });
    await rpc.call('nbd_start_export', { bdev_name: 'stat0', export_name: 'stat0' });
    const client = await NbdTestClient.open(address, 'stat0');
    for (let index = 0; index < 3; index++) expect((await client.write(index * 8192, Buffer.alloc(8192, 1))).error).toBe(0);
    expect((await client.read(0, 4096)).error).toBe(0);
    expect((await client.request(command.trim, 0, 16384)).error).toBe(0);
    const malloc = await iostat('stat0');
    expect(malloc).toMatchObject({ name: 'stat0', bytes_written: 3 * 8192, num_write_ops: 3, bytes_read: 4096, num_read_ops: 1, bytes_unmapped: 16384, num_unmap_ops: 1 });
    expect(malloc.read_latency_ticks).toBeGreaterThan(0);
    expect(malloc.min_read_latency_ticks).toBe(malloc.max_read_latency_ticks); // one read
    await client.disconnect();
    await rpc.call('nbd_stop_export', { export_name: 'stat0' });

    const uuid = await rpc.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'stat', size_in_mib: 8, thin_provision: true });
    const zero = await iostat('lvs0/stat');
    expect(zero).toMatchObject({ name: uuid, bytes_read: 0, num_read_ops: 0, bytes_written: 0, num_write_ops: 0, min_read_latency_ticks: 0 });
    await rpc.call('node_lvol_write', { name: 'lvs0/stat', offset: 0, data: Buffer.alloc(65536, 2).toString('base64') });
    await rpc.call('node_lvol_read', { name: uuid, offset: 0, length: 4096 });
    await rpc.call('node_lvol_read', { name: uuid, offset: 4096, length: 8192 });
    expect(await iostat(uuid)).toMatchObject({ name: uuid, bytes_written: 65536, num_write_ops: 1, bytes_read: 12288, num_read_ops: 2 });
    // Every bdev of the listing has SPDK's row; an unknown name is -19.
    const listed = await rpc.call<{ bdevs: IostatRow[] }>('bdev_get_iostat', {});
    expect(listed.bdevs.find((row) => row.name === uuid)).toMatchObject({ bytes_written: 65536 });
    expect(listed.bdevs.find((row) => row.name === 'disk0')).toMatchObject({ name: 'disk0' });
    expect(await rpcError(rpc.call('bdev_get_iostat', { name: 'nope' }))).toMatchObject({ code: -19 });
    await rpc.call('bdev_lvol_delete', { name: uuid });
    await rpc.call('bdev_malloc_delete', { name: 'stat0' });
    expect((await rpc.call<{ bdevs: IostatRow[] }>('bdev_get_iostat', {})).bdevs.map((row) => row.name)).not.toContain(uuid);
  });
});
