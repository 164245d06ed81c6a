// Write-path metadata cost: first writes to a thin lvol allocate 10,000 clusters; each allocation
// must cost O(1) metadata I/O (one journal record), not a rewrite of all metadata.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { FileDevice } from '../src/device/fileDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import { RecordCapture, encodeCheckpoint, metadataLayout } from '../src/store/format.ts';
import { JournalMetadataLog } from '../src/store/journal.ts';
import { Lvstore } from '../src/store/lvstore.ts';
import { envInteger, fixed, median, printTable } from './support.ts';

const clusterBytes = 64 * 1024;
const writeBytes = 4096;

/** Allocates `count` clusters with `writers` concurrent first writes; returns metadata figures. */
async function allocate(store: Lvstore, lvolId: string, count: number, writers: number, from: number) {
  const before = store.metadataStats()!;
  const latencies: number[] = [];
  const data = Buffer.alloc(writeBytes, 0x5a);
  let next = from;
  const startMs = performance.now();
  await Promise.all(
    Array.from({ length: writers }, async () => {
      while (next < from + count) {
        const clusterIndex = next++;
        const t0 = performance.now();
        await store.write(lvolId, clusterIndex * clusterBytes, data);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const after = store.metadataStats()!;
  return {
    seconds: (performance.now() - startMs) / 1000,
    bytes: after.bytesWritten - before.bytesWritten,
    records: after.recordsWritten - before.recordsWritten,
    checkpoints: after.checkpoints - before.checkpoints,
    flushes: after.flushes - before.flushes,
    medianMs: median(latencies),
  };
}

export async function metadataWritePath(): Promise<void> {
  const allocations = envInteger('BENCH_ALLOCATIONS', 10_000);
  const directory = await mkdtemp(join(tmpdir(), 'lvnode-bench-md-'));
  try {
    const path = join(directory, 'disk.img');
    const deviceBytes = 2 * (allocations + 100) * clusterBytes + 64 * 1024 * 1024;
    await FileDevice.createSparse(path, deviceBytes);
    const device = await FileDevice.open(path, 512);
    const store = await Lvstore.create(
      device,
      { name: 'bench', clusterBytes, clearMethod: 'none' },
      (record) => JournalMetadataLog.format(device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
      systemRuntime,
    );
    const lvol = await store.createLvol({ name: 'thin', clusterCount: 2 * allocations, thin: true });
    console.log(`\n== metadata write path: ${allocations} first writes to a thin lvol (64 KiB clusters, file bdev, fdatasync per record) ==`);
    const sequential = await allocate(store, lvol.id, allocations, 1, 0);
    const grouped = await allocate(store, lvol.id, allocations / 2, 16, allocations);
    // What one allocation would cost if it rewrote all metadata: the size of a checkpoint now.
    const fullRewriteBytes = (await encodeCheckpoint(new RecordCapture(store.record), 0n, 512)).length;
    const rows = [sequential, grouped].map((run, index) => {
      const count = index === 0 ? allocations : allocations / 2;
      return [
        index === 0 ? '1 writer' : '16 writers (group commit)',
        String(count),
        fixed(run.bytes / count, 1),
        String(run.records),
        String(run.checkpoints),
        fixed(run.flushes / count, 2),
        fixed(run.medianMs, 3),
        fixed(count / run.seconds, 0),
      ];
    });
    printTable(['run', 'allocations', 'md bytes/alloc', 'records', 'checkpoints', 'flushes/alloc', 'median ms', 'allocs/s'], rows);
    console.log(`  a full metadata rewrite at the end would be ${fullRewriteBytes} bytes per allocation (${fixed(fullRewriteBytes / (sequential.bytes / allocations), 0)}x the journal record)`);
    await store.close();
    await device.close();
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}
