// Goal (issue 11, restart of 100,000 lvols): a loaded lvstore answers before its lvol actors have
// all started. Lookups and listings work from the records at once; anything that needs a
// waiting lvol's actor starts it then; the rest start in slices, each in the state it was in.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageNode } from '../../src/actors/node.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { countEventLoopTurns } from '../eventLoopTurns.ts';
import { call, errnoOf, nodeHarness } from './tableCalls.ts';

const mib = 1024 * 1024;
const harness = nodeHarness(1100);
afterEach(() => harness.cleanup());

async function attach(path: string): Promise<{ node: StorageNode; table: MethodTable }> {
  const started = harness.newNode();
  await call(started.table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
  return started;
}

async function sparseDisk(prefix: string): Promise<string> {
  const path = join(await harness.tempDir(prefix), 'disk.img');
  await FileDevice.createSparse(path, 256 * mib);
  return path;
}

/** A node on the file at `path` with lvstore `lvs` holding `count` thin lvols `${prefix}N`. */
async function storeWithLvols(path: string, prefix: string, count: number): Promise<{ node: StorageNode; table: MethodTable }> {
  const started = await attach(path);
  await call(started.table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: mib });
  for (let index = 0; index < count; index++) {
    await call(started.table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: `${prefix}${index}`, size_in_mib: 2, thin_provision: true });
  }
  return started;
}

describe('lvol actors started in slices', () => {
  it('resolves, lists and answers for every lvol before its actor starts, and starts each in its own state', async () => {
    const count = 400;
    const path = await sparseDisk('lvnode-slices-');
    let { node, table } = await storeWithLvols(path, 'v', count);
    await call(table, 'node_lvol_write', { name: 'lvs/v7', offset: 0, fill_byte: 7, length: 4096 });
    const snapshotId = await call<string>(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/v7', snapshot_name: 'snap' });
    expect(await call(table, 'bdev_lvol_register_snapshot_checksum', { name: snapshotId })).toBe(true);
    const stored = await call<unknown>(table, 'bdev_lvol_get_snapshot_checksum', { name: snapshotId });
    await node.shutdown();

    // The slices are held, to look at the node as it is before they run.
    ({ node, table } = harness.newNode());
    node.actorStarter.pause();
    await call(table, 'bdev_aio_create', { name: 'disk', filename: path, block_size: 512 });
    expect(node.actorStarter.waitingCount).toBe(count + 1);
    expect(node.resolveLvol(`lvs/v${count - 1}`).lvol.name).toBe(`v${count - 1}`);
    const bdevs = await call<Array<{ aliases: string[] }>>(table, 'bdev_get_bdevs', {});
    expect(bdevs.filter((bdev) => bdev.aliases[0]?.startsWith('lvs/'))).toHaveLength(count + 1);
    expect(await call<unknown[]>(table, 'bdev_lvol_get_lvols', {})).toHaveLength(count + 1);
    // Counting states does not start anyone: the waiting snapshot counts as done.
    const stats = await node.checksums.stats();
    expect(stats.by_state).toEqual({ idle: count, done: 1 });
    expect(node.actorStarter.waitingCount).toBe(count + 1);
    // Listing actors for the inspector, and the bulk checksum status, start no idle lvol's actor.
    const listed = await call<{ actors: Array<{ label: string; value: unknown }> }>(table, 'inspect_get_actors', { limit: count + 1 });
    expect(listed.actors.find((actor) => actor.label === 'lvs/snap')!.value).toEqual({ checksum: 'done', io: 'idle' });
    expect(listed.actors.find((actor) => actor.label === 'lvs/v0')!.value).toEqual({ checksum: 'idle', io: 'idle' });
    expect(node.actorStarter.waitingCount).toBe(count + 1);
    expect(await call<Array<{ state: string }>>(table, 'node_get_checksums')).toHaveLength(1);
    expect(node.actorStarter.waitingCount).toBe(count);
    // The checksum status needs the actor: it starts now, in the state the records say.
    const status = await call<{ state: string }>(table, 'bdev_lvol_get_checksum_status', { name: 'lvs/snap' });
    expect(status.state).toBe('done');
    expect(node.resolveLvol('lvs/snap').actor.isStarted).toBe(true);
    expect(node.actorStarter.waitingCount).toBe(count);
    expect(await call(table, 'bdev_lvol_get_snapshot_checksum', { name: snapshotId })).toEqual(stored);

    // A delete of a waiting lvol, and a create while others wait, are both fine.
    await call(table, 'bdev_lvol_delete', { name: 'lvs/v3' });
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'late', size_in_mib: 2, thin_provision: true });
    expect(node.actorStarter.waitingCount).toBe(count);
    node.actorStarter.resume();
    await node.actorStarter.idle();
    const all = [...node.registry.allLvols()];
    expect(all).toHaveLength(count + 1);
    expect(all.every(({ actor }) => actor.isStarted)).toBe(true);
    expect(all.find(({ lvol }) => lvol.name === 'v3')).toBeUndefined();
    expect(node.resolveLvol('lvs/late').actor.checksumState).toBe('idle');
  });

  it('visits every lvol in slices for the node-wide RPCs, once each, and can stop early', async () => {
    // Goal: node_get_stats (the dashboard asks every 2 s), node_get_checksums and inspect_get_actors
    // never hold the event loop for a pass over every lvol (~45 ms at 100,000).
    const count = 300;
    const { node, table } = await storeWithLvols(await sparseDisk('lvnode-pass-'), 'p', count);
    const turns = countEventLoopTurns();
    const seen: string[] = [];
    const last = node.resolveLvol(`lvs/p${count - 1}`).lvol.id;
    await call(table, 'bdev_lvol_delete', { name: `lvs/p${count - 1}` });
    // Slices of 0 ms: a turn after every 64 lvols.
    await node.registry.forEachLvolInSlices(({ lvol }) => void seen.push(lvol.name), 0);
    expect(turns.stop()).toBeGreaterThanOrEqual(3);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).not.toContain(`p${count - 1}`);
    expect(seen).toHaveLength(count - 1);
    expect(node.registry.lvolCount).toBe(count - 1);
    expect(() => node.resolveLvol(last)).toThrow();
    // Stopping early.
    let visits = 0;
    await node.registry.forEachLvolInSlices(() => ++visits < 10);
    expect(visits).toBe(10);
    const stats = await call<{ checksums: { by_state: Record<string, number> } }>(table, 'node_get_stats', {});
    expect(stats.checksums.by_state).toEqual({ idle: count - 1 });
    const actors = await call<{ actors: unknown[]; lvols_total: number }>(table, 'inspect_get_actors', { limit: 5 });
    expect(actors.lvols_total).toBe(count - 1);
    expect(actors.actors.filter((actor) => (actor as { kind: string }).kind === 'lvol')).toHaveLength(5);
  });

  it('deletes an lvstore of thousands of lvols in slices: gone from every lookup at once, the event loop turning while its actors go', async () => {
    // Goal: bdev_lvol_delete_lvstore at 100,000 lvols held the event loop for 1.4 s (every actor
    // stopped, 100,000 export checks and lock keys in one go), freezing every other client.
    const { node, table } = harness.newNode();
    await node.attachBaseDevice('m0', new MemoryDevice(4096 * mib, 512));
    await node.attachBaseDevice('m1', new MemoryDevice(16 * mib, 512));
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'm0', lvs_name: 'big', cluster_sz: mib });
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'm1', lvs_name: 'other', cluster_sz: mib });
    await call(table, 'bdev_lvol_create', { lvs_name: 'other', lvol_name: 'stays', size_in_mib: 1, thin_provision: true });
    const count = 3000;
    for (let index = 0; index < count; index++) {
      await call(table, 'bdev_lvol_create', { lvs_name: 'big', lvol_name: `d${index}`, size_in_mib: 1, thin_provision: true });
    }
    await node.actorStarter.idle();
    const entry = node.registry.lvstoreByName('big')!;
    const actors = [...entry.actors.values()];
    // At every turn of the loop while the delete runs: how many of its actors have stopped, and
    // whether the lvstore can still be found.
    const seen: Array<{ stopped: number; listed: boolean }> = [];
    let running = true;
    const look = (): void => {
      const stopped = actors.filter((actor) => actor.actor.getSnapshot().status === 'stopped').length;
      seen.push({ stopped, listed: node.registry.lvstoreByName('big') !== undefined });
      if (running) setImmediate(look);
    };
    setImmediate(look);
    await call(table, 'bdev_lvol_delete_lvstore', { lvs_name: 'big' });
    running = false;
    const partly = seen.filter(({ stopped }) => stopped > 0 && stopped < count);
    // The actors stopped over several turns, and never while the lvstore could still be found.
    expect(partly.length).toBeGreaterThanOrEqual(2);
    expect(partly.every(({ listed }) => !listed)).toBe(true);
    expect(actors.every((actor) => actor.actor.getSnapshot().status === 'stopped')).toBe(true);
    expect(await errnoOf(call(table, 'bdev_lvol_get_lvols', { lvs_name: 'big' }))).toBe('ENODEV');
    expect(node.registry.lvolCount).toBe(1);
    expect(node.resolveLvol('other/stays').actor.checksumState).toBe('idle');
    expect(await call(table, 'bdev_lvol_get_lvstores', {})).toHaveLength(1);
    // The device no longer holds it: the bdev takes a new lvstore.
    await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'm0', lvs_name: 'again', cluster_sz: mib });
  });
});
