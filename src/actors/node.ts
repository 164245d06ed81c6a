// The storage node: bdevs, lvstores and lvol actors, and every operation the RPC methods call.
//
// Priority operations (SPEC §6.5) go through the priority router (./priority.ts): they hold the
// lvols they touch, validate, preempt any checksum running on them (waiting at most one cluster
// step), do their work and re-queue what they preempted. Everything else never waits for a
// checksum. Checksum operations live in ./checksums.ts, the background scheduler in ./scheduler.ts.
import { EventEmitter } from 'node:events';
import type { BlockDevice } from '../device/blockDevice.ts';
import { MemoryDevice } from '../device/memoryDevice.ts';
import type { IoQueueStats } from '../device/ioQueue.ts';
import { QueuedDevice } from '../device/queuedDevice.ts';
import { StorageError, fail } from '../errors.ts';
import { log } from '../log.ts';
import type { Runtime } from '../runtime.ts';
import { Lvstore, sizeMibToClusterCount, validateName } from '../store/lvstore.ts';
import { metadataLayout } from '../store/format.ts';
import { JournalMetadataLog } from '../store/journal.ts';
import { DamagedLvstoreError, openLvstore } from '../store/load.ts';
import type { ClearMethod, LvolRecord } from '../store/metadata.ts';
import { type BdevConfigEntry, type SpdkConfig, assertBdevNameFree, bdevConfig, openAioDevice } from './baseBdevs.ts';
import { ChecksumService } from './checksums.ts';
import { InspectionHub } from './inspector.ts';
import { LvolActor, LvolActorStarter } from './lvolActor.ts';
import { CopyService } from './copies.ts';
import { type ClaimableBdev, LvolBdevs } from './lvolBdevs.ts';
import { externalSourceByUuid, resolveExternalSource } from './externalSnapshots.ts';
import { ChangeNotices } from './changeNotices.ts';
import { NbdExports } from './nbdExports.ts';
import { PriorityRouter } from './priority.ts';
import { type BackgroundOptions, BackgroundScheduler } from './scheduler.ts';
import { type BaseBdev, type LvstoreEntry, Registry, type ResolvedLvol } from './registry.ts';

/** What the node announces to subscribers (SPEC §8 notifications). */
export interface NodeEvent {
  type:
    | 'bdev_created'
    | 'bdev_deleted'
    | 'lvstore_created'
    | 'lvstore_deleted'
    | 'lvol_created'
    | 'lvol_deleted'
    | 'lvstore_changed'
    | 'lvol_changed'
    | 'checksum_state'
    | 'checksum_progress'
    | 'checksum_preempted'
    | 'copy_state'
    | 'copy_progress';
  [key: string]: unknown;
}

export type { BdevConfigEntry, SpdkConfig };

export type LvstoreSelector = { uuid?: string | undefined; lvs_name?: string | undefined };

export interface StorageNodeOptions {
  inspector?: InspectionHub;
  /**
   * Awaited after every base bdev creation or deletion, before the RPC answers: the place where
   * the bdev list is made durable (serve.ts writes it to the data directory).
   */
  onBaseBdevsChanged?: (config: SpdkConfig) => Promise<void>;
  /** The background options saved by an earlier run (SPEC §6.6), and where new ones are saved. */
  backgroundOptions?: BackgroundOptions;
  onBackgroundOptionsChanged?: (options: BackgroundOptions) => Promise<void>;
}

export class StorageNode {
  readonly registry = new Registry();
  readonly inspector: InspectionHub;
  readonly events = new EventEmitter<{ event: [NodeEvent] }>();
  readonly scheduler: BackgroundScheduler;
  readonly router: PriorityRouter;
  readonly checksums: ChecksumService;
  /** NBD exports (SPEC §7); an exported bdev cannot be deleted until its export is stopped. */
  readonly nbd: NbdExports;
  /** Shallow, range and deep copies (replica rebuild); a delete of either end stops them first. */
  readonly copies: CopyService;

  /** Lvols with an lvstore nested on them (SPDK's nested lvstores): their claims and devices. */
  readonly lvolBdevs: LvolBdevs;

  /** Bdevs whose lvstore metadata failed to load: reported, never overwritten silently. */
  readonly damaged = new Map<string, DamagedLvstoreError>();
  /** Bdevs holding a healthy lvstore whose name or UUID clashes with a loaded one: not loaded. */
  readonly conflicting = new Map<string, string>();
  private readonly onBaseBdevsChanged: (config: SpdkConfig) => Promise<void>;
  private readonly changeNotices = new ChangeNotices((notice) => this.emit(notice));
  /** Starts lvol actors in slices after the lvols are attached (SPEC §10: answer while 100,000 start). */
  readonly actorStarter = new LvolActorStarter();
  private mallocCount = 0;

  constructor(
    readonly runtime: Runtime,
    options: StorageNodeOptions = {},
  ) {
    this.inspector = options.inspector ?? new InspectionHub();
    this.onBaseBdevsChanged = options.onBaseBdevsChanged ?? (async () => {});
    this.events.setMaxListeners(0);
    this.scheduler = new BackgroundScheduler(runtime, this.inspector, options.backgroundOptions, options.onBackgroundOptionsChanged);
    this.router = new PriorityRouter((lvolId) => this.actorOf(lvolId));
    this.checksums = new ChecksumService(this.registry, this.router, runtime, (event) => this.emit(event));
    this.nbd = new NbdExports(this);
    this.lvolBdevs = new LvolBdevs(this.registry);
    this.copies = new CopyService(this.registry, this.router, this.scheduler, this.inspector, runtime, (status, what) =>
      this.emit({ type: what === 'state' ? 'copy_state' : 'copy_progress', ...status }),
    );
  }

  /** The base bdevs as SPDK config calls, in creation order (save_config). */
  saveConfig(): SpdkConfig {
    return bdevConfig(this.registry);
  }

  private emit(event: NodeEvent): void {
    this.events.emit('event', event);
  }

  /** Wires a loaded or created lvstore to the node: external snapshots, change notifications. */
  private watchStore(store: Lvstore): void {
    store.externalSource = (uuid) => externalSourceByUuid(this.registry, uuid);
    store.onCommitted = (changes) => this.changeNotices.committed(store.id, changes);
  }

  // ---- base bdevs ----

  private async addBaseBdev(bdev: BaseBdev): Promise<string> {
    this.registry.bdevs.set(bdev.name, bdev);
    this.emit({ type: 'bdev_created', name: bdev.name, kind: bdev.kind });
    log('info', 'bdev created', { bdev: bdev.name, kind: bdev.kind, sizeBytes: bdev.device.sizeBytes });
    await this.onBaseBdevsChanged(this.saveConfig());
    await this.examine(bdev);
    return bdev.name;
  }

  /** Looks for an lvstore on a newly attached bdev and loads it with every lvol (SPDK's examine). */
  private async examine(bdev: ClaimableBdev): Promise<void> {
    let store: Lvstore | undefined;
    try {
      store = await openLvstore(bdev.device, this.runtime);
    } catch (error) {
      if (!(error instanceof DamagedLvstoreError)) throw error;
      this.damaged.set(bdev.name, error);
      log('error', 'lvstore metadata is damaged; the bdev is left unclaimed and untouched', { bdev: bdev.name, error: error.message });
      return;
    }
    if (!store) return;
    if (this.registry.lvstoreByName(store.name) || this.registry.lvstores.has(store.id)) {
      // Healthy metadata, but its name or UUID is taken (a copy of a device, or a foreign store):
      // said as that, not as damage, and kept from being overwritten all the same.
      const taken = this.registry.lvstoreByName(store.name) ? `name ${store.name}` : `UUID ${store.id}`;
      const detail = `bdev ${bdev.name} holds lvstore ${store.name} (${store.id}), but an lvstore with the same ${taken} is already loaded`;
      this.conflicting.set(bdev.name, detail);
      log('error', 'lvstore not loaded: its name or UUID is already in use', { bdev: bdev.name, detail });
      return;
    }
    bdev.claimedBy = store.id;
    const entry: LvstoreEntry = { store, bdevName: bdev.name, actors: new Map() };
    this.watchStore(store);
    this.registry.lvstores.set(store.id, entry);
    for (const lvol of store.lvols()) this.attachActor(entry, lvol);
    const resumed = this.checksums.resumeInterrupted(entry);
    this.emit({ type: 'lvstore_created', uuid: store.id, name: store.name });
    log('info', 'lvstore loaded', { lvstore: store.name, uuid: store.id, bdev: bdev.name, lvols: store.lvols().length, checksumsResumed: resumed });
    // An lvol may carry an lvstore of its own (nested): SPDK examines lvol bdevs too.
    // An lvol that reads as zeros holds no lvstore: only the others are read.
    const candidates = [...store.record.lvols.values()].filter((lvol) => !store.readsAsZeros(lvol.id));
    for (const lvol of candidates) {
      try {
        await this.examine(this.lvolBdevs.of(entry, lvol.id));
      } catch (error) {
        // An lvol that cannot be read now (a degraded esnap clone) carries no lvstore we can load.
        this.lvolBdevs.forget(lvol.id);
        log('warn', 'lvol not examined for a nested lvstore: it cannot be read', { lvol: lvol.id, error: String(error) });
      }
    }
  }

  createMallocBdev(options: { name?: string; numBlocks: number; blockSize: number; uuid?: string }): Promise<string> {
    // SPDK's default names: Malloc0, Malloc1, … counting every malloc bdev made, skipping taken names.
    let name = options.name;
    while (name === undefined || (options.name === undefined && this.registry.bdevNameTaken(name))) name = `Malloc${this.mallocCount++}`;
    assertBdevNameFree(this.registry, name);
    if (options.numBlocks < 1) fail('EINVAL', 'num_blocks must be at least 1');
    const device = new QueuedDevice(new MemoryDevice(options.numBlocks * options.blockSize, options.blockSize));
    const uuid = options.uuid ?? this.runtime.uuid();
    return this.addBaseBdev({ name, uuid, kind: 'malloc', device, readOnly: false, claimedBy: null });
  }

  /**
   * Attaches a block device the caller opened as a base bdev (kind malloc in listings): for
   * embedding lvnode, and for tests that put a simulated, fault-injecting device under a node.
   */
  attachBaseDevice(name: string, device: BlockDevice): Promise<string> {
    assertBdevNameFree(this.registry, name);
    return this.addBaseBdev({ name, uuid: this.runtime.uuid(), kind: 'malloc', device: new QueuedDevice(device), readOnly: false, claimedBy: null, external: true });
  }

  async createAioBdev(request: { name: string; filename: string; blockSize: number; readOnly: boolean; uuid?: string }): Promise<string> {
    const { device, filename } = await openAioDevice(this.registry, request);
    return this.addBaseBdev({
      name: request.name,
      uuid: request.uuid ?? this.runtime.uuid(),
      kind: 'aio',
      device,
      filename,
      readOnly: request.readOnly,
      claimedBy: null,
    });
  }

  async deleteBaseBdev(nameOrUuid: string, kind: BaseBdev['kind']): Promise<void> {
    const bdev = this.registry.bdev(nameOrUuid);
    const name = bdev.name;
    if (bdev.kind !== kind) fail('ENODEV', `bdev ${name} is not a ${kind} bdev`);
    if (bdev.claimedBy === 'pending') fail('EBUSY', `bdev ${name} is getting an lvstore`);
    this.nbd.assertNotExported(name);
    const claimer = bdev.claimedBy ? this.registry.lvstores.get(bdev.claimedBy) : undefined;
    // As SPDK: deleting the base bdev of an lvstore hot-removes it — the lvstore and its lvols are
    // unloaded (closed, not erased: a file bdev attached again brings them back).
    if (claimer) await this.unloadLvstore(claimer, `bdev_${kind}_delete`);
    await this.copies.stopInvolving({ baseBdev: name }, `bdev_${kind}_delete`);
    this.registry.bdevs.delete(name);
    this.damaged.delete(name);
    this.conflicting.delete(name);
    await bdev.device.close();
    await this.onBaseBdevsChanged(this.saveConfig());
    this.emit({ type: 'bdev_deleted', name });
    log('info', 'bdev deleted', { bdev: name });
  }

  // ---- lvstores ----

  /** The lvstore nested on this lvol, if any (the listings show the lvol claimed). */
  lvolClaimedBy(lvolId: string): string | null {
    return this.lvolBdevs.claimedBy(lvolId);
  }

  async createLvstore(options: { bdevName: string; lvsName: string; clusterBytes: number; clearMethod: ClearMethod }): Promise<string> {
    const bdev = this.lvolBdevs.claimable(options.bdevName);
    if (bdev.claimedBy) fail('EBUSY', `bdev ${bdev.name} is already claimed by lvstore ${bdev.claimedBy}`);
    if (bdev.readOnly) fail('EPERM', `bdev ${bdev.name} is read-only`);
    this.nbd.assertNotExported(bdev.name);
    const conflict = this.conflicting.get(bdev.name);
    if (conflict) fail('EEXIST', `${conflict}; refusing to overwrite it (rename or delete the loaded one, then re-attach this bdev)`);
    const damage = this.damaged.get(bdev.name);
    if (damage) throw new StorageError('EIO', { wire: 'internal', detail: `${damage.detail}; refusing to overwrite it (to reuse the device, erase its first blocks outside lvnode)` });
    validateName('lvstore', options.lvsName);
    if (this.registry.lvstoreByName(options.lvsName)) fail('EEXIST', `lvstore ${options.lvsName} already exists`);
    // Claim before the first await so a concurrent create cannot take the same bdev.
    bdev.claimedBy = 'pending';
    try {
      const store = await Lvstore.create(
        bdev.device,
        { name: options.lvsName, clusterBytes: options.clusterBytes, clearMethod: options.clearMethod },
        (record) => JournalMetadataLog.format(bdev.device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
        this.runtime,
      );
      if (this.registry.lvstoreByName(options.lvsName)) fail('EEXIST', `lvstore ${options.lvsName} already exists`);
      bdev.claimedBy = store.id;
      this.watchStore(store);
      this.registry.lvstores.set(store.id, { store, bdevName: bdev.name, actors: new Map() });
      this.emit({ type: 'lvstore_created', uuid: store.id, name: store.name });
      log('info', 'lvstore created', { lvstore: store.name, uuid: store.id, bdev: bdev.name });
      return store.id;
    } catch (error) {
      bdev.claimedBy = null;
      throw error;
    }
  }

  /**
   * Unloads an lvstore (its base bdev goes away): lvstores nested on its lvols first, copies and
   * checksum walks stopped between clusters, then its lvols disappear and the store is closed.
   * Refused while one of its lvols is exported over NBD.
   */
  private async unloadLvstore(entry: LvstoreEntry, operation: string): Promise<void> {
    // Refused before anything is unloaded: no lvstore of the tree may have an exported lvol.
    const tree = this.lvstoresOn(entry);
    for (const member of tree) this.nbd.assertLvstoreNotExported(member);
    for (const member of tree.reverse()) await this.unloadOne(member, operation);
  }

  /** `entry` and every lvstore nested on its lvols, at any depth, parents first. */
  private lvstoresOn(entry: LvstoreEntry): LvstoreEntry[] {
    const out = [entry];
    for (let index = 0; index < out.length; index++) {
      for (const lvolId of out[index]!.actors.keys()) {
        const nested = this.lvolClaimedBy(lvolId);
        const nestedEntry = nested ? this.registry.lvstores.get(nested) : undefined;
        if (nestedEntry) out.push(nestedEntry);
      }
    }
    return out;
  }

  private async unloadOne(entry: LvstoreEntry, operation: string): Promise<void> {
    await this.copies.stopInvolving({ lvolIds: [...entry.actors.keys()] }, operation);
    await this.router.run({
      operation,
      touched: () => [...entry.actors.keys()],
      requeue: false,
      work: async () => {
        for (const actor of entry.actors.values()) actor.dispose();
        entry.actors.clear();
        for (const lvol of entry.store.lvols()) this.lvolBdevs.forget(lvol.id);
        this.registry.lvstores.delete(entry.store.id);
        await entry.store.close();
        const bdev = this.lvolBdevs.underlying(entry.bdevName);
        if (bdev) bdev.claimedBy = null;
      },
    });
    this.emit({ type: 'lvstore_deleted', uuid: entry.store.id, name: entry.store.name, unloaded: true });
    log('info', 'lvstore unloaded: its base bdev was deleted', { lvstore: entry.store.name, uuid: entry.store.id, bdev: entry.bdevName });
  }

  /** bdev_lvol_grow_lvstore: the base bdev's file grew; the lvstore takes the new clusters in. */
  async growLvstore(selector: LvstoreSelector): Promise<void> {
    const entry = this.registry.lvstore(selector);
    const bdev = this.lvolBdevs.underlying(entry.bdevName);
    await bdev?.device.refreshSize?.();
    const { clusterTotal, added } = await entry.store.grow();
    if (added > 0) log('info', 'lvstore grown', { lvstore: entry.store.name, clusterTotal, added });
  }

  async deleteLvstore(selector: LvstoreSelector): Promise<void> {
    const entry = this.registry.lvstore(selector);
    await this.router.run({
      operation: 'bdev_lvol_delete_lvstore',
      touched: () => [...entry.actors.keys()],
      validate: () => {
        this.nbd.assertLvstoreNotExported(entry);
        for (const lvolId of entry.actors.keys()) {
          const nested = this.lvolClaimedBy(lvolId);
          if (nested) fail('EBUSY', `lvol ${lvolId} carries lvstore ${nested}; delete that lvstore first`);
        }
      },
      requeue: false,
      work: async () => {
        await this.copies.stopInvolving({ lvolIds: [...entry.actors.keys()] }, 'bdev_lvol_delete_lvstore');
        for (const lvolId of entry.actors.keys()) this.lvolBdevs.forget(lvolId);
        for (const actor of entry.actors.values()) actor.dispose();
        entry.actors.clear();
        this.registry.lvstores.delete(entry.store.id);
        await entry.store.destroy();
        const bdev = this.lvolBdevs.underlying(entry.bdevName);
        if (bdev) bdev.claimedBy = null;
      },
    });
    this.emit({ type: 'lvstore_deleted', uuid: entry.store.id, name: entry.store.name });
    log('info', 'lvstore deleted', { lvstore: entry.store.name, uuid: entry.store.id });
  }

  async renameLvstore(oldName: string, newName: string): Promise<void> {
    const entry = this.registry.lvstoreByName(oldName) ?? fail('ENODEV', `lvstore ${oldName} does not exist`);
    if (oldName === newName) return;
    if (this.registry.lvstoreByName(newName)) fail('EEXIST', `lvstore ${newName} already exists`);
    await entry.store.rename(newName);
  }

  // ---- lvols ----

  /** One options object for every lvol actor (an object per lvol would be garbage to collect). */
  private get actorOptions(): { admission: BackgroundScheduler; starter: LvolActorStarter } {
    return (this.sharedActorOptions ??= { admission: this.scheduler, starter: this.actorStarter });
  }
  private sharedActorOptions: { admission: BackgroundScheduler; starter: LvolActorStarter } | undefined;

  private attachActor(entry: LvstoreEntry, lvol: LvolRecord): LvolActor {
    const actor = new LvolActor(lvol.id, entry.store, this.runtime, this.inspector, this.checksums.onChange, this.actorOptions);
    entry.actors.set(lvol.id, actor);
    this.emit({ type: 'lvol_created', uuid: lvol.id, alias: `${entry.store.name}/${lvol.name}` });
    return actor;
  }

  private detachActor(entry: LvstoreEntry, lvolId: string): void {
    entry.actors.get(lvolId)?.dispose();
    entry.actors.delete(lvolId);
    this.checksums.forget(lvolId);
    this.emit({ type: 'lvol_deleted', uuid: lvolId });
  }


  async createLvol(options: {
    selector: LvstoreSelector;
    name: string;
    sizeMib: number;
    thin: boolean;
    clearMethod?: ClearMethod;
  }): Promise<string> {
    const entry = this.registry.lvstore(options.selector);
    const clusterCount = sizeMibToClusterCount(options.sizeMib, entry.store.clusterBytes);
    const lvol = await entry.store.createLvol({
      name: options.name,
      clusterCount,
      thin: options.thin,
      ...(options.clearMethod ? { clearMethod: options.clearMethod } : {}),
    });
    this.attachActor(entry, lvol);
    return lvol.id;
  }


  private actorOf(lvolId: string): LvolActor | undefined {
    for (const entry of this.registry.lvstores.values()) {
      const actor = entry.actors.get(lvolId);
      if (actor) return actor;
    }
    return undefined;
  }

  async deleteLvol(name: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    // The only clone inherits the clusters (merge): its checksum conflicts too.
    const touched = () => {
      const clones = entry.store.clonesOf(lvol.id);
      return clones.length === 1 ? [lvol.id, clones[0]!.id] : [lvol.id];
    };
    await this.router.run({
      operation: 'bdev_lvol_delete',
      touched,
      validate: () => {
        this.nbd.assertNotExported(lvol.id, name);
        const nested = this.lvolClaimedBy(lvol.id);
        if (nested) fail('EBUSY', `${name} carries lvstore ${nested}; delete that lvstore first`);
        entry.store.checkDelete(lvol.id);
      },
      work: async () => {
        // A copy from or to it ends first, between clusters (SPDK would refuse with EBUSY).
        await this.copies.stopInvolving({ lvolIds: [lvol.id] }, 'bdev_lvol_delete');
        const { mergedInto } = await entry.store.deleteLvol(lvol.id);
        this.detachActor(entry, lvol.id);
        if (mergedInto) this.actorOf(mergedInto)?.invalidate();
      },
    });
  }

  /** bdev_lvol_clone_bdev: a thin lvol in `lvsName` over the external snapshot `bdevName`. */
  async cloneBdev(bdevName: string, lvsName: string, cloneName: string): Promise<string> {
    const entry = this.registry.lvstore({ lvs_name: lvsName });
    validateName('lvol', cloneName);
    const external = resolveExternalSource(this.registry, bdevName, entry.store.id);
    const clone = await entry.store.cloneExternal(external, cloneName);
    this.attachActor(entry, clone);
    return clone.id;
  }

  /** bdev_lvol_set_parent_bdev: a thin lvol reads through to external snapshot `bdevName` from now on. */
  async setParentBdev(lvolName: string, bdevName: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(lvolName);
    await entry.store.setExternalParent(lvol.id, resolveExternalSource(this.registry, bdevName, entry.store.id));
  }

  async snapshot(lvolName: string, snapshotName: string, xattrs: Record<string, string>): Promise<string> {
    const { entry, lvol } = this.registry.lvol(lvolName);
    const snapshot = await entry.store.snapshot(lvol.id, snapshotName, xattrs);
    this.attachActor(entry, snapshot);
    return snapshot.id;
  }

  async clone(snapshotName: string, cloneName: string): Promise<string> {
    const { entry, lvol } = this.registry.lvol(snapshotName);
    return this.router.run({
      operation: 'bdev_lvol_clone',
      touched: () => [lvol.id],
      validate: () => entry.store.checkClone(lvol.id, cloneName),
      work: async () => {
        const clone = await entry.store.clone(lvol.id, cloneName);
        this.attachActor(entry, clone);
        return clone.id;
      },
    });
  }

  async renameLvol(oldName: string, newName: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(oldName);
    await entry.store.renameLvol(lvol.id, newName);
  }

  async resizeLvol(name: string, sizeMib: number): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    await entry.store.resize(lvol.id, sizeMibToClusterCount(sizeMib, entry.store.clusterBytes));
  }

  async setReadOnly(name: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    await entry.store.setReadOnly(lvol.id);
  }

  async setXattr(name: string, xattrName: string, value: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    await entry.store.setXattr(lvol.id, xattrName, value);
  }

  getXattr(name: string, xattrName: string): string {
    const { entry, lvol } = this.registry.lvol(name);
    return entry.store.getXattr(lvol.id, xattrName);
  }

  async copyUpFromParent(name: string, mode: 'inflate' | 'decouple'): Promise<void> {
    const { entry, lvol, actor } = this.registry.lvol(name);
    const operation = mode === 'inflate' ? 'bdev_lvol_inflate' : 'bdev_lvol_decouple_parent';
    await this.router.run({
      operation,
      touched: () => [lvol.id],
      validate: () => entry.store.checkCopyUp(lvol.id, mode),
      work: async () => {
        await entry.store.copyUpFromParent(lvol.id, mode);
        if (lvol.snapshot) actor.invalidate();
      },
    });
  }

  async detachParent(name: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    await entry.store.detachParent(lvol.id);
  }

  async setParent(lvolName: string, parentName: string): Promise<void> {
    const child = this.registry.lvol(lvolName);
    const parent = this.registry.lvol(parentName);
    if (child.entry !== parent.entry) fail('EINVAL', 'the parent must be in the same lvstore');
    await this.router.run({
      operation: 'bdev_lvol_set_parent',
      touched: () => [child.lvol.id, parent.lvol.id],
      validate: () => child.entry.store.checkSetParent(child.lvol.id, parent.lvol.id),
      work: () => child.entry.store.setParent(child.lvol.id, parent.lvol.id),
    });
  }

  /** Each base bdev's I/O queue: what is in flight and waiting in each class (node_get_stats). */
  deviceQueueStats(): Record<string, IoQueueStats> {
    const out: Record<string, IoQueueStats> = {};
    for (const bdev of this.registry.bdevs.values()) if (bdev.device instanceof QueuedDevice) out[bdev.name] = bdev.device.queue.stats();
    return out;
  }

  // ---- data path (internal API; the NBD server uses it too) ----

  readLvol(name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const { entry, lvol } = this.registry.lvol(name);
    return entry.store.read(lvol.id, offsetBytes, lengthBytes);
  }

  readLvolInto(name: string, offsetBytes: number, target: Buffer): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    return entry.store.readInto(lvol.id, offsetBytes, target);
  }

  writeLvol(name: string, offsetBytes: number, data: Uint8Array): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    this.lvolBdevs.assertNotClaimed(lvol.id, name);
    return entry.store.write(lvol.id, offsetBytes, data);
  }

  /** NBD WRITE_ZEROES on an lvol: the range reads as zeros afterwards. */
  writeZeroesLvol(name: string, offsetBytes: number, lengthBytes: number): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    this.lvolBdevs.assertNotClaimed(lvol.id, name);
    return entry.store.writeZeroes(lvol.id, offsetBytes, lengthBytes);
  }

  /** NBD TRIM on an lvol, following its clear method (advisory). */
  unmapLvol(name: string, offsetBytes: number, lengthBytes: number): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    this.lvolBdevs.assertNotClaimed(lvol.id, name);
    return entry.store.unmap(lvol.id, offsetBytes, lengthBytes);
  }

  /** Data and hole runs of an lvol range (NBD BLOCK_STATUS); a prefix of at most `maxExtents` runs. */
  lvolExtents(name: string, offsetBytes: number, lengthBytes: number, maxExtents?: number): Array<{ offsetBytes: number; lengthBytes: number; allocated: boolean }> {
    const { entry, lvol } = this.registry.lvol(name);
    return entry.store.extents(lvol.id, offsetBytes, lengthBytes, maxExtents);
  }

  /** Makes the lvol's completed writes durable (its lvstore's device is flushed). */
  flushLvol(name: string): Promise<void> {
    return this.registry.lvol(name).entry.store.flush();
  }

  resolveLvol(name: string): ResolvedLvol {
    return this.registry.lvol(name);
  }

  /**
   * Stops every running walk at its next cluster boundary (saving its position); the register
   * callers get EINTR naming `operation`. Used first thing on shutdown, while their connections
   * are still open to receive that answer.
   */
  async preemptAll(operation: string): Promise<void> {
    await this.router.run({
      operation,
      touched: () => [...this.registry.allLvols()].map(({ lvol }) => lvol.id),
      requeue: false,
      work: async () => {},
    });
  }

  /** Clean shutdown: stop every walk at its next cluster boundary, then close stores and devices. */
  async shutdown(): Promise<void> {
    // NBD clients finish their in-flight requests and are disconnected before stores close.
    await this.nbd.stopAll('shutdown');
    await this.copies.stopAll('shutdown');
    const allIds = () => [...this.registry.allLvols()].map(({ lvol }) => lvol.id);
    await this.router.run({
      operation: 'shutdown',
      touched: allIds,
      requeue: false,
      work: async () => {
        // Newest first: a nested lvstore closes before the lvstore it lives on.
        for (const entry of [...this.registry.lvstores.values()].reverse()) {
          for (const actor of entry.actors.values()) actor.dispose();
          await entry.store.close();
        }
        for (const bdev of this.registry.bdevs.values()) {
          await bdev.device.flush().catch(() => undefined);
          await bdev.device.close().catch(() => undefined);
        }
      },
    });
    this.registry.lvstores.clear();
    this.registry.bdevs.clear();
    this.scheduler.stop();
    this.changeNotices.dispose();
  }
}

