// The NBD data path against qemu-nbd (C) in the same run: sequential MB/s of a ~1 GiB lvol through
// nbdcopy both ways, 4 KiB IOPS through `qemu-img bench` at queue depth 1 and 16, and the
// sequential read while two snapshot checksums run on the same bdev, against the idle read.
//
// The node runs in its own process (childNode.ts) on a pre-filled file bdev; qemu-nbd serves a
// plain file of the same size from the same file system. Figures are medians of several runs with
// their spread (min–max), and ratios of medians; nothing is asserted.
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { RpcClient } from '../src/cli/rpcClient.ts';
import { mibBytes } from '../src/constants.ts';
import { spawnBenchNode } from './childNode.ts';
import { benchClusterBytes, envInteger, fixed, median, printTable, sleepMs, writePatternFile } from './support.ts';

const tools = ['nbdcopy', 'nbdinfo', 'qemu-img', 'qemu-nbd'];

function run(tool: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { maxBuffer: 16 * mibBytes }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${tool} ${args.join(' ')} failed: ${stderr || error.message}`));
      else resolve(stdout);
    });
  });
}

async function timedRun(tool: string, args: readonly string[]): Promise<number> {
  const startMs = performance.now();
  await run(tool, args);
  return performance.now() - startMs;
}

function unixUri(exportName: string, socketPath: string): string {
  return `nbd+unix:///${exportName}?socket=${encodeURIComponent(socketPath)}`;
}

/** qemu-img bench at QD16 against qemu-nbd over TCP, to say why the comparison uses Unix sockets. */
async function qemuNbdTcpQd16(file: string): Promise<number> {
  const port = await new Promise<number>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = probe.address();
      probe.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
  const child = spawn('qemu-nbd', ['-f', 'raw', '-x', 'bench', '-b', '127.0.0.1', '-p', String(port), '-e', '8', '-t', file], { stdio: 'ignore' });
  try {
    const uri = `nbd://127.0.0.1:${port}/bench`;
    for (let attempt = 0; ; attempt++) {
      try {
        await run('nbdinfo', ['--size', uri]);
        break;
      } catch (error) {
        if (attempt > 200) throw error;
        await sleepMs(25);
      }
    }
    return await qemuImgBench(uri, 16, false, 500);
  } finally {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
}

async function startQemuNbd(file: string, socketPath: string): Promise<{ uri: string; child: ChildProcess }> {
  // -e 8: several clients at once, so qemu-nbd advertises multi-conn as lvnode does and nbdcopy
  // opens the same number of connections to both.
  const child = spawn('qemu-nbd', ['-f', 'raw', '-x', 'bench', '-k', socketPath, '-e', '8', '-t', file], { stdio: 'ignore' });
  const uri = unixUri('bench', socketPath);
  for (let attempt = 0; ; attempt++) {
    try {
      await run('nbdinfo', ['--size', uri]);
      return { uri, child };
    } catch (error) {
      if (attempt > 200) throw error;
      await sleepMs(25);
    }
  }
}

async function randomFile(path: string, bytes: number): Promise<void> {
  const handle = await open(path, 'w');
  const chunk = Buffer.allocUnsafe(16 * mibBytes);
  try {
    for (let done = 0; done < bytes; done += chunk.length) {
      randomFillSync(chunk);
      await handle.write(chunk, 0, Math.min(chunk.length, bytes - done), done);
    }
  } finally {
    await handle.close();
  }
}

/** IOPS from `qemu-img bench` ("Run completed in X seconds."), `count` requests of 4 KiB. */
async function qemuImgBench(uri: string, depth: number, write: boolean, count: number): Promise<number> {
  const out = await run('qemu-img', ['bench', '-f', 'raw', '-c', String(count), '-d', String(depth), '-s', '4096', ...(write ? ['-w'] : []), uri]);
  const match = /Run completed in ([\d.]+) seconds/.exec(out);
  if (!match) throw new Error(`unexpected qemu-img bench output: ${out}`);
  return count / Number(match[1]);
}

/** Keeps a checksum running on every snapshot until `stop` (re-registering as each ends). */
function keepWalking(client: RpcClient, snapshots: readonly string[]): { stop(): Promise<void> } {
  let running = true;
  const loops = snapshots.map(async (name) => {
    while (running) await client.call('bdev_lvol_register_snapshot_checksum', { name }).catch(() => undefined);
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(snapshots.map((name) => client.call('bdev_lvol_stop_snapshot_checksum', { name }).catch(() => undefined)));
      await Promise.all(loops);
    },
  };
}

interface Sample {
  lvnode: number[];
  qemu: number[];
}

const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);
const spread = (values: readonly number[], digits: number) => `${fixed(Math.min(...values), digits)}–${fixed(Math.max(...values), digits)}`;

function row(label: string, sample: Sample, digits: number, goal: string): string[] {
  const ratio = median(sample.lvnode) / median(sample.qemu);
  return [label, fixed(median(sample.lvnode), digits), spread(sample.lvnode, digits), fixed(median(sample.qemu), digits), spread(sample.qemu, digits), `${fixed(ratio, 2)}x`, goal];
}

/**
 * What zeroing at allocation costs (issue 19): a thick create zeroes its clusters before the
 * commit that hands them over, and a first write to a thin cluster zeroes the rest of it. Thick
 * creates of 128 MiB (32 clusters), timed over the wire; 4 KiB writes one cluster apart to a thin
 * lvol, first writes (each allocates and zeroes a cluster) against overwrites of the same blocks.
 */
async function allocationCosts(client: RpcClient, lvsName: string, socketPath: string, runs: number): Promise<void> {
  const createMs: number[] = [];
  for (let index = 0; index < Math.max(5, runs * 3); index++) {
    const startMs = performance.now();
    await client.call('bdev_lvol_create', { lvs_name: lvsName, lvol_name: `thick${index}`, size_in_mib: 128, thin_provision: false });
    createMs.push(performance.now() - startMs);
    await client.call('bdev_lvol_delete', { name: `${lvsName}/thick${index}` });
  }
  const clusters = 64;
  const first: number[] = [];
  const again: number[] = [];
  for (let index = 0; index < runs; index++) {
    const name = `thin${index}`;
    await client.call('bdev_lvol_create', { lvs_name: lvsName, lvol_name: name, size_in_mib: (clusters * benchClusterBytes) / mibBytes, thin_provision: true });
    await client.call('nbd_start_export', { bdev_name: `${lvsName}/${name}`, export_name: name });
    const uri = unixUri(name, socketPath);
    const args = ['bench', '-f', 'raw', '-c', String(clusters), '-d', '1', '-s', '4096', '-S', String(benchClusterBytes), '-w', uri];
    first.push(await completedRate(args, clusters));
    again.push(await completedRate(args, clusters));
    await client.call('nbd_stop_export', { export_name: name });
    await client.call('bdev_lvol_delete', { name: `${lvsName}/${name}` });
  }
  console.log('  allocation: what zeroing new clusters costs (4 MiB clusters)');
  printTable(
    ['', 'median', 'spread', 'baseline', 'spread', 'ratio'],
    [
      ['thick create 128 MiB, ms', fixed(median(createMs), 1), spread(createMs, 1), '', '', ''],
      [`first write to a thin cluster, writes/s (vs overwrite)`, fixed(median(first), 0), spread(first, 0), fixed(median(again), 0), spread(again, 0), `${fixed(median(first) / median(again), 2)}x`],
    ],
  );
}

/** Requests per second from a `qemu-img bench` run's own timing ("Run completed in X seconds"). */
async function completedRate(args: readonly string[], count: number): Promise<number> {
  const out = await run('qemu-img', args);
  const match = /Run completed in ([\d.]+) seconds/.exec(out);
  if (!match) throw new Error(`unexpected qemu-img bench output: ${out}`);
  return count / Number(match[1]);
}

export async function nbdBenchmark(): Promise<void> {
  console.log('\nnbd: lvnode NBD export vs qemu-nbd on a plain file (same run)');
  const missing = tools.filter((tool) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).error !== undefined);
  if (missing.length > 0) {
    console.log(`  skipped: ${missing.join(', ')} not installed (apt-get install qemu-utils libnbd-bin)`);
    return;
  }
  const runs = envInteger('LVNODE_BENCH_NBD_RUNS', 3);
  const lvolMib = envInteger('LVNODE_BENCH_NBD_MIB', 1024);
  const smallCount = envInteger('LVNODE_BENCH_NBD_IOS', 20_000);
  // Three equal thick lvols: one exported, two snapshotted for the checksum walks; the metadata
  // area takes about 1/64 of the file.
  // Plus room for the allocation figures: a 128 MiB thick lvol and 64 first-written thin clusters.
  const spareClusters = 32 + 64 + 2;
  const sizeMib = Math.ceil((3 * lvolMib * 65) / 64 / (benchClusterBytes / mibBytes) + 2 + spareClusters) * (benchClusterBytes / mibBytes);
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bench-nbd-'));
  const bench = await spawnBenchNode({ sizeMib, lvolCount: 3, spareClusters, nbdListen: join(dir, 'lvnode.sock') });
  let qemu: ChildProcess | undefined;
  try {
    const client = bench.client;
    const lvolBytes = bench.lvolBytes;
    await client.call('nbd_start_export', { bdev_name: bench.lvolNames[0]!, export_name: 'bench' });
    const lvnodeUri = unixUri('bench', bench.nbdAddress!);
    const plainFile = join(dir, 'plain.raw');
    await writePatternFile(plainFile, lvolBytes / mibBytes, benchClusterBytes);
    const sourceFile = join(dir, 'source.raw');
    await randomFile(sourceFile, lvolBytes);
    const started = await startQemuNbd(plainFile, join(dir, 'qemu.sock'));
    qemu = started.child;
    const qemuUri = started.uri;
    console.log(`  ${fixed(lvolBytes / mibBytes, 0)} MiB per copy, ${runs} runs (median, min–max); nbdcopy with its defaults (multi-conn), writes with --flush`);
    // qemu-nbd 7.2 (Debian 12) over loopback TCP falls to a few hundred IOPS at queue depth > 1
    // here, which would flatter lvnode: both servers are measured on Unix sockets.
    console.log(`  both servers on Unix sockets; for reference qemu-nbd over TCP: ${fixed(await qemuNbdTcpQd16(plainFile), 0)} IOPS at 4 KiB QD16`);

    const seqWrite: Sample = { lvnode: [], qemu: [] };
    const seqRead: Sample = { lvnode: [], qemu: [] };
    const small: Record<string, Sample> = {};
    const smallCases = [
      { label: '4 KiB read  QD1', depth: 1, write: false },
      { label: '4 KiB read  QD16', depth: 16, write: false },
      { label: '4 KiB write QD1', depth: 1, write: true },
      { label: '4 KiB write QD16', depth: 16, write: true },
    ];
    for (const { label } of smallCases) small[label] = { lvnode: [], qemu: [] };
    // Warm-up: page cache of both files, and the lvnode process's JIT.
    await run('nbdcopy', [lvnodeUri, 'null:']);
    await run('nbdcopy', [qemuUri, 'null:']);
    for (let index = 0; index < runs; index++) {
      seqWrite.lvnode.push(mbps(lvolBytes, await timedRun('nbdcopy', ['--flush', sourceFile, lvnodeUri])));
      seqWrite.qemu.push(mbps(lvolBytes, await timedRun('nbdcopy', ['--flush', sourceFile, qemuUri])));
      seqRead.lvnode.push(mbps(lvolBytes, await timedRun('nbdcopy', [lvnodeUri, 'null:'])));
      seqRead.qemu.push(mbps(lvolBytes, await timedRun('nbdcopy', [qemuUri, 'null:'])));
      for (const { label, depth, write } of smallCases) {
        small[label]!.lvnode.push(await qemuImgBench(lvnodeUri, depth, write, smallCount));
        small[label]!.qemu.push(await qemuImgBench(qemuUri, depth, write, smallCount));
      }
    }
    printTable(
      ['', 'lvnode', 'spread', 'qemu-nbd', 'spread', 'ratio', 'goal'],
      [
        row('seq write MB/s', seqWrite, 0, '≥0.8x'),
        row('seq read  MB/s', seqRead, 0, '≥0.8x'),
        ...smallCases.map(({ label }) => row(`${label} IOPS`, small[label]!, 0, '≥0.7x')),
      ],
    );
    console.log('  (qemu-img bench prints no latency; p50 at QD1 ≈ 1/IOPS)');

    // Foreground first: the same read while checksums walk two 1 GiB snapshots of the same bdev.
    const snapshots: string[] = [];
    for (const [index, lvolName] of bench.lvolNames.slice(1).entries()) {
      await client.call('bdev_lvol_snapshot', { lvol_name: lvolName, snapshot_name: `walk${index}` });
      snapshots.push(`${bench.lvsName}/walk${index}`);
    }
    const idle: number[] = [];
    const loaded: number[] = [];
    for (let index = 0; index < runs; index++) {
      idle.push(mbps(lvolBytes, await timedRun('nbdcopy', [lvnodeUri, 'null:'])));
      const walks = keepWalking(client, snapshots);
      await sleepMs(100);
      loaded.push(mbps(lvolBytes, await timedRun('nbdcopy', [lvnodeUri, 'null:'])));
      await walks.stop();
    }
    const stats = await client.call<{ background: { bytes_total: number } }>('node_get_stats', {});
    printTable(
      ['', 'idle', 'spread', '2 checksums', 'spread', 'ratio', 'goal'],
      [['seq read MB/s', fixed(median(idle), 0), spread(idle, 0), fixed(median(loaded), 0), spread(loaded, 0), `${fixed(median(loaded) / median(idle), 2)}x`, '≥0.8']],
    );
    console.log(`  checksum bytes read meanwhile: ${fixed(stats.background.bytes_total / mibBytes, 0)} MiB`);
    await allocationCosts(client, bench.lvsName, bench.nbdAddress!, runs);
  } finally {
    if (qemu && qemu.exitCode === null) {
      const exited = new Promise((resolve) => qemu!.once('exit', resolve));
      qemu.kill('SIGTERM');
      await exited;
    }
    await bench.close();
    await rm(dir, { recursive: true, force: true });
  }
}
