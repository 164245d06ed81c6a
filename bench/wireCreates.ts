// `npm run bench -- wireCreates`: lvol creates as clients see them, over the real WebSocket to a
// real node process, at 1k / 10k / 100k lvols (LVNODE_BENCH_WIRE_CREATE_SIZES), beside the file
// system's 4 KiB write + fdatasync rate measured in the same rounds.
//
// The store is filled to each size first (16 clients; every tenth lvol a snapshot of the one made
// before it), then each round, at that size: the fsync probes, 400 creates from one client one
// after another, 3,200 creates from 16 clients, and the deletes of the round's lvols (16 clients),
// so every round starts at the same size. The probes run in this process on the node's file
// system: write + fdatasync through Node's callback fs (the yardstick, two trips to a
// pool thread) and the same pair in one trip through the node's native durable write (the floor
// of one journal append). RSS is the node process's, from /proc. After the largest size: stop
// (SIGTERM to exit), restart to the first answer, and to every lvol listed.
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { startServeProcess, stopProcess } from './childNode.ts';
import { envInteger, fixed, fsyncRate, median, printTable } from './support.ts';

const callers = 16;
const sequentialPerRound = 400;
const concurrentPerRound = 3200;
const lvsName = 'lvs0';

function rssBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : Number.NaN;
}

function range(values: readonly number[], digits: number): string {
  return `${fixed(Math.min(...values), digits)}–${fixed(Math.max(...values), digits)}`;
}

/** Runs `count` calls from `clients` at once, each client one call at a time; calls per second. */
async function callsPerSecond(clients: readonly RpcClient[], count: number, call: (client: RpcClient, index: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    clients.map(async (client) => {
      for (let index = next++; index < count; index = next++) await call(client, index);
    }),
  );
  return count / ((performance.now() - start) / 1000);
}

const create = (client: RpcClient, name: string) => client.call('bdev_lvol_create', { lvs_name: lvsName, lvol_name: name, size_in_mib: 16, thin_provision: true });

/** Fills the store from `from` to `size` lvols: every tenth a snapshot of the lvol its client made just before. */
async function fill(clients: readonly RpcClient[], from: number, size: number): Promise<number> {
  let next = from;
  const start = performance.now();
  await Promise.all(
    clients.map(async (client) => {
      for (let index = next++; index < size; index = next++) {
        if (index % 10 === 9 && index - 1 >= from) {
          // The origin may be another client's and not yet made: then this one is a plain lvol.
          const made = await client.call<unknown[]>('bdev_get_bdevs', { name: `${lvsName}/f${index - 1}` }).catch(() => []);
          if (made.length > 0) {
            await client.call('bdev_lvol_snapshot', { lvol_name: `${lvsName}/f${index - 1}`, snapshot_name: `f${index}` });
            continue;
          }
        }
        await create(client, `f${index}`);
      }
    }),
  );
  return (size - from) / ((performance.now() - start) / 1000);
}

interface Round {
  fsync: number;
  oneTrip: number | undefined;
  sequential: number;
  concurrent: number;
  deletes: number;
}

async function roundAt(clients: readonly RpcClient[], dir: string, round: number): Promise<Round> {
  const fsync = (await fsyncRate(dir, { ms: 700 }))!;
  const oneTrip = await fsyncRate(dir, { ms: 700, oneTrip: true });
  const [first] = clients;
  const sequential = await callsPerSecond([first!], sequentialPerRound, (client, index) => create(client, `r${round}s${index}`));
  const concurrent = await callsPerSecond(clients, concurrentPerRound, (client, index) => create(client, `r${round}c${index}`));
  const names = [
    ...Array.from({ length: sequentialPerRound }, (_, index) => `${lvsName}/r${round}s${index}`),
    ...Array.from({ length: concurrentPerRound }, (_, index) => `${lvsName}/r${round}c${index}`),
  ];
  const deletes = await callsPerSecond(clients, names.length, (client, index) => client.call('bdev_lvol_delete', { name: names[index] }));
  return { fsync, oneTrip, sequential, concurrent, deletes };
}

export async function wireCreates(): Promise<void> {
  const sizes = (process.env.LVNODE_BENCH_WIRE_CREATE_SIZES ?? '1000,10000').split(',').map(Number).sort((a, b) => a - b);
  const rounds = envInteger('LVNODE_BENCH_WIRE_CREATE_ROUNDS', 3);
  console.log(`\n== wireCreates: creates over WebSocket to a node process at ${sizes.join(' / ')} lvols (${rounds} rounds at each size) ==`);
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-wire-creates-'));
  const dataDir = join(dir, 'data');
  let node = await startServeProcess(dataDir);
  const clients: RpcClient[] = [];
  const rows: string[][] = [];
  try {
    for (let index = 0; index < callers; index++) clients.push(await RpcClient.connect(node.url, { token: node.token }));
    // Warm-up (the node's code paths compiled before anything is timed), then gone again.
    for (let index = 0; index < 500; index++) await create(clients[0]!, `warm${index}`);
    await callsPerSecond(clients, 500, (client, index) => client.call('bdev_lvol_delete', { name: `${lvsName}/warm${index}` }));
    const emptyRss = rssBytes(node.child.pid!);
    let filled = 0;
    for (const size of sizes) {
      const fillRate = await fill(clients, filled, size);
      filled = size;
      const rssKib = (rssBytes(node.child.pid!) - emptyRss) / size / 1024;
      const results: Round[] = [];
      for (let round = 0; round < rounds; round++) {
        results.push(await roundAt(clients, dir, round));
        if (process.env.LVNODE_BENCH_VERBOSE) console.log(`  ${size} round ${round}:`, results[round]);
      }
      const seqRatios = results.map((round) => round.sequential / round.fsync);
      const oneTripRatios = results.filter((round) => round.oneTrip !== undefined).map((round) => round.sequential / round.oneTrip!);
      const concurrentRatios = results.map((round) => round.concurrent / round.sequential);
      const column = (values: number[], digits: number, suffix = '') => `${fixed(median(values), digits)}${suffix} (${range(values, digits)})`;
      rows.push([
        String(size),
        column(results.map((round) => round.sequential), 0),
        column(results.map((round) => round.fsync), 0),
        column(seqRatios, 2, 'x'),
        oneTripRatios.length > 0 ? column(oneTripRatios, 2, 'x') : 'no addon',
        column(results.map((round) => round.concurrent), 0),
        column(concurrentRatios, 1, 'x'),
        column(results.map((round) => round.deletes), 0),
        fixed(fillRate, 0),
        fixed(rssKib, 1),
      ]);
    }
    printTable(
      ['lvols', 'sequential creates/s', 'write+fdatasync/s', 'seq / fsync', 'seq / one-trip fsync', '16 clients creates/s', '16 / seq', 'deletes/s (16)', 'fill /s (16)', 'RSS KiB/lvol'],
      rows,
    );
    // Stop, then restart on the same data directory: to the first answer and to every lvol listed.
    await Promise.all(clients.splice(0).map((client) => client.close()));
    const stopStart = performance.now();
    await stopProcess(node.child);
    const stopMs = performance.now() - stopStart;
    const restartStart = performance.now();
    node = await startServeProcess(dataDir);
    const client = await RpcClient.connect(node.url, { token: node.token });
    clients.push(client);
    await client.call('bdev_lvol_get_lvstores');
    const firstAnswerMs = performance.now() - restartStart;
    const listed = await client.call<unknown[]>('bdev_lvol_get_lvols', { lvs_name: lvsName });
    const listedMs = performance.now() - restartStart;
    console.log(
      `  at ${filled} lvols: stop ${fixed(stopMs, 0)} ms; restart to first answer ${fixed(firstAnswerMs, 0)} ms, to all ${listed.length} listed ${fixed(listedMs, 0)} ms` +
        (listed.length === filled ? '' : ` (EXPECTED ${filled})`),
    );
  } finally {
    await Promise.all(clients.map((client) => client.close().catch(() => undefined)));
    await stopProcess(node.child);
    await rm(dir, { recursive: true, force: true });
  }
}
