// Goal (issue: SPDK socket / rebuild surface): bdev_lvol_grow_lvstore takes in the space of a file
// that grew, durably (a restart keeps it), and changes nothing when the file did not grow.
import { truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageNode } from '../../src/actors/node.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { call, nodeHarness } from './tableCalls.ts';

const mib = 1024 * 1024;
const harness = nodeHarness(41);
afterEach(() => harness.cleanup());

async function start(path: string): Promise<{ node: StorageNode; table: MethodTable }> {
  const started = harness.newNode();
  await call(started.table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  return started;
}

describe('bdev_lvol_grow_lvstore', () => {
  it('takes in a grown file durably; a file that did not grow changes nothing', async () => {
    const dir = await harness.tempDir('lvnode-grow-');
    const path = join(dir, 'disk.img');
    await FileDevice.createSparse(path, 64 * mib);
    let { node, table } = await start(path);
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: mib, clear_method: 'none' });
    const [before] = await call<Array<{ total_data_clusters: number; free_clusters: number }>>(table, 'bdev_lvol_get_lvstores', {});
    expect(await call(table, 'bdev_lvol_grow_lvstore', { lvs_name: 'lvs' })).toBe(true);
    expect(await call(table, 'bdev_lvol_get_lvstores', {})).toEqual([expect.objectContaining({ total_data_clusters: before!.total_data_clusters })]);
    await truncate(path, 128 * mib);
    expect(await call(table, 'bdev_lvol_grow_lvstore', { lvs_name: 'lvs' })).toBe(true);
    const [grown] = await call<Array<{ total_data_clusters: number; free_clusters: number }>>(table, 'bdev_lvol_get_lvstores', {});
    expect(grown!.total_data_clusters).toBe(before!.total_data_clusters + 64);
    expect(grown!.free_clusters).toBe(before!.free_clusters + 64);
    // The new clusters are usable: a thick lvol larger than the old store.
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'big', size_in_mib: 100, thin_provision: false });
    await node.shutdown();
    ({ node, table } = await start(path));
    const [reloaded] = await call<Array<{ total_data_clusters: number; free_clusters: number }>>(table, 'bdev_lvol_get_lvstores', {});
    expect(reloaded).toMatchObject({ total_data_clusters: grown!.total_data_clusters, free_clusters: grown!.free_clusters - 100 });
    expect(await call(table, 'bdev_lvol_grow_lvstore', {}).catch((error: unknown) => error)).toBeInstanceOf(Error);
  });
});
