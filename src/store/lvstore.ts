// An lvstore on one block device: lvol metadata operations (SPEC §2) and the lvol data path.
//
// Every metadata change goes through `commit`, which applies it to the records and hands it to
// the MetadataLog; the durability issue replaces the log, not this file. Data lives on the device.
import assert from 'node:assert/strict';
import {
  clusterPageBytes,
  clusterSizeBytesMax,
  clusterSizeBytesMin,
  fragmapClusterCountMax,
  lvolSizeBytesMax,
  metadataAreaBytesMax,
  metadataAreaBytesMin,
  metadataAreaDeviceFraction,
  mibBytes,
  nameLengthMax,
  xattrCountMax,
  xattrNameLengthMax,
  xattrValueLengthMax,
} from '../constants.ts';
import { type BlockDevice, zeroChunk, zeroChunkBytes } from '../device/blockDevice.ts';
import { StorageError, fail, fromDeviceError } from '../errors.ts';
import { log } from '../log.ts';
import type { Runtime } from '../runtime.ts';
import { ClusterAllocator } from './clusterAllocator.ts';
import { CopyBuffers } from './copyBuffers.ts';
import { IoGate } from './ioGate.ts';
import { type PendingCommit, PendingCommits } from './pendingCommits.ts';
import {
  type ClearMethod,
  type LvolRecord,
  type LvstoreRecord,
  type MetadataChange,
  type MetadataLog,
  type MetadataLogStats,
  type SavedChecksumProgress,
  type VerificationRecord,
  allocationRuns,
  applyChange,
  creationRank,
  mergeAdoptions,
  numberLvols,
} from './metadata.ts';
import type { ClusterChecksums } from './sparseArray.ts';

export interface LvstoreOptions {
  name: string;
  clusterBytes: number;
  clearMethod: ClearMethod;
}

export interface LvstoreInfo {
  id: string;
  name: string;
  clusterBytes: number;
  blockBytes: number;
  totalDataClusters: number;
  freeClusters: number;
}

/** SPDK's creation_time: RFC 3339 to the second, UTC (`2026-12-01T12:00:00Z`). */
export function rfc3339Seconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function clusterIndexToOffsetBytes(clusterIndex: number, clusterBytes: number): number {
  return clusterIndex * clusterBytes;
}

/** Whole clusters for `sizeMib` MiB, rounded up; exact for any size (bigint arithmetic). */
export function sizeMibToClusterCount(sizeMib: number, clusterBytes: number): number {
  const cluster = BigInt(clusterBytes);
  return Number((BigInt(sizeMib) * BigInt(mibBytes) + cluster - 1n) / cluster);
}

/** The metadata area at the front of the device, in whole clusters (see constants.ts). */
export function metadataClusterCount(deviceBytes: number, clusterBytes: number): number {
  const areaBytes = Math.min(
    metadataAreaBytesMax,
    Math.max(metadataAreaBytesMin, Math.ceil(deviceBytes / metadataAreaDeviceFraction)),
  );
  return Math.ceil(areaBytes / clusterBytes);
}

export function validateName(kind: string, name: string): void {
  if (name.length === 0 || name.length > nameLengthMax) {
    fail('EINVAL', `${kind} name must be 1 to ${nameLengthMax} characters`);
  }
  if (name.includes('/')) fail('EINVAL', `${kind} name must not contain '/'`);
}

/** Bytes a write puts into one cluster it does not own yet, at `innerOffsetBytes` in the cluster. */
interface ClusterOverlay {
  readonly innerOffsetBytes: number;
  readonly data: Uint8Array;
}

/** `ownerBelow` answers besides a physical cluster (> 0): zeros, or the chain's external snapshot. */
const readsZeros = 0;
const readsExternal = -1;

/**
 * A bdev outside the lvstore that an esnap clone reads through to (SPDK's external snapshot): the
 * members of a `Bdev` (src/bdev/bdev.ts, a layer above) that the store reads, so the node hands
 * it the bdev itself.
 */
export interface ExternalSource {
  readonly name: string;
  readonly uuid: string;
  readonly blockSizeBytes: number;
  sizeBytes(): number;
  readInto(offsetBytes: number, target: Buffer, options?: ReadOptions): Promise<void>;
}

/**
 * How a read through an lvol's chain reaches its devices: `background` in their background class
 * (behind every client request: a deep copy's reads), `signal` calling off what has not begun.
 */
export interface ReadOptions {
  readonly background?: boolean;
  readonly signal?: AbortSignal;
}

export class Lvstore {
  /** Finds an external snapshot by bdev UUID (the node provides it: base bdevs, other lvstores' lvols). */
  externalSource: (bdevUuid: string) => ExternalSource | undefined = () => undefined;
  /** Told of every commit once it is durable (the node turns them into change notifications). */
  onCommitted: (changes: readonly MetadataChange[]) => void = () => {};

  readonly allocator: ClusterAllocator;
  // Commits applied to the records but not yet durable, with the clean state they replaced.
  private readonly pending: PendingCommits;
  // Owned clusters per lvol, for listings; see ownedClusterCount.
  private readonly gates = new Map<string, IoGate>();
  // Allocation of one logical cluster of one lvol runs alone: concurrent first writes must not
  // both allocate it.
  private readonly allocating = new Map<string, Promise<void>>();
  // Per lvol, the newest journaled drop of copied CRCs still being made durable: a write to a
  // cluster whose value it drops must not reach the device before it is (see dropCopiedChecksums).
  private readonly copiedDrops = new Map<string, Promise<void>>();
  // Copies of clusters (copy on write, inflate, decouple) go through these, a chunk at a time.
  private readonly copyBuffers = new CopyBuffers();

  private constructor(
    readonly device: BlockDevice,
    readonly record: LvstoreRecord,
    private readonly log: MetadataLog,
    private readonly runtime: Runtime,
  ) {
    this.allocator = new ClusterAllocator(record.firstDataCluster, record.clusterTotal);
    this.pending = new PendingCommits(record);
    for (const lvol of record.lvols.values()) {
      lvol.clusterMap.forEachNonZero((_, physicalCluster) => this.allocator.markUsed(physicalCluster));
    }
    this.rebuildNameIndex();
    // Built with the store, while it loads, rather than by its first clone lookup or delete
    // (~45 ms at 100,000 lvols, in the middle of serving).
    this.childIndex = this.buildChildIndex();
    numberLvols(record);
  }

  // ---- indexes (SPEC §10: lookups linear or better in what they return) ----

  /** Name → lvol id, kept exact by `commit` (rebuilt after an undo, which is rare). */
  private readonly nameIndex = new Map<string, string>();
  private nameIndexStale = false;
  /** Parent id → its clones' ids in map order; kept exact by `commit` (rebuilt after an undo). */
  private childIndex: Map<string, string[]> | null = null;

  private rebuildNameIndex(): void {
    this.nameIndex.clear();
    for (const lvol of this.record.lvols.values()) this.nameIndex.set(lvol.name, lvol.id);
    this.nameIndexStale = false;
  }

  /**
   * Keeps the indexes true across one change: called before `applyChange`, it returns the parents
   * of the lvols whose parent the change sets; `indexAfter` then moves just those in the parent
   * -> clones index (a delete of one of 100,000 lvols must not rebuild it). Clone lists stay in
   * the map's order, as a build makes them: a create or a snapshot appends its new lvol, which
   * is the newest; a merge or set_parent moves an older lvol, inserted at its creation rank
   * (rebuilding the index after each merge was ~30 ms at 100,000 lvols, and Longhorn deletes a
   * snapshot by merging it).
   */
  private indexBefore(change: MetadataChange): Array<[id: string, parentId: string | null]> {
    if (change.type === 'lvol.delete' || change.type === 'lvol.merge' || change.type === 'lvol.rename') {
      const lvol = this.record.lvols.get(change.id);
      if (lvol && this.nameIndex.get(lvol.name) === lvol.id) this.nameIndex.delete(lvol.name);
    }
    const moved =
      change.type === 'lvol.snapshot' ? [change.id, change.snapshotId]
      : change.type === 'lvol.merge' ? [change.id, change.cloneId]
      : change.type === 'lvol.create' || change.type === 'lvol.delete' || change.type === 'lvol.set_parent' ? [change.id]
      : [];
    return moved.map((id) => [id, this.record.lvols.get(id)?.parentId ?? null]);
  }

  private indexAfter(change: MetadataChange, before: ReadonlyArray<[id: string, parentId: string | null]>): void {
    if (change.type === 'lvol.create' || change.type === 'lvol.rename') this.nameIndex.set(change.name, change.id);
    const index = this.childIndex;
    if (index === null) return;
    for (const [id, oldParent] of before) {
      const newParent = this.record.lvols.get(id)?.parentId ?? null;
      if (newParent === oldParent && this.record.lvols.has(id)) continue;
      if (oldParent !== null) {
        const siblings = index.get(oldParent);
        const at = siblings?.indexOf(id) ?? -1;
        if (siblings && at >= 0) siblings.splice(at, 1);
        if (siblings?.length === 0) index.delete(oldParent);
      }
      const lvol = this.record.lvols.get(id);
      if (newParent !== null && lvol) {
        const siblings = index.get(newParent);
        if (siblings) this.insertByRank(siblings, lvol);
        else index.set(newParent, [id]);
      }
      if (!this.record.lvols.has(id)) index.delete(id);
    }
  }

  /** Puts `lvol` into a clone list at its place in map order: at the end unless it is older. */
  private insertByRank(siblings: string[], lvol: LvolRecord): void {
    const rank = creationRank(this.record, lvol);
    let at = siblings.length;
    while (at > 0 && creationRank(this.record, this.record.lvols.get(siblings[at - 1]!)!) > rank) at--;
    siblings.splice(at, 0, lvol.id);
  }

  /** Creates a new lvstore on `device`, clearing it first unless the clear method is `none`. */
  /**
   * `log` is the MetadataLog to use, or a function that formats the device's metadata area for the
   * new (empty) lvstore and returns its log.
   */
  static async create(
    device: BlockDevice,
    options: LvstoreOptions,
    log: MetadataLog | ((record: LvstoreRecord) => Promise<MetadataLog>),
    runtime: Runtime,
  ): Promise<Lvstore> {
    validateName('lvstore', options.name);
    const { clusterBytes } = options;
    if (
      clusterBytes < clusterSizeBytesMin ||
      clusterBytes > clusterSizeBytesMax ||
      clusterBytes % clusterPageBytes !== 0 ||
      clusterBytes % device.blockSizeBytes !== 0
    ) {
      fail('EINVAL', `cluster_sz must be a multiple of ${clusterPageBytes} bytes and of the ${device.blockSizeBytes}-byte block, from ${clusterSizeBytesMin} to ${clusterSizeBytesMax}`);
    }
    const clusterTotal = Math.floor(device.sizeBytes / clusterBytes);
    const firstDataCluster = metadataClusterCount(device.sizeBytes, clusterBytes);
    if (clusterTotal <= firstDataCluster) {
      fail('ENOSPC', `device of ${device.sizeBytes} bytes has no room for data clusters of ${clusterBytes} bytes`);
    }
    // `none` leaves the device's old bytes in place, as SPDK does; the others make it read zeros.
    if (options.clearMethod !== 'none') await device.discard(0, device.sizeBytes);
    const record: LvstoreRecord = {
      id: runtime.uuid(),
      name: options.name,
      clusterBytes,
      blockBytes: device.blockSizeBytes,
      firstDataCluster,
      clusterTotal,
      clearMethod: options.clearMethod,
      lvols: new Map(),
    };
    return new Lvstore(device, record, typeof log === 'function' ? await log(record) : log, runtime);
  }

  /** Wraps records loaded from a durable log (used by the durability layer). */
  static fromRecord(device: BlockDevice, record: LvstoreRecord, log: MetadataLog, runtime: Runtime): Lvstore {
    return new Lvstore(device, record, log, runtime);
  }

  get id(): string {
    return this.record.id;
  }

  get name(): string {
    return this.record.name;
  }

  get clusterBytes(): number {
    return this.record.clusterBytes;
  }

  info(): LvstoreInfo {
    return {
      id: this.record.id,
      name: this.record.name,
      clusterBytes: this.record.clusterBytes,
      blockBytes: this.record.blockBytes,
      totalDataClusters: this.allocator.dataClusterTotal,
      freeClusters: this.allocator.free,
    };
  }

  /** Metadata I/O of this lvstore so far (undefined for an in-memory log). */
  /** Checkpoints the metadata now (benchmarks, tests); a no-op for logs without checkpoints. */
  async forceCheckpoint(): Promise<void> {
    await this.log.forceCheckpoint?.();
  }

  metadataStats(): MetadataLogStats | undefined {
    return this.log.stats?.();
  }

  lvols(): LvolRecord[] {
    return [...this.record.lvols.values()];
  }

  // ---- the durable state, for readers (SPEC §9: no reader sees a change that is later undone) ----
  //
  // Operations validate against the records as changed (the active state), so that concurrent
  // ones share a flush; listings and lookups made for clients read these instead. They differ
  // only while a journal append is in flight, and only in the lvols it touches.

  /** `info()` as durable metadata has it: the name, and free clusters counting what pending commits took. */
  durableInfo(): LvstoreInfo {
    const info = this.info();
    if (this.pending.count === 0) return info;
    return { ...info, name: this.pending.durableStore().name, freeClusters: info.freeClusters + this.pending.allocatedCount };
  }

  /** The lvol as durable metadata has it; undefined if it does not exist there (created, not yet durable). */
  durableLvol(id: string): LvolRecord | undefined {
    return this.pending.durableLvol(id);
  }

  durableLvolOrFail(id: string): LvolRecord {
    return this.durableLvol(id) ?? fail('ENODEV', `lvol ${id} is not in lvstore ${this.durableName}`);
  }

  /** The lvstore's name as durable metadata has it. */
  get durableName(): string {
    return this.pending.count === 0 ? this.record.name : this.pending.durableStore().name;
  }

  /** The lvol durably called `name`: a rename in flight is not seen, a delete in flight not yet. */
  durableLvolByName(name: string): LvolRecord | undefined {
    const live = this.findLvolByName(name);
    if (this.pending.count === 0) return live;
    const overrides = this.pending.durableOverrides();
    if (live && !overrides.has(live.id)) return live;
    for (const lvol of overrides.values()) if (lvol?.name === name) return lvol;
    return undefined;
  }

  /** Ids of the lvols in durable metadata, in the lvstore's order (a delete in flight still listed). */
  durableLvolIds(): string[] {
    const ids = [...this.record.lvols.keys()];
    if (this.pending.count === 0) return ids;
    const overrides = this.pending.durableOverrides();
    const out = ids.filter((id) => overrides.get(id) !== null);
    let added = false;
    for (const [id, lvol] of overrides) {
      if (lvol && !this.record.lvols.has(id)) {
        out.push(id);
        added = true;
      }
    }
    if (added) out.sort((a, b) => this.durableRank(a) - this.durableRank(b));
    return out;
  }

  private durableRank(id: string): number {
    const lvol = this.record.lvols.get(id) ?? this.pending.savedObject(id);
    return lvol ? creationRank(this.record, lvol) : Number.POSITIVE_INFINITY;
  }

  /** The durable clones of `id` (a clone made or re-parented in flight is not one yet). */
  durableClonesOf(id: string): LvolRecord[] {
    if (this.pending.count === 0) return this.clonesOf(id);
    const overrides = this.pending.durableOverrides();
    const clones = this.clonesOf(id)
      .map((clone) => (overrides.has(clone.id) ? overrides.get(clone.id) : clone))
      .filter((clone): clone is LvolRecord => clone?.parentId === id);
    const seen = new Set(clones.map((clone) => clone.id));
    for (const lvol of overrides.values()) if (lvol?.parentId === id && !seen.has(lvol.id)) clones.push(lvol);
    return clones.sort((a, b) => this.durableRank(a.id) - this.durableRank(b.id));
  }

  lvol(id: string): LvolRecord {
    return this.record.lvols.get(id) ?? fail('ENODEV', `lvol ${id} is not in lvstore ${this.record.name}`);
  }

  findLvolByName(name: string): LvolRecord | undefined {
    if (this.nameIndexStale) this.rebuildNameIndex();
    const id = this.nameIndex.get(name);
    return id === undefined ? undefined : this.record.lvols.get(id);
  }

  clonesOf(id: string): LvolRecord[] {
    this.childIndex ??= this.buildChildIndex();
    return (this.childIndex.get(id) ?? []).map((childId) => this.record.lvols.get(childId)!);
  }

  private buildChildIndex(): Map<string, string[]> {
    const index = new Map<string, string[]>();
    for (const lvol of this.record.lvols.values()) {
      if (lvol.parentId === null) continue;
      const siblings = index.get(lvol.parentId);
      if (siblings) siblings.push(lvol.id);
      else index.set(lvol.parentId, [lvol.id]);
    }
    return index;
  }

  /**
   * True when nobody in the lvol's chain owns a cluster and no external snapshot is under it:
   * every byte reads as zero (a load need not read it to look for a nested lvstore).
   */
  readsAsZeros(id: string): boolean {
    for (let lvol = this.record.lvols.get(id); lvol; lvol = lvol.parentId === null ? undefined : this.record.lvols.get(lvol.parentId)) {
      if (lvol.clusterMap.count > 0 || lvol.externalParent !== null) return false;
    }
    return true;
  }

  /** Clusters the lvol itself owns (the sparse map keeps the count: O(1)). */
  ownedClusterCount(id: string): number {
    return this.lvol(id).clusterMap.count;
  }

  /** The first cluster index ≥ `fromClusterIndex` that the lvol itself owns, or -1. */
  nextOwnedCluster(id: string, fromClusterIndex: number): number {
    return this.lvol(id).clusterMap.nextNonZero(fromClusterIndex);
  }

  /**
   * Applies `changes` to the records and makes them durable; if they do not become durable, the
   * records are put back exactly (SPEC §9: a failed operation changes nothing, in memory or on
   * the device). `allocated` are physical clusters the operation took for these changes: they go
   * back to the allocator on failure.
   *
   * Changes are applied before the append so that concurrent operations validate against them
   * and share a flush (group commit). That is safe because every commit that is not yet durable
   * is remembered in order: the log acknowledges in order, and when one append fails it fails
   * every later one too, so on the first failure all of them are undone, newest first.
   */
  private async commit(changes: MetadataChange[], allocated: readonly number[] = []): Promise<void> {
    const entry = this.pending.begin(changes, allocated);
    try {
      for (const change of changes) {
        this.log.beforeChange?.(change);
        this.pending.save(entry, change);
        const before = this.indexBefore(change);
        applyChange(this.record, change);
        this.indexAfter(change, before);
      }
    } catch (error) {
      this.restoreFrom(entry);
      throw error;
    }
    this.pending.push(entry);
    try {
      await this.log.append(changes);
    } catch (error) {
      this.restoreFrom(entry);
      throw error;
    } finally {
      this.pending.settle(entry);
    }
    try {
      this.onCommitted(changes);
    } catch (error) {
      // The changes are durable: a listener's failure must not make the operation look failed.
      log('error', 'lvstore commit listener failed', { lvstore: this.record.name, error: String(error) });
    }
  }

  /** Restores the records as they were before `entry` and every commit applied after it. */
  private restoreFrom(entry: PendingCommit): void {
    this.allocator.release(this.pending.restoreFrom(entry));
    this.indexesStale();
  }

  private indexesStale(): void {
    this.nameIndexStale = true;
    this.childIndex = null;
  }

  /** Null while metadata can be written; else why not (the lvstore then refuses changes). */
  get metadataFailure(): string | null {
    return this.log.failure?.() ?? null;
  }

  private gate(id: string): IoGate {
    let gate = this.gates.get(id);
    if (!gate) {
      gate = new IoGate();
      this.gates.set(id, gate);
    }
    return gate;
  }

  /**
   * Called once an lvol's gate is held: the checks made before waiting at the gate may be stale,
   * because a delete queued ahead of this operation may have removed the lvol meanwhile.
   */
  private assertStillPresent(lvol: LvolRecord): void {
    if (this.record.lvols.get(lvol.id) !== lvol) fail('ENODEV', `lvol ${lvol.name} was deleted while this operation waited`);
  }

  private assertNameFree(name: string): void {
    validateName('lvol', name);
    if (this.findLvolByName(name)) fail('EEXIST', `lvol ${this.record.name}/${name} already exists`);
  }

  // ---- lvstore ----

  /**
   * bdev_lvol_grow_lvstore: takes in the clusters a grown device now has. The metadata area keeps
   * its size; a device that did not grow changes nothing.
   */
  async grow(): Promise<{ clusterTotal: number; added: number }> {
    const clusterTotal = Math.floor(this.device.sizeBytes / this.clusterBytes);
    const before = this.record.clusterTotal;
    if (clusterTotal <= before) return { clusterTotal: before, added: 0 };
    await this.commit([{ type: 'lvstore.grow', clusterTotal }]);
    // Only once it is durable may the new clusters be handed out.
    this.allocator.grow(clusterTotal);
    return { clusterTotal, added: clusterTotal - before };
  }

  async rename(name: string): Promise<void> {
    validateName('lvstore', name);
    await this.commit([{ type: 'lvstore.rename', name }]);
  }

  async close(): Promise<void> {
    await this.log.close();
  }

  /** Deletes the lvstore: its metadata is erased from the device, so it is not found again. */
  async destroy(): Promise<void> {
    if (this.log.erase) await this.log.erase();
    else await this.log.close();
  }

  // ---- lvol metadata operations ----

  async createLvol(options: { name: string; clusterCount: number; thin: boolean; clearMethod?: ClearMethod }): Promise<LvolRecord> {
    this.assertNameFree(options.name);
    if (!Number.isSafeInteger(options.clusterCount) || options.clusterCount < 1) fail('EINVAL', 'size must be at least one cluster');
    assertClusterCountWithinLimit(options.clusterCount, this.clusterBytes);
    // Thin lvols may overcommit the store (SPDK); a thick one needs every cluster now.
    if (!options.thin && options.clusterCount > this.allocator.dataClusterTotal) {
      fail('ENOSPC', `${options.clusterCount} clusters exceed the lvstore's ${this.allocator.dataClusterTotal}`);
    }
    const physical = options.thin ? [] : this.allocator.allocate(options.clusterCount);
    await this.zeroNewClusters(physical);
    const id = this.runtime.uuid();
    await this.commit([
      {
        type: 'lvol.create',
        id,
        name: options.name,
        clusterCount: options.clusterCount,
        thin: options.thin,
        readOnly: false,
        snapshot: false,
        parentId: null,
        clearMethod: options.clearMethod ?? this.record.clearMethod,
        xattrs: {},
        createdAtMs: this.runtime.nowMs(),
        allocations: allocationRuns(0, physical),
      },
    ], physical);
    return this.lvol(id);
  }

  /** Snapshot of `id`: the new read-only snapshot takes every cluster; `id` becomes its thin clone. */
  async snapshot(id: string, snapshotName: string, xattrs: Record<string, string>): Promise<LvolRecord> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) fail('EINVAL', `${lvol.name} is read-only: snapshots are taken of writable lvols`);
    this.assertNameFree(snapshotName);
    validateXattrs(xattrs);
    const snapshotId = this.runtime.uuid();
    await this.gate(id).withExclusive(async () => {
      this.assertStillPresent(lvol);
      this.assertNameFree(snapshotName);
      await this.commit([
        {
          type: 'lvol.create',
          id: snapshotId,
          name: snapshotName,
          clusterCount: lvol.clusterMap.length,
          thin: lvol.thin,
          readOnly: true,
          snapshot: true,
          parentId: null,
          clearMethod: lvol.clearMethod,
          xattrs,
          createdAtMs: this.runtime.nowMs(),
          allocations: [],
        },
        { type: 'lvol.snapshot', id, snapshotId },
      ]);
    });
    return this.lvol(snapshotId);
  }

  /**
   * The checks of a priority operation, callable on their own: the node runs them before it
   * preempts a checksum, so a request refused for a reason known beforehand stops nothing.
   */
  checkClone(snapshotId: string, cloneName: string): void {
    const source = this.lvol(snapshotId);
    if (!source.readOnly) fail('EINVAL', `${source.name} is not read-only: clones are made of snapshots`);
    this.assertNameFree(cloneName);
  }

  async clone(snapshotId: string, cloneName: string): Promise<LvolRecord> {
    this.checkClone(snapshotId, cloneName);
    const source = this.lvol(snapshotId);
    const id = this.runtime.uuid();
    await this.commit([
      {
        type: 'lvol.create',
        id,
        name: cloneName,
        clusterCount: source.clusterMap.length,
        thin: true,
        readOnly: false,
        snapshot: false,
        parentId: snapshotId,
        clearMethod: source.clearMethod,
        xattrs: {},
        createdAtMs: this.runtime.nowMs(),
        allocations: [],
      },
    ]);
    return this.lvol(id);
  }

  /**
   * Deletes an lvol. With one clone it merges: the clone adopts the clusters it does not own.
   * With two or more: "Operation not permitted", as SPDK.
   */
  checkDelete(id: string): void {
    const lvol = this.lvol(id);
    const clones = this.clonesOf(id);
    if (clones.length > 1) fail('EPERM', `${lvol.name} has ${clones.length} clones`, { wire: 'internal' });
  }

  async deleteLvol(id: string): Promise<{ mergedInto: string | null }> {
    this.checkDelete(id);
    const lvol = this.lvol(id);
    return this.gate(id).withExclusive(async () => {
      this.assertStillPresent(lvol);
      const current = this.clonesOf(id);
      if (current.length > 1) fail('EPERM', `${lvol.name} has ${current.length} clones`, { wire: 'internal' });
      const clone = current[0];
      const freed: number[] = [];
      if (clone) {
        // The clone is held too: its writes must not land in clusters it adopts before the merge
        // is durable (after a crash those clusters would belong to this snapshot again).
        await this.gate(clone.id).withExclusive(async () => {
          const adopted = new Set<number>();
          for (const [, physicalCluster] of mergeAdoptions(lvol, clone)) adopted.add(physicalCluster);
          for (const [, physicalCluster] of lvol.clusterMap.entries()) if (!adopted.has(physicalCluster)) freed.push(physicalCluster);
          await this.commit([{ type: 'lvol.merge', id, cloneId: clone.id }]);
        });
      } else {
        for (const [, physicalCluster] of lvol.clusterMap.entries()) freed.push(physicalCluster);
        await this.commit([{ type: 'lvol.delete', id }]);
      }
      this.gates.delete(id);
      // Freed clusters are cleared before anyone else may allocate them.
      await this.clearClusters(freed, lvol.clearMethod);
      this.allocator.release(freed);
      return { mergedInto: clone?.id ?? null };
    });
  }

  /**
   * Makes clusters just taken from the allocator read as zeros before a commit hands them to an
   * lvol (thick create, thick grow). Zeroing at allocation, not only at free, is what keeps a
   * crash from showing one lvol's old bytes to another: a delete's clearing may never have run,
   * and an allocation whose record never committed leaves its data behind. The journal's flush
   * of the commit that follows makes the zeros durable with it (same device). On a file the
   * device punches holes (no data written) where it can.
   */
  private async zeroNewClusters(physicalClusters: readonly number[]): Promise<void> {
    try {
      for (const [, physicalCluster, count = 1] of allocationRuns(0, physicalClusters)) {
        await this.device.discard(clusterIndexToOffsetBytes(physicalCluster, this.clusterBytes), count * this.clusterBytes);
      }
    } catch (error) {
      this.allocator.release(physicalClusters);
      throw fromDeviceError(error, 'zeroing new clusters failed');
    }
  }

  /**
   * Writes physical cluster `target` with what `lvol` reads at `clusterIndex` from below (an
   * ancestor's cluster, the external snapshot, or zeros), `overlay` on top. Zeros are made by a
   * discard and only the overlay is written; a source is copied a chunk at a time through the
   * lvstore's copy buffers, so no cluster-sized buffer is ever allocated.
   */
  private async fillCluster(lvol: LvolRecord, clusterIndex: number, target: number, overlay: ClusterOverlay | undefined): Promise<void> {
    const targetOffset = clusterIndexToOffsetBytes(target, this.clusterBytes);
    if (overlay && overlay.data.length === this.clusterBytes) return this.device.write(targetOffset, overlay.data);
    const source = this.ownerBelow(lvol, clusterIndex);
    if (source === readsZeros) {
      await this.device.discard(targetOffset, this.clusterBytes);
      if (overlay) await this.device.write(targetOffset + overlay.innerOffsetBytes, overlay.data);
      return;
    }
    await this.copyBuffers.with(async (buffer) => {
      for (let done = 0; done < this.clusterBytes; done += buffer.length) {
        const piece = buffer.subarray(0, Math.min(buffer.length, this.clusterBytes - done));
        // Part of a client's write (copy-on-write): foreground.
        await this.readSource(lvol, source, clusterIndex * this.clusterBytes + done, piece, {});
        if (overlay) {
          const from = Math.max(overlay.innerOffsetBytes, done);
          const to = Math.min(overlay.innerOffsetBytes + overlay.data.length, done + piece.length);
          if (from < to) piece.set(overlay.data.subarray(from - overlay.innerOffsetBytes, to - overlay.innerOffsetBytes), from - done);
        }
        await this.device.write(targetOffset + done, piece);
      }
    });
  }

  /**
   * Clears clusters a committed operation freed. The operation is already durable, so a device
   * error here must not make it look refused: it is logged, and the clusters are still freed (a
   * new owner writes a cluster whole before it can read it; only clear_method's promise of
   * zeros for later thick lvols is lost, as with `none`).
   */
  private async clearClusters(physicalClusters: number[], clearMethod: ClearMethod): Promise<void> {
    if (clearMethod === 'none') return;
    try {
      for (const physicalCluster of physicalClusters) {
        await this.device.discard(clusterIndexToOffsetBytes(physicalCluster, this.clusterBytes), this.clusterBytes);
      }
    } catch (error) {
      log('warn', 'clearing freed clusters failed; they are freed uncleared', { lvstore: this.record.name, error: String(error) });
    }
  }

  async renameLvol(id: string, name: string): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.name === name) return;
    this.assertNameFree(name);
    await this.commit([{ type: 'lvol.rename', id, name }]);
  }

  async resize(id: string, clusterCount: number): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only and cannot be resized`);
    // Resize to 0 is allowed, as SPDK: the lvol keeps its name and identity with no clusters.
    if (!Number.isSafeInteger(clusterCount) || clusterCount < 0) fail('EINVAL', 'size must not be negative');
    assertClusterCountWithinLimit(clusterCount, this.clusterBytes);
    await this.gate(id).withExclusive(async () => {
      this.assertStillPresent(lvol);
      const oldCount = lvol.clusterMap.length;
      const grown = clusterCount > oldCount && !lvol.thin ? this.allocator.allocate(clusterCount - oldCount) : [];
      await this.zeroNewClusters(grown);
      const freed = [...lvol.clusterMap.entries(Math.min(clusterCount, oldCount))].map(([, physicalCluster]) => physicalCluster);
      await this.commit([
        {
          type: 'lvol.resize',
          id,
          clusterCount,
          allocations: allocationRuns(oldCount, grown),
        },
      ], grown);
      await this.clearClusters(freed, lvol.clearMethod);
      this.allocator.release(freed);
    });
  }

  async setReadOnly(id: string): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) return;
    await this.gate(id).withExclusive(() => {
      this.assertStillPresent(lvol);
      return this.commit([{ type: 'lvol.set_read_only', id }]);
    });
  }

  async setXattr(id: string, name: string, value: string): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
    validateXattrs({ [name]: value });
    if (!lvol.xattrs.has(name) && lvol.xattrs.size >= xattrCountMax) fail('ENOSPC', `at most ${xattrCountMax} xattrs`);
    await this.commit([{ type: 'lvol.set_xattr', id, name, value }]);
  }

  /** An xattr as durable metadata has it (a client reads; a set in flight is not seen yet). */
  getXattr(id: string, name: string): string {
    const lvol = this.durableLvolOrFail(id);
    const value = lvol.xattrs.get(name);
    if (value !== undefined) return value;
    // SPDK keeps the creation time as an xattr of every lvol and snapshot.
    if (name === 'creation_time') return rfc3339Seconds(lvol.createdAtMs);
    return fail('ENOENT', `xattr ${name} is not set`, { wire: 'internal' });
  }

  /**
   * Inflate (every cluster allocated, zeros where nothing below) or decouple (only clusters some
   * ancestor owns). Both end the dependency on the parent and drop a snapshot's checksums.
   */
  /** The clusters inflate or decouple would copy into `lvol`. */
  private copyUpTargets(lvol: LvolRecord, mode: 'inflate' | 'decouple'): number[] {
    const map = lvol.clusterMap;
    const targets: number[] = [];
    if (mode === 'inflate') {
      // Every cluster it lacks: callers check the count (copyUpCount) against free space first.
      for (let clusterIndex = 0; clusterIndex < map.length; clusterIndex++) if (map.get(clusterIndex) === 0) targets.push(clusterIndex);
      return targets;
    }
    // Only what some ancestor owns: a walk over the ancestors' maps, not the virtual size; and
    // what an external snapshot under the chain covers.
    const seen = new Set<number>();
    for (let clusterIndex = 0; clusterIndex < Math.min(map.length, this.externalClusters(lvol)); clusterIndex++) {
      if (map.get(clusterIndex) === 0) {
        seen.add(clusterIndex);
        targets.push(clusterIndex);
      }
    }
    for (let ancestor = lvol.parentId ? this.record.lvols.get(lvol.parentId) : undefined; ancestor; ) {
      for (const [clusterIndex] of ancestor.clusterMap.entries(0, map.length)) {
        if (map.get(clusterIndex) === 0 && !seen.has(clusterIndex)) {
          seen.add(clusterIndex);
          targets.push(clusterIndex);
        }
      }
      ancestor = ancestor.parentId ? this.record.lvols.get(ancestor.parentId) : undefined;
    }
    // Only what the lvol reads through to: an ancestor's cluster past a read-through limit (or
    // past a smaller ancestor) reads as zeros here and needs no copy.
    return targets.filter((clusterIndex) => this.ownerBelow(lvol, clusterIndex) !== readsZeros).sort((a, b) => a - b);
  }

  /** How many clusters inflate or decouple would allocate, without listing them for inflate. */
  private copyUpCount(lvol: LvolRecord, mode: 'inflate' | 'decouple'): number {
    return mode === 'inflate' ? lvol.clusterMap.length - lvol.clusterMap.count : this.copyUpTargets(lvol, mode).length;
  }

  checkCopyUp(id: string, mode: 'inflate' | 'decouple'): void {
    const lvol = this.lvol(id);
    if (mode === 'decouple' && lvol.parentId === null && lvol.externalParent === null) fail('EINVAL', `${lvol.name} has no parent to decouple from`);
    const needed = this.copyUpCount(lvol, mode);
    if (needed > this.allocator.free) {
      throw new StorageError('ENOSPC', { wire: 'internal', detail: `need ${needed} clusters, ${this.allocator.free} free` });
    }
  }

  async copyUpFromParent(id: string, mode: 'inflate' | 'decouple'): Promise<void> {
    const lvol = this.lvol(id);
    if (mode === 'decouple' && lvol.parentId === null && lvol.externalParent === null) fail('EINVAL', `${lvol.name} has no parent to decouple from`);
    // The lvol is held alone: its writes wait, so no cluster it lacks can be allocated meanwhile.
    // All copies are written first and published in one commit with the parent change, so a crash
    // leaves the old state or the new one, never a half-inflated lvol.
    await this.gate(id).withExclusive(async () => {
      this.assertStillPresent(lvol);
      // Checked again under the gate, before listing targets: an inflate of a vast thin lvol must
      // be refused on its count, not enumerate 2^40 clusters first.
      this.checkCopyUp(id, mode);
      const targets = this.copyUpTargets(lvol, mode);
      const physical = this.allocator.allocate(targets.length);
      try {
        for (const [position, clusterIndex] of targets.entries()) await this.fillCluster(lvol, clusterIndex, physical[position]!, undefined);
      } catch (error) {
        this.allocator.release(physical);
        throw fromDeviceError(error, `copying clusters into ${lvol.name} failed`);
      }
      this.assertStillPresent(lvol);
      const changes: MetadataChange[] = [];
      const unused: number[] = [];
      targets.forEach((clusterIndex, position) => {
        // A merge into this lvol may have given it the cluster meanwhile: keep what it adopted.
        if (lvol.clusterMap.get(clusterIndex) !== 0) unused.push(physical[position]!);
        else changes.push({ type: 'cluster.allocate', id, clusterIndex, physicalCluster: physical[position]! });
      });
      this.allocator.release(unused);
      // Independent of the whole chain now, its external snapshot included.
      changes.push({ type: 'lvol.set_parent', id, parentId: null, externalParent: null, ...(mode === 'inflate' ? { thin: false } : {}) });
      if (lvol.snapshot) changes.push({ type: 'checksum.invalidate', id });
      const unusedSet = new Set(unused);
      await this.commit(changes, physical.filter((cluster) => !unusedSet.has(cluster)));
    });
  }

  async detachParent(id: string): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.parentId === null && lvol.externalParent === null) fail('EINVAL', `${lvol.name} has no parent`);
    await this.commit([{ type: 'lvol.set_parent', id, parentId: null, ...(lvol.externalParent === null ? {} : { externalParent: null }) }]);
  }

  checkSetParent(id: string, parentId: string): void {
    const lvol = this.lvol(id);
    const parent = this.lvol(parentId);
    if (lvol.parentId === parentId) fail('EEXIST', `${parent.name} is already the parent of ${lvol.name}`);
    if (!lvol.thin) fail('EINVAL', `${lvol.name} is not thin provisioned`);
    if (!parent.snapshot) fail('EINVAL', `${parent.name} is not a snapshot`);
    if (parent.clusterMap.length !== lvol.clusterMap.length) fail('EINVAL', 'parent and lvol differ in size');
    for (let ancestor: LvolRecord | undefined = parent; ancestor; ) {
      if (ancestor.id === id) fail('EINVAL', `${parent.name} depends on ${lvol.name}: that would make a cycle`);
      ancestor = ancestor.parentId ? this.record.lvols.get(ancestor.parentId) : undefined;
    }
  }

  async setParent(id: string, parentId: string): Promise<void> {
    this.checkSetParent(id, parentId);
    // An esnap clone given a snapshot parent stops being one, as SPDK's blob_set_parent drops the
    // external snapshot (Longhorn's RebuildingDstFinish moves the rebuilt head off the remote one).
    const external = this.lvol(id).externalParent === null ? {} : { externalParent: null };
    await this.commit([{ type: 'lvol.set_parent', id, parentId, ...external }]);
  }

  /** Records (or, with null, forgets) where a stopped walk stood. */
  async saveChecksumProgress(id: string, progress: SavedChecksumProgress | null): Promise<void> {
    this.lvol(id);
    await this.commit([{ type: 'checksum.progress', id, progress }]);
  }

  async storeChecksum(id: string, checksum: bigint, rangeChecksums: ClusterChecksums | null): Promise<void> {
    this.lvol(id);
    await this.commit([{ type: 'checksum.store', id, checksum, rangeChecksums }]);
  }

  /** Journals what a verification found (SPEC §6.10); the stored checksums are left as they are. */
  async recordVerification(id: string, verification: VerificationRecord): Promise<void> {
    this.lvol(id);
    await this.commit([{ type: 'checksum.verified', id, verification }]);
  }

  /**
   * A copy's write of whole cluster `clusterIndex` of writable lvol `id`, and the CRC of `data`
   * recorded with it (`checksum.copied`), so a snapshot taken of the lvol right after is born
   * with its checksums. Holds the lvol's gate alone: no other write can land between the bytes
   * and the value (every other write drops the value before it writes, see writeGated).
   */
  async writeCopied(id: string, clusterIndex: number, data: Uint8Array, checksum: bigint): Promise<void> {
    const lvol = this.lvol(id);
    assert.equal(data.length, this.clusterBytes, 'a recorded copy writes whole clusters');
    const offsetBytes = clusterIndex * this.clusterBytes;
    await this.gate(id)
      .withExclusive(async () => {
        this.assertStillPresent(lvol);
        if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
        this.assertIoRange(lvol, offsetBytes, data.length);
        const reserved = this.reserveFor(lvol, [{ offsetBytes, lengthBytes: data.length }]);
        try {
          await this.writeRange(lvol, offsetBytes, data, reserved);
        } finally {
          this.allocator.release(reserved.splice(0));
        }
        await this.commit([{ type: 'checksum.copied', id, clusterIndex, checksum }]);
      })
      .catch((error: unknown) => {
        if (error instanceof StorageError && error.errno === 'ENOSPC') throw new StorageError('ENOSPC', { detail: error.detail ?? 'no free cluster' });
        throw fromDeviceError(error, `copy write to lvol ${lvol.name} failed`);
      });
  }

  /**
   * Before anything but a recorded copy writes, zeroes or unmaps a range of `lvol`: the copied
   * CRCs of the clusters it touches are dropped, durably, before a byte reaches the device (a
   * crash in between must not bring back a value for bytes that changed). A write that finds
   * another's drop still in flight waits for it for the same reason. Costs nothing on lvols
   * without copied values.
   */
  private async dropCopiedChecksums(lvol: LvolRecord, offsetBytes: number, lengthBytes: number): Promise<void> {
    for (;;) {
      const inFlight = this.copiedDrops.get(lvol.id);
      const values = lvol.copiedChecksums;
      if (!values && !inFlight) return;
      const clusterIndices: number[] = [];
      if (values && lengthBytes > 0) {
        const last = Math.floor((offsetBytes + lengthBytes - 1) / this.clusterBytes);
        for (let clusterIndex = Math.floor(offsetBytes / this.clusterBytes); clusterIndex <= last; clusterIndex++) {
          if (values.get(clusterIndex) !== 0n) clusterIndices.push(clusterIndex);
        }
      }
      if (clusterIndices.length === 0) {
        if (!inFlight) return;
        // Look again once it settled: a failed drop is undone and its values are back.
        await inFlight;
        continue;
      }
      const commit = this.commit([{ type: 'checksum.copied_drop', id: lvol.id, clusterIndices }]);
      const settled = commit.then(
        () => undefined,
        () => undefined,
      );
      this.copiedDrops.set(lvol.id, settled);
      try {
        await commit;
      } finally {
        if (this.copiedDrops.get(lvol.id) === settled) this.copiedDrops.delete(lvol.id);
      }
      return;
    }
  }

  /**
   * The lvol whose own bytes cluster `clusterIndex` of `id` shows (itself or an ancestor), or
   * null where it reads zeros or an external snapshot: whose stored per-cluster checksum a deep
   * copy checks the cluster against.
   */
  clusterOwnerOf(id: string, clusterIndex: number): LvolRecord | null {
    let member = this.lvol(id);
    if (member.clusterMap.get(clusterIndex) !== 0) return member;
    for (;;) {
      if (member.readThroughClusters !== null && clusterIndex >= member.readThroughClusters) return null;
      if (member.parentId === null) return null;
      const parent = this.record.lvols.get(member.parentId);
      if (!parent || clusterIndex >= parent.clusterMap.length) return null;
      if (parent.clusterMap.get(clusterIndex) !== 0) return parent;
      member = parent;
    }
  }

  // ---- data path ----

  /**
   * What a cluster `lvol` does not own reads as: the physical cluster of the ancestor that owns it
   * (> 0), the chain's external snapshot (`readsExternal`), or zeros (`readsZeros`). Zeros where
   * an lvol of the chain stops reading through (its read-through limit) or an ancestor is
   * smaller than the index: a grown clone reads zeros there even over an external snapshot.
   */
  private ownerBelow(lvol: LvolRecord, clusterIndex: number): number {
    for (let member = lvol; ; ) {
      if (member.readThroughClusters !== null && clusterIndex >= member.readThroughClusters) return readsZeros;
      if (member.parentId === null) return member.externalParent === null ? readsZeros : readsExternal;
      const parent = this.record.lvols.get(member.parentId);
      if (!parent || clusterIndex >= parent.clusterMap.length) return readsZeros;
      const physicalCluster = parent.clusterMap.get(clusterIndex);
      if (physicalCluster !== 0) return physicalCluster;
      member = parent;
    }
  }

  /** `ownerBelow`, unless the lvol owns the cluster itself. */
  private owner(lvol: LvolRecord, clusterIndex: number): number {
    return lvol.clusterMap.get(clusterIndex) || this.ownerBelow(lvol, clusterIndex);
  }

  /** Fills `target` with what `source` (an `owner` answer) holds at `offsetBytes` of the lvol. */
  private async readSource(lvol: LvolRecord, source: number, offsetBytes: number, target: Buffer, options: ReadOptions): Promise<void> {
    if (source > 0) {
      const at = clusterIndexToOffsetBytes(source, this.clusterBytes) + (offsetBytes % this.clusterBytes);
      if (options.background && this.device.readIntoBackground) await this.device.readIntoBackground(target, at, options.signal);
      else await this.device.readInto(target, at);
    } else if (source === readsExternal) await this.readExternal(lvol, offsetBytes, target, options);
    else target.fill(0);
  }

  private assertIoRange(lvol: LvolRecord, offsetBytes: number, lengthBytes: number): void {
    const sizeBytes = lvol.clusterMap.length * this.clusterBytes;
    const blockBytes = this.record.blockBytes;
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || !Number.isSafeInteger(lengthBytes) || lengthBytes < 0) {
      fail('EINVAL', 'offset and length must be non-negative integers');
    }
    if (offsetBytes % blockBytes !== 0 || lengthBytes % blockBytes !== 0) {
      fail('EINVAL', `offset and length must be multiples of the ${blockBytes}-byte block`);
    }
    if (offsetBytes + lengthBytes > sizeBytes) fail('EINVAL', `I/O past the end of the ${sizeBytes}-byte lvol`);
  }

  /** Visits each cluster-sized piece of a byte range: (clusterIndex, offset in cluster, offset in range, length). */
  private forEachSegment(
    offsetBytes: number,
    lengthBytes: number,
    visit: (clusterIndex: number, innerOffsetBytes: number, rangeOffsetBytes: number, segmentBytes: number) => Promise<void>,
  ): Promise<void[]> {
    const work: Promise<void>[] = [];
    this.everySegment(offsetBytes, lengthBytes, (clusterIndex, inner, position, segmentBytes) => {
      work.push(visit(clusterIndex, inner, position, segmentBytes));
      return true;
    });
    return Promise.all(work);
  }

  /** `forEachSegment`, synchronous: stops at the first visit that answers false, and answers whether none did. */
  private everySegment(
    offsetBytes: number,
    lengthBytes: number,
    visit: (clusterIndex: number, innerOffsetBytes: number, rangeOffsetBytes: number, segmentBytes: number) => boolean,
  ): boolean {
    for (let position = 0; position < lengthBytes; ) {
      const absolute = offsetBytes + position;
      const clusterIndex = Math.floor(absolute / this.clusterBytes);
      const inner = absolute - clusterIndex * this.clusterBytes;
      const segmentBytes = Math.min(this.clusterBytes - inner, lengthBytes - position);
      if (!visit(clusterIndex, inner, position, segmentBytes)) return false;
      position += segmentBytes;
    }
    return true;
  }

  /** Reads through the parent chain; clusters nobody owns read as zeros. */
  async read(id: string, offsetBytes: number, lengthBytes: number, options: ReadOptions = {}): Promise<Buffer> {
    const lvol = this.lvol(id);
    this.assertIoRange(lvol, offsetBytes, lengthBytes);
    const target = Buffer.allocUnsafe(lengthBytes);
    await this.readVisible(lvol, offsetBytes, target, options).catch((error: unknown) => {
      throw fromDeviceError(error, `read of lvol ${lvol.name} failed`);
    });
    return target;
  }

  /** `read` into the caller's buffer (the NBD server reuses its read buffers). */
  async readInto(id: string, offsetBytes: number, target: Buffer, options: ReadOptions = {}): Promise<void> {
    const lvol = this.lvol(id);
    this.assertIoRange(lvol, offsetBytes, target.length);
    await this.readVisible(lvol, offsetBytes, target, options).catch((error: unknown) => {
      throw fromDeviceError(error, `read of lvol ${lvol.name} failed`);
    });
  }

  /**
   * `readInto` at once, where the device answers at once and no cluster of the range reads from an
   * external snapshot: true once `target` is filled, false (read with `readInto`) otherwise. The
   * map is looked up and read in one go, so no write or copy lands between the two.
   */
  readIntoNow(id: string, offsetBytes: number, target: Buffer): boolean {
    const lvol = this.lvol(id);
    this.assertIoRange(lvol, offsetBytes, target.length);
    const device = this.device;
    if (device.readIntoNow === undefined) return false;
    try {
      return this.everySegment(offsetBytes, target.length, (clusterIndex, inner, position, segmentBytes) => {
        const source = this.owner(lvol, clusterIndex);
        const slice = segmentBytes === target.length ? target : target.subarray(position, position + segmentBytes);
        if (source > 0) return device.readIntoNow!(slice, clusterIndexToOffsetBytes(source, this.clusterBytes) + inner);
        if (source === readsExternal) return false;
        slice.fill(0);
        return true;
      });
    } catch (error) {
      throw fromDeviceError(error, `read of lvol ${lvol.name} failed`);
    }
  }

  private async readVisible(lvol: LvolRecord, offsetBytes: number, target: Buffer, options: ReadOptions): Promise<void> {
    await this.forEachSegment(offsetBytes, target.length, async (clusterIndex, inner, rangeOffset, length) => {
      const slice = target.subarray(rangeOffset, rangeOffset + length);
      await this.readSource(lvol, this.owner(lvol, clusterIndex), clusterIndex * this.clusterBytes + inner, slice, options);
    });
  }

  /** The last lvol of the chain: the one an external snapshot would hang from. */
  private rootOf(lvol: LvolRecord): LvolRecord {
    let root = lvol;
    for (let parent = root.parentId ? this.record.lvols.get(root.parentId) : undefined; parent; parent = parent.parentId ? this.record.lvols.get(parent.parentId) : undefined) {
      root = parent;
    }
    return root;
  }

  /** The chain's external snapshot, or undefined; a missing one (degraded) is an I/O error. */
  private externalOf(lvol: LvolRecord): ExternalSource | undefined {
    const external = this.rootOf(lvol).externalParent;
    if (external === null) return undefined;
    return this.externalSource(external) ?? fail('EIO', `the external snapshot ${external} of ${lvol.name} is not attached (the lvol is degraded)`);
  }

  /** What lies below every lvol of the chain at `offsetBytes`: the external snapshot's bytes, else zeros. */
  private async readExternal(lvol: LvolRecord, offsetBytes: number, target: Buffer, options: ReadOptions): Promise<void> {
    const external = this.externalOf(lvol);
    const inside = external ? Math.max(0, Math.min(target.length, external.sizeBytes() - offsetBytes)) : 0;
    if (inside > 0) await external!.readInto(offsetBytes, target.subarray(0, inside), options);
    target.fill(0, inside);
  }

  /** Clusters an external snapshot covers (they read as data, not holes). */
  private externalClusters(lvol: LvolRecord): number {
    const external = this.rootOf(lvol).externalParent;
    if (external === null) return 0;
    const source = this.externalSource(external);
    return source ? Math.ceil(source.sizeBytes() / this.clusterBytes) : lvol.clusterMap.length;
  }

  /** Whether the chain's external snapshot is missing (SPDK's is_degraded). */
  isDegraded(id: string): boolean {
    const external = this.rootOf(this.lvol(id)).externalParent;
    return external !== null && this.externalSource(external) === undefined;
  }

  /** The chain's external snapshot's bdev UUID, if any. */
  externalParentOf(id: string): string | null {
    return this.rootOf(this.lvol(id)).externalParent;
  }

  /**
   * bdev_lvol_clone_bdev: a thin lvol over an external snapshot, of its size rounded up to whole
   * clusters. Reads of clusters it does not own go to the external bdev.
   */
  async cloneExternal(external: ExternalSource, cloneName: string): Promise<LvolRecord> {
    this.assertNameFree(cloneName);
    if (external.blockSizeBytes !== this.record.blockBytes) fail('EINVAL', `${external.name} has ${external.blockSizeBytes}-byte blocks, the lvstore ${this.record.blockBytes}`);
    const clusterCount = Math.ceil(external.sizeBytes() / this.clusterBytes);
    if (clusterCount < 1) fail('EINVAL', `${external.name} is empty`);
    const id = this.runtime.uuid();
    await this.commit([
      {
        type: 'lvol.create',
        id,
        name: cloneName,
        clusterCount,
        thin: true,
        readOnly: false,
        snapshot: false,
        parentId: null,
        externalParent: external.uuid,
        clearMethod: this.record.clearMethod,
        xattrs: {},
        createdAtMs: this.runtime.nowMs(),
        allocations: [],
      },
    ]);
    return this.lvol(id);
  }

  /** bdev_lvol_set_parent_bdev: a thin lvol reads through to an external snapshot from now on. */
  async setExternalParent(id: string, external: ExternalSource): Promise<void> {
    const lvol = this.lvol(id);
    if (!lvol.thin) fail('EINVAL', `${lvol.name} is not thin provisioned`);
    if (lvol.externalParent === external.uuid) fail('EEXIST', `${external.name} is already the external snapshot of ${lvol.name}`);
    if (external.blockSizeBytes !== this.record.blockBytes) fail('EINVAL', `${external.name} has ${external.blockSizeBytes}-byte blocks, the lvstore ${this.record.blockBytes}`);
    if (Math.ceil(external.sizeBytes() / this.clusterBytes) > lvol.clusterMap.length) fail('EINVAL', `${external.name} is larger than ${lvol.name}`);
    await this.gate(id).withExclusive(() => {
      this.assertStillPresent(lvol);
      return this.commit([{ type: 'lvol.set_parent', id, parentId: null, externalParent: external.uuid }]);
    });
  }

  /** Writes to a writable lvol; a cluster it does not own yet is allocated (copy-on-write). */
  async write(id: string, offsetBytes: number, data: Uint8Array): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
    this.assertIoRange(lvol, offsetBytes, data.length);
    await this.gate(id).withShared(() => this.writeGated(lvol, offsetBytes, data)).catch((error: unknown) => {
      // A full lvstore on the write path is -28, as SPDK; the file system's errors map as the
      // device's do (ENOSPC -28, else EIO), never a bare internal error.
      if (error instanceof StorageError && error.errno === 'ENOSPC') throw new StorageError('ENOSPC', { detail: error.detail ?? 'no free cluster' });
      throw fromDeviceError(error, `write to lvol ${lvol.name} failed`);
    });
  }

  private async writeGated(lvol: LvolRecord, offsetBytes: number, data: Uint8Array): Promise<void> {
    // Checked again now that the gate is held: a delete, resize or set_read_only queued ahead of
    // this write may have run while it waited, and a write to a deleted lvol would land in
    // clusters already handed back to the allocator.
    this.assertStillPresent(lvol);
    if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
    this.assertIoRange(lvol, offsetBytes, data.length);
    await this.dropCopiedChecksums(lvol, offsetBytes, data.length);
    // Every cluster the write must allocate is reserved before a byte is written: a write the
    // lvstore has no room for is refused whole (-28) and changes nothing (NBD would allow a
    // partial write; a client retrying after freeing space must not find half of it applied).
    const reserved = this.reserveFor(lvol, [{ offsetBytes, lengthBytes: data.length }]);
    try {
      await this.writeRange(lvol, offsetBytes, data, reserved);
    } finally {
      // Reserved for clusters a concurrent write allocated first: back to the allocator.
      this.allocator.release(reserved.splice(0));
    }
  }

  /** Writes `data` into the lvol's clusters, allocating from `reserved` those it does not own yet. */
  private async writeRange(lvol: LvolRecord, offsetBytes: number, data: Uint8Array, reserved: number[]): Promise<void> {
    await this.forEachSegment(offsetBytes, data.length, async (clusterIndex, inner, rangeOffset, length) => {
        const piece = data.subarray(rangeOffset, rangeOffset + length);
        const physicalCluster = lvol.clusterMap.get(clusterIndex);
        if (physicalCluster !== 0) {
          // The mapping may come from an allocation whose journal record is still being flushed:
          // this write is acknowledged only once that record is durable, or a crash could lose it.
          const allocation = this.allocating.get(`${lvol.id}:${clusterIndex}`);
          await this.device.write(clusterIndexToOffsetBytes(physicalCluster, this.clusterBytes) + inner, piece);
          if (allocation) await allocation;
        } else {
          await this.allocateCluster(lvol, clusterIndex, { innerOffsetBytes: inner, data: piece }, reserved);
        }
      });
  }

  /** Takes from the allocator a cluster for each one of the range the lvol does not own yet, or throws ENOSPC taking none. */
  private reserveFor(lvol: LvolRecord, ranges: ReadonlyArray<{ offsetBytes: number; lengthBytes: number }>): number[] {
    let needed = 0;
    for (const { offsetBytes, lengthBytes } of ranges) {
      if (lengthBytes === 0) continue;
      const last = Math.floor((offsetBytes + lengthBytes - 1) / this.clusterBytes);
      for (let clusterIndex = Math.floor(offsetBytes / this.clusterBytes); clusterIndex <= last; clusterIndex++) {
        if (lvol.clusterMap.get(clusterIndex) === 0 && !this.allocating.has(`${lvol.id}:${clusterIndex}`)) needed++;
      }
    }
    if (needed === 0) return [];
    if (needed > this.allocator.free) {
      fail('ENOSPC', `the write needs ${needed} new clusters and ${this.allocator.free} are free`);
    }
    return this.allocator.allocate(needed);
  }

  /**
   * Gives `lvol` its own copy of `clusterIndex`: what it sees now (parent chain or zeros) with
   * `overlay` on top, written to a cluster from `reserved` (or a fresh one) before the allocation
   * is committed.
   */
  private async allocateCluster(lvol: LvolRecord, clusterIndex: number, overlay: ClusterOverlay, reserved: number[]): Promise<void> {
    const key = `${lvol.id}:${clusterIndex}`;
    for (let pending = this.allocating.get(key); pending; pending = this.allocating.get(key)) await pending;
    const existing = lvol.clusterMap.get(clusterIndex);
    if (existing !== 0) {
      await this.device.write(clusterIndexToOffsetBytes(existing, this.clusterBytes) + overlay.innerOffsetBytes, overlay.data);
      return;
    }
    // Reserved up front; only a write that found another's allocation of this cluster in flight,
    // which then failed, gets here without one.
    const physicalCluster = reserved.pop() ?? this.allocator.allocate(1)[0]!;
    const work = this.copyIntoNewCluster(lvol, clusterIndex, overlay, physicalCluster);
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    this.allocating.set(key, settled);
    try {
      await work;
    } finally {
      this.allocating.delete(key);
    }
  }

  private async copyIntoNewCluster(lvol: LvolRecord, clusterIndex: number, overlay: ClusterOverlay, physicalCluster: number): Promise<void> {
    try {
      // Data first, then the metadata that publishes it: a crash in between leaks nothing visible.
      await this.fillCluster(lvol, clusterIndex, physicalCluster, overlay);
    } catch (error) {
      this.allocator.release([physicalCluster]);
      throw error;
    }
    // The write holds the lvol's gate shared: a delete or a merge into it (which hold it alone)
    // cannot have run meanwhile, so the lvol exists and the slot is still empty.
    assert.ok(this.record.lvols.get(lvol.id) === lvol && lvol.clusterMap.get(clusterIndex) === 0, 'allocation raced a gated operation');
    await this.commit([{ type: 'cluster.allocate', id: lvol.id, clusterIndex, physicalCluster }], [physicalCluster]);
  }

  /**
   * Makes the range read as zeros (NBD WRITE_ZEROES). Clusters nobody in the chain owns already
   * read as zeros and stay holes; the rest are written with zeros through the normal write path
   * (a cluster the lvol does not own yet is allocated, as SPDK's write_zeroes on a thin blob).
   */
  async writeZeroes(id: string, offsetBytes: number, lengthBytes: number): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
    this.assertIoRange(lvol, offsetBytes, lengthBytes);
    await this.gate(id)
      .withShared(async () => {
        this.assertStillPresent(lvol);
        if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
        this.assertIoRange(lvol, offsetBytes, lengthBytes);
        await this.dropCopiedChecksums(lvol, offsetBytes, lengthBytes);
        await this.zeroGated(lvol, offsetBytes, lengthBytes);
      })
      .catch((error: unknown) => {
        if (error instanceof StorageError && error.errno === 'ENOSPC') throw new StorageError('ENOSPC', { detail: error.detail ?? 'no free cluster' });
        throw fromDeviceError(error, `write zeroes to lvol ${lvol.name} failed`);
      });
  }

  /** writeZeroes' bytes, under the lvol's gate: clusters the chain owns get zeros, holes stay holes. */
  private async zeroGated(lvol: LvolRecord, offsetBytes: number, lengthBytes: number): Promise<void> {
    const extents = this.extents(lvol.id, offsetBytes, lengthBytes, Number.POSITIVE_INFINITY).filter((extent) => extent.allocated);
    // Refused whole, as a write: every cluster it must allocate is reserved first.
    const reserved = this.reserveFor(lvol, extents);
    try {
      for (const extent of extents) {
        for (let done = 0; done < extent.lengthBytes; done += zeroChunkBytes) {
          const piece = Math.min(zeroChunkBytes, extent.lengthBytes - done);
          await this.writeRange(lvol, extent.offsetBytes + done, zeroChunk.subarray(0, piece), reserved);
        }
      }
    } finally {
      this.allocator.release(reserved.splice(0));
    }
  }

  /**
   * A deep copy's zero-fill of whole clusters `clusterIndex` … `+ clusterCount - 1` of writable
   * lvol `id` (its source reads zeros there), as writeZeroes, then `zeroClusterCrc` recorded as
   * the copied value of each of them the lvol owns afterwards (`checksum.copied`), as writeCopied
   * records data: a snapshot of the lvol is then born with its checksums. Clusters left holes are
   * not the snapshot's and need none. The old values are dropped durably before a byte changes (a
   * crash before the record must not leave them for zeroed bytes); the gate is held alone.
   */
  async writeZeroesCopied(id: string, clusterIndex: number, clusterCount: number, zeroClusterCrc: bigint): Promise<void> {
    const lvol = this.lvol(id);
    const offsetBytes = clusterIndexToOffsetBytes(clusterIndex, this.clusterBytes);
    const lengthBytes = clusterIndexToOffsetBytes(clusterCount, this.clusterBytes);
    await this.gate(id)
      .withExclusive(async () => {
        this.assertStillPresent(lvol);
        if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
        this.assertIoRange(lvol, offsetBytes, lengthBytes);
        await this.dropCopiedChecksums(lvol, offsetBytes, lengthBytes);
        await this.zeroGated(lvol, offsetBytes, lengthBytes);
        const changes: MetadataChange[] = [];
        for (let index = clusterIndex; index < clusterIndex + clusterCount; index++) {
          if (lvol.clusterMap.get(index) !== 0) changes.push({ type: 'checksum.copied', id, clusterIndex: index, checksum: zeroClusterCrc });
        }
        if (changes.length > 0) await this.commit(changes);
      })
      .catch((error: unknown) => {
        if (error instanceof StorageError && error.errno === 'ENOSPC') throw new StorageError('ENOSPC', { detail: error.detail ?? 'no free cluster' });
        throw fromDeviceError(error, `copy zero-fill of lvol ${lvol.name} failed`);
      });
  }

  /**
   * Advisory discard (NBD TRIM; a range shallow copy's "unmap"), following the lvol's clear
   * method: with `none` nothing happens. Otherwise, in a thin lvol, whole clusters it owns are
   * given back (they read through the parent chain again, as SPDK's unmap of a thin blob), and
   * the rest of a range it owns is discarded on the device (reads as zeros). Clusters it shares
   * with a parent are left alone: TRIM promises no content.
   */
  async unmap(id: string, offsetBytes: number, lengthBytes: number): Promise<void> {
    const lvol = this.lvol(id);
    if (lvol.readOnly) fail('EPERM', `${lvol.name} is read-only`);
    this.assertIoRange(lvol, offsetBytes, lengthBytes);
    if (lvol.clearMethod === 'none') return;
    const freed: number[] = [];
    // Exclusive: a write in flight to a cluster given back here would land in a freed cluster.
    await this.gate(id)
      .withExclusive(async () => {
        this.assertStillPresent(lvol);
        await this.dropCopiedChecksums(lvol, offsetBytes, lengthBytes);
        const whole: number[] = [];
        const end = offsetBytes + lengthBytes;
        const first = Math.floor(offsetBytes / this.clusterBytes);
        for (let clusterIndex = lvol.clusterMap.nextNonZero(first); clusterIndex !== -1 && clusterIndex * this.clusterBytes < end; clusterIndex = lvol.clusterMap.nextNonZero(clusterIndex + 1)) {
          if (this.allocating.has(`${lvol.id}:${clusterIndex}`)) continue;
          const clusterStart = clusterIndex * this.clusterBytes;
          const from = Math.max(offsetBytes, clusterStart);
          const to = Math.min(end, clusterStart + this.clusterBytes);
          const physicalCluster = lvol.clusterMap.get(clusterIndex);
          if (lvol.thin && from === clusterStart && to === clusterStart + this.clusterBytes) {
            whole.push(clusterIndex);
            freed.push(physicalCluster);
          } else {
            await this.device.discard(clusterIndexToOffsetBytes(physicalCluster, this.clusterBytes) + (from - clusterStart), to - from);
          }
        }
        if (whole.length > 0) await this.commit([{ type: 'cluster.release', id, clusterIndices: whole }]);
      })
      .catch((error: unknown) => {
        freed.length = 0; // not committed: nothing is freed
        throw fromDeviceError(error, `unmap of lvol ${lvol.name} failed`);
      });
    if (freed.length > 0) {
      // Cleared before anyone else may allocate them, as on delete.
      await this.clearClusters(freed, lvol.clearMethod);
      this.allocator.release(freed);
    }
  }

  /**
   * The range as runs of data and holes (NBD BLOCK_STATUS, base:allocation): a hole is a cluster
   * no lvol in the chain owns, so it reads as zeros. At most `maxExtents` runs are returned;
   * they always start at `offsetBytes` and cover a prefix of the range.
   */
  extents(id: string, offsetBytes: number, lengthBytes: number, maxExtents = 1024): Array<{ offsetBytes: number; lengthBytes: number; allocated: boolean }> {
    const lvol = this.lvol(id);
    this.assertIoRange(lvol, offsetBytes, lengthBytes);
    const out: Array<{ offsetBytes: number; lengthBytes: number; allocated: boolean }> = [];
    const chain: LvolRecord[] = [];
    for (let member: LvolRecord | undefined = lvol; member; member = member.parentId ? this.record.lvols.get(member.parentId) : undefined) chain.push(member);
    // The next cluster anyone in the chain owns: a walk over what is owned, so a hole of any size costs O(1).
    const nextVisible = (from: number): number => {
      let next = -1;
      for (const member of chain) {
        const candidate = member.clusterMap.nextNonZero(from);
        if (candidate !== -1 && (next === -1 || candidate < next)) next = candidate;
      }
      return next;
    };
    const end = offsetBytes + lengthBytes;
    // Clusters an external snapshot covers read as its data: they are never holes.
    const externalClusters = this.externalClusters(lvol);
    const visible = (clusterIndex: number): boolean => {
      const source = this.owner(lvol, clusterIndex);
      return source > 0 || (source === readsExternal && clusterIndex < externalClusters);
    };
    for (let position = offsetBytes; position < end && out.length < maxExtents; ) {
      const clusterIndex = Math.floor(position / this.clusterBytes);
      const allocated = visible(clusterIndex);
      let runEndCluster = clusterIndex + 1;
      if (allocated) {
        while (runEndCluster * this.clusterBytes < end && visible(runEndCluster)) runEndCluster++;
      } else {
        const next = nextVisible(clusterIndex + 1);
        runEndCluster = next === -1 ? Number.POSITIVE_INFINITY : next;
      }
      const runEnd = Math.min(end, runEndCluster * this.clusterBytes);
      out.push({ offsetBytes: position, lengthBytes: runEnd - position, allocated });
      position = runEnd;
    }
    return out;
  }

  /**
   * Makes every completed write durable (a client's FLUSH). Writes to clusters an lvol already
   * owns are acknowledged when the device took them, like a disk with a write cache; metadata
   * changes (allocations included) are always durable when acknowledged.
   */
  async flush(): Promise<void> {
    await this.device.flush();
  }

  /** Where the bytes of a cluster the lvol itself owns are on the device (the checksum walk reads there). */
  ownedClusterOffsetBytes(id: string, clusterIndex: number): number {
    const physicalCluster = this.lvol(id).clusterMap.get(clusterIndex);
    if (!physicalCluster) fail('EINVAL', `cluster ${clusterIndex} is not owned by lvol ${id}`);
    return clusterIndexToOffsetBytes(physicalCluster, this.clusterBytes);
  }

  /** Bitmap of owned clusters in a byte range (bdev_lvol_get_fragmap), bit i = cluster i, LSB first. */
  fragmap(id: string, offsetBytes: number, sizeBytes: number): { clusterCount: number; allocated: number; bitmap: Buffer } {
    const lvol = this.durableLvolOrFail(id);
    const lvolBytes = lvol.clusterMap.length * this.clusterBytes;
    const length = sizeBytes === 0 ? lvolBytes - offsetBytes : sizeBytes;
    if (offsetBytes % this.clusterBytes !== 0 || length % this.clusterBytes !== 0 || offsetBytes + length > lvolBytes || length < 0) {
      fail('EINVAL', 'offset and size must be cluster aligned and inside the lvol');
    }
    const first = offsetBytes / this.clusterBytes;
    const clusterCount = length / this.clusterBytes;
    // The answer is a bitmap of the range: its size follows the range asked for, so that is bounded.
    if (clusterCount > fragmapClusterCountMax) {
      fail('EINVAL', `a fragmap covers at most ${fragmapClusterCountMax} clusters per call (asked for ${clusterCount}); ask for the range in parts with offset and size`);
    }
    const bitmap = Buffer.alloc(Math.ceil(clusterCount / 8));
    let allocated = 0;
    for (const [clusterIndex] of lvol.clusterMap.entries(first, first + clusterCount)) {
      const bit = clusterIndex - first;
      bitmap[bit >> 3]! |= 1 << (bit & 7);
      allocated++;
    }
    return { clusterCount, allocated, bitmap };
  }
}

function assertClusterCountWithinLimit(clusterCount: number, clusterBytes: number): void {
  if (clusterCount * clusterBytes > lvolSizeBytesMax) {
    fail('EINVAL', `an lvol can be at most ${lvolSizeBytesMax} bytes (asked for ${clusterCount} clusters of ${clusterBytes} bytes)`);
  }
}

function validateXattrs(xattrs: Record<string, string>): void {
  const entries = Object.entries(xattrs);
  if (entries.length > xattrCountMax) throw new StorageError('EINVAL', { detail: `at most ${xattrCountMax} xattrs` });
  for (const [name, value] of entries) {
    if (name.length === 0 || name.length > xattrNameLengthMax) fail('EINVAL', `xattr name must be 1 to ${xattrNameLengthMax} characters`);
    if (value.length > xattrValueLengthMax) fail('EINVAL', `xattr value longer than ${xattrValueLengthMax} characters`);
  }
}
