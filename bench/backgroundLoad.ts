// Background work under load: foreground RPC throughput and latency with checksums running, the
// wait of a priority delete among 8 running walks, and aggregate checksum MB/s beside the cap.
//
// The node runs in its own process; the 16 clients run in this one, as a real client fleet would.
// Every figure is printed beside a baseline measured in the same run (never asserted).
import type { RpcClient } from '../src/cli/rpcClient.ts';
import { type ChildBench, spawnBenchNode } from './childNode.ts';
import { bytesPerMsToMBps, envInteger, fixed, median, printTable, quantile, sleepMs, timed } from './support.ts';

const walkers = 8;
const clientCount = 16;

interface Stats {
  event_loop_utilization: number;
  event_loop_delay_ms: { p50: number; p99: number; max: number };
  background: { bytes_total: number; running: number; queued: number };
}

/** A node with `walkers` snapshots for background walks plus one lvol (and its snapshot) for the probe. */
async function loadNode(sizeMib: number): Promise<{ bench: ChildBench; snapshots: string[]; victimLvol: string }> {
  const bench = await spawnBenchNode({ sizeMib, lvolCount: walkers + 1 });
  const snapshots: string[] = [];
  for (let index = 0; index < walkers; index++) {
    await bench.client.call('bdev_lvol_snapshot', { lvol_name: bench.lvolNames[index]!, snapshot_name: `walk${index}` });
    snapshots.push(`${bench.lvsName}/walk${index}`);
  }
  return { bench, snapshots, victimLvol: bench.lvolNames[walkers]! };
}

/** Keeps a checksum running on every snapshot until `stop` is called (re-registering as each ends). */
function keepWalking(client: RpcClient, snapshots: readonly string[]): { stop(): Promise<void>; completed: () => number } {
  let running = true;
  let completed = 0;
  const loops = snapshots.map(async (name) => {
    while (running) {
      try {
        await client.call('bdev_lvol_register_snapshot_checksum', { name });
        completed++;
      } catch {
        // Stopped by `stop` below: the loop ends.
      }
    }
  });
  return {
    completed: () => completed,
    stop: async () => {
      running = false;
      await Promise.all(snapshots.map((name) => client.call('bdev_lvol_stop_snapshot_checksum', { name }).catch(() => undefined)));
      await Promise.all(loops);
    },
  };
}

/** `clientCount` closed-loop clients sending bdev_get_bdevs {name} for `seconds`; every latency in ms. */
export async function hammer(clients: RpcClient[], name: string, seconds: number): Promise<number[]> {
  const latencies: number[] = [];
  const endMs = performance.now() + seconds * 1000;
  await Promise.all(
    clients.map(async (client) => {
      while (performance.now() < endMs) {
        const startMs = performance.now();
        await client.call('bdev_get_bdevs', { name });
        latencies.push(performance.now() - startMs);
      }
    }),
  );
  return latencies;
}

interface Phase {
  loaded: boolean;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  loopP99Ms: number;
  loopUtilization: number;
  backgroundMBps: number;
}

export async function foregroundUnderLoad(): Promise<void> {
  const seconds = envInteger('BENCH_LOAD_SECONDS', 10);
  const repetitions = envInteger('BENCH_LOAD_REPETITIONS', 2);
  const sizeMib = envInteger('BENCH_LOAD_SIZE_MIB', 1024);
  console.log(`\n== foreground under load: ${clientCount} clients × bdev_get_bdevs {name} for ${seconds} s, idle vs ${walkers} checksums running ==`);
  const { bench, snapshots } = await loadNode(sizeMib);
  try {
    await bench.client.call('node_set_background_options', { max_concurrent_checksums: walkers });
    const clients = await Promise.all(Array.from({ length: clientCount }, () => bench.connect()));
    const probeName = bench.lvolNames[walkers]!;
    await hammer(clients, probeName, 1); // warm-up, untimed
    const phases: Phase[] = [];
    for (let repetition = 0; repetition < repetitions; repetition++) {
      for (const loaded of [false, true]) {
        const walking = loaded ? keepWalking(bench.client, snapshots) : undefined;
        if (walking) await sleepMs(300); // let every walk get going
        const before = await bench.client.call<Stats>('node_get_stats', { reset: true });
        const { ms, value: latencies } = await timed(() => hammer(clients, probeName, seconds));
        const after = await bench.client.call<Stats>('node_get_stats', {});
        await walking?.stop();
        phases.push({
          loaded,
          requestsPerSec: (latencies.length * 1000) / ms,
          p50Ms: quantile(latencies, 0.5),
          p99Ms: quantile(latencies, 0.99),
          loopP99Ms: after.event_loop_delay_ms.p99,
          loopUtilization: after.event_loop_utilization,
          backgroundMBps: bytesPerMsToMBps(after.background.bytes_total - before.background.bytes_total, ms),
        });
      }
    }
    const rows = phases.map((phase, index) => [
      `${phase.loaded ? `loaded (${walkers} walks)` : 'idle'} #${Math.floor(index / 2) + 1}`,
      fixed(phase.requestsPerSec, 0),
      fixed(phase.p50Ms, 3),
      fixed(phase.p99Ms, 3),
      fixed(phase.loopP99Ms, 3),
      fixed(phase.loopUtilization, 2),
      fixed(phase.backgroundMBps, 0),
    ]);
    printTable(['phase', 'req/s', 'p50 ms', 'p99 ms', 'loop p99 ms', 'loop busy', 'checksum MB/s'], rows);
    const pick = (loaded: boolean, key: keyof Phase) => median(phases.filter((phase) => phase.loaded === loaded).map((phase) => phase[key] as number));
    const throughputRatio = pick(true, 'requestsPerSec') / pick(false, 'requestsPerSec');
    const p99Ratio = pick(true, 'p99Ms') / pick(false, 'p99Ms');
    console.log(
      `  loaded/idle throughput ${fixed(throughputRatio, 3)} (goal ≥ 0.8: ${throughputRatio >= 0.8 ? 'met' : 'missed'}); ` +
        `p99 loaded/idle ${fixed(p99Ratio, 2)} (goal ≤ 2: ${p99Ratio <= 2 ? 'met' : 'missed'}), p99 loaded ${fixed(pick(true, 'p99Ms'), 2)} ms (goal ≤ 5); ` +
        `event-loop p99 loaded ${fixed(pick(true, 'loopP99Ms'), 3)} ms (goal ≤ 5)`,
    );
  } finally {
    await bench.close();
  }
}

export async function preemptionUnderLoad(): Promise<void> {
  const runs = envInteger('BENCH_PREEMPT_RUNS', 60);
  const sizeMib = envInteger('BENCH_LOAD_SIZE_MIB', 1024);
  console.log(`\n== preemption under load: bdev_lvol_delete of a computing snapshot while ${walkers} other walks run (${runs} runs) ==`);
  const { bench, snapshots, victimLvol } = await loadNode(sizeMib);
  try {
    await bench.client.call('node_set_background_options', { max_concurrent_checksums: walkers + 1 });
    const second = await bench.connect();
    const victim = `${bench.lvsName}/victim`;
    // One cluster step alone: full registrations with nothing else running, divided by the clusters.
    await bench.client.call('bdev_lvol_snapshot', { lvol_name: victimLvol, snapshot_name: 'victim' });
    const clusters = bench.lvolBytes / bench.clusterBytes;
    await bench.client.call('bdev_lvol_register_snapshot_checksum', { name: victim }); // warm
    const alone: number[] = [];
    for (let run = 0; run < 3; run++) alone.push((await timed(() => bench.client.call('bdev_lvol_register_snapshot_checksum', { name: victim }))).ms / clusters);
    const stepMs = median(alone);
    await second.call('bdev_lvol_delete', { name: victim });

    const walking = keepWalking(bench.client, snapshots);
    const deletes: number[] = [];
    const idleDeletes: number[] = [];
    let preempted = 0;
    try {
      await sleepMs(300);
      for (let run = 0; run < runs; run++) {
        // The same delete with no checksum on the victim (the other 8 still walk): the baseline.
        await bench.client.call('bdev_lvol_snapshot', { lvol_name: victimLvol, snapshot_name: 'victim' });
        idleDeletes.push((await timed(() => second.call('bdev_lvol_delete', { name: victim }))).ms);
        await bench.client.call('bdev_lvol_snapshot', { lvol_name: victimLvol, snapshot_name: 'victim' });
        const outcome = bench.client.call('bdev_lvol_register_snapshot_checksum', { name: victim }).then(
          () => 'done',
          (error: Error) => (/interrupted/i.test(error.message) ? 'preempted' : 'error'),
        );
        for (;;) {
          const status = await second.call<{ state: string; clusters_done: number }>('bdev_lvol_get_checksum_status', { name: victim });
          if ((status.state === 'computing' && status.clusters_done >= 1) || !['idle', 'queued', 'computing'].includes(status.state)) break;
        }
        await sleepMs(Math.random() * stepMs);
        const { ms } = await timed(() => second.call('bdev_lvol_delete', { name: victim }));
        if ((await outcome) === 'preempted') {
          preempted++;
          deletes.push(ms);
        }
      }
    } finally {
      await walking.stop();
    }
    const row = (label: string, values: number[]) =>
      values.length === 0 ? [label, '0', '-', '-', '-'] : [label, String(values.length), fixed(median(values), 2), fixed(quantile(values, 0.99), 2), fixed(Math.max(...values), 2)];
    printTable(
      ['measure', 'n', 'median ms', 'p99 ms', 'max ms'],
      [
        row('delete, victim not walking (8 others walk)', idleDeletes),
        row('delete, preempting the victim’s walk', deletes),
        ['one cluster step, measured alone', String(clusters), fixed(stepMs, 2), '-', '-'],
      ],
    );
    if (deletes.length > 0) {
      const p99 = quantile(deletes, 0.99);
      console.log(`  ${preempted}/${runs} deletes preempted a walk; p99 ${fixed(p99, 2)} ms vs goal step + 10 ms = ${fixed(stepMs + 10, 2)} ms: ${p99 <= stepMs + 10 ? 'met' : 'missed'}`);
    }
  } finally {
    await bench.close();
  }
}

export async function aggregateThroughput(): Promise<void> {
  const sizeMib = envInteger('BENCH_LOAD_SIZE_MIB', 1024);
  console.log(`\n== aggregate checksum MB/s with 1, 2 and ${walkers} concurrent walks, beside the scheduler's cap ==`);
  const { bench, snapshots } = await loadNode(sizeMib);
  try {
    const defaults = await bench.client.call<{ max_concurrent_checksums: number }>('node_get_background_options', {});
    for (const name of snapshots) await bench.client.call('bdev_lvol_register_snapshot_checksum', { name }); // warm
    const rows: string[][] = [];
    for (const cap of [defaults.max_concurrent_checksums, walkers]) {
      await bench.client.call('node_set_background_options', { max_concurrent_checksums: cap });
      for (const count of [1, 2, walkers]) {
        const runs: number[] = [];
        for (let repetition = 0; repetition < 3; repetition++) {
          const { ms } = await timed(() =>
            Promise.all(snapshots.slice(0, count).map((name) => bench.client.call('bdev_lvol_register_snapshot_checksum', { name }))),
          );
          runs.push(bytesPerMsToMBps(count * bench.lvolBytes, ms));
        }
        rows.push([`${count} walk${count > 1 ? 's' : ''}, cap ${cap}${cap === defaults.max_concurrent_checksums ? ' (default)' : ''}`, fixed(median(runs), 0), runs.map((value) => fixed(value, 0)).join(' ')]);
      }
    }
    printTable(['walks', 'median MB/s', 'runs MB/s'], rows);
  } finally {
    await bench.close();
  }
}
