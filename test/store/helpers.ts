// Shared helpers for the store tests: a small lvstore on a memory device, patterns, and invariants.
import { expect } from 'vitest';
import { kibBytes, mibBytes } from '../../src/constants.ts';
import type { BlockDevice } from '../../src/device/blockDevice.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { type ErrnoName, StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { type ClearMethod, type LvolRecord, MemoryMetadataLog } from '../../src/store/metadata.ts';

export const clusterBytes = 64 * kibBytes;
export const blockBytes = 512;
export const deviceBytes = 16 * mibBytes;

/** An lvstore with 64 KiB clusters on a 16 MiB malloc-like device (240 data clusters). */
export async function newStore(
  options: { clearMethod?: ClearMethod; device?: BlockDevice; seed?: number } = {},
): Promise<{ device: BlockDevice; store: Lvstore }> {
  const device = options.device ?? new MemoryDevice(deviceBytes, blockBytes);
  const store = await Lvstore.create(
    device,
    { name: 'lvs', clusterBytes, clearMethod: options.clearMethod ?? 'unmap' },
    new MemoryMetadataLog(),
    seededRuntime(options.seed ?? 1),
  );
  return { device, store };
}

/** Deterministic, non-repeating-looking bytes (xorshift32), so misplaced data shows up. */
export function patternBytes(lengthBytes: number, seed: number): Buffer {
  const out = Buffer.alloc(lengthBytes);
  let state = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  for (let offset = 0; offset + 4 <= lengthBytes; offset += 4) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    out.writeUInt32LE(state, offset);
  }
  return out;
}

/** The errno of the StorageError `work` throws or rejects with; any other error fails the test. */
export async function errnoOf(work: () => unknown): Promise<ErrnoName | 'no error'> {
  try {
    await work();
  } catch (error) {
    if (error instanceof StorageError) return error.errno;
    throw error;
  }
  return 'no error';
}

export function readAll(store: Lvstore, id: string): Promise<Buffer> {
  return store.read(id, 0, store.lvol(id).clusterMap.length * clusterBytes);
}

/** Everything observable about the store's metadata, for "nothing changed" comparisons. */
export function storeState(store: Lvstore): unknown {
  return {
    info: store.info(),
    lvols: store
      .lvols()
      .map((lvol) => ({
        id: lvol.id,
        name: lvol.name,
        clusterMap: [...lvol.clusterMap.dense()],
        thin: lvol.thin,
        readOnly: lvol.readOnly,
        snapshot: lvol.snapshot,
        parentId: lvol.parentId,
        xattrs: Object.fromEntries(lvol.xattrs),
        checksum: lvol.checksum?.toString() ?? null,
        rangeChecksums: lvol.rangeChecksums ? [...lvol.rangeChecksums.dense()].map(String) : null,
      }))
      .sort((a, b) => (a.name < b.name ? -1 : 1)),
  };
}

/** Every physical data cluster is owned by at most one lvol, and owned + free = total. */
export function expectClusterAccounting(store: Lvstore, context = ''): void {
  const owners = new Map<number, string>();
  const firstDataCluster = store.record.firstDataCluster;
  for (const lvol of store.lvols()) {
    for (const physicalCluster of lvol.clusterMap.dense()) {
      if (physicalCluster === 0) continue;
      expect(physicalCluster, `${context}: ${lvol.name} owns a metadata cluster`).toBeGreaterThanOrEqual(firstDataCluster);
      const other = owners.get(physicalCluster);
      expect(other, `${context}: physical cluster ${physicalCluster} owned by ${other} and ${lvol.name}`).toBeUndefined();
      owners.set(physicalCluster, lvol.name);
    }
  }
  const { totalDataClusters, freeClusters } = store.info();
  expect(owners.size + freeClusters, `${context}: owned (${owners.size}) + free (${freeClusters}) must equal total`).toBe(
    totalDataClusters,
  );
}

/** Waits for `condition`, one macrotask at a time (bounded, so a broken test fails instead of hanging). */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  // Bounded in real time, not in turns: 10,000 idle turns can pass in 50 ms while a file write
  // waits for a busy machine's thread pool.
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (condition()) return;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Issue 19's first bug, set up: A (8 clusters of 0xAA) → snapshot s1; A shrunk to 2 → snapshot s2;
 * A grown back to 8 (reads zeros past cluster 2). Deleting s2 then merges it into A, re-parenting
 * A onto the larger s1. Returns A and s2.
 */
export async function grownPastSmallerParent(store: Lvstore, clusterBytes: number): Promise<{ lvol: LvolRecord; s2: LvolRecord }> {
  const lvol = await store.createLvol({ name: 'a', clusterCount: 8, thin: false });
  await store.write(lvol.id, 0, Buffer.alloc(8 * clusterBytes, 0xaa));
  await store.snapshot(lvol.id, 's1', {});
  await store.resize(lvol.id, 2);
  const s2 = await store.snapshot(lvol.id, 's2', {});
  await store.resize(lvol.id, 8);
  return { lvol, s2 };
}
