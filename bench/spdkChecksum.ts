// lvnode against the real spdk_tgt (Longhorn's fork): the same snapshot registered on both, same size, same tmpfs.
//
// spdk_tgt (../shared/tools/spdk, or BENCH_SPDK_DIR) gets an aio bdev on a file in /dev/shm filled
// with data first (its lvstore and thick lvol are created with clear_method "none", so the lvol's
// clusters hold that data, not holes), a snapshot of the lvol, and `bdev_lvol_register_snapshot_checksum`
// timed until it answers (SPDK answers when the walk is done, as lvnode does). lvnode runs in its
// own process on a file in the same tmpfs, with a snapshot of as many 4 MiB clusters. The sides
// alternate, run by run. spdk_tgt polls its core (core 0) at 100% even idle, so lvnode is timed
// twice per run: beside the polling spdk_tgt (sharing the machine's cores with it) and with
// spdk_tgt stopped (SIGSTOP; each side then has the machine alone, as spdk_tgt had for its own
// run but for lvnode's idle node). spdk_tgt is killed at the end, whatever happened. Figures only.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseJson } from '../src/transport/json64.ts';
import { type ChildBench, spawnBenchNode } from './childNode.ts';
import { benchClusterBytes, bytesPerMsToMBps, envInteger, fixed, median, printTable, sleepMs, timed, writePatternFile } from './support.ts';

const mib = 1024 * 1024;
const speedupTarget = 2;
const tmpfsDir = '/dev/shm';
const spdkStartTimeoutMs = 20_000;

/** One JSON-RPC call on spdk_tgt's Unix socket (bare JSON values, one reply per request). */
async function spdkCall(socketPath: string, method: string, params?: unknown): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const socket = connect(socketPath);
    let text = '';
    socket.setEncoding('utf8');
    socket.once('error', reject);
    socket.on('data', (chunk: string) => {
      text += chunk;
      let reply: { result?: unknown; error?: { code: number; message: string } };
      try {
        reply = parseJson(text) as typeof reply;
      } catch {
        return; // not the whole reply yet
      }
      socket.destroy();
      if (reply.error) reject(new Error(`spdk_tgt ${method}: ${reply.error.code} ${reply.error.message}`));
      else resolvePromise(reply.result);
    });
    socket.once('connect', () => socket.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method, ...(params === undefined ? {} : { params }) })));
  });
}

interface SpdkTarget {
  readonly child: ChildProcess;
  readonly socketPath: string;
  pause(): void;
  resume(): void;
  kill(): Promise<void>;
}

/** Starts spdk_tgt on core 0; resolves once its RPC socket answers, or says why it cannot run. */
async function startSpdk(runPath: string, dir: string): Promise<SpdkTarget | string> {
  const socketPath = join(dir, 'spdk.sock');
  const logFd = openSync(join(dir, 'spdk_tgt.log'), 'w');
  const child = spawn(runPath, ['spdk_tgt', '--no-huge', '-s', '1024', '-m', '0x1', '--no-pci', '--disable-cpumask-locks', '-r', socketPath], {
    stdio: ['ignore', logFd, logFd],
  });
  closeSync(logFd);
  let exited = false;
  const exit = new Promise<void>((resolveExit) => child.once('exit', () => ((exited = true), resolveExit())));
  child.once('error', () => undefined); // reported as the exit below
  const target: SpdkTarget = {
    child,
    socketPath,
    pause: () => void child.kill('SIGSTOP'),
    resume: () => void child.kill('SIGCONT'),
    kill: async () => {
      if (!exited) {
        child.kill('SIGCONT');
        child.kill('SIGKILL');
        await exit;
      }
      // spdk_tgt leaves its trace buffer in /dev/shm, named after its pid (`run` execs it).
      await rm(join(tmpfsDir, `spdk_tgt_trace.pid${child.pid}`), { force: true });
    },
  };
  const deadline = performance.now() + spdkStartTimeoutMs;
  while (performance.now() < deadline) {
    if (exited) return `spdk_tgt exited at start (code ${child.exitCode}; see its log in ${dir})`;
    try {
      await spdkCall(socketPath, 'spdk_get_version');
      return target;
    } catch {
      await sleepMs(100);
    }
  }
  await target.kill();
  return `spdk_tgt did not answer on ${socketPath} within ${spdkStartTimeoutMs} ms`;
}

/** An aio bdev on a data-filled tmpfs file, an lvstore, a thick lvol of `clusterCount` clusters and its snapshot. */
async function spdkSnapshot(target: SpdkTarget, filePath: string, clusterCount: number): Promise<string> {
  const lvolMib = (clusterCount * benchClusterBytes) / mib;
  // Room for the blobstore's metadata beyond the lvol; written before spdk_tgt opens it.
  await writePatternFile(filePath, lvolMib + 64, benchClusterBytes);
  await spdkCall(target.socketPath, 'bdev_aio_create', { name: 'aio0', filename: filePath, block_size: 4096 });
  await spdkCall(target.socketPath, 'bdev_lvol_create_lvstore', { bdev_name: 'aio0', lvs_name: 'lvs', cluster_sz: benchClusterBytes, clear_method: 'none' });
  await spdkCall(target.socketPath, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'vol', size_in_mib: lvolMib, thin_provision: false, clear_method: 'none' });
  await spdkCall(target.socketPath, 'bdev_lvol_snapshot', { lvol_name: 'lvs/vol', snapshot_name: 'snap' });
  return 'lvs/snap';
}

function spdkRunPath(): string {
  const dir = process.env.BENCH_SPDK_DIR ?? resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'shared', 'tools', 'spdk');
  return join(dir, 'run');
}

interface Side {
  label: string;
  ms: number[];
}

/** The three sides, alternating run by run so drift falls on all alike. */
async function alternate(target: SpdkTarget, spdkName: string, bench: ChildBench, lvnodeName: string, repetitions: number): Promise<Side[]> {
  const sides: Side[] = [
    { label: 'spdk_tgt (core 0, polling)', ms: [] },
    { label: 'lvnode, spdk_tgt polling beside it', ms: [] },
    { label: 'lvnode, spdk_tgt stopped (SIGSTOP)', ms: [] },
  ];
  const register = () => bench.client.call('bdev_lvol_register_snapshot_checksum', { name: lvnodeName });
  // One untimed run each: page cache, JIT, the native pool's threads.
  await spdkCall(target.socketPath, 'bdev_lvol_register_snapshot_checksum', { name: spdkName });
  await register();
  for (let repetition = 0; repetition < repetitions; repetition++) {
    sides[0]!.ms.push((await timed(() => spdkCall(target.socketPath, 'bdev_lvol_register_snapshot_checksum', { name: spdkName }))).ms);
    sides[1]!.ms.push((await timed(register)).ms);
    target.pause();
    try {
      sides[2]!.ms.push((await timed(register)).ms);
    } finally {
      target.resume();
    }
  }
  return sides;
}

export async function spdkChecksum(): Promise<void> {
  const sizeMib = envInteger('BENCH_SIZE_MIB', 1024);
  const repetitions = Math.max(3, envInteger('BENCH_REPETITIONS', 5));
  console.log(`\n== spdkChecksum: bdev_lvol_register_snapshot_checksum on spdk_tgt vs lvnode, same snapshot size, files in ${tmpfsDir} ==`);
  const runPath = spdkRunPath();
  if (!existsSync(runPath)) return console.log(`  skipped: no SPDK tools at ${runPath} (BENCH_SPDK_DIR names another folder)`);
  if (!existsSync(tmpfsDir)) return console.log(`  skipped: no ${tmpfsDir} (tmpfs) here`);
  const dir = await mkdtemp(join(tmpfsDir, 'lvnode-spdk-'));
  let target: SpdkTarget | undefined;
  let bench: ChildBench | undefined;
  const savedTmpdir = process.env.TMPDIR;
  try {
    const started = await startSpdk(runPath, dir);
    if (typeof started === 'string') return console.log(`  skipped: ${started}`);
    target = started;
    // lvnode's file in the same tmpfs: spawnBenchNode makes its folder under os.tmpdir().
    process.env.TMPDIR = tmpfsDir;
    bench = await spawnBenchNode({ sizeMib, lvolCount: 1 });
    if (savedTmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmpdir;
    const clusterCount = bench.lvolBytes / benchClusterBytes;
    await bench.client.call('bdev_lvol_snapshot', { lvol_name: bench.lvolNames[0]!, snapshot_name: 'snap' });
    const spdkName = await spdkSnapshot(target, join(dir, 'spdk.img'), clusterCount);
    const sides = await alternate(target, spdkName, bench, `${bench.lvsName}/snap`, repetitions);
    report(sides, bench.lvolBytes, clusterCount, repetitions);
  } catch (error) {
    console.log(`  failed: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    if (process.env.TMPDIR === tmpfsDir) {
      if (savedTmpdir === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmpdir;
    }
    await target?.kill();
    await bench?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function report(sides: readonly Side[], bytes: number, clusterCount: number, repetitions: number): void {
  const mbps = (ms: number) => bytesPerMsToMBps(bytes, ms);
  console.log(`  ${fixed(bytes / 1e6, 0)} MB snapshot (${clusterCount} clusters of 4 MiB) on each, ${repetitions} runs per side, alternating:`);
  printTable(
    ['side', 'median ms', 'min–max ms', 'median MB/s', 'runs ms'],
    sides.map((side) => [
      side.label,
      fixed(median(side.ms), 1),
      `${fixed(Math.min(...side.ms), 1)}–${fixed(Math.max(...side.ms), 1)}`,
      fixed(mbps(median(side.ms)), 0),
      side.ms.map((ms) => fixed(ms, 0)).join(' '),
    ]),
  );
  const [spdk, beside, alone] = sides as [Side, Side, Side];
  for (const side of [alone, beside]) {
    const speedup = median(spdk.ms) / median(side.ms);
    const perRun = spdk.ms.map((ms, index) => fixed(ms / side.ms[index]!, 2)).join(', ');
    console.log(`  spdk_tgt time / ${side.label} time: ${fixed(speedup, 2)}x (per run ${perRun}; goal ≥ ${speedupTarget}x: ${speedup >= speedupTarget ? 'met' : 'missed'})`);
  }
  console.log('  (spdk_tgt polls core 0 at 100% throughout its own runs; lvnode has 2 cores: its event loop and its background threads.)');
}
