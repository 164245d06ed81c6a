// Goal: Longhorn's replica rebuild between two lvnode nodes over real NVMe/TCP on 127.0.0.1, with
// the RPC sequence longhorn-spdk-engine's Replica code sends (pkg/spdk/replica.go: RebuildingSrcStart,
// RebuildingDstStart, rebuildingDstShallowCopyPrepare, RebuildingSrcShallowCopyStart,
// rebuildingDstRangeShallowCopy, RebuildingDstSnapshotCreate, RebuildingDstFinish). Full rebuild,
// then a delta one where the destination's outdated snapshot is corrected by a range shallow copy
// of only the clusters whose range checksums differ. Every snapshot and the destination head are
// compared with a byte array per volume written by this test (the oracle), and the range
// checksums of both nodes are compared.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { seededRandom } from '../seededRandom.ts';
import { freePort } from '../transport/nvmf/harness.ts';
import { type TestNode, startTestNode } from './helpers.ts';

const hostnqn = 'nqn.2014-08.org.nvmexpress:uuid:a4e4c9d9-4b1a-4a35-8b7e-7d7a1a1c4f5e';
let nodeA: TestNode;
let nodeB: TestNode;
let a: RpcClient;
let b: RpcClient;
let cluster: number;
const clusters = 8;

beforeAll(async () => {
  [nodeA, nodeB] = await Promise.all([
    startTestNode({ diskBytes: 64 * 1024 * 1024, nvmfInsecureTcp: true }),
    startTestNode({ diskBytes: 64 * 1024 * 1024, nvmfInsecureTcp: true }),
  ]);
  [a, b] = await Promise.all([nodeA.connect(), nodeB.connect()]);
  // Longhorn's disks: 1 MiB clusters (pkg/spdk/disk.go); RAM-backed here to keep the test quick.
  cluster = 1024 * 1024;
  for (const client of [a, b]) {
    await client.call('bdev_malloc_create', { name: 'rbmem', num_blocks: (64 * cluster) / 4096, block_size: 4096 });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'rbmem', lvs_name: 'rb', cluster_sz: cluster });
  }
});

afterAll(async () => {
  await Promise.all([nodeA?.close(), nodeB?.close()]);
});

/** The volume as written here: the head, and a frozen copy per snapshot. */
class Oracle {
  readonly head: Buffer;
  readonly snapshots = new Map<string, Buffer>();
  private readonly random = seededRandom(23);
  constructor(bytes: number) {
    this.head = Buffer.alloc(bytes);
  }
  data(bytes: number): Buffer {
    return Buffer.from(Array.from({ length: bytes }, () => Math.floor(this.random() * 256)));
  }
  freeze(name: string): void {
    this.snapshots.set(name, Buffer.from(this.head));
  }
}

async function write(clients: RpcClient[], lvol: string, offset: number, data: Buffer, oracle?: Oracle): Promise<void> {
  for (const client of clients) {
    for (let at = 0; at < data.length; at += 256 * 1024) {
      await client.call('node_lvol_write', { name: lvol, offset: offset + at, data: data.subarray(at, at + 256 * 1024).toString('base64') });
    }
  }
  if (oracle) data.copy(oracle.head, offset);
}

async function read(client: RpcClient, lvol: string, bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; at < bytes; at += 512 * 1024) {
    parts.push(Buffer.from(await client.call<string>('node_lvol_read', { name: lvol, offset: at, length: Math.min(512 * 1024, bytes - at) }), 'base64'));
  }
  return Buffer.concat(parts);
}

/** StartExposeBdev: a subsystem with one namespace, Longhorn's internal host, a listener on 127.0.0.1. */
async function expose(client: RpcClient, nqn: string, bdev: string): Promise<string> {
  await client.call('nvmf_create_transport', { trtype: 'TCP' }).catch(() => undefined);
  await client.call('nvmf_create_subsystem', { nqn, allow_any_host: false });
  await client.call('nvmf_subsystem_add_host', { nqn, host: hostnqn });
  await client.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: bdev } });
  const port = String(await freePort());
  await client.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port } });
  return port;
}

/** connectNVMfBdev: Longhorn's attach parameters; the namespace bdev is <name>n1. */
async function attach(client: RpcClient, name: string, nqn: string, port: string): Promise<string> {
  const bdevs = await client.call<string[]>('bdev_nvme_attach_controller', {
    name, trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn, hostnqn,
    ctrlr_loss_timeout_sec: 15, reconnect_delay_sec: 2, fast_io_fail_timeout_sec: 10, multipath: 'disable',
  });
  expect(bdevs).toEqual([`${name}n1`]);
  return `${name}n1`;
}

async function waitCopy(client: RpcClient, operationId: number): Promise<Record<string, unknown>> {
  for (;;) {
    const status = await client.call<Record<string, unknown>>('bdev_lvol_check_shallow_copy', { operation_id: operationId });
    if (status.state !== 'in progress') return status;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function rangeChecksums(client: RpcClient, snapshot: string): Promise<Array<{ cluster_index: number; checksum: unknown }>> {
  await client.call('bdev_lvol_register_snapshot_range_checksums', { name: snapshot });
  return client.call('bdev_lvol_get_snapshot_range_checksums', { name: snapshot, cluster_start_index: 0, cluster_count: clusters });
}

async function allocated(client: RpcClient, lvol: string): Promise<number> {
  const [bdev] = await client.call<Array<{ driver_specific: { lvol: { num_allocated_clusters: number } } }>>('bdev_get_bdevs', { name: lvol });
  return bdev!.driver_specific.lvol.num_allocated_clusters;
}

/**
 * One snapshot onto the destination, as RebuildingDstShallowCopyStart + RebuildingSrcShallowCopyStart
 * (or, with `ranges`, RebuildingSrcRangeShallowCopyStart) + RebuildingDstSnapshotCreate do: B exposes
 * its rebuilding lvol, A attaches it and copies, A detaches, B snapshots it under the same name and
 * deletes the rebuilding lvol. Returns the copy's final status.
 */
async function copySnapshot(snapshot: string, rebuilding: string, ranges?: number[]): Promise<Record<string, unknown>> {
  const nqn = 'nqn.2023-01.io.longhorn.spdk:dst-rebuilding';
  const [dst] = await b.call<Array<{ uuid: string }>>('bdev_get_bdevs', { name: rebuilding });
  const port = await expose(b, nqn, dst!.uuid);
  const bdev = await attach(a, 'dstRebuilding', nqn, port);
  const { operation_id } = ranges
    ? await a.call<{ operation_id: number }>('bdev_lvol_start_range_shallow_copy', { src_lvol_name: `rb/src-${snapshot}`, dst_bdev_name: bdev, clusters: ranges })
    : await a.call<{ operation_id: number }>('bdev_lvol_start_shallow_copy', { src_lvol_name: `rb/src-${snapshot}`, dst_bdev_name: bdev });
  const status = await waitCopy(a, operation_id);
  expect(await a.call('bdev_nvme_detach_controller', { name: 'dstRebuilding' })).toBe(true);
  expect(await b.call('nvmf_delete_subsystem', { nqn })).toBe(true);
  await b.call('bdev_lvol_snapshot', { lvol_name: rebuilding, snapshot_name: `dst-${snapshot}` });
  expect(await b.call('bdev_lvol_delete', { name: rebuilding })).toBe(true);
  return status;
}

/** RebuildingSrcStart + RebuildingDstStart: A exposes the rebuild snapshot, B attaches it and clones its new head on it. */
async function startRebuild(snapshot: string): Promise<string> {
  const nqn = `nqn.2023-01.io.longhorn.spdk:src-${snapshot}`;
  const [src] = await a.call<Array<{ uuid: string }>>('bdev_get_bdevs', { name: `rb/src-${snapshot}` });
  const port = await expose(a, nqn, src!.uuid);
  const external = await attach(b, `external-${snapshot}`, nqn, port);
  await b.call('bdev_lvol_delete', { name: 'rb/dst' }).catch(() => undefined);
  await b.call('bdev_lvol_clone_bdev', { bdev: external, lvs_name: 'rb', clone_name: 'dst' });
  return nqn;
}

/** RebuildingDstFinish + RebuildingSrcFinish: the head's parent becomes the rebuilt snapshot, the external one goes. */
async function finishRebuild(snapshot: string, nqn: string): Promise<void> {
  expect(await b.call('bdev_lvol_set_parent', { lvol_name: 'rb/dst', parent_name: `rb/dst-${snapshot}` })).toBe(true);
  // No longer an esnap clone (SPDK's blob_set_parent drops the external snapshot), so nothing holds A's snapshot.
  const lvols = await b.call<Array<{ alias: string; is_esnap_clone: boolean }>>('bdev_lvol_get_lvols', { lvs_name: 'rb' });
  expect(lvols.find((lvol) => lvol.alias === 'rb/dst')).toMatchObject({ is_esnap_clone: false });
  const [bdev] = await b.call<Array<{ driver_specific: { lvol: Record<string, unknown> } }>>('bdev_get_bdevs', { name: 'rb/dst' });
  expect(bdev!.driver_specific.lvol).toMatchObject({ esnap_clone: false, base_snapshot: `dst-${snapshot}` });
  expect(bdev!.driver_specific.lvol).not.toHaveProperty('external_snapshot_name');
  expect(await b.call('bdev_nvme_detach_controller', { name: `external-${snapshot}` })).toBe(true);
  expect(await a.call('nvmf_delete_subsystem', { nqn })).toBe(true);
}

async function expectSame(oracle: Oracle, snapshots: string[]): Promise<void> {
  const bytes = cluster * clusters;
  for (const snapshot of snapshots) {
    const want = oracle.snapshots.get(snapshot)!;
    expect((await read(b, `rb/dst-${snapshot}`, bytes)).equals(want), `B's ${snapshot} == oracle`).toBe(true);
    expect((await read(a, `rb/src-${snapshot}`, bytes)).equals(want), `A's ${snapshot} == oracle`).toBe(true);
    expect(await rangeChecksums(b, `rb/dst-${snapshot}`), `${snapshot} range checksums`).toEqual(await rangeChecksums(a, `rb/src-${snapshot}`));
    expect(await allocated(b, `rb/dst-${snapshot}`), `${snapshot} allocated clusters`).toBe(await allocated(a, `rb/src-${snapshot}`));
  }
  const last = oracle.snapshots.get(snapshots.at(-1)!)!;
  expect((await read(b, 'rb/dst', bytes)).equals(last), "B's head == oracle at the rebuild snapshot").toBe(true);
  expect(await a.call('bdev_nvme_get_controllers', {})).toEqual([]);
  expect(await b.call('bdev_nvme_get_controllers', {})).toEqual([]);
}

describe('a replica rebuilt from node A to node B over NVMe/TCP, as Longhorn does it', () => {
  it('full rebuild, then a delta rebuild that range-copies only the clusters whose checksums differ', async () => {
    const bytes = cluster * clusters;
    const oracle = new Oracle(bytes);
    await a.call('bdev_lvol_create', { lvs_name: 'rb', lvol_name: 'src', size_in_mib: clusters, thin_provision: true });
    const snapshot = async (client: RpcClient, prefix: string, name: string): Promise<void> => {
      await client.call('bdev_lvol_snapshot', { lvol_name: `rb/${prefix}`, snapshot_name: `${prefix}-${name}` });
    };
    // Source: two snapshots and head data, then the engine's rebuild snapshot.
    await write([a], 'rb/src', 0, oracle.data(96 * 1024), oracle);
    await write([a], 'rb/src', 3 * cluster + 8192, oracle.data(4096), oracle);
    await snapshot(a, 'src', 's1');
    oracle.freeze('s1');
    await write([a], 'rb/src', 64 * 1024, oracle.data(64 * 1024), oracle);
    await write([a], 'rb/src', 5 * cluster, oracle.data(128 * 1024), oracle);
    await snapshot(a, 'src', 's2');
    oracle.freeze('s2');
    await write([a], 'rb/src', 6 * cluster, oracle.data(16 * 1024), oracle);
    await snapshot(a, 'src', 'r1');
    oracle.freeze('r1');

    // ---- full rebuild: every snapshot shallow-copied onto a fresh rebuilding lvol, the next one cloned from the last
    const external1 = await startRebuild('r1');
    expect((await read(b, 'rb/dst', bytes)).equals(oracle.snapshots.get('r1')!), 'the new head reads A’s snapshot through NVMe/TCP').toBe(true);
    let previous: string | undefined;
    for (const name of ['s1', 's2', 'r1']) {
      if (previous === undefined) await b.call('bdev_lvol_create', { lvs_name: 'rb', lvol_name: 'dst-rebuilding', size_in_mib: clusters, thin_provision: true });
      else await b.call('bdev_lvol_clone', { snapshot_name: `rb/dst-${previous}`, clone_name: 'dst-rebuilding' });
      const status = await copySnapshot(name, 'rb/dst-rebuilding');
      expect(status).toMatchObject({ state: 'complete', total_clusters: await allocated(a, `rb/src-${name}`) });
      previous = name;
    }
    await finishRebuild('r1', external1);
    await expectSame(oracle, ['s1', 's2', 'r1']);

    // ---- B falls behind: a write reaches both heads (the RAID1), then only A's; B's copy of s3 is outdated
    const mirrored = oracle.data(32 * 1024);
    await write([a], 'rb/src', 7 * cluster, mirrored, oracle);
    await write([b], 'rb/dst', 7 * cluster, mirrored);
    // ... and B also holds bytes A never had (cluster 5, owned by B's s3 but not by A's): the range
    // copy must unmap it on B (through NVMe/TCP) so that B reads A's bytes from r1 again.
    const stray = oracle.data(4096);
    await write([b], 'rb/dst', 5 * cluster + 4096, stray);
    const outdated = Buffer.from(oracle.head);
    stray.copy(outdated, 5 * cluster + 4096);
    await write([a], 'rb/src', 8192, oracle.data(8192), oracle); // cluster 0, already in s1: a changed cluster
    await write([a], 'rb/src', 2 * cluster, oracle.data(4096), oracle); // cluster 2: new in s3
    await snapshot(a, 'src', 's3');
    oracle.freeze('s3');
    await b.call('bdev_lvol_snapshot', { lvol_name: 'rb/dst', snapshot_name: 'dst-s3' });
    await write([a], 'rb/src', 4 * cluster, oracle.data(4096), oracle);
    await snapshot(a, 'src', 'r2');
    oracle.freeze('r2');

    // ---- delta rebuild: s1, s2, r1 are intact on B and reused; s3 range-copied; r2 shallow-copied
    const external2 = await startRebuild('r2');
    // isEligibleForRebuildingDstForRangeShallowCopy: both ends have range checksums for s3.
    expect(await rangeChecksums(b, 'rb/dst-s3')).toHaveLength(clusters);
    // rebuildingDstShallowCopyPrepare for an outdated snapshot: detach it from its parent (so the
    // rebuilding lvol is backed by zeros and unmapping frees clusters), clone the rebuilding lvol on it.
    await b.call('bdev_lvol_detach_parent', { name: 'rb/dst-s3' });
    await b.call('bdev_lvol_clone', { snapshot_name: 'rb/dst-s3', clone_name: 'dst-rebuilding' });
    // rebuildingDstRangeShallowCopy: compare range checksums, delete the outdated snapshot (merged
    // into the rebuilding lvol), have A copy only the mismatching clusters.
    const dstSums = await b.call<Array<{ cluster_index: number; checksum: unknown }>>('bdev_lvol_get_snapshot_range_checksums', { name: 'rb/dst-s3', cluster_start_index: 0, cluster_count: clusters });
    const srcSums = await rangeChecksums(a, 'rb/src-s3');
    const mismatching = srcSums.filter((sum, index) => sum.checksum !== dstSums[index]?.checksum).map((sum) => sum.cluster_index);
    // The oracle's view: the clusters where A's s3 and B's outdated s3 show different bytes (s3 owns
    // clusters 0, 2, 7 on A and 5, 7 on B; 7 is the same on both).
    const differing = [...Array(clusters).keys()].filter((index) => {
      const range = [index * cluster, (index + 1) * cluster] as const;
      return !oracle.snapshots.get('s3')!.subarray(...range).equals(outdated.subarray(...range));
    });
    expect(differing).toEqual([0, 2, 5]);
    expect(mismatching).toEqual(differing);
    expect(await b.call('bdev_lvol_delete', { name: 'rb/dst-s3' })).toBe(true);
    const rangeStatus = await copySnapshot('s3', 'rb/dst-rebuilding', mismatching);
    expect(rangeStatus).toMatchObject({ state: 'complete', total_clusters: 3, copied_clusters: 2, unmapped_clusters: 1 });
    expect(await b.call('bdev_lvol_set_parent', { lvol_name: 'rb/dst-s3', parent_name: 'rb/dst-r1' })).toBe(true);
    await b.call('bdev_lvol_clone', { snapshot_name: 'rb/dst-s3', clone_name: 'dst-rebuilding' });
    expect(await copySnapshot('r2', 'rb/dst-rebuilding')).toMatchObject({ state: 'complete', total_clusters: 1 });
    await finishRebuild('r2', external2);
    await expectSame(oracle, ['s1', 's2', 'r1', 's3', 'r2']);
  });
});
