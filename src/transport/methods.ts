// The one method table: every RPC's SPDK name, strict zod params and result, priority and handler.
//
// Handlers only resolve names and call the node (src/actors/node.ts); they never touch devices.
// The dispatcher, `rpc_get_methods`, `rpc_get_schema`, the CLI client and the README read this table.
import { z } from 'zod';
import { crcInfo } from '../checksum/clusterCrc.ts';
import { fileIoInfo } from '../device/fileIo.ts';
import {
  blockSizesAllowed,
  checksumConcurrencyMax,
  checksumRateMibPerSecMax,
  clusterPageBytes,
  clusterSizeBytesDefault,
  clusterSizeBytesMax,
  clusterSizeBytesMin,
  ioBytesMax,
  lvolSizeBytesMax,
  nameLengthMax,
  nbdStringBytesMax,
  rangeChecksumWindowMax,
  rpcFrameBytesMax,
  xattrNameLengthMax,
  xattrValueLengthMax,
} from '../constants.ts';
import type { StorageNode } from '../actors/node.ts';
import { readBdev } from '../bdev/bdev.ts';
import { StorageError } from '../errors.ts';
import { fail } from '../errors.ts';
import { PayloadBudgets } from './byteBudget.ts';
import { RpcFrameworkError } from './errorMapping.ts';
import { u64, u64AsNumber } from './json64.ts';
import { type MethodTable, type RpcMethod, defineMethod } from './methodTable.ts';
import type { RpcStats } from './stats.ts';
import { observeMethods } from './observeMethods.ts';
import { iostatMethods } from './iostatMethods.ts';
import { nvmeMethods } from './nvmeMethods.ts';
import { nvmfMethods } from './nvmfMethods.ts';
import { checksumStatus, checksumValue, name, ok, verification, verifyPolicy, verifyWindow } from './schemas.ts';
import { allBdevInfos, bdevInfos, bdevView, lvolInfos, lvolView, lvstoreInfo, lvstoreView, verificationView } from './views.ts';

const byName = z.strictObject({ name });
// Control characters (NUL, newlines, C1) and bidirectional overrides make names that print as
// something else in logs, listings and terminals; lone surrogates do not survive a round trip.
const unsafeNameCharacters = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;
const wellFormed = (value: string) => value.isWellFormed();
/** The name of a new object (bdev, lvstore, lvol): checked here, so a bad one is -32602 naming the field. */
const newName = z
  .string()
  .min(1)
  .max(nameLengthMax)
  .refine((value) => !value.includes('/'), "must not contain '/'")
  .refine((value) => !unsafeNameCharacters.test(value), 'must not contain control or bidirectional-override characters')
  .refine(wellFormed, 'must be well-formed Unicode (no lone surrogates)');
const xattrName = z.string().min(1).max(xattrNameLengthMax).refine(wellFormed, 'must be well-formed Unicode (no lone surrogates)');
const xattrValue = z.string().max(xattrValueLengthMax).refine(wellFormed, 'must be well-formed Unicode (no lone surrogates)');
const clusterSize = u64AsNumber.refine(
  (value) => value >= clusterSizeBytesMin && value <= clusterSizeBytesMax && value % clusterPageBytes === 0,
  `must be a multiple of ${clusterPageBytes} bytes from ${clusterSizeBytesMin} to ${clusterSizeBytesMax} (SPDK's metadata page)`,
);
/** An lvol size: at most lvolSizeBytesMax (2^63 bytes), so the byte size stays a signed 64-bit value. */
const lvolSizeMib = u64AsNumber.refine((value) => value <= lvolSizeBytesMax / 2 ** 20, `must be at most ${lvolSizeBytesMax / 2 ** 20} (2^63 bytes)`);
/** A parameter SPDK has for a feature lvnode lacks: its neutral value is accepted, others refused naming it. */
function unsupportedUnless<T extends number | boolean>(neutral: T, why: string) {
  return z
    .union([z.number(), z.boolean()])
    .refine((value) => value === neutral, `only ${String(neutral)} is supported: ${why}`)
    .optional();
}

/** Exactly one of uuid and lvs_name selects the lvstore (SPDK). */
const oneLvstore = <T extends { uuid?: string | undefined; lvs_name?: string | undefined }>(params: T) =>
  (params.uuid === undefined) !== (params.lvs_name === undefined);
const oneLvstoreMessage = { message: 'give exactly one of uuid and lvs_name', path: ['lvs_name'] };
const clearMethod = z
  .string()
  .transform((value) => value.toLowerCase())
  .pipe(z.enum(['none', 'unmap', 'write_zeroes']));
const blockSize = z
  .number()
  .int()
  .refine((value) => blockSizesAllowed.includes(value), `block size must be one of ${blockSizesAllowed.join(', ')}`);
const lvstoreSelector = { uuid: z.string().optional(), lvs_name: z.string().optional() };
const uuidResult = z.string().describe('the new object’s UUID');
/**
 * bdev_get_bdevs {name, timeout}: waits up to `timeout` ms for the bdev to appear (SPDK opens it
 * asynchronously), re-checking on every bdev or lvol event; then -110 "Connection timed out".
 */
function waitForBdev(node: StorageNode, bdevName: string, timeoutMs: number): Promise<void> {
  const present = (): boolean => {
    try {
      bdevInfos(node, bdevName);
      return true;
    } catch {
      return false;
    }
  };
  if (present()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onEvent = (): void => {
      if (!present()) return;
      clearTimeout(timer);
      node.events.off('event', onEvent);
      resolve();
    };
    const timer = setTimeout(() => {
      node.events.off('event', onEvent);
      reject(new StorageError('ETIMEDOUT', { detail: `bdev ${bdevName} did not appear within ${timeoutMs} ms` }));
    }, Math.min(timeoutMs, 2 ** 31 - 1));
    node.events.on('event', onEvent);
  });
}

function bdevMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    bdev_malloc_create: defineMethod({
      description: 'Create a RAM bdev (sparse: memory is used only where written).',
      priority: 'foreground',
      // Every parameter SPDK's rpc.py sends is accepted; values asking for what lvnode does not
      // do (per-block metadata, DIF) are refused naming the parameter. The rest are hints lvnode
      // has no use for (it does not split I/O, allocates no NUMA-local memory).
      params: z.strictObject({
        num_blocks: u64AsNumber,
        block_size: blockSize,
        name: newName.optional(),
        uuid: z.string().optional(),
        physical_block_size: z
          .number()
          .int()
          .refine((value) => value >= 512 && (value & (value - 1)) === 0, 'must be a power of two, at least 512')
          .optional(),
        optimal_io_boundary: z.number().int().min(0).max(0xffff_ffff).optional(),
        md_size: unsupportedUnless(0, 'lvnode keeps no per-block metadata'),
        md_interleave: unsupportedUnless(false, 'lvnode keeps no per-block metadata'),
        dif_type: unsupportedUnless(0, 'lvnode does not do DIF protection information'),
        dif_is_head_of_md: unsupportedUnless(false, 'lvnode does not do DIF protection information'),
        dif_pi_format: unsupportedUnless(0, 'lvnode does not do DIF protection information'),
        numa_id: z.number().int().min(-1).optional(),
      }),
      result: z.string().describe('bdev name'),
      handler: (p) =>
        node.createMallocBdev({ numBlocks: p.num_blocks, blockSize: p.block_size, ...(p.name ? { name: p.name } : {}), ...(p.uuid ? { uuid: p.uuid } : {}) }),
    }),
    bdev_malloc_delete: defineMethod({
      description: 'Delete a RAM bdev; an lvstore on it is unloaded first (hot remove, as SPDK).',
      priority: 'foreground',
      params: byName,
      result: ok,
      handler: async (p) => (await node.deleteBaseBdev(p.name, 'malloc'), true as const),
    }),
    bdev_aio_create: defineMethod({
      description: 'Attach a regular file (or block device) as a bdev through Node file I/O.',
      priority: 'foreground',
      params: z.strictObject({
        name: newName,
        filename: z.string().min(1),
        block_size: blockSize.optional(),
        readonly: z.boolean().optional(),
        fallocate: z.boolean().optional(),
        uuid: z.string().optional(),
        // SPDK's "do not block the reactor" flag: Node's file I/O never blocks the event loop.
        nowait: z.boolean().optional(),
      }),
      result: z.string().describe('bdev name'),
      handler: (p) =>
        node.createAioBdev({
          name: p.name,
          filename: p.filename,
          blockSize: p.block_size ?? 512,
          readOnly: p.readonly ?? false,
          ...(p.uuid ? { uuid: p.uuid } : {}),
        }),
    }),
    bdev_wait_for_examine: defineMethod({
      description: 'Wait until every bdev has been examined for lvstores: lvnode examines as a bdev is attached, so this answers at once.',
      priority: 'foreground',
      params: z.strictObject({}),
      result: ok,
      handler: () => true as const,
    }),
    bdev_aio_delete: defineMethod({
      description: 'Detach a file bdev; an lvstore on it is unloaded first (closed, not erased: attach the file again to load it).',
      priority: 'foreground',
      params: byName,
      result: ok,
      handler: async (p) => (await node.deleteBaseBdev(p.name, 'aio'), true as const),
    }),
    bdev_get_bdevs: defineMethod({
      description: 'List bdevs (base bdevs and lvols) in SPDK’s object shape, or one by name or alias.',
      priority: 'foreground',
      params: z.strictObject({ name: name.optional(), timeout: u64AsNumber.optional() }),
      result: z.array(bdevView),
      handler: async (p) => {
        if (p.name === undefined) return allBdevInfos(node);
        if (p.timeout) await waitForBdev(node, p.name, p.timeout);
        return bdevInfos(node, p.name);
      },
    }),
  };
}

function lvstoreMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    bdev_lvol_grow_lvstore: defineMethod({
      description: 'Take in the space of a base bdev that grew (a file extended with truncate); a bdev that did not grow changes nothing.',
      priority: 'foreground',
      params: z.strictObject(lvstoreSelector).refine(oneLvstore, oneLvstoreMessage),
      result: ok,
      handler: async (p) => (await node.lvstores.grow({ uuid: p.uuid, lvs_name: p.lvs_name }), true as const),
    }),
    bdev_lvol_create_lvstore: defineMethod({
      description:
        'Create an lvstore on a bdev (claims it). clear_method none leaves old bytes in place. A bdev that holds an lvstore is ' +
        'refused, `data.lvstore` naming it: loaded -16, damaged -32603, any other (a name clash, one written after attach, ' +
        'SPDK\'s) -17; on SPDK\'s socket all are -1 "Operation not permitted", SPDK\'s answer for a claimed bdev. lvnode\'s ' +
        '`"overwrite": true` replaces any but a loaded one (delete that with bdev_lvol_delete_lvstore).',
      priority: 'foreground',
      params: z.strictObject({
        bdev_name: name,
        lvs_name: newName,
        cluster_sz: clusterSize.optional(),
        clear_method: clearMethod.optional(),
        num_md_pages_per_cluster_ratio: u64AsNumber.optional(),
        md_page_size: u64AsNumber.optional(),
        // lvnode's own: SPDK has no such parameter (its examine loads what it can and claims it).
        overwrite: z.boolean().optional(),
      }),
      result: uuidResult,
      handler: (p) =>
        node.lvstores.create({
          bdevName: p.bdev_name,
          lvsName: p.lvs_name,
          clusterBytes: p.cluster_sz ?? clusterSizeBytesDefault,
          clearMethod: p.clear_method ?? 'unmap',
          overwrite: p.overwrite ?? false,
        }),
    }),
    bdev_lvol_delete_lvstore: defineMethod({
      description: 'Delete an lvstore and all its lvols; running checksums are preempted.',
      priority: 'priority',
      params: z.strictObject(lvstoreSelector).refine(oneLvstore, oneLvstoreMessage),
      result: ok,
      handler: async (p) => (await node.lvstores.delete(p), true as const),
    }),
    bdev_lvol_get_lvstores: defineMethod({
      description: 'List lvstores, or one by uuid or lvs_name.',
      priority: 'foreground',
      params: z.strictObject(lvstoreSelector),
      result: z.array(lvstoreView),
      handler: (p) => {
        const entries = p.uuid === undefined && p.lvs_name === undefined ? [...node.registry.lvstores.values()] : [node.registry.lvstore(p)];
        return entries.map(lvstoreInfo);
      },
    }),
    bdev_lvol_rename_lvstore: defineMethod({
      description: 'Rename an lvstore; every lvol alias follows.',
      priority: 'foreground',
      params: z.strictObject({ old_name: name, new_name: newName }),
      result: ok,
      handler: async (p) => (await node.lvstores.rename(p.old_name, p.new_name), true as const),
    }),
  };
}

function lvolMethods(node: StorageNode): Record<string, RpcMethod> {
  const simple = (description: string, priority: RpcMethod['priority'], run: (lvolName: string) => Promise<void>) =>
    defineMethod({ description, priority, params: byName, result: ok, handler: async (p) => (await run(p.name), true as const) });
  return {
    bdev_lvol_create: defineMethod({
      description: 'Create an lvol; size_in_mib is rounded up to whole clusters.',
      priority: 'foreground',
      params: z
        .strictObject({
          lvol_name: newName,
          size_in_mib: lvolSizeMib.refine((value) => value >= 1, 'must be at least 1'),
          ...lvstoreSelector,
          thin_provision: z.boolean().optional(),
          clear_method: clearMethod.optional(),
        })
        .refine(oneLvstore, oneLvstoreMessage),
      result: uuidResult,
      handler: (p) =>
        node.createLvol({
          selector: { uuid: p.uuid, lvs_name: p.lvs_name },
          name: p.lvol_name,
          sizeMib: p.size_in_mib,
          thin: p.thin_provision ?? false,
          ...(p.clear_method ? { clearMethod: p.clear_method } : {}),
        }),
    }),
    bdev_lvol_delete: simple('Delete an lvol; a snapshot with one clone merges into it. Preempts checksums.', 'priority', (n) =>
      node.deleteLvol(n),
    ),
    bdev_lvol_snapshot: defineMethod({
      description: 'Snapshot an lvol: the snapshot takes its clusters, the lvol becomes its thin clone.',
      priority: 'foreground',
      params: z.strictObject({ lvol_name: name, snapshot_name: newName, xattrs: z.record(xattrName, xattrValue).optional() }),
      result: uuidResult,
      handler: (p) => node.snapshot(p.lvol_name, p.snapshot_name, p.xattrs ?? {}),
    }),
    bdev_lvol_clone: defineMethod({
      description: 'Clone a snapshot (thin). Preempts a checksum running on the snapshot.',
      priority: 'priority',
      params: z.strictObject({ snapshot_name: name, clone_name: newName }),
      result: uuidResult,
      handler: (p) => node.clone(p.snapshot_name, p.clone_name),
    }),
    bdev_lvol_rename: defineMethod({
      description: 'Rename an lvol (new_name is the bare lvol name). Never delayed by checksums.',
      priority: 'foreground',
      params: z.strictObject({ old_name: name, new_name: newName }),
      result: ok,
      handler: async (p) => (await node.renameLvol(p.old_name, p.new_name), true as const),
    }),
    bdev_lvol_resize: defineMethod({
      description: 'Resize an lvol; size_in_mib is rounded up to whole clusters.',
      priority: 'foreground',
      params: z.strictObject({ name, size_in_mib: lvolSizeMib }),
      result: ok,
      handler: async (p) => (await node.resizeLvol(p.name, p.size_in_mib), true as const),
    }),
    bdev_lvol_set_read_only: simple('Make an lvol read-only (for good).', 'foreground', (n) => node.setReadOnly(n)),
    bdev_lvol_set_xattr: defineMethod({
      description: 'Set a string xattr on a writable lvol.',
      priority: 'foreground',
      params: z.strictObject({ name, xattr_name: xattrName, xattr_value: xattrValue }),
      result: ok,
      handler: async (p) => (await node.setXattr(p.name, p.xattr_name, p.xattr_value), true as const),
    }),
    bdev_lvol_get_xattr: defineMethod({
      description: 'Read an xattr; a missing one is -32603 "No such file or directory".',
      priority: 'foreground',
      params: z.strictObject({ name, xattr_name: xattrName }),
      result: z.string(),
      handler: (p) => node.getXattr(p.name, p.xattr_name),
    }),
    bdev_lvol_inflate: simple('Allocate every cluster (copying from the parent chain) and drop the parent.', 'priority', (n) =>
      node.copyUpFromParent(n, 'inflate'),
    ),
    bdev_lvol_decouple_parent: simple('Copy the clusters the parent chain has and drop the parent.', 'priority', (n) =>
      node.copyUpFromParent(n, 'decouple'),
    ),
    bdev_lvol_detach_parent: simple('Cut the link to the parent without copying.', 'foreground', (n) => node.detachParent(n)),
    bdev_lvol_set_parent: defineMethod({
      description: 'Make a snapshot the parent of a thin lvol of the same size. Preempts checksums on both.',
      priority: 'priority',
      params: z.strictObject({ lvol_name: name, parent_name: name }),
      result: ok,
      handler: async (p) => (await node.setParent(p.lvol_name, p.parent_name), true as const),
    }),
    bdev_lvol_clone_bdev: defineMethod({
      description:
        'Create a thin lvol over an external snapshot: a base bdev no lvstore claims, or a read-only lvol of another lvstore; reads of clusters it does not own go to that bdev.',
      priority: 'foreground',
      params: z.strictObject({ bdev: name, lvs_name: name, clone_name: newName }),
      result: uuidResult,
      handler: (p) => node.cloneBdev(p.bdev, p.lvs_name, p.clone_name),
    }),
    bdev_lvol_set_parent_bdev: defineMethod({
      description: 'Make an external snapshot (a bdev outside the lvstore, no larger than the lvol) the parent of a thin lvol.',
      priority: 'foreground',
      params: z.strictObject({ lvol_name: name, parent_name: name }),
      result: ok,
      handler: async (p) => (await node.setParentBdev(p.lvol_name, p.parent_name), true as const),
    }),
    bdev_lvol_get_lvols: defineMethod({
      description: 'List lvols, of every lvstore or of one.',
      priority: 'foreground',
      params: z.strictObject({ lvs_uuid: z.string().optional(), lvs_name: z.string().optional() }),
      result: z.array(lvolView),
      handler: (p) => {
        const selected =
          p.lvs_uuid === undefined && p.lvs_name === undefined
            ? [...node.registry.lvstores.values()]
            : [node.registry.lvstore({ uuid: p.lvs_uuid, lvs_name: p.lvs_name })];
        return lvolInfos(node, selected);
      },
    }),
    bdev_lvol_get_fragmap: defineMethod({
      description: 'Bitmap of the clusters an lvol owns (base64, bit i = cluster i, LSB first).',
      priority: 'foreground',
      params: z.strictObject({ name, offset: u64AsNumber.optional(), size: u64AsNumber.optional() }),
      result: z.object({ cluster_size: z.number(), num_clusters: z.number(), num_allocated_clusters: z.number(), fragmap: z.string() }),
      handler: (p) => {
        const { entry, lvol } = node.resolveLvolDurable(p.name);
        const map = entry.store.fragmap(lvol.id, p.offset ?? 0, p.size ?? 0);
        return {
          cluster_size: entry.store.clusterBytes,
          num_clusters: map.clusterCount,
          num_allocated_clusters: map.allocated,
          fragmap: map.bitmap.toString('base64'),
        };
      },
    }),
  };
}

function checksumMethods(node: StorageNode): Record<string, RpcMethod> {
  const register = z.strictObject({ name, resume: z.boolean().optional() });
  return {
    bdev_lvol_register_snapshot_checksum: defineMethod({
      description: 'Compute and store a snapshot’s checksum; answers true when done (minutes for large ones).',
      priority: 'background',
      params: register,
      result: ok,
      handler: (p) => node.checksums.register(p.name, 'whole', p.resume ?? false),
    }),
    bdev_lvol_register_snapshot_range_checksums: defineMethod({
      description: 'Like register_snapshot_checksum, also storing one CRC per owned cluster.',
      priority: 'background',
      params: register,
      result: ok,
      handler: (p) => node.checksums.register(p.name, 'range', p.resume ?? false),
    }),
    bdev_lvol_get_snapshot_checksum: defineMethod({
      description: 'The stored checksum; on WebSocket -125 when the last run was aborted and none exists, else -19; SPDK’s socket answers -19 for every failure, as Longhorn’s fork does.',
      priority: 'foreground',
      params: byName,
      result: z.object({ checksum: checksumValue }),
      handler: (p) => ({ checksum: node.checksums.get(p.name) }),
    }),
    bdev_lvol_get_snapshot_range_checksums: defineMethod({
      description: 'Stored per-cluster checksums of a window; 0 for clusters the snapshot does not own.',
      priority: 'foreground',
      params: z.strictObject({
        name,
        cluster_start_index: u64AsNumber,
        cluster_count: u64AsNumber.refine((value) => value <= rangeChecksumWindowMax, `must be at most ${rangeChecksumWindowMax} per call`),
      }),
      result: z.array(z.object({ cluster_index: z.number(), checksum: checksumValue })),
      handler: (p) => node.checksums.getRange(p.name, p.cluster_start_index, p.cluster_count),
    }),
    bdev_lvol_stop_snapshot_checksum: defineMethod({
      description: 'Stop a running checksum; answers true once it has really stopped. -3 when none runs.',
      priority: 'foreground',
      params: byName,
      result: ok,
      handler: (p) => node.checksums.stop(p.name),
    }),
    bdev_lvol_get_checksum_status: defineMethod({
      description: 'State and progress of an lvol’s checksum computation or verify (lvnode).',
      priority: 'foreground',
      params: byName,
      result: checksumStatus,
      handler: (p) => node.checksums.status(p.name),
    }),
    bdev_lvol_verify_snapshot: defineMethod({
      description:
        'lvnode’s own (no SPDK equivalent): re-read a snapshot one cluster per event and compare each owned cluster’s CRC with the stored per-cluster value (or the whole checksum at the end); never changes stored checksums. Journals and answers the result (clean, corrupt with every bad cluster, or incomplete); errors_only re-reads only the clusters the last verify found bad. Stopped with bdev_lvol_stop_snapshot_checksum, preempted and resumed like a checksum walk (status mode `verify`).',
      priority: 'background',
      params: z.strictObject({ name, errors_only: z.boolean().optional(), resume: z.boolean().optional() }),
      result: verification,
      handler: async (p) => verificationView(await node.checksums.verify(p.name, p.errors_only ?? false, p.resume ?? false)),
    }),
    bdev_lvol_get_verification: defineMethod({
      description:
        'lvnode’s own: what the last verify of a snapshot found (durable, kept across restarts), and any re-registration that found other values than those stored. -2 when never verified.',
      priority: 'foreground',
      params: byName,
      result: verification,
      handler: (p) => verificationView(node.checksums.verification(p.name)),
    }),
  };
}

/** Shallow, range and deep copies (Longhorn's replica rebuild, SPEC §5); src/actors/copies.ts runs them. */
function copyMethods(node: StorageNode): Record<string, RpcMethod> {
  const copyEnds = { src_lvol_name: name, dst_bdev_name: name };
  const operationId = z.object({ operation_id: z.number() });
  // SPDK's fields per kind, then lvnode's; both listed so docs/rpc.md shows what clients read.
  const copyStatusCommon = {
    state: z.enum(['in progress', 'complete', 'error']),
    total_clusters: z.number(),
    error: z.string().optional(),
    machine_state: z.string(),
    kind: z.string(),
    src_lvol: z.string(),
    dst_bdev: z.string(),
  };
  const shallowCopyStatus = z.looseObject({ copied_clusters: z.number(), unmapped_clusters: z.number(), ...copyStatusCommon });
  const deepCopyStatus = z.looseObject({ processed_clusters: z.number(), ...copyStatusCommon });
  // SPDK's fields per kind, then lvnode's (machine_state, src_lvol, dst_bdev, kind).
  const checkShallow = (p: { operation_id: number }) => {
    const { processed_clusters: _processed, copied_clusters, unmapped_clusters, ...rest } = node.copies.check('shallow', p.operation_id);
    return { copied_clusters, unmapped_clusters, ...rest };
  };
  const checkDeep = (p: { operation_id: number }) => {
    const { processed_clusters, copied_clusters: _copied, unmapped_clusters: _unmapped, ...rest } = node.copies.check('deep', p.operation_id);
    return { processed_clusters, ...rest };
  };
  return {
    bdev_lvol_start_shallow_copy: defineMethod({
      description:
        'Copy the clusters a read-only lvol owns to the same offsets of another bdev (lvol, malloc or aio), in the background; a checksum on the source is preempted and resumes after.',
      priority: 'foreground',
      params: z.strictObject(copyEnds),
      result: operationId,
      handler: async (p) => ({ operation_id: await node.copies.startByName('shallow', p.src_lvol_name, p.dst_bdev_name) }),
    }),
    bdev_lvol_start_range_shallow_copy: defineMethod({
      description:
        'Shallow copy of the listed clusters only: those the source owns are copied, the others unmapped on the destination (delta rebuild with range checksums).',
      priority: 'foreground',
      params: z.strictObject({ ...copyEnds, clusters: z.array(u64AsNumber).min(1) }),
      result: operationId,
      handler: async (p) => ({ operation_id: await node.copies.startByName('range', p.src_lvol_name, p.dst_bdev_name, p.clusters) }),
    }),
    bdev_lvol_check_shallow_copy: defineMethod({
      description: 'Progress of a (range) shallow copy; an ended one is reported once more, then forgotten (-19).',
      priority: 'foreground',
      params: z.strictObject({ operation_id: u64AsNumber }),
      result: shallowCopyStatus,
      handler: checkShallow,
    }),
    bdev_lvol_start_deep_copy: defineMethod({
      description: 'Copy everything a read-only lvol shows (through its parent chain; holes as zeros) to another bdev, in the background.',
      priority: 'foreground',
      params: z.strictObject(copyEnds),
      result: operationId,
      handler: async (p) => ({ operation_id: await node.copies.startByName('deep', p.src_lvol_name, p.dst_bdev_name) }),
    }),
    bdev_lvol_check_deep_copy: defineMethod({
      description: 'Progress of a deep copy; an ended one is reported once more, then forgotten (-19).',
      priority: 'foreground',
      params: z.strictObject({ operation_id: u64AsNumber }),
      result: deepCopyStatus,
      handler: checkDeep,
    }),
  };
}

function dataMethods(node: StorageNode, payload: PayloadBudgets): Record<string, RpcMethod> {
  // A request is one frame of at most rpcFrameBytesMax (WebSocket and SPDK's socket alike), so
  // `data` can never be longer than that; bulk data goes over NBD or NVMe-oF.
  const base64 = z.base64().max(rpcFrameBytesMax);
  return {
    node_lvol_write: defineMethod({
      description:
        'Write to an lvol (lvnode): base64 `data` (the whole request is one frame of at most 1 MiB, so about 768 KiB of bytes per call), or `fill_byte` repeated `length` bytes (up to 64 MiB). Block aligned. `fua` answers only once the data is durable.',
      priority: 'foreground',
      params: z.strictObject({
        name,
        offset: u64AsNumber,
        data: base64.optional(),
        fill_byte: z.number().int().min(0).max(255).optional(),
        length: u64AsNumber.optional(),
        fua: z.boolean().optional(),
      }),
      result: ok,
      handler: async (p, connection) => {
        const fill = p.fill_byte !== undefined && p.length !== undefined && p.data === undefined;
        if (!fill && (p.data === undefined || p.fill_byte !== undefined || p.length !== undefined)) {
          throw RpcFrameworkError.invalidParams([{ path: 'data', message: 'give either data, or fill_byte with length' }]);
        }
        // Checked before anything is allocated: a 100-byte request must not cost 64 MiB + 1.
        const lengthBytes = fill ? p.length! : Math.floor((p.data!.length * 3) / 4);
        if (lengthBytes > ioBytesMax) {
          throw RpcFrameworkError.invalidParams([{ path: fill ? 'length' : 'data', message: `at most ${ioBytesMax} bytes per call` }]);
        }
        return payload.run(connection, lengthBytes, async () => {
          const bytes = fill ? Buffer.alloc(lengthBytes, p.fill_byte) : Buffer.from(p.data!, 'base64');
          const bdev = node.registry.io.meter(node.lvolBdev(p.name));
          await bdev.write(p.offset, bytes);
          if (p.fua) await bdev.flush();
          return true as const;
        });
      },
    }),
    node_lvol_read: defineMethod({
      description: 'Read from an lvol through its parent chain (lvnode); result is base64. Block aligned.',
      priority: 'foreground',
      params: z.strictObject({ name, offset: u64AsNumber, length: z.number().int().min(0).max(512 * 1024) }),
      result: z.string(),
      handler: (p, connection) =>
        // The buffer and its base64 text are both alive until the reply is written.
        payload.run(connection, Math.ceil((p.length * 7) / 3), async () => (await readBdev(node.registry.io.meter(node.lvolBdev(p.name)), p.offset, p.length)).toString('base64')),
    }),
  };
}

// ---- NBD data path (SPEC §7) ----

/** An NBD export name: an NBD string (at most 4096 bytes), printable. */
const nbdExportName = z
  .string()
  .min(1)
  .max(nbdStringBytesMax)
  .refine((value) => Buffer.byteLength(value, 'utf8') <= nbdStringBytesMax, `must be at most ${nbdStringBytesMax} bytes of UTF-8`)
  .refine((value) => !unsafeNameCharacters.test(value), 'must not contain control or bidirectional-override characters')
  .refine(wellFormed, 'must be well-formed Unicode (no lone surrogates)');
const nbdExportView = z.object({
  export_name: z.string(),
  bdev_name: z.string(),
  kind: z.enum(['lvol', 'malloc', 'aio', 'nvme']),
  state: z.enum(['idle', 'serving', 'draining', 'stopped']),
  read_only: z.boolean(),
  size: z.number().describe('bytes'),
  block_size: z.number(),
  connections: z.number(),
  connections_total: z.number(),
  requests: z.number(),
  errors: z.number(),
  bytes_read: z.number(),
  bytes_written: z.number(),
});

function nbdMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    nbd_start_export: defineMethod({
      description:
        'Export a bdev (lvol by UUID or alias, malloc, aio) on the node’s NBD listener; snapshots, read-only and lvstore-claimed bdevs export read-only. Answers the export name.',
      priority: 'foreground',
      params: z.strictObject({ bdev_name: name, export_name: nbdExportName.optional().describe('defaults to bdev_name') }),
      result: z.string().describe('export name'),
      handler: (p) => node.nbd.start(p.bdev_name, p.export_name ?? p.bdev_name),
    }),
    nbd_stop_export: defineMethod({
      description: 'Stop an NBD export; answers once its clients are disconnected (in-flight requests finish, ones received but not started get ESHUTDOWN).',
      priority: 'foreground',
      params: z.strictObject({ export_name: nbdExportName }),
      result: ok,
      handler: async (p) => (await node.nbd.stop(p.export_name), true as const),
    }),
    nbd_get_exports: defineMethod({
      description: 'List NBD exports (or one) with their clients and request figures.',
      priority: 'foreground',
      params: z.strictObject({ export_name: nbdExportName.optional() }),
      result: z.array(nbdExportView),
      handler: (p) => {
        const all = node.nbd.list().map((found) => found.view());
        if (p.export_name === undefined) return all;
        const one = all.filter((view) => view.export_name === p.export_name);
        if (one.length === 0) fail('ENODEV', `NBD export ${p.export_name} does not exist`);
        return one;
      },
    }),
  };
}

/** Every method of the node; `rpc_get_methods` and `rpc_get_schema` describe the table itself. */
/** What node_get_stats reports beyond the node itself: the transport's own figures. */
export interface TransportStats {
  rpc: RpcStats;
  connectionCount(): number;
}

export function createMethodTable(node: StorageNode, transport?: TransportStats): MethodTable {
  const payload = new PayloadBudgets();
  const table: Record<string, RpcMethod> = {
    ...bdevMethods(node),
    ...lvstoreMethods(node),
    ...lvolMethods(node),
    ...checksumMethods(node),
    ...copyMethods(node),
    ...dataMethods(node, payload),
    ...observeMethods(node),
    ...nbdMethods(node),
    ...nvmfMethods(node),
    ...nvmeMethods(node),
    ...iostatMethods(node),
  };
  table.save_config = defineMethod({
    description: 'The node’s bdevs as an SPDK-style JSON config (replayable with `lvnode serve --config FILE`).',
    priority: 'foreground',
    params: z.strictObject({}),
    result: z.object({ subsystems: z.array(z.object({ subsystem: z.string(), config: z.array(z.object({ method: z.string(), params: z.record(z.string(), z.unknown()) })) })) }),
    handler: () => node.saveConfig(),
  });
  table.node_get_stats = defineMethod({
    description:
      'Request counts and latencies per method, event-loop delay, checksum walks and their rate, the background scheduler, device queues, the CRC implementation, connections.',
    priority: 'foreground',
    params: z.strictObject({ reset: z.boolean().optional().describe('after reading, start a new interval for latencies and event-loop delay') }),
    result: z.looseObject({
      checksums: z.object({ by_state: z.record(z.string(), z.number()), rate_bytes_per_sec: z.number() }),
      background: z.object({ running: z.number(), queued: z.number(), bytes_per_sec: z.number() }),
      devices: z.record(z.string(), z.object({ foreground_in_flight: z.number(), background_in_flight: z.number(), background_waiting: z.number() })),
      crc: z.looseObject({ implementation: z.enum(['native', 'fallback']) }),
    }),
    handler: async (p) => {
      const checksums = await node.checksums.stats();
      const verifyPolicyStats = await node.verifyPolicy.stats();
      const view = {
        ...(transport ? { ...transport.rpc.view(), connections: transport.connectionCount() } : {}),
        checksums,
        background: node.scheduler.stats(),
        verify_policy: verifyPolicyStats,
        devices: node.deviceQueueStats(),
        crc: crcInfo(),
        file_io: fileIoInfo(),
        inspect_subscribers: node.inspector.subscriberCount,
        payload_bytes_in_flight: payload.inUseBytes,
      };
      if (p.reset) transport?.rpc.resetInterval();
      return view;
    },
  });
  table.node_set_background_options = defineMethod({
    description:
      'Set the node-wide cap on concurrent checksum walks (the rest wait, state `queued`) and the checksum read rate limit (0 = unlimited); saved across restarts.',
    priority: 'foreground',
    params: z.strictObject({
      max_concurrent_checksums: z.number().int().min(1).max(checksumConcurrencyMax).optional(),
      checksum_rate_mib_per_sec: z.number().min(0).max(checksumRateMibPerSecMax).optional(),
    }),
    result: ok,
    handler: async (p) => {
      await node.scheduler.setOptions({
        ...(p.max_concurrent_checksums === undefined ? {} : { max_concurrent_checksums: p.max_concurrent_checksums }),
        ...(p.checksum_rate_mib_per_sec === undefined ? {} : { checksum_rate_mib_per_sec: p.checksum_rate_mib_per_sec }),
      });
      return true as const;
    },
  });
  table.node_get_background_options = defineMethod({
    description: 'The background options in force (see node_set_background_options).',
    priority: 'foreground',
    params: z.strictObject({}),
    result: z.object({ max_concurrent_checksums: z.number(), checksum_rate_mib_per_sec: z.number() }),
    handler: () => node.scheduler.options(),
  });
  table.node_set_verify_policy = defineMethod({
    description:
      'lvnode’s own: set the verification policy (each field optional, the rest kept): snapshots with stored checksums are verified every interval_sec (+ a per-snapshot share of jitter_sec), only inside windows (UTC hours on weekdays; empty = always), oldest verification first; a window’s end stops the running ones, which resume in the next window. rate_mib_per_sec caps the reads of the verifies the policy starts (0: only the node-wide checksum_rate_mib_per_sec; client verifies and registrations are not held to it). A snapshot whose policy verify failed on a read error is retried after 1 min, doubling up to interval_sec (node_get_stats verify_policy.backing_off). Saved in the data directory before it takes effect; -28 if it cannot be saved (nothing changes).',
    priority: 'foreground',
    params: z.strictObject({
      enabled: z.boolean().optional(),
      interval_sec: z.number().int().optional(),
      jitter_sec: z.number().int().optional(),
      grace_sec: z.number().int().optional(),
      windows: z.array(verifyWindow).optional(),
      verify_after_register: z.boolean().optional(),
      rate_mib_per_sec: z.number().optional().describe('MiB/s cap on the reads of the verifies the policy starts (0: none of its own)'),
    }),
    result: ok,
    handler: async (p) => {
      const defined = Object.fromEntries(Object.entries(p).filter(([, value]) => value !== undefined));
      // The merged policy is checked whole (jitter against interval), so a bad field is -32602 with nothing changed.
      const parsed = verifyPolicy.safeParse({ ...node.verifyPolicy.policy(), ...defined });
      if (!parsed.success) throw RpcFrameworkError.fromZodError(parsed.error);
      await node.verifyPolicy.setPolicy(parsed.data);
      return true as const;
    },
  });
  table.node_get_verify_policy = defineMethod({
    description: 'lvnode’s own: the verification policy in force (see node_set_verify_policy).',
    priority: 'foreground',
    params: z.strictObject({}),
    result: verifyPolicy,
    handler: () => {
      const policy = node.verifyPolicy.policy();
      return { ...policy, windows: policy.windows.map((window) => ({ ...window, days: [...window.days] })) };
    },
  });
  table.rpc_get_methods = defineMethod({
    description: 'Names of every method.',
    priority: 'foreground',
    params: z.strictObject({ current: z.boolean().optional(), include_aliases: z.boolean().optional() }),
    result: z.array(z.string()),
    handler: () => Object.keys(table).sort(),
  });
  table.rpc_get_schema = defineMethod({
    description: 'JSON Schema of the params and result of every method, or of one.',
    priority: 'foreground',
    params: z.strictObject({ method: z.string().optional() }),
    result: z.record(z.string(), methodDescription),
    handler: (p) => describeMethods(table, p.method),
  });
  return table;
}

const methodDescription = z.object({ description: z.string(), priority: z.string(), params: z.unknown(), result: z.unknown() });

export function describeMethods(table: MethodTable, only?: string): Record<string, z.output<typeof methodDescription>> {
  const names = only === undefined ? Object.keys(table).sort() : [only];
  const out: Record<string, z.output<typeof methodDescription>> = {};
  for (const methodName of names) {
    // Own properties only: "__proto__", "constructor" or "toString" are unknown methods.
    const method = Object.hasOwn(table, methodName) ? table[methodName] : undefined;
    if (!method) throw new RpcFrameworkError('invalidParams', { field: 'method', issues: [{ path: 'method', message: `unknown method ${methodName}` }] });
    out[methodName] = {
      description: method.description,
      priority: method.priority,
      params: z.toJSONSchema(method.params, { io: 'input', unrepresentable: 'any' }),
      result: z.toJSONSchema(method.result, { io: 'output', unrepresentable: 'any' }),
    };
  }
  return out;
}
