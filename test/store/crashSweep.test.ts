// Goal: every metadata operation leaves exactly the old or the new state after a crash at any of
// its device writes (with unflushed writes dropped, or kept and torn), and the new state once it
// was acknowledged. For N = 1, 2, …: crash at write N, lose power, reload, compare — until the
// operation completes without reaching write N.
import { describe, expect, it } from 'vitest';
import { CrashableDevice } from '../../src/device/crashableDevice.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { metadataLayout } from '../../src/store/format.ts';
import { JournalMetadataLog } from '../../src/store/journal.ts';
import { openLvstore } from '../../src/store/load.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { ClusterChecksums } from '../../src/store/sparseArray.ts';

const clusterBytes = 64 * 1024;
const deviceBytes = 8 * 1024 * 1024;

async function createStore(device: CrashableDevice, seed: number): Promise<Lvstore> {
  return Lvstore.create(
    device,
    { name: 'lvs', clusterBytes, clearMethod: 'unmap' },
    (record) => JournalMetadataLog.format(device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
    seededRuntime(seed),
  );
}

/** Everything the metadata says, plus every lvol's visible bytes, as one comparable string. */
async function signature(store: Lvstore | undefined): Promise<string> {
  if (!store) return 'no lvstore';
  const lvols = [];
  for (const lvol of [...store.lvols()].sort((a, b) => a.id.localeCompare(b.id))) {
    const data = await store.read(lvol.id, 0, lvol.clusterMap.length * clusterBytes);
    lvols.push({
      id: lvol.id,
      name: lvol.name,
      map: [...lvol.clusterMap.dense()],
      thin: lvol.thin,
      readOnly: lvol.readOnly,
      snapshot: lvol.snapshot,
      parent: lvol.parentId,
      xattrs: [...lvol.xattrs.entries()].sort(),
      checksum: String(lvol.checksum),
      range: lvol.rangeChecksums ? [...lvol.rangeChecksums.dense()].map(String) : null,
      data: data.toString('base64').length + ':' + hashOf(data),
    });
  }
  return JSON.stringify({ name: store.name, free: store.info().freeClusters, lvols });
}

function hashOf(data: Buffer): string {
  let hash = 2166136261;
  for (let index = 0; index < data.length; index += 61) hash = Math.imul(hash ^ data[index]!, 16777619) >>> 0;
  return hash.toString(16);
}

/** A store with some history: thick and thin lvols, data, a snapshot with a clone, an xattr. */
async function baseState(device: CrashableDevice): Promise<Lvstore> {
  const store = await createStore(device, 5);
  const thick = await store.createLvol({ name: 'thick', clusterCount: 3, thin: false });
  const thin = await store.createLvol({ name: 'thin', clusterCount: 4, thin: true });
  await store.write(thick.id, 0, Buffer.alloc(clusterBytes, 0x11));
  await store.write(thin.id, clusterBytes, Buffer.alloc(clusterBytes, 0x22));
  const snap = await store.snapshot(thin.id, 'snap', { origin: 'thin' });
  await store.write(thin.id, 2 * clusterBytes, Buffer.alloc(4096, 0x33));
  await store.clone(snap.id, 'clone');
  await store.setXattr(thick.id, 'k', 'v');
  // A snapshot with exactly one clone (for the merge) and a thin lvol without a parent (for set_parent).
  const solo = await store.createLvol({ name: 'solo', clusterCount: 2, thin: true });
  await store.write(solo.id, 0, Buffer.alloc(clusterBytes, 0x55));
  await store.snapshot(solo.id, 'solo-snap', {});
  await store.write(solo.id, clusterBytes, Buffer.alloc(4096, 0x66));
  await store.createLvol({ name: 'orphan', clusterCount: 4, thin: true });
  return store;
}

type Operation = (store: Lvstore) => Promise<unknown>;

const id = (store: Lvstore, name: string) => store.findLvolByName(name)!.id;

const operations: Record<string, Operation> = {
  'lvol create (thin)': (store) => store.createLvol({ name: 'new', clusterCount: 2, thin: true }),
  'lvol create (thick)': (store) => store.createLvol({ name: 'new', clusterCount: 2, thin: false }),
  'lvol delete': (store) => store.deleteLvol(id(store, 'thick')),
  'lvol rename': (store) => store.renameLvol(id(store, 'thick'), 'renamed'),
  'lvol resize (grow thick)': (store) => store.resize(id(store, 'thick'), 5),
  'lvol resize (shrink)': (store) => store.resize(id(store, 'thick'), 1),
  'set read only': (store) => store.setReadOnly(id(store, 'thick')),
  'xattr set': (store) => store.setXattr(id(store, 'thin'), 'user_created', 'true'),
  snapshot: (store) => store.snapshot(id(store, 'thick'), 'snap2', { a: 'b' }),
  clone: (store) => store.clone(id(store, 'snap'), 'clone2'),
  'merge (delete a snapshot with one clone)': (store) => store.deleteLvol(id(store, 'solo-snap')),
  'unmap of a whole thin cluster (release)': (store) => store.unmap(id(store, 'thin'), 2 * clusterBytes, clusterBytes),
  'first write to a thin cluster (allocation)': (store) => store.write(id(store, 'thin'), 3 * clusterBytes, Buffer.alloc(8192, 0x44)),
  'checksum store': (store) => store.storeChecksum(id(store, 'snap'), 0xfedcba9876543210n, ClusterChecksums.fromDense(new BigUint64Array([0n, 7n, 0n, 0n]))),
  inflate: (store) => store.copyUpFromParent(id(store, 'clone'), 'inflate'),
  decouple: (store) => store.copyUpFromParent(id(store, 'thin'), 'decouple'),
  'detach parent': (store) => store.detachParent(id(store, 'clone')),
  'set parent': (store) => store.setParent(id(store, 'orphan'), id(store, 'snap')),
  'lvstore rename': (store) => store.rename('lvs-renamed'),
  'lvstore delete': (store) => store.destroy(),
};

async function reload(device: CrashableDevice, keepUnflushed: { seed: number } | undefined): Promise<string> {
  const after = await device.afterPowerLoss(keepUnflushed);
  return signature(await openLvstore(after, seededRuntime(99)));
}

describe('crash at every write', () => {
  it.each(Object.entries(operations))('%s leaves the old or the new state', async (_name, operation) => {
    // The new state: the same history and operation, no crash, then a power loss.
    const reference = new CrashableDevice(deviceBytes, 512);
    const before = await baseState(reference);
    const oldState = await signature(before);
    await operation(before);
    const newState = await reload(reference, undefined);
    expect(newState).not.toBe(oldState);

    let sawOld = false;
    for (let crashAt = 1; ; crashAt++) {
      expect(crashAt, 'the sweep must end').toBeLessThan(500);
      const device = new CrashableDevice(deviceBytes, 512);
      const store = await baseState(device);
      device.crashAt(crashAt);
      let acknowledged = false;
      try {
        await operation(store);
        acknowledged = true;
      } catch (error) {
        if (!device.hasCrashed) throw error;
      }
      for (const keepUnflushed of [undefined, { seed: crashAt }]) {
        const reloaded = await reload(device, keepUnflushed);
        if (acknowledged) expect(reloaded, `acknowledged, crash armed at write ${crashAt}`).toBe(newState);
        else expect([oldState, newState], `crash at write ${crashAt}`).toContain(reloaded);
        sawOld ||= reloaded === oldState;
      }
      if (!device.hasCrashed) break;
    }
    expect(sawOld, 'some crash point must leave the old state').toBe(true);
  });

  it('a crash while creating the lvstore leaves no lvstore or the new, empty one', async () => {
    for (let crashAt = 1; ; crashAt++) {
      const device = new CrashableDevice(deviceBytes, 512);
      device.crashAt(crashAt);
      let created = false;
      try {
        await createStore(device, 1);
        created = true;
      } catch (error) {
        if (!device.hasCrashed) throw error;
      }
      const after = await device.afterPowerLoss();
      const store = await openLvstore(after, seededRuntime(1));
      if (created) expect(store?.name).toBe('lvs');
      else expect(store === undefined || (store.name === 'lvs' && store.lvols().length === 0)).toBe(true);
      if (!device.hasCrashed) break;
    }
  });
});
