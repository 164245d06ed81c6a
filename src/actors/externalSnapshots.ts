// External snapshots (SPDK esnap clones, bdev_lvol_clone_bdev / bdev_lvol_set_parent_bdev): a thin
// lvol whose chain reads through to a bdev outside its lvstore — a malloc or file bdev, or a
// read-only lvol of another lvstore. Referenced by the bdev's UUID, as SPDK records the esnap id;
// the store reads the `Bdev` itself (it satisfies the store's ExternalSource).
import type { Bdev } from '../bdev/bdev.ts';
import { fail } from '../errors.ts';
import type { Registry } from './registry.ts';

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
