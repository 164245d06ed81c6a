// What one huge thin lvol costs: bdev_lvol_get_lvols / bdev_get_bdevs on a store with 100 small
// lvols, then the same store plus one thin lvol of 2^40 virtual clusters with a few clusters
// written. Cluster maps are sparse, so the huge lvol should cost about what a small one does;
// this prints listing time, memory, checkpoint bytes and load time with and without it, in the
// same run.
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { StorageNode } from '../src/actors/node.ts';
import { MemoryDevice } from '../src/device/memoryDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import { openLvstore } from '../src/store/load.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { fixed, median, printTable, timed } from './support.ts';

const clusterBytes = 64 * 1024;

// A full GC before each heap reading, so the memory figure is the lvol's, not garbage's.
v8.setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;
function heapBytes(): number {
  collect();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}
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
  if (!(checkpointBytes > 0)) throw new Error('the store did not report its checkpoint size');
  const runs: number[] = [];
  for (let run = 0; run < 3; run++) runs.push((await timed(() => openLvstore(device, systemRuntime))).ms);
  return { loadMs: median(runs), checkpointBytes };
}

export async function listingCost(): Promise<void> {
  const hugeBytes = hugeClusterCount * clusterBytes;
  console.log(`\n== cost of one thin lvol of 2^40 clusters (2^56 bytes = 64 PiB at 64 KiB clusters) next to 100 small lvols ==`);
  const node = new StorageNode(systemRuntime);
  const device = new MemoryDevice(256 * 1024 * 1024, 512);
  await node.attachBaseDevice('m0', device);
  await node.lvstores.create({ bdevName: 'm0', lvsName: 'lvs', clusterBytes, clearMethod: 'none' });
  for (let index = 0; index < 100; index++) await node.createLvol({ selector: { lvs_name: 'lvs' }, name: `small${index}`, sizeMib: 4, thin: true });
  const without = { lvols: await listingMs(node, 'bdev_lvol_get_lvols'), bdevs: await listingMs(node, 'bdev_get_bdevs'), ...(await loadCost(device, node)) };
  // Memory: a small thin lvol with four clusters written, then the huge one with four (the data
  // path addresses bytes below 2^53); a warm-up lvol first, so code and buffers are not counted.
  const spread = [0, 2 ** 20, 2 ** 36, 2 ** 37 - 1];
  const memory: Record<string, number> = {};
  for (const [name, sizeMib, clusters] of [
    ['warmup', 64, [0, 1, 2, 3]],
    ['small', 64, [0, 1, 2, 3]],
    ['huge', hugeBytes / 2 ** 20, spread],
  ] as const) {
    const heapBefore = heapBytes();
    await node.createLvol({ selector: { lvs_name: 'lvs' }, name, sizeMib, thin: true });
    for (const clusterIndex of clusters) await node.bdev(`lvs/${name}`).write(clusterIndex * clusterBytes, Buffer.alloc(4096, 0xab));
    memory[name] = heapBytes() - heapBefore;
  }
  await node.deleteLvol('lvs/warmup');
  await node.deleteLvol('lvs/small');
  const withHuge = { lvols: await listingMs(node, 'bdev_lvol_get_lvols'), bdevs: await listingMs(node, 'bdev_get_bdevs'), ...(await loadCost(device, node)) };
  const rows: string[][] = [];
  rows.push(['bdev_lvol_get_lvols ms (median of 21)', fixed(without.lvols, 3), fixed(withHuge.lvols, 3), fixed(withHuge.lvols / without.lvols, 2)]);
  rows.push(['bdev_get_bdevs ms (median of 21)', fixed(without.bdevs, 3), fixed(withHuge.bdevs, 3), fixed(withHuge.bdevs / without.bdevs, 2)]);
  rows.push(['checkpoint image bytes (block-rounded)', String(without.checkpointBytes), String(withHuge.checkpointBytes), fixed(withHuge.checkpointBytes / without.checkpointBytes, 2)]);
  rows.push(['load from device ms (median of 3)', fixed(without.loadMs, 2), fixed(withHuge.loadMs, 2), fixed(withHuge.loadMs / without.loadMs, 2)]);
  printTable(['measure', '100 small lvols', '+ one 2^40-cluster thin lvol', 'ratio'], rows);
  console.log(
    `  heap after GC, lvol created + 4 clusters written: small (64 MiB) ${fixed(memory.small! / 1024, 1)} KiB, huge ${fixed(memory.huge! / 1024, 1)} KiB (ratio ${fixed(memory.huge! / memory.small!, 2)})`,
  );
  await node.shutdown();
}
