// Goal: failed means unchanged, and nobody sees a change before it is durable (SPEC §9). Many
// operations of every change kind are applied while their journal appends wait; then the appends
// fail (every later one with the first, as the journal does) and the records must be exactly as
// before, in memory and in every reader's view. While they wait, readers see only the durable
// state. Restoring the newest saved state instead of the oldest, or forgetting a change kind,
// fails these tests.
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import type { LvolRecord, MetadataChange, MetadataLog } from '../../src/store/metadata.ts';
import { ClusterChecksums } from '../../src/store/sparseArray.ts';
import { blockBytes, clusterBytes, deviceBytes, errnoOf, expectClusterAccounting, patternBytes, waitFor } from './helpers.ts';

/** A log whose appends wait until released; once one fails, every later one fails (as the journal's). */
class HeldLog implements MetadataLog {
  private waiting: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  private holding = false;
  private failed = false;
  readonly appended: MetadataChange[][] = [];

  hold(): void {
    this.holding = true;
  }

  get heldCount(): number {
    return this.waiting.length;
  }

  /** Lets the held appends finish: all durable, or the first fails and every later one with it. */
  release(outcome: 'durable' | 'fail'): void {
    this.holding = false;
    if (outcome === 'fail') this.failed = true;
    for (const waiter of this.waiting.splice(0)) {
      if (this.failed) waiter.reject(new StorageError('EIO', { detail: 'injected append failure' }));
      else waiter.resolve();
    }
  }

  async append(changes: readonly MetadataChange[]): Promise<void> {
    if (this.failed) throw new StorageError('EIO', { detail: 'the log failed earlier' });
    if (!this.holding) {
      this.appended.push([...changes]);
      return;
    }
    await new Promise<void>((resolve, reject) => this.waiting.push({ resolve, reject }));
    this.appended.push([...changes]);
  }

  async close(): Promise<void> {}
}

/** Every field of every lvol, in listing order, with its bytes' digest: what "exactly as before" means. */
async function fullState(store: Lvstore): Promise<unknown> {
  const lvols = [];
  for (const lvol of store.lvols()) {
    const bytes = await store.read(lvol.id, 0, lvol.clusterMap.length * clusterBytes);
    lvols.push({ ...plainLvol(lvol), bytes: bytes.toString('base64').length + ':' + simpleHash(bytes) });
  }
  return { info: store.info(), lvols, byName: store.lvols().map((lvol) => store.findLvolByName(lvol.name)?.id), clones: store.lvols().map((lvol) => store.clonesOf(lvol.id).map((clone) => clone.id)) };
}

function plainLvol(lvol: LvolRecord): Record<string, unknown> {
  return {
    ...lvol,
    clusterMap: [lvol.clusterMap.length, ...lvol.clusterMap.dense()],
    xattrs: [...lvol.xattrs],
    checksum: lvol.checksum?.toString() ?? null,
    rangeChecksums: lvol.rangeChecksums ? [...lvol.rangeChecksums.dense()].map(String) : null,
    savedProgress: lvol.savedProgress ? { ...lvol.savedProgress, runningCrc: String(lvol.savedProgress.runningCrc), rangeCrcs: [...lvol.savedProgress.rangeCrcs].map(String) } : null,
  };
}

function simpleHash(bytes: Buffer): number {
  let hash = 2166136261;
  for (let index = 0; index < bytes.length; index += 61) hash = Math.imul(hash ^ bytes[index]!, 16777619) >>> 0;
  return hash;
}

/** What a client reads through the durable view: listings, lookups by name, xattrs, fragmaps. */
function durableView(store: Lvstore): unknown {
  return {
    name: store.durableName,
    free: store.durableInfo().freeClusters,
    lvols: store.durableLvolIds().map((id) => {
      const lvol = store.durableLvol(id)!;
      return {
        ...plainLvol(lvol),
        byName: store.durableLvolByName(lvol.name)?.id ?? null,
        clones: store.durableClonesOf(id).map((clone) => clone.id),
        xattrs: [...lvol.xattrs.keys()].map((name) => store.getXattr(id, name)),
        fragmap: store.fragmap(id, 0, 0).bitmap.toString('hex'),
      };
    }),
  };
}

/** A store with one lvol of each shape: thick, thin with data, a snapshot chain with a clone, xattrs, checksums. */
async function richStore(log: HeldLog): Promise<{ store: Lvstore; ids: Record<string, string> }> {
  const store = await Lvstore.create(new MemoryDevice(deviceBytes, blockBytes), { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, log, seededRuntime(11));
  const thick = await store.createLvol({ name: 'thick', clusterCount: 3, thin: false });
  await store.write(thick.id, 0, patternBytes(3 * clusterBytes, 1));
  const thin = await store.createLvol({ name: 'thin', clusterCount: 6, thin: true });
  await store.write(thin.id, clusterBytes, patternBytes(2 * clusterBytes, 2));
  await store.setXattr(thin.id, 'color', 'blue');
  const origin = await store.createLvol({ name: 'origin', clusterCount: 4, thin: true });
  await store.write(origin.id, 0, patternBytes(4 * clusterBytes, 3));
  const older = await store.snapshot(origin.id, 'older', { made: 'first' });
  await store.write(origin.id, 0, patternBytes(clusterBytes, 4));
  const newer = await store.snapshot(origin.id, 'newer', {});
  await store.storeChecksum(newer.id, 77n, ClusterChecksums.fromDense(new BigUint64Array([5n, 0n, 0n, 0n])));
  const clone = await store.clone(older.id, 'clone');
  const spare = await store.createLvol({ name: 'spare', clusterCount: 4, thin: true });
  const same = await store.snapshot(spare.id, 'same', {});
  return { store, ids: { thick: thick.id, thin: thin.id, origin: origin.id, older: older.id, newer: newer.id, clone: clone.id, spare: spare.id, same: same.id } };
}

/** One operation per change kind, several on the same lvols, all started while appends are held. */
function startEveryKind(store: Lvstore, ids: Record<string, string>): Array<Promise<unknown>> {
  return [
    store.rename('renamed'),
    store.createLvol({ name: 'fresh-thick', clusterCount: 2, thin: false }),
    store.createLvol({ name: 'fresh-thin', clusterCount: 2, thin: true }),
    store.renameLvol(ids.thin!, 'thin-renamed'),
    store.setXattr(ids.thin!, 'color', 'red'),
    store.setXattr(ids.thin!, 'size', 'large'),
    store.write(ids.thin!, 4 * clusterBytes, patternBytes(blockBytes, 5)),
    store.unmap(ids.thin!, clusterBytes, clusterBytes),
    store.resize(ids.thick!, 5),
    store.setReadOnly(ids.clone!),
    store.snapshot(ids.origin!, 'newest', {}),
    store.deleteLvol(ids.newer!),
    store.storeChecksum(ids.older!, 99n, null),
    store.saveChecksumProgress(ids.same!, null),
    store.setParent(ids.spare!, ids.older!),
  ];
}

describe('restoring the durable state when appends fail', () => {
  it('puts back every change kind exactly, for a group of commits that failed together', async () => {
    const log = new HeldLog();
    const { store, ids } = await richStore(log);
    const before = await fullState(store);
    const beforeView = durableView(store);
    log.hold();
    const operations = startEveryKind(store, ids).map((operation) => operation.then(() => 'durable', (error: unknown) => (error instanceof StorageError ? error.errno : String(error))));
    await waitFor(() => log.heldCount >= 8, 'appends to be held');
    // The active state has moved on; readers still see the durable one (free clusters aside:
    // operations still copying or zeroing hold clusters they have not committed yet).
    expect(store.findLvolByName('thin-renamed')?.id).toBe(ids.thin);
    expect({ ...(durableView(store) as object), free: 0 }).toEqual({ ...(beforeView as object), free: 0 });
    log.release('fail');
    const outcomes = await Promise.all(operations);
    expect(outcomes.filter((outcome) => outcome === 'durable')).toEqual([]);
    expect(await fullState(store)).toEqual(before);
    expect(durableView(store)).toEqual(beforeView);
    expectClusterAccounting(store);
  });

  it('keeps what became durable and restores only what failed after it', async () => {
    // Goal: the restore goes back to the last durable state, not to the start: changes acknowledged
    // before the failing append stay.
    const log = new HeldLog();
    const { store, ids } = await richStore(log);
    await store.renameLvol(ids.thin!, 'first-name');
    await store.setXattr(ids.thin!, 'color', 'green');
    const before = await fullState(store);
    log.hold();
    const later = [store.renameLvol(ids.thin!, 'second-name'), store.setXattr(ids.thin!, 'color', 'black'), store.deleteLvol(ids.thin!)];
    await waitFor(() => log.heldCount >= 1, 'an append to be held');
    log.release('fail');
    for (const operation of later) expect(await errnoOf(() => operation)).toBe('EIO');
    expect(await fullState(store)).toEqual(before);
    expect(store.findLvolByName('first-name')?.id).toBe(ids.thin);
    expect(store.getXattr(ids.thin!, 'color')).toBe('green');
  });

  it('shows readers a rename, create and delete only once durable, and their final state after', async () => {
    // Goal (issue 19, bug 6): a rename was visible by its new name while its append was in flight,
    // then gone when the append failed. Readers now see the durable state until the append lands.
    const log = new HeldLog();
    const { store, ids } = await richStore(log);
    log.hold();
    const work = [
      store.renameLvol(ids.thick!, 'thick-new'),
      store.createLvol({ name: 'born', clusterCount: 1, thin: true }),
      store.deleteLvol(ids.spare!).then(() => undefined),
    ];
    await waitFor(() => log.heldCount >= 3, 'appends to be held');
    expect(store.durableLvolByName('thick-new')).toBeUndefined();
    expect(store.durableLvolByName('thick')?.id).toBe(ids.thick);
    expect(store.durableLvolByName('born')).toBeUndefined();
    expect(store.durableLvolIds()).toContain(ids.spare);
    expect(store.durableClonesOf(ids.same!).map((clone) => clone.id)).toEqual([ids.spare]);
    log.release('durable');
    await Promise.all(work);
    expect(store.durableLvolByName('thick-new')?.id).toBe(ids.thick);
    expect(store.durableLvolByName('thick')).toBeUndefined();
    expect(store.durableLvolByName('born')).toBeDefined();
    expect(store.durableLvolIds()).not.toContain(ids.spare);
    expect(store.durableInfo()).toEqual(store.info());
  });
});
