// Goal (issue: rebuild surface): shallow, range shallow and deep copies through the method table
// on a real node: bytes and allocation of the destination match the source, a delta rebuild copies
// only what differs, a delete of either end stops the copy cleanly, and a checksum on the source
// is preempted (and resumes) instead of the copy being refused.
import { afterEach, describe, expect, it } from 'vitest';
import { StorageNode } from '../../src/actors/node.ts';
import { crc64 } from '../../src/checksum/crc64.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { createMethodTable } from '../../src/transport/methods.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { call, errnoOf } from './tableCalls.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const clusterBytes = 64 * 1024;
const nodes: StorageNode[] = [];

afterEach(async () => {
  for (const node of nodes.splice(0)) await node.shutdown();
});

/** Two lvstores (A and B) on malloc-like devices, 64 KiB clusters. */
async function twoStores(): Promise<{ node: StorageNode; table: MethodTable }> {
  const node = new StorageNode(seededRuntime(21));
  nodes.push(node);
  await node.attachBaseDevice('mA', new MemoryDevice(32 * 1024 * 1024, 512));
  await node.attachBaseDevice('mB', new MemoryDevice(32 * 1024 * 1024, 512));
  const table = createMethodTable(node);
  for (const [bdev, lvs] of [['mA', 'A'], ['mB', 'B']]) {
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: bdev, lvs_name: lvs, cluster_sz: clusterBytes, clear_method: 'unmap' });
  }
  return { node, table };
}

async function fill(node: StorageNode, name: string, clusterIndex: number, byte: number): Promise<void> {
  await node.bdev(name).write(clusterIndex * clusterBytes, Buffer.alloc(clusterBytes, byte));
}

async function waitForCopy(table: MethodTable, kind: 'shallow' | 'deep', operationId: number): Promise<Record<string, unknown>> {
  for (;;) {
    const status = await call<Record<string, unknown>>(table, `bdev_lvol_check_${kind}_copy`, { operation_id: operationId });
    if (status.state !== 'in progress') return status;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Per-cluster CRC of what the lvol owns (0 where it owns nothing), as a rebuild would compare. */
async function ownedCrcs(node: StorageNode, table: MethodTable, name: string, clusters: number): Promise<bigint[]> {
  const fragmap = await call<{ fragmap: string }>(table, 'bdev_lvol_get_fragmap', { name });
  const bits = Buffer.from(fragmap.fragmap, 'base64');
  const out: bigint[] = [];
  for (let index = 0; index < clusters; index++) {
    const owned = (bits[index >> 3]! >> (index & 7)) & 1;
    out.push(owned ? crc64(await readBdev(node.bdev(name), index * clusterBytes, clusterBytes)) : 0n);
  }
  return out;
}

describe('copies', () => {
  it('shallow copy brings exactly the clusters a snapshot owns to an lvol on another lvstore', async () => {
    const { node, table } = await twoStores();
    await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'src', size_in_mib: 1, thin_provision: true });
    for (const [index, byte] of [[0, 1], [3, 2], [15, 3]] as const) await fill(node, 'A/src', index, byte);
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/src', snapshot_name: 'snap' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'B', lvol_name: 'dst', size_in_mib: 1, thin_provision: true });
    const events: Array<Record<string, unknown>> = [];
    node.events.on('event', (event) => events.push(event));
    const { operation_id } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_shallow_copy', { src_lvol_name: 'A/snap', dst_bdev_name: 'B/dst' });
    const status = await waitForCopy(table, 'shallow', operation_id);
    expect(status).toMatchObject({ state: 'complete', copied_clusters: 3, total_clusters: 3 });
    // Every state change was announced, in order, for notify_subscribe.
    expect(events.filter((event) => event.type === 'copy_state').map((event) => event.machine_state)).toEqual(['queued', 'copying', 'done']);
    // Reported once after it ended, then forgotten, as SPDK.
    expect(await errnoOf(call(table, 'bdev_lvol_check_shallow_copy', { operation_id }))).toBe('ENODEV');
    expect((await readBdev(node.bdev('B/dst'), 0, 16 * clusterBytes)).equals(await readBdev(node.bdev('A/snap'), 0, 16 * clusterBytes))).toBe(true);
    expect(await ownedCrcs(node, table, 'B/dst', 16)).toEqual(await ownedCrcs(node, table, 'A/snap', 16));
  });

  it('range shallow copy is a delta rebuild: only differing clusters move, holes are unmapped', async () => {
    const { node, table } = await twoStores();
    await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'src', size_in_mib: 1, thin_provision: true });
    await call(table, 'bdev_lvol_create', { lvs_name: 'B', lvol_name: 'dst', size_in_mib: 1, thin_provision: true });
    // Same in 0, 2, 4; different in 1; only the source has 5; only the stale replica has 3.
    for (const [index, byte] of [[0, 1], [1, 9], [2, 2], [4, 4], [5, 5]] as const) await fill(node, 'A/src', index, byte);
    for (const [index, byte] of [[0, 1], [1, 7], [2, 2], [3, 3], [4, 4]] as const) await fill(node, 'B/dst', index, byte);
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/src', snapshot_name: 'snap' });
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'A/snap' });
    const source = (await call<Array<{ cluster_index: number; checksum: bigint }>>(table, 'bdev_lvol_get_snapshot_range_checksums', {
      name: 'A/snap',
      cluster_start_index: 0,
      cluster_count: 16,
    })).map((entry) => entry.checksum);
    const stale = await ownedCrcs(node, table, 'B/dst', 16);
    const differing = source.flatMap((crc, index) => (crc === stale[index] ? [] : [index]));
    expect(differing).toEqual([1, 3, 5]);
    const { operation_id } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_range_shallow_copy', {
      src_lvol_name: 'A/snap',
      dst_bdev_name: 'B/dst',
      clusters: differing,
    });
    expect(await waitForCopy(table, 'shallow', operation_id)).toMatchObject({ state: 'complete', copied_clusters: 2, unmapped_clusters: 1, total_clusters: 3 });
    expect((await readBdev(node.bdev('B/dst'), 0, 16 * clusterBytes)).equals(await readBdev(node.bdev('A/snap'), 0, 16 * clusterBytes))).toBe(true);
    expect(await ownedCrcs(node, table, 'B/dst', 16)).toEqual(source);
  });

  it('deep copy writes what the source shows through its chain, holes as zeros, to a malloc bdev', async () => {
    const { node, table } = await twoStores();
    await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'v', size_in_mib: 1, thin_provision: true });
    await fill(node, 'A/v', 2, 0x22);
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/v', snapshot_name: 'base' });
    await fill(node, 'A/v', 6, 0x66);
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/v', snapshot_name: 'top' });
    await call(table, 'bdev_malloc_create', { name: 'target', num_blocks: 2048, block_size: 512 });
    await node.registry.baseBdev('target').device.write(10 * clusterBytes, Buffer.alloc(clusterBytes, 0xee)); // must become zeros
    const { operation_id } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_deep_copy', { src_lvol_name: 'A/top', dst_bdev_name: 'target' });
    expect(await waitForCopy(table, 'deep', operation_id)).toMatchObject({ state: 'complete', processed_clusters: 16, total_clusters: 16 });
    const copied = Buffer.alloc(16 * clusterBytes);
    await node.registry.baseBdev('target').device.readInto(copied, 0);
    expect(copied.equals(await readBdev(node.bdev('A/top'), 0, 16 * clusterBytes))).toBe(true);
  });

  it('refuses bad ends clearly and changes nothing', async () => {
    const { node, table } = await twoStores();
    await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'writable', size_in_mib: 1, thin_provision: true });
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/writable', snapshot_name: 'snap' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'B', lvol_name: 'small', size_in_mib: 1, thin_provision: true });
    await call(table, 'bdev_lvol_resize', { name: 'A/writable', size_in_mib: 2 });
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/writable', snapshot_name: 'big' });
    const start = (src: string, dst: string, clusters?: number[]) =>
      call(table, clusters ? 'bdev_lvol_start_range_shallow_copy' : 'bdev_lvol_start_shallow_copy', { src_lvol_name: src, dst_bdev_name: dst, ...(clusters ? { clusters } : {}) });
    expect(await errnoOf(start('A/writable', 'B/small'))).toBe('EPERM');
    expect(await errnoOf(start('A/nope', 'B/small'))).toBe('ENODEV');
    expect(await errnoOf(start('A/snap', 'B/nope'))).toBe('ENODEV');
    expect(await errnoOf(start('A/big', 'B/small'))).toBe('EINVAL');
    expect(await errnoOf(start('A/snap', 'mB'))).toBe('EPERM'); // claimed by lvstore B
    expect(await errnoOf(start('A/snap', 'A/snap'))).toBe('EINVAL');
    expect(await errnoOf(start('A/snap', 'A/big'))).toBe('EPERM'); // a read-only destination
    expect(await errnoOf(start('A/snap', 'B/small', [16]))).toBe('EINVAL');
    expect(await errnoOf(call(table, 'bdev_lvol_check_shallow_copy', { operation_id: 4242 }))).toBe('ENODEV');
    expect(node.copies.list()).toEqual([]);
  });

  it('a delete of the source stops the copy between clusters; the delete succeeds', async () => {
    const { node, table } = await twoStores();
    await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'v', size_in_mib: 4, thin_provision: false });
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/v', snapshot_name: 'snap' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'B', lvol_name: 'dst', size_in_mib: 4, thin_provision: true });
    // 1 MiB/s and 64 KiB clusters: the 64-cluster copy takes seconds.
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 1 });
    const { operation_id } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_shallow_copy', { src_lvol_name: 'A/snap', dst_bdev_name: 'B/dst' });
    while (node.copies.list()[0]!.copied_clusters < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    await call(table, 'bdev_lvol_delete', { name: 'A/v' });
    await call(table, 'bdev_lvol_delete', { name: 'A/snap' });
    const status = await call<Record<string, unknown>>(table, 'bdev_lvol_check_shallow_copy', { operation_id });
    expect(status).toMatchObject({ state: 'error', machine_state: 'stopped', error: 'stopped: bdev_lvol_delete' });
    expect(status.copied_clusters as number).toBeLessThan(64);
  });

  it('preempts a checksum walk on its source, which resumes after and completes', async () => {
    const { node, table } = await twoStores();
    await call(table, 'bdev_lvol_create', { lvs_name: 'A', lvol_name: 'v', size_in_mib: 2, thin_provision: false });
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'A/v', snapshot_name: 'snap' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'B', lvol_name: 'dst', size_in_mib: 2, thin_provision: true });
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 2, max_concurrent_checksums: 1 });
    const register = call(table, 'bdev_lvol_register_snapshot_checksum', { name: 'A/snap' }).catch((error: unknown) => error);
    while ((await call<{ state: string }>(table, 'bdev_lvol_get_checksum_status', { name: 'A/snap' }).catch(() => ({ state: '' }))).state !== 'computing') {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const { operation_id } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_shallow_copy', { src_lvol_name: 'A/snap', dst_bdev_name: 'B/dst' });
    expect(await register).toMatchObject({ errno: 'EINTR' });
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 0 });
    expect(await waitForCopy(table, 'shallow', operation_id)).toMatchObject({ state: 'complete', copied_clusters: 32 });
    for (;;) {
      const status = await call<{ state: string }>(table, 'bdev_lvol_get_checksum_status', { name: 'A/snap' });
      if (status.state === 'done') break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const expected = crc64(await readBdev(node.bdev('A/snap'), 0, 32 * clusterBytes));
    expect(await call(table, 'bdev_lvol_get_snapshot_checksum', { name: 'A/snap' })).toEqual({ checksum: expected });
  });
});
