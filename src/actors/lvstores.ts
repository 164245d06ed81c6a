// The lifecycle of lvstores on the node: examine a bdev (load what is on it, nested lvstores on
// its lvols too), create, grow, rename, delete, and unload when the base bdev goes away.
//
// Loaded stores are wired to the node here (external snapshots, change notifications). Damaged
// or clashing metadata is remembered per bdev and never overwritten. Lvols' own operations stay
// in node.ts; this part only attaches their actors when a store loads and drops them when it goes.
import { StorageError, fail, fromDeviceError } from '../errors.ts';
import { log } from '../log.ts';
import type { Runtime } from '../runtime.ts';
import { loopYielder, metadataLayout } from '../store/format.ts';
import { JournalMetadataLog } from '../store/journal.ts';
import { DamagedLvstoreError, openLvstore } from '../store/load.ts';
import { Lvstore, validateName } from '../store/lvstore.ts';
import { type LvstoreProbe, describeProbe, probeLvstore } from '../store/probe.ts';
import type { ClearMethod, LvolRecord } from '../store/metadata.ts';
import type { BlockDevice } from '../device/blockDevice.ts';
import { ChangeNotices } from './changeNotices.ts';
import type { ChecksumService } from './checksums.ts';
import type { EsnapHolds } from './externalSnapshots.ts';
import type { CopyService } from './copies.ts';
import { externalSourceByUuid } from './externalSnapshots.ts';
import type { ClaimableBdev } from '../bdev/bdev.ts';
import type { BdevHold } from '../bdev/bdevClaims.ts';
import type { NodeEvent } from './nodeEvents.ts';
import type { PriorityRouter } from './priority.ts';
import type { LvstoreEntry, Registry } from './registry.ts';
import { resumeInterruptedWalks } from './scheduler.ts';

export type LvstoreSelector = { uuid?: string | undefined; lvs_name?: string | undefined };

/** What the lifecycle needs of the node. */
export interface LvstoreHost {
  readonly registry: Registry;
  readonly runtime: Runtime;
  readonly router: PriorityRouter;
  readonly checksums: ChecksumService;
  readonly copies: CopyService;
  readonly esnaps: EsnapHolds;
  /** Makes the actor of one lvol of a store that just loaded. */
  attachActor(entry: LvstoreEntry, lvol: LvolRecord): void;
  emit(event: NodeEvent): void;
}

export class LvstoreLifecycle {
  /** Bdevs whose lvstore metadata failed to load: reported, never overwritten silently. */
  readonly damaged = new Map<string, DamagedLvstoreError>();
  /** Bdevs holding a healthy lvstore whose name or UUID clashes with a loaded one: not loaded. */
  readonly conflicting = new Map<string, string>();
  private readonly changeNotices: ChangeNotices;

  constructor(private readonly host: LvstoreHost) {
    this.changeNotices = new ChangeNotices((notice) => host.emit(notice));
  }

  /** Looks for an lvstore on a newly attached bdev and loads it with every lvol (SPDK's examine). */
  async examine(bdev: ClaimableBdev): Promise<void> {
    const { registry, runtime } = this.host;
    let store: Lvstore | undefined;
    try {
      store = await openLvstore(bdev.claimedDevice(), runtime);
    } catch (error) {
      if (!(error instanceof DamagedLvstoreError)) throw error;
      this.damaged.set(bdev.name, error);
      log('error', 'lvstore metadata is damaged; the bdev is left unclaimed and untouched', { bdev: bdev.name, error: error.message });
      return;
    }
    if (!store) return;
    if (registry.lvstoreByName(store.name) || registry.lvstores.has(store.id)) {
      // Healthy metadata, but its name or UUID is taken (a copy of a device, or a foreign store):
      // said as that, not as damage, and kept from being overwritten all the same.
      const taken = registry.lvstoreByName(store.name) ? `name ${store.name}` : `UUID ${store.id}`;
      const detail = `bdev ${bdev.name} holds lvstore ${store.name} (${store.id}), but an lvstore with the same ${taken} is already loaded`;
      this.conflicting.set(bdev.name, detail);
      log('error', 'lvstore not loaded: its name or UUID is already in use', { bdev: bdev.name, detail });
      return;
    }
    const claim = bdev.claims.claim('exclusive_write', lvstoreHolder(store));
    const entry: LvstoreEntry = { store, bdevName: bdev.name, actors: new Map(), claim };
    this.watch(store);
    registry.lvstores.set(store.id, entry);
    for (const lvol of store.lvols()) this.host.attachActor(entry, lvol);
    this.host.esnaps.rescan(entry);
    const resumed = await resumeInterruptedWalks(registry, this.host.router.locks, entry);
    this.host.emit({ type: 'lvstore_created', uuid: store.id, name: store.name });
    log('info', 'lvstore loaded', { lvstore: store.name, uuid: store.id, bdev: bdev.name, lvols: store.record.lvols.size, checksumsResumed: resumed });
    // An lvol may carry an lvstore of its own (nested): SPDK examines lvol bdevs too.
    // An lvol that reads as zeros holds no lvstore: only the others are read.
    const candidates = [...store.record.lvols.values()].filter((lvol) => !store.readsAsZeros(lvol.id));
    for (const lvol of candidates) {
      try {
        await this.examine(registry.lvolBdev(lvol.id));
      } catch (error) {
        // An lvol that cannot be read now (a degraded esnap clone) carries no lvstore we can load.
        log('warn', 'lvol not examined for a nested lvstore: it cannot be read', { lvol: lvol.id, error: String(error) });
      }
    }
  }

  /**
   * bdev_lvol_create_lvstore. A bdev that holds an lvstore is refused naming it, whatever the
   * node knows of it — loaded (claimed), not loaded for a name clash, damaged, or only found on
   * the device now (written by another node, or never examined) — unless the caller said
   * `overwrite`; a loaded one is never overwritten (delete it instead).
   */
  async create(options: { bdevName: string; lvsName: string; clusterBytes: number; clearMethod: ClearMethod; overwrite?: boolean }): Promise<string> {
    const { registry, runtime } = this.host;
    const bdev = this.claimable(options.bdevName);
    if (bdev.claims.writer() !== undefined) throw this.claimedError(bdev);
    if (bdev.readOnly()) fail('EPERM', `bdev ${bdev.name} is read-only`);
    if (!options.overwrite) this.assertNotKnownToHoldLvstore(bdev.name);
    validateName('lvstore', options.lvsName);
    if (registry.lvstoreByName(options.lvsName)) fail('EEXIST', `lvstore ${options.lvsName} already exists`);
    // Claimed before the first await so a concurrent create cannot take the same bdev (EBUSY
    // naming them while an export or copy has it open).
    let claim = bdev.claims.claim('exclusive_write', `lvstore ${options.lvsName} (being created)`);
    try {
      const device = bdev.claimedDevice();
      if (!options.overwrite) await this.assertHoldsNoLvstore(bdev.name, device);
      const store = await Lvstore.create(
        device,
        { name: options.lvsName, clusterBytes: options.clusterBytes, clearMethod: options.clearMethod },
        (record) => JournalMetadataLog.format(device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
        runtime,
      );
      if (registry.lvstoreByName(options.lvsName)) fail('EEXIST', `lvstore ${options.lvsName} already exists`);
      // Named by the UUID now; nothing else can claim between the release and the claim.
      claim.release();
      claim = bdev.claims.claim('exclusive_write', lvstoreHolder(store));
      // What was there is gone: the bdev is no longer an unloaded lvstore.
      this.damaged.delete(bdev.name);
      this.conflicting.delete(bdev.name);
      this.watch(store);
      registry.lvstores.set(store.id, { store, bdevName: bdev.name, actors: new Map(), claim });
      this.host.emit({ type: 'lvstore_created', uuid: store.id, name: store.name });
      log('info', 'lvstore created', { lvstore: store.name, uuid: store.id, bdev: bdev.name, ...(options.overwrite ? { overwrite: true } : {}) });
      return store.id;
    } catch (error) {
      claim.release();
      throw error;
    }
  }

  /** A bdev an lvstore can be created on: a base bdev or an lvol (by UUID or alias). */
  private claimable(name: string): ClaimableBdev {
    const bdev = this.host.registry.findBdev(name);
    if (!('claimedDevice' in bdev)) fail('EINVAL', `bdev ${name} (${bdev.kind}) cannot hold an lvstore`);
    return bdev as ClaimableBdev;
  }

  /** The loaded lvstore living on `bdevName`, if any (an lvstore being created is not loaded yet). */
  lvstoreOn(bdevName: string): LvstoreEntry | undefined {
    for (const entry of this.host.registry.lvstores.values()) if (entry.bdevName === bdevName) return entry;
    return undefined;
  }

  /**
   * A claimed bdev, as SPDK's clients know it: -1 "Operation not permitted" on SPDK's socket
   * (spdk_tgt answers so: "bdev already claimed"), -16 on WebSocket; `data.lvstore` names the
   * claimer, and marks the refusal for the SPDK mapping (transport/errorMapping.ts).
   */
  private claimedError(bdev: ClaimableBdev): StorageError {
    const bdevName = bdev.name;
    const entry = this.lvstoreOn(bdevName);
    if (!entry) {
      return new StorageError('EBUSY', { detail: `bdev ${bdevName} is getting an lvstore`, data: { bdev: bdevName, lvstore: { state: 'being created' } } });
    }
    const { id, name } = entry.store;
    return new StorageError('EBUSY', {
      detail: `bdev ${bdevName} is already claimed by lvstore ${name} (${id})`,
      data: { bdev: bdevName, lvstore: { state: 'loaded', uuid: id, name } },
    });
  }

  /** What examine found and did not load: a name clash, or damage. */
  private assertNotKnownToHoldLvstore(bdevName: string): void {
    const hint = 'pass "overwrite": true to replace it';
    const conflict = this.conflicting.get(bdevName);
    if (conflict) {
      throw new StorageError('EEXIST', {
        detail: `${conflict}; refusing to overwrite it (rename or delete the loaded one, then re-attach this bdev; or ${hint})`,
        data: { bdev: bdevName, lvstore: { state: 'name or UUID clash' } },
      });
    }
    const damage = this.damaged.get(bdevName);
    if (damage) {
      throw new StorageError('EIO', {
        wire: 'internal',
        detail: `${damage.detail}; refusing to overwrite it (${hint})`,
        data: { bdev: bdevName, lvstore: { state: 'damaged' } },
      });
    }
  }

  /**
   * The device itself, read now: examine may not have run (a start that failed halfway used to
   * leave such a bdev attached and unclaimed), or another node may have written it since.
   */
  private async assertHoldsNoLvstore(bdevName: string, device: BlockDevice): Promise<void> {
    const bdev = { name: bdevName };
    let probe: LvstoreProbe;
    try {
      probe = await probeLvstore(device);
    } catch (error) {
      throw fromDeviceError(error, `bdev ${bdev.name} could not be read to check it holds no lvstore`);
    }
    if (probe.kind === 'none') return;
    const hint = 'refusing to overwrite it (pass "overwrite": true to replace it)';
    if (probe.kind === 'lvnode-damaged') {
      // As examine reports damage it found (assertNotKnownToHoldLvstore).
      throw new StorageError('EIO', {
        wire: 'internal',
        detail: `bdev ${bdev.name} holds ${describeProbe(probe)}; ${hint}`,
        data: { bdev: bdev.name, lvstore: { state: 'damaged' } },
      });
    }
    const state = probe.kind === 'spdk' ? 'spdk' : 'not loaded';
    const named = { ...(probe.uuid ? { uuid: probe.uuid } : {}), ...(probe.name ? { name: probe.name } : {}) };
    throw new StorageError('EEXIST', {
      detail: `bdev ${bdev.name} holds ${describeProbe(probe)}; ${hint}`,
      data: { bdev: bdev.name, lvstore: { state, ...named } },
    });
  }

  /** bdev_lvol_grow_lvstore: the base bdev's file grew; the lvstore takes the new clusters in. */
  async grow(selector: LvstoreSelector): Promise<void> {
    const entry = this.host.registry.lvstore(selector);
    await entry.store.device.refreshSize?.();
    const { clusterTotal, added } = await entry.store.grow();
    if (added > 0) log('info', 'lvstore grown', { lvstore: entry.store.name, clusterTotal, added });
  }

  async rename(oldName: string, newName: string): Promise<void> {
    const { registry } = this.host;
    const entry = registry.lvstoreByName(oldName) ?? fail('ENODEV', `lvstore ${oldName} does not exist`);
    if (oldName === newName) return;
    if (registry.lvstoreByName(newName)) fail('EEXIST', `lvstore ${newName} already exists`);
    await entry.store.rename(newName);
  }

  async delete(selector: LvstoreSelector): Promise<void> {
    const entry = this.host.registry.lvstore(selector);
    const operation = 'bdev_lvol_delete_lvstore';
    await this.host.router.run({
      operation,
      whole: true,
      touched: () => [...entry.actors.keys()],
      validate: () => this.assertLvolsDeletable(entry),
      requeue: false,
      work: () => this.drop(entry, operation, 'destroy'),
    });
    this.host.emit({ type: 'lvstore_deleted', uuid: entry.store.id, name: entry.store.name });
    log('info', 'lvstore deleted', { lvstore: entry.store.name, uuid: entry.store.id });
  }

  /**
   * Unloads an lvstore (its base bdev goes away): lvstores nested on its lvols first, copies and
   * checksum walks stopped between clusters, then its lvols disappear and the store is closed.
   * Refused, before anything is unloaded, while an lvol of any store of the tree is exported.
   */
  async unload(entry: LvstoreEntry, operation: string): Promise<void> {
    this.assertUnloadable(entry);
    const tree = this.treeOf(entry);
    for (const member of tree.reverse()) {
      await this.host.router.run({
        operation,
        whole: true,
        touched: () => [...member.actors.keys()],
        requeue: false,
        work: () => this.drop(member, operation, 'close'),
      });
      this.host.emit({ type: 'lvstore_deleted', uuid: member.store.id, name: member.store.name, unloaded: true });
      log('info', 'lvstore unloaded: its base bdev was deleted', { lvstore: member.store.name, uuid: member.store.id, bdev: member.bdevName });
    }
  }

  /** Throws what `unload` would refuse with (an lvol of the tree exported), before anything changes. */
  assertUnloadable(entry: LvstoreEntry): void {
    const tree = this.treeOf(entry);
    const nestedClaims = new Map(tree.map((member) => [member.bdevName, member.claim]));
    for (const member of tree) this.assertLvolsDeletable(member, nestedClaims);
  }

  /**
   * Throws EBUSY when an lvol of `entry` is held: exported, or carrying an lvstore not in `except`
   * (an unload takes the nested ones with it). A pass over the few held lvols, not over all.
   */
  private assertLvolsDeletable(entry: LvstoreEntry, except: ReadonlyMap<string, BdevHold> = new Map()): void {
    for (const [lvolId, claims] of this.host.registry.lvolBdevs.held()) {
      const lvol = entry.store.record.lvols.get(lvolId);
      if (lvol && entry.actors.has(lvolId)) claims.assertDeletable(`${entry.store.name}/${lvol.name}`, except.get(lvolId));
    }
  }

  /** Drops pending change notices (the node is closing). */
  dispose(): void {
    this.changeNotices.dispose();
  }

  /** Wires a loaded or created lvstore to the node: external snapshots, change notifications. */
  private watch(store: Lvstore): void {
    store.externalSource = (uuid) => externalSourceByUuid(this.host.registry, uuid);
    store.onCommitted = (changes) => this.changeNotices.committed(store.id, changes);
  }

  /** `entry` and every lvstore nested on its lvols, at any depth, parents first. */
  private treeOf(entry: LvstoreEntry): LvstoreEntry[] {
    const out = [entry];
    for (let index = 0; index < out.length; index++) {
      const parent = out[index]!;
      for (const nestedEntry of this.host.registry.lvstores.values()) {
        if (parent.actors.has(nestedEntry.bdevName)) out.push(nestedEntry);
      }
    }
    return out;
  }

  /**
   * An lvstore leaves the node (under the priority router's lock): copies from or to its lvols
   * end, their actors go, and the store is closed (unload) or erased (delete); its bdev is free.
   */
  private async drop(entry: LvstoreEntry, operation: string, how: 'close' | 'destroy'): Promise<void> {
    const { registry, copies, checksums } = this.host;
    await copies.stopInvolving({ lvolIds: [...entry.actors.keys()] }, operation);
    // Out of the registry first: from here on requests find no such lvstore, rather than one
    // whose metadata is being erased or whose actors are going.
    const before = [...registry.lvstores.entries()];
    registry.lvstores.delete(entry.store.id);
    try {
      await (how === 'destroy' ? entry.store.destroy() : entry.store.close());
    } catch (error) {
      // Failed means unchanged: the lvstore is back where it was, with its actors (SPEC §9).
      const now = new Map(registry.lvstores);
      registry.lvstores.clear();
      for (const [id, kept] of before) if (kept === entry || now.has(id)) registry.lvstores.set(id, kept);
      for (const [id, kept] of now) if (!registry.lvstores.has(id)) registry.lvstores.set(id, kept);
      throw error;
    }
    // In slices: 100,000 actor stops held the loop ~0.6 s.
    const pause = loopYielder(2);
    let disposed = 0;
    for (const [lvolId, actor] of entry.actors) {
      actor.dispose();
      checksums.forget(lvolId);
      registry.lvolBdevs.forget(lvolId);
      if (++disposed % 64 === 0) await pause();
    }
    entry.actors.clear();
    this.host.esnaps.release(entry.store.id);
    entry.claim.release();
  }
}

/** How an lvstore names itself as the holder of its bdev's claim. */
function lvstoreHolder(store: Lvstore): string {
  return `lvstore ${store.name} (${store.id})`;
}
