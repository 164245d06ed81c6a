// Goal: failed means unchanged (SPEC §9). Seeded random RPC sequences run against a node whose
// lvstore sits on a simulated device that fails the Nth write (EIO) or, like a full file system,
// every write from the Nth on (ENOSPC). After every refused call the node's visible state
// (listings, xattrs, checksums, data) must equal the state before the call; after a restart it
// must equal the state after the last acknowledged call. A failure prints the seed
// (LVNODE_FAULT_SEED reruns one).
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StorageNode } from '../../src/actors/node.ts';
import type { BlockDevice } from '../../src/device/blockDevice.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { createMethodTable } from '../../src/transport/methods.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { seededRandom } from '../seededRandom.ts';
import { errnoOf } from './tableCalls.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const clusterBytes = 64 * 1024;
const deviceBytes = 32 * 1024 * 1024;
const operationsPerSeed = 60;
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

// The node logs every injected metadata failure as an error, as it should; here they are expected.
const logLevel = process.env.LVNODE_LOG_LEVEL;
beforeAll(() => void (process.env.LVNODE_LOG_LEVEL = 'silent'));
afterAll(() => void (logLevel === undefined ? delete process.env.LVNODE_LOG_LEVEL : (process.env.LVNODE_LOG_LEVEL = logLevel)));

/** A view of the device that outlives a node: closing it does not clear the bytes (a restart keeps them). */
function persistent(device: SimulatedDevice): BlockDevice {
  return {
    kind: device.kind,
    sizeBytes: device.sizeBytes,
    blockSizeBytes: device.blockSizeBytes,
    readInto: (target, offset) => device.readInto(target, offset),
    write: (offset, data) => device.write(offset, data),
    discard: (offset, length) => device.discard(offset, length),
    flush: () => device.flush(),
    close: async () => {},
  };
}


async function call(table: MethodTable, method: string, params: Record<string, unknown>): Promise<unknown> {
  const entry = table[method]!;
  return entry.handler(entry.params.parse(params), noConnection);
}

/** Everything a client can see of the lvstore, by name; data as one digest per lvol. */
async function visibleState(node: StorageNode, table: MethodTable): Promise<string> {
  const lvols = (await call(table, 'bdev_lvol_get_lvols', {})) as Array<Record<string, unknown>>;
  const lvstores = (await call(table, 'bdev_lvol_get_lvstores', {})) as Array<Record<string, unknown>>;
  const out: Record<string, unknown> = {
    lvstores: lvstores.map(({ metadata_error: _ignored, ...rest }) => rest),
  };
  for (const lvol of [...lvols].sort((a, b) => String(a.alias).localeCompare(String(b.alias)))) {
    const alias = String(lvol.alias);
    const { lvol: record } = node.resolveLvol(alias);
    const data = await readBdev(node.bdev(alias), 0, record.clusterMap.length * clusterBytes);
    out[alias] = {
      ...lvol,
      xattrs: Object.fromEntries(record.xattrs),
      checksum: record.checksum?.toString() ?? null,
      data: createHash('sha256').update(data).digest('hex'),
    };
  }
  return JSON.stringify(out, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
}

async function startNode(device: BlockDevice, seed: number): Promise<{ node: StorageNode; table: MethodTable }> {
  const node = new StorageNode(seededRuntime(seed));
  await node.attachBaseDevice('sim0', device);
  return { node, table: createMethodTable(node) };
}

/** A node on `device` with a new lvstore `lvs` on it. */
async function nodeWithLvstore(device: SimulatedDevice, seed: number): Promise<{ node: StorageNode; table: MethodTable }> {
  const started = await startNode(persistent(device), seed);
  await call(started.table, 'bdev_lvol_create_lvstore', { bdev_name: 'sim0', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'none' });
  return started;
}

type Operation = { method: string; params: Record<string, unknown> };

/** One random RPC among those that change metadata or data, on names that may or may not exist. */
function randomOperation(next: () => number, names: string[]): Operation {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const existing = names.length > 0 ? pick(names) : 'vol0';
  const fresh = `v${Math.floor(next() * 1e6)}`;
  const choices: Operation[] = [
    { method: 'bdev_lvol_create', params: { lvs_name: 'lvs', lvol_name: fresh, size_in_mib: 1 + Math.floor(next() * 2), thin_provision: next() < 0.7 } },
    { method: 'bdev_lvol_delete', params: { name: `lvs/${existing}` } },
    { method: 'bdev_lvol_rename', params: { old_name: `lvs/${existing}`, new_name: fresh } },
    { method: 'bdev_lvol_resize', params: { name: `lvs/${existing}`, size_in_mib: 1 + Math.floor(next() * 3) } },
    { method: 'bdev_lvol_snapshot', params: { lvol_name: `lvs/${existing}`, snapshot_name: fresh } },
    { method: 'bdev_lvol_clone', params: { snapshot_name: `lvs/${existing}`, clone_name: fresh } },
    { method: 'bdev_lvol_set_xattr', params: { name: `lvs/${existing}`, xattr_name: pick(['a', 'b']), xattr_value: fresh } },
    { method: 'bdev_lvol_inflate', params: { name: `lvs/${existing}` } },
    {
      method: 'node_lvol_write',
      params: { name: `lvs/${existing}`, offset: Math.floor(next() * 16) * clusterBytes, fill_byte: 1 + Math.floor(next() * 250), length: clusterBytes },
    },
    { method: 'bdev_lvol_register_snapshot_checksum', params: { name: `lvs/${existing}` } },
  ];
  return pick(choices);
}

async function runSeed(seed: number): Promise<{ refused: number; acknowledged: number; faulted: number }> {
  const next = seededRandom(seed);
  const device = new SimulatedDevice(deviceBytes, 512);
  let { node, table } = await nodeWithLvstore(device, seed);
  let acknowledged = await visibleState(node, table);
  const counts = { refused: 0, acknowledged: 0, faulted: 0 };
  for (let step = 0; step < operationsPerSeed; step++) {
    // Now and then the device starts failing: once (EIO) or for good (ENOSPC), a few writes ahead.
    if (next() < 0.25) {
      const sticky = next() < 0.4;
      device.setFaults({ failWriteAt: 1 + Math.floor(next() * 3), failWriteCode: sticky ? 'ENOSPC' : 'EIO', failWritesFromThenOn: sticky });
      counts.faulted++;
    }
    const names = ((await call(table, 'bdev_lvol_get_lvols', {})) as Array<{ name: string }>).map((lvol) => lvol.name);
    const operation = randomOperation(next, names);
    const before = await visibleState(node, table);
    const context = `seed ${seed} step ${step}: ${operation.method} ${JSON.stringify(operation.params)}`;
    try {
      await call(table, operation.method, operation.params);
      counts.acknowledged++;
      acknowledged = await visibleState(node, table);
    } catch (error) {
      expect(error, context).toBeInstanceOf(StorageError);
      counts.refused++;
      expect(await visibleState(node, table), `${context} was refused (${String(error)}) but changed what clients see`).toBe(before);
    }
    device.setFaults({});
    // Restart now and then: the device keeps what was written; the node must show exactly what it acknowledged.
    if (next() < 0.15) {
      await node.preemptAll('shutdown');
      ({ node, table } = await startNode(persistent(device), seed + step));
      expect(await visibleState(node, table), `${context}: after restart`).toBe(acknowledged);
    }
  }
  ({ node, table } = await startNode(persistent(device), seed + 1000));
  expect(await visibleState(node, table), `seed ${seed}: after the final restart`).toBe(acknowledged);
  return counts;
}

describe('failed means unchanged, under device faults', () => {
  const seeds = process.env.LVNODE_FAULT_SEED ? [Number(process.env.LVNODE_FAULT_SEED)] : [1, 2, 3, 4, 5, 6];
  it.each(seeds)('seed %i: every refused call leaves the visible state as it was; restarts show what was acknowledged', async (seed) => {
    const counts = await runSeed(seed);
    // The sequence must exercise both outcomes, or it proves nothing.
    expect(counts.refused, `seed ${seed}`).toBeGreaterThan(0);
    expect(counts.acknowledged, `seed ${seed}`).toBeGreaterThan(0);
  });
});

describe('an lvstore delete the device refuses', () => {
  it('leaves the lvstore loaded and as it was, in memory and on the device, whichever super block write failed', async () => {
    // Goal: bdev_lvol_delete_lvstore used to drop the lvstore from the node before erasing it, so
    // a failed erase made it vanish until a restart brought it back; and it blanked both super
    // blocks before one flush, so a crash could leave only the older generation to load.
    const device = new SimulatedDevice(deviceBytes, 512);
    let { node, table } = await nodeWithLvstore(device, 77);
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'a', size_in_mib: 1, thin_provision: true });
    await call(table, 'node_lvol_write', { name: 'lvs/a', offset: 0, fill_byte: 9, length: 4096 });
    const before = await visibleState(node, table);

    // The first write (the older super block) fails: nothing that matters changed, and the
    // lvstore goes on taking changes.
    device.setFaults({ failWriteAt: 1 });
    expect(await errnoOf(call(table, 'bdev_lvol_delete_lvstore', { lvs_name: 'lvs' }))).toBe('EIO');
    device.setFaults({});
    expect(await visibleState(node, table)).toBe(before);
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'b', size_in_mib: 1, thin_provision: true });
    const withB = await visibleState(node, table);
    await node.preemptAll('shutdown');
    ({ node, table } = await startNode(persistent(device), 78));
    expect(await visibleState(node, table)).toBe(withB);

    // The second (the current super block) fails: still loaded as it was, refusing changes as
    // after any metadata write error; the device still holds it.
    device.setFaults({ failWriteAt: 2 });
    expect(await errnoOf(call(table, 'bdev_lvol_delete_lvstore', { lvs_name: 'lvs' }))).toBe('EIO');
    device.setFaults({});
    expect(await visibleState(node, table)).toBe(withB);
    expect(await errnoOf(call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'c', size_in_mib: 1, thin_provision: true }))).toBe('EIO');
    await node.preemptAll('shutdown');
    ({ node, table } = await startNode(persistent(device), 79));
    expect(await visibleState(node, table)).toBe(withB);

    // Without faults it goes, and stays gone.
    await call(table, 'bdev_lvol_delete_lvstore', { lvs_name: 'lvs' });
    expect(await call(table, 'bdev_lvol_get_lvstores', {})).toEqual([]);
    await node.preemptAll('shutdown');
    ({ node, table } = await startNode(persistent(device), 80));
    expect(await call(table, 'bdev_lvol_get_lvstores', {})).toEqual([]);
  });
});

describe('a full metadata area', () => {
  it('refuses growth with -28 and changes nothing, stays writable, and a delete makes room again', async () => {
    // Goal: metadata that does not fit is refused before anything is written, and the lvstore is
    // not bricked by it: the log goes on, deletes work, and a restart shows what was acknowledged.
    const device = new SimulatedDevice(deviceBytes, 512);
    let { node, table } = await nodeWithLvstore(device, 77);
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'big', size_in_mib: 1, thin_provision: true });
    const value = 'x'.repeat(60 * 1024);
    let refusal: unknown;
    for (let index = 0; index < 256 && refusal === undefined; index++) {
      const before = await visibleState(node, table);
      try {
        await call(table, 'bdev_lvol_set_xattr', { name: 'lvs/big', xattr_name: `k${index}`, xattr_value: value });
      } catch (error) {
        refusal = error;
        expect(await visibleState(node, table)).toBe(before);
      }
    }
    expect(refusal).toMatchObject({ errno: 'ENOSPC', wire: 'errno' });
    const lvstores = (await call(table, 'bdev_lvol_get_lvstores', {})) as Array<Record<string, unknown>>;
    expect(lvstores[0]).not.toHaveProperty('metadata_error');
    await call(table, 'bdev_lvol_delete', { name: 'lvs/big' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'after', size_in_mib: 1, thin_provision: true });
    const acknowledged = await visibleState(node, table);
    ({ node, table } = await startNode(persistent(device), 78));
    expect(await visibleState(node, table)).toBe(acknowledged);
  });
});

describe('commits waiting for the same failed write', () => {
  it('undoes a change and the later changes that built on it, newest first, when their journal write fails', async () => {
    // Goal: group commit applies changes before they are durable, so a later operation can build
    // on an earlier one (an xattr on an lvol still being created). When the write fails, both are
    // refused and the node shows exactly what it showed before either.
    const device = new SimulatedDevice(deviceBytes, 512);
    const { node, table } = await nodeWithLvstore(device, 91);
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'base', size_in_mib: 1, thin_provision: false });
    const before = await visibleState(node, table);
    device.setFaults({ failWriteAt: 1 });
    const create = call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'child', size_in_mib: 1, thin_provision: false });
    // Validated against the create that is not yet durable, and appended behind it.
    const xattr = call(table, 'bdev_lvol_set_xattr', { name: 'lvs/child', xattr_name: 'k', xattr_value: 'v' });
    const rename = call(table, 'bdev_lvol_rename', { old_name: 'lvs/base', new_name: 'renamed' });
    const outcomes = await Promise.allSettled([create, xattr, rename]);
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['rejected', 'rejected', 'rejected']);
    device.setFaults({});
    expect(await visibleState(node, table)).toBe(before);
  });
});

describe('a store whose metadata write failed', () => {
  it('refuses changes, says so once, keeps serving reads, and is made writable again by a delete', async () => {
    // Goal (SPEC §9): after a device error under the journal, growth is refused clearly; a delete
    // rewrites the whole state as a new checkpoint, after which the store takes changes again, and
    // a restart shows exactly what was acknowledged.
    const device = new SimulatedDevice(deviceBytes, 512);
    let { node, table } = await nodeWithLvstore(device, 101);
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'keep', size_in_mib: 1, thin_provision: false });
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'spare', size_in_mib: 1, thin_provision: true });
    await call(table, 'node_lvol_write', { name: 'lvs/keep', offset: 0, fill_byte: 0x5a, length: clusterBytes });
    device.setFaults({ failWriteAt: 1, failWriteCode: 'EIO' });
    await expect(call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'lost', size_in_mib: 1, thin_provision: true })).rejects.toMatchObject({
      errno: 'EIO',
    });
    device.setFaults({});
    const failed = await visibleState(node, table);
    const [lvstore] = (await call(table, 'bdev_lvol_get_lvstores', {})) as Array<Record<string, unknown>>;
    expect(String(lvstore!.metadata_error)).toMatch(/delete/);
    // Growth is refused without touching the device; reads go on.
    const writesBefore = device.counts.writes;
    await expect(call(table, 'bdev_lvol_rename', { old_name: 'lvs/keep', new_name: 'other' })).rejects.toMatchObject({ errno: 'EIO' });
    expect(device.counts.writes).toBe(writesBefore);
    expect(await visibleState(node, table)).toBe(failed);
    expect((await readBdev(node.bdev('lvs/keep'), 0, 512)).every((byte) => byte === 0x5a)).toBe(true);
    // A delete brings it back.
    await call(table, 'bdev_lvol_delete', { name: 'lvs/spare' });
    const [after] = (await call(table, 'bdev_lvol_get_lvstores', {})) as Array<Record<string, unknown>>;
    expect(after).not.toHaveProperty('metadata_error');
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'new', size_in_mib: 1, thin_provision: true });
    const acknowledged = await visibleState(node, table);
    expect(acknowledged).toMatch(/lvs\/new/);
    expect(acknowledged).not.toMatch(/lvs\/lost|lvs\/spare/);
    ({ node, table } = await startNode(persistent(device), 102));
    expect(await visibleState(node, table)).toBe(acknowledged);
  });

  it('stays failed when the delete cannot be written either, changing nothing', async () => {
    const device = new SimulatedDevice(deviceBytes, 512);
    const { node, table } = await nodeWithLvstore(device, 103);
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'a', size_in_mib: 1, thin_provision: true });
    device.setFaults({ failWriteAt: 1, failWriteCode: 'EIO', failWritesFromThenOn: true });
    await expect(call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'b', size_in_mib: 1, thin_provision: true })).rejects.toBeInstanceOf(StorageError);
    const before = await visibleState(node, table);
    await expect(call(table, 'bdev_lvol_delete', { name: 'lvs/a' })).rejects.toBeInstanceOf(StorageError);
    expect(await visibleState(node, table)).toBe(before);
  });
});

describe('a thin lvol of 2^40 clusters (hostile finding 2)', () => {
  it('is accepted, costs what it owns, lists, checksums, deletes and reloads; bounded windows refuse huge ranges', async () => {
    const device = new SimulatedDevice(deviceBytes, 512);
    let { node, table } = await nodeWithLvstore(device, 111);
    // 2^40 clusters of 64 KiB: 2^56 bytes, 2^36 MiB, on a 32 MiB store (thin overcommit, as SPDK).
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'huge', size_in_mib: 2 ** 36, thin_provision: true });
    // The hostile resize: 1,000,000,000 MiB answers true and costs nothing more.
    await call(table, 'bdev_lvol_resize', { name: 'lvs/huge', size_in_mib: 1_000_000_000 });
    await call(table, 'bdev_lvol_resize', { name: 'lvs/huge', size_in_mib: 2 ** 36 });
    for (const clusterIndex of [0, 2 ** 30, 2 ** 36]) {
      await call(table, 'node_lvol_write', { name: 'lvs/huge', offset: clusterIndex * clusterBytes, fill_byte: 0x11, length: 4096 });
    }
    const [listed] = (await call(table, 'bdev_lvol_get_lvols', {})) as Array<Record<string, unknown>>;
    expect(listed).toMatchObject({ num_clusters: 2 ** 40, num_allocated_clusters: 3 });
    const [bdev] = (await call(table, 'bdev_get_bdevs', { name: 'lvs/huge' })) as Array<Record<string, unknown>>;
    expect(bdev!.num_blocks).toBe(2 ** 47);
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/huge', snapshot_name: 'snap' });
    await call(table, 'bdev_lvol_register_snapshot_range_checksums', { name: 'lvs/snap' });
    const window = (await call(table, 'bdev_lvol_get_snapshot_range_checksums', { name: 'lvs/snap', cluster_start_index: 2 ** 30, cluster_count: 2 })) as Array<{
      checksum: bigint;
    }>;
    expect(window[0]!.checksum).not.toBe(0n);
    expect(window[1]!.checksum).toBe(0n);
    expect(() => table.bdev_lvol_get_snapshot_range_checksums!.params.parse({ name: 'lvs/snap', cluster_start_index: 0, cluster_count: 2 ** 40 })).toThrow();
    await expect(call(table, 'bdev_lvol_get_fragmap', { name: 'lvs/snap' })).rejects.toMatchObject({ errno: 'EINVAL' });
    const listing = JSON.stringify(await call(table, 'bdev_lvol_get_lvols', {}), (_key, value: unknown) => (typeof value === 'bigint' ? String(value) : value));
    await node.preemptAll('shutdown');
    ({ node, table } = await startNode(persistent(device), 112));
    const reloaded = JSON.stringify(await call(table, 'bdev_lvol_get_lvols', {}), (_key, value: unknown) => (typeof value === 'bigint' ? String(value) : value));
    expect(reloaded).toBe(listing);
    expect((await readBdev(node.bdev('lvs/huge'), 2 ** 30 * clusterBytes, 4096)).every((byte) => byte === 0x11)).toBe(true);
    await call(table, 'bdev_lvol_delete', { name: 'lvs/huge' });
    await call(table, 'bdev_lvol_delete', { name: 'lvs/snap' });
    expect(await call(table, 'bdev_lvol_get_lvols', {})).toEqual([]);
  });
});
