// The lvstore's metadata: records, and the changes that are the only way they are ever modified.
//
// Every change is a plain record applied by `applyChange`, both live and when a durable log is
// replayed at load (the durability issue makes `MetadataLog` persistent; nothing else changes).

export type ClearMethod = 'none' | 'unmap' | 'write_zeroes';

export interface LvolRecord {
  readonly id: string;
  name: string;
  /** Physical cluster index per logical cluster; 0 means "not owned" (cluster 0 holds metadata). */
  clusterMap: Uint32Array;
  thin: boolean;
  readOnly: boolean;
  /** Created by bdev_lvol_snapshot: only snapshots get checksums. */
  snapshot: boolean;
  parentId: string | null;
  clearMethod: ClearMethod;
  xattrs: Map<string, string>;
  readonly createdAtMs: number;
  /** Whole-snapshot CRC-64/GO-ISO, once a registration completed (SPEC §6.1). */
  checksum: bigint | null;
  /** Per logical cluster CRC (0 for clusters not owned), once a range registration completed. */
  rangeChecksums: BigUint64Array | null;
  /** Where a stopped or preempted checksum walk stood, so it can resume (SPEC §6.6). */
  savedProgress: SavedChecksumProgress | null;
}

/** A stopped walk's position: the machine's ChecksumProgress as plain data. */
export interface SavedChecksumProgress {
  runId: number;
  mode: 'whole' | 'range';
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
  /** Physical clusters on the device, metadata area included. */
  readonly clusterTotal: number;
  readonly clearMethod: ClearMethod;
  readonly lvols: Map<string, LvolRecord>;
}

export type MetadataChange =
  | { type: 'lvstore.rename'; name: string }
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
      /** Physical clusters allocated at creation (thick lvols), by logical index. */
      allocations: ReadonlyArray<readonly [clusterIndex: number, physicalCluster: number]>;
    }
  | { type: 'lvol.delete'; id: string }
  | { type: 'lvol.rename'; id: string; name: string }
  | { type: 'lvol.resize'; id: string; clusterCount: number; allocations: ReadonlyArray<readonly [number, number]> }
  | { type: 'lvol.set_read_only'; id: string }
  | { type: 'lvol.set_xattr'; id: string; name: string; value: string }
  | { type: 'lvol.set_parent'; id: string; parentId: string | null; thin?: boolean }
  | { type: 'cluster.allocate'; id: string; clusterIndex: number; physicalCluster: number }
  /** Snapshot: `snapshotId` takes over every cluster of `id`, which becomes its thin clone. */
  | { type: 'lvol.snapshot'; id: string; snapshotId: string }
  /** Delete of `id` merging into its only clone `cloneId`: the clone adopts what it does not own. */
  | { type: 'lvol.merge'; id: string; cloneId: string }
  | { type: 'checksum.store'; id: string; checksum: bigint; rangeChecksums: BigUint64Array | null }
  | { type: 'checksum.invalidate'; id: string }
  | { type: 'checksum.progress'; id: string; progress: SavedChecksumProgress | null };

export function createLvolRecord(change: Extract<MetadataChange, { type: 'lvol.create' }>): LvolRecord {
  const clusterMap = new Uint32Array(change.clusterCount);
  for (const [clusterIndex, physicalCluster] of change.allocations) clusterMap[clusterIndex] = physicalCluster;
  return {
    id: change.id,
    name: change.name,
    clusterMap,
    thin: change.thin,
    readOnly: change.readOnly,
    snapshot: change.snapshot,
    parentId: change.parentId,
    clearMethod: change.clearMethod,
    xattrs: new Map(Object.entries(change.xattrs)),
    createdAtMs: change.createdAtMs,
    checksum: null,
    rangeChecksums: null,
    savedProgress: null,
  };
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
    case 'lvol.create':
      if (store.lvols.has(change.id)) throw new Error(`metadata change creates lvol ${change.id}, which exists`);
      store.lvols.set(change.id, createLvolRecord(change));
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
      const resized = new Uint32Array(change.clusterCount);
      resized.set(lvol.clusterMap.subarray(0, Math.min(change.clusterCount, lvol.clusterMap.length)));
      for (const [clusterIndex, physicalCluster] of change.allocations) resized[clusterIndex] = physicalCluster;
      lvol.clusterMap = resized;
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
      return;
    }
    case 'cluster.allocate':
      lvolOf(store, change.id).clusterMap[change.clusterIndex] = change.physicalCluster;
      return;
    case 'lvol.snapshot': {
      const lvol = lvolOf(store, change.id);
      const snapshot = lvolOf(store, change.snapshotId);
      snapshot.clusterMap = lvol.clusterMap;
      snapshot.parentId = lvol.parentId;
      lvol.clusterMap = new Uint32Array(lvol.clusterMap.length);
      lvol.parentId = snapshot.id;
      lvol.thin = true;
      return;
    }
    case 'lvol.merge': {
      const parent = lvolOf(store, change.id);
      const clone = lvolOf(store, change.cloneId);
      const length = Math.min(parent.clusterMap.length, clone.clusterMap.length);
      for (let index = 0; index < length; index++) {
        if (clone.clusterMap[index] === 0) clone.clusterMap[index] = parent.clusterMap[index]!;
      }
      clone.parentId = parent.parentId;
      // The clone now owns other clusters: its stored checksums no longer describe it (SPDK drops them).
      clone.checksum = null;
      clone.rangeChecksums = null;
      clone.savedProgress = null;
      store.lvols.delete(parent.id);
      return;
    }
    case 'checksum.store': {
      const lvol = lvolOf(store, change.id);
      lvol.checksum = change.checksum;
      lvol.rangeChecksums = change.rangeChecksums ?? lvol.rangeChecksums;
      lvol.savedProgress = null;
      return;
    }
    case 'checksum.invalidate': {
      const lvol = lvolOf(store, change.id);
      lvol.checksum = null;
      lvol.rangeChecksums = null;
      lvol.savedProgress = null;
      return;
    }
    case 'checksum.progress':
      lvolOf(store, change.id).savedProgress = change.progress;
      return;
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
  /** Why the log refuses appends for good (its device failed under it), or null. */
  failure?(): string | null;
}

export interface MetadataLogStats {
  bytesWritten: number;
  recordsWritten: number;
  checkpoints: number;
  flushes: number;
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
 * Returns what puts the records back exactly as they are now, should `change` be applied and then
 * fail to become durable. Taken before the change is applied; it saves only what the change
 * will touch (a field, one map entry, one cluster slot), so the common changes cost O(1).
 */
export function captureUndo(store: LvstoreRecord, change: MetadataChange): () => void {
  switch (change.type) {
    case 'lvstore.rename': {
      const name = store.name;
      return () => void (store.name = name);
    }
    case 'lvol.create':
      return () => void store.lvols.delete(change.id);
    case 'lvol.delete':
      return captureMembership(store);
    case 'lvol.rename': {
      const lvol = lvolOf(store, change.id);
      const name = lvol.name;
      return () => void (lvol.name = name);
    }
    case 'lvol.resize': {
      // applyChange replaces the map with a new array, so the old one is intact.
      const lvol = lvolOf(store, change.id);
      const clusterMap = lvol.clusterMap;
      return () => void (lvol.clusterMap = clusterMap);
    }
    case 'lvol.set_read_only': {
      const lvol = lvolOf(store, change.id);
      const readOnly = lvol.readOnly;
      return () => void (lvol.readOnly = readOnly);
    }
    case 'lvol.set_xattr': {
      const lvol = lvolOf(store, change.id);
      const had = lvol.xattrs.has(change.name);
      const value = lvol.xattrs.get(change.name);
      return () => void (had ? lvol.xattrs.set(change.name, value!) : lvol.xattrs.delete(change.name));
    }
    case 'lvol.set_parent': {
      const lvol = lvolOf(store, change.id);
      const { parentId, thin } = lvol;
      return () => Object.assign(lvol, { parentId, thin });
    }
    case 'cluster.allocate': {
      const clusterMap = lvolOf(store, change.id).clusterMap;
      const previous = clusterMap[change.clusterIndex]!;
      return () => void (clusterMap[change.clusterIndex] = previous);
    }
    case 'lvol.snapshot': {
      const lvol = lvolOf(store, change.id);
      const snapshot = lvolOf(store, change.snapshotId);
      const before = { clusterMap: lvol.clusterMap, parentId: lvol.parentId, thin: lvol.thin };
      const snapshotBefore = { clusterMap: snapshot.clusterMap, parentId: snapshot.parentId };
      return () => {
        Object.assign(lvol, before);
        Object.assign(snapshot, snapshotBefore);
      };
    }
    case 'lvol.merge': {
      // The clone's map is changed in place: keep a copy (merges are rare; the map is one array).
      const clone = lvolOf(store, change.cloneId);
      const before = {
        clusterMap: clone.clusterMap,
        parentId: clone.parentId,
        checksum: clone.checksum,
        rangeChecksums: clone.rangeChecksums,
        savedProgress: clone.savedProgress,
      };
      const mapCopy = clone.clusterMap.slice();
      const membership = captureMembership(store);
      return () => {
        before.clusterMap.set(mapCopy);
        Object.assign(clone, before);
        membership();
      };
    }
    case 'checksum.store':
    case 'checksum.invalidate':
    case 'checksum.progress': {
      const lvol = lvolOf(store, change.id);
      const before = { checksum: lvol.checksum, rangeChecksums: lvol.rangeChecksums, savedProgress: lvol.savedProgress };
      return () => Object.assign(lvol, before);
    }
  }
}

/** Restores which lvols exist, in their order (listings follow the map's order). */
function captureMembership(store: LvstoreRecord): () => void {
  const entries = [...store.lvols];
  return () => {
    store.lvols.clear();
    for (const [id, lvol] of entries) store.lvols.set(id, lvol);
  };
}
