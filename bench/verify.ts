// Verify walks (issue 21): their speed against a plain read and a registration, errors-only reads,
// detection of injected corruption, and small-RPC throughput while verifies run.
//
// The node runs in its own process on a pre-filled file whose pages are in the page cache; the
// corruptions are written into that file behind the node's back, at places only this benchmark
// knows, and undone after each run. Every figure is printed beside a baseline measured in the same
// run (never asserted). Clusters read are counted by the scheduler's `background.bytes_total` in
// node_get_stats (every byte a checksum or verify walk reads goes through it).
import { open } from 'node:fs/promises';
import type { RpcClient } from '../src/cli/rpcClient.ts';
import { nativeCrc } from '../src/checksum/native.ts';
import { nativeJobsAlone, readRange } from './baselineRead.ts';
import { type ChildBench, spawnBenchNode } from './childNode.ts';
import { bytesPerMsToMBps, envInteger, fixed, median, printTable, quantile, sleepMs, timed } from './support.ts';
import { seededRandom } from '../test/seededRandom.ts';
import { hammer } from './backgroundLoad.ts';

const sectorBytes = 512;
const walkRatioTarget = 0.75;
const verifyRatioTarget = 0.95;
const loadRatioTarget = 0.8;
const verifiers = 8;
const clientCount = 16;
const errorsOnlyCounts = [1, 4, 16];

interface Verification {
  result: 'clean' | 'corrupt' | 'incomplete' | null;
  clusters_checked: number;
  clusters_total: number;
  bad_cluster_count: number;
  bad_clusters: Array<{ cluster_index: number }>;
}

interface Stats {
  background: { bytes_total: number };
}

/** Bytes every walk of the node has read so far. */
async function backgroundBytes(client: RpcClient): Promise<number> {
  return (await client.call<Stats>('node_get_stats', {})).background.bytes_total;
}

/** One snapshot of lvol 0 with per-cluster checksums: what a verify compares against. */
async function registeredSnapshot(bench: ChildBench, lvolIndex = 0, name = 'snap'): Promise<string> {
  await bench.client.call('bdev_lvol_snapshot', { lvol_name: bench.lvolNames[lvolIndex]!, snapshot_name: name });
  const snapshotName = `${bench.lvsName}/${name}`;
  await bench.client.call('bdev_lvol_register_snapshot_range_checksums', { name: snapshotName });
  return snapshotName;
}

function verify(client: RpcClient, name: string, errorsOnly = false): Promise<Verification> {
  return client.call<Verification>('bdev_lvol_verify_snapshot', { name, errors_only: errorsOnly });
}

/** The file offset of lvol 0's cluster `clusterIndex` (a fresh store lays each thick lvol out contiguously). */
function clusterFileOffset(bench: ChildBench, clusterIndex: number): number {
  return bench.lvolOffsetBytes[0]! + clusterIndex * bench.clusterBytes;
}

type Damage = { kind: 'bit'; clusterIndex: number; byteOffset: number; bit: number } | { kind: 'sector'; clusterIndex: number; sectorIndex: number };

/**
 * Writes `damages` into the file (one per cluster) and returns what undoes them: the original
 * bytes written back. Synced, so the node reads the damage whatever way it reads the file.
 */
async function inject(bench: ChildBench, damages: readonly Damage[], random: () => number): Promise<() => Promise<void>> {
  const file = await open(bench.filePath, 'r+');
  const originals: Array<[number, Buffer]> = [];
  try {
    for (const damage of damages) {
      const [startBytes, lengthBytes] =
        damage.kind === 'bit' ? [damage.byteOffset, 1] : [damage.sectorIndex * sectorBytes, sectorBytes];
      const positionBytes = clusterFileOffset(bench, damage.clusterIndex) + startBytes;
      const original = Buffer.alloc(lengthBytes);
      await file.read(original, 0, lengthBytes, positionBytes);
      originals.push([positionBytes, original]);
      const after = Buffer.from(original);
      if (damage.kind === 'bit') after[0] = after[0]! ^ (1 << damage.bit);
      else {
        for (let index = 0; index < after.length; index++) after[index] = Math.floor(random() * 256);
        // Random bytes equal to the old sector would be no damage.
        after[0] = (original[0]! + 1) & 0xff;
      }
      await file.write(after, 0, lengthBytes, positionBytes);
    }
    await file.datasync();
  } finally {
    await file.close();
  }
  return async () => {
    const undo = await open(bench.filePath, 'r+');
    try {
      for (const [positionBytes, original] of originals) await undo.write(original, 0, original.length, positionBytes);
      await undo.datasync();
    } finally {
      await undo.close();
    }
  };
}

/** `count` distinct clusters out of `clusterCount`, each with a random bit or sector damaged. */
function randomDamages(random: () => number, clusterCount: number, clusterBytes: number, count: number): Damage[] {
  const clusters = new Set<number>();
  while (clusters.size < count) clusters.add(Math.floor(random() * clusterCount));
  return [...clusters].map((clusterIndex) =>
    random() < 0.5
      ? { kind: 'bit', clusterIndex, byteOffset: Math.floor(random() * clusterBytes), bit: Math.floor(random() * 8) }
      : { kind: 'sector', clusterIndex, sectorIndex: Math.floor(random() * (clusterBytes / sectorBytes)) },
  );
}

interface Side {
  label: string;
  ms: number[];
}

/** (1), (2), (3): walk vs read, verify vs register, errors-only reads, on one snapshot. */
async function walkAndErrorsOnly(sizeMib: number, repetitions: number): Promise<void> {
  const bench = await spawnBenchNode({ sizeMib, lvolCount: 1 });
  try {
    const snapshotName = await registeredSnapshot(bench);
    const [offsetBytes, lengthBytes] = [bench.lvolOffsetBytes[0]!, bench.lvolBytes];
    const clusterCount = lengthBytes / bench.clusterBytes;
    await readRange(bench.filePath, offsetBytes, lengthBytes, 'read'); // warm the page cache, untimed
    const sides: Side[] = [
      { label: 'register (range checksums)', ms: [] },
      { label: 'verify', ms: [] },
      { label: 'read, 4 MiB chunks, no CRC', ms: [] },
      ...(nativeCrc ? [{ label: 'native reader alone, 4 MiB jobs', ms: [] }] : []),
    ];
    let unclean = 0;
    // Alternate the sides so drift (page cache, CPU frequency, neighbours) falls on all alike.
    for (let repetition = 0; repetition < repetitions; repetition++) {
      sides[0]!.ms.push((await timed(() => bench.client.call('bdev_lvol_register_snapshot_range_checksums', { name: snapshotName }))).ms);
      const verified = await timed(() => verify(bench.client, snapshotName));
      sides[1]!.ms.push(verified.ms);
      if (verified.value.result !== 'clean' || verified.value.clusters_checked !== clusterCount) unclean++;
      sides[2]!.ms.push((await readRange(bench.filePath, offsetBytes, lengthBytes, 'read')).ms);
      if (sides[3]) sides[3].ms.push((await nativeJobsAlone(bench.filePath, offsetBytes, lengthBytes)).ms);
    }
    const mbps = (ms: number) => bytesPerMsToMBps(lengthBytes, ms);
    console.log(`\n  (1, 2) ${fixed(lengthBytes / 1e6, 0)} MB snapshot (${clusterCount} clusters), ${repetitions} runs per side, page cache:`);
    printTable(
      ['side', 'median MB/s', 'min–max MB/s', 'runs MB/s'],
      sides.map((entry) => [
        entry.label,
        fixed(mbps(median(entry.ms)), 0),
        `${fixed(mbps(Math.max(...entry.ms)), 0)}–${fixed(mbps(Math.min(...entry.ms)), 0)}`,
        entry.ms.map((ms) => fixed(mbps(ms), 0)).join(' '),
      ]),
    );
    const rate = (entry: Side) => mbps(median(entry.ms));
    const [registerSide, verifySide, readSide, alone] = sides as [Side, Side, Side, Side | undefined];
    const verdict = (value: number, target: number) => `(goal ≥ ${target}: ${value >= target ? 'met' : 'missed'})`;
    for (const walk of [registerSide, verifySide]) {
      const ratio = rate(walk) / rate(readSide);
      console.log(`  ${walk.label} / read: ${fixed(ratio, 3)} ${verdict(ratio, walkRatioTarget)}${alone ? `; / native reader alone: ${fixed(rate(walk) / rate(alone), 3)}` : ''}`);
    }
    const verifyRatio = rate(verifySide) / rate(registerSide);
    console.log(`  verify / register: ${fixed(verifyRatio, 3)} ${verdict(verifyRatio, verifyRatioTarget)}`);
    console.log(`  verifies not clean over every cluster (should be 0): ${unclean}`);
    await errorsOnlyReads(bench, snapshotName, clusterCount);
  } finally {
    await bench.close();
  }
}

/** (3): with k of n clusters damaged, a full verify reads n clusters and an errors-only one k. */
async function errorsOnlyReads(bench: ChildBench, snapshotName: string, clusterCount: number): Promise<void> {
  const random = seededRandom(21);
  const rows: string[][] = [];
  for (const k of errorsOnlyCounts.filter((count) => count <= clusterCount)) {
    const damages = randomDamages(random, clusterCount, bench.clusterBytes, k);
    const undo = await inject(bench, damages, random);
    try {
      const beforeFull = await backgroundBytes(bench.client);
      const full = await verify(bench.client, snapshotName);
      const beforeErrors = await backgroundBytes(bench.client);
      const errorsOnly = await verify(bench.client, snapshotName, true);
      const afterErrors = await backgroundBytes(bench.client);
      const fullRead = (beforeErrors - beforeFull) / bench.clusterBytes;
      const errorsOnlyRead = (afterErrors - beforeErrors) / bench.clusterBytes;
      rows.push([
        `${k} of ${clusterCount}`,
        String(full.bad_cluster_count),
        fixed(fullRead, 2),
        fixed(errorsOnlyRead, 2),
        String(errorsOnly.clusters_checked),
        String(errorsOnly.bad_cluster_count),
      ]);
    } finally {
      await undo();
    }
  }
  // Leave the snapshot's verification clean for whatever runs next.
  await verify(bench.client, snapshotName);
  console.log('\n  (3) errors-only verify: clusters read, from node_get_stats background.bytes_total / cluster size (goal: k):');
  printTable(['bad k of n', 'full: bad found', 'full: metered', 'errors-only: metered', 'clusters_checked', 'still bad'], rows);
}

/** (4): seeded runs of 1–3 damaged clusters each; found at the exact cluster vs injected, and false positives. */
async function detection(runs: number, seedBase: number): Promise<void> {
  const bench = await spawnBenchNode({ sizeMib: 128, lvolCount: 1 });
  try {
    const snapshotName = await registeredSnapshot(bench);
    const clusterCount = bench.lvolBytes / bench.clusterBytes;
    const tally = { bit: { injected: 0, found: 0 }, sector: { injected: 0, found: 0 } };
    let falsePositives = 0;
    const missedSeeds: number[] = [];
    for (let run = 0; run < runs; run++) {
      const seed = seedBase + run;
      const random = seededRandom(seed);
      const damages = randomDamages(random, clusterCount, bench.clusterBytes, 1 + Math.floor(random() * 3));
      const undo = await inject(bench, damages, random);
      try {
        const reported = new Set((await verify(bench.client, snapshotName)).bad_clusters.map((bad) => bad.cluster_index));
        for (const damage of damages) {
          tally[damage.kind].injected++;
          if (reported.has(damage.clusterIndex)) tally[damage.kind].found++;
          else missedSeeds.push(seed);
        }
        const injected = new Set(damages.map((damage) => damage.clusterIndex));
        falsePositives += [...reported].filter((clusterIndex) => !injected.has(clusterIndex)).length;
      } finally {
        await undo();
      }
    }
    // After the last undo the snapshot is whole again: anything reported now is a false positive too.
    const after = await verify(bench.client, snapshotName);
    falsePositives += after.bad_cluster_count;
    console.log(`\n  (4) detection: ${runs} seeded runs (seeds ${seedBase}..${seedBase + runs - 1}, BENCH_VERIFY_SEED), 1–3 damaged clusters each, ${clusterCount} clusters of ${bench.clusterBytes / 1024 / 1024} MiB:`);
    printTable(
      ['damage', 'injected', 'found at the exact cluster', 'found %'],
      (['bit', 'sector'] as const).map((kind) => [
        kind === 'bit' ? 'single bit flipped' : 'whole 512 B sector rewritten',
        String(tally[kind].injected),
        String(tally[kind].found),
        fixed((100 * tally[kind].found) / Math.max(1, tally[kind].injected), 1),
      ]),
    );
    console.log(`  false positives (clusters reported that were not damaged, incl. a final clean verify): ${falsePositives} (goal 100% / 0)`);
    if (missedSeeds.length > 0) console.log(`  seeds with a missed damage: ${[...new Set(missedSeeds)].join(', ')}`);
  } finally {
    await bench.close();
  }
}

/** Keeps a verify running on every snapshot until `stop` is called (starting another as each ends). */
function keepVerifying(client: RpcClient, snapshots: readonly string[]): { stop(): Promise<void> } {
  let running = true;
  const loops = snapshots.map(async (name) => {
    while (running) await verify(client, name).catch(() => undefined); // stopped by `stop` below
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(snapshots.map((name) => client.call('bdev_lvol_stop_snapshot_checksum', { name }).catch(() => undefined)));
      await Promise.all(loops);
    },
  };
}

/** (5): small-RPC throughput with `verifiers` verifies running vs idle, alternating phases. */
async function underLoad(sizeMib: number, seconds: number, repetitions: number): Promise<void> {
  const bench = await spawnBenchNode({ sizeMib, lvolCount: verifiers + 1 });
  try {
    const snapshots: string[] = [];
    for (let index = 0; index < verifiers; index++) snapshots.push(await registeredSnapshot(bench, index, `verify${index}`));
    await bench.client.call('node_set_background_options', { max_concurrent_checksums: verifiers });
    const clients = await Promise.all(Array.from({ length: clientCount }, () => bench.connect()));
    const probeName = bench.lvolNames[verifiers]!;
    await hammer(clients, probeName, 1); // warm-up, untimed
    const phases: Array<{ loaded: boolean; perSec: number; p99Ms: number; mbps: number }> = [];
    for (let repetition = 0; repetition < repetitions; repetition++) {
      for (const loaded of [false, true]) {
        const verifying = loaded ? keepVerifying(bench.client, snapshots) : undefined;
        if (verifying) await sleepMs(300); // let every verify get going
        const before = await backgroundBytes(bench.client);
        const { ms, value: latencies } = await timed(() => hammer(clients, probeName, seconds));
        const after = await backgroundBytes(bench.client);
        await verifying?.stop();
        phases.push({ loaded, perSec: (latencies.length * 1000) / ms, p99Ms: quantile(latencies, 0.99), mbps: bytesPerMsToMBps(after - before, ms) });
      }
    }
    console.log(`\n  (5) ${clientCount} clients × bdev_get_bdevs {name}, ${seconds} s phases, idle vs ${verifiers} verifies running (${fixed(bench.lvolBytes / 1e6, 0)} MB each):`);
    printTable(
      ['phase', 'req/s', 'p99 ms', 'verify MB/s'],
      phases.map((phase, index) => [`${phase.loaded ? 'loaded' : 'idle'} #${Math.floor(index / 2) + 1}`, fixed(phase.perSec, 0), fixed(phase.p99Ms, 2), fixed(phase.mbps, 0)]),
    );
    const pick = (loaded: boolean) => phases.filter((phase) => phase.loaded === loaded).map((phase) => phase.perSec);
    const ratio = median(pick(true)) / median(pick(false));
    const perRepetition = pick(true).map((loaded, index) => fixed(loaded / pick(false)[index]!, 2));
    console.log(`  loaded/idle throughput ${fixed(ratio, 3)} (per repetition ${perRepetition.join(', ')}; goal ≥ ${loadRatioTarget}: ${ratio >= loadRatioTarget ? 'met' : 'missed'})`);
  } finally {
    await bench.close();
  }
}

export async function verifyBenchmark(): Promise<void> {
  const sizeMib = envInteger('BENCH_SIZE_MIB', 1024);
  const repetitions = Math.max(3, envInteger('BENCH_REPETITIONS', 5));
  const runs = envInteger('BENCH_VERIFY_RUNS', 200);
  const seedBase = envInteger('BENCH_VERIFY_SEED', 1);
  const seconds = envInteger('BENCH_LOAD_SECONDS', 5);
  const loadRepetitions = envInteger('BENCH_LOAD_REPETITIONS', 3);
  console.log(`\n== verify: walk vs read, verify vs register, errors-only reads, detection, small RPCs under ${verifiers} verifies ==`);
  console.log(`  CRC path: ${nativeCrc ? 'native' : 'fallback'}`);
  await walkAndErrorsOnly(sizeMib, repetitions);
  await detection(runs, seedBase);
  await underLoad(sizeMib, seconds, loadRepetitions);
}
