// Merge-derived checksums (issue 21 item 2): the time of bdev_lvol_delete of the older of two
// snapshots with range checksums (Longhorn's snapshot delete: it merges into the newer one, whose
// checksums are derived without reading data) against a fresh range registration of the merged
// snapshot, over WebSocket, in the same run. Goal: ≤ 0.01x. Each round writes an eighth of the
// clusters into the lvol, snapshots it, registers the new snapshot, deletes the older one (timed),
// then registers the merged one afresh (timed) and checks its values equal the derived ones. A
// second chain beside it, never registered, gives the same merge with its checksums dropped: what
// the merge costs without the derivation.
// Then the derivation alone, in memory, at larger sizes: the table-driven chain against folding
// with crc64Combine, which is what a merge holds the event loop for.
import { randomFillSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { crc64Combine } from '../src/checksum/crc64.ts';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { type RunningNode, startNode } from '../src/cli/serve.ts';
import { mibBytes } from '../src/constants.ts';
import { FileDevice } from '../src/device/fileDevice.ts';
import { metadataClusterCount } from '../src/store/lvstore.ts';
import { type LvolRecord, createLvolRecord, mergeAdoptions, mergedChecksums } from '../src/store/metadata.ts';
import { ClusterChecksums } from '../src/store/sparseArray.ts';
import { benchClusterBytes, benchToken, envInteger, fixed, median, printTable, timed, writePatternFile } from './support.ts';

const snapshotMibDefault = 2048;
const repetitionsDefault = 9;
const ratioGoal = 0.01;
/** Each round writes this share of the lvol's clusters, so the newer snapshot owns some of its own. */
const writtenShare = 1 / 8;
const lvsName = 'bench_lvs';

function spread(values: readonly number[], digits: number): string {
  return `${fixed(Math.min(...values), digits)}–${fixed(Math.max(...values), digits)}`;
}

interface Stored {
  checksum: bigint;
  range: bigint[];
}

async function stored(client: RpcClient, name: string, clusterCount: number): Promise<Stored> {
  const { checksum } = await client.call<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name });
  const rows = await client.call<Array<{ checksum: bigint }>>('bdev_lvol_get_snapshot_range_checksums', {
    name,
    cluster_start_index: 0,
    cluster_count: clusterCount,
  });
  return { checksum: BigInt(checksum), range: rows.map((row) => BigInt(row.checksum)) };
}

function same(a: Stored, b: Stored): boolean {
  return a.checksum === b.checksum && a.range.length === b.range.length && a.range.every((crc, index) => crc === b.range[index]);
}

/** Writes `count` fresh random clusters into `lvolName`, spread over it, shifted by `round`. */
async function writeRound(running: RunningNode, lvolName: string, clusterCount: number, count: number, round: number): Promise<void> {
  const cluster = Buffer.alloc(benchClusterBytes);
  for (let written = 0; written < count; written++) {
    const clusterIndex = (written * Math.floor(clusterCount / count) + round) % clusterCount;
    await running.node.bdev(lvolName).write(clusterIndex * benchClusterBytes, randomFillSync(cluster));
  }
}

/** The merge against a fresh registration over WebSocket, on an in-process node over a file. */
async function overRpc(snapshotMib: number, repetitions: number): Promise<void> {
  const clusterCount = (snapshotMib * mibBytes) / benchClusterBytes;
  const writtenCount = Math.max(1, Math.round(clusterCount * writtenShare));
  // Two chains, each its lvol and room for what the rounds write (a written cluster is freed a
  // round later), and the metadata area. Only the registered lvol's clusters need the pattern.
  const fileMib = 4 * snapshotMib + 64;
  const firstDataOffset = metadataClusterCount(fileMib * mibBytes, benchClusterBytes) * benchClusterBytes;
  const patternMib = firstDataOffset / mibBytes + snapshotMib;
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bench-'));
  const filePath = join(dir, 'bench.img');
  let running: RunningNode | undefined;
  let client: RpcClient | undefined;
  try {
    await FileDevice.createSparse(filePath, fileMib * mibBytes);
    running = await startNode({ dataDir: join(dir, 'data'), listen: '127.0.0.1:0', defaultDiskBytes: 64 * mibBytes });
    client = await RpcClient.connect(running.url, { token: benchToken(running) });
    await client.call('bdev_aio_create', { name: 'bench_aio', filename: filePath, block_size: 512 });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'bench_aio', lvs_name: lvsName, cluster_sz: benchClusterBytes, clear_method: 'none' });
    for (const name of ['data', 'plain']) {
      await client.call('bdev_lvol_create', { lvs_name: lvsName, lvol_name: name, size_in_mib: snapshotMib, thin_provision: false });
    }
    // The create zeroed the clusters: the pattern goes under `data`, the first lvol made.
    await writePatternFile(filePath, patternMib, benchClusterBytes, { fromBytes: firstDataOffset });
    const chains = ['data', 'plain'].map((name) => ({ lvol: `${lvsName}/${name}`, older: `${lvsName}/${name}-snap0` }));
    for (const chain of chains) await client.call('bdev_lvol_snapshot', { lvol_name: chain.lvol, snapshot_name: chain.older.split('/')[1]! });
    await client.call('bdev_lvol_register_snapshot_range_checksums', { name: chains[0]!.older });
    const sides = { derived: [] as number[], register: [] as number[], dropped: [] as number[] };
    const ratios: number[] = [];
    let allEqual = true;
    let allDone = true;
    let allDropped = true;
    for (let round = 1; round <= repetitions; round++) {
      const newer = chains.map((chain) => `${chain.lvol.split('/')[1]}-snap${round}`);
      for (const [index, chain] of chains.entries()) {
        await writeRound(running, chain.lvol, clusterCount, writtenCount, round);
        await client.call('bdev_lvol_snapshot', { lvol_name: chain.lvol, snapshot_name: newer[index]! });
      }
      const [kept, plain] = newer.map((name) => `${lvsName}/${name}`) as [string, string];
      await client.call('bdev_lvol_register_snapshot_range_checksums', { name: kept });
      // Alternate which merge goes first, so that whatever the registration left behind (a
      // journal nearly full, a checkpoint due) falls on both alike.
      const merge = (chain: { older: string }) => timed(() => client!.call('bdev_lvol_delete', { name: chain.older }));
      const dropped = round % 2 === 0 ? await merge(chains[1]!) : undefined;
      const derived = await merge(chains[0]!);
      const droppedMs = (dropped ?? (await merge(chains[1]!))).ms;
      allDone &&= (await client.call<{ state: string }>('bdev_lvol_get_checksum_status', { name: kept })).state === 'done';
      allDropped &&= (await client.call<{ state: string }>('bdev_lvol_get_checksum_status', { name: plain })).state === 'idle';
      const values = await stored(client, kept, clusterCount);
      const fresh = await timed(() => client!.call('bdev_lvol_register_snapshot_range_checksums', { name: kept }));
      allEqual &&= same(values, await stored(client, kept, clusterCount));
      sides.derived.push(derived.ms);
      sides.dropped.push(droppedMs);
      sides.register.push(fresh.ms);
      ratios.push(derived.ms / fresh.ms);
      chains[0]!.older = kept;
      chains[1]!.older = plain;
    }
    const ratio = median(sides.derived) / median(sides.register);
    console.log(
      `\n  over WebSocket: ${snapshotMib} MiB snapshot (${clusterCount} clusters of ${benchClusterBytes / mibBytes} MiB, ` +
        `${writtenCount} of them its own each round), ${repetitions} rounds:`,
    );
    printTable(
      ['side', 'median ms', 'min–max ms'],
      [
        ['delete older snapshot: merge, checksums derived', fixed(median(sides.derived), 2), spread(sides.derived, 2)],
        ['delete older snapshot: merge, nothing to derive', fixed(median(sides.dropped), 2), spread(sides.dropped, 2)],
        ['fresh range registration of the merged snapshot', fixed(median(sides.register), 1), spread(sides.register, 1)],
      ],
    );
    console.log(`  ratio merge (derived) / registration, medians: ${fixed(ratio, 4)}x; per round ${spread(ratios, 4)} (goal ≤ ${ratioGoal}: ${ratio <= ratioGoal ? 'met' : 'missed'})`);
    console.log(`  ratio merge derived / merge without: ${fixed(median(sides.derived) / median(sides.dropped), 2)}x`);
    console.log(
      `  derived values equal the fresh registration's: ${allEqual ? 'yes' : 'NO'}; shown done: ${allDone ? 'yes' : 'NO'}; ` +
        `unregistered chain left idle: ${allDropped ? 'yes' : 'NO'}`,
    );
  } finally {
    await client?.close().catch(() => undefined);
    await running?.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

/** A parent owning every cluster and a clone owning every 8th, both with range checksums. */
function records(clusterCount: number): { parent: LvolRecord; clone: LvolRecord } {
  const make = (id: string) =>
    createLvolRecord({
      type: 'lvol.create', id, name: id, clusterCount, thin: true, readOnly: true, snapshot: true, parentId: null,
      clearMethod: 'none', xattrs: {}, createdAtMs: 0, allocations: [],
    });
  const parent = make('parent');
  const clone = make('clone');
  parent.rangeChecksums = new ClusterChecksums(clusterCount);
  clone.rangeChecksums = new ClusterChecksums(clusterCount);
  const random = new BigUint64Array(1);
  for (let clusterIndex = 0; clusterIndex < clusterCount; clusterIndex++) {
    parent.clusterMap.set(clusterIndex, 1000 + clusterIndex);
    parent.rangeChecksums.set(clusterIndex, (randomFillSync(random)[0]! | 1n));
    if (clusterIndex % 8 === 0) {
      clone.clusterMap.set(clusterIndex, 1000 + clusterCount + clusterIndex);
      clone.rangeChecksums.set(clusterIndex, (randomFillSync(random)[0]! | 1n));
    }
  }
  return { parent, clone };
}

/** The derivation alone (what applyChange adds to a merge), and the same fold with crc64Combine. */
function inMemory(repetitions: number): void {
  console.log('\n  the derivation alone, in memory (clone owns every 8th cluster, adopts the rest):');
  const rows: string[][] = [];
  for (const clusterCount of [256, 100_000, 1_000_000]) {
    const { parent, clone } = records(clusterCount);
    const merged = clone.clusterMap.copy();
    for (const [index, physicalCluster] of mergeAdoptions(parent, clone)) merged.set(index, physicalCluster);
    const chainMs: number[] = [];
    let derived = 0n;
    for (let repetition = 0; repetition < repetitions; repetition++) {
      const startMs = performance.now();
      derived = mergedChecksums(parent, clone, merged, benchClusterBytes)!.checksum;
      chainMs.push(performance.now() - startMs);
    }
    // The same values folded with crc64Combine: once, and only where it takes under a few seconds.
    let combineMs = Number.NaN;
    let equal = '—';
    if (clusterCount <= 100_000) {
      const startMs = performance.now();
      let folded = 0n;
      merged.forEachNonZero((index) => {
        const crc = clone.clusterMap.get(index) !== 0 ? clone.rangeChecksums!.get(index) : parent.rangeChecksums!.get(index);
        folded = crc64Combine(folded, crc, benchClusterBytes);
      });
      combineMs = performance.now() - startMs;
      equal = folded === derived ? 'yes' : 'NO';
    }
    rows.push([
      String(clusterCount),
      fixed(median(chainMs), 2),
      spread(chainMs, 2),
      fixed((median(chainMs) * 1000) / clusterCount, 3),
      Number.isNaN(combineMs) ? '—' : fixed(combineMs, 1),
      equal,
    ]);
  }
  printTable(['merged clusters', 'median ms', 'min–max ms', 'µs/cluster', 'crc64Combine fold ms', 'same value'], rows);
}

export async function mergeChecksums(): Promise<void> {
  const snapshotMib = envInteger('BENCH_SIZE_MIB', snapshotMibDefault);
  const repetitions = envInteger('BENCH_REPETITIONS', repetitionsDefault);
  console.log('\n== merge-derived checksums: delete of a snapshot into the next vs a fresh registration of the result ==');
  await overRpc(snapshotMib, repetitions);
  inMemory(repetitions);
}
