// `npm run bench -- schedulerScale`: what the node-wide scheduler costs per walk as the queue grows
// (issue 21, item 5), and how long a restart holds the event loop while many interrupted walks
// re-queue.
//
// Part 1, the scheduler alone (its actor and machine, in-process, one slot): N walks ask for a
// slot (one admitted, N-1 wait), every waiting walk's queue position is read, then either the
// running walk is released N times (each release admits the head of the queue) or the waiting
// walks leave from the middle in random order (a stopped queued walk). Per-operation cost at
// 16,000 against 1,000 waiting walks is the figure: ~1x is O(1), a little more is O(log n), ~16x
// is O(n). Median of LVNODE_BENCH_SCHEDULER_RUNS runs (default 5); LVNODE_BENCH_SCHEDULER_SIZES
// picks the sizes (default 1000,16000; the ratio is the last against the first).
//
// Part 2, a restart: an lvstore on a file in /dev/shm (tmpdir without it) holds LVNODE_BENCH_SCHEDULER_WALKS
// snapshots (default 16,000) of one 4 KiB cluster each. It is loaded once with every walk saved as
// stopped (nothing re-queues: the load's own cost), then with every walk saved as running at a
// crash, so all of them re-queue as the lvstore loads. Each load is timed to its answer, to the
// last walk queued and to the last lvol actor started, with the longest event-loop stall (a chain
// of setImmediate turns) and the event-loop delay histogram's p99 and max over that whole window,
// and apart from them the longest gap between two turns during which walks went back in line (the
// re-queue's own stall, the load's attach of every lvol actor aside) with the number of such turns.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PerformanceObserver, monitorEventLoopDelay, performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { StorageNode } from '../src/actors/node.ts';
import { BackgroundScheduler } from '../src/actors/scheduler.ts';
import { InspectionHub } from '../src/actors/inspector.ts';
import { FileDevice } from '../src/device/fileDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import type { SavedChecksumProgress } from '../src/store/metadata.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { envInteger, fixed, median, printTable } from './support.ts';

v8.setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };
const positionsRead = 1000;
const restartClusterBytes = 4096;

interface QueueFigures {
  /** Microseconds per operation. */
  admitUs: number;
  positionUs: number;
  releaseHeadUs: number;
  releaseMiddleUs: number;
  /** Whole-phase milliseconds (admitting N walks, releasing N running walks). */
  admitMs: number;
  releaseHeadMs: number;
}

function shuffled<T>(values: readonly T[], seed: number): T[] {
  const out = [...values];
  let state = seed >>> 0;
  for (let index = out.length - 1; index > 0; index--) {
    state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
    const other = state % (index + 1);
    [out[index], out[other]] = [out[other]!, out[index]!];
  }
  return out;
}

function timeMs(work: () => void): number {
  const start = performance.now();
  work();
  return performance.now() - start;
}

/** One run at `size` walks: admit all, read positions, release the running one N times; then admit all again and release the waiting ones from the middle. */
function queueRun(size: number, seed: number): QueueFigures {
  const scheduler = new BackgroundScheduler(systemRuntime, new InspectionHub(), { max_concurrent_checksums: 1, checksum_rate_mib_per_sec: 0 });
  try {
    const ids = Array.from({ length: size }, () => randomUUID());
    const noop = (): void => {};
    collect();
    const admitMs = timeMs(() => {
      for (const id of ids) scheduler.request(id, noop);
    });
    const sample = shuffled(ids, seed).slice(0, positionsRead);
    let positions = 0;
    const positionMs = timeMs(() => {
      for (const id of sample) positions += scheduler.queuePosition(id) ?? 0;
    });
    if (positions === 0) throw new Error('no queued walk has a position');
    // The running walk ends, the head is admitted: N times, in admission order.
    const releaseHeadMs = timeMs(() => {
      for (const id of ids) scheduler.release(id);
    });
    if (scheduler.stats().queued !== 0 || scheduler.stats().running !== 0) throw new Error('walks left behind');
    for (const id of ids) scheduler.request(id, noop);
    const leaving = shuffled(ids.slice(1), seed + 1);
    collect();
    const releaseMiddleMs = timeMs(() => {
      for (const id of leaving) scheduler.release(id);
    });
    if (scheduler.stats().queued !== 0) throw new Error('waiting walks left behind');
    return {
      admitUs: (admitMs * 1000) / size,
      positionUs: (positionMs * 1000) / sample.length,
      releaseHeadUs: (releaseHeadMs * 1000) / size,
      releaseMiddleUs: (releaseMiddleMs * 1000) / leaving.length,
      admitMs,
      releaseHeadMs,
    };
  } finally {
    scheduler.stop();
  }
}

function queueBenchmark(queueSizes: readonly number[], runs: number): void {
  console.log(`\n-- the scheduler alone: N walks, one slot; median of ${runs} runs --`);
  // Warm-up: the request and release paths compiled (V8's optimizing tiers) before anything is timed.
  for (let round = 0; round < 3; round++) queueRun(16_000, 90 + round);
  const bySize = new Map<number, QueueFigures[]>();
  for (let run = 0; run < runs; run++) {
    for (const size of queueSizes) bySize.set(size, [...(bySize.get(size) ?? []), queueRun(size, run + 1)]);
  }
  const med = (size: number, pick: (figures: QueueFigures) => number) => median(bySize.get(size)!.map(pick));
  const rows = queueSizes.map((size) => [
    String(size),
    `${fixed(med(size, (f) => f.admitMs), 1)} ms`,
    fixed(med(size, (f) => f.admitUs), 2),
    fixed(med(size, (f) => f.positionUs), 2),
    `${fixed(med(size, (f) => f.releaseHeadMs), 1)} ms`,
    fixed(med(size, (f) => f.releaseHeadUs), 2),
    fixed(med(size, (f) => f.releaseMiddleUs), 2),
  ]);
  const small = queueSizes[0]!;
  const large = queueSizes[queueSizes.length - 1]!;
  const ratio = (pick: (figures: QueueFigures) => number) => `${fixed(med(large, pick) / med(small, pick), 2)}x`;
  rows.push([
    `per op ${large}/${small}`,
    '',
    ratio((f) => f.admitUs),
    ratio((f) => f.positionUs),
    '',
    ratio((f) => f.releaseHeadUs),
    ratio((f) => f.releaseMiddleUs),
  ]);
  printTable(['walks', 'admit all', 'µs/admit', 'µs/position', 'release all', 'µs/release (head)', 'µs/release (middle)'], rows);
}

type Call = (method: string, params: Record<string, unknown>) => Promise<unknown>;

function callsOf(node: StorageNode): Call {
  const table = createMethodTable(node);
  return async (method, params) => table[method]!.handler(table[method]!.params.parse(params), noConnection);
}

/** A position saved before any cluster was read: `reason` null is a walk running at a crash. */
function savedAt(reason: string | null, nowMs: number): SavedChecksumProgress {
  return {
    runId: 1, mode: 'whole', clustersTotal: 1, clustersDone: 0, bytesDone: 0, nextClusterIndex: 0, runningCrc: 0n,
    rangeCrcs: new Map(), startedAtMs: nowMs - 1000, activeMs: 0, resumedAtMs: nowMs - 1000, finishedAtMs: reason === null ? null : nowMs, reason, error: null,
  };
}

/** Snapshots s0..s(count-1), each owning one cluster, from 16 callers; their ids. */
async function fillStore(node: StorageNode, count: number): Promise<string[]> {
  const ids: string[] = new Array<string>(count);
  const cluster = Buffer.alloc(restartClusterBytes, 0x5a);
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let index = next++; index < count; index = next++) {
        await node.createLvol({ selector: { lvs_name: 'lvs' }, name: `v${index}`, sizeMib: 1, thin: true });
        await node.bdev(`lvs/v${index}`).write(0, cluster);
        ids[index] = await node.snapshot(`lvs/v${index}`, `s${index}`, {});
      }
    }),
  );
  return ids;
}

async function saveAll(node: StorageNode, ids: readonly string[], reason: string | null): Promise<void> {
  const entry = [...node.registry.lvstores.values()][0]!;
  const nowMs = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let index = next++; index < ids.length; index = next++) await entry.store.saveChecksumProgress(ids[index]!, savedAt(reason, nowMs));
    }),
  );
}

interface RestartFigures {
  answerMs: number;
  allQueuedMs: number;
  allStartedMs: number;
  stallMs: number;
  /** The longest gap between two turns in which walks went back in line, and how many such turns there were. */
  requeueStallMs: number;
  requeueTurns: number;
  delayP99Ms: number;
  delayMaxMs: number;
  queued: number;
}

/** Loads the lvstore on `path` into a fresh node; times it to its answer and to every interrupted walk queued. */
async function measureRestart(path: string, expected: number): Promise<{ node: StorageNode; figures: RestartFigures }> {
  collect();
  // One slot and a crawl of a rate: the walk admitted first waits on its pacing, the rest wait in line.
  const node = new StorageNode(systemRuntime, { backgroundOptions: { max_concurrent_checksums: 1, checksum_rate_mib_per_sec: 0.001 } });
  const call = callsOf(node);
  const queued = () => {
    const stats = node.scheduler.stats();
    return stats.admissions + stats.queued;
  };
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  const start = performance.now();
  // A chain of setImmediate turns: the gap before each, and whether walks went back in line during it.
  let stallMs = 0;
  let requeueStallMs = 0;
  let requeueTurns = 0;
  let last = performance.now();
  let lastQueued = 0;
  let watching = true;
  // LVNODE_BENCH_SCHEDULER_VERBOSE: every gap over 10 ms and every GC pause over 5 ms, to tell them apart.
  const verbose = process.env.LVNODE_BENCH_SCHEDULER_VERBOSE !== undefined;
  const gcs = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if (entry.duration > 5) console.log(`    gc ${fixed(entry.duration, 1)} ms at ${fixed(entry.startTime - start, 0)} ms`);
  });
  if (verbose) gcs.observe({ entryTypes: ['gc'] });
  const tick = (): void => {
    const now = performance.now();
    const nowQueued = queued();
    stallMs = Math.max(stallMs, now - last);
    if (nowQueued !== lastQueued) {
      requeueStallMs = Math.max(requeueStallMs, now - last);
      requeueTurns++;
    }
    if (verbose && now - last > 10) console.log(`    gap ${fixed(now - last, 1)} ms ending at ${fixed(now - start, 0)} ms: walks back ${lastQueued} -> ${nowQueued}`);
    last = now;
    lastQueued = nowQueued;
    if (watching) setImmediate(tick);
  };
  histogram.enable();
  setImmediate(tick);
  await call('bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  const answerMs = performance.now() - start;
  while (queued() < expected && performance.now() - start < 120_000) await new Promise((resolve) => setImmediate(resolve));
  const allQueuedMs = performance.now() - start;
  // The window ends when every lvol actor has started too (they start in slices after the answer).
  await node.actorStarter.idle();
  const allStartedMs = performance.now() - start;
  watching = false;
  gcs.disconnect();
  histogram.disable();
  stallMs = Math.max(stallMs, performance.now() - last);
  return {
    node,
    figures: {
      answerMs,
      allQueuedMs,
      allStartedMs,
      stallMs,
      requeueStallMs,
      requeueTurns,
      delayP99Ms: histogram.percentile(99) / 1e6,
      delayMaxMs: histogram.max / 1e6,
      queued: queued(),
    },
  };
}

async function restartBenchmark(walks: number): Promise<void> {
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'lvnode-scheduler-'));
  const path = join(dir, 'disk.img');
  try {
    await FileDevice.createSparse(path, 16 * 1024 ** 3);
    let node = new StorageNode(systemRuntime);
    let call = callsOf(node);
    await call('bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
    await call('bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: restartClusterBytes });
    const fillStart = performance.now();
    const ids = await fillStore(node, walks);
    await saveAll(node, ids, 'stopped');
    console.log(`\n-- a restart with ${walks} interrupted walks (${walks} snapshots of one 4 KiB cluster; filled in ${fixed((performance.now() - fillStart) / 1000, 1)} s) --`);
    await node.shutdown();
    const rows: string[][] = [];
    const row = (what: string, figures: RestartFigures) => [
      what,
      fixed(figures.answerMs, 0),
      fixed(figures.allQueuedMs, 0),
      String(figures.queued),
      fixed(figures.allStartedMs, 0),
      fixed(figures.stallMs, 1),
      `${fixed(figures.requeueStallMs, 1)} (${figures.requeueTurns})`,
      fixed(figures.delayP99Ms, 1),
      fixed(figures.delayMaxMs, 1),
    ];
    // The load alone: every walk was stopped by a user, so none re-queues.
    let measured = await measureRestart(path, 0);
    rows.push(row('walks stopped (none re-queue)', measured.figures));
    node = measured.node;
    call = callsOf(node);
    await saveAll(node, ids, null);
    await node.shutdown();
    measured = await measureRestart(path, walks);
    rows.push(row(`walks interrupted (${walks} re-queue)`, measured.figures));
    await measured.node.shutdown();
    printTable(['restart', 'answer ms', 'all queued ms', 'queued', 'all actors ms', 'longest stall ms', 're-queue: longest stall ms (turns)', 'delay p99 ms', 'delay max ms'], rows);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function schedulerScale(): Promise<void> {
  const runs = envInteger('LVNODE_BENCH_SCHEDULER_RUNS', 5);
  const walks = envInteger('LVNODE_BENCH_SCHEDULER_WALKS', 16_000);
  const queueSizes = (process.env.LVNODE_BENCH_SCHEDULER_SIZES ?? '1000,16000').split(',').map(Number);
  console.log(`\n== schedulerScale: admission, position and release per walk at ${queueSizes.join(' / ')} waiting walks; a restart re-queueing ${walks} ==`);
  queueBenchmark(queueSizes, runs);
  await restartBenchmark(walks);
}
