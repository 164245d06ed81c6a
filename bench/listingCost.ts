// What one huge thin lvol costs a listing: bdev_lvol_get_lvols / bdev_get_bdevs on a store with
// 100 small lvols, then the same store plus one thin lvol of the largest size lvnode accepts
// (lvolClusterCountMax clusters). Cluster maps are dense today, so that lvol's cost follows its
// virtual size; this prints by how much, in the same run.
import { StorageNode } from '../src/actors/node.ts';
import { lvolClusterCountMax } from '../src/constants.ts';
import { MemoryDevice } from '../src/device/memoryDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { fixed, median, printTable, timed } from './support.ts';

const clusterBytes = 64 * 1024;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

async function listingMs(node: StorageNode, method: string): Promise<number> {
  const table = createMethodTable(node);
  const entry = table[method]!;
  const runs: number[] = [];
  for (let run = 0; run < 21; run++) runs.push((await timed(async () => entry.handler(entry.params.parse({}), noConnection))).ms);
  return median(runs);
}

export async function listingCost(): Promise<void> {
  console.log(`\n== listing cost of one thin lvol of ${lvolClusterCountMax} clusters (${(lvolClusterCountMax * clusterBytes) / 2 ** 30} GiB at 64 KiB clusters) ==`);
  const node = new StorageNode(systemRuntime);
  await node.attachBaseDevice('m0', new MemoryDevice(256 * 1024 * 1024, 512));
  await node.createLvstore({ bdevName: 'm0', lvsName: 'lvs', clusterBytes, clearMethod: 'none' });
  for (let index = 0; index < 100; index++) await node.createLvol({ selector: { lvs_name: 'lvs' }, name: `small${index}`, sizeMib: 4, thin: true });
  const rows: string[][] = [];
  const without = { lvols: await listingMs(node, 'bdev_lvol_get_lvols'), bdevs: await listingMs(node, 'bdev_get_bdevs') };
  const heapBefore = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  const sizeMib = (lvolClusterCountMax * clusterBytes) / (1024 * 1024);
  await node.createLvol({ selector: { lvs_name: 'lvs' }, name: 'huge', sizeMib, thin: true });
  const memoryBytes = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers - heapBefore;
  const withHuge = { lvols: await listingMs(node, 'bdev_lvol_get_lvols'), bdevs: await listingMs(node, 'bdev_get_bdevs') };
  rows.push(['bdev_lvol_get_lvols', fixed(without.lvols, 3), fixed(withHuge.lvols, 3), fixed(withHuge.lvols / without.lvols, 1)]);
  rows.push(['bdev_get_bdevs', fixed(without.bdevs, 3), fixed(withHuge.bdevs, 3), fixed(withHuge.bdevs / without.bdevs, 1)]);
  printTable(['listing (median of 21)', '100 small lvols ms', '+ one huge thin ms', 'ratio'], rows);
  console.log(`  memory for the huge lvol: ${fixed(memoryBytes / 2 ** 20, 1)} MiB (its dense cluster map); a larger size is refused (-22)`);
  await node.shutdown();
}
