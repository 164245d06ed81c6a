// The torture test's actions: each drives the node (NBD or RPC), says what the model expects of
// the answer, and applies the change to the model — or, when a crash cut it, leaves a resolver
// that settles it from the restarted node's listing (an unacknowledged change is old or new).
import { command, commandFlag, nbdErrno } from '../../../src/transport/nbd/protocol.ts';
import { crc64GoIso } from './crc64.ts';
import { type Answer, type LvolListing, TortureNode, lvsName } from './harness.ts';
import { seededRandom } from '../../seededRandom.ts';
import { type CheckKind, Model } from './model.ts';

export const mibBytes = 1024 * 1024;

/** Everything a run carries: the node, the model, the seeded random source, and what is pending. */
export interface Context {
  readonly seed: number;
  readonly next: () => number;
  readonly node: TortureNode;
  readonly model: Model;
  /** Changes a crash cut, settled from the listing after the restart. */
  resolvers: Array<(listing: Map<string, LvolListing>) => void>;
  /** The listing as of the last check, by name (`parent` as a name too). */
  listing: Map<string, LvolListing>;
  freeClusters: number;
  totalClusters: number;
  counts: Record<string, number>;
  /** The last number a fresh name used. */
  names: number;
  /** Checks made so far (each reads one writable volume over NBD, in turn). */
  checks: number;
}

/** A node with an empty lvstore on a fresh crash-simulating device, and an empty model. */
export async function newContext(seed: number, layout: { deviceBytes: number; clusterBytes: number }): Promise<Context> {
  const node = await TortureNode.create({ seed, ...layout });
  const model = new Model(layout.clusterBytes);
  return { seed, next: seededRandom(seed), node, model, resolvers: [], listing: new Map(), freeClusters: 0, totalClusters: 0, counts: {}, names: 0, checks: 0 };
}

export function count(ctx: Context, what: string): void {
  ctx.counts[what] = (ctx.counts[what] ?? 0) + 1;
}

/** Unique bytes for one write: a seeded xorshift stream, so every write is told apart from all others. */
export function pattern(ctx: Context, lengthBytes: number): Buffer {
  const words = new Uint32Array(Math.ceil(lengthBytes / 4));
  let state = Math.floor(ctx.next() * 2 ** 32) >>> 0 || 1;
  for (let index = 0; index < words.length; index++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    words[index] = state >>> 0;
  }
  return Buffer.from(words.buffer, 0, lengthBytes);
}

function kib(bytes: number): string {
  return bytes % 1024 === 0 ? `${bytes / 1024}K` : `${bytes}B`;
}

/** A step's description, and how to check after it: as usual, or after a restart. */
export interface Step {
  description: string;
  check: CheckKind;
}

function crashed(ctx: Context): boolean {
  return ctx.node.device.hasCrashed;
}

/** Fails unless a refusal is one the model allows; a crash excuses anything. */
function expectAnswer(ctx: Context, what: string, answer: Answer, allowed: readonly string[]): string {
  if (answer.ok) {
    if (allowed.includes('ok')) return 'ok';
    throw new Error(`${what} succeeded; the model expected it refused (${allowed.join('|')})`);
  }
  if (crashed(ctx)) return `cut by the crash (${answer.errno})`;
  if (allowed.includes(answer.errno)) return answer.errno;
  throw new Error(`${what} refused with ${answer.errno} (${answer.message}); the model expected ${allowed.join('|')}`);
}

// ---- crashes ----

/** Crashes the node (kill -9 or power loss) and restarts it on what the device kept. */
export async function crash(ctx: Context, kind: 'process' | 'power'): Promise<Step> {
  await ctx.node.crash(kind, Math.floor(ctx.next() * 2 ** 31));
  count(ctx, kind === 'process' ? 'kill -9' : 'power loss');
  return { description: kind === 'process' ? 'kill -9' : 'power loss', check: kind === 'process' ? 'processCrash' : 'powerLoss' };
}

/**
 * Runs `inner` with the device set to crash at its Nth write from now (the node sees EIO there
 * and after), then crashes the node if it has not yet, and restarts it.
 */
export async function crashDuring(ctx: Context, writeNumber: number, kind: 'process' | 'power', inner: () => Promise<string>): Promise<Step> {
  ctx.node.device.crashAt(writeNumber);
  const description = await inner();
  const when = ctx.node.device.hasCrashed ? `at write #${writeNumber}` : 'after it';
  const crashed = await crash(ctx, kind);
  return { description: `${description}; ${crashed.description} ${when}`, check: crashed.check };
}

// ---- NBD data path ----

export type WriteKind = 'write' | 'zeroes' | 'trim';

/** One NBD request; returns its error (0 on success). */
async function nbdRequest(ctx: Context, name: string, kind: WriteKind, offsetBytes: number, data: Buffer, fua: boolean): Promise<number> {
  const volume = ctx.model.volume(name);
  const client = await ctx.node.client(name, volume.bytes.length);
  const flags = fua ? commandFlag.fua : 0;
  if (kind === 'write') return (await client.write(offsetBytes, data, flags)).error;
  const type = kind === 'zeroes' ? command.writeZeroes : command.trim;
  return (await client.request(type, offsetBytes, data.length, { flags })).error;
}

/** A WRITE, WRITE_ZEROES or TRIM of `data.length` bytes (zeros for the last two), settled in the model. */
export async function nbdWrite(ctx: Context, name: string, kind: WriteKind, offsetBytes: number, data: Buffer, fua: boolean): Promise<string> {
  const what = `${kind} ${name} @${kib(offsetBytes)}+${kib(data.length)}${fua ? ' fua' : ''}`;
  const error = await nbdRequest(ctx, name, kind, offsetBytes, data, fua);
  return `${what} → ${await settleWrite(ctx, name, kind, offsetBytes, data, fua, error)}`;
}

/**
 * Applies an answered request to the model. `snapshotTaken`: a snapshot of the volume was taken
 * while it was in flight, so the write went to one or the other (the snapshot may show it).
 */
async function settleWrite(
  ctx: Context,
  name: string,
  kind: WriteKind,
  offsetBytes: number,
  data: Buffer,
  fua: boolean,
  error: number,
  snapshotTaken?: string,
): Promise<string> {
  if (error === 0) {
    if (kind === 'trim') ctx.model.trim(name, offsetBytes, data.length);
    else ctx.model.write(name, offsetBytes, data, { fua, allocates: kind === 'write' && snapshotTaken === undefined });
    if (snapshotTaken !== undefined) ctx.model.interruptedWrite(snapshotTaken, offsetBytes, data);
    count(ctx, kind);
    return 'ok';
  }
  if (crashed(ctx)) {
    if (kind === 'trim') ctx.model.trim(name, offsetBytes, data.length);
    else ctx.model.interruptedWrite(name, offsetBytes, data);
    return `cut by the crash (NBD error ${error})`;
  }
  if (error === nbdErrno.ENOSPC && kind !== 'trim') {
    // Refused for want of clusters: it changes nothing (the next check reads every byte), and it
    // cannot have needed more clusters than it touches.
    const touched = Math.ceil((offsetBytes + data.length) / ctx.model.clusterBytes) - Math.floor(offsetBytes / ctx.model.clusterBytes);
    const { free_clusters: free } = await ctx.node.lvstore();
    if (free >= touched) throw new Error(`${kind} ${name} refused with ENOSPC though ${free} clusters are free and it touches ${touched}`);
    ctx.model.remember(`the refused ${kind} to ${name} @${kib(offsetBytes)}`, data);
    count(ctx, `${kind} ENOSPC`);
    return 'ENOSPC (changes nothing)';
  }
  throw new Error(`${kind} ${name} @${offsetBytes}+${data.length}: NBD error ${error}`);
}

/** Several writes at once on the NBD connections (pipelined), to ranges that do not overlap. */
export async function nbdBurst(ctx: Context, writes: Array<{ name: string; offsetBytes: number; data: Buffer; fua: boolean }>): Promise<string> {
  const errors = await Promise.all(writes.map((write) => nbdRequest(ctx, write.name, 'write', write.offsetBytes, write.data, write.fua)));
  const outcomes: string[] = [];
  for (const [index, write] of writes.entries()) {
    const outcome = await settleWrite(ctx, write.name, 'write', write.offsetBytes, write.data, write.fua, errors[index]!);
    outcomes.push(`${write.name} @${kib(write.offsetBytes)}+${kib(write.data.length)}${write.fua ? ' fua' : ''} → ${outcome}`);
  }
  return `burst [${outcomes.join('; ')}]`;
}

/**
 * A snapshot taken while writes to the volume are in flight: the snapshot is a point in time
 * (each block as before or after each write, never anything else) and the volume gets every
 * acknowledged write.
 */
export async function snapshotUnderWrites(ctx: Context, name: string, snapshotName: string, writes: Array<{ offsetBytes: number; data: Buffer; fua: boolean }>): Promise<string> {
  const requests = writes.map((write) => nbdRequest(ctx, name, 'write', write.offsetBytes, write.data, write.fua));
  const answer = await ctx.node.call('bdev_lvol_snapshot', { lvol_name: `${lvsName}/${name}`, snapshot_name: snapshotName });
  const errors = await Promise.all(requests);
  const outcome = expectAnswer(ctx, `snapshot ${name} under writes`, answer, ['ok']);
  // The snapshot first, of the bytes before the writes; then each write, to the volume for sure
  // and perhaps to the snapshot.
  if (answer.ok) ctx.model.snapshot(name, snapshotName);
  const outcomes: string[] = [];
  for (const [index, write] of writes.entries()) {
    const settled = await settleWrite(ctx, name, 'write', write.offsetBytes, write.data, write.fua, errors[index]!, answer.ok ? snapshotName : undefined);
    outcomes.push(`@${kib(write.offsetBytes)}+${kib(write.data.length)}${write.fua ? ' fua' : ''} → ${settled}`);
  }
  if (answer.ok) count(ctx, 'snapshot under writes');
  return `snapshot ${name} as ${snapshotName} under writes [${outcomes.join('; ')}] → ${outcome}`;
}

/** A request off the block grid: refused with EINVAL, changing nothing. */
export async function nbdUnaligned(ctx: Context, name: string, offsetBytes: number, lengthBytes: number): Promise<string> {
  const volume = ctx.model.volume(name);
  const client = await ctx.node.client(name, volume.bytes.length);
  const { error } = await client.write(offsetBytes, pattern(ctx, lengthBytes));
  if (error !== nbdErrno.EINVAL) throw new Error(`unaligned write ${name} @${offsetBytes}+${lengthBytes} answered ${error}, not EINVAL`);
  return `unaligned write ${name} @${offsetBytes}+${lengthBytes} → EINVAL`;
}

export async function nbdFlush(ctx: Context, name: string): Promise<string> {
  const volume = ctx.model.volume(name);
  const client = await ctx.node.client(name, volume.bytes.length);
  const { error } = await client.request(command.flush, 0, 0);
  if (error === 0) {
    ctx.model.flush(name);
    count(ctx, 'flush');
    return `flush ${name} → ok`;
  }
  if (crashed(ctx)) return `flush ${name} → cut by the crash`;
  throw new Error(`flush ${name}: NBD error ${error}`);
}

// ---- RPCs ----

export async function createLvol(ctx: Context, name: string, sizeMib: number, thick: boolean, clearMethod: 'unmap' | 'write_zeroes'): Promise<string> {
  const what = `create ${thick ? 'thick' : 'thin'} ${name} ${sizeMib}M clear=${clearMethod}`;
  const answer = await ctx.node.call('bdev_lvol_create', { lvs_name: lvsName, lvol_name: name, size_in_mib: sizeMib, thin_provision: !thick, clear_method: clearMethod });
  const outcome = expectAnswer(ctx, what, answer, thick ? ['ok', 'ENOSPC'] : ['ok']);
  if (answer.ok) {
    ctx.model.create(name, sizeMib * mibBytes, thick);
    count(ctx, thick ? 'create thick' : 'create thin');
  } else if (crashed(ctx)) {
    ctx.resolvers.push((listing) => listing.has(name) && ctx.model.create(name, sizeMib * mibBytes, thick));
  }
  return `${what} → ${outcome}`;
}

export async function snapshot(ctx: Context, name: string, snapshotName: string): Promise<string> {
  const answer = await ctx.node.call('bdev_lvol_snapshot', { lvol_name: `${lvsName}/${name}`, snapshot_name: snapshotName });
  const outcome = expectAnswer(ctx, `snapshot ${name}`, answer, ['ok']);
  if (answer.ok) {
    ctx.model.snapshot(name, snapshotName);
    count(ctx, 'snapshot');
  } else if (crashed(ctx)) {
    ctx.resolvers.push((listing) => listing.has(snapshotName) && ctx.model.snapshot(name, snapshotName));
  }
  return `snapshot ${name} as ${snapshotName} → ${outcome}`;
}

export async function clone(ctx: Context, snapshotName: string, cloneName: string): Promise<string> {
  const answer = await ctx.node.call('bdev_lvol_clone', { snapshot_name: `${lvsName}/${snapshotName}`, clone_name: cloneName });
  const outcome = expectAnswer(ctx, `clone ${snapshotName}`, answer, ['ok']);
  if (answer.ok) {
    ctx.model.clone(snapshotName, cloneName);
    count(ctx, 'clone');
  } else if (crashed(ctx)) {
    ctx.resolvers.push((listing) => listing.has(cloneName) && ctx.model.clone(snapshotName, cloneName));
  }
  return `clone ${snapshotName} as ${cloneName} → ${outcome}`;
}

/** Delete; a snapshot with one clone merges into it; with two or more it is refused (EPERM). */
export async function deleteLvol(ctx: Context, name: string): Promise<string> {
  const children = ctx.model.children(name).length;
  const what = `delete ${name} (${ctx.model.volume(name).snapshot ? 'snapshot' : 'volume'}, ${children} clone${children === 1 ? ': merge' : 's'}, ${ctx.model.volume(name).bytes.length / mibBytes}M)`;
  await ctx.node.unexport(name);
  const answer = await ctx.node.call('bdev_lvol_delete', { name: `${lvsName}/${name}` });
  const outcome = expectAnswer(ctx, what, answer, children > 1 ? ['EPERM'] : ['ok']);
  if (answer.ok) {
    ctx.model.delete(name);
    count(ctx, children === 1 ? 'merge' : 'delete');
  } else if (crashed(ctx)) {
    ctx.resolvers.push((listing) => !listing.has(name) && ctx.model.delete(name));
  }
  return `${what} → ${outcome}`;
}

export async function resize(ctx: Context, name: string, sizeMib: number): Promise<string> {
  const volume = ctx.model.volume(name);
  const oldMib = volume.bytes.length / mibBytes;
  const thin = (await ctx.node.lvols()).find((lvol) => lvol.name === name)?.is_thin_provisioned ?? true;
  await ctx.node.disconnect(name);
  const answer = await ctx.node.call('bdev_lvol_resize', { name: `${lvsName}/${name}`, size_in_mib: sizeMib });
  const what = `resize ${name} ${oldMib}M → ${sizeMib}M${thin ? '' : ' (thick)'}`;
  const outcome = expectAnswer(ctx, what, answer, sizeMib > oldMib && !thin ? ['ok', 'ENOSPC'] : ['ok']);
  const clusters = (sizeMib * mibBytes) / ctx.model.clusterBytes;
  if (answer.ok) {
    ctx.model.resize(name, sizeMib * mibBytes, !thin);
    count(ctx, sizeMib < oldMib ? 'shrink' : 'grow');
  } else if (crashed(ctx)) {
    ctx.resolvers.push((listing) => listing.get(name)?.num_clusters === clusters && ctx.model.resize(name, sizeMib * mibBytes, !thin));
  }
  return `${what} → ${outcome}`;
}

/** Inflate or decouple: the bytes stay as they are; without a parent decouple is refused. */
export async function copyUp(ctx: Context, name: string, mode: 'inflate' | 'decouple'): Promise<string> {
  const volume = ctx.model.volume(name);
  const method = mode === 'inflate' ? 'bdev_lvol_inflate' : 'bdev_lvol_decouple_parent';
  const answer = await ctx.node.call(method, { name: `${lvsName}/${name}` });
  const allowed = mode === 'decouple' && volume.parent === null ? ['EINVAL'] : ['ok', 'ENOSPC'];
  const outcome = expectAnswer(ctx, `${mode} ${name}`, answer, allowed);
  if (answer.ok) {
    ctx.model.detachParent(name, mode);
    count(ctx, mode);
  } else if (crashed(ctx)) {
    // Only the parent link tells whether it happened; the bytes are the same either way. An
    // inflate of a volume without a parent may or may not have allocated everything.
    const hadParent = volume.parent !== null;
    ctx.resolvers.push((listing) => listing.get(name)?.parent === null && ctx.model.detachParent(name, mode, hadParent));
  }
  return `${mode} ${name} (parent ${volume.parent ?? 'none'}) → ${outcome}`;
}

/** The clusters an lvol owns, from bdev_lvol_get_fragmap; fails unless the model's bounds hold them. */
export async function ownedClusters(ctx: Context, name: string): Promise<Set<number>> {
  const map = await ctx.node.must<{ fragmap: string; num_clusters: number }>('bdev_lvol_get_fragmap', { name: `${lvsName}/${name}` });
  const bitmap = Buffer.from(map.fragmap, 'base64');
  const owned = new Set<number>();
  for (let cluster = 0; cluster < map.num_clusters; cluster++) if (bitmap[cluster >> 3]! & (1 << (cluster & 7))) owned.add(cluster);
  const volume = ctx.model.volume(name);
  const missing = [...volume.mustOwn].filter((cluster) => !owned.has(cluster));
  if (missing.length > 0) throw new Error(`${name} does not own clusters ${missing.join(',')} it wrote (fragmap ${[...owned].join(',')})`);
  const extra = [...owned].filter((cluster) => !volume.mayOwn.has(cluster));
  if (extra.length > 0) throw new Error(`${name} owns clusters ${extra.join(',')} it never wrote, inherited or was given`);
  return owned;
}

/** set_parent: valid for a thin volume and a snapshot of its size that does not depend on it. */
export async function setParent(ctx: Context, name: string, parentName: string): Promise<string> {
  const volume = ctx.model.volume(name);
  const parent = ctx.model.volume(parentName);
  const thin = ctx.listing.get(name)?.is_thin_provisioned ?? false;
  const cycle = ctx.model.chain(parentName).some((ancestor) => ancestor.name === name);
  const valid = thin && parent.snapshot && parent.bytes.length === volume.bytes.length && !cycle && volume.parent !== parentName;
  const owned = await ownedClusters(ctx, name);
  const answer = await ctx.node.call('bdev_lvol_set_parent', { lvol_name: `${lvsName}/${name}`, parent_name: `${lvsName}/${parentName}` });
  const what = `set_parent ${name} → ${parentName} (owns ${owned.size}/${ctx.model.clusterCount(volume)})`;
  const outcome = expectAnswer(ctx, what, answer, valid ? ['ok'] : ['EINVAL', 'EEXIST']);
  if (answer.ok) {
    ctx.model.setParent(name, parentName, owned);
    count(ctx, 'set_parent');
  } else if (crashed(ctx)) {
    ctx.resolvers.push((listing) => listing.get(name)?.parent === parentName && ctx.model.setParent(name, parentName, owned));
  }
  return `${what} → ${outcome}`;
}

/** The checksum the model expects: CRC-64/GO-ISO chained over the clusters the snapshot owns. */
function expectedChecksums(ctx: Context, name: string, owned: ReadonlySet<number>): { whole: bigint; perCluster: bigint[] } {
  const volume = ctx.model.volume(name);
  const clusterBytes = ctx.model.clusterBytes;
  let whole = 0n;
  const perCluster: bigint[] = [];
  for (let cluster = 0; cluster < volume.bytes.length / clusterBytes; cluster++) {
    const bytes = volume.bytes.subarray(cluster * clusterBytes, (cluster + 1) * clusterBytes);
    perCluster.push(owned.has(cluster) ? crc64GoIso(bytes) : 0n);
    if (owned.has(cluster)) whole = crc64GoIso(bytes, whole);
  }
  return { whole, perCluster };
}

/**
 * Registers a snapshot's checksum (whole or per cluster), optionally stopping it at once and
 * resuming it, and compares the stored value with one computed here from the model's bytes.
 */
export async function checksum(ctx: Context, name: string, mode: 'whole' | 'range', stopAndResume: boolean): Promise<string> {
  const owned = await ownedClusters(ctx, name);
  const expected = expectedChecksums(ctx, name, owned);
  const method = mode === 'whole' ? 'bdev_lvol_register_snapshot_checksum' : 'bdev_lvol_register_snapshot_range_checksums';
  const registered = ctx.node.call(method, { name: `${lvsName}/${name}` });
  let how = 'ran through';
  if (stopAndResume) {
    const stop = await ctx.node.call('bdev_lvol_stop_snapshot_checksum', { name: `${lvsName}/${name}` });
    const first = await registered;
    if (stop.ok) {
      if (first.ok || first.errno !== 'EINTR') throw new Error(`checksum ${name}: stop answered true but register answered ${JSON.stringify(first)}`);
      await ctx.node.must(method, { name: `${lvsName}/${name}`, resume: true });
      how = 'stopped, resumed';
    } else if (stop.errno !== 'ESRCH' || !first.ok) {
      throw new Error(`checksum ${name}: stop answered ${stop.errno}, register ${JSON.stringify(first)}`);
    } else {
      how = 'finished before the stop';
    }
  } else {
    const first = await registered;
    if (!first.ok) throw new Error(`checksum ${name} refused: ${first.errno} ${first.message}`);
  }
  const { checksum: stored } = await ctx.node.must<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name: `${lvsName}/${name}` });
  if (BigInt(stored) !== expected.whole) throw new Error(`checksum of ${name} is ${stored}, the model's bytes give ${expected.whole} (owned ${[...owned].join(',')})`);
  if (mode === 'range') {
    const range = await ctx.node.must<Array<{ cluster_index: number; checksum: bigint }>>('bdev_lvol_get_snapshot_range_checksums', {
      name: `${lvsName}/${name}`,
      cluster_start_index: 0,
      cluster_count: expected.perCluster.length,
    });
    for (const { cluster_index: cluster, checksum: value } of range) {
      if (BigInt(value) !== expected.perCluster[cluster]) throw new Error(`range checksum of ${name} cluster ${cluster} is ${value}, expected ${expected.perCluster[cluster]}`);
    }
  }
  count(ctx, `checksum ${mode}`);
  return `checksum ${mode} ${name} (${how}) → matches ${expected.whole}`;
}
