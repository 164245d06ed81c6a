// The RPCs viewers are built on (SPEC §8): actors and their machines, bulk checksum status, and
// change notifications for what a listing shows.
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageNode } from '../../src/actors/node.ts';
import type { MachineNode } from '../../src/actors/inspectable.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { lvolMachine } from '../../src/machines/lvolMachine.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { call, errnoOf, nodeHarness } from './tableCalls.ts';

const clusterBytes = 64 * 1024;
const harness = nodeHarness(31);
afterEach(() => harness.cleanup());

async function oneStore(): Promise<{ node: StorageNode; table: MethodTable }> {
  const { node, table } = harness.newNode();
  await node.attachBaseDevice('m0', new MemoryDevice(32 * 1024 * 1024, 512));
  await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'm0', lvs_name: 'lvs', cluster_sz: clusterBytes, clear_method: 'unmap' });
  await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'vol', size_in_mib: 1, thin_provision: true });
  await node.bdev('lvs/vol').write(0, Buffer.alloc(clusterBytes, 7));
  await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/vol', snapshot_name: 'snap' });
  return { node, table };
}

function stateIds(node: MachineNode): string[] {
  return [node.id, ...node.states.flatMap(stateIds)];
}

describe('inspect_get_machine', () => {
  it("serves the lvol machine as XState defines it, with the actor's current state", async () => {
    const { table } = await oneStore();
    const result = await call<{ kind: string; label: string; machine: MachineNode; snapshot: { value: unknown } }>(table, 'inspect_get_machine', {
      actor_id: 'lvs/snap',
    });
    expect(result.kind).toBe('lvol');
    expect(result.label).toBe('lvs/snap');
    expect(result.snapshot.value).toEqual({ checksum: 'idle', io: 'idle' });
    const machine = result.machine;
    expect(machine.type).toBe('parallel');
    expect(machine.states.map((state) => state.key)).toEqual(['checksum', 'io']);
    // Every state XState knows is in the description, under the ids XState gives them.
    const known = [...(lvolMachine as unknown as { idMap: Map<string, unknown> }).idMap.keys()];
    expect(known.length).toBeGreaterThan(10);
    expect(stateIds(machine).sort()).toEqual(known.sort());
    const checksum = machine.states[0]!;
    expect(checksum.initial).toBe('idle');
    const computing = checksum.states.find((state) => state.key === 'computing')!;
    expect(computing.entry).toEqual(['requestStep']);
    expect(computing.transitions).toContainEqual(
      expect.objectContaining({ event: 'checksum.stop', targets: ['lvol.checksum.stopping'], actions: ['recordStopReason'] }),
    );
    const idle = checksum.states.find((state) => state.key === 'idle')!;
    expect(idle.transitions.filter((transition) => transition.event === 'always').map((transition) => transition.guard)).toEqual([
      'progressRestored',
      'checksumStored',
    ]);
    const reading = machine.states[1]!.states.find((state) => state.key === 'reading')!;
    expect(reading.invoke).toEqual(['clusterStep']);
    expect(reading.transitions.map((transition) => transition.event)).toContain('xstate.done.actor.clusterStep');
  });

  it('finds the scheduler, and refuses an actor that does not exist', async () => {
    const { table } = await oneStore();
    const scheduler = await call<{ kind: string; machine: MachineNode }>(table, 'inspect_get_machine', { actor_id: 'scheduler' });
    expect(scheduler.kind).toBe('scheduler');
    expect(scheduler.machine.id).toBe('scheduler');
    expect(await errnoOf(call(table, 'inspect_get_machine', { actor_id: 'lvs/none' }))).toBe('ENODEV');
    expect(await errnoOf(call(table, 'inspect_get_machine', { actor_id: 'nbd:none' }))).toBe('ENODEV');
  });
});

describe('inspect_get_actors', () => {
  it('lists the scheduler first, then every lvol with its state value, bounded by limit', async () => {
    const { table } = await oneStore();
    const all = await call<{ actors: Array<{ actor_id: string; kind: string; label: string; value: unknown }>; lvols_total: number }>(
      table,
      'inspect_get_actors',
    );
    expect(all.actors[0]).toMatchObject({ actor_id: 'scheduler', kind: 'scheduler' });
    expect(all.actors.filter((actor) => actor.kind === 'lvol').map((actor) => actor.label).sort()).toEqual(['lvs/snap', 'lvs/vol']);
    expect(all.lvols_total).toBe(2);
    const one = await call<{ actors: unknown[]; lvols_total: number }>(table, 'inspect_get_actors', { limit: 1 });
    expect(one.actors).toHaveLength(2);
    expect(one.lvols_total).toBe(2);
  });
});

describe('node_get_checksums', () => {
  it('reports only lvols with a checksum state, with the stored value exact', async () => {
    const { table } = await oneStore();
    expect(await call(table, 'node_get_checksums')).toEqual([]);
    await call(table, 'bdev_lvol_register_snapshot_checksum', { name: 'lvs/snap' });
    const stored = await call<{ checksum: bigint }>(table, 'bdev_lvol_get_snapshot_checksum', { name: 'lvs/snap' });
    const rows = await call<Array<{ alias: string; state: string; checksum: bigint | null }>>(table, 'node_get_checksums');
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ alias: 'lvs/snap', state: 'done', checksum: stored.checksum });
    expect(await call(table, 'node_get_checksums', { lvs_name: 'other' })).toEqual([]);
  });
});

describe('change notifications', () => {
  it('a rename, a snapshot and a merge each say which lvol row changed', async () => {
    const { node, table } = await oneStore();
    const seen: Array<{ type: string; uuid?: string; change?: string }> = [];
    node.events.on('event', (event) => seen.push(event as (typeof seen)[number]));
    const vol = node.resolveLvol('lvs/vol').lvol.id;
    await call(table, 'bdev_lvol_rename', { old_name: 'lvs/vol', new_name: 'renamed' });
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/renamed', snapshot_name: 'snap2' });
    await call(table, 'bdev_lvol_delete', { name: 'lvs/snap2' });
    const changes = seen.filter((event) => event.type === 'lvol_changed').map((event) => [event.uuid, event.change]);
    expect(changes).toEqual([
      [vol, 'lvol.rename'],
      [vol, 'lvol.snapshot'],
      [vol, 'lvol.merge'],
    ]);
  });
});

describe('checksum notifications', () => {
  it('say nothing when an idle actor starts, then follow a walk: its states, and progress only while computing', async () => {
    const { node, table } = await oneStore();
    const seen: Array<{ type: string; uuid?: string; state?: string; previous?: string }> = [];
    node.events.on('event', (event) => seen.push(event as (typeof seen)[number]));
    const id = await call<string>(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'fresh', size_in_mib: 4, thin_provision: true });
    for (let cluster = 0; cluster < 48; cluster++) await node.bdev('lvs/fresh').write(cluster * clusterBytes, Buffer.alloc(clusterBytes, cluster + 1));
    await node.actorStarter.idle();
    expect(node.resolveLvol(id).actor.isStarted).toBe(true);
    // Its actor has started (the starter's slices ran): an idle lvol has nothing to report.
    expect(seen.filter((event) => event.uuid === id && event.type.startsWith('checksum_'))).toEqual([]);
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/fresh', snapshot_name: 'walked' });
    const snapshotId = node.resolveLvol('lvs/walked').lvol.id;
    await call(table, 'bdev_lvol_register_snapshot_checksum', { name: 'lvs/walked' });
    const walk = seen.filter((event) => event.uuid === snapshotId && event.type.startsWith('checksum_'));
    const states = walk.filter((event) => event.type === 'checksum_state').map((event) => event.state);
    expect(states.at(-1)).toBe('done');
    expect(states).toContain('computing');
    const progress = walk.filter((event) => event.type === 'checksum_progress');
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.every((event) => event.state === 'computing')).toBe(true);
  });
});
