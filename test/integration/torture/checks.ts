// After every step of the torture test: the listing, the space accounting, the ownership the model
// knows of, and every byte of every volume and snapshot, against the model.
import type { Context } from './actions.ts';
import { ownedClusters } from './actions.ts';
import { type LvolListing, lvsName } from './harness.ts';
import type { CheckKind, Violation } from './model.ts';
import { readBdev } from '../../../src/bdev/bdev.ts';

/** The listing by name, each `parent` turned from a UUID into a name. */
export async function listingByName(ctx: Context): Promise<Map<string, LvolListing>> {
  const lvols = await ctx.node.lvols();
  const nameOf = new Map(lvols.map((lvol) => [lvol.uuid, lvol.name]));
  return new Map(lvols.map((lvol) => [lvol.name, { ...lvol, parent: lvol.parent === null ? null : (nameOf.get(lvol.parent) ?? `?${lvol.parent}`) }]));
}

/** The lvols the node lists are the model's, of the model's sizes, kinds and parents. */
function checkListing(ctx: Context, listing: Map<string, LvolListing>): void {
  const listed = [...listing.keys()].sort();
  const modelled = [...ctx.model.volumes.keys()].sort();
  if (listed.join() !== modelled.join()) throw new Error(`the node lists [${listed.join(', ')}], the model has [${modelled.join(', ')}]`);
  for (const volume of ctx.model.volumes.values()) {
    const lvol = listing.get(volume.name)!;
    const sizeBytes = lvol.num_clusters * ctx.model.clusterBytes;
    if (sizeBytes !== volume.bytes.length) throw new Error(`${volume.name} is ${sizeBytes} bytes, the model ${volume.bytes.length}`);
    if (lvol.is_snapshot !== volume.snapshot) throw new Error(`${volume.name}: is_snapshot ${lvol.is_snapshot}, the model ${volume.snapshot}`);
    if (lvol.parent !== volume.parent) throw new Error(`${volume.name}: parent ${lvol.parent}, the model ${volume.parent}`);
  }
}

/** No leak, no double use: the clusters in use are exactly those the lvols own. */
async function checkAccounting(ctx: Context, listing: Map<string, LvolListing>): Promise<void> {
  const lvstore = await ctx.node.lvstore();
  if (lvstore.metadata_error) throw new Error(`lvstore reports a metadata error: ${lvstore.metadata_error}`);
  const owned = [...listing.values()].reduce((sum, lvol) => sum + lvol.num_allocated_clusters, 0);
  const used = lvstore.total_data_clusters - lvstore.free_clusters;
  if (used !== owned) {
    throw new Error(`${used} clusters are in use (${lvstore.free_clusters} free of ${lvstore.total_data_clusters}) but the lvols own ${owned}: ${used > owned ? 'leaked' : 'double use'}`);
  }
  ctx.freeClusters = lvstore.free_clusters;
  ctx.totalClusters = lvstore.total_data_clusters;
}

/**
 * Reads a whole volume: over NBD when `overNbd`, else through the node (the same store read, a
 * quarter of the time; a run reads every volume after every step).
 */
async function readVolume(ctx: Context, name: string, overNbd: boolean): Promise<Buffer> {
  const volume = ctx.model.volume(name);
  if (volume.snapshot || !overNbd) return readBdev(ctx.node.node.bdev(`${lvsName}/${name}`), 0, volume.bytes.length);
  const client = await ctx.node.client(name, volume.bytes.length);
  const reply = await client.read(0, volume.bytes.length);
  if (reply.error !== 0 || !reply.data) throw new Error(`NBD read of ${name} failed with error ${reply.error}`);
  return reply.data;
}

function describeViolations(ctx: Context, violations: Violation[]): string {
  const first = violations[0]!;
  const hex = (bytes: Buffer) => bytes.subarray(0, 8).toString('hex');
  const origin = ctx.model.whereIs(first.actual);
  return (
    `${first.volume}: ${violations.length} block(s) read wrong, first block ${first.block} (byte ${first.block * 512}, cluster ` +
    `${Math.floor((first.block * 512) / ctx.model.clusterBytes)}): read ${hex(first.actual)}… ` +
    `(${origin.length > 0 ? `the bytes of ${origin.join(', ')}` : 'found nowhere in the model'}), allowed ${first.allowed.map(hex).join(' | ')}`
  );
}

/** Every check, after a step (`kind` says whether the node just restarted, and how). */
export async function checkEverything(ctx: Context, kind: CheckKind): Promise<void> {
  let listing = await listingByName(ctx);
  if (ctx.resolvers.length > 0) {
    for (const resolve of ctx.resolvers.splice(0)) resolve(listing);
    listing = await listingByName(ctx);
  }
  checkListing(ctx, listing);
  ctx.listing = listing;
  await checkAccounting(ctx, listing);
  // One writable volume per check, in turn, is read over NBD.
  const writable = [...ctx.model.volumes.values()].filter((volume) => !volume.snapshot);
  const overNbd = writable.length > 0 ? writable[ctx.checks++ % writable.length]!.name : undefined;
  for (const name of [...ctx.model.volumes.keys()]) {
    const num = listing.get(name)!;
    if (num.num_allocated_clusters > num.num_clusters) throw new Error(`${name} owns ${num.num_allocated_clusters} of its ${num.num_clusters} clusters`);
    // Bytes first: a wrong byte says more than a wrong cluster count.
    const violations = ctx.model.check(name, await readVolume(ctx, name, name === overNbd), kind);
    if (violations.length > 0) throw new Error(describeViolations(ctx, violations));
    await ownedClusters(ctx, name);
  }
}
