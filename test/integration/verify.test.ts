// Goal (issue 21 item 1, SPEC §6.10), through the method table of a real node on a real file:
// bits and whole sectors flipped in the backing file at places only the test chose are found by
// bdev_lvol_verify_snapshot at exactly those clusters, with the expected (stored) and actual CRCs
// an independent CRC gives, and nothing else is reported, over several seeds; the stored checksums
// are never changed; errors_only reads exactly the known bad clusters; the result is journaled,
// flagged in listings, pushed as checksum_mismatch and kept across a restart; a verify stops,
// is preempted and resumes like a checksum walk; a re-registration that finds other values
// overwrites them (SPDK) and keeps both as evidence.
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { NodeEvent, StorageNode } from '../../src/actors/node.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { seededRandom } from '../seededRandom.ts';
import { oneCrc, pattern as seededPattern } from './knownCrc.ts';
import { call, errnoOf, nodeHarness } from './tableCalls.ts';

const clusterBytes = 64 * 1024;
const clusterCount = 16;
const sectorBytes = 512;
const harness = nodeHarness(71);
afterEach(() => harness.cleanup());


function pattern(seed: number): Buffer {
  return seededPattern(seed, clusterBytes);
}

interface Verification {
  verified_at: string | null;
  result: 'clean' | 'corrupt' | 'incomplete' | null;
  errors_only: boolean;
  clusters_checked: number;
  clusters_total: number;
  bad_cluster_count: number;
  bad_clusters: Array<{ cluster_index: number; offset_bytes: number; expected: bigint; actual: bigint }>;
  whole: { expected: bigint; actual: bigint } | null;
  registration_conflict: { at: string; whole: { expected: bigint; actual: bigint } | null; cluster_count: number; clusters: unknown[] } | null;
}

async function start(path: string): Promise<{ node: StorageNode; table: MethodTable }> {
  const started = harness.newNode();
  await call(started.table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: sectorBytes });
  return started;
}

/** A snapshot `lvs/snap` owning every cluster of known bytes (all but `skip`), with the registration `mode` asks for. */
async function snapshotOnFile(
  seed: number,
  mode: 'range' | 'whole' = 'range',
  skip: readonly number[] = [],
): Promise<{ node: StorageNode; table: MethodTable; path: string; data: Map<number, Buffer> }> {
  const dir = await harness.tempDir('lvnode-verify-');
  const path = join(dir, 'disk.img');
  await FileDevice.createSparse(path, 32 * 1024 * 1024);
  const { node, table } = await start(path);
  await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'none' });
  await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'vol', size_in_mib: (clusterCount * clusterBytes) / (1024 * 1024), thin_provision: true });
  const data = new Map<number, Buffer>();
  for (let clusterIndex = 0; clusterIndex < clusterCount; clusterIndex++) {
    if (skip.includes(clusterIndex)) continue;
    const bytes = pattern(seed * 1000 + clusterIndex);
    data.set(clusterIndex, bytes);
    await node.bdev('lvs/vol').write(clusterIndex * clusterBytes, bytes);
  }
  await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/vol', snapshot_name: 'snap' });
  await call(table, mode === 'range' ? 'bdev_lvol_register_snapshot_range_checksums' : 'bdev_lvol_register_snapshot_checksum', { name: 'lvs/snap' });
  return { node, table, path, data };
}

/** Where lvol cluster `clusterIndex` of `name` lies in the backing file (the node's own layout, asked in-process). */
function fileOffsetOf(node: StorageNode, name: string, clusterIndex: number): number {
  const { entry, lvol } = node.resolveLvol(name);
  return entry.store.ownedClusterOffsetBytes(lvol.id, clusterIndex);
}

type Damage = { kind: 'bit'; byteOffset: number; bit: number } | { kind: 'sector'; sectorIndex: number };

/** Damages one cluster in the file behind the node's back; returns the cluster's bytes afterwards. */
async function damage(path: string, fileOffset: number, original: Buffer, how: Damage, random: () => number): Promise<Buffer> {
  const after = Buffer.from(original);
  if (how.kind === 'bit') {
    after[how.byteOffset] = after[how.byteOffset]! ^ (1 << how.bit);
  } else {
    const sector = after.subarray(how.sectorIndex * sectorBytes, (how.sectorIndex + 1) * sectorBytes);
    for (let index = 0; index < sector.length; index++) sector[index] = Math.floor(random() * 256);
    // A sector of random bytes equal to the old one would be no damage.
    sector[0] = (original[how.sectorIndex * sectorBytes]! + 1) & 0xff;
  }
  const file = await open(path, 'r+');
  try {
    await file.write(after, 0, after.length, fileOffset);
    await file.datasync();
  } finally {
    await file.close();
  }
  return after;
}

/** Counts cluster reads the checksum reader makes on the lvstore's device (native or fallback path). */
function countDeviceReads(node: StorageNode, name: string): { count: () => number } {
  const device = node.resolveLvol(name).entry.store.device as unknown as Record<string, (...args: unknown[]) => unknown>;
  let reads = 0;
  for (const method of ['withFd', 'readIntoBackground']) {
    const original = device[method];
    if (typeof original !== 'function') continue;
    device[method] = function (this: unknown, ...args: unknown[]) {
      reads++;
      return original.apply(this, args);
    };
  }
  return { count: () => reads };
}

async function storedOf(table: MethodTable): Promise<{ checksum: bigint; range: bigint[] }> {
  const { checksum } = await call<{ checksum: bigint }>(table, 'bdev_lvol_get_snapshot_checksum', { name: 'lvs/snap' });
  const rows = await call<Array<{ checksum: bigint }>>(table, 'bdev_lvol_get_snapshot_range_checksums', {
    name: 'lvs/snap',
    cluster_start_index: 0,
    cluster_count: clusterCount,
  });
  return { checksum, range: rows.map((row) => row.checksum) };
}

function status(table: MethodTable): Promise<{ state: string; mode: string | null; clusters_done: number; clusters_total: number; will_resume: boolean }> {
  return call(table, 'bdev_lvol_get_checksum_status', { name: 'lvs/snap' });
}

async function waitForState(table: MethodTable, state: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while ((await status(table)).state !== state) {
    if (Date.now() > deadline) throw new Error(`never ${state}: ${JSON.stringify(await status(table))}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

describe('bdev_lvol_verify_snapshot on a real file', () => {
  it.each([1, 2, 3, 4, 5, 6])('reports exactly the clusters damaged in the file, with the right CRCs (seed %i)', async (seed) => {
    const { node, table, path, data } = await snapshotOnFile(seed);
    const random = seededRandom(seed);
    const before = await storedOf(table);
    // 0 to 3 damaged clusters (seed % 4: every count is seen), each a flipped bit or a sector of other bytes at a place only the test knows.
    const damagedCount = seed % 4;
    const damaged = new Map<number, Buffer>();
    while (damaged.size < damagedCount) {
      const clusterIndex = Math.floor(random() * clusterCount);
      if (damaged.has(clusterIndex)) continue;
      const how: Damage =
        random() < 0.5
          ? { kind: 'bit', byteOffset: Math.floor(random() * clusterBytes), bit: Math.floor(random() * 8) }
          : { kind: 'sector', sectorIndex: Math.floor(random() * (clusterBytes / sectorBytes)) };
      damaged.set(clusterIndex, await damage(path, fileOffsetOf(node, 'lvs/snap', clusterIndex), data.get(clusterIndex)!, how, random));
    }
    const events: NodeEvent[] = [];
    node.events.on('event', (event) => events.push(event));

    const found = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap' });
    const expectedBad = [...damaged.keys()].sort((a, b) => a - b).map((clusterIndex) => ({
      cluster_index: clusterIndex,
      offset_bytes: clusterIndex * clusterBytes,
      expected: oneCrc(data.get(clusterIndex)!),
      actual: oneCrc(damaged.get(clusterIndex)!),
    }));
    expect(found).toMatchObject({
      result: damagedCount > 0 ? 'corrupt' : 'clean',
      errors_only: false,
      clusters_checked: clusterCount,
      clusters_total: clusterCount,
      bad_cluster_count: damagedCount,
      whole: null,
    });
    expect(found.bad_clusters, `seed ${seed}`).toEqual(expectedBad);
    // Verifying never overwrites what is stored.
    expect(await storedOf(table)).toEqual(before);
    expect(await status(table)).toMatchObject({ state: 'done', mode: 'verify', clusters_done: clusterCount });
    const mismatches = events.filter((event) => event.type === 'checksum_mismatch');
    expect(mismatches).toHaveLength(damagedCount > 0 ? 1 : 0);
    if (damagedCount > 0) expect(mismatches[0]).toMatchObject({ source: 'verify', bad_cluster_count: damagedCount, bad_clusters: expectedBad });
    const [lvol] = await call<Array<{ verification?: { corrupt: boolean } }>>(table, 'bdev_lvol_get_lvols', { lvs_name: 'lvs' }).then((rows) =>
      rows.filter((row) => (row as unknown as { name: string }).name === 'snap'),
    );
    expect(lvol!.verification).toMatchObject({ corrupt: damagedCount > 0, result: damagedCount > 0 ? 'corrupt' : 'clean', bad_cluster_count: damagedCount });
  });

  it('re-reads exactly the known bad clusters with errors_only, and keeps the result across a restart', async () => {
    let { node, table, path, data } = await snapshotOnFile(11);
    const random = seededRandom(11);
    const bad = [3, 9, 14];
    for (const clusterIndex of bad) {
      await damage(path, fileOffsetOf(node, 'lvs/snap', clusterIndex), data.get(clusterIndex)!, { kind: 'bit', byteOffset: 100 * clusterIndex, bit: 3 }, random);
    }
    const full = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap' });
    expect(full.bad_clusters.map((cluster) => cluster.cluster_index)).toEqual(bad);

    const reads = countDeviceReads(node, 'lvs/snap');
    const again = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap', errors_only: true });
    expect(reads.count()).toBe(bad.length);
    expect(again).toMatchObject({ result: 'corrupt', errors_only: true, clusters_checked: 3, clusters_total: 3, bad_clusters: full.bad_clusters });

    // Repair one cluster from outside: an errors-only verify finds the others only.
    const file = await open(path, 'r+');
    await file.write(data.get(9)!, 0, clusterBytes, fileOffsetOf(node, 'lvs/snap', 9));
    await file.close();
    const repaired = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap', errors_only: true });
    expect(repaired.bad_clusters.map((cluster) => cluster.cluster_index)).toEqual([3, 14]);

    await call(table, 'bdev_lvol_delete', { name: 'lvs/vol' });
    await node.shutdown();
    ({ node, table } = await start(path));
    expect(await call<Verification>(table, 'bdev_lvol_get_verification', { name: 'lvs/snap' })).toEqual(repaired);
    const [bdev] = await call<Array<{ driver_specific: { lvol: { verification?: unknown } } }>>(table, 'bdev_get_bdevs', { name: 'lvs/snap' });
    expect(bdev!.driver_specific.lvol.verification).toMatchObject({ corrupt: true, result: 'corrupt', bad_cluster_count: 2 });
  });

  it('compares the chained value at the end when only a whole checksum is stored', async () => {
    const { node, table, path, data } = await snapshotOnFile(21, 'whole');
    const clean = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap' });
    expect(clean).toMatchObject({ result: 'clean', whole: null, bad_clusters: [] });
    await damage(path, fileOffsetOf(node, 'lvs/snap', 5), data.get(5)!, { kind: 'bit', byteOffset: 7, bit: 0 }, seededRandom(1));
    const corrupt = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap' });
    const owned = [...data.keys()].sort((a, b) => a - b).map((clusterIndex) => data.get(clusterIndex)!);
    expect(corrupt.result).toBe('corrupt');
    expect(corrupt.whole!.expected).toBe(oneCrc(...owned));
    expect(corrupt.whole!.actual).not.toBe(corrupt.whole!.expected);
    expect(await errnoOf(call(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap', errors_only: true }))).toBe('EINVAL');
  });

  it('stops, resumes and is preempted like a checksum walk, recording incomplete meanwhile', async () => {
    const { node, table, path, data } = await snapshotOnFile(31, 'range', [4]);
    await damage(path, fileOffsetOf(node, 'lvs/snap', 12), data.get(12)!, { kind: 'sector', sectorIndex: 3 }, seededRandom(2));
    // 1 MiB/s and 64 KiB clusters: ~16 steps a second, long enough to stop and preempt.
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 1 });
    const first = call(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap' }).catch((error: unknown) => error);
    await waitForState(table, 'computing');
    expect(await call(table, 'bdev_lvol_stop_snapshot_checksum', { name: 'lvs/snap' })).toBe(true);
    expect(await first).toMatchObject({ errno: 'EINTR' });
    const stopped = await status(table);
    expect(stopped).toMatchObject({ state: 'aborted', mode: 'verify', clusters_total: clusterCount - 1 });
    expect(stopped.clusters_done).toBeLessThan(clusterCount - 1);
    const incomplete = await call<Verification>(table, 'bdev_lvol_get_verification', { name: 'lvs/snap' });
    expect(incomplete).toMatchObject({ result: 'incomplete', clusters_checked: stopped.clusters_done });

    // A clone of the snapshot preempts the resumed verify; it re-queues and finishes by itself.
    const resumed = call(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap', resume: true }).catch((error: unknown) => error);
    await waitForState(table, 'computing');
    await call(table, 'bdev_lvol_clone', { snapshot_name: 'lvs/snap', clone_name: 'c1' });
    expect(await resumed).toMatchObject({ errno: 'EINTR' });
    await call(table, 'node_set_background_options', { checksum_rate_mib_per_sec: 0 });
    await waitForState(table, 'done');
    const final = await call<Verification>(table, 'bdev_lvol_get_verification', { name: 'lvs/snap' });
    expect(final).toMatchObject({ result: 'corrupt', clusters_checked: clusterCount - 1, bad_cluster_count: 1 });
    expect(final.bad_clusters[0]).toMatchObject({ cluster_index: 12, expected: oneCrc(data.get(12)!) });
  });

  it('keeps both values as evidence when a re-registration finds other values, and overwrites (SPDK)', async () => {
    const { node, table, path, data } = await snapshotOnFile(41);
    const before = await storedOf(table);
    const rotten = await damage(path, fileOffsetOf(node, 'lvs/snap', 2), data.get(2)!, { kind: 'bit', byteOffset: 4095, bit: 7 }, seededRandom(3));
    const events: NodeEvent[] = [];
    node.events.on('event', (event) => events.push(event));
    expect(await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/snap' })).toBe(true);
    const after = await storedOf(table);
    expect(after.range[2]).toBe(oneCrc(rotten));
    const evidence = await call<Verification>(table, 'bdev_lvol_get_verification', { name: 'lvs/snap' });
    expect(evidence.registration_conflict).toMatchObject({
      cluster_count: 1,
      clusters: [{ cluster_index: 2, offset_bytes: 2 * clusterBytes, expected: before.range[2], actual: oneCrc(rotten) }],
      whole: { expected: before.checksum, actual: after.checksum },
    });
    expect(events.filter((event) => event.type === 'checksum_mismatch')).toMatchObject([{ source: 'registration', bad_cluster_count: 1 }]);
    // A verify against the new values is clean, and the evidence stays.
    const verified = await call<Verification>(table, 'bdev_lvol_verify_snapshot', { name: 'lvs/snap' });
    expect(verified).toMatchObject({ result: 'clean', registration_conflict: evidence.registration_conflict });
  });
});
