// `npm run bench -- wireListing`: the longest event-loop stall of a real node process while it
// answers a full listing over the real WebSocket, beside the longest stall while it sits idle for
// as long (SPEC §10: no request holds the event loop for more than a few milliseconds).
//
// The node runs in its own process (`lvnode serve` on a sparse file); its own event-loop delay
// histogram (node_get_stats, reset before each phase) gives the stall, so the client's parsing of
// a 90 MB reply in this process does not count. Sizes: LVNODE_BENCH_WIRE_SIZES (default 10000,100000).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { startServeProcess, stopProcess } from './childNode.ts';
import { fixed, median } from './support.ts';

const rounds = 3;
const callers = 16;

interface Stats {
  event_loop_delay_ms: { max: number };
}

/** The node's longest event-loop stall while `work` runs (its histogram reset just before). */
async function stallDuring(client: RpcClient, work: () => Promise<unknown>): Promise<{ stallMs: number; ms: number }> {
  await client.call('node_get_stats', { reset: true });
  const startMs = performance.now();
  await work();
  const ms = performance.now() - startMs;
  const stats = await client.call<Stats>('node_get_stats');
  return { stallMs: stats.event_loop_delay_ms.max, ms };
}

async function measure(size: number, clients: RpcClient[], created: number): Promise<void> {
  const [client] = clients;
  let next = created;
  await Promise.all(
    clients.map(async (caller) => {
      while (next < size) {
        const index = next++;
        await caller.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: `w${index}`, size_in_mib: 4, thin_provision: true });
      }
    }),
  );
  const idle: number[] = [];
  const bdevs: Array<{ stallMs: number; ms: number }> = [];
  const lvols: Array<{ stallMs: number; ms: number }> = [];
  let bytes = 0;
  for (let round = 0; round < rounds; round++) {
    const listed = await stallDuring(client!, async () => {
      const result = await client!.call<unknown[]>('bdev_get_bdevs');
      bytes = JSON.stringify(result, (_key, value: unknown) => (typeof value === 'bigint' ? 0 : value)).length;
    });
    bdevs.push(listed);
    lvols.push(await stallDuring(client!, () => client!.call('bdev_lvol_get_lvols')));
    // The baseline: the same node doing nothing for as long as the listing took.
    idle.push((await stallDuring(client!, () => new Promise((resolve) => setTimeout(resolve, listed.ms)))).stallMs);
  }
  const range = (values: number[]) => `${fixed(Math.min(...values), 1)}–${fixed(Math.max(...values), 1)}`;
  const idleMedian = median(idle);
  for (const [label, phases] of [
    ['bdev_get_bdevs', bdevs],
    ['bdev_lvol_get_lvols', lvols],
  ] as const) {
    const stalls = phases.map((phase) => phase.stallMs);
    console.log(
      `  ${String(size).padStart(6)} lvols  ${label.padEnd(20)} ${fixed(median(phases.map((phase) => phase.ms)), 0).padStart(5)} ms  longest stall ${fixed(median(stalls), 1)} ms (${range(stalls)})  idle ${fixed(idleMedian, 1)} ms (${range(idle)})  ratio ${fixed(median(stalls) / Math.max(idleMedian, 0.001), 1)}x`,
    );
  }
  console.log(`  ${String(size).padStart(6)} lvols  bdev_get_bdevs reply ${fixed(bytes / 1e6, 1)} MB`);
}

export async function wireListing(): Promise<void> {
  const sizes = (process.env.LVNODE_BENCH_WIRE_SIZES ?? '10000,100000').split(',').map(Number);
  console.log(`\nwireListing: longest event-loop stall of the node answering a full listing over WebSocket, vs idle (median of ${rounds})`);
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-wire-'));
  const { child, url, token } = await startServeProcess(join(dir, 'data'));
  const clients: RpcClient[] = [];
  try {
    for (let index = 0; index < callers; index++) clients.push(await RpcClient.connect(url, { token }));
    let created = 0;
    for (const size of sizes.sort((a, b) => a - b)) {
      await measure(size, clients, created);
      created = size;
    }
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await stopProcess(child);
    await rm(dir, { recursive: true, force: true });
  }
}
