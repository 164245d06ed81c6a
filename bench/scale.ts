// How the node's costs grow with the number of lvols (the scale issue). At each size: sequential
// creates beside the device's 4 KiB write + fdatasync rate (alternating rounds, same run), creates
// from 16 concurrent callers, heap and RSS per lvol, bdev_get_bdevs / bdev_lvol_get_lvols through
// the JSON-RPC dispatcher (what a client waits for, serialization included) beside JSON.stringify
// of the same result, with the longest event-loop stall during each (the reply encoded whole, as
// ws.send(string) does, and in the pieces serializeResponseChunks gives), sequential deletes, stop,
// and restart: to the first answer, and to every lvol actor started. In-process, on a sparse file in /tmp.
//
// After the sequential rounds, 16 callers create plain lvols (the group-commit figure), then the
// rest are a Longhorn-like mix from 16 callers: every tenth is a snapshot (its origin becomes its clone); a
// third of the snapshots have a stored checksum (registered through RPC), a third a stopped walk's
// saved position (committed through the lvstore, as the actor's stop would).
// LVNODE_BENCH_SCALE_SIZES=1000,10000 picks the sizes; LVNODE_BENCH_SCALE_ROUNDS the rounds.
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { StorageNode } from '../src/actors/node.ts';
import { FileDevice } from '../src/device/fileDevice.ts';
import { systemRuntime } from '../src/runtime.ts';
import { createDispatcher, serializeResponse, serializeResponseChunks } from '../src/transport/jsonRpc.ts';
import { stringifyJson } from '../src/transport/json64.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { envInteger, fixed, median, printTable } from './support.ts';

v8.setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };
const sequentialPerRound = 400;

function memory(): { heap: number; rss: number } {
  collect();
  const usage = process.memoryUsage();
  return { heap: usage.heapUsed + usage.arrayBuffers, rss: usage.rss };
}

/** 4 KiB write + fdatasync per second on the same file system (the create rate's yardstick). */
async function fsyncRate(dir: string): Promise<number> {
  const handle = await open(join(dir, 'fsync.probe'), 'w');
  const block = Buffer.alloc(4096, 1);
  const start = performance.now();
  let count = 0;
  while (performance.now() - start < 1000) {
    await handle.write(block, 0, block.length, (count % 256) * 4096);
    await handle.datasync();
    count++;
  }
  await handle.close();
  return count / ((performance.now() - start) / 1000);
}

async function timedMs<T>(work: () => Promise<T> | T): Promise<{ ms: number; value: T }> {
  const start = performance.now();
  const value = await work();
  return { ms: performance.now() - start, value };
}

/** Runs `work` while a chain of macrotasks measures the longest time the event loop was held. */
async function withStallMs<T>(work: () => Promise<T>): Promise<{ ms: number; stallMs: number; value: T }> {
  let stallMs = 0;
  let last = performance.now();
  let running = true;
  const tick = (): void => {
    const now = performance.now();
    stallMs = Math.max(stallMs, now - last);
    last = now;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  const start = performance.now();
  const value = await work();
  const ms = performance.now() - start;
  running = false;
  stallMs = Math.max(stallMs, performance.now() - last);
  return { ms, stallMs, value };
}

function range(values: readonly number[], digits: number): string {
  return `${fixed(Math.min(...values), digits)}–${fixed(Math.max(...values), digits)}`;
}

type Call = (method: string, params: Record<string, unknown>) => Promise<unknown>;

function nodeCalls(node: StorageNode): {
  call: Call;
  rpc: (method: string, params: Record<string, unknown>) => Promise<string>;
  rpcChunks: (method: string, params: Record<string, unknown>) => Promise<string[]>;
} {
  const table = createMethodTable(node);
  const dispatcher = createDispatcher(table, { allowBatch: false });
  const call: Call = async (method, params) => table[method]!.handler(table[method]!.params.parse(params), noConnection);
  // What a client waits for: dispatch, handler and the serialized reply.
  // The reply encoded in one go, as ws.send(string) does today.
  const rpc = async (method: string, params: Record<string, unknown>): Promise<string> => {
    const reply = await dispatcher.handleMessage({ jsonrpc: '2.0', id: 1, method, params }, noConnection);
    if (reply === undefined) return '';
    const text = serializeResponse(reply);
    Buffer.from(text, 'utf8');
    return text;
  };
  // The reply's pieces encoded one per turn, as a transport that sends a message in parts would.
  const rpcChunks = async (method: string, params: Record<string, unknown>): Promise<string[]> => {
    const reply = await dispatcher.handleMessage({ jsonrpc: '2.0', id: 1, method, params }, noConnection);
    if (reply === undefined) return [];
    const chunks = serializeResponseChunks(reply);
    for (const chunk of chunks) {
      Buffer.from(chunk, 'utf8');
      await new Promise((resolve) => setImmediate(resolve));
    }
    return chunks;
  };
  return { call, rpc, rpcChunks };
}

/** Lvols `from`..`size`-1 from 16 callers: every tenth a snapshot of the lvol made before it. */
async function createMix(node: StorageNode, call: Call, from: number, size: number): Promise<void> {
  const entry = [...node.registry.lvstores.values()][0]!;
  let next = from;
  const one = async (index: number): Promise<void> => {
    if (index % 10 !== 9 || index - 1 < from) {
      await call('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: `c${index}`, size_in_mib: 16, thin_provision: true });
      return;
    }
    // The origin (made by this caller just before) becomes the snapshot's clone.
    const origin = `lvs/c${index - 1}`;
    for (;;) {
      try {
        node.resolveLvol(origin);
        break;
      } catch {
        await new Promise((resolve) => setImmediate(resolve)); // made by another caller, not yet durable
      }
    }
    const id = (await call('bdev_lvol_snapshot', { lvol_name: origin, snapshot_name: `c${index}` })) as string;
    const kind = Math.floor(index / 10) % 3;
    if (kind === 0) await call('bdev_lvol_register_snapshot_checksum', { name: id });
    if (kind === 1) {
      const nowMs = Date.now();
      await entry.store.saveChecksumProgress(id, {
        runId: 1, mode: 'whole', clustersTotal: 16, clustersDone: 5, bytesDone: 5 * 1024 * 1024, nextClusterIndex: 5,
        runningCrc: 0x1234_5678_9abc_def0n, rangeCrcs: new Map(), startedAtMs: nowMs - 1000, activeMs: 900, resumedAtMs: nowMs - 1000,
        finishedAtMs: nowMs, reason: 'stopped', error: null,
      });
    }
  };
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let index = next++; index < size; index = next++) await one(index);
    }),
  );
}

interface SizeFigures {
  fsync: number[];
  sequential: number[];
  concurrentRate: number;
  /** The mix (snapshots, checksum registrations, saved positions) from 16 callers, lvols per second. */
  mixRate: number;
  heapKib: number;
  rssKib: number;
  bdevs: { ms: number; stallMs: number; chunkedStallMs: number; stringifyMs: number; bytes: number };
  lvols: { ms: number; stallMs: number; chunkedStallMs: number; stringifyMs: number; bytes: number };
  stopMs: number;
  /** Milliseconds per sequential delete. */
  deleteMs: number;
  firstAnswerMs: number;
  allStartedMs: number;
  resolvable: string;
}

async function measureSize(size: number, rounds: number): Promise<SizeFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-scale-'));
  const path = join(dir, 'disk.img');
  await FileDevice.createSparse(path, 16 * 1024 ** 3);
  const node = new StorageNode(systemRuntime);
  const { call, rpc, rpcChunks } = nodeCalls(node);
  await call('bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  await call('bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: 1024 * 1024 });
  const before = memory();
  // Sequential creates and the fsync probe alternate, so each ratio compares the same minute.
  const fsync: number[] = [];
  const sequential: number[] = [];
  const sequentialCount = Math.min(sequentialPerRound * rounds, Math.floor(size / 2));
  const perRound = Math.floor(sequentialCount / rounds);
  for (let round = 0; round < rounds; round++) {
    fsync.push(await fsyncRate(dir));
    const timed = await timedMs(async () => {
      for (let index = round * perRound; index < (round + 1) * perRound; index++) {
        await call('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: `s${index}`, size_in_mib: 16, thin_provision: true });
      }
    });
    sequential.push(perRound / (timed.ms / 1000));
    if (process.env.LVNODE_BENCH_SCALE_VERBOSE) console.log(`  round ${round}: fsync ${fixed(fsync[round]!, 0)}/s, creates ${fixed(sequential[round]!, 0)}/s`);
  }
  // 16 callers of plain creates (the group-commit figure), then the mix for the rest.
  const plainFrom = perRound * rounds;
  const plainCount = Math.min(16 * 250, Math.floor((size - plainFrom) / 2));
  const concurrent = await timedMs(async () => {
    let next = plainFrom;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        for (let index = next++; index < plainFrom + plainCount; index = next++) {
          await call('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: `p${index}`, size_in_mib: 16, thin_provision: true });
        }
      }),
    );
  });
  const mix = await timedMs(() => createMix(node, call, plainFrom + plainCount, size));
  await node.actorStarter.idle();
  const after = memory();
  const listing = async (method: string) => {
    // Garbage of the creates is collected first: the stall measured is the listing's own.
    collect();
    const timed = await withStallMs(() => rpc(method, {}));
    collect();
    const chunked = await withStallMs(() => rpcChunks(method, {}));
    const result = (JSON.parse(timed.value) as { result: unknown }).result;
    const stringify = await timedMs(() => stringifyJson(result).length);
    return { ms: timed.ms, stallMs: timed.stallMs, chunkedStallMs: chunked.stallMs, stringifyMs: stringify.ms, bytes: timed.value.length };
  };
  const bdevs = await listing('bdev_get_bdevs');
  const lvols = await listing('bdev_lvol_get_lvols');
  // Deletes one after another (plain lvols made by the 16 callers): each should cost the same at any size.
  const deleteCount = Math.min(200, plainCount);
  const deletes = await timedMs(async () => {
    for (let index = plainFrom; index < plainFrom + deleteCount; index++) await call('bdev_lvol_delete', { name: `lvs/p${index}` });
  });
  const stop = await timedMs(() => node.shutdown());
  // Restart: attach the file again; the lvstore loads with every lvol. A node replays its bdevs
  // before it listens, so this call's end is when it would answer its first request.
  const remaining = size - deleteCount;
  // A restarted node is a fresh process: the old node's heap is collected first.
  collect();
  const restarted = new StorageNode(systemRuntime);
  const again = nodeCalls(restarted);
  const restartStart = performance.now();
  await again.call('bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  await again.rpc('bdev_lvol_get_lvstores', {});
  const firstAnswerMs = performance.now() - restartStart;
  // Resolvable at once, before the actors have all started: the last lvol by alias, every lvol by UUID.
  const last = `lvs/c${size - 1}`;
  const waiting = restarted.actorStarter.waitingCount;
  let resolvable = restarted.resolveLvol(last).lvol.name === `c${size - 1}` ? 'yes' : 'NO';
  await restarted.actorStarter.idle();
  const allStartedMs = performance.now() - restartStart;
  const ids = [...restarted.registry.allLvols()];
  if (ids.length !== remaining || ids.some(({ actor }) => !actor.isStarted)) resolvable = `NO (${ids.length} of ${remaining})`;
  resolvable += ` (${waiting} waiting at first answer)`;
  await restarted.shutdown();
  await rm(dir, { recursive: true, force: true });
  return {
    fsync,
    sequential,
    concurrentRate: plainCount / (concurrent.ms / 1000),
    mixRate: (size - plainFrom - plainCount) / (mix.ms / 1000),
    heapKib: (after.heap - before.heap) / size / 1024,
    rssKib: (after.rss - before.rss) / size / 1024,
    bdevs,
    lvols,
    stopMs: stop.ms,
    deleteMs: deletes.ms / deleteCount,
    firstAnswerMs,
    allStartedMs,
    resolvable,
  };
}

export async function scaleBenchmark(): Promise<void> {
  const sizes = (process.env.LVNODE_BENCH_SCALE_SIZES ?? '1000,10000').split(',').map(Number);
  const rounds = envInteger('LVNODE_BENCH_SCALE_ROUNDS', 3);
  console.log(`\n== scale: ${sizes.join(' / ')} lvols (10% snapshots; 1 MiB clusters, file bdev, in-process; ${rounds} rounds of ${sequentialPerRound} sequential creates) ==`);
  const createRows: string[][] = [];
  const otherRows: string[][] = [];
  for (const size of sizes) {
    const figures = await measureSize(size, rounds);
    const ratios = figures.sequential.map((rate, index) => rate / figures.fsync[index]!);
    const sequentialMedian = median(figures.sequential);
    createRows.push([
      String(size),
      `${fixed(sequentialMedian, 0)} (${range(figures.sequential, 0)})`,
      `${fixed(median(figures.fsync), 0)} (${range(figures.fsync, 0)})`,
      `${fixed(median(ratios), 2)}x (${range(ratios, 2)})`,
      fixed(figures.concurrentRate, 0),
      `${fixed(figures.concurrentRate / sequentialMedian, 1)}x`,
      fixed(figures.mixRate, 0),
      `${fixed(figures.heapKib, 1)} / ${fixed(figures.rssKib, 1)}`,
    ]);
    const listed = (listing: SizeFigures['bdevs']) =>
      `${fixed(listing.ms, 0)} (${fixed(listing.stringifyMs, 0)}) ${fixed(listing.stallMs, 1)} / ${fixed(listing.chunkedStallMs, 1)} ms, ${fixed(listing.bytes / 1e6, 1)} MB`;
    otherRows.push([
      String(size),
      listed(figures.bdevs),
      listed(figures.lvols),
      fixed(figures.deleteMs, 2),
      fixed(figures.stopMs, 0),
      fixed(figures.firstAnswerMs, 0),
      fixed(figures.allStartedMs, 0),
      figures.resolvable,
    ]);
  }
  printTable(['lvols', 'sequential creates/s (range)', 'fsync/s (range)', 'seq / fsync (range)', '16 callers /s', '16 / seq', 'mix, 16 callers /s', 'KiB/lvol heap / RSS'], createRows);
  console.log('');
  printTable(
    ['lvols', 'get_bdevs ms (stringify) stall whole / chunked', 'get_lvols ms (stringify) stall whole / chunked', 'ms per delete', 'stop ms', 'restart: 1st answer ms', 'all actors ms', 'resolvable'],
    otherRows,
  );
}
