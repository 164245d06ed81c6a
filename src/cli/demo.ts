// `lvnode demo`: the SPEC §6.9 scenario against a running node, narrated, with progress bars.
import { parseArgs } from 'node:util';
import { crc64, crc64Combine } from '../checksum/crc64.ts';
import { mibBytes } from '../constants.ts';
import { connectToNode, nodeConnectionOptions } from './nodeConnection.ts';
import { RpcCallError, type RpcClient } from './rpcClient.ts';

interface Status {
  state: string;
  clusters_done: number;
  clusters_total: number;
  reason?: string;
}

const say = (text: string) => process.stdout.write(`${text}\n`);
// Progress bars redraw one line with \r; without a terminal only the final state is printed.
const live = process.stdout.isTTY === true;

function draw(line: string, final: boolean): void {
  if (live) process.stdout.write(`\r    ${line}${final ? '\n' : ''}`);
  else if (final) say(`    ${line}`);
}

function bar(done: number, total: number, width = 30): string {
  const filled = total === 0 ? width : Math.round((done / total) * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${done}/${total} clusters`;
}

/** Polls status until `until` holds or `settled` resolves, drawing a progress bar. */
async function watch(client: RpcClient, name: string, until: (status: Status) => boolean, settled?: Promise<unknown>): Promise<Status> {
  let finished = false;
  void settled?.then(() => (finished = true));
  for (;;) {
    const status = await client.call<Status>('bdev_lvol_get_checksum_status', { name });
    const stop = until(status) || finished;
    draw(`${bar(status.clusters_done, status.clusters_total)} ${status.state.padEnd(10)}`, stop);
    if (stop) return status;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Starts a registration on `client`; the promise settles with the result or the RPC error. */
function register(client: RpcClient, name: string): Promise<unknown> {
  return client.call('bdev_lvol_register_snapshot_checksum', { name }).catch((error: unknown) => error);
}

function describeOutcome(outcome: unknown): string {
  if (outcome instanceof RpcCallError) return `error ${outcome.code} "${outcome.message}" ${JSON.stringify(outcome.data ?? {})}`;
  return `result ${JSON.stringify(outcome)}`;
}

export async function runDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { ...nodeConnectionOptions, 'size-mib': { type: 'string' }, lvs: { type: 'string' } },
    strict: true,
  });
  const sizeMib = Number(values['size-mib'] ?? 256);
  const lvs = values.lvs ?? 'lvs0';
  const a = await connectToNode(values);
  const b = await connectToNode(values);
  const suffix = Date.now().toString(36);
  const volume = `demo-${suffix}`;
  const snapshot = `demo-snap-${suffix}`;
  try {
    const [store] = await a.call<Array<{ cluster_size: number }>>('bdev_lvol_get_lvstores', { lvs_name: lvs });
    const clusterBytes = store!.cluster_size;
    say(`1. Create thick lvol ${lvs}/${volume} of ${sizeMib} MiB and write test data (one byte value per cluster).`);
    await a.call('bdev_lvol_create', { lvs_name: lvs, lvol_name: volume, size_in_mib: sizeMib, thin_provision: false });
    const clusterCount = Math.ceil((sizeMib * mibBytes) / clusterBytes);
    let expected = 0n;
    for (let index = 0; index < clusterCount; index++) {
      const fill = (index * 37 + 1) & 0xff;
      await a.call('node_lvol_write', { name: `${lvs}/${volume}`, offset: index * clusterBytes, fill_byte: fill, length: clusterBytes });
      expected = crc64Combine(expected, crc64(Buffer.alloc(clusterBytes, fill)), clusterBytes);
      draw(`${bar(index + 1, clusterCount)} written`, index + 1 === clusterCount);
    }
    say(`    expected checksum, computed here over the written bytes: ${expected}`);

    say(`2. Snapshot it as ${lvs}/${snapshot}; client A registers the checksum.`);
    await a.call('bdev_lvol_snapshot', { lvol_name: `${lvs}/${volume}`, snapshot_name: snapshot });
    const name = `${lvs}/${snapshot}`;
    const first = register(a, name);
    await watch(b, name, (s) => s.state === 'computing' && s.clusters_done >= 1);

    say('3. While it runs, client B sends bdev_lvol_stop_snapshot_checksum.');
    const stopStart = performance.now();
    const stopped = await b.call('bdev_lvol_stop_snapshot_checksum', { name }).catch((error: unknown) => error);
    if (stopped instanceof RpcCallError && stopped.code === -3) {
      say('    the walk had already finished (stop answered -3 "No such process"); try a larger --size-mib');
    } else if (stopped instanceof Error) {
      throw stopped;
    } else {
      say(`    stop answered ${JSON.stringify(stopped)} after ${(performance.now() - stopStart).toFixed(1)} ms, once the in-flight cluster finished`);
    }
    say(`    client A's register: ${describeOutcome(await first)}`);
    const afterStop = await b.call<Status>('bdev_lvol_get_checksum_status', { name });
    say(`    status: ${afterStop.state}, ${afterStop.clusters_done}/${afterStop.clusters_total} clusters, reason ${afterStop.reason}`);

    say('4. Later operations work: a new registration runs to the end.');
    const second = register(a, name);
    await watch(b, name, () => false, second);
    say(`    client A's register: ${describeOutcome(await second)}`);
    const { checksum } = await b.call<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name });
    say(`    stored checksum ${checksum}: ${BigInt(checksum) === expected ? 'matches' : 'DOES NOT MATCH'} the value computed here`);

    say('5. Second round: register again, and client B deletes the snapshot while it runs (a priority operation).');
    const third = register(a, name);
    await watch(b, name, (s) => s.state === 'computing' && s.clusters_done >= 1);
    const deleteStart = performance.now();
    await b.call('bdev_lvol_delete', { name });
    say(`    bdev_lvol_delete answered true after ${(performance.now() - deleteStart).toFixed(1)} ms: no "Device or resource busy"`);
    say(`    client A's register: ${describeOutcome(await third)}`);
    const ok = BigInt(checksum) === expected;
    say(ok ? 'Demo finished: stop and preemption both left the node ready for the next operation.' : 'Demo finished with a checksum mismatch.');
    return ok ? 0 : 1;
  } finally {
    await a.call('bdev_lvol_delete', { name: `${lvs}/${volume}` }).catch(() => undefined);
    await a.close();
    await b.close();
  }
}
