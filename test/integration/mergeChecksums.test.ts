// Goal (issue 21 item 2), through the method table of a real node on a file: deleting the older of
// two snapshots with range checksums (Longhorn's snapshot delete) leaves the newer one with
// derived checksums that RPC answers, equal to an independent CRC of its bytes and to a fresh
// registration afterwards, shown `done` with no walk run, kept across a restart; a walk of the
// newer snapshot preempted by the merge is not resumed over clusters it never saw; checksums that
// cannot be derived are dropped as before.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { NodeEvent, StorageNode } from '../../src/actors/node.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { oneCrc, pattern as seededPattern } from './knownCrc.ts';
import { call, errnoOf, nodeHarness } from './tableCalls.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const clusterBytes = 64 * 1024;
const clusterCount = 16;
const harness = nodeHarness(61);
afterEach(() => harness.cleanup());


function pattern(seed: number): Buffer {
  return seededPattern(seed, clusterBytes);
}

async function start(path: string): Promise<{ node: StorageNode; table: MethodTable }> {
  const started = harness.newNode();
  await call(started.table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  return started;
}

/** vol written at 0-9 → s1; at 2, 5 and 12 → s2; at 3 → vol's own. */
async function chain(): Promise<{ node: StorageNode; table: MethodTable; path: string }> {
  const dir = await harness.tempDir('lvnode-merge-');
  const path = join(dir, 'disk.img');
  await FileDevice.createSparse(path, 32 * 1024 * 1024);
  const { node, table } = await start(path);
  await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'none' });
  await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'vol', size_in_mib: (clusterCount * clusterBytes) / (1024 * 1024), thin_provision: true });
  const write = async (clusters: number[], seed: number) => {
    for (const clusterIndex of clusters) await node.bdev('lvs/vol').write(clusterIndex * clusterBytes, pattern(seed * 100 + clusterIndex));
  };
  await write([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 1);
  await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/vol', snapshot_name: 's1' });
  await write([2, 5, 12], 2);
  await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/vol', snapshot_name: 's2' });
  await write([3], 3);
  return { node, table, path };
}

/** An independent CRC of the clusters `name` owns now: whole, and per cluster (0 where not owned). */
async function expectedOf(node: StorageNode, name: string): Promise<{ checksum: bigint; range: bigint[] }> {
  const owned: Buffer[] = [];
  const range: bigint[] = new Array<bigint>(clusterCount).fill(0n);
  for (const [clusterIndex] of node.resolveLvol(name).lvol.clusterMap.entries()) {
    const bytes = await readBdev(node.bdev(name), clusterIndex * clusterBytes, clusterBytes);
    owned.push(bytes);
    range[clusterIndex] = oneCrc(bytes);
  }
  return { checksum: oneCrc(...owned), range };
}

async function storedOf(table: MethodTable, name: string): Promise<{ checksum: bigint; range: bigint[] }> {
  const { checksum } = await call<{ checksum: bigint }>(table, 'bdev_lvol_get_snapshot_checksum', { name });
  const rows = await call<Array<{ cluster_index: number; checksum: bigint }>>(table, 'bdev_lvol_get_snapshot_range_checksums', {
    name,
    cluster_start_index: 0,
    cluster_count: clusterCount,
  });
  return { checksum, range: rows.map((row) => row.checksum) };
}

function status(table: MethodTable, name: string): Promise<{ state: string; will_resume: boolean; started_at: string | null }> {
  return call(table, 'bdev_lvol_get_checksum_status', { name });
}

describe('checksums derived by a merge, over the method table', () => {
  it('answers the derived values at once, equal to the bytes and to a fresh registration, done, across a restart', async () => {
    let { node, table, path } = await chain();
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s1' });
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s2' });
    const events: NodeEvent[] = [];
    node.events.on('event', (event) => events.push(event));

    expect(await call(table, 'bdev_lvol_delete', { name: 'lvs/s1' })).toBe(true);
    const expected = await expectedOf(node, 'lvs/s2');
    expect(expected.range.filter((crc) => crc !== 0n)).toHaveLength(11);
    expect(await storedOf(table, 'lvs/s2')).toEqual(expected);
    // Shown done as at attach: no walk ran, none was announced.
    expect(await status(table, 'lvs/s2')).toMatchObject({ state: 'done', started_at: null, will_resume: false });
    expect(events.filter((event) => event.type === 'checksum_state' && event.state !== 'done')).toEqual([]);

    expect(await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s2' })).toBe(true);
    expect(await storedOf(table, 'lvs/s2')).toEqual(expected);
    await call(table, 'bdev_lvol_delete', { name: 'lvs/vol' });
    await node.shutdown();
    ({ node, table } = await start(path));
    expect(await storedOf(table, 'lvs/s2')).toEqual(expected);
    expect(await status(table, 'lvs/s2')).toMatchObject({ state: 'done' });
  });

  it('ends a walk of the newer snapshot that the merge preempted, shown done with the derived values', async () => {
    // Resuming that walk would fold clusters it never saw into a running CRC of the old ones.
    const { node, table } = await chain();
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s1' });
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s2' });
    // 1 MiB/s and 64 KiB clusters: the walk of s2's 3 clusters runs long enough to be preempted.
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 1 });
    const again = call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s2' }).catch((error: unknown) => error);
    while ((await status(table, 'lvs/s2')).state !== 'computing') await new Promise((resolve) => setTimeout(resolve, 2));
    await call(table, 'bdev_lvol_delete', { name: 'lvs/s1' });
    expect(await again).toMatchObject({ errno: 'EINTR' });
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 0 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await status(table, 'lvs/s2')).toMatchObject({ state: 'done', will_resume: false });
    expect(await storedOf(table, 'lvs/s2')).toEqual(await expectedOf(node, 'lvs/s2'));
  });

  it('drops them as before when the older snapshot has only a whole checksum', async () => {
    const { table } = await chain();
    await call(table, 'bdev_lvol_register_snapshot_checksum', { name: 'lvs/s1' });
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/s2' });
    await call(table, 'bdev_lvol_delete', { name: 'lvs/s1' });
    expect(await status(table, 'lvs/s2')).toMatchObject({ state: 'idle' });
    expect(await errnoOf(call(table, 'bdev_lvol_get_snapshot_checksum', { name: 'lvs/s2' }))).toBe('ENODEV');
    expect(await errnoOf(call(table, 'bdev_lvol_get_snapshot_range_checksums', { name: 'lvs/s2', cluster_start_index: 0, cluster_count: 1 }))).toBe('ENOENT');
  });
});
