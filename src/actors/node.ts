// The storage node: bdevs, lvstores and lvol actors, and every operation the RPC methods call.
//
// Priority operations (SPEC §6.5) run inside `priority()`: they hold the lvols they touch, preempt
// any checksum running on them (waiting at most one cluster step), then do their work. Everything
// else never waits for a checksum.
import { EventEmitter } from 'node:events';
import { access } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import { progressNotifyIntervalMs } from '../constants.ts';
import { FileDevice } from '../device/fileDevice.ts';
import { MemoryDevice } from '../device/memoryDevice.ts';
import { StorageError, fail } from '../errors.ts';
import { log } from '../log.ts';
import type { ChecksumMode } from '../machines/lvolMachine.ts';
import type { Runtime } from '../runtime.ts';
import { Lvstore, sizeMibToClusterCount, validateName } from '../store/lvstore.ts';
import { metadataLayout } from '../store/format.ts';
import { JournalMetadataLog } from '../store/journal.ts';
import { DamagedLvstoreError, openLvstore } from '../store/load.ts';
import type { ClearMethod, LvolRecord } from '../store/metadata.ts';
import { InspectionHub } from './inspector.ts';
import { KeyedMutex } from './keyedMutex.ts';
import { type ChecksumState, type ChecksumStatus, LvolActor } from './lvolActor.ts';
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
    | 'checksum_state'
    | 'checksum_progress'
    | 'checksum_preempted';
  [key: string]: unknown;
}

export type LvstoreSelector = { uuid?: string | undefined; lvs_name?: string | undefined };

/** One base-bdev creation call, in SPDK config form (what save_config lists and --config replays). */
export interface BdevConfigEntry {
  method: 'bdev_aio_create' | 'bdev_malloc_create';
  params: Record<string, unknown>;
}

/** SPDK's save_config shape, bdev subsystem only. */
export interface SpdkConfig {
  subsystems: Array<{ subsystem: 'bdev'; config: BdevConfigEntry[] }>;
}

export interface StorageNodeOptions {
  inspector?: InspectionHub;
  /**
   * Awaited after every base bdev creation or deletion, before the RPC answers: the place where
   * the bdev list is made durable (serve.ts writes it to the data directory).
   */
  onBaseBdevsChanged?: (config: SpdkConfig) => Promise<void>;
}

export class StorageNode {
  readonly registry = new Registry();
  readonly inspector: InspectionHub;
  readonly events = new EventEmitter<{ event: [NodeEvent] }>();
  private readonly locks = new KeyedMutex();
  private readonly lastProgressMs = new Map<string, number>();

  /** Bdevs whose lvstore metadata failed to load: reported, never overwritten silently. */
  readonly damaged = new Map<string, DamagedLvstoreError>();
  private readonly onBaseBdevsChanged: (config: SpdkConfig) => Promise<void>;

  constructor(
    readonly runtime: Runtime,
    options: StorageNodeOptions = {},
  ) {
    this.inspector = options.inspector ?? new InspectionHub();
    this.onBaseBdevsChanged = options.onBaseBdevsChanged ?? (async () => {});
    this.events.setMaxListeners(0);
  }

  /** The base bdevs as SPDK config calls, in creation order (save_config). */
  saveConfig(): SpdkConfig {
    return { subsystems: [{ subsystem: 'bdev', config: this.bdevConfigEntries() }] };
  }

  private bdevConfigEntries(): BdevConfigEntry[] {
    return [...this.registry.bdevs.values()].map((bdev): BdevConfigEntry =>
      bdev.kind === 'aio'
        ? {
            method: 'bdev_aio_create',
            params: { name: bdev.name, filename: bdev.filename, block_size: bdev.device.blockSizeBytes, readonly: bdev.readOnly, uuid: bdev.uuid },
          }
        : {
            method: 'bdev_malloc_create',
            params: { name: bdev.name, num_blocks: bdev.device.sizeBytes / bdev.device.blockSizeBytes, block_size: bdev.device.blockSizeBytes, uuid: bdev.uuid },
          },
    );
  }

  private emit(event: NodeEvent): void {
    this.events.emit('event', event);
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
  private async examine(bdev: BaseBdev): Promise<void> {
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
      const error = new DamagedLvstoreError(`lvstore ${store.name} (${store.id}) is already loaded from another bdev`);
      this.damaged.set(bdev.name, error);
      log('error', 'lvstore not loaded', { bdev: bdev.name, error: error.message });
      return;
    }
    bdev.claimedBy = store.id;
    const entry: LvstoreEntry = { store, bdevName: bdev.name, actors: new Map() };
    this.registry.lvstores.set(store.id, entry);
    for (const lvol of store.lvols()) this.attachActor(entry, lvol);
    this.emit({ type: 'lvstore_created', uuid: store.id, name: store.name });
    log('info', 'lvstore loaded', { lvstore: store.name, uuid: store.id, bdev: bdev.name, lvols: store.lvols().length });
  }

  private assertBdevNameFree(name: string): void {
    validateName('bdev', name);
    if (this.registry.bdevNameTaken(name)) fail('EEXIST', `bdev ${name} already exists`);
  }

  /** One file, one bdev: two handles writing one lvstore would corrupt it. */
  private assertFileFree(filename: string): void {
    for (const other of this.registry.bdevs.values()) {
      if (other.filename === filename) fail('EEXIST', `${filename} is already attached as bdev ${other.name}`);
    }
  }

  createMallocBdev(options: { name?: string; numBlocks: number; blockSize: number; uuid?: string }): Promise<string> {
    const name = options.name ?? `Malloc${this.registry.bdevs.size}`;
    this.assertBdevNameFree(name);
    if (options.numBlocks < 1) fail('EINVAL', 'num_blocks must be at least 1');
    const device = new MemoryDevice(options.numBlocks * options.blockSize, options.blockSize);
    const uuid = options.uuid ?? this.runtime.uuid();
    return this.addBaseBdev({ name, uuid, kind: 'malloc', device, readOnly: false, claimedBy: null });
  }

  async createAioBdev(request: { name: string; filename: string; blockSize: number; readOnly: boolean; uuid?: string }): Promise<string> {
    this.assertBdevNameFree(request.name);
    // Kept absolute, so the saved config means the same file whatever directory the node starts in.
    const options = { ...request, filename: resolvePath(request.filename) };
    this.assertFileFree(options.filename);
    try {
      await access(options.filename);
    } catch {
      fail('ENOENT', `file ${options.filename} does not exist`);
    }
    let device: FileDevice;
    try {
      device = await FileDevice.open(options.filename, options.blockSize, { readOnly: options.readOnly });
    } catch (error) {
      fail('EINVAL', `cannot open ${options.filename}: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (device.sizeBytes < options.blockSize) {
      await device.close();
      fail('EINVAL', `${options.filename} is smaller than one ${options.blockSize}-byte block`);
    }
    // The name or the file may have been taken while the file was opening.
    try {
      this.assertBdevNameFree(options.name);
      this.assertFileFree(options.filename);
    } catch (error) {
      await device.close();
      throw error;
    }
    const uuid = options.uuid ?? this.runtime.uuid();
    return this.addBaseBdev({
      name: options.name,
      uuid,
      kind: 'aio',
      device,
      filename: options.filename,
      readOnly: options.readOnly,
      claimedBy: null,
    });
  }

  async deleteBaseBdev(name: string, kind: BaseBdev['kind']): Promise<void> {
    const bdev = this.registry.bdev(name);
    if (bdev.kind !== kind) fail('ENODEV', `bdev ${name} is not a ${kind} bdev`);
    if (bdev.claimedBy) fail('EBUSY', `bdev ${name} is claimed by lvstore ${bdev.claimedBy}`);
    this.registry.bdevs.delete(name);
    this.damaged.delete(name);
    await bdev.device.close();
    await this.onBaseBdevsChanged(this.saveConfig());
    this.emit({ type: 'bdev_deleted', name });
    log('info', 'bdev deleted', { bdev: name });
  }

  // ---- lvstores ----

  async createLvstore(options: { bdevName: string; lvsName: string; clusterBytes: number; clearMethod: ClearMethod }): Promise<string> {
    const bdev = this.registry.bdev(options.bdevName);
    if (bdev.claimedBy) fail('EBUSY', `bdev ${bdev.name} is already claimed by lvstore ${bdev.claimedBy}`);
    if (bdev.readOnly) fail('EPERM', `bdev ${bdev.name} is read-only`);
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
      this.registry.lvstores.set(store.id, { store, bdevName: bdev.name, actors: new Map() });
      this.emit({ type: 'lvstore_created', uuid: store.id, name: store.name });
      log('info', 'lvstore created', { lvstore: store.name, uuid: store.id, bdev: bdev.name });
      return store.id;
    } catch (error) {
      bdev.claimedBy = null;
      throw error;
    }
  }

  async deleteLvstore(selector: LvstoreSelector): Promise<void> {
    const entry = this.registry.lvstore(selector);
    await this.priority('bdev_lvol_delete_lvstore', () => [...entry.actors.keys()], async () => {
      for (const actor of entry.actors.values()) actor.dispose();
      entry.actors.clear();
      this.registry.lvstores.delete(entry.store.id);
      await entry.store.destroy();
      const bdev = this.registry.bdevs.get(entry.bdevName);
      if (bdev) bdev.claimedBy = null;
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

  private attachActor(entry: LvstoreEntry, lvol: LvolRecord): LvolActor {
    const actor = new LvolActor(lvol.id, entry.store, this.runtime, this.inspector, (id, status, previous) =>
      this.onChecksumChange(id, status, previous),
    );
    entry.actors.set(lvol.id, actor);
    this.emit({ type: 'lvol_created', uuid: lvol.id, alias: `${entry.store.name}/${lvol.name}` });
    return actor;
  }

  private detachActor(entry: LvstoreEntry, lvolId: string): void {
    entry.actors.get(lvolId)?.dispose();
    entry.actors.delete(lvolId);
    this.lastProgressMs.delete(lvolId);
    this.emit({ type: 'lvol_deleted', uuid: lvolId });
  }

  private onChecksumChange(lvolId: string, status: ChecksumStatus, previous: ChecksumState): void {
    if (status.state !== previous) {
      this.emit({ type: 'checksum_state', uuid: lvolId, previous, ...status });
      if (status.state === 'aborted' && status.reason?.startsWith('preempted by ')) {
        this.emit({ type: 'checksum_preempted', uuid: lvolId, reason: status.reason });
      }
      return;
    }
    // Progress within `computing`: throttled per lvol.
    const nowMs = this.runtime.nowMs();
    if (nowMs - (this.lastProgressMs.get(lvolId) ?? 0) < progressNotifyIntervalMs) return;
    this.lastProgressMs.set(lvolId, nowMs);
    this.emit({ type: 'checksum_progress', uuid: lvolId, ...status });
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

  /**
   * Runs a priority operation: holds the lvols `touched()` names, preempts any checksum running on
   * them, then runs `work`. The preempted register callers get EINTR naming `operation`. The set
   * is computed again once the locks are held; if it changed meanwhile, the locks are retaken.
   */
  async priority<T>(operation: string, touched: () => string[], work: () => Promise<T>): Promise<T> {
    for (;;) {
      const ids = touched();
      const outcome = await this.locks.run(ids, async () => {
        if (!sameMembers(ids, touched())) return { retry: true as const };
        for (const id of ids) await this.actorOf(id)?.preempt(operation);
        return { retry: false as const, value: await work() };
      });
      if (!outcome.retry) return outcome.value;
    }
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
    await this.priority('bdev_lvol_delete', touched, async () => {
      const { mergedInto } = await entry.store.deleteLvol(lvol.id);
      this.detachActor(entry, lvol.id);
      if (mergedInto) this.actorOf(mergedInto)?.invalidate();
    });
  }

  async snapshot(lvolName: string, snapshotName: string, xattrs: Record<string, string>): Promise<string> {
    const { entry, lvol } = this.registry.lvol(lvolName);
    const snapshot = await entry.store.snapshot(lvol.id, snapshotName, xattrs);
    this.attachActor(entry, snapshot);
    return snapshot.id;
  }

  async clone(snapshotName: string, cloneName: string): Promise<string> {
    const { entry, lvol } = this.registry.lvol(snapshotName);
    return this.priority('bdev_lvol_clone', () => [lvol.id], async () => {
      const clone = await entry.store.clone(lvol.id, cloneName);
      this.attachActor(entry, clone);
      return clone.id;
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
    await this.priority(operation, () => [lvol.id], async () => {
      await entry.store.copyUpFromParent(lvol.id, mode);
      if (lvol.snapshot) actor.invalidate();
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
    await this.priority('bdev_lvol_set_parent', () => [child.lvol.id, parent.lvol.id], () =>
      child.entry.store.setParent(child.lvol.id, parent.lvol.id),
    );
  }

  // ---- checksums ----

  async registerChecksum(name: string, mode: ChecksumMode, resume: boolean): Promise<true> {
    const { lvol } = this.registry.lvol(name);
    // Start under the lvol's lock (so it waits out a priority operation on it), but run the walk
    // outside it: a priority operation must be able to take the lock and preempt.
    const started = await this.locks.run([lvol.id], async () => {
      const { actor } = this.registry.lvol(lvol.id);
      const completion = actor.register(mode, resume);
      // Its rejection is handled by the caller below; mark it so Node does not report it early.
      completion.catch(() => undefined);
      return { completion };
    });
    return started.completion;
  }

  stopChecksum(name: string): Promise<true> {
    return this.registry.lvol(name).actor.stop();
  }

  getChecksum(name: string): bigint {
    const { lvol, actor } = this.registry.lvol(name);
    if (lvol.checksum !== null) return lvol.checksum;
    const status = actor.status();
    if (status.state === 'aborted') {
      throw new StorageError('ECANCELED', {
        detail: 'the last checksum computation was aborted and no earlier value exists',
        data: { state: 'aborted', reason: status.reason, clusters_done: status.clusters_done, clusters_total: status.clusters_total },
      });
    }
    return fail('ENODEV', `no checksum registered for ${lvol.name}`);
  }

  getRangeChecksums(name: string, start: number, count: number): Array<{ cluster_index: number; checksum: bigint }> {
    const { lvol } = this.registry.lvol(name);
    const range = lvol.rangeChecksums ?? fail('ENOENT', `no range checksums registered for ${lvol.name}`);
    if (start >= range.length || start + count > range.length) {
      fail('EINVAL', `clusters ${start}..${start + count - 1} are outside 0..${range.length - 1}`);
    }
    const out: Array<{ cluster_index: number; checksum: bigint }> = [];
    for (let offset = 0; offset < count; offset++) out.push({ cluster_index: start + offset, checksum: range[start + offset]! });
    return out;
  }

  /** Checksum walks by state and their combined rate, for node_get_stats. */
  checksumStats(): { by_state: Record<string, number>; rate_bytes_per_sec: number } {
    const byState: Record<string, number> = {};
    let rate = 0;
    for (const { actor } of this.registry.allLvols()) {
      const status = actor.status();
      byState[status.state] = (byState[status.state] ?? 0) + 1;
      if (status.state === 'computing') rate += status.rate_bytes_per_sec;
    }
    return { by_state: byState, rate_bytes_per_sec: rate };
  }

  checksumStatus(name: string): ChecksumStatus {
    return this.registry.lvol(name).actor.status();
  }

  // ---- data path (internal API; the NBD server uses it too) ----

  readLvol(name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const { entry, lvol } = this.registry.lvol(name);
    return entry.store.read(lvol.id, offsetBytes, lengthBytes);
  }

  writeLvol(name: string, offsetBytes: number, data: Uint8Array): Promise<void> {
    const { entry, lvol } = this.registry.lvol(name);
    return entry.store.write(lvol.id, offsetBytes, data);
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
    await this.priority(operation, () => [...this.registry.allLvols()].map(({ lvol }) => lvol.id), async () => {});
  }

  /** Clean shutdown: stop every walk at its next cluster boundary, then close stores and devices. */
  async shutdown(): Promise<void> {
    const allIds = () => [...this.registry.allLvols()].map(({ lvol }) => lvol.id);
    await this.priority('shutdown', allIds, async () => {
      for (const entry of this.registry.lvstores.values()) {
        for (const actor of entry.actors.values()) actor.dispose();
        await entry.store.close();
      }
      for (const bdev of this.registry.bdevs.values()) {
        await bdev.device.flush().catch(() => undefined);
        await bdev.device.close().catch(() => undefined);
      }
    });
    this.registry.lvstores.clear();
    this.registry.bdevs.clear();
  }
}

function sameMembers(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((item) => b.includes(item));
}
