// Goal (issue: external snapshots): bdev_lvol_clone_bdev makes a thin lvol that reads through to
// a bdev outside its lvstore; writes copy-on-write from it; listings show esnap_clone and
// external_snapshot_name; the external bdev cannot be deleted under its clone; a restart without
// it reports the clone degraded, and with it reads the same bytes; decouple makes it independent.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageNode } from '../../src/actors/node.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { call, errnoOf, nodeHarness } from './tableCalls.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const clusterBytes = 64 * 1024;
const externalUuid = '11111111-2222-4333-8444-555555555555';
const harness = nodeHarness(31);
afterEach(() => harness.cleanup());

function pattern(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let offset = 0; offset < bytes; offset += 4) out.writeUInt32LE((offset * 2654435761) >>> 0, offset);
  return out;
}

async function start(dir: string, withExternal: boolean): Promise<{ node: StorageNode; table: MethodTable }> {
  const { node, table } = harness.newNode();
  if (withExternal) await call(table, 'bdev_aio_create', { name: 'ext', filename: join(dir, 'ext.img'), block_size: 512, uuid: externalUuid });
  await call(table, 'bdev_aio_create', { name: 'disk', filename: join(dir, 'disk.img'), block_size: 512 });
  return { node, table };
}

describe('external snapshots', () => {
  it('clone_bdev reads through, copies on write, lists as esnap, survives restarts, and decouples', async () => {
    const dir = await harness.tempDir('lvnode-esnap-');
    const externalBytes = 10 * clusterBytes + 4096; // not a whole number of clusters
    const bytes = pattern(externalBytes);
    await FileDevice.createSparse(join(dir, 'ext.img'), externalBytes);
    await FileDevice.createSparse(join(dir, 'disk.img'), 32 * 1024 * 1024);
    let { node, table } = await start(dir, true);
    await node.registry.baseBdev('ext').device.write(0, bytes);
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'none' });
    await call(table, 'bdev_lvol_clone_bdev', { bdev: 'ext', lvs_name: 'lvs', clone_name: 'c' });
    const size = 11 * clusterBytes;
    const expected = Buffer.concat([bytes, Buffer.alloc(size - externalBytes)]);
    expect((await readBdev(node.bdev('lvs/c'), 0, size)).equals(expected)).toBe(true);
    const [bdev] = await call<Array<{ num_blocks: number; driver_specific: { lvol: Record<string, unknown> } }>>(table, 'bdev_get_bdevs', { name: 'lvs/c' });
    expect(bdev!.num_blocks).toBe(size / 512);
    expect(bdev!.driver_specific.lvol).toMatchObject({ esnap_clone: true, external_snapshot_name: externalUuid, thin_provision: true, num_allocated_clusters: 0 });
    expect((await call<Array<Record<string, unknown>>>(table, 'bdev_lvol_get_lvols', {}))[0]).toMatchObject({ is_esnap_clone: true, is_degraded: false });
    // A partial write copies the rest of the cluster from the external snapshot.
    await node.bdev('lvs/c').write(clusterBytes + 512, Buffer.alloc(512, 0xcc));
    expected.fill(0xcc, clusterBytes + 512, clusterBytes + 1024);
    expect((await readBdev(node.bdev('lvs/c'), 0, size)).equals(expected)).toBe(true);
    // Its block status: data where the external snapshot reaches, a hole past it.
    expect(node.bdev('lvs/c').extents(0, size, 1024).map((extent) => extent.allocated)).toEqual([true]);
    // A restart without the external bdev: degraded, reads of what it does not own fail clearly.
    await node.shutdown();
    ({ node, table } = await start(dir, false));
    expect((await call<Array<Record<string, unknown>>>(table, 'bdev_lvol_get_lvols', {}))[0]).toMatchObject({ is_esnap_clone: true, is_degraded: true });
    expect(await errnoOf(readBdev(node.bdev('lvs/c'), 0, 512))).toBe('EIO');
    expect((await readBdev(node.bdev('lvs/c'), clusterBytes + 512, 512)).every((byte) => byte === 0xcc)).toBe(true);
    await node.shutdown();
    ({ node, table } = await start(dir, true));
    expect((await readBdev(node.bdev('lvs/c'), 0, size)).equals(expected)).toBe(true);
    // Decouple copies what the external snapshot covers: then it no longer depends on it.
    await call(table, 'bdev_lvol_decouple_parent', { name: 'lvs/c' });
    expect((await call<Array<Record<string, unknown>>>(table, 'bdev_lvol_get_lvols', {}))[0]).toMatchObject({ is_esnap_clone: false, num_allocated_clusters: 11 });
    expect((await readBdev(node.bdev('lvs/c'), 0, size)).equals(expected)).toBe(true);
    await call(table, 'bdev_aio_delete', { name: 'ext' });
    expect((await readBdev(node.bdev('lvs/c'), 0, size)).equals(expected)).toBe(true);
  });

  it('deleting the external bdev degrades its clone, as SPDK; attaching it again heals it', async () => {
    const dir = await harness.tempDir('lvnode-esnap-');
    await FileDevice.createSparse(join(dir, 'ext.img'), 2 * clusterBytes);
    await FileDevice.createSparse(join(dir, 'disk.img'), 32 * 1024 * 1024);
    const { node, table } = await start(dir, true);
    await node.registry.baseBdev('ext').device.write(0, Buffer.alloc(2 * clusterBytes, 0x77));
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'none' });
    // By UUID, as SPDK's tests name it.
    await call(table, 'bdev_lvol_clone_bdev', { bdev: externalUuid, lvs_name: 'lvs', clone_name: 'c' });
    await call(table, 'bdev_aio_delete', { name: 'ext' });
    expect((await call<Array<Record<string, unknown>>>(table, 'bdev_lvol_get_lvols', {}))[0]).toMatchObject({ is_degraded: true });
    expect(await errnoOf(readBdev(node.bdev('lvs/c'), 0, 512))).toBe('EIO');
    await call(table, 'bdev_aio_create', { name: 'ext', filename: join(dir, 'ext.img'), block_size: 512, uuid: externalUuid });
    expect((await call<Array<Record<string, unknown>>>(table, 'bdev_lvol_get_lvols', {}))[0]).toMatchObject({ is_degraded: false });
    expect((await readBdev(node.bdev('lvs/c'), 0, 512)).every((byte) => byte === 0x77)).toBe(true);
  });

  it('set_parent_bdev re-parents a thin lvol; bad requests are refused and change nothing', async () => {
    const dir = await harness.tempDir('lvnode-esnap-');
    await FileDevice.createSparse(join(dir, 'ext.img'), 4 * clusterBytes);
    await FileDevice.createSparse(join(dir, 'disk.img'), 32 * 1024 * 1024);
    const { node, table } = await start(dir, true);
    await node.registry.baseBdev('ext').device.write(0, Buffer.alloc(4 * clusterBytes, 0x5e));
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'none' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'thin', size_in_mib: 1, thin_provision: true });
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'thick', size_in_mib: 1, thin_provision: false });
    await node.bdev('lvs/thin').write(0, Buffer.alloc(512, 1));
    expect(await errnoOf(call(table, 'bdev_lvol_set_parent_bdev', { lvol_name: 'lvs/thick', parent_name: 'ext' }))).toBe('EINVAL');
    expect(await errnoOf(call(table, 'bdev_lvol_set_parent_bdev', { lvol_name: 'lvs/thin', parent_name: 'nope' }))).toBe('ENODEV');
    expect(await errnoOf(call(table, 'bdev_lvol_set_parent_bdev', { lvol_name: 'lvs/thin', parent_name: 'disk' }))).toBe('EBUSY');
    expect(await errnoOf(call(table, 'bdev_lvol_clone_bdev', { bdev: 'lvs/thick', lvs_name: 'lvs', clone_name: 'x' }))).toBe('EINVAL');
    expect(await errnoOf(call(table, 'bdev_lvol_clone_bdev', { bdev: 'ext', lvs_name: 'lvs', clone_name: 'thin' }))).toBe('EEXIST');
    await call(table, 'bdev_lvol_set_parent_bdev', { lvol_name: 'lvs/thin', parent_name: 'ext' });
    const read = await readBdev(node.bdev('lvs/thin'), 0, 2 * clusterBytes);
    expect(read.subarray(0, 512).every((byte) => byte === 1)).toBe(true);
    expect(read.subarray(clusterBytes).every((byte) => byte === 0x5e)).toBe(true);
    expect(await errnoOf(call(table, 'bdev_lvol_set_parent_bdev', { lvol_name: 'lvs/thin', parent_name: 'ext' }))).toBe('EEXIST');
    expect((await call<Array<{ name: string; is_esnap_clone: boolean }>>(table, 'bdev_lvol_get_lvols', {})).map((lvol) => [lvol.name, lvol.is_esnap_clone])).toEqual([
      ['thin', true],
      ['thick', false],
    ]);
  });
});
