// The lvstore's clean and active state (SPDK blob's split): changes are applied to the records
// at once (so later operations validate against them and share a flush), but until their journal
// record is durable each commit keeps what it changed as it was. Readers see that durable state,
// and a failed append restores it: no inverse per change kind, so no undo order to get wrong.
import {
  type LvolRecord,
  type LvstoreRecord,
  type MetadataChange,
  copyLvol,
  creationRank,
  modifiedLvolIds,
} from './metadata.ts';

/** An lvol a commit changed: the live record, and a copy of it from before the commit. */
interface SavedLvol {
  readonly object: LvolRecord;
  readonly clean: LvolRecord;
}

export interface PendingCommit {
  readonly changes: readonly MetadataChange[];
  /** Physical clusters the operation took for these changes: they go back if it fails. */
  readonly allocated: readonly number[];
  /** Each lvol as it was before this commit first changed it; null: this commit created it. */
  readonly before: Map<string, SavedLvol | null>;
  /** The lvstore's own fields before this commit, if it changed them. */
  storeBefore: { name: string; clusterTotal: number } | null;
  /** Set once restored: a later append's failure finds it already put back. */
  restored: boolean;
}

/** The lvols a change creates or modifies (a created one has no "before"). */
function touchedLvolIds(change: MetadataChange): string[] {
  return change.type === 'lvol.create' ? [change.id] : modifiedLvolIds(change);
}

export class PendingCommits {
  /** Commits applied but not yet durable, oldest first (the log acknowledges in this order). */
  private readonly list: PendingCommit[] = [];

  constructor(private readonly record: LvstoreRecord) {}

  get count(): number {
    return this.list.length;
  }

  begin(changes: readonly MetadataChange[], allocated: readonly number[]): PendingCommit {
    return { changes, allocated, before: new Map(), storeBefore: null, restored: false };
  }

  /** Call just before `change` is applied: keeps what it will change, once per commit. */
  save(entry: PendingCommit, change: MetadataChange): void {
    if ((change.type === 'lvstore.rename' || change.type === 'lvstore.grow') && entry.storeBefore === null) {
      entry.storeBefore = { name: this.record.name, clusterTotal: this.record.clusterTotal };
    }
    for (const id of touchedLvolIds(change)) {
      if (entry.before.has(id)) continue;
      const live = this.record.lvols.get(id);
      entry.before.set(id, live ? { object: live, clean: copyLvol(live) } : null);
    }
  }

  /** The commit's append is under way. */
  push(entry: PendingCommit): void {
    this.list.push(entry);
    this.oldest = null;
  }

  /** The commit is durable (or was restored): it no longer holds a clean state. */
  settle(entry: PendingCommit): void {
    const index = this.list.indexOf(entry);
    if (index >= 0) this.list.splice(index, 1);
    this.oldest = null;
  }

  /**
   * Puts the records back as they were before `entry` and every commit after it (which waited on
   * the same or a later append, so failed too), and forgets them. Each lvol and field gets the
   * oldest saved state, the last durable one; what commits did to it after does not matter, so
   * there is no order to replay. Returns the clusters those commits had taken.
   */
  restoreFrom(entry: PendingCommit): number[] {
    if (entry.restored) return [];
    const index = this.list.indexOf(entry);
    // Not in the list: its changes failed to apply, before its append began.
    const restored = index >= 0 ? this.list.splice(index) : [entry];
    this.oldest = null;
    for (const commit of restored) commit.restored = true;
    const done = new Set<string>();
    let storeDone = false;
    let reinserted = false;
    const released: number[] = [];
    for (const commit of restored) {
      released.push(...commit.allocated);
      if (commit.storeBefore && !storeDone) {
        storeDone = true;
        this.record.name = commit.storeBefore.name;
        this.record.clusterTotal = commit.storeBefore.clusterTotal;
      }
      for (const [id, saved] of commit.before) {
        if (done.has(id)) continue;
        done.add(id);
        if (saved === null) {
          this.record.lvols.delete(id);
          continue;
        }
        Object.assign(saved.object, saved.clean);
        if (this.record.lvols.get(id) !== saved.object) {
          this.record.lvols.set(id, saved.object);
          reinserted = true;
        }
      }
    }
    if (reinserted) this.restoreOrder();
    return released;
  }

  /** Lvols put back after a removal go back to their place in creation order (listings follow it). */
  private restoreOrder(): void {
    const rank = (lvol: LvolRecord): number => creationRank(this.record, lvol);
    const entries = [...this.record.lvols].sort(([, a], [, b]) => rank(a) - rank(b) || 0);
    this.record.lvols.clear();
    for (const [id, lvol] of entries) this.record.lvols.set(id, lvol);
  }

  // ---- the durable state, for readers ----

  /**
   * The oldest saved state of every lvol a pending commit touched (null: created by one), made
   * once after the pending commits changed, so a reader of many lvols (a listing of 100,000 in
   * slices) pays O(1) each, not a walk over the pending commits per lvol.
   */
  private oldest: Map<string, SavedLvol | null> | null = null;

  private oldestIndex(): Map<string, SavedLvol | null> {
    if (this.oldest === null) {
      this.oldest = new Map();
      for (const commit of this.list) for (const [id, saved] of commit.before) if (!this.oldest.has(id)) this.oldest.set(id, saved);
    }
    return this.oldest;
  }

  /** The oldest saved state of `id`: undefined when no pending commit touched it. */
  private oldestSaved(id: string): SavedLvol | null | undefined {
    return this.oldestIndex().get(id);
  }

  /** The lvol `id` as durable metadata has it; undefined when it does not exist there (yet). */
  durableLvol(id: string): LvolRecord | undefined {
    if (this.list.length === 0) return this.record.lvols.get(id);
    const saved = this.oldestSaved(id);
    if (saved === undefined) return this.record.lvols.get(id);
    return saved?.clean;
  }

  /**
   * Every lvol a pending commit touched, as durable metadata has it: its oldest saved copy, or
   * null when a pending commit created it (not durable yet).
   */
  durableOverrides(): Map<string, LvolRecord | null> {
    const overrides = new Map<string, LvolRecord | null>();
    for (const [id, saved] of this.oldestIndex()) overrides.set(id, saved?.clean ?? null);
    return overrides;
  }

  /** The live record a pending commit saved for `id` (one deleted in flight is out of the map). */
  savedObject(id: string): LvolRecord | undefined {
    return this.oldestSaved(id)?.object;
  }

  /** The lvstore's name and cluster total as durable metadata has them. */
  durableStore(): { name: string; clusterTotal: number } {
    for (const commit of this.list) if (commit.storeBefore) return commit.storeBefore;
    return { name: this.record.name, clusterTotal: this.record.clusterTotal };
  }

  /** Clusters pending commits took: free again should they fail, so free in the durable state. */
  get allocatedCount(): number {
    let count = 0;
    for (const commit of this.list) count += commit.allocated.length;
    return count;
  }
}
