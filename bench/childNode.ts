// A benchmark node in its own process, on a pre-filled file: clients in the bench process then load
// it the way real clients do, and the node's CRC path can be chosen per run (LVNODE_CRC=fallback).
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { mibBytes } from '../src/constants.ts';
import { metadataClusterCount } from '../src/store/lvstore.ts';
import { benchClusterBytes, writePatternFile } from './support.ts';

const binPath = fileURLToPath(new URL('../bin/lvnode.mjs', import.meta.url));
const readyPattern = /lvnode serving JSON-RPC at (ws:\/\/\S+)/;
// Printed right after it: the dashboard's link, carrying the token the node made in its data directory.
const tokenPattern = /lvnode dashboard at \S+\?token=(\S+)/;
const nbdPattern = /lvnode serving NBD at (\S+)/;

/**
 * `lvnode serve` in its own process with its data in `dataDir` (its embedded default disk sparse,
 * `defaultDiskSize`, more `serve` flags in `serveArgs`), on a loopback port; resolves with the URL and the token once it serves.
 */
export async function startServeProcess(dataDir: string, defaultDiskSize = '64G', serveArgs: readonly string[] = []): Promise<{ child: ChildProcess; url: string; token: string }> {
  const child = spawn(process.execPath, [binPath, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--default-disk-size', defaultDiskSize, ...serveArgs], {
    env: { ...process.env, LVNODE_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [url, token] = await new Promise<[string, string]>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      const match = readyPattern.exec(out);
      const token = tokenPattern.exec(out);
      if (match && token) resolve([match[1]!, decodeURIComponent(token[1]!)]);
    });
    child.once('exit', (code) => reject(new Error(`bench node exited (${code}) before it was ready`)));
  });
  return { child, url, token };
}

/** Node flags for the bench's node process from BENCH_NODE_FLAGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`, which NODE_OPTIONS refuses). */
function nodeFlags(): string[] {
  return (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter((flag) => flag !== '');
}

/** Sends SIGTERM and resolves once the process has exited. */
export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

export interface ChildBench {
  readonly client: RpcClient;
  readonly url: string;
  readonly filePath: string;
  readonly clusterBytes: number;
  readonly lvsName: string;
  /** `lvs/lvol` aliases of the thick lvols, each over an equal share of the data clusters. */
  readonly lvolNames: string[];
  /** File offset of lvol i's first cluster; its clusters follow contiguously (a fresh store fills in order). */
  readonly lvolOffsetBytes: number[];
  readonly lvolBytes: number;
  readonly child: ChildProcess;
  /** `HOST:PORT` or socket path of the node's NBD listener, when started with `nbdListen`. */
  readonly nbdAddress: string | undefined;
  connect(): Promise<RpcClient>;
  close(): Promise<void>;
}

export async function spawnBenchNode(options: {
  sizeMib: number;
  lvolCount: number;
  env?: Record<string, string>;
  /** Serve NBD on this `HOST:PORT` or Unix socket path (`nbdAddress` says where). */
  nbdListen?: string;
  /** More NBD flags: TCP needs `--nbd-tls-psk FILE` or `--nbd-insecure-tcp`. */
  nbdArgs?: readonly string[];
  /** Clusters left free after the lvols (for figures that allocate). */
  spareClusters?: number;
}): Promise<ChildBench> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bench-'));
  const filePath = join(dir, 'bench.img');
  const clients: RpcClient[] = [];
  let child: ChildProcess | undefined;
  const close = async () => {
    await Promise.all(clients.map((client) => client.close().catch(() => undefined)));
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await writePatternFile(filePath, options.sizeMib, benchClusterBytes);
    const nbdArgs = options.nbdListen ? ['--nbd-listen', options.nbdListen, ...(options.nbdArgs ?? [])] : [];
    child = spawn(process.execPath, [...nodeFlags(), binPath, 'serve', '--data-dir', join(dir, 'data'), '--listen', '127.0.0.1:0', '--default-disk-size', '64M', ...nbdArgs], {
      env: { ...process.env, LVNODE_LOG_LEVEL: 'warn', ...options.env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let nbdAddress: string | undefined;
    const [url, token] = await new Promise<[string, string]>((resolve, reject) => {
      let out = '';
      child!.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
        out += chunk;
        const match = readyPattern.exec(out);
        const token = tokenPattern.exec(out);
        const nbd = nbdPattern.exec(out);
        if (nbd) nbdAddress = nbd[1];
        // The dashboard's and then the NBD line follow the JSON-RPC one (NBD's when asked for).
        if (match && token && (!options.nbdListen || nbd)) resolve([match[1]!, decodeURIComponent(token[1]!)]);
      });
      child!.once('exit', (code) => reject(new Error(`bench node exited (${code}) before it was ready`)));
    });
    const connect = async () => {
      const client = await RpcClient.connect(url, { token });
      clients.push(client);
      return client;
    };
    const client = await connect();
    const lvsName = 'bench_lvs';
    await client.call('bdev_aio_create', { name: 'bench_aio', filename: filePath, block_size: 512 });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'bench_aio', lvs_name: lvsName, cluster_sz: benchClusterBytes, clear_method: 'none' });
    const [lvs] = await client.call<Array<{ free_clusters: number }>>('bdev_lvol_get_lvstores', { lvs_name: lvsName });
    const clustersEach = Math.floor((lvs!.free_clusters - (options.spareClusters ?? 0)) / options.lvolCount);
    const firstDataOffset = metadataClusterCount(options.sizeMib * mibBytes, benchClusterBytes) * benchClusterBytes;
    const lvolNames: string[] = [];
    const lvolOffsetBytes: number[] = [];
    for (let index = 0; index < options.lvolCount; index++) {
      await client.call('bdev_lvol_create', {
        lvs_name: lvsName,
        lvol_name: `data${index}`,
        size_in_mib: (clustersEach * benchClusterBytes) / mibBytes,
        thin_provision: false,
      });
      lvolNames.push(`${lvsName}/data${index}`);
      lvolOffsetBytes.push(firstDataOffset + index * clustersEach * benchClusterBytes);
    }
    // The creates zeroed the lvols' clusters: the pattern goes back under them.
    await writePatternFile(filePath, options.sizeMib, benchClusterBytes, { fromBytes: firstDataOffset });
    return {
      client,
      url,
      filePath,
      clusterBytes: benchClusterBytes,
      lvsName,
      lvolNames,
      lvolOffsetBytes,
      lvolBytes: clustersEach * benchClusterBytes,
      child,
      nbdAddress,
      connect,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
