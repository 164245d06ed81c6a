// Lvols as bdevs that an lvstore can live on (SPDK's nested lvstores): for each such lvol, its
// claim (as a base bdev's `claimedBy`) and the device the nested lvstore reads and writes. An
// lvol with an lvstore on it has one writer, that lvstore (SPDK's exclusive_write claim).
import { fail } from '../errors.ts';
import { LvolDevice } from './lvolDevice.ts';
import type { BaseBdev, LvstoreEntry, Registry } from './registry.ts';

/** What an lvstore claims: a base bdev, or an lvol's bdev view. */
export interface ClaimableBdev {
  readonly name: string;
  readonly device: BaseBdev['device'];
  readonly readOnly: boolean;
  claimedBy: string | null;
}

export class LvolBdevs {
  private readonly byLvol = new Map<string, ClaimableBdev>();

  constructor(private readonly registry: Registry) {}

  /** The bdev view of an lvol (made once), for an lvstore nested on it. */
  of(entry: LvstoreEntry, lvolId: string): ClaimableBdev {
    let bdev = this.byLvol.get(lvolId);
    if (!bdev) {
      bdev = { name: lvolId, device: new LvolDevice(entry.store, lvolId), readOnly: entry.store.lvol(lvolId).readOnly, claimedBy: null };
      this.byLvol.set(lvolId, bdev);
    }
    return bdev;
  }

  /** A base bdev, or an lvol (by UUID or alias) to nest an lvstore on. */
  claimable(name: string): ClaimableBdev {
    const base = this.registry.bdevs.get(name);
    if (base) return base;
    const { entry, lvol } = this.registry.lvol(name);
    return this.of(entry, lvol.id);
  }

  /** An lvstore's bdev by the name it records: a base bdev or an lvol. */
  underlying(bdevName: string): ClaimableBdev | undefined {
    return this.registry.bdevs.get(bdevName) ?? this.byLvol.get(bdevName);
  }

  /** The lvstore nested on this lvol, if any (the lvol is then claimed: not deletable, not writable). */
  claimedBy(lvolId: string): string | null {
    const claim = this.byLvol.get(lvolId)?.claimedBy ?? null;
    return claim === 'pending' ? null : claim;
  }

  /**
   * The lvstores nested on lvols of `entry`, with the lvol each is on: a pass over the lvol views
   * made (one per nested lvstore, nearly always none), not over the lvstore's lvols.
   */
  nestedOn(entry: LvstoreEntry): Array<{ lvolId: string; lvstoreId: string }> {
    const out: Array<{ lvolId: string; lvstoreId: string }> = [];
    for (const lvolId of this.byLvol.keys()) {
      const lvstoreId = this.claimedBy(lvolId);
      if (lvstoreId && entry.actors.has(lvolId)) out.push({ lvolId, lvstoreId });
    }
    return out;
  }

  assertNotClaimed(lvolId: string, name: string): void {
    const nested = this.claimedBy(lvolId);
    if (nested) fail('EBUSY', `${name} is claimed by lvstore ${nested}`);
  }

  /** The lvol is gone (deleted, or its lvstore unloaded). */
  forget(lvolId: string): void {
    this.byLvol.delete(lvolId);
  }
}
