// Goal (SPDK's test_construct_nested_lvol): an lvstore on an lvol bdev. The lvol is claimed (no
// delete, no writes from outside), the parent lvstore cannot go while it is, and a restart finds
// the nested lvstore again by examining the lvols.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageNode } from '../../src/actors/node.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { call, errnoOf, nodeHarness } from './tableCalls.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const mib = 1024 * 1024;
const harness = nodeHarness(51);
afterEach(() => harness.cleanup());

async function start(path: string): Promise<{ node: StorageNode; table: MethodTable }> {
  const { node, table } = harness.newNode();
  await call(table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  return { node, table };
}

describe('nested lvstores', () => {
  it('lives on an lvol, claims it, and is found again after a restart', async () => {
    const dir = await harness.tempDir('lvnode-nested-');
    const path = join(dir, 'disk.img');
    await FileDevice.createSparse(path, 128 * mib);
    let { node, table } = await start(path);
    const lvs = await call<string>(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: 4 * mib });
    const lvol = await call<string>(table, 'bdev_lvol_create', { uuid: lvs, lvol_name: 'lvol', size_in_mib: 124 });
    const nested = await call<string>(table, 'bdev_lvol_create_lvstore', { bdev_name: lvol, lvs_name: 'nested' });
    const [nestedInfo] = await call<Array<Record<string, unknown>>>(table, 'bdev_lvol_get_lvstores', { uuid: nested });
    expect(nestedInfo).toMatchObject({ base_bdev: lvol, total_data_clusters: 30, cluster_size: 4 * mib });
    const inner = await call<string>(table, 'bdev_lvol_create', { uuid: nested, lvol_name: 'inner', size_in_mib: 120 });
    expect(await errnoOf(call(table, 'bdev_lvol_create', { uuid: nested, lvol_name: 'inner2', size_in_mib: 120 }))).toBe('ENOSPC');
    await node.bdev('nested/inner').write(8 * mib, Buffer.alloc(mib, 0x4e));
    const [claimed] = await call<Array<Record<string, unknown>>>(table, 'bdev_get_bdevs', { name: lvol });
    expect(claimed).toMatchObject({ claimed: true, claim_type: 'exclusive_write' });
    expect(await errnoOf(call(table, 'bdev_lvol_delete', { name: lvol }))).toBe('EBUSY');
    expect(await errnoOf(call(table, 'bdev_lvol_delete_lvstore', { uuid: lvs }))).toBe('EBUSY');
    // The nested lvstore is the lvol's only writer: another's write is refused as for any claimed bdev.
    expect(await errnoOf(Promise.resolve().then(() => node.bdev('lvs/lvol').write(0, Buffer.alloc(512))))).toBe('EPERM');
    await node.shutdown();
    ({ node, table } = await start(path));
    expect((await call<Array<{ name: string }>>(table, 'bdev_lvol_get_lvstores', {})).map((store) => store.name).sort()).toEqual(['lvs', 'nested']);
    expect((await readBdev(node.bdev('nested/inner'), 8 * mib, mib)).every((byte) => byte === 0x4e)).toBe(true);
    await call(table, 'bdev_lvol_delete', { name: inner });
    await call(table, 'bdev_lvol_delete_lvstore', { uuid: nested });
    await call(table, 'bdev_lvol_delete', { name: lvol });
    await call(table, 'bdev_lvol_delete_lvstore', { uuid: lvs });
    expect(await call(table, 'bdev_lvol_get_lvstores', {})).toEqual([]);
  });
});

describe('deleting the base bdev of an lvstore', () => {
  it('unloads the lvstore (and one nested on its lvols), as SPDK; attaching the file again loads it back', async () => {
    const dir = await harness.tempDir('lvnode-hotremove-');
    const path = join(dir, 'disk.img');
    await FileDevice.createSparse(path, 128 * mib);
    const { node, table } = await start(path);
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: 4 * mib });
    const lvol = await call<string>(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'lvol', size_in_mib: 64 });
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: lvol, lvs_name: 'nested' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'nested', lvol_name: 'inner', size_in_mib: 8 });
    await node.bdev('nested/inner').write(0, Buffer.alloc(4096, 0x31));
    await call(table, 'bdev_aio_delete', { name: 'disk' });
    expect(await call(table, 'bdev_lvol_get_lvstores', {})).toEqual([]);
    expect(await call(table, 'bdev_get_bdevs', {})).toEqual([]);
    await call(table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
    expect((await call<Array<{ name: string }>>(table, 'bdev_lvol_get_lvstores', {})).map((store) => store.name).sort()).toEqual(['lvs', 'nested']);
    expect((await readBdev(node.bdev('nested/inner'), 0, 4096)).every((byte) => byte === 0x31)).toBe(true);
  });
});
