// What one huge thin lvol costs: bdev_lvol_get_lvols / bdev_get_bdevs on a store with 100 small
// lvols, then the same store plus one thin lvol of 2^40 virtual clusters with a few clusters
// written. Cluster maps are sparse, so the huge lvol should cost about what a small one does;
// this prints listing time, memory, checkpoint bytes and load time with and without it, in the
// same run.
import { StorageNode } from '../src/actors/node.ts';
import { MemoryDevice } from '../src/device/memoryDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import { openLvstore } from '../src/store/load.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { fixed, median, printTable, timed } from './support.ts';

const clusterBytes = 64 * 1024;
const hugeClusterCount = 2 ** 40;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

async function listingMs(node: StorageNode, method: string): Promise<number> {
  const table = createMethodTable(node);
  const entry = table[method]!;
  const runs: number[] = [];
  for (let run = 0; run < 21; run++) runs.push((await timed(async () => entry.handler(entry.params.parse({}), noConnection))).ms);
  return median(runs);
}

/** Checkpoint bytes and the median time to load the store from its device (3 loads). */
async function loadCost(device: MemoryDevice, node: StorageNode): Promise<{ loadMs: number; checkpointBytes: number }> {
  const store = node.resolveLvol('lvs/small0').entry.store;
  await store.forceCheckpoint();
  const checkpointBytes = store.metadataStats()?.lastCheckpointBytes ?? Number.NaN;
  const runs: number[] = [];
  for (let run = 0; run < 3; run++) runs.push((await timed(() => openLvstore(device, systemRuntime))).ms);
  return { loadMs: median(runs), checkpointBytes };
}

export async function listingCost(): Promise<void> {
  const hugeBytes = hugeClusterCount * clusterBytes;
  console.log(`\n== cost of one thin lvol of 2^40 clusters (${hugeBytes / 2 ** 60} EiB at 64 KiB clusters) next to 100 small lvols ==`);
  const node = new StorageNode(systemRuntime);
  const device = new MemoryDevice(256 * 1024 * 1024, 512);
  await node.attachBaseDevice('m0', device);
  await node.createLvstore({ bdevName: 'm0', lvsName: 'lvs', clusterBytes, clearMethod: 'none' });
  for (let index = 0; index < 100; index++) await node.createLvol({ selector: { lvs_name: 'lvs' }, name: `small${index}`, sizeMib: 4, thin: true });
  const without = { lvols: await listingMs(node, 'bdev_lvol_get_lvols'), bdevs: await listingMs(node, 'bdev_get_bdevs'), ...(await loadCost(device, node)) };
  const heapBefore = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  await node.createLvol({ selector: { lvs_name: 'lvs' }, name: 'huge', sizeMib: hugeBytes / 2 ** 20, thin: true });
  // A few clusters written far apart: the map holds those, not 2^40 slots.
  for (const clusterIndex of [0, 2 ** 20, 2 ** 39, hugeClusterCount - 1]) {
    await node.writeLvol('lvs/huge', clusterIndex * clusterBytes, Buffer.alloc(4096, 0xab));
  }
  const memoryBytes = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers - heapBefore;
  const withHuge = { lvols: await listingMs(node, 'bdev_lvol_get_lvols'), bdevs: await listingMs(node, 'bdev_get_bdevs'), ...(await loadCost(device, node)) };
  const rows: string[][] = [];
  rows.push(['bdev_lvol_get_lvols ms (median of 21)', fixed(without.lvols, 3), fixed(withHuge.lvols, 3), fixed(withHuge.lvols / without.lvols, 2)]);
  rows.push(['bdev_get_bdevs ms (median of 21)', fixed(without.bdevs, 3), fixed(withHuge.bdevs, 3), fixed(withHuge.bdevs / without.bdevs, 2)]);
  rows.push(['checkpoint bytes', String(without.checkpointBytes), String(withHuge.checkpointBytes), fixed(withHuge.checkpointBytes / without.checkpointBytes, 2)]);
  rows.push(['load from device ms (median of 3)', fixed(without.loadMs, 2), fixed(withHuge.loadMs, 2), fixed(withHuge.loadMs / without.loadMs, 2)]);
  printTable(['measure', '100 small lvols', '+ one 2^40-cluster thin lvol', 'ratio'], rows);
  console.log(`  memory for the huge lvol with 4 clusters written: ${fixed(memoryBytes / 1024, 1)} KiB`);
  await node.shutdown();
}
