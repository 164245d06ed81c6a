// Goal (issue 21 item 2): when a snapshot is deleted into its only clone and that clone is a
// snapshot (Longhorn deletes a snapshot by merging it into the next), the merged snapshot's
// per-cluster and whole checksums are derived from the values both had, reading no byte, and
// equal what a fresh registration of the merged snapshot stores; where a merged cluster has no
// stored value they are dropped as before. The oracle here is not the code under test: it reads
// each owned cluster's bytes and runs one CRC over them (hash-wasm, no combine), per cluster and
// over their concatenation in index order.
import { createCRC64 } from 'hash-wasm';
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { metadataLayout } from '../../src/store/format.ts';
import { JournalMetadataLog } from '../../src/store/journal.ts';
import { openLvstore } from '../../src/store/load.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import type { LvolRecord, VerificationRecord } from '../../src/store/metadata.ts';
import { ClusterChecksums } from '../../src/store/sparseArray.ts';
import { blockBytes, clusterBytes, deviceBytes, expectClusterAccounting, newStore, patternBytes, storeState } from './helpers.ts';

const hasher = await createCRC64('d800000000000000');

/** CRC-64/GO-ISO of the parts as one stream, in one pass (hash-wasm: not lvnode's CRC code). */
function oneCrc(...parts: Buffer[]): bigint {
  hasher.init();
  for (const part of parts) hasher.update(part);
  return BigInt(`0x${hasher.digest('hex')}`);
}

interface Checksums {
  checksum: bigint;
  /** Cluster index → CRC, for the clusters the snapshot owns. */
  perCluster: Array<[number, bigint]>;
}

/** What a fresh range registration of `id` stores, computed from the bytes it owns now. */
async function freshChecksums(store: Lvstore, id: string): Promise<Checksums> {
  const owned: Buffer[] = [];
  const perCluster: Array<[number, bigint]> = [];
  for (const [clusterIndex] of store.lvol(id).clusterMap.entries()) {
    const bytes = await store.read(id, clusterIndex * clusterBytes, clusterBytes);
    owned.push(bytes);
    perCluster.push([clusterIndex, oneCrc(bytes)]);
  }
  return { checksum: oneCrc(...owned), perCluster };
}

function storedChecksums(lvol: LvolRecord): Checksums | null {
  if (lvol.checksum === null || lvol.rangeChecksums === null) return null;
  return { checksum: lvol.checksum, perCluster: [...lvol.rangeChecksums.entries()] };
}

/** Registers range checksums of `id` as a walk would store them (values from the oracle). */
async function registerRange(store: Lvstore, id: string): Promise<Checksums> {
  const fresh = await freshChecksums(store, id);
  const range = new ClusterChecksums(store.lvol(id).clusterMap.length);
  for (const [clusterIndex, crc] of fresh.perCluster) range.set(clusterIndex, crc);
  await store.storeChecksum(id, fresh.checksum, range);
  return fresh;
}

/** Writes a whole cluster of its own pattern at each index. */
async function writeClusters(store: Lvstore, id: string, clusterIndices: number[], seed: number): Promise<void> {
  for (const clusterIndex of clusterIndices) await store.write(id, clusterIndex * clusterBytes, patternBytes(clusterBytes, seed * 100 + clusterIndex));
}

/** Counts device reads (a derivation reads none; the oracle's reads happen outside the count). */
function countReads(device: MemoryDevice): { readonly count: number } {
  const counter = { count: 0 };
  const readInto = device.readInto.bind(device);
  device.readInto = (target, offsetBytes) => {
    counter.count++;
    return readInto(target, offsetBytes);
  };
  return counter;
}

/**
 * vol (8 clusters) written at 0-5 → s1; then a block of 1, all of 3 and 7 → s2; then 2 → vol's
 * own. s2 shadows s1's 1 and 3 (and their bytes differ), adopts 0, 2, 4, 5 when s1 merges into it.
 */
async function chainOfTwo(store: Lvstore): Promise<{ vol: LvolRecord; s1: LvolRecord; s2: LvolRecord }> {
  const vol = await store.createLvol({ name: 'vol', clusterCount: 8, thin: true });
  await writeClusters(store, vol.id, [0, 1, 2, 3, 4, 5], 1);
  const s1 = await store.snapshot(vol.id, 's1', {});
  await store.write(vol.id, clusterBytes + 7 * blockBytes, patternBytes(blockBytes, 77));
  await writeClusters(store, vol.id, [3, 7], 2);
  const s2 = await store.snapshot(vol.id, 's2', {});
  await writeClusters(store, vol.id, [2], 3);
  return { vol, s1, s2 };
}

describe('checksums derived when a snapshot merges into a snapshot', () => {
  it('gives the merged snapshot per-cluster and whole values equal to a fresh registration, reading nothing', async () => {
    const device = new MemoryDevice(deviceBytes, blockBytes);
    const { store } = await newStore({ device });
    const { s1, s2 } = await chainOfTwo(store);
    const older = await registerRange(store, s1.id);
    const newer = await registerRange(store, s2.id);
    // The shadowed clusters differ, so a derivation that took the parent's value would show.
    expect(new Map(older.perCluster).get(1)).not.toBe(new Map(newer.perCluster).get(1));
    expect(new Map(older.perCluster).get(3)).not.toBe(new Map(newer.perCluster).get(3));

    const reads = countReads(device);
    await expect(store.deleteLvol(s1.id)).resolves.toEqual({ mergedInto: s2.id });
    expect(reads.count).toBe(0);
    const merged = store.lvol(s2.id);
    expect([...merged.clusterMap.entries()].map(([clusterIndex]) => clusterIndex)).toEqual([0, 1, 2, 3, 4, 5, 7]);
    const fresh = await freshChecksums(store, s2.id);
    expect(storedChecksums(merged)).toEqual(fresh);
    expect(fresh.checksum).not.toBe(newer.checksum);
    // Per cluster: the clone's own values where it owned the cluster, the parent's where it adopted.
    expect(new Map(fresh.perCluster).get(1)).toBe(new Map(newer.perCluster).get(1));
    expect(new Map(fresh.perCluster).get(0)).toBe(new Map(older.perCluster).get(0));
    expectClusterAccounting(store);
  });

  it('adopts no value from beyond the clone’s read-through limit, nor from clusters it shadows', async () => {
    // vol of 8 written whole → s1; vol shrunk to 2 and grown back (reads zeros past 2), then
    // written at 1 and 5 → s2 (8 long, reading through to s1 only below 2). Deleting s1 gives s2
    // cluster 0 only: 2-4 and 6-7 lie past its limit, 1 and 5 it owns.
    const { store } = await newStore();
    const vol = await store.createLvol({ name: 'vol', clusterCount: 8, thin: true });
    await writeClusters(store, vol.id, [0, 1, 2, 3, 4, 5, 6, 7], 1);
    const s1 = await store.snapshot(vol.id, 's1', {});
    await store.resize(vol.id, 2);
    await store.resize(vol.id, 8);
    await writeClusters(store, vol.id, [1, 5], 2);
    const s2 = await store.snapshot(vol.id, 's2', {});
    expect(s2.readThroughClusters).toBe(2);
    const s2Bytes = await store.read(s2.id, 0, 8 * clusterBytes);
    await registerRange(store, s1.id);
    await registerRange(store, s2.id);

    await store.deleteLvol(s1.id);
    const merged = store.lvol(s2.id);
    expect([...merged.clusterMap.entries()].map(([clusterIndex]) => clusterIndex)).toEqual([0, 1, 5]);
    expect((await store.read(s2.id, 0, 8 * clusterBytes)).equals(s2Bytes)).toBe(true);
    expect(storedChecksums(merged)).toEqual(await freshChecksums(store, s2.id));
    expectClusterAccounting(store);
  });

  it('derives again down a chain of three snapshots deleted oldest first', async () => {
    const { store } = await newStore();
    const vol = await store.createLvol({ name: 'vol', clusterCount: 12, thin: true });
    await writeClusters(store, vol.id, [0, 2, 4, 6, 8, 10], 1);
    const s1 = await store.snapshot(vol.id, 's1', {});
    await writeClusters(store, vol.id, [1, 2, 9], 2);
    const s2 = await store.snapshot(vol.id, 's2', {});
    await writeClusters(store, vol.id, [0, 3, 11], 3);
    const s3 = await store.snapshot(vol.id, 's3', {});
    await writeClusters(store, vol.id, [4], 4);
    for (const snapshot of [s1, s2, s3]) await registerRange(store, snapshot.id);

    await store.deleteLvol(s1.id);
    expect(storedChecksums(store.lvol(s2.id))).toEqual(await freshChecksums(store, s2.id));
    await store.deleteLvol(s2.id);
    const last = store.lvol(s3.id);
    expect(last.clusterMap.count).toBe(10);
    expect(storedChecksums(last)).toEqual(await freshChecksums(store, s3.id));
    expectClusterAccounting(store);
  });

  it('gives a clone that owned nothing exactly the parent’s values', async () => {
    // Two snapshots with no write between: the newer owns nothing (its range set is empty, its
    // whole value 0) and adopts every cluster.
    const { store } = await newStore();
    const vol = await store.createLvol({ name: 'vol', clusterCount: 6, thin: true });
    await writeClusters(store, vol.id, [1, 2, 5], 1);
    const s1 = await store.snapshot(vol.id, 's1', {});
    const s2 = await store.snapshot(vol.id, 's2', {});
    const older = await registerRange(store, s1.id);
    expect(await registerRange(store, s2.id)).toEqual({ checksum: 0n, perCluster: [] });
    await store.deleteLvol(s1.id);
    expect(storedChecksums(store.lvol(s2.id))).toEqual(older);
  });

  it('keeps a clone’s values when it adopts nothing, whatever the parent had', async () => {
    // The parent's only cluster is one the clone owns: the clone's clusters do not change.
    const { store } = await newStore();
    const vol = await store.createLvol({ name: 'vol', clusterCount: 4, thin: true });
    await writeClusters(store, vol.id, [2], 1);
    const s1 = await store.snapshot(vol.id, 's1', {});
    await writeClusters(store, vol.id, [2, 3], 2);
    const s2 = await store.snapshot(vol.id, 's2', {});
    const newer = await registerRange(store, s2.id);
    await store.deleteLvol(s1.id);
    expect(storedChecksums(store.lvol(s2.id))).toEqual(newer);
  });
});

describe('checksums that cannot be derived are dropped', () => {
  /** Sets up chainOfTwo, stores what `setup` says on s1 and s2, merges s1 into s2; returns s2. */
  async function mergeWith(setup: (store: Lvstore, s1: LvolRecord, s2: LvolRecord) => Promise<void>): Promise<LvolRecord> {
    const { store } = await newStore();
    const { s1, s2 } = await chainOfTwo(store);
    await setup(store, s1, s2);
    await store.deleteLvol(s1.id);
    return store.lvol(s2.id);
  }

  /** Range checksums of `id` with the value of one owned cluster left out. */
  async function rangeWithHole(store: Lvstore, id: string, missing: number): Promise<void> {
    const fresh = await freshChecksums(store, id);
    const range = new ClusterChecksums(store.lvol(id).clusterMap.length);
    for (const [clusterIndex, crc] of fresh.perCluster) if (clusterIndex !== missing) range.set(clusterIndex, crc);
    await store.storeChecksum(id, fresh.checksum, range);
  }

  const cases: Array<[string, (store: Lvstore, s1: LvolRecord, s2: LvolRecord) => Promise<void>]> = [
    ['the parent has no checksum', async (store, _s1, s2) => void (await registerRange(store, s2.id))],
    [
      'the parent has only a whole checksum',
      async (store, s1, s2) => {
        await store.storeChecksum(s1.id, (await freshChecksums(store, s1.id)).checksum, null);
        await registerRange(store, s2.id);
      },
    ],
    [
      'the parent lacks the value of one adopted cluster',
      async (store, s1, s2) => {
        await rangeWithHole(store, s1.id, 4);
        await registerRange(store, s2.id);
      },
    ],
    [
      'the clone has only a whole checksum',
      async (store, s1, s2) => {
        await registerRange(store, s1.id);
        await store.storeChecksum(s2.id, (await freshChecksums(store, s2.id)).checksum, null);
      },
    ],
    ['the clone has no checksum', async (store, s1) => void (await registerRange(store, s1.id))],
    [
      'the clone lacks the value of one cluster it owns',
      async (store, s1, s2) => {
        await registerRange(store, s1.id);
        await rangeWithHole(store, s2.id, 7);
      },
    ],
  ];

  it.each(cases)('when %s', async (_what, setup) => {
    const merged = await mergeWith(setup);
    expect(merged.checksum).toBeNull();
    expect(merged.rangeChecksums).toBeNull();
    expect(merged.savedProgress).toBeNull();
  });

  it('derives although the parent lacks the value of a cluster the clone shadows', async () => {
    // Only adopted clusters need the parent's values: a hole at a shadowed cluster (1) is no loss.
    const { store } = await newStore();
    const { s1, s2 } = await chainOfTwo(store);
    await rangeWithHole(store, s1.id, 1);
    await registerRange(store, s2.id);
    await store.deleteLvol(s1.id);
    expect(storedChecksums(store.lvol(s2.id))).toEqual(await freshChecksums(store, s2.id));
  });
});

describe('derived checksums through the journal', () => {
  async function journaledStore(device: MemoryDevice): Promise<Lvstore> {
    return Lvstore.create(
      device,
      { name: 'lvs', clusterBytes, clearMethod: 'none' },
      (record) => JournalMetadataLog.format(device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
      seededRuntime(5),
    );
  }

  it('come back the same from a replayed lvol.merge and from a checkpoint taken after it', async () => {
    // The journal replays lvol.merge through applyChange: the derivation must be decided by the
    // state alone. Then a checkpoint encodes the derived values themselves.
    const device = new MemoryDevice(64 * 1024 * 1024, blockBytes);
    const store = await journaledStore(device);
    const { s1, s2 } = await chainOfTwo(store);
    await registerRange(store, s1.id);
    await registerRange(store, s2.id);
    await store.forceCheckpoint();
    await store.deleteLvol(s1.id);
    const derived = storedChecksums(store.lvol(s2.id));
    expect(derived).toEqual(await freshChecksums(store, s2.id));

    const replayed = (await openLvstore(device, seededRuntime(6)))!;
    expect(storeState(replayed)).toEqual(storeState(store));
    expect(storedChecksums(replayed.lvol(s2.id))).toEqual(derived);
    await replayed.close();

    const again = (await openLvstore(device, seededRuntime(7)))!;
    await again.forceCheckpoint();
    await again.close();
    const fromCheckpoint = (await openLvstore(device, seededRuntime(8)))!;
    expect(storedChecksums(fromCheckpoint.lvol(s2.id))).toEqual(derived);
    expect(await freshChecksums(fromCheckpoint, s2.id)).toEqual(derived);
  });

  it('leaves the clone’s own checksums when the merge does not become durable', async () => {
    // Restore, don't invert: a failed append puts back the records as they were.
    let failing = false;
    const log = {
      append: async () => {
        if (failing) throw new StorageError('EIO', { detail: 'injected' });
      },
      close: async () => {},
    };
    const store = await Lvstore.create(new MemoryDevice(deviceBytes, blockBytes), { name: 'lvs', clusterBytes, clearMethod: 'none' }, log, seededRuntime(9));
    const { s1, s2 } = await chainOfTwo(store);
    await registerRange(store, s1.id);
    const newer = await registerRange(store, s2.id);
    failing = true;
    await expect(store.deleteLvol(s1.id)).rejects.toMatchObject({ errno: 'EIO' });
    expect(storedChecksums(store.lvol(s2.id))).toEqual(newer);
    expect(store.lvol(s2.id).parentId).toBe(s1.id);
    failing = false;
    await store.deleteLvol(s1.id);
    expect(storedChecksums(store.lvol(s2.id))).toEqual(await freshChecksums(store, s2.id));
  });
});

describe('what a verify found, through a merge', () => {
  function badAt(clusterIndex: number): { clusterIndex: number; offsetBytes: number; expected: bigint; actual: bigint } {
    return { clusterIndex, offsetBytes: clusterIndex * clusterBytes, expected: 1n, actual: 2n };
  }

  function corrupt(clusterIndices: number[], total: number): VerificationRecord {
    const badClusters = clusterIndices.map(badAt);
    return { verifiedAtMs: 1000, result: 'corrupt', errorsOnly: false, clustersChecked: total, clustersTotal: total, badClusterCount: badClusters.length, badClusters, whole: null, registrationConflict: null };
  }

  it('keeps the parent’s bad clusters the clone adopts and the clone’s own, and drops a clean result', async () => {
    // Goal: a merge never hides rot: s1 is bad at 0 (adopted by s2) and at 1 (shadowed by s2,
    // whose own 1 is fine); s2 is bad at 7. The merged s2 is corrupt at 0 and 7, nothing else.
    const { store } = await newStore();
    const { s1, s2 } = await chainOfTwo(store);
    await registerRange(store, s1.id);
    await registerRange(store, s2.id);
    await store.recordVerification(s1.id, corrupt([0, 1], 6));
    await store.recordVerification(s2.id, corrupt([7], 3));
    await store.deleteLvol(s1.id);
    const merged = store.lvol(s2.id).verification;
    expect(merged?.result).toBe('corrupt');
    expect(merged?.badClusters.map((cluster) => cluster.clusterIndex)).toEqual([0, 7]);

    const other = await newStore();
    const chain = await chainOfTwo(other.store);
    await registerRange(other.store, chain.s1.id);
    await registerRange(other.store, chain.s2.id);
    await other.store.recordVerification(chain.s2.id, { ...corrupt([], 3), result: 'clean' });
    await other.store.deleteLvol(chain.s1.id);
    // Clean covered s2's three clusters, not the four it adopted: unverified now.
    expect(other.store.lvol(chain.s2.id).verification).toBeNull();
  });
});
