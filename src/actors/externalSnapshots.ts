// External snapshots (SPDK esnap clones, bdev_lvol_clone_bdev / bdev_lvol_set_parent_bdev): a thin
// lvol whose chain reads through to a bdev outside its lvstore — a malloc or file bdev, or a
// read-only lvol of another lvstore. Referenced by the bdev's UUID, as SPDK records the esnap id.
import { fail } from '../errors.ts';
import type { ExternalSource } from '../store/lvstore.ts';
import type { Registry } from './registry.ts';

export type NamedExternalSource = ExternalSource & { readonly uuid: string };

/** The external snapshot with this bdev UUID, if it is attached (else the clone is degraded). */
export function externalSourceByUuid(registry: Registry, uuid: string): NamedExternalSource | undefined {
  for (const bdev of registry.bdevs.values()) {
    if (bdev.uuid !== uuid) continue;
    const device = bdev.device;
    return { uuid, name: bdev.name, sizeBytes: device.sizeBytes, blockBytes: device.blockSizeBytes, readInto: (target, offset) => device.readInto(target, offset) };
  }
  for (const entry of registry.lvstores.values()) {
    if (!entry.actors.has(uuid)) continue;
    const lvol = entry.store.lvol(uuid);
    const store = entry.store;
    return {
      uuid,
      name: `${store.name}/${lvol.name}`,
      sizeBytes: lvol.clusterMap.length * store.clusterBytes,
      blockBytes: store.record.blockBytes,
      readInto: async (target, offset) => void (await store.read(uuid, offset, target.length)).copy(target),
    };
  }
  return undefined;
}

/**
 * The bdev a client names as an external snapshot for an lvol of lvstore `storeId`: a base bdev
 * no lvstore claims, or a read-only lvol of another lvstore (in the same one it would be a plain
 * clone: bdev_lvol_clone).
 */
export function resolveExternalSource(registry: Registry, name: string, storeId: string): NamedExternalSource {
  // A base bdev by name or by UUID (SPDK's bdev aliases include the UUID).
  const base = registry.bdevs.get(name) ?? [...registry.bdevs.values()].find((bdev) => bdev.uuid === name);
  if (base) {
    if (base.claimedBy) fail('EBUSY', `bdev ${name} is claimed by lvstore ${base.claimedBy}`);
    return externalSourceByUuid(registry, base.uuid)!;
  }
  const { entry, lvol } = registry.lvol(name);
  if (entry.store.id === storeId) fail('EINVAL', `${name} is in the same lvstore: use bdev_lvol_clone`);
  if (!lvol.readOnly) fail('EPERM', `${name} is not read-only: an external snapshot must not change under its clones`);
  return externalSourceByUuid(registry, lvol.id)!;
}
