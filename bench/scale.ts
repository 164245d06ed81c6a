// How the node's costs grow with the number of lvols (the scale issue): at each size, the create
// rate (1 and 16 concurrent callers) beside the device's 4 KiB write + fdatasync rate, heap and
// RSS per lvol, bdev_get_bdevs / bdev_lvol_get_lvols time beside JSON.stringify of the same result,
// and the time to load the lvstore again (restart). In-process, on a sparse file in /tmp.
// LVNODE_BENCH_SCALE_SIZES=1000,10000 picks the sizes.
import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { StorageNode } from '../src/actors/node.ts';
import { FileDevice } from '../src/device/fileDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import { stringifyJson } from '../src/transport/json64.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { fixed, printTable } from './support.ts';

v8.setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

function memory(): { heap: number; rss: number } {
  collect();
  const usage = process.memoryUsage();
  return { heap: usage.heapUsed + usage.arrayBuffers, rss: usage.rss };
}

/** 4 KiB write + fdatasync per second on the same file system (the create rate's yardstick). */
async function fsyncRate(dir: string): Promise<number> {
  const handle = await open(join(dir, 'fsync.probe'), 'w');
  const block = Buffer.alloc(4096, 1);
  const start = performance.now();
  let count = 0;
  while (performance.now() - start < 1000) {
    await handle.write(block, 0, block.length, (count % 256) * 4096);
    await handle.datasync();
    count++;
  }
  await handle.close();
  return count / ((performance.now() - start) / 1000);
}

async function timedMs<T>(work: () => Promise<T> | T): Promise<{ ms: number; value: T }> {
  const start = performance.now();
  const value = await work();
  return { ms: performance.now() - start, value };
}

export async function scaleBenchmark(): Promise<void> {
  const sizes = (process.env.LVNODE_BENCH_SCALE_SIZES ?? '1000,10000').split(',').map(Number);
  console.log(`\n== scale: ${sizes.join(' / ')} thin lvols (1 MiB clusters, file bdev, in-process) ==`);
  const rows: string[][] = [];
  for (const size of sizes) {
    const dir = await mkdtemp(join(tmpdir(), 'lvnode-scale-'));
    const path = join(dir, 'disk.img');
    await FileDevice.createSparse(path, 8 * 1024 ** 3);
    const fsync = await fsyncRate(dir);
    const node = new StorageNode(systemRuntime);
    const table = createMethodTable(node);
    const call = async (method: string, params: Record<string, unknown>) => table[method]!.handler(table[method]!.params.parse(params), noConnection);
    await call('bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
    await call('bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: 1024 * 1024 });
    const before = memory();
    const sequentialCount = Math.min(500, size);
    const sequential = await timedMs(async () => {
      for (let index = 0; index < sequentialCount; index++) await call('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: `s${index}`, size_in_mib: 16, thin_provision: true });
    });
    const concurrent = await timedMs(async () => {
      let next = sequentialCount;
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          for (let index = next++; index < size; index = next++) await call('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: `c${index}`, size_in_mib: 16, thin_provision: true });
        }),
      );
    });
    const after = memory();
    const bdevs = await timedMs(() => call('bdev_get_bdevs', {}));
    const bdevsJson = await timedMs(() => stringifyJson(bdevs.value).length);
    const lvols = await timedMs(() => call('bdev_lvol_get_lvols', {}));
    const lvolsJson = await timedMs(() => stringifyJson(lvols.value).length);
    const stop = await timedMs(() => node.shutdown());
    // Restart: attach the file again (the lvstore loads with every lvol and its actor).
    const restarted = new StorageNode(systemRuntime);
    const restartTable = createMethodTable(restarted);
    const restart = await timedMs(async () =>
      restartTable.bdev_aio_create!.handler(restartTable.bdev_aio_create!.params.parse({ name: 'disk', filename: path, block_size: 512 }), noConnection),
    );
    const resolvable = restarted.resolveLvol(`lvs/c${size - 1}`).lvol.name === `c${size - 1}`;
    await restarted.shutdown();
    await rm(dir, { recursive: true, force: true });
    const sequentialRate = sequentialCount / (sequential.ms / 1000);
    const concurrentRate = (size - sequentialCount) / (concurrent.ms / 1000);
    rows.push([
      String(size),
      `${fixed(sequentialRate, 0)} / ${fixed(concurrentRate, 0)} (${fixed(fsync, 0)})`,
      `${fixed(sequentialRate / fsync, 2)}x / ${fixed(concurrentRate / sequentialRate, 1)}x`,
      `${fixed((after.heap - before.heap) / size / 1024, 1)} / ${fixed((after.rss - before.rss) / size / 1024, 1)}`,
      `${fixed(bdevs.ms, 0)} (${fixed(bdevsJson.ms, 0)})`,
      `${fixed(lvols.ms, 0)} (${fixed(lvolsJson.ms, 0)})`,
      fixed(stop.ms, 0),
      `${fixed(restart.ms, 0)}${resolvable ? '' : ' (lvol missing!)'}`,
    ]);
  }
  printTable(
    ['lvols', 'creates/s 1 / 16 callers (fsync/s)', 'vs fsync / 16 vs 1', 'KiB per lvol heap / RSS', 'get_bdevs ms (stringify)', 'get_lvols ms (stringify)', 'stop ms', 'restart ms'],
    rows,
  );
}
