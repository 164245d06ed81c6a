// The lvstore's metadata: records, and the changes that are the only way they are ever modified.
//
// Every change is a plain record applied by `applyChange`, both live and when a durable log is
// replayed at load (the durability issue makes `MetadataLog` persistent; nothing else changes).

import { Crc64Chain } from '../checksum/crc64Chain.ts';
import { ClusterChecksums, ClusterMap } from './sparseArray.ts';

export type ClearMethod = 'none' | 'unmap' | 'write_zeroes';

export interface LvolRecord {
  readonly id: string;
  name: string;
  /** Physical cluster index per logical cluster; 0 means "not owned" (cluster 0 holds metadata). Sparse. */
  clusterMap: ClusterMap;
  thin: boolean;
  readOnly: boolean;
  /** Created by bdev_lvol_snapshot: only snapshots get checksums. */
  snapshot: boolean;
  parentId: string | null;
  /**
   * An external snapshot (SPDK esnap): the UUID of a bdev outside this lvstore that the root of
   * the chain reads through to where nobody in the chain owns a cluster. Null for most lvols.
   */
  externalParent: string | null;
  /**
   * How many leading clusters read through to what lies below this lvol (its parent chain, or
   * its external snapshot) where it owns nothing; above it, clusters it does not own read as
   * zeros. Null: no limit of its own (its parent's size still bounds what shows through).
   * Set where a change would otherwise let a larger ancestor show through: a resize (the grown
   * part reads zeros, even where a parent has data) and a merge onto a larger grandparent.
   */
  readThroughClusters: number | null;
  clearMethod: ClearMethod;
  xattrs: Map<string, string>;
  readonly createdAtMs: number;
  /** Whole-snapshot CRC-64/GO-ISO, once a registration completed (SPEC §6.1). */
  checksum: bigint | null;
  /** Per logical cluster CRC (0 for clusters not owned), once a range registration completed. Sparse. */
  rangeChecksums: ClusterChecksums | null;
  /** Where a stopped or preempted checksum walk stood, so it can resume (SPEC §6.6). */
  savedProgress: SavedChecksumProgress | null;
  /**
   * What the last verification found (SPEC §6.10), and any re-registration whose value differed
   * from the one stored before it. Absent in records written before verification existed.
   */
  verification?: VerificationRecord | null;
  /**
   * A writable lvol's per-cluster CRCs of what copies wrote into it (issue 21 item 3; sparse, 0 =
   * none): a value holds only while nothing else wrote its cluster (a write, write_zeroes or
   * unmap drops it first), and lvol.snapshot moves them to the snapshot. Absent in older records.
   */
  copiedChecksums?: ClusterChecksums | null;
}

/** One cluster whose CRC read now differs from the stored one. */
export interface BadCluster {
  clusterIndex: number;
  /** Where the cluster starts in the lvol (not on the device). */
  offsetBytes: number;
  expected: bigint;
  actual: bigint;
}

export type VerifyResult = 'clean' | 'corrupt' | 'incomplete';

/**
 * A verification's outcome (`checksum.verified`). Verifying never changes the stored checksums:
 * this record is the only thing a verify writes.
 */
export interface VerificationRecord {
  /** When the last verify ended; null when only a conflicting re-registration was recorded. */
  verifiedAtMs: number | null;
  result: VerifyResult | null;
  errorsOnly: boolean;
  clustersChecked: number;
  clustersTotal: number;
  /** Every bad cluster found; `badClusters` keeps the first verifyBadClustersMax of them. */
  badClusterCount: number;
  badClusters: BadCluster[];
  /** With only a whole checksum stored: the stored and the re-read chained value. */
  whole: { expected: bigint; actual: bigint } | null;
  /**
   * A re-registration (which overwrites, as SPDK's) found other values than those stored: the
   * previous ones are `expected`, the new ones `actual`. Kept across later verifies as evidence.
   */
  registrationConflict: {
    atMs: number;
    whole: { expected: bigint; actual: bigint } | null;
    clusterCount: number;
    clusters: BadCluster[];
  } | null;
  /**
   * When the last verify of every owned cluster ended: what a policy's interval counts from.
   * Errors-only verifies and copies' findings carry it over; absent in records written before it.
   */
  fullVerifiedAtMs?: number | null;
}

/** When the snapshot was last verified whole (every owned cluster read), or null. */
export function fullVerifiedAtMs(verification: VerificationRecord | null | undefined): number | null {
  if (!verification) return null;
  if (verification.fullVerifiedAtMs !== undefined) return verification.fullVerifiedAtMs;
  const finished = verification.result === 'clean' || verification.result === 'corrupt';
  return finished && !verification.errorsOnly ? verification.verifiedAtMs : null;
}

/** A stopped walk's position: the machine's ChecksumProgress as plain data. */
export interface SavedChecksumProgress {
  runId: number;
  mode: 'whole' | 'range' | 'verify';
  /** An errors-only verify: the clusters it re-reads. Absent or null: every owned cluster. */
  targets?: readonly number[] | null;
  clustersTotal: number;
  clustersDone: number;
  bytesDone: number;
  nextClusterIndex: number;
  runningCrc: bigint;
  rangeCrcs: Map<number, bigint>;
  startedAtMs: number;
  activeMs: number;
  resumedAtMs: number;
  finishedAtMs: number | null;
  reason: string | null;
  error: string | null;
}

export interface LvstoreRecord {
  readonly id: string;
  name: string;
  readonly clusterBytes: number;
  readonly blockBytes: number;
  /** Physical clusters before this one hold the metadata area. */
  readonly firstDataCluster: number;
  /** Physical clusters on the device, metadata area included (grows with bdev_lvol_grow_lvstore). */
  clusterTotal: number;
  readonly clearMethod: ClearMethod;
  readonly lvols: Map<string, LvolRecord>;
}

export type MetadataChange =
  | { type: 'lvstore.rename'; name: string }
  /** The device grew: its clusters up to `clusterTotal` belong to the lvstore. */
  | { type: 'lvstore.grow'; clusterTotal: number }
  | {
      type: 'lvol.create';
      id: string;
      name: string;
      clusterCount: number;
      thin: boolean;
      readOnly: boolean;
      snapshot: boolean;
      parentId: string | null;
      clearMethod: ClearMethod;
      xattrs: Record<string, string>;
      createdAtMs: number;
      /** bdev_lvol_clone_bdev: the external snapshot's bdev UUID. */
      externalParent?: string;
      /** Physical clusters allocated at creation (thick lvols), as runs (see AllocationRun). */
      allocations: readonly AllocationRun[];
    }
  | { type: 'lvol.delete'; id: string }
  | { type: 'lvol.rename'; id: string; name: string }
  | { type: 'lvol.resize'; id: string; clusterCount: number; allocations: readonly AllocationRun[] }
  | { type: 'lvol.set_read_only'; id: string }
  | { type: 'lvol.set_xattr'; id: string; name: string; value: string }
  | { type: 'lvol.set_parent'; id: string; parentId: string | null; thin?: boolean; externalParent?: string | null }
  | { type: 'cluster.allocate'; id: string; clusterIndex: number; physicalCluster: number }
  /** A thin lvol gives back whole clusters (unmap): they read through its parent chain again. */
  | { type: 'cluster.release'; id: string; clusterIndices: readonly number[] }
  /** Snapshot: `snapshotId` takes over every cluster of `id`, which becomes its thin clone. */
  | { type: 'lvol.snapshot'; id: string; snapshotId: string }
  /** Delete of `id` merging into its only clone `cloneId`: the clone adopts what it does not own. */
  | { type: 'lvol.merge'; id: string; cloneId: string }
  | { type: 'checksum.store'; id: string; checksum: bigint; rangeChecksums: ClusterChecksums | null }
  | { type: 'checksum.invalidate'; id: string }
  | { type: 'checksum.progress'; id: string; progress: SavedChecksumProgress | null }
  /** A verification's outcome (or a conflicting re-registration's evidence); stored checksums stay. */
  | { type: 'checksum.verified'; id: string; verification: VerificationRecord }
  /** A copy wrote cluster `clusterIndex` of writable lvol `id`, whose bytes have CRC `checksum`. */
  | { type: 'checksum.copied'; id: string; clusterIndex: number; checksum: bigint }
  /** Something else is about to write these clusters (null: all): their copied CRCs no longer hold. */
  | { type: 'checksum.copied_drop'; id: string; clusterIndices: readonly number[] | null };

/**
 * `count` logical clusters from `clusterIndex` mapped to physical clusters from `physicalCluster`
 * on: a thick lvol's allocation is a few runs, not a pair per cluster. Records written before
 * runs existed hold pairs, which are runs of one.
 */
export type AllocationRun = readonly [clusterIndex: number, physicalCluster: number, count?: number];

/** Runs for logical clusters `firstIndex`, `firstIndex + 1`, … mapped to `physical` in order. */
export function allocationRuns(firstIndex: number, physical: readonly number[]): AllocationRun[] {
  const runs: Array<[number, number, number]> = [];
  physical.forEach((physicalCluster, position) => {
    const last = runs[runs.length - 1];
    if (last && last[1] + last[2] === physicalCluster && last[0] + last[2] === firstIndex + position) last[2]++;
    else runs.push([firstIndex + position, physicalCluster, 1]);
  });
  return runs;
}

function applyRuns(map: ClusterMap, runs: readonly AllocationRun[]): void {
  for (const [clusterIndex, physicalCluster, count = 1] of runs) {
    for (let offset = 0; offset < count; offset++) map.set(clusterIndex + offset, physicalCluster + offset);
  }
}

/** Journals written before sparse arrays hold range checksums as a dense array. */
function sparseChecksums(values: ClusterChecksums | BigUint64Array | null): ClusterChecksums | null {
  return values instanceof BigUint64Array ? ClusterChecksums.fromDense(values) : values;
}

export function createLvolRecord(change: Extract<MetadataChange, { type: 'lvol.create' }>): LvolRecord {
  const clusterMap = new ClusterMap(change.clusterCount);
  applyRuns(clusterMap, change.allocations);
  return {
    id: change.id,
    name: change.name,
    clusterMap,
    thin: change.thin,
    readOnly: change.readOnly,
    snapshot: change.snapshot,
    parentId: change.parentId,
    externalParent: change.externalParent ?? null,
    readThroughClusters: null,
    clearMethod: change.clearMethod,
    xattrs: new Map(Object.entries(change.xattrs)),
    createdAtMs: change.createdAtMs,
    checksum: null,
    rangeChecksums: null,
    savedProgress: null,
  };
}

/** The smaller of two read-through limits, null being no limit. */
function minLimit(a: number | null, b: number | null): number | null {
  if (a === null) return b;
  if (b === null) return a;
  return Math.min(a, b);
}

/** Whether anything lies below the lvol for its unowned clusters to read through to. */
function hasBelow(lvol: LvolRecord): boolean {
  return lvol.parentId !== null || lvol.externalParent !== null;
}

/**
 * The clusters a clone adopts when its parent `parent` is deleted into it (lvol.merge): those the
 * parent owns where the clone owns nothing and reads through to the parent. A parent cluster
 * the clone cannot see (past its read-through limit) is not adopted: it would appear in the
 * clone. The rest of the parent's clusters are freed.
 */
export function* mergeAdoptions(parent: LvolRecord, clone: LvolRecord): Generator<[clusterIndex: number, physicalCluster: number]> {
  const end = Math.min(clone.clusterMap.length, clone.readThroughClusters ?? Number.POSITIVE_INFINITY);
  for (const [index, physicalCluster] of parent.clusterMap.entries(0, end)) {
    if (clone.clusterMap.get(index) === 0) yield [index, physicalCluster];
  }
}

/**
 * The checksums of `clone` once `parent` merged into it and it owns `merged`, derived from the
 * per-cluster values both had stored, with no byte read (issue 21 item 2). A merge moves no data:
 * each cluster the clone then owns keeps the CRC its owner stored, the clone's for its own (which
 * shadow the parent's), the parent's for those it adopted; the whole checksum chains them in
 * index order (SPEC §6.1), as a registration's walk folds them with crc64Combine. So the result
 * is what a fresh range registration would store, bit for bit. Null (dropped, as SPDK does) when
 * the clone had no range checksums or a merged cluster has no stored value (the parent had none
 * or only a whole checksum). Range checksums are sparse, 0 meaning none: a cluster whose CRC is
 * 0 (odds 2^-64) only costs the derivation. Decided from the records alone, so a replayed
 * lvol.merge derives the same values.
 */
export function mergedChecksums(
  parent: LvolRecord,
  clone: LvolRecord,
  merged: ClusterMap,
  clusterBytes: number,
): { checksum: bigint; rangeChecksums: ClusterChecksums } | null {
  const own = clone.rangeChecksums;
  if (own === null) return null;
  const adopted = parent.rangeChecksums;
  const rangeChecksums = new ClusterChecksums(merged.length);
  const chain = new Crc64Chain(clusterBytes);
  let complete = true;
  merged.forEachNonZero((clusterIndex) => {
    if (!complete) return;
    const crc = clone.clusterMap.get(clusterIndex) !== 0 ? own.get(clusterIndex) : (adopted?.get(clusterIndex) ?? 0n);
    if (crc === 0n) complete = false;
    rangeChecksums.set(clusterIndex, crc);
    chain.add(crc);
  });
  return complete ? { checksum: chain.value, rangeChecksums } : null;
}

/**
 * What is known to be rotten in a merged snapshot (call before the clone's map changes): the
 * clone's bad clusters (its own clusters are unchanged) and the deleted parent's at the clusters
 * the clone adopts, so a merge never hides rot a verify found. A clean result is not carried: it
 * covered only one side of the merge, so the merged snapshot is unverified (null) until a verify.
 */
function mergedVerification(parent: LvolRecord, clone: LvolRecord, mergedClusterCount: number): VerificationRecord | null {
  const adopted = new Set<number>();
  for (const [clusterIndex] of mergeAdoptions(parent, clone)) adopted.add(clusterIndex);
  const bad = [
    ...(clone.verification?.badClusters ?? []).filter((cluster) => clone.clusterMap.get(cluster.clusterIndex) !== 0),
    ...(parent.verification?.badClusters ?? []).filter((cluster) => adopted.has(cluster.clusterIndex)),
  ].sort((a, b) => a.clusterIndex - b.clusterIndex);
  const conflict = clone.verification?.registrationConflict ?? null;
  if (bad.length === 0 && conflict === null) return null;
  const times = [clone.verification?.verifiedAtMs, parent.verification?.verifiedAtMs].filter((at): at is number => typeof at === 'number');
  return {
    verifiedAtMs: times.length > 0 ? Math.max(...times) : null,
    result: bad.length > 0 ? 'corrupt' : null,
    errorsOnly: false,
    clustersChecked: bad.length,
    clustersTotal: mergedClusterCount,
    badClusterCount: bad.length,
    badClusters: bad,
    whole: null,
    registrationConflict: conflict,
    // Unverified as a whole until a verify reads it (see above).
    fullVerifiedAtMs: null,
  };
}

/**
 * What a snapshot of `lvol` is born with (lvol.snapshot): the CRCs copies recorded for the
 * clusters it takes over, and those chained in index order as its whole checksum (SPEC §6.1, as a
 * registration's walk), so it equals a fresh range registration with no byte read. Null (an
 * unregistered snapshot, as before) unless every cluster it takes over has a recorded value: a
 * partial set would look like a completed registration.
 */
export function copiedSnapshotChecksums(lvol: LvolRecord, clusterBytes: number): { checksum: bigint; rangeChecksums: ClusterChecksums } | null {
  const copied = lvol.copiedChecksums;
  if (!copied || lvol.clusterMap.count === 0) return null;
  const rangeChecksums = new ClusterChecksums(lvol.clusterMap.length);
  const chain = new Crc64Chain(clusterBytes);
  let complete = true;
  lvol.clusterMap.forEachNonZero((clusterIndex) => {
    if (!complete) return;
    const crc = copied.get(clusterIndex);
    if (crc === 0n) complete = false;
    rangeChecksums.set(clusterIndex, crc);
    chain.add(crc);
  });
  return complete ? { checksum: chain.value, rangeChecksums } : null;
}

function lvolOf(store: LvstoreRecord, id: string): LvolRecord {
  const lvol = store.lvols.get(id);
  if (!lvol) throw new Error(`metadata change names unknown lvol ${id}`);
  return lvol;
}

/**
 * Applies one change to the records. Callers validate first: a change that does not fit is a
 * programmer error (or corrupt metadata at replay) and throws a plain Error.
 */
export function applyChange(store: LvstoreRecord, change: MetadataChange): void {
  switch (change.type) {
    case 'lvstore.rename':
      store.name = change.name;
      return;
    case 'lvstore.grow':
      if (change.clusterTotal < store.clusterTotal) throw new Error(`metadata change shrinks the lvstore to ${change.clusterTotal} clusters`);
      store.clusterTotal = change.clusterTotal;
      return;
    case 'lvol.create':
      if (store.lvols.has(change.id)) throw new Error(`metadata change creates lvol ${change.id}, which exists`);
      store.lvols.set(change.id, createLvolRecord(change));
      numberNewLvol(store, store.lvols.get(change.id)!);
      return;
    case 'lvol.delete':
      lvolOf(store, change.id);
      store.lvols.delete(change.id);
      return;
    case 'lvol.rename':
      lvolOf(store, change.id).name = change.name;
      return;
    case 'lvol.resize': {
      const lvol = lvolOf(store, change.id);
      const oldCount = lvol.clusterMap.length;
      const resized = lvol.clusterMap.resized(change.clusterCount);
      applyRuns(resized, change.allocations);
      lvol.clusterMap = resized;
      // Values past a shrink are for clusters the lvol no longer has.
      if (lvol.copiedChecksums) lvol.copiedChecksums = lvol.copiedChecksums.resized(change.clusterCount);
      // What grows reads zeros, and what shrinks then grows again too: nothing at or above the
      // old size may show a parent's bytes through (SPEC §9: a resize changes nothing below it).
      if (hasBelow(lvol)) lvol.readThroughClusters = minLimit(lvol.readThroughClusters, Math.min(oldCount, change.clusterCount));
      return;
    }
    case 'lvol.set_read_only':
      lvolOf(store, change.id).readOnly = true;
      return;
    case 'lvol.set_xattr':
      lvolOf(store, change.id).xattrs.set(change.name, change.value);
      return;
    case 'lvol.set_parent': {
      const lvol = lvolOf(store, change.id);
      lvol.parentId = change.parentId;
      if (change.thin !== undefined) lvol.thin = change.thin;
      if (change.externalParent !== undefined) lvol.externalParent = change.externalParent;
      // A new parent (of the lvol's size, checked before) or none: everything reads through it.
      lvol.readThroughClusters = null;
      return;
    }
    case 'cluster.allocate':
      lvolOf(store, change.id).clusterMap.set(change.clusterIndex, change.physicalCluster);
      return;
    case 'cluster.release': {
      const lvol = lvolOf(store, change.id);
      for (const clusterIndex of change.clusterIndices) {
        lvol.clusterMap.set(clusterIndex, 0);
        lvol.copiedChecksums?.set(clusterIndex, 0n);
      }
      return;
    }
    case 'lvol.snapshot': {
      const lvol = lvolOf(store, change.id);
      const snapshot = lvolOf(store, change.snapshotId);
      snapshot.clusterMap = lvol.clusterMap;
      snapshot.parentId = lvol.parentId;
      snapshot.externalParent = lvol.externalParent;
      snapshot.readThroughClusters = lvol.readThroughClusters;
      const born = copiedSnapshotChecksums(lvol, store.clusterBytes);
      snapshot.checksum = born?.checksum ?? null;
      snapshot.rangeChecksums = born?.rangeChecksums ?? null;
      lvol.copiedChecksums = null;
      lvol.externalParent = null;
      lvol.readThroughClusters = null;
      lvol.clusterMap = new ClusterMap(lvol.clusterMap.length);
      lvol.parentId = snapshot.id;
      lvol.thin = true;
      return;
    }
    case 'lvol.merge': {
      const parent = lvolOf(store, change.id);
      const clone = lvolOf(store, change.cloneId);
      // A new map (the old one stays intact for undo), at a cost in what the two own.
      const merged = clone.clusterMap.copy();
      for (const [index, physicalCluster] of mergeAdoptions(parent, clone)) merged.set(index, physicalCluster);
      const derived = mergedChecksums(parent, clone, merged, store.clusterBytes);
      const verification = derived ? mergedVerification(parent, clone, merged.count) : null;
      // The clone now reads through to the grandparent: where it saw zeros because the parent
      // was smaller or limited, it must still see zeros, not the grandparent's bytes.
      const limit = minLimit(minLimit(clone.readThroughClusters, parent.clusterMap.length), parent.readThroughClusters);
      clone.clusterMap = merged;
      clone.parentId = parent.parentId;
      clone.externalParent = parent.externalParent;
      clone.readThroughClusters = hasBelow(clone) ? limit : null;
      // The clone now owns other clusters: its checksums are derived from the values both had,
      // or dropped where they cannot be (SPDK drops them). New objects, so undo keeps the old ones.
      clone.checksum = derived?.checksum ?? null;
      clone.rangeChecksums = derived?.rangeChecksums ?? null;
      clone.verification = verification;
      clone.savedProgress = null;
      store.lvols.delete(parent.id);
      return;
    }
    case 'checksum.store': {
      const lvol = lvolOf(store, change.id);
      lvol.checksum = change.checksum;
      lvol.rangeChecksums = sparseChecksums(change.rangeChecksums) ?? lvol.rangeChecksums;
      lvol.savedProgress = null;
      return;
    }
    case 'checksum.invalidate': {
      const lvol = lvolOf(store, change.id);
      lvol.checksum = null;
      lvol.rangeChecksums = null;
      lvol.savedProgress = null;
      // What a verification found is about clusters the lvol no longer owns as they were.
      lvol.verification = null;
      return;
    }
    case 'checksum.progress':
      lvolOf(store, change.id).savedProgress = change.progress;
      return;
    case 'checksum.copied': {
      const lvol = lvolOf(store, change.id);
      if (lvol.clusterMap.get(change.clusterIndex) === 0) throw new Error(`metadata change records a copied CRC for cluster ${change.clusterIndex} of ${change.id}, which it does not own`);
      // Set in place: copyLvol snapshots the array, so undo and checkpoints keep the old values.
      lvol.copiedChecksums ??= new ClusterChecksums(lvol.clusterMap.length);
      lvol.copiedChecksums.set(change.clusterIndex, change.checksum);
      return;
    }
    case 'checksum.copied_drop': {
      const lvol = lvolOf(store, change.id);
      if (change.clusterIndices === null) lvol.copiedChecksums = null;
      else for (const clusterIndex of change.clusterIndices) lvol.copiedChecksums?.set(clusterIndex, 0n);
      if (lvol.copiedChecksums?.count === 0) lvol.copiedChecksums = null;
      return;
    }
    case 'checksum.verified': {
      const lvol = lvolOf(store, change.id);
      lvol.verification = change.verification;
      // A finished verify leaves no position to resume; an incomplete one keeps the one saved before it.
      // Only a verify's position goes: a copy's finding (also a `corrupt` record) must not wipe a
      // stopped registration's saved position, which a restart resumes from.
      const finished = change.verification.result === 'clean' || change.verification.result === 'corrupt';
      if (finished && lvol.savedProgress?.mode === 'verify') lvol.savedProgress = null;
      return;
    }
  }
}

/**
 * Where changes go to become durable. `append` takes the changes of one operation, which must
 * survive a crash together or not at all, and resolves once they would.
 */
export interface MetadataLog {
  append(changes: readonly MetadataChange[]): Promise<void>;
  close(): Promise<void>;
  /** Removes the lvstore's metadata from its device (lvstore delete). */
  erase?(): Promise<void>;
  /** Metadata I/O so far, where the log writes to a device. */
  stats?(): MetadataLogStats;
  /** Why the log refuses changes (its device failed under it), or null. Freeing changes may still try. */
  failure?(): string | null;
  /** Writes a checkpoint now (benchmarks and tests: what a full journal would do). */
  forceCheckpoint?(): Promise<void>;
  /**
   * Told of each change just before it is applied to the records: a checkpoint being encoded
   * keeps a copy of what the change modifies (it must not see changes made after it began).
   */
  beforeChange?(change: MetadataChange): void;
}

/**
 * Changes that never grow the checkpoint: they may use the reserved part of the checkpoint slot,
 * and they are what may bring a failed log back (SPEC §9: a store can always be made writable
 * again by deleting).
 */
export function isFreeingChange(change: MetadataChange): boolean {
  return (
    change.type === 'lvol.delete' ||
    change.type === 'cluster.release' ||
    change.type === 'lvol.merge' ||
    change.type === 'checksum.invalidate' ||
    change.type === 'checksum.copied_drop' ||
    (change.type === 'checksum.progress' && change.progress === null)
  );
}

export interface MetadataLogStats {
  bytesWritten: number;
  recordsWritten: number;
  checkpoints: number;
  flushes: number;
  /** Size of the newest checkpoint image, and of its slot. */
  lastCheckpointBytes?: number;
  checkpointSlotBytes?: number;
}

/** The log of this issue: metadata lives in memory only. */
export class MemoryMetadataLog implements MetadataLog {
  /** How many changes were appended; the changes themselves are already in the records. */
  appendedCount = 0;
  async append(changes: readonly MetadataChange[]): Promise<void> {
    this.appendedCount += changes.length;
  }
  async close(): Promise<void> {}
}

/**
 * Each lvol's place in its store's map, which is creation order (listings and checkpoints follow
 * it). Numbered once, the first time an lvol of the store is removed, then as lvols are created;
 * an undone removal puts its lvol back in its place by this number.
 */
interface LvolOrder {
  next: number;
  readonly of: WeakMap<LvolRecord, number>;
}
const lvolOrders = new WeakMap<LvstoreRecord, LvolOrder>();

function orderOf(store: LvstoreRecord): LvolOrder {
  let order = lvolOrders.get(store);
  if (!order) {
    order = { next: 0, of: new WeakMap() };
    for (const lvol of store.lvols.values()) order.of.set(lvol, order.next++);
    lvolOrders.set(store, order);
  }
  return order;
}

/**
 * An lvol as it is now, at O(pages of its map): the fields changes modify in place (cluster map,
 * copy on write; xattrs) are copied, the rest are replaced whole by changes and shared.
 */
export function copyLvol(lvol: LvolRecord): LvolRecord {
  const copied = lvol.copiedChecksums ? { copiedChecksums: lvol.copiedChecksums.snapshot() } : {};
  return { ...lvol, clusterMap: lvol.clusterMap.snapshot(), xattrs: new Map(lvol.xattrs), ...copied };
}

/**
 * The lvols `change` modifies in place when applied (see applyChange): a created one is new, an
 * lvstore change touches none. A checkpoint being encoded copies these first (RecordCapture).
 */
export function modifiedLvolIds(change: MetadataChange): string[] {
  if (change.type === 'lvstore.rename' || change.type === 'lvstore.grow' || change.type === 'lvol.create') return [];
  if (change.type === 'lvol.snapshot') return [change.id, change.snapshotId];
  if (change.type === 'lvol.merge') return [change.id, change.cloneId];
  return [change.id];
}

/**
 * Where `lvol` stands in its lvstore's creation order (the order of `store.lvols`, which an undone
 * delete restores): indexes that keep lvols in map order insert by it.
 */
export function creationRank(store: LvstoreRecord, lvol: LvolRecord): number {
  return orderOf(store).of.get(lvol) ?? Number.POSITIVE_INFINITY;
}

/** Numbers a loaded lvstore's lvols now (O(lvols), ~15 ms at 100,000), not at its first delete. */
export function numberLvols(store: LvstoreRecord): void {
  orderOf(store);
}

function numberNewLvol(store: LvstoreRecord, lvol: LvolRecord): void {
  const order = lvolOrders.get(store);
  if (order) order.of.set(lvol, order.next++);
}
