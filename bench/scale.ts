// How the node's costs grow with the number of lvols (the scale issue), in-process on a sparse file
// in /tmp. At each size, the store is filled first (a Longhorn-like mix from 16 callers: every
// tenth lvol a snapshot whose origin becomes its clone; a third of the snapshots with a stored
// checksum registered through RPC, a third with a stopped walk's saved position, committed
// through the lvstore as the actor's stop would). Then, at that size, rounds of: the device's
// 4 KiB write + fdatasync rate (Node's callback fs, and in one pool trip through the native
// durable write), 400 sequential creates, 1,600 creates from 16 callers, and the deletes of the
// round's lvols (the sequential ones one after another: ms per delete), so each round starts at
// the same size. Then heap and RSS per lvol, bdev_get_bdevs / bdev_lvol_get_lvols through the
// JSON-RPC dispatcher (what a client waits for, serialization included) beside JSON.stringify of
// the same result, with the longest event-loop stall during each (the reply encoded whole, as
// ws.send(string) does, and in the pieces serializeResponseChunks gives), stop, and restart: to
// the first answer, and to every lvol actor started. A warm-up of 500 creates and deletes comes
// before anything is timed. `npm run bench -- wireCreates` measures creates over the wire.
// LVNODE_BENCH_SCALE_SIZES=1000,10000 picks the sizes; LVNODE_BENCH_SCALE_ROUNDS the rounds.
import { mkdtemp, rm } from 'node:fs/promises';
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
import { envInteger, fixed, fsyncRate, median, printTable } from './support.ts';

v8.setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };
const sequentialPerRound = 400;
const concurrentPerRound = 1600;

function memory(): { heap: number; rss: number } {
  collect();
  const usage = process.memoryUsage();
  return { heap: usage.heapUsed + usage.arrayBuffers, rss: usage.rss };
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
  /** The same write + fdatasync in one pool trip (native durable write); empty without the addon. */
  oneTrip: number[];
  sequential: number[];
  concurrent: number[];
  /** The fill: the mix (snapshots, checksum registrations, saved positions) from 16 callers, lvols per second. */
  mixRate: number;
  heapKib: number;
  rssKib: number;
  bdevs: { ms: number; stallMs: number; chunkedStallMs: number; stringifyMs: number; bytes: number };
  lvols: { ms: number; stallMs: number; chunkedStallMs: number; stringifyMs: number; bytes: number };
  stopMs: number;
  /** Milliseconds per sequential delete, at size. */
  deleteMs: number[];
  firstAnswerMs: number;
  allStartedMs: number;
  resolvable: string;
}

const create = (call: Call, name: string) => call('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: name, size_in_mib: 16, thin_provision: true });

/** `count` calls from `callers` callers at once, each one call at a time; calls per second. */
async function rate(callers: number, count: number, work: (index: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const timed = await timedMs(() =>
    Promise.all(
      Array.from({ length: callers }, async () => {
        for (let index = next++; index < count; index = next++) await work(index);
      }),
    ),
  );
  return count / (timed.ms / 1000);
}

async function measureSize(size: number, rounds: number): Promise<SizeFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-scale-'));
  const path = join(dir, 'disk.img');
  await FileDevice.createSparse(path, 16 * 1024 ** 3);
  const node = new StorageNode(systemRuntime);
  const { call, rpc, rpcChunks } = nodeCalls(node);
  await call('bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  await call('bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: 1024 * 1024 });
  // Warm-up: the create and delete paths compiled before anything is timed, then gone again.
  for (let index = 0; index < 500; index++) await create(call, `warm${index}`);
  await rate(16, 500, (index) => call('bdev_lvol_delete', { name: `lvs/warm${index}` }));
  await node.actorStarter.idle();
  const before = memory();
  const mix = await timedMs(() => createMix(node, call, 0, size));
  await node.actorStarter.idle();
  const after = memory();
  // At size: the probes and the creates alternate, so each ratio compares the same minute.
  const fsync: number[] = [];
  const oneTrip: number[] = [];
  const sequential: number[] = [];
  const concurrent: number[] = [];
  const deleteMs: number[] = [];
  for (let round = 0; round < rounds; round++) {
    fsync.push((await fsyncRate(dir))!);
    const fast = await fsyncRate(dir, { oneTrip: true });
    if (fast !== undefined) oneTrip.push(fast);
    sequential.push(await rate(1, sequentialPerRound, (index) => create(call, `r${round}s${index}`)));
    concurrent.push(await rate(16, concurrentPerRound, (index) => create(call, `r${round}c${index}`)));
    await node.actorStarter.idle();
    const deletes = await timedMs(async () => {
      for (let index = 0; index < sequentialPerRound; index++) await call('bdev_lvol_delete', { name: `lvs/r${round}s${index}` });
    });
    deleteMs.push(deletes.ms / sequentialPerRound);
    await rate(16, concurrentPerRound, (index) => call('bdev_lvol_delete', { name: `lvs/r${round}c${index}` }));
    if (process.env.LVNODE_BENCH_SCALE_VERBOSE) {
      console.log(`  round ${round}: fsync ${fixed(fsync[round]!, 0)}/s, one trip ${fixed(fast ?? 0, 0)}/s, creates ${fixed(sequential[round]!, 0)}/s, 16 callers ${fixed(concurrent[round]!, 0)}/s`);
    }
  }
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
  const stop = await timedMs(() => node.shutdown());
  // Restart: attach the file again; the lvstore loads with every lvol. A node replays its bdevs
  // before it listens, so this call's end is when it would answer its first request.
  const remaining = size;
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
    oneTrip,
    sequential,
    concurrent,
    mixRate: size / (mix.ms / 1000),
    heapKib: (after.heap - before.heap) / size / 1024,
    rssKib: (after.rss - before.rss) / size / 1024,
    bdevs,
    lvols,
    stopMs: stop.ms,
    deleteMs,
    firstAnswerMs,
    allStartedMs,
    resolvable,
  };
}

export async function scaleBenchmark(): Promise<void> {
  const sizes = (process.env.LVNODE_BENCH_SCALE_SIZES ?? '1000,10000').split(',').map(Number);
  const rounds = envInteger('LVNODE_BENCH_SCALE_ROUNDS', 3);
  console.log(
    `\n== scale: ${sizes.join(' / ')} lvols (10% snapshots; 1 MiB clusters, file bdev, in-process; at each size ${rounds} rounds of ${sequentialPerRound} sequential and ${concurrentPerRound} concurrent creates) ==`,
  );
  const createRows: string[][] = [];
  const otherRows: string[][] = [];
  for (const size of sizes) {
    const figures = await measureSize(size, rounds);
    const column = (values: number[], digits: number, suffix = '') =>
      values.length === 0 ? 'no addon' : `${fixed(median(values), digits)}${suffix} (${range(values, digits)})`;
    const perRound = (values: number[], against: number[]) => values.map((value, index) => value / against[index]!);
    createRows.push([
      String(size),
      column(figures.sequential, 0),
      column(figures.fsync, 0),
      column(perRound(figures.sequential, figures.fsync), 2, 'x'),
      column(figures.oneTrip.length > 0 ? perRound(figures.sequential, figures.oneTrip) : [], 2, 'x'),
      column(figures.concurrent, 0),
      column(perRound(figures.concurrent, figures.sequential), 1, 'x'),
      fixed(figures.mixRate, 0),
      `${fixed(figures.heapKib, 1)} / ${fixed(figures.rssKib, 1)}`,
    ]);
    const listed = (listing: SizeFigures['bdevs']) =>
      `${fixed(listing.ms, 0)} (${fixed(listing.stringifyMs, 0)}) ${fixed(listing.stallMs, 1)} / ${fixed(listing.chunkedStallMs, 1)} ms, ${fixed(listing.bytes / 1e6, 1)} MB`;
    otherRows.push([
      String(size),
      listed(figures.bdevs),
      listed(figures.lvols),
      `${fixed(median(figures.deleteMs), 2)} (${range(figures.deleteMs, 2)})`,
      fixed(figures.stopMs, 0),
      fixed(figures.firstAnswerMs, 0),
      fixed(figures.allStartedMs, 0),
      figures.resolvable,
    ]);
  }
  printTable(
    ['lvols', 'sequential creates/s', 'write+fdatasync/s', 'seq / fsync', 'seq / one-trip fsync', '16 callers creates/s', '16 / seq', 'fill (mix, 16) /s', 'KiB/lvol heap / RSS'],
    createRows,
  );
  console.log('');
  printTable(
    ['lvols', 'get_bdevs ms (stringify) stall whole / chunked', 'get_lvols ms (stringify) stall whole / chunked', 'ms per delete', 'stop ms', 'restart: 1st answer ms', 'all actors ms', 'resolvable'],
    otherRows,
  );
}
