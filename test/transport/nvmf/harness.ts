// A standalone NVMe/TCP target for the nvmf tests: the real target state and transport on
// 127.0.0.1, serving small in-memory bdevs (a test-only Bdev over MemoryDevice), and helpers to
// run SPDK's own programs against it (skipped when they are absent, unless LVNODE_REQUIRE_SPDK_TOOLS).
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { InspectionHub } from '../../../src/actors/inspector.ts';
import type { NvmeAttachRequest } from '../../../src/actors/nvmeControllers.ts';
import { NvmfTarget } from '../../../src/actors/nvmfTarget.ts';
import type { Bdev } from '../../../src/bdev/bdev.ts';
import { BdevClaims } from '../../../src/bdev/bdevClaims.ts';
import { MemoryDevice } from '../../../src/device/memoryDevice.ts';
import { fail, isStorageError } from '../../../src/errors.ts';
import { NvmfTcpTransport, type NvmfTransportLimits } from '../../../src/transport/nvmf/target.ts';
import { seededRandom } from '../../seededRandom.ts';
import { SpdkSocketClient } from '../../spdkSocketClient.ts';

/** SPDK's programs: `LVNODE_SPDK_TOOLS_DIR` (.ci/run sets it), else ../shared/tools/spdk beside the repository. */
export const spdkToolsDir = process.env.LVNODE_SPDK_TOOLS_DIR ?? resolve(import.meta.dirname, '../../../../shared/tools/spdk');
export const spdkRun = resolve(spdkToolsDir, 'run');
export const spdkToolsPresent = existsSync(spdkRun) && existsSync(resolve(spdkToolsDir, 'bin/spdk_nvme_perf'));
/** SPDK tests run when the tools are there, and must (fail, not skip) when CI says they are required. */
export const skipSpdk = !spdkToolsPresent && process.env.LVNODE_REQUIRE_SPDK_TOOLS === undefined;

/** A RAM bdev with the Bdev interface; `readOnly` and I/O counters for the tests. */
export function memoryBdev(name: string, sizeBytes: number, options: { blockSizeBytes?: number; readOnly?: boolean } = {}): Bdev & { writes: number; reads: number } {
  const blockSizeBytes = options.blockSizeBytes ?? 512;
  const device = new MemoryDevice(sizeBytes, blockSizeBytes);
  const check = (offsetBytes: number, lengthBytes: number) => {
    if (offsetBytes % blockSizeBytes !== 0 || lengthBytes % blockSizeBytes !== 0 || offsetBytes + lengthBytes > sizeBytes) fail('EINVAL', 'range outside the bdev');
  };
  const bdev = {
    kind: 'malloc' as const,
    name,
    uuid: randomUUID(),
    aliases: () => [],
    blockSizeBytes,
    sizeBytes: () => sizeBytes,
    readOnly: () => options.readOnly === true,
    writes: 0,
    reads: 0,
    async readInto(offsetBytes: number, target: Buffer) {
      // Counted before the range check: a test sees a request that reached the bdev at all.
      bdev.reads++;
      check(offsetBytes, target.length);
      await device.readInto(target, offsetBytes);
    },
    async write(offsetBytes: number, data: Uint8Array) {
      bdev.writes++;
      check(offsetBytes, data.length);
      if (options.readOnly) fail('EPERM', 'read-only');
      await device.write(offsetBytes, data);
    },
    flush: () => device.flush(),
    async unmap(offsetBytes: number, lengthBytes: number) {
      check(offsetBytes, lengthBytes);
      await device.discard(offsetBytes, lengthBytes);
    },
    async writeZeroes(offsetBytes: number, lengthBytes: number) {
      check(offsetBytes, lengthBytes);
      await device.discard(offsetBytes, lengthBytes);
    },
    extents: (offsetBytes: number, lengthBytes: number) => [{ offsetBytes, lengthBytes, allocated: true }],
    claims: new BdevClaims(() => name),
  };
  return bdev;
}

/** A free TCP port on 127.0.0.1 (bound then released; the tests listen on it right after). */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

export interface StandaloneTarget {
  readonly target: NvmfTarget;
  readonly transport: NvmfTcpTransport;
  readonly port: number;
  readonly nqn: string;
  close(): Promise<void>;
}

/** A target with one subsystem (`nqn`), its namespaces on `bdevs`, listening on 127.0.0.1. */
export async function startTarget(options: {
  bdevs: Bdev[];
  allowAnyHost?: boolean;
  hosts?: string[];
  nqn?: string;
  /** Small connection limits for tests that fill them. */
  limits?: Partial<NvmfTransportLimits>;
  /** Listen on this port (a target restarted where a host expects it); a free one otherwise. */
  port?: number;
}): Promise<StandaloneTarget> {
  const target = new NvmfTarget(new InspectionHub(), 'loopback');
  const transport = new NvmfTcpTransport(target, () => {}, options.limits ?? {});
  target.transports.push(tcpTransportOptions());
  const nqn = options.nqn ?? 'nqn.2016-06.io.spdk:cnode1';
  target.createSubsystem({ nqn, serialNumber: 'LVNODE0001', modelNumber: 'lvnode test', allowAnyHost: options.allowAnyHost ?? true, maxNamespaces: 32, minCntlid: 1, maxCntlid: 0xffef, anaReporting: false });
  for (const host of options.hosts ?? []) target.addHost(nqn, host);
  for (const bdev of options.bdevs) target.require(nqn).addNamespace(bdev, {});
  const port = options.port ?? (await freePort());
  await target.addListener(nqn, { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(port) });
  return {
    target,
    transport,
    port,
    nqn,
    close: async () => {
      await target.stopAll('test end');
      await transport.shutdown();
    },
  };
}

export function tcpTransportOptions() {
  return {
    trtype: 'TCP' as const,
    max_queue_depth: 128,
    max_io_qpairs_per_ctrlr: 127,
    in_capsule_data_size: 4096,
    max_io_size: 131072,
    io_unit_size: 131072,
    max_aq_depth: 128,
    num_shared_buffers: 511,
    buf_cache_size: 4294967295,
    dif_insert_or_strip: false,
    zcopy: false,
    c2h_success: true,
    sock_priority: 0,
    abort_timeout_sec: 1,
  };
}

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

const running = new Set<ChildProcess>();

// SPDK's programs poll their core at 100% and every one here runs on core 0 (-m 0x1): two test
// files running them at once (vitest runs files in parallel) starve each other on the 2-core
// machine, and spdk_tgt then misses its start-up bound. One process at a time holds this lock (a
// directory, created atomically, naming its pid) while any of its SPDK programs run; others wait.
const spdkLockPath = join(tmpdir(), 'lvnode-spdk-tests.lock');
const spdkLockWaitMs = 10 * 60_000;
let spdkLockHolds = 0;

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock (re-entrant within this process), waiting for another process to let go. */
function acquireSpdkLock(): void {
  if (spdkLockHolds++ > 0) return;
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + spdkLockWaitMs;
  for (;;) {
    try {
      mkdirSync(spdkLockPath);
      writeFileSync(join(spdkLockPath, 'pid'), String(process.pid));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    let holder = Number.NaN;
    try {
      holder = Number(readFileSync(join(spdkLockPath, 'pid'), 'utf8'));
    } catch {
      // Being created or removed right now: look again.
    }
    // A holder that died (a killed test worker) leaves the lock behind: taken over.
    if (Number.isInteger(holder) && holder > 0 && !processAlive(holder)) rmSync(spdkLockPath, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`waited ${spdkLockWaitMs} ms for ${spdkLockPath} (held by pid ${holder})`);
    // The waiting test does nothing else meanwhile: a blocking sleep keeps this synchronous.
    Atomics.wait(sleeper, 0, 0, 50);
  }
}

function releaseSpdkLock(): void {
  if (--spdkLockHolds === 0) rmSync(spdkLockPath, { recursive: true, force: true });
}

/** SPDK's programs leave a 3 MiB trace file in /dev/shm per process (`<program>_trace.pid<pid>`): removed once it exits. */
function removeTraceFile(program: string, child: ChildProcess): void {
  if (child.pid !== undefined) rmSync(`/dev/shm/${program}_trace.pid${child.pid}`, { force: true });
}

/** Runs one of SPDK's programs to its end (killed after `timeoutMs`). */
export function runSpdk(program: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolveRun) => {
    acquireSpdkLock();
    const child = spawn(spdkRun, [program, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      running.delete(child);
      removeTraceFile(program, child);
      releaseSpdkLock();
      resolveRun({ code, stdout, stderr });
    });
  });
}

/**
 * Writes a spdk_dd `--json` config at `path` whose one bdev is the NVMe/TCP controller `attach`
 * (bdev_nvme_attach_controller's params, e.g. name Nvme0: its namespaces are Nvme0n1, n2, ...).
 */
export function writeSpdkDdConfig(path: string, attach: Record<string, unknown>): string {
  writeFileSync(path, JSON.stringify({ subsystems: [{ subsystem: 'bdev', config: [{ method: 'bdev_nvme_attach_controller', params: attach }] }] }));
  return path;
}

/** spdk_dd --no-huge with 1 MiB blocks, `from` → `to` (`--if=FILE`/`--ib=BDEV`, `--of=`/`--ob=`); throws with its output if it fails. */
export async function spdkDd(config: string, from: string, to: string, extra: string[] = []): Promise<void> {
  const result = await runSpdk('spdk_dd', ['--no-huge', '-s', '1024', '-m', '0x2', '--json', config, from, to, '--bs=1048576', ...extra]);
  if (result.code !== 0) throw new Error(`spdk_dd ${from} ${to} exited ${result.code}:\n${result.stdout}${result.stderr}`);
}

/** Starts a long-running SPDK program (spdk_tgt); `stop` kills it (tests call it in `finally`). */
export function startSpdk(program: string, args: string[]): { child: ChildProcess; output: () => string; stop: () => Promise<void> } {
  acquireSpdkLock();
  const child = spawn(spdkRun, [program, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<void>((resolveExit) => child.on('close', () => (running.delete(child), removeTraceFile(program, child), releaseSpdkLock(), resolveExit())));
  return {
    child,
    output: () => output,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Connects to an SPDK program's RPC socket once it accepts (start-up takes seconds under --no-huge);
 * bounded in real time against hanging, with the program's output in the error.
 */
export async function connectSpdkRpc(path: string, output: () => string): Promise<SpdkSocketClient> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      if (existsSync(path)) return await SpdkSocketClient.connect(path);
    } catch {
      // Not accepting yet.
    }
    if (Date.now() > deadline) throw new Error(`spdk_tgt did not open ${path}:\n${output()}`);
    await new Promise((resolveWait) => setTimeout(resolveWait, 50));
  }
}

/** Kills every SPDK program a test left running (afterAll). */
export function killAllSpdk(): void {
  for (const child of running) child.kill('SIGKILL');
}

/** An attach request for `target`'s subsystem on 127.0.0.1: no digests, no reconnect, multipath disabled, unless overridden. */
export function attachRequest(target: { port: number; nqn: string }, overrides: Partial<NvmeAttachRequest> = {}): NvmeAttachRequest {
  return {
    name: 'Nvme0',
    trid: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(target.port), subnqn: target.nqn },
    hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:lvnode-initiator-test',
    headerDigest: false,
    dataDigest: false,
    ctrlrLossTimeoutSec: 0,
    reconnectDelaySec: 0,
    fastIoFailTimeoutSec: 0,
    multipath: 'disable',
    ...overrides,
  };
}

/** The `-r` transport ID string of spdk_nvme_perf / spdk_nvme_discover. */
export function trid(port: number, nqn?: string): string {
  return `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:${port}${nqn ? ` subnqn:${nqn}` : ''}`;
}

/** Seeded bytes a test writes and later compares. */
export function randomData(seed: number, bytes: number): Buffer {
  const random = seededRandom(seed);
  const data = Buffer.alloc(bytes);
  for (let index = 0; index < bytes; index++) data[index] = Math.floor(random() * 256);
  return data;
}

/** The errno a StorageError carries; throws when the work succeeds or fails otherwise. */
export async function errnoOf(work: Promise<unknown>): Promise<string> {
  try {
    await work;
  } catch (error) {
    if (isStorageError(error)) return error.errno;
    throw error;
  }
  throw new Error('it succeeded');
}
