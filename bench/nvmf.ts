// NVMe/TCP: lvnode's target against spdk_tgt in the same run, both serving the same file as an aio
// bdev and both driven by spdk_nvme_perf --no-huge: IOPS, MB/s, p50/p99 latency and the target's
// CPU-seconds per GB moved (from /proc: spdk_tgt polls a whole core even idle, and that counts),
// plus each target's idle CPU. Both targets are pinned to CPU 0 (spdk_tgt -m 0x1, lvnode taskset),
// the initiator to CPU 1. Then the same on a malloc bdev each (the transport without the file
// path), and lvnode's NVMe/TCP against its own NBD on the same file bdev (qemu-img bench: the only
// NBD load generator here, so the tools differ and the figure is indicative).
// Medians of several runs; nothing is asserted.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { mibBytes } from '../src/constants.ts';
import { SpdkSocketClient } from '../test/spdkSocketClient.ts';
import { envInteger, fixed, median, printTable, sleepMs, writePatternFile } from './support.ts';

const spdkRun = resolve(process.env.LVNODE_SPDK_TOOLS_DIR ?? resolve(import.meta.dirname, '../../shared/tools/spdk'), 'run');
const nqn = 'nqn.2016-06.io.spdk:bench';
const clockTicksPerSec = 100;

interface PerfFigures {
  iops: number;
  mibPerSec: number;
  p50Us: number;
  p99Us: number;
}

interface Workload {
  readonly name: string;
  readonly args: readonly string[];
}

const allWorkloads: Workload[] = [
  { name: '128K seq read QD32', args: ['-q', '32', '-o', '131072', '-w', 'read'] },
  { name: '128K seq write QD32', args: ['-q', '32', '-o', '131072', '-w', 'write'] },
  { name: '4K rand read QD32', args: ['-q', '32', '-o', '4096', '-w', 'randread'] },
  { name: '4K rand write QD32', args: ['-q', '32', '-o', '4096', '-w', 'randwrite'] },
];
// LVNODE_BENCH_NVMF_WORKLOADS=4K (a substring of the names, comma-separated) runs only those.
const workloadFilter = (process.env.LVNODE_BENCH_NVMF_WORKLOADS ?? '').split(',').filter((part) => part !== '');
const workloads = workloadFilter.length === 0 ? allWorkloads : allWorkloads.filter((workload) => workloadFilter.some((part) => workload.name.includes(part)));

/** utime + stime of a process (all its threads), in seconds. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSec;
}

function runPerf(port: number, workload: Workload, seconds: number): Promise<PerfFigures> {
  const args = ['spdk_nvme_perf', '--no-huge', '-s', '512', '-c', '0x2', ...workload.args, '-t', String(seconds), '-L', '-r', `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:${port} subnqn:${nqn}`];
  return new Promise((resolvePerf, reject) => {
    execFile(spdkRun, args, { maxBuffer: 16 * mibBytes }, (error, stdout, stderr) => {
      const total = /Total\s*:\s*([\d.]+)\s+([\d.]+)/.exec(stdout);
      if (error || !total) return reject(new Error(`spdk_nvme_perf failed: ${stderr || stdout || error?.message}`));
      const percentile = (label: string) => Number(new RegExp(`${label}%\\s*:\\s*([\\d.]+)us`).exec(stdout)?.[1] ?? Number.NaN);
      resolvePerf({ iops: Number(total[1]), mibPerSec: Number(total[2]), p50Us: percentile('50\\.00000'), p99Us: percentile('99\\.00000') });
    });
  });
}

interface Target {
  readonly name: string;
  readonly pid: number;
  readonly port: number;
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolvePort) => {
    const server = createServer().listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** What backs the namespace: the file as an aio bdev, or RAM (a malloc bdev: the transport alone). */
type Backing = 'aio' | 'malloc';

/** The SPDK calls that expose the bench bdev (`aio0`) over NVMe/TCP, the same for both targets. */
async function expose(call: (method: string, params: unknown) => Promise<unknown>, backing: Backing, file: string, port: number): Promise<void> {
  if (backing === 'aio') await call('bdev_aio_create', { name: 'aio0', filename: file, block_size: 512 });
  else await call('bdev_malloc_create', { name: 'aio0', num_blocks: 128 * 2048, block_size: 512 });
  await call('nvmf_create_transport', { trtype: 'TCP' });
  await call('nvmf_create_subsystem', { nqn, allow_any_host: true });
  await call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'aio0' } });
  await call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(port) } });
}

async function waitForSocket(path: string, child: ChildProcess): Promise<SpdkSocketClient> {
  for (let attempt = 0; attempt < 200; attempt++) {
    if (child.exitCode !== null) throw new Error('spdk_tgt exited');
    try {
      return await SpdkSocketClient.connect(path);
    } catch {
      await sleepMs(100);
    }
  }
  throw new Error(`spdk_tgt did not open ${path}`);
}

async function startSpdkTarget(dir: string, file: string, backing: Backing): Promise<Target> {
  const socketPath = join(dir, 'spdk.sock');
  const child = spawn(spdkRun, ['spdk_tgt', '--no-huge', '-s', '2048', '-m', '0x1', '--no-pci', '--disable-cpumask-locks', '-r', socketPath], { stdio: 'ignore' });
  const client = await waitForSocket(socketPath, child);
  const port = await freePort();
  await expose((method, params) => client.call(method, params), backing, file, port);
  await client.close();
  return {
    name: 'spdk_tgt',
    pid: child.pid!,
    port,
    close: async () => {
      const exited = new Promise((resolveExit) => child.once('exit', resolveExit));
      child.kill('SIGKILL');
      await exited;
      // spdk_tgt leaves a 3 MiB trace file in /dev/shm named after its pid (`run` execs it).
      await rm(`/dev/shm/spdk_tgt_trace.pid${child.pid}`, { force: true });
    },
  };
}

async function startLvnodeTarget(dir: string, file: string, backing: Backing): Promise<Target & { client: RpcClient; nbdSocket: string }> {
  // lvnode as it ships (the esbuild bundle compiles without keepNames): its TypeScript through the
  // bench's loader, not bin/lvnode.mjs, which runs tsx whenever build/js is missing or older than
  // src/ and then measures tsx's per-closure __name calls too.
  const loader = resolve(import.meta.dirname, 'loader.mjs');
  const entry = `import { main } from ${JSON.stringify(pathToFileURL(resolve(import.meta.dirname, '../src/cli/main.ts')).href)}; process.exitCode = await main(process.argv.slice(1));`;
  const nbdSocket = join(dir, `nbd-${backing}.sock`);
  // BENCH_NODE_FLAGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`) go to lvnode's node, as in childNode.ts.
  const nodeFlags = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter((flag) => flag !== '');
  const child = spawn('taskset', ['-c', '0', process.execPath, ...nodeFlags, '--import', loader, '--input-type=module', '-e', entry, 'serve', '--data-dir', join(dir, `lvnode-${backing}`), '--listen', '127.0.0.1:0', '--default-disk-size', '0', '--insecure-no-auth', '--nvmf-insecure-tcp', '--nbd-listen', nbdSocket], {
    env: { ...process.env, LVNODE_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolveUrl, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      const match = /lvnode serving JSON-RPC at (ws:\/\/\S+)/.exec(out);
      if (match) resolveUrl(match[1]!);
    });
    child.once('exit', (code) => reject(new Error(`lvnode exited (${code})`)));
  });
  const client = await RpcClient.connect(url, {});
  const fileIo = ((await client.call('node_get_stats', {})) as { file_io?: { path: string; reason: string; memory_files?: { inline: boolean } } }).file_io;
  const memoryFiles = fileIo?.memory_files ? `; files in memory (tmpfs) ${fileIo.memory_files.inline ? 'inline' : 'queued (LVNODE_MEMORY_FILE_IO=queued)'}` : '';
  if (backing === 'aio') console.log(`  lvnode's file I/O: ${fileIo ? `${fileIo.path} (${fileIo.reason})${memoryFiles}` : 'not reported'}`);
  const port = await freePort();
  await expose((method, params) => client.call(method, params as Record<string, unknown>), backing, file, port);
  await client.call('nbd_start_export', { bdev_name: 'aio0', export_name: 'aio0' });
  return {
    name: 'lvnode',
    // taskset execs node: the pid is lvnode's.
    pid: child.pid!,
    port,
    client,
    nbdSocket,
    close: async () => {
      await client.close();
      const exited = new Promise((resolveExit) => child.once('exit', resolveExit));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

interface Measured extends PerfFigures {
  cpuSecPerGb: number;
  /** The target's CPU over the whole spdk_nvme_perf run (its start-up included), in cores. */
  cores: number;
}

async function measure(target: Target, workload: Workload, seconds: number): Promise<Measured> {
  const before = cpuSeconds(target.pid);
  const startMs = performance.now();
  const figures = await runPerf(target.port, workload, seconds);
  const cpu = cpuSeconds(target.pid) - before;
  const gb = (figures.mibPerSec * mibBytes * seconds) / 1e9;
  return { ...figures, cpuSecPerGb: cpu / gb, cores: cpu / ((performance.now() - startMs) / 1000) };
}

async function idleCores(target: Target, seconds = 3): Promise<number> {
  const before = cpuSeconds(target.pid);
  await sleepMs(seconds * 1000);
  return (cpuSeconds(target.pid) - before) / seconds;
}

function medianOf(runs: Measured[], key: keyof Measured): number {
  return median(runs.map((run) => run[key]));
}

export async function nvmfBenchmark(): Promise<void> {
  console.log('\nnvmf: lvnode NVMe/TCP vs spdk_tgt --no-huge, spdk_nvme_perf --no-huge as the initiator');
  if (!existsSync(spdkRun)) {
    console.log(`  skipped: SPDK's programs are not at ${spdkRun}`);
    return;
  }
  const seconds = envInteger('LVNODE_BENCH_NVMF_SECONDS', 4);
  const runs = envInteger('LVNODE_BENCH_NVMF_RUNS', 3);
  const sizeMib = envInteger('LVNODE_BENCH_NVMF_MIB', 512);
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'lvnode-bench-nvmf-'));
  const file = join(dir, 'bench.img');
  try {
    await writePatternFile(file, sizeMib, 4 * mibBytes);
    console.log(`  both targets on CPU 0 (spdk_tgt -m 0x1, lvnode under taskset), spdk_nvme_perf on CPU 1; ${runs} runs x ${seconds} s per workload and target, medians`);
    // LVNODE_BENCH_NVMF_BACKINGS=malloc (or aio) runs one of the two comparisons.
    const backings = (process.env.LVNODE_BENCH_NVMF_BACKINGS ?? 'aio,malloc').split(',');
    if (backings.includes('aio')) {
      console.log(`\n  the same ${sizeMib} MiB file (in ${dir}: page cache for both) as an aio bdev`);
      await compare('aio', dir, file, seconds, runs);
    }
    if (backings.includes('malloc')) {
      console.log('\n  a 128 MiB malloc bdev on each (the transport alone, without the file path)');
      await compare('malloc', dir, file, seconds, runs);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Runs every workload against lvnode and spdk_tgt on `backing`. spdk_tgt polls its core even idle,
 * so it runs only while it is measured: lvnode (idle at almost nothing) runs throughout, spdk_tgt
 * is started for its runs of each round and killed.
 */
async function compare(backing: Backing, dir: string, file: string, seconds: number, runs: number): Promise<void> {
  const lvnode = await startLvnodeTarget(dir, file, backing);
  try {
    const idleLvnode = await idleCores(lvnode);
    const results = workloads.map(() => ({ lvnode: [] as Measured[], spdk: [] as Measured[] }));
    let idleSpdk = 0;
    for (let run = 0; run < runs; run++) {
      for (const [index, workload] of workloads.entries()) results[index]!.lvnode.push(await measure(lvnode, workload, seconds));
      const spdk = await startSpdkTarget(dir, file, backing);
      try {
        if (run === 0) idleSpdk = await idleCores(spdk);
        for (const [index, workload] of workloads.entries()) results[index]!.spdk.push(await measure(spdk, workload, seconds));
      } finally {
        await spdk.close();
      }
    }
    printTable(['workload', 'target', 'IOPS', 'MiB/s', 'p50 us', 'p99 us', 'CPU s/GB', 'cores'], workloads.flatMap((workload, index) => rows(workload, results[index]!)));
    console.log(`  idle CPU: lvnode ${fixed(idleLvnode, 3)} cores, spdk_tgt ${fixed(idleSpdk, 3)} cores`);
    if (backing === 'aio') await nbdAgainstNvmf(lvnode, seconds);
  } finally {
    await lvnode.close();
  }
}

function rows(workload: Workload, results: { lvnode: Measured[]; spdk: Measured[] }): string[][] {
  const line = (name: string, list: Measured[]) => [
    workload.name,
    name,
    fixed(medianOf(list, 'iops'), 0),
    fixed(medianOf(list, 'mibPerSec'), 1),
    fixed(medianOf(list, 'p50Us'), 0),
    fixed(medianOf(list, 'p99Us'), 0),
    fixed(medianOf(list, 'cpuSecPerGb'), 2),
    fixed(medianOf(list, 'cores'), 2),
  ];
  const ratio = (key: keyof Measured) => fixed(medianOf(results.lvnode, key) / medianOf(results.spdk, key), 2);
  return [
    line('lvnode', results.lvnode),
    line('spdk_tgt', results.spdk),
    [workload.name, 'ratio lvnode/spdk', ratio('iops'), ratio('mibPerSec'), ratio('p50Us'), ratio('p99Us'), ratio('cpuSecPerGb'), ratio('cores')],
  ];
}

/** lvnode's NVMe/TCP and NBD on the same bdev: 4 KiB random reads at QD16 (spdk_nvme_perf vs qemu-img bench). */
async function nbdAgainstNvmf(lvnode: Target & { nbdSocket: string }, seconds: number): Promise<void> {
  const qemuImg = await new Promise<boolean>((resolveFound) => execFile('qemu-img', ['--version'], (error) => resolveFound(!error)));
  if (!qemuImg) {
    console.log('  NBD comparison skipped: qemu-img not found');
    return;
  }
  const nvme = await runPerf(lvnode.port, { name: '4K rand read QD16', args: ['-q', '16', '-o', '4096', '-w', 'randread'] }, seconds);
  const count = 200_000;
  const uri = `nbd+unix:///aio0?socket=${encodeURIComponent(lvnode.nbdSocket)}`;
  const startMs = performance.now();
  await new Promise<void>((resolveRun, reject) =>
    execFile('qemu-img', ['bench', '-f', 'raw', '-t', 'none', '-c', String(count), '-d', '16', '-s', '4096', '-S', '8392704', uri], (error, _out, stderr) => (error ? reject(new Error(stderr)) : resolveRun())),
  );
  const nbdIops = count / ((performance.now() - startMs) / 1000);
  console.log(`  lvnode same bdev, 4 KiB reads QD16: NVMe/TCP ${fixed(nvme.iops, 0)} IOPS (spdk_nvme_perf) vs NBD ${fixed(nbdIops, 0)} IOPS (qemu-img bench, strided); ratio ${fixed(nvme.iops / nbdIops, 2)}`);
}
