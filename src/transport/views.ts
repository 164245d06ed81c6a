// SPDK's JSON shapes for bdevs, lvstores and lvols (reference §6.3, §6.4), built from node state.
import { z } from 'zod';
import { fail } from '../errors.ts';
import type { StorageNode } from '../actors/node.ts';
import type { BaseBdev, LvstoreEntry } from '../actors/registry.ts';
import type { Bdev } from '../bdev/bdev.ts';
import { BaseBdev as BaseBdevClass } from '../bdev/baseBdev.ts';
import { NvmeBdev } from '../bdev/nvmeBdev.ts';
import type { BdevClaims, ClaimType } from '../bdev/bdevClaims.ts';
import { type BdevQosLimits, noQosLimits } from '../bdev/bdevIo.ts';
import { mibBytes } from '../constants.ts';
import { loopYielder } from '../store/format.ts';
import { rfc3339Seconds } from '../store/lvstore.ts';
import type { BadCluster, LvolRecord, VerificationRecord } from '../store/metadata.ts';
import { JsonArrayWriter, type SerializedJson, sliceSerializeItemsMin } from './json64.ts';
import { type verification, verificationSummary } from './schemas.ts';

const ioTypeKeys = [
  'read',
  'write',
  'unmap',
  'flush',
  'reset',
  'nvme_admin',
  'nvme_io',
  'nvme_io_md',
  'write_zeroes',
  'zcopy',
  'get_zone_info',
  'zone_management',
  'zone_append',
  'compare',
  'compare_and_write',
  'abort',
  'seek_hole',
  'seek_data',
  'copy',
  'nvme_iov_md',
] as const;

function supportedIoTypes(supported: readonly string[]): Record<string, boolean> {
  return Object.fromEntries(ioTypeKeys.map((key) => [key, supported.includes(key)]));
}

export const bdevView = z.looseObject({
  name: z.string(),
  aliases: z.array(z.string()),
  product_name: z.string(),
  block_size: z.number(),
  num_blocks: z.union([z.number(), z.bigint()]),
  uuid: z.string(),
  creation_time: z.string().optional(),
  assigned_rate_limits: z.record(z.string(), z.number()),
  claimed: z.boolean(),
  claim_type: z.string().optional(),
  zoned: z.boolean(),
  supported_io_types: z.record(z.string(), z.boolean()),
  driver_specific: z.record(z.string(), z.unknown()),
});
export type BdevView = z.output<typeof bdevView>;

export const lvstoreView = z.object({
  uuid: z.string(),
  name: z.string(),
  base_bdev: z.string(),
  total_data_clusters: z.number(),
  free_clusters: z.number(),
  block_size: z.number(),
  cluster_size: z.number(),
  /** lvnode: present only when the lvstore's metadata cannot be written (it refuses changes). */
  metadata_error: z.string().optional(),
});
export type LvstoreView = z.output<typeof lvstoreView>;

export const lvolView = z.object({
  alias: z.string(),
  uuid: z.string(),
  name: z.string(),
  creation_time: z.string(),
  is_thin_provisioned: z.boolean(),
  is_snapshot: z.boolean(),
  is_clone: z.boolean(),
  is_esnap_clone: z.boolean(),
  is_degraded: z.boolean(),
  num_allocated_clusters: z.number(),
  num_clusters: z.number(),
  read_only: z.boolean(),
  parent: z.string().nullable(),
  lvs: z.object({ name: z.string(), uuid: z.string() }),
  /** lvnode: present once the snapshot was verified or a re-registration conflicted (SPEC §6.10). */
  verification: verificationSummary.optional(),
});
export type LvolView = z.output<typeof lvolView>;

const noRateLimits = { rw_ios_per_sec: 0, rw_mbytes_per_sec: 0, r_mbytes_per_sec: 0, w_mbytes_per_sec: 0 };

/** bdev_set_qos_limit's limits as SPDK lists them (MB is MiB); the shared no-limits row for most bdevs. */
export function rateLimitsView(limits: BdevQosLimits = noQosLimits): Record<string, number> {
  if (limits === noQosLimits) return noRateLimits;
  return {
    rw_ios_per_sec: limits.rwIosPerSec,
    rw_mbytes_per_sec: limits.rwBytesPerSec / mibBytes,
    r_mbytes_per_sec: limits.rBytesPerSec / mibBytes,
    w_mbytes_per_sec: limits.wBytesPerSec / mibBytes,
  };
}

// An lvol's I/O types are one of two answers: made once, not per row of a 100,000-lvol listing.
const lvolIoTypesReadOnly = Object.freeze(supportedIoTypes(['read', 'reset', 'flush', 'seek_hole', 'seek_data']));
const lvolIoTypesWritable = Object.freeze(supportedIoTypes(['read', 'reset', 'flush', 'seek_hole', 'seek_data', 'write', 'unmap', 'write_zeroes']));

/**
 * A listing builds its rows in slices of this many milliseconds, each slice a macrotask of its own
 * (SPEC §10: no request holds the event loop for more than a few milliseconds).
 */
const listingSliceMs = 2;

export function baseBdevInfo(bdev: BaseBdev, limits?: BdevQosLimits): BdevView {
  const writable = bdev.readOnlyDevice ? [] : ['write', 'unmap', 'write_zeroes'];
  const info: BdevView = {
    name: bdev.name,
    aliases: [],
    product_name: bdev.kind === 'malloc' ? 'Malloc disk' : 'AIO disk',
    block_size: bdev.device.blockSizeBytes,
    num_blocks: bdev.device.sizeBytes / bdev.device.blockSizeBytes,
    uuid: bdev.uuid,
    assigned_rate_limits: rateLimitsView(limits),
    ...claimFields(bdev.claims),
    zoned: false,
    supported_io_types: supportedIoTypes(['read', 'flush', 'reset', ...writable]),
    driver_specific: {},
  };
  if (bdev.kind === 'aio') {
    info.driver_specific = {
      aio: { filename: bdev.filename, block_size_override: false, readonly: bdev.readOnlyDevice, fallocate: false },
    };
  }
  return info;
}

/**
 * A bdev of a kind a module registers (an NVMe namespace), from its `Bdev` alone: SPDK's common
 * fields, and driver_specific as the module says (an NVMe bdev's `nvme` paths and `mp_policy`).
 */
export function moduleBdevInfo(bdev: Bdev, limits?: BdevQosLimits): BdevView {
  const writable = bdev.readOnly() ? [] : ['write', 'unmap', 'write_zeroes'];
  return {
    name: bdev.name,
    aliases: [...bdev.aliases()],
    product_name: bdev.kind === 'nvme' ? 'NVMe disk' : bdev.kind,
    block_size: bdev.blockSizeBytes,
    num_blocks: bdev.sizeBytes() / bdev.blockSizeBytes,
    uuid: bdev.uuid,
    assigned_rate_limits: rateLimitsView(limits),
    ...claimFields(bdev.claims),
    zoned: false,
    supported_io_types: supportedIoTypes(['read', 'flush', 'reset', ...writable]),
    driver_specific: bdev instanceof NvmeBdev ? bdev.driverSpecific() : {},
  };
}

/** a × b, as a bigint where it passes 2^53 (a 2^40-cluster lvol has 2^53 blocks): JSON carries it exactly. */
function exactProduct(a: number, b: number): number | bigint {
  const product = a * b;
  return Number.isSafeInteger(product) ? product : BigInt(a) * BigInt(b);
}

/** As SPDK reports it: the external snapshot's id, which is its bdev UUID. */
function externalName(_entry: LvstoreEntry, uuid: string): string {
  return uuid;
}

/**
 * SPDK's `claimed` and `claim_type` of a bdev: an lvstore on it (exclusive_write) or esnap clones
 * over it (read_many_write_none). Opens (exports, copies) are not claims.
 */
function claimFields(claims: BdevClaims | undefined): { claimed: boolean; claim_type?: ClaimType } {
  if (claims?.writer() !== undefined) return { claimed: true, claim_type: 'exclusive_write' };
  if (claims?.frozenBy() !== undefined) return { claimed: true, claim_type: 'read_many_write_none' };
  return { claimed: false };
}

/** `claims`: the lvol's, if it has had any (registry.lvolBdevs.peek). */
export function lvolBdevInfo(entry: LvstoreEntry, lvol: LvolRecord, claims?: BdevClaims, limits?: BdevQosLimits): BdevView {
  // `lvol` is the durable record (a reader's view), and so are its parent and clones here.
  const store = entry.store;
  const clones = store.durableClonesOf(lvol.id).map((clone) => clone.name);
  const parent = lvol.parentId ? store.durableLvol(lvol.parentId) : undefined;
  return {
    name: lvol.id,
    aliases: [`${store.durableName}/${lvol.name}`],
    product_name: 'Logical Volume',
    block_size: store.record.blockBytes,
    num_blocks: exactProduct(lvol.clusterMap.length, store.clusterBytes / store.record.blockBytes),
    uuid: lvol.id,
    creation_time: rfc3339Seconds(lvol.createdAtMs),
    assigned_rate_limits: rateLimitsView(limits),
    ...claimFields(claims),
    zoned: false,
    supported_io_types: lvol.readOnly ? lvolIoTypesReadOnly : lvolIoTypesWritable,
    driver_specific: {
      lvol: {
        lvol_store_uuid: store.id,
        base_bdev: entry.bdevName,
        thin_provision: lvol.thin,
        num_allocated_clusters: lvol.clusterMap.count,
        snapshot: lvol.snapshot,
        clone: parent !== undefined,
        ...(parent ? { base_snapshot: parent.name } : {}),
        ...(lvol.snapshot && clones.length > 0 ? { clones } : {}),
        esnap_clone: lvol.externalParent !== null,
        ...(lvol.externalParent !== null ? { external_snapshot_name: externalName(entry, lvol.externalParent) } : {}),
        ...(lvol.verification ? { verification: verificationSummaryOf(lvol.verification) } : {}),
      },
    },
  };
}

/** bdev_get_bdevs {name}: the bdev called `name` (a base bdev name, lvol UUID or alias); the whole list is allBdevInfos. */
export function bdevInfos(node: StorageNode, name: string): BdevView[] {
  // The one lookup finds base and module bdevs; an lvol is then found by its durable name, as
  // listings see lvols (a rename in flight is not seen).
  const bdev = node.registry.lookupBdev(name);
  if (bdev instanceof BaseBdevClass) return [baseBdevInfo(bdev, node.registry.io.limitsOf(bdev.name, bdev.uuid))];
  if (bdev && bdev.kind !== 'lvol') return [moduleBdevInfo(bdev, node.registry.io.limitsOf(bdev.name, bdev.uuid))];
  const { entry, lvol } = node.resolveLvolDurable(name);
  // As SPDK: a degraded lvol (its external snapshot is missing) is listed by
  // bdev_lvol_get_lvols, but is no bdev until the external snapshot comes back.
  if (entry.store.isDegraded(lvol.id)) fail('ENODEV', `lvol ${name} is degraded: its external snapshot is not attached`);
  return [lvolBdevInfo(entry, lvol, node.registry.lvolBdevs.peek(lvol.id), node.registry.io.limitsOf(lvol.id, lvol.id))];
}

/**
 * The lvols of `entries` as rows made by `row`, built in slices with a turn of the event loop
 * between them. The lvols are those present when the listing began, in the lvstore's order; each
 * row shows its lvol as it is when the row is made, and one deleted (or whose lvstore went away)
 * before its row is left out, as is one whose creation is not yet durable (no actor yet).
 *
 * A long listing (sliceSerializeItemsMin rows or more) is written to JSON as its rows are made,
 * so no row outlives its own slice: 100,000 row objects kept until the end were copied by every
 * scavenge meanwhile (the longest stalls of a listing). It is then the result's JSON text.
 */
async function rowsInSlices<T>(
  node: StorageNode,
  entries: readonly LvstoreEntry[],
  row: (entry: LvstoreEntry, lvol: LvolRecord) => T | undefined,
  first: readonly T[],
): Promise<T[] | SerializedJson> {
  const pause = loopYielder(listingSliceMs);
  // Durable metadata only: an lvol whose create, delete or change is in flight shows as before it.
  const listed = entries.map((entry) => ({ entry, ids: entry.store.durableLvolIds() }));
  const total = listed.reduce((sum, { ids }) => sum + ids.length, first.length);
  const rows: T[] = [];
  const writer = total >= sliceSerializeItemsMin ? new JsonArrayWriter() : undefined;
  const add = writer ? (made: T) => writer.add(made) : (made: T) => rows.push(made);
  for (const made of first) add(made);
  for (const { entry, ids } of listed) {
    for (const id of ids) {
      const lvol = entry.store.durableLvol(id);
      if (lvol && entry.actors.has(id) && node.registry.lvstores.get(entry.store.id) === entry) {
        const made = row(entry, lvol);
        if (made !== undefined) add(made);
      }
      const turn = pause();
      if (turn) await turn;
    }
  }
  return writer ? writer.finish() : rows;
}

/** bdev_get_bdevs without a name: every bdev, lvol rows built in slices (see rowsInSlices). */
export function allBdevInfos(node: StorageNode): Promise<BdevView[] | SerializedJson> {
  const io = node.registry.io;
  return rowsInSlices(
    node,
    [...node.registry.lvstores.values()],
    (entry, lvol) =>
      entry.store.isDegraded(lvol.id) ? undefined : lvolBdevInfo(entry, lvol, node.registry.lvolBdevs.peek(lvol.id), io.limitsOf(lvol.id, lvol.id)),
    [
      ...[...node.registry.bdevs.values()].map((bdev) => baseBdevInfo(bdev, io.limitsOf(bdev.name, bdev.uuid))),
      ...[...node.registry.moduleBdevs.values()].map((bdev) => moduleBdevInfo(bdev, io.limitsOf(bdev.name, bdev.uuid))),
    ],
  );
}

/** bdev_lvol_get_lvols: the lvols of `entries`, built in slices (see rowsInSlices). */
export function lvolInfos(node: StorageNode, entries: readonly LvstoreEntry[]): Promise<LvolView[] | SerializedJson> {
  return rowsInSlices(node, entries, lvolInfo, []);
}

export function lvstoreInfo(entry: LvstoreEntry): LvstoreView {
  const info = entry.store.durableInfo();
  return {
    uuid: info.id,
    name: info.name,
    base_bdev: entry.bdevName,
    total_data_clusters: info.totalDataClusters,
    free_clusters: info.freeClusters,
    block_size: info.blockBytes,
    cluster_size: info.clusterBytes,
    ...(entry.store.metadataFailure === null ? {} : { metadata_error: entry.store.metadataFailure }),
  };
}

export function lvolInfo(entry: LvstoreEntry, lvol: LvolRecord): LvolView {
  const store = entry.store;
  return {
    alias: `${store.durableName}/${lvol.name}`,
    uuid: lvol.id,
    name: lvol.name,
    creation_time: rfc3339Seconds(lvol.createdAtMs),
    is_thin_provisioned: lvol.thin,
    is_snapshot: lvol.snapshot,
    is_clone: lvol.parentId !== null,
    is_esnap_clone: lvol.externalParent !== null,
    is_degraded: store.isDegraded(lvol.id),
    num_allocated_clusters: lvol.clusterMap.count,
    num_clusters: lvol.clusterMap.length,
    read_only: lvol.readOnly,
    parent: lvol.parentId,
    lvs: { name: store.durableName, uuid: store.id },
    ...(lvol.verification ? { verification: verificationSummaryOf(lvol.verification) } : {}),
  };
}

function isoOrNull(atMs: number | null): string | null {
  return atMs === null ? null : new Date(atMs).toISOString();
}

function badClusterView(bad: BadCluster): z.input<typeof verification>['bad_clusters'][number] {
  return { cluster_index: bad.clusterIndex, offset_bytes: bad.offsetBytes, expected: bad.expected, actual: bad.actual };
}

/** A snapshot is flagged corrupt when a verify found bad clusters or a re-registration conflicted. */
export function isCorrupt(record: VerificationRecord): boolean {
  return record.result === 'corrupt' || record.badClusterCount > 0 || record.whole !== null || record.registrationConflict !== null;
}

export function verificationSummaryOf(record: VerificationRecord): z.output<typeof verificationSummary> {
  return {
    corrupt: isCorrupt(record),
    result: record.result,
    verified_at: isoOrNull(record.verifiedAtMs),
    bad_cluster_count: record.badClusterCount,
    registration_conflict: record.registrationConflict !== null,
  };
}

/** The whole verification record on the wire (SPEC §6.10). */
export function verificationView(record: VerificationRecord): z.input<typeof verification> {
  const conflict = record.registrationConflict;
  return {
    verified_at: isoOrNull(record.verifiedAtMs),
    result: record.result,
    errors_only: record.errorsOnly,
    clusters_checked: record.clustersChecked,
    clusters_total: record.clustersTotal,
    bad_cluster_count: record.badClusterCount,
    bad_clusters: record.badClusters.map(badClusterView),
    whole: record.whole,
    registration_conflict:
      conflict === null
        ? null
        : { at: new Date(conflict.atMs).toISOString(), whole: conflict.whole, cluster_count: conflict.clusterCount, clusters: conflict.clusters.map(badClusterView) },
  };
}

