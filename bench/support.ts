// Shared pieces of the benchmarks: a temp node on a pre-filled file bdev, timing statistics and tables.
import { randomFillSync } from 'node:crypto';
import { closeSync, fdatasync, openSync, write as fsWrite } from 'node:fs';
import { type FileHandle, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { addon } from '../src/addon.ts';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { type RunningNode, startNode } from '../src/cli/serve.ts';
import { mibBytes } from '../src/constants.ts';
import { metadataClusterCount } from '../src/store/lvstore.ts';

// Every benchmark uses SPDK's default cluster size; run.ts prints it in the header.
export const benchClusterBytes = 4 * mibBytes;
// The node's own embedded disk0 is sparse and unused here: keep it small.
const embeddedDiskBytes = 64 * mibBytes;
const lvsName = 'bench_lvs';

export interface BenchNode {
  readonly running: RunningNode;
  /** The client the benchmark drives the node with. */
  readonly client: RpcClient;
  readonly filePath: string;
  readonly lvsName: string;
  /** The thick lvol's `lvs/lvol` alias. */
  readonly lvolName: string;
  readonly clusterBytes: number;
  /** Frees clients, node and temp files; safe to call once whatever happened before. */
  close(): Promise<void>;
}

/**
 * Writes `sizeMib` of non-trivial data to a fresh file: one random cluster, stamped with the
 * cluster index every 4 KiB so that no two clusters (and no two pages) are equal. With
 * `fromBytes`, the file is kept and only the clusters from there on are written: a thick lvol's
 * clusters read zeros when created (they are zeroed at allocation), so benchmarks that want real
 * data under their lvols write it into the data clusters afterwards, beside the running node.
 */
export async function writePatternFile(path: string, sizeMib: number, clusterBytes: number, options: { fromBytes?: number } = {}): Promise<void> {
  const cluster = Buffer.allocUnsafe(clusterBytes);
  randomFillSync(cluster);
  const handle = await open(path, options.fromBytes === undefined ? 'w' : 'r+');
  try {
    const clusterCount = (sizeMib * mibBytes) / clusterBytes;
    for (let clusterIndex = Math.ceil((options.fromBytes ?? 0) / clusterBytes); clusterIndex < clusterCount; clusterIndex++) {
      for (let pageOffset = 0; pageOffset < clusterBytes; pageOffset += 4096) cluster.writeUInt32LE(clusterIndex, pageOffset);
      await writeFully(handle, cluster, clusterIndex * clusterBytes);
    }
  } finally {
    await handle.close();
  }
}

async function writeFully(handle: FileHandle, data: Buffer, offsetBytes: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, offsetBytes + done);
    done += bytesWritten;
  }
}

/** The token a client of `running` presents (the one the node made in its data directory). */
export function benchToken(running: RunningNode): string | undefined {
  return running.auth.kind === 'token' ? running.auth.token : undefined;
}

/**
 * A temp dir with a pre-filled file of `sizeMib`, a node serving on a loopback port, the file as
 * aio bdev, an lvstore and a thick lvol over every data cluster, and the pattern written again
 * into the data clusters once the lvol owns them: the lvol's data is the pattern, without writing
 * it through RPC.
 */
export async function startBenchNode(sizeMib: number): Promise<BenchNode> {
  if (!Number.isInteger(sizeMib) || sizeMib % (benchClusterBytes / mibBytes) !== 0 || sizeMib < 16) {
    throw new Error(`size must be a whole number of ${benchClusterBytes / mibBytes} MiB clusters, at least 16 MiB; got ${sizeMib}`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bench-'));
  const filePath = join(dir, 'bench.img');
  let running: RunningNode | undefined;
  let client: RpcClient | undefined;
  const close = async () => {
    await client?.close().catch(() => undefined);
    await running?.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await writePatternFile(filePath, sizeMib, benchClusterBytes);
    running = await startNode({ dataDir: join(dir, 'data'), listen: '127.0.0.1:0', defaultDiskBytes: embeddedDiskBytes });
    client = await RpcClient.connect(running.url, { token: benchToken(running) });
    await client.call('bdev_aio_create', { name: 'bench_aio', filename: filePath, block_size: 512 });
    await client.call('bdev_lvol_create_lvstore', {
      bdev_name: 'bench_aio',
      lvs_name: lvsName,
      cluster_sz: benchClusterBytes,
      clear_method: 'none',
    });
    const [lvs] = await client.call<Array<{ free_clusters: number; cluster_size: number }>>('bdev_lvol_get_lvstores', { lvs_name: lvsName });
    if (!lvs || lvs.cluster_size !== benchClusterBytes) throw new Error('lvstore was not created as asked');
    const lvolName = `${lvsName}/data`;
    await client.call('bdev_lvol_create', {
      lvs_name: lvsName,
      lvol_name: 'data',
      size_in_mib: (lvs.free_clusters * lvs.cluster_size) / mibBytes,
      thin_provision: false,
    });
    // The create zeroed the lvol's clusters: the pattern goes back under it, past the metadata area.
    await writePatternFile(filePath, sizeMib, benchClusterBytes, { fromBytes: metadataClusterCount(sizeMib * mibBytes, benchClusterBytes) * benchClusterBytes });
    return { running, client, filePath, lvsName, lvolName, clusterBytes: benchClusterBytes, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * The file byte offsets of the clusters `lvolName` owns, in cluster-index order (the walk's order).
 * Read from the in-process node: no RPC names physical clusters, and the baseline must read exactly
 * the bytes the walk reads.
 */
export function ownedClusterOffsets(node: BenchNode, lvolName: string): number[] {
  const { entry, lvol } = node.running.node.resolveLvol(lvolName);
  const offsets: number[] = [];
  for (const [, physicalCluster] of lvol.clusterMap.entries()) offsets.push(physicalCluster * entry.store.clusterBytes);
  return offsets;
}

/** Milliseconds `work` took, with its result. */
export async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const startMs = performance.now();
  const value = await work();
  return { ms: performance.now() - startMs, value };
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

/** Linear-interpolated quantile (q in 0..1) of a non-empty sample. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) throw new Error('quantile of an empty sample');
  const sorted = [...values].sort((a, b) => a - b);
  const position = (sorted.length - 1) * q;
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below]! + (sorted[above]! - sorted[below]!) * (position - below);
}

export function bytesPerMsToMBps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

export function fixed(value: number, digits: number): string {
  return value.toFixed(digits);
}

/** Prints rows as an aligned table: the first column left-aligned, the others right-aligned. */
export function printTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): void {
  const widths = header.map((cell, column) => Math.max(cell.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (row: readonly string[]) =>
    row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ');
  console.log(`  ${line(header)}`);
  console.log(`  ${widths.map((width) => '-'.repeat(width)).join('  ')}`);
  for (const row of rows) console.log(`  ${line(row)}`);
}

export function envInteger(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer, got ${text}`);
  return value;
}

type DurableCall = (fd: number, data: Uint8Array, position: number, done: (error: Error | null) => void) => void;

/**
 * The yardstick of the create rate: 4 KiB write + fdatasync per second on a file in `dir`, through
 * Node's callback fs as a Node program does it without blocking its event loop (two trips to a
 * pool thread). With `oneTrip`, the same pair through the node's native durable write (one trip,
 * what a journal append costs at best); undefined when the addon is not built.
 */
export async function fsyncRate(dir: string, options: { ms?: number; oneTrip?: boolean } = {}): Promise<number | undefined> {
  const durable = options.oneTrip ? (addon?.writeDurable as DurableCall | undefined) : undefined;
  if (options.oneTrip && !durable) return undefined;
  const fd = openSync(join(dir, options.oneTrip ? 'fsync-one-trip.probe' : 'fsync.probe'), 'w+');
  const block = Buffer.alloc(4096, 1);
  const pair = (position: number) =>
    new Promise<void>((resolve, reject) => {
      if (durable) return durable(fd, block, position, (error) => (error ? reject(error) : resolve()));
      fsWrite(fd, block, 0, block.length, position, (error) => (error ? reject(error) : fdatasync(fd, (synced) => (synced ? reject(synced) : resolve()))));
    });
  try {
    const start = performance.now();
    let count = 0;
    while (performance.now() - start < (options.ms ?? 1000)) await pair((count++ % 256) * 4096);
    return count / ((performance.now() - start) / 1000);
  } finally {
    closeSync(fd);
  }
}

export function sleepMs(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
