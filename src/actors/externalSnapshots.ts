// External snapshots (SPDK esnap clones, bdev_lvol_clone_bdev / bdev_lvol_set_parent_bdev): a thin
// lvol whose chain reads through to a bdev outside its lvstore — a malloc or file bdev, or a
// read-only lvol of another lvstore. Referenced by the bdev's UUID, as SPDK records the esnap id;
// the store reads the `Bdev` itself (it satisfies the store's ExternalSource).
import type { Bdev } from '../bdev/bdev.ts';
import type { BdevClaims, BdevHold } from '../bdev/bdevClaims.ts';
import { fail } from '../errors.ts';
import { log } from '../log.ts';
import type { LvstoreEntry, Registry } from './registry.ts';

/** The external snapshot with this bdev UUID, if it is attached (else the clone is degraded). */
export function externalSourceByUuid(registry: Registry, uuid: string): Bdev | undefined {
  return registry.lookupBdev(uuid);
}

/**
 * The bdev a client names as an external snapshot for an lvol of lvstore `storeId`: a base bdev
 * no lvstore claims, or a read-only lvol of another lvstore (in the same one it would be a plain
 * clone: bdev_lvol_clone).
 */
export function resolveExternalSource(registry: Registry, name: string, storeId: string): Bdev {
  const bdev = registry.findBdev(name);
  if (bdev.kind === 'lvol') {
    const { entry, lvol } = registry.lvol(bdev.uuid);
    if (entry.store.id === storeId) fail('EINVAL', `${name} is in the same lvstore: use bdev_lvol_clone`);
    if (!lvol.readOnly) fail('EPERM', `${name} is not read-only: an external snapshot must not change under its clones`);
    return bdev;
  }
  const writer = bdev.claims.writer();
  if (writer !== undefined) fail('EBUSY', `bdev ${name} is claimed by ${writer}`);
  return bdev;
}

/**
 * The read_many_write_none claims that esnap clones hold on their external snapshots (SPDK's
 * esnap bs_dev claims its bdev so): while an lvstore with esnap clones is loaded, each external
 * snapshot it names that is attached is held, so nobody writes it (an NBD export reads only, no
 * lvstore or copy takes it). The holds are removable: deleting the external snapshot is allowed
 * and degrades the clones, as SPDK's hot-remove does.
 *
 * Which parents a store names is found by a pass over its lvols (`rescan`), done when it loads
 * and after an operation that can change it (esnap clone, set_parent_bdev, delete, inflate,
 * decouple), the last three only for stores that have esnap clones at all. Holds are taken again
 * (`retake`) when bdevs or lvstores appear: an external snapshot attached again is held again.
 */
export class EsnapHolds {
  private readonly byStore = new Map<string, StoreEsnaps>();

  constructor(private readonly registry: Registry) {}

  /** Re-reads which external snapshots `entry`'s lvols name, then holds them. */
  rescan(entry: LvstoreEntry): void {
    const parents = new Set<string>();
    for (const lvol of entry.store.record.lvols.values()) if (lvol.externalParent !== null) parents.add(lvol.externalParent);
    let esnaps = this.byStore.get(entry.store.id);
    if (parents.size === 0 && !esnaps) return;
    esnaps ??= { entry, parents, holds: new Map() };
    esnaps.parents = parents;
    this.byStore.set(entry.store.id, esnaps);
    this.retakeStore(esnaps);
  }

  /** `rescan` for a store only when it has esnap clones already (the operation could drop some). */
  rescanIfAny(entry: LvstoreEntry): void {
    if (this.byStore.has(entry.store.id)) this.rescan(entry);
  }

  /** Holds every named external snapshot now attached, again where its bdev was replaced. */
  retake(): void {
    for (const esnaps of this.byStore.values()) this.retakeStore(esnaps);
  }

  /** The lvstore left the node: its clones hold nothing any more. */
  release(storeId: string): void {
    const esnaps = this.byStore.get(storeId);
    if (!esnaps) return;
    for (const { hold } of esnaps.holds.values()) hold.release();
    this.byStore.delete(storeId);
  }

  private retakeStore(esnaps: StoreEsnaps): void {
    for (const [uuid, held] of esnaps.holds) {
      const current = this.registry.lookupBdev(uuid);
      if (esnaps.parents.has(uuid) && current?.claims === held.claims) continue;
      held.hold.release();
      esnaps.holds.delete(uuid);
    }
    for (const uuid of esnaps.parents) {
      if (esnaps.holds.has(uuid)) continue;
      const bdev = this.registry.lookupBdev(uuid);
      if (!bdev) continue; // not attached: the clones are degraded until it comes back
      const holder = `esnap clones of lvstore ${esnaps.entry.store.name}`;
      try {
        esnaps.holds.set(uuid, { claims: bdev.claims, hold: bdev.claims.claim('read_many_write_none', holder, { removable: true }) });
      } catch (error) {
        // Claimed for write since (an lvstore on a bdev attached again): reads go on, unprotected.
        log('warn', 'external snapshot not held read-only: another holder writes it', { bdev: bdev.name, lvstore: esnaps.entry.store.name, error: String(error) });
      }
    }
  }
}

interface StoreEsnaps {
  readonly entry: LvstoreEntry;
  parents: ReadonlySet<string>;
  readonly holds: Map<string, { readonly claims: BdevClaims; readonly hold: BdevHold }>;
}
