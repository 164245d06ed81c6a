// The storage node: bdevs, lvstores and lvol actors, and every operation the RPC methods call.
//
// Priority operations (SPEC §6.5) go through the priority router (./priority.ts): they hold the
// lvols they touch, validate, preempt any checksum running on them (waiting at most one cluster
// step), do their work and re-queue what they preempted. Everything else never waits for a
// checksum. Checksum operations live in ./checksums.ts, the background scheduler in ./scheduler.ts,
// lvstores coming and going in ./lvstores.ts, opening base bdevs in ./baseBdevs.ts.
import { EventEmitter } from 'node:events';
import type { Bdev } from '../bdev/bdev.ts';
import { type BdevIoClock, systemBdevIoClock } from '../bdev/bdevIo.ts';
import type { LvolBdev } from '../bdev/lvolBdev.ts';
import type { BlockDevice } from '../device/blockDevice.ts';
import type { IoQueueStats } from '../device/ioQueue.ts';
import { QueuedDevice } from '../device/queuedDevice.ts';
import { fail } from '../errors.ts';
import { log } from '../log.ts';
import type { Runtime } from '../runtime.ts';
import { sizeMibToClusterCount, validateName } from '../store/lvstore.ts';
import type { DamagedLvstoreError } from '../store/load.ts';
import type { ClearMethod, LvolRecord } from '../store/metadata.ts';
import { BaseBdevLifecycle } from './baseBdevLifecycle.ts';
import { type BdevConfigEntry, type SpdkConfig, bdevConfig } from './baseBdevs.ts';
import { ChecksumService } from './checksums.ts';
import { InspectionHub } from './inspector.ts';
import { LvolActor, LvolActorStarter } from './lvolActor.ts';
import { CopyService } from './copies.ts';
import { EsnapHolds, resolveExternalSource } from './externalSnapshots.ts';
import { type LvstoreSelector, LvstoreLifecycle } from './lvstores.ts';
import { NbdExports } from './nbdExports.ts';
import { NvmeControllers } from './nvmeControllers.ts';
import { type NvmfListenerAccess, NvmfTarget } from './nvmfTarget.ts';
import { PriorityRouter } from './priority.ts';
import { type BackgroundOptions, BackgroundScheduler } from './scheduler.ts';
import { VerifyPolicyRunner, type VerifyPolicyOptions } from './verifyPolicy.ts';
import { type BaseBdev, type LvstoreEntry, Registry, type ResolvedLvol } from './registry.ts';

export type { NodeEvent } from './nodeEvents.ts';
import type { NodeEvent } from './nodeEvents.ts';

export type { BdevConfigEntry, SpdkConfig };

export type { LvstoreSelector };

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
  /** The verification policy saved by an earlier run (issue 21 item 4), where new ones are saved, its clock. */
  verifyPolicy?: VerifyPolicyOptions;
  /** --nvmf-insecure-tcp / --nvmf-allow-remote: which NVMe/TCP listeners may exist (README, security); none by default. */
  nvmfListeners?: NvmfListenerAccess;
  /** What bdev rate limits wait on and I/O statistics time with; default: the runtime's clock and real timers. */
  ioClock?: BdevIoClock;
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
  /** NVMe-oF subsystems (issue 22): a namespace holds its bdev open, so it cannot be deleted under hosts. */
  readonly nvmf: NvmfTarget;
  /** Attached NVMe-oF controllers (issue 23): each namespace a bdev `<name>n<nsid>` in the registry's module bdevs. */
  readonly nvme: NvmeControllers;
  /** Shallow, range and deep copies (replica rebuild); a delete of either end stops them first. */
  readonly copies: CopyService;
  /** What esnap clones hold on their external snapshots: read_many_write_none claims. */
  readonly esnaps = new EsnapHolds(this.registry);
  /** Starts due snapshot verifies inside the policy's windows (./verifyPolicy.ts). */
  readonly verifyPolicy: VerifyPolicyRunner;

  /** Lvstores coming and going: examine, create, grow, rename, delete, unload. */
  readonly lvstores: LvstoreLifecycle;
  /** Bdevs whose lvstore metadata failed to load: reported, never overwritten silently. */
  readonly damaged: Map<string, DamagedLvstoreError>;
  /** Bdevs holding a healthy lvstore whose name or UUID clashes with a loaded one: not loaded. */
  readonly conflicting: Map<string, string>;
  /** Base bdevs joining and leaving, the saved bdev list kept in step. */
  private readonly baseBdevs: BaseBdevLifecycle;
  /** Starts lvol actors in slices after the lvols are attached (SPEC §10: answer while 100,000 start). */
  readonly actorStarter = new LvolActorStarter();

  constructor(
    readonly runtime: Runtime,
    options: StorageNodeOptions = {},
  ) {
    this.inspector = options.inspector ?? new InspectionHub();
    this.events.setMaxListeners(0);
    this.registry.io.clock = options.ioClock ?? { ...systemBdevIoClock, nowMs: () => runtime.nowMs() };
    this.scheduler = new BackgroundScheduler(runtime, this.inspector, options.backgroundOptions, options.onBackgroundOptionsChanged);
    this.router = new PriorityRouter((lvolId) => this.actorOf(lvolId));
    this.checksums = new ChecksumService(this.registry, this.router, runtime, (event) => this.emit(event));
    this.nbd = new NbdExports(this.registry, this.inspector, this.events);
    this.nvmf = new NvmfTarget(this.inspector, options.nvmfListeners ?? 'none');
    this.nvme = new NvmeControllers(this.registry, this.inspector, (event) => this.emit(event));
    // An external snapshot attached again (its bdev, or the lvstore of its lvol) is held again.
    this.events.on('event', (event) => {
      if (event.type === 'bdev_created' || event.type === 'lvstore_created') this.esnaps.retake();
      // SPDK hot-removes a namespace whose bdev goes; an lvol bdev's name is its UUID.
      if (event.type === 'lvol_deleted') this.nvmf.bdevRemoved(String(event.uuid));
      if (event.type === 'bdev_deleted') this.nvmf.bdevRemoved(String(event.name));
    });
    this.copies = new CopyService(this.registry, this.router, this.scheduler, this.inspector, runtime, (status, what) =>
      this.emit({ type: what === 'state' ? 'copy_state' : 'copy_progress', ...status }),
    );
    this.actorOptions = { admission: this.scheduler, starter: this.actorStarter };
    this.lvstores = new LvstoreLifecycle({
      registry: this.registry,
      runtime,
      router: this.router,
      checksums: this.checksums,
      copies: this.copies,
      esnaps: this.esnaps,
      attachActor: (entry, lvol) => this.attachActor(entry, lvol),
      emit: (event) => this.emit(event),
    });
    this.baseBdevs = new BaseBdevLifecycle({
      registry: this.registry,
      runtime,
      copies: this.copies,
      lvstores: this.lvstores,
      onBaseBdevsChanged: options.onBaseBdevsChanged ?? (async () => {}),
      emit: (event) => this.emit(event),
    });
    this.damaged = this.lvstores.damaged;
    this.conflicting = this.lvstores.conflicting;
    this.verifyPolicy = new VerifyPolicyRunner(runtime, this.registry, this.checksums, this.inspector, this.events, { ...options.verifyPolicy, pacing: this.scheduler });
  }

  /** The base bdevs as SPDK config calls, in creation order (save_config). */
  saveConfig(): SpdkConfig {
    return bdevConfig(this.registry);
  }

  private emit(event: NodeEvent): void {
    this.events.emit('event', event);
  }

  // ---- base bdevs (./baseBdevLifecycle.ts) ----

  createMallocBdev(options: { name?: string; numBlocks: number; blockSize: number; uuid?: string }): Promise<string> {
    return this.baseBdevs.createMalloc(options);
  }

  /** A block device the caller opened, as a base bdev: for embedding lvnode, and for tests. */
  attachBaseDevice(name: string, device: BlockDevice): Promise<string> {
    return this.baseBdevs.attachDevice(name, device);
  }

  createAioBdev(request: { name: string; filename: string; blockSize: number; readOnly: boolean; uuid?: string }): Promise<string> {
    return this.baseBdevs.createAio(request);
  }

  deleteBaseBdev(nameOrUuid: string, kind: BaseBdev['kind']): Promise<void> {
    return this.baseBdevs.delete(nameOrUuid, kind);
  }

  // ---- bdevs: one lookup for every kind (src/bdev/) ----

  /** A bdev by name: a base bdev by name or UUID, an lvol by UUID or `lvs/lvol`; ENODEV otherwise. */
  bdev(name: string): Bdev {
    // Consumers do I/O through it: the bdev's rate limits and statistics apply (src/bdev/bdevIo.ts).
    return this.registry.openBdev(name);
  }

  /** An lvol's bdev, by UUID or `lvs/lvol` (ENODEV "lvol X does not exist"): for lvol-only RPCs. */
  lvolBdev(name: string): LvolBdev {
    return this.registry.lvolBdev(this.registry.lvol(name).lvol.id);
  }

  /** Every bdev, lvols included (one object each: for tests and small nodes; listings slice). */
  bdevList(): Bdev[] {
    return this.registry.bdevList();
  }

  // ---- lvols ----

  /** One options object for every lvol actor (an object per lvol would be garbage to collect). */
  private readonly actorOptions: { admission: BackgroundScheduler; starter: LvolActorStarter };

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
    this.registry.lvolBdevs.forget(lvolId);
    this.registry.io.forget(lvolId);
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
        // Exported, carrying a nested lvstore, or under esnap clones: EBUSY naming the holders.
        this.registry.lvolBdevs.peek(lvol.id)?.assertDeletable(name);
        entry.store.checkDelete(lvol.id);
      },
      work: async () => {
        // A copy from or to it ends first, between clusters (SPDK would refuse with EBUSY).
        await this.copies.stopInvolving({ lvolIds: [lvol.id] }, 'bdev_lvol_delete');
        const { mergedInto } = await entry.store.deleteLvol(lvol.id);
        this.detachActor(entry, lvol.id);
        this.esnaps.rescanIfAny(entry);
        // A merge derives the clone's checksums where both had per-cluster values (no data read):
        // its actor then shows them as at attach; otherwise the merge dropped them.
        const merged = mergedInto ? this.actorOf(mergedInto) : undefined;
        if (merged && entry.store.lvol(merged.lvolId).checksum !== null) merged.restartFromRecords();
        else merged?.invalidate();
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
    this.esnaps.rescan(entry);
    return clone.id;
  }

  /** bdev_lvol_set_parent_bdev: a thin lvol reads through to external snapshot `bdevName` from now on. */
  async setParentBdev(lvolName: string, bdevName: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(lvolName);
    await entry.store.setExternalParent(lvol.id, resolveExternalSource(this.registry, bdevName, entry.store.id));
    this.esnaps.rescan(entry);
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
    const { entry, lvol } = this.registry.durableLvol(name);
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
        this.esnaps.rescanIfAny(entry);
        if (lvol.snapshot) actor.invalidate();
      },
    });
  }

  async detachParent(name: string): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    await entry.store.detachParent(lvol.id);
    this.esnaps.rescanIfAny(entry);
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
    this.esnaps.rescanIfAny(child.entry);
  }

  /** Each base bdev's I/O queue: what is in flight and waiting in each class (node_get_stats). */
  deviceQueueStats(): Record<string, IoQueueStats> {
    const out: Record<string, IoQueueStats> = {};
    for (const bdev of this.registry.bdevs.values()) if (bdev.device instanceof QueuedDevice) out[bdev.name] = bdev.device.queue.stats();
    return out;
  }

  resolveLvol(name: string): ResolvedLvol {
    return this.registry.lvol(name);
  }

  /** `resolveLvol` for readers: by durable name, giving the durable record (no change in flight seen). */
  resolveLvolDurable(name: string): ResolvedLvol {
    return this.registry.durableLvol(name);
  }

  /**
   * Stops every running walk at its next cluster boundary (saving its position); the register
   * callers get EINTR naming `operation`. Used first thing on shutdown, while their connections
   * are still open to receive that answer.
   */
  async preemptAll(operation: string): Promise<void> {
    await this.router.run({
      operation,
      whole: true,
      touched: () => [...this.registry.allLvols()].map(({ lvol }) => lvol.id),
      requeue: false,
      work: async () => {},
    });
  }

  /**
   * Clean shutdown: stop every walk at its next cluster boundary, then close stores and devices.
   * A store or device that cannot be closed or flushed is logged and reported in the result (data
   * written since its last flush may be lost), and the others are closed all the same.
   */
  async shutdown(): Promise<ShutdownFailure[]> {
    const failures: ShutdownFailure[] = [];
    const attempt = async (failure: Omit<ShutdownFailure, 'error'>, step: () => Promise<void>) => {
      try {
        await step();
      } catch (error) {
        failures.push({ ...failure, error: error instanceof Error ? error.message : String(error) });
        log('error', 'shutdown could not flush or close a device; data written since its last flush may be lost', { ...failure, error: String(error) });
      }
    };
    // The policy starts nothing new while walks are stopped for the shutdown.
    this.verifyPolicy.stop();
    // NBD clients finish their in-flight requests and are disconnected before stores close.
    await this.nbd.stopAll('shutdown');
    await this.nvmf.stopAll('shutdown');
    await this.copies.stopAll('shutdown');
    // Exports and copies on NVMe bdevs are stopped by now: the controllers can go.
    await this.nvme.detachAll();
    const allIds = () => [...this.registry.allLvols()].map(({ lvol }) => lvol.id);
    await this.router.run({
      operation: 'shutdown',
      whole: true,
      touched: allIds,
      requeue: false,
      work: async () => {
        // Newest first: a nested lvstore closes before the lvstore it lives on.
        for (const entry of [...this.registry.lvstores.values()].reverse()) {
          for (const actor of entry.actors.values()) actor.dispose();
          await attempt({ bdev: entry.bdevName, lvstore: entry.store.name, step: 'close lvstore' }, () => entry.store.close());
        }
        for (const bdev of this.registry.bdevs.values()) {
          await attempt({ bdev: bdev.name, step: 'flush' }, () => bdev.device.flush());
          await attempt({ bdev: bdev.name, step: 'close' }, () => bdev.device.close());
        }
      },
    });
    this.registry.lvstores.clear();
    this.registry.bdevs.clear();
    this.scheduler.stop();
    this.lvstores.dispose();
    return failures;
  }
}

/** A store or device that shutdown could not close or flush. */
export interface ShutdownFailure {
  bdev: string;
  lvstore?: string;
  step: 'close lvstore' | 'flush' | 'close';
  error: string;
}

