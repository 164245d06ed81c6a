// Goal: the SPEC §6.9 scenario over a real WebSocket with two clients, on a 256 MiB thick lvol
// whose data an unmodified NBD client (qemu-img) wrote: stop and priority delete both interrupt a
// running checksum cleanly, and a new registration yields the independently computed value.
// Without qemu-img (and without LVNODE_REQUIRE_NBD_CLIENTS=1) the data goes in through the node's
// internal I/O API instead, and the scenario still runs.
import { randomFillSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCRC64 } from 'hash-wasm';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import type { InspectionRecord } from '../../src/actors/inspector.ts';
import { nbdUri } from '../../src/transport/nbd/server.ts';
import { type ChecksumStatusView, type TestNode, pollStatus, rpcError, startTestNode } from './helpers.ts';
import { nbdClientsSkipReason, runToolOk } from './nbdTools.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const mib = 1024 * 1024;
const lvolMib = 256;
const clusterBytes = 4 * mib;

let node: TestNode;
let a: RpcClient;
let b: RpcClient;
let expectedChecksum: bigint;
let written: Buffer[];
let imageDir: string;
let imagePath: string | undefined;

/** CRC-64/GO-ISO over the written bytes in one pass, with hash-wasm directly: independent of lvnode's walk. */
async function independentChecksum(parts: Buffer[]): Promise<bigint> {
  const hasher = await createCRC64('d800000000000000');
  hasher.init();
  for (const part of parts) hasher.update(part);
  return BigInt(`0x${hasher.digest('hex')}`);
}

async function freshSnapshot(lvolName: string, snapshotName: string): Promise<string> {
  await a.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: lvolName, size_in_mib: lvolMib, thin_provision: false });
  if (imagePath) {
    // The "write test data" step: a client nobody here wrote, over NBD.
    await a.call('nbd_start_export', { bdev_name: `lvs0/${lvolName}`, export_name: lvolName });
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', imagePath, nbdUri(node.running.nbdAddress!, lvolName)]);
    await a.call('nbd_stop_export', { export_name: lvolName });
  } else {
    for (let index = 0; index < written.length; index++) {
      await node.running.node.bdev(`lvs0/${lvolName}`).write(index * clusterBytes, written[index]!);
    }
  }
  await a.call('bdev_lvol_snapshot', { lvol_name: `lvs0/${lvolName}`, snapshot_name: snapshotName });
  return `lvs0/${snapshotName}`;
}

beforeAll(async () => {
  node = await startTestNode({ nbdListen: '127.0.0.1:0', nbdInsecureTcp: true });
  a = await node.connect();
  b = await node.connect();
  written = Array.from({ length: (lvolMib * mib) / clusterBytes }, () => randomFillSync(Buffer.alloc(clusterBytes)));
  expectedChecksum = await independentChecksum(written);
  imageDir = await mkdtemp(join(tmpdir(), 'lvnode-scenario-'));
  if (nbdClientsSkipReason(['qemu-img']) === undefined) {
    imagePath = join(imageDir, 'data.raw');
    await writeFile(imagePath, Buffer.concat(written));
  }
});

afterAll(async () => {
  await node.close();
  await rm(imageDir, { recursive: true, force: true });
});

describe('checksum scenario over WebSocket (SPEC §6.9)', () => {
  it('stops from client B after the in-flight cluster, then re-registers to the independently computed value', async () => {
    const name = await freshSnapshot('vol-stop', 'snap-stop');
    const events: InspectionRecord[] = [];
    const snapshotUuid = (await a.call<Array<{ uuid: string }>>('bdev_get_bdevs', { name }))[0]!.uuid;
    b.on('inspect_events', (params) => events.push(...(params as { events: InspectionRecord[] }).events));
    await b.call('inspect_subscribe', { actor_id: name });

    const registration = a.call('bdev_lvol_register_snapshot_checksum', { name }).catch((error: unknown) => error);
    const before = await pollStatus(b, name, (status) => status.state === 'computing' && status.clusters_done >= 1);
    expect(await b.call('bdev_lvol_stop_snapshot_checksum', { name })).toBe(true);
    // The stop answer came once the walk had really stopped: status is already aborted.
    const after = await b.call<ChecksumStatusView>('bdev_lvol_get_checksum_status', { name });
    expect(after).toMatchObject({ state: 'aborted', reason: 'stopped', resumable: true });
    expect(after.clusters_done).toBeGreaterThanOrEqual(before.clusters_done);
    expect(after.clusters_done).toBeLessThan(after.clusters_total);

    const error = await registration;
    expect(error).toMatchObject({ code: -32603, message: 'Interrupted system call' });
    expect((error as { data: unknown }).data).toEqual({ reason: 'stopped', clusters_done: after.clusters_done, clusters_total: 64 });

    // The inspection stream shows the order: stop delivered, the in-flight step finished, then aborted.
    await pollStatus(b, name, () => events.some((event) => event.type === 'snapshot' && checksumStateOf(event) === 'aborted'));
    expect(events.every((event) => event.actor_id === snapshotUuid)).toBe(true);
    const stopAt = events.findIndex((event) => event.type === 'event' && eventType(event) === 'checksum.stop');
    const stepAfterStop = events.findIndex((event, index) => index > stopAt && event.type === 'event' && eventType(event) === 'xstate.done.actor.clusterStep');
    const abortedAt = events.findIndex((event) => event.type === 'snapshot' && checksumStateOf(event) === 'aborted');
    expect(stopAt).toBeGreaterThanOrEqual(0);
    expect(stepAfterStop).toBeGreaterThan(stopAt);
    expect(abortedAt).toBeGreaterThan(stepAfterStop);
    await b.call('inspect_unsubscribe', {});

    // Stop with nothing running: -3.
    const nothing = await rpcError(b.call('bdev_lvol_stop_snapshot_checksum', { name }));
    expect(nothing).toMatchObject({ code: -3, message: 'No such process' });
    // No earlier value and the last run aborted: -125 with the state.
    const canceled = await rpcError(b.call('bdev_lvol_get_snapshot_checksum', { name }));
    expect(canceled).toMatchObject({ code: -125, message: 'Operation canceled' });
    expect(canceled.data).toMatchObject({ state: 'aborted' });

    expect(await a.call('bdev_lvol_register_snapshot_checksum', { name })).toBe(true);
    const { checksum } = await b.call<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name });
    expect(typeof checksum).toBe('bigint');
    expect(checksum).toBe(expectedChecksum);
    expect(await b.call('bdev_lvol_get_checksum_status', { name })).toMatchObject({ state: 'done', clusters_done: 64, bytes_done: lvolMib * mib });
  });

  it('answers a stop on the same connection as the running register', async () => {
    const name = await freshSnapshot('vol-same', 'snap-same');
    const registration = a.call('bdev_lvol_register_snapshot_checksum', { name }).catch((error: unknown) => error);
    await pollStatus(b, name, (status) => status.state === 'computing');
    expect(await a.call('bdev_lvol_stop_snapshot_checksum', { name })).toBe(true);
    expect(await registration).toMatchObject({ code: -32603, message: 'Interrupted system call' });
  });

  it('lets bdev_lvol_delete of the snapshot preempt the checksum instead of failing busy', async () => {
    const name = await freshSnapshot('vol-del', 'snap-del');
    const registration = a.call('bdev_lvol_register_snapshot_checksum', { name }).catch((error: unknown) => error);
    await pollStatus(b, name, (status) => status.state === 'computing' && status.clusters_done >= 1);
    expect(await b.call('bdev_lvol_delete', { name })).toBe(true);
    const error = await registration;
    expect(error).toMatchObject({ code: -32603, message: 'Interrupted system call' });
    expect((error as { data: { reason: string } }).data.reason).toBe('preempted by bdev_lvol_delete');
    expect(await rpcError(b.call('bdev_lvol_get_snapshot_checksum', { name }))).toMatchObject({ code: -19, message: 'No such device' });
    // The snapshot merged into its only clone: the lvol still reads the written bytes.
    const head = await readBdev(node.running.node.bdev('lvs0/vol-del'), 0, 4096);
    expect(head.equals(written[0]!.subarray(0, 4096))).toBe(true);
    const tail = await readBdev(node.running.node.bdev('lvs0/vol-del'), (lvolMib * mib) - 4096, 4096);
    expect(tail.equals(written.at(-1)!.subarray(clusterBytes - 4096))).toBe(true);
  });

  it('refuses a checksum of a non-snapshot with "Operation not permitted" and of an unknown name with -19', async () => {
    await a.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'plain', size_in_mib: 4, thin_provision: true });
    expect(await rpcError(a.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/plain' }))).toMatchObject({
      code: -32603,
      message: 'Operation not permitted',
    });
    expect(await rpcError(a.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/nope' }))).toMatchObject({
      code: -19,
      message: 'No such device',
    });
  });

  it('refuses a second registration while one runs with -17', async () => {
    const name = await freshSnapshot('vol-dup', 'snap-dup');
    const first = a.call('bdev_lvol_register_snapshot_checksum', { name });
    await pollStatus(b, name, (status) => status.state === 'computing');
    expect(await rpcError(b.call('bdev_lvol_register_snapshot_checksum', { name }))).toMatchObject({ code: -17, message: 'File exists' });
    expect(await first).toBe(true);
  });
});

function checksumStateOf(event: InspectionRecord): string | undefined {
  return (event.snapshot as { value?: { checksum?: string } } | undefined)?.value?.checksum;
}

function eventType(event: InspectionRecord): string | undefined {
  return (event.event as { type?: string } | undefined)?.type;
}
