// The torture test's random workload: which step comes next, biased toward what has broken before
// (resizes within snapshot chains, merges, thick creates after crashes, a nearly full lvstore).
import {
  type Context,
  type Step,
  checksum,
  clone,
  copyUp,
  crash,
  crashDuring,
  createLvol,
  deleteLvol,
  mibBytes,
  nbdBurst,
  nbdFlush,
  nbdUnaligned,
  nbdWrite,
  pattern,
  resize,
  setParent,
  snapshot,
  snapshotUnderWrites,
} from './actions.ts';
import type { VolumeModel } from './model.ts';
import { blockBytes } from './model.ts';

const volumesMax = 9;
const sizeMibMax = 4;

function int(ctx: Context, below: number): number {
  return Math.floor(ctx.next() * below);
}

function pick<T>(ctx: Context, items: readonly T[]): T {
  return items[int(ctx, items.length)]!;
}

function chance(ctx: Context, probability: number): boolean {
  return ctx.next() < probability;
}

/** Names are never reused in a run: a volume that comes back after a crash is told apart. */
export function freshName(ctx: Context, prefix: string): string {
  return `${prefix}${++ctx.names}`;
}

function writable(ctx: Context): VolumeModel[] {
  return [...ctx.model.volumes.values()].filter((volume) => !volume.snapshot);
}

function snapshots(ctx: Context): VolumeModel[] {
  return [...ctx.model.volumes.values()].filter((volume) => volume.snapshot);
}

/** A range of a volume: whole clusters, 4 KiB pages, 512-byte blocks, or a large run (ENOSPC bait). */
function randomRange(ctx: Context, volume: VolumeModel): { offsetBytes: number; lengthBytes: number } {
  const sizeBytes = volume.bytes.length;
  const clusterBytes = ctx.model.clusterBytes;
  const shape = ctx.next();
  const grain = shape < 0.3 ? clusterBytes : shape < 0.6 ? 4096 : shape < 0.85 ? blockBytes : clusterBytes;
  const units = sizeBytes / grain;
  const maxUnits = shape < 0.3 ? 8 : shape < 0.6 ? 16 : shape < 0.85 ? 8 : units;
  const offsetUnits = shape >= 0.85 ? int(ctx, Math.max(1, units / 2)) : int(ctx, units);
  const lengthUnits = 1 + int(ctx, Math.min(maxUnits, units - offsetUnits));
  return { offsetBytes: offsetUnits * grain, lengthBytes: lengthUnits * grain };
}

async function randomWrite(ctx: Context): Promise<string> {
  const volume = pick(ctx, writable(ctx));
  const { offsetBytes, lengthBytes } = randomRange(ctx, volume);
  const roll = ctx.next();
  const fua = chance(ctx, 0.3);
  if (roll < 0.8) return nbdWrite(ctx, volume.name, 'write', offsetBytes, pattern(ctx, lengthBytes), fua);
  if (roll < 0.9) return nbdWrite(ctx, volume.name, 'zeroes', offsetBytes, Buffer.alloc(lengthBytes), fua);
  return nbdWrite(ctx, volume.name, 'trim', offsetBytes, Buffer.alloc(lengthBytes), false);
}

async function randomBurst(ctx: Context): Promise<string> {
  const writes: Array<{ name: string; offsetBytes: number; data: Buffer; fua: boolean }> = [];
  for (let attempt = 0; attempt < 6; attempt++) {
    const volume = pick(ctx, writable(ctx));
    const { offsetBytes, lengthBytes } = randomRange(ctx, volume);
    const overlaps = writes.some((other) => other.name === volume.name && offsetBytes < other.offsetBytes + other.data.length && other.offsetBytes < offsetBytes + lengthBytes);
    if (!overlaps) writes.push({ name: volume.name, offsetBytes, data: pattern(ctx, lengthBytes), fua: chance(ctx, 0.2) });
  }
  return nbdBurst(ctx, writes);
}

/**
 * A thick lvol as large as the free space allows (after a crash: all of it, so it gets whatever
 * clusters a cut delete or allocation left behind).
 */
export async function thickCreateIntoFreeSpace(ctx: Context, all = false): Promise<string> {
  const clustersPerMib = mibBytes / ctx.model.clusterBytes;
  const sizeMib = Math.max(1, Math.min(all ? Number.POSITIVE_INFINITY : sizeMibMax, Math.floor(ctx.freeClusters / clustersPerMib)));
  return createLvol(ctx, freshName(ctx, 't'), sizeMib, true, chance(ctx, 0.5) ? 'unmap' : 'write_zeroes');
}

async function randomDelete(ctx: Context): Promise<string> {
  const all = [...ctx.model.volumes.values()];
  const merging = snapshots(ctx).filter((volume) => ctx.model.children(volume.name).length === 1);
  // Often the newest such snapshot: the usual "delete my last snapshot", merging into a volume
  // that may have been resized since.
  const newest = merging.at(-1);
  const target = newest && chance(ctx, 0.6) ? (chance(ctx, 0.5) ? newest : pick(ctx, merging)) : pick(ctx, all);
  return deleteLvol(ctx, target.name);
}

async function randomResize(ctx: Context, volume = pick(ctx, writable(ctx))): Promise<string> {
  const oldMib = volume.bytes.length / mibBytes;
  // Shrinking within a snapshot chain, then growing again, is where reads past an old size go wrong.
  const sizeMib = oldMib > 1 && chance(ctx, 0.5) ? 1 + int(ctx, oldMib - 1) : 1 + int(ctx, sizeMibMax);
  return resize(ctx, volume.name, sizeMib);
}

/** Writes to one volume in flight while it is snapshotted (ranges that do not overlap). */
async function randomSnapshotUnderWrites(ctx: Context): Promise<string> {
  const volume = pick(ctx, writable(ctx));
  const writes: Array<{ offsetBytes: number; data: Buffer; fua: boolean }> = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    const { offsetBytes, lengthBytes } = randomRange(ctx, volume);
    if (!writes.some((other) => offsetBytes < other.offsetBytes + other.data.length && other.offsetBytes < offsetBytes + lengthBytes)) {
      writes.push({ offsetBytes, data: pattern(ctx, lengthBytes), fua: chance(ctx, 0.2) });
    }
  }
  return snapshotUnderWrites(ctx, volume.name, freshName(ctx, 's'), writes);
}

/**
 * Snapshot, then resize: repeated on one volume this builds chains of snapshots of different
 * sizes, where a merge must keep the zeros a volume read past a smaller parent.
 */
async function snapshotAndResize(ctx: Context): Promise<string> {
  const volume = pick(ctx, writable(ctx));
  const taken = await snapshot(ctx, volume.name, freshName(ctx, 's'));
  return `${taken}; ${await randomResize(ctx, volume)}`;
}

async function randomSetParent(ctx: Context): Promise<string> {
  const volume = pick(ctx, writable(ctx));
  const sameSize = snapshots(ctx).filter((candidate) => candidate.bytes.length === volume.bytes.length && candidate.name !== volume.parent);
  const parent = sameSize.length > 0 && chance(ctx, 0.85) ? pick(ctx, sameSize) : pick(ctx, snapshots(ctx));
  return setParent(ctx, volume.name, parent.name);
}

/** One step among those that change what a crash can cut, with the crash set at its Nth write. */
async function randomCrashDuring(ctx: Context): Promise<Step> {
  const kind = chance(ctx, 0.5) ? 'process' : 'power';
  // Mostly early: a delete's clearing and an allocation's data come in its first few writes.
  const writeNumber = 1 + Math.floor(ctx.next() ** 2 * 30);
  const all = [...ctx.model.volumes.values()];
  const roll = ctx.next();
  if (all.length > 0 && roll < 0.4) {
    // The biggest owner first: a delete that frees many clusters is cut while it clears them.
    const biggest = [...all].sort((a, b) => b.bytes.length - a.bytes.length)[0]!;
    const target = chance(ctx, 0.6) ? biggest.name : pick(ctx, all).name;
    return crashDuring(ctx, writeNumber, kind, () => deleteLvol(ctx, target));
  }
  if (writable(ctx).length > 0 && roll < 0.75) return crashDuring(ctx, writeNumber, kind, () => (chance(ctx, 0.5) ? randomWrite(ctx) : randomBurst(ctx)));
  return crashDuring(ctx, writeNumber, kind, () => randomMetadataStep(ctx));
}

async function randomMetadataStep(ctx: Context): Promise<string> {
  const options: Array<() => Promise<string>> = [() => thickCreateIntoFreeSpace(ctx)];
  if (writable(ctx).length > 0) options.push(() => snapshot(ctx, pick(ctx, writable(ctx)).name, freshName(ctx, 's')), () => randomResize(ctx));
  if (snapshots(ctx).length > 0) options.push(() => clone(ctx, pick(ctx, snapshots(ctx)).name, freshName(ctx, 'c')));
  const withParent = [...ctx.model.volumes.values()].filter((volume) => volume.parent !== null);
  if (withParent.length > 0) options.push(() => copyUp(ctx, pick(ctx, withParent).name, chance(ctx, 0.5) ? 'inflate' : 'decouple'));
  if (writable(ctx).length > 0 && snapshots(ctx).length > 0) options.push(() => randomSetParent(ctx));
  return pick(ctx, options)();
}

type Choice = [weight: number, run: () => Promise<string | Step>];

function choices(ctx: Context): Choice[] {
  const volumes = ctx.model.volumes.size;
  const hasWritable = writable(ctx).length > 0;
  const hasSnapshots = snapshots(ctx).length > 0;
  const full = ctx.totalClusters > 0 && ctx.freeClusters / ctx.totalClusters < 0.15;
  const room = volumes < volumesMax;
  const withParent = [...ctx.model.volumes.values()].filter((volume) => volume.parent !== null);
  return [
    [hasWritable ? 30 : 0, () => randomWrite(ctx)],
    [hasWritable ? 5 : 0, () => randomBurst(ctx)],
    [hasWritable ? 6 : 0, () => nbdFlush(ctx, pick(ctx, writable(ctx)).name)],
    [hasWritable ? 1 : 0, () => unaligned(ctx)],
    [volumes === 0 ? 50 : room ? 4 : 0, () => createLvol(ctx, freshName(ctx, 'v'), 1 + int(ctx, sizeMibMax - 1), false, chance(ctx, 0.5) ? 'unmap' : 'write_zeroes')],
    [room ? 3 : 0, () => thickCreateIntoFreeSpace(ctx)],
    [hasWritable && room ? 8 : 0, () => snapshot(ctx, pick(ctx, writable(ctx)).name, freshName(ctx, 's'))],
    [hasWritable && room ? 6 : 0, () => snapshotAndResize(ctx)],
    [hasWritable && room ? 3 : 0, () => randomSnapshotUnderWrites(ctx)],
    [hasSnapshots && room ? 4 : 0, () => clone(ctx, pick(ctx, snapshots(ctx)).name, freshName(ctx, 'c'))],
    [volumes > 0 ? 4 + (room ? 0 : 10) + (full ? 8 : 0) : 0, () => randomDelete(ctx)],
    [hasWritable ? 9 : 0, () => randomResize(ctx)],
    [withParent.length > 0 ? 4 : 0, () => copyUp(ctx, pick(ctx, withParent).name, chance(ctx, 0.5) ? 'inflate' : 'decouple')],
    [hasWritable && hasSnapshots ? 4 : 0, () => randomSetParent(ctx)],
    [hasSnapshots ? 2 : 0, () => checksum(ctx, pick(ctx, snapshots(ctx)).name, chance(ctx, 0.5) ? 'whole' : 'range', chance(ctx, 0.5))],
    [3, () => crashBetweenSteps(ctx)],
    [5, () => randomCrashDuring(ctx)],
  ];
}

async function unaligned(ctx: Context): Promise<string> {
  const volume = pick(ctx, writable(ctx));
  const offsetBytes = int(ctx, volume.bytes.length / blockBytes - 1) * blockBytes + 1 + int(ctx, blockBytes - 1);
  return nbdUnaligned(ctx, volume.name, offsetBytes, blockBytes);
}

async function crashBetweenSteps(ctx: Context): Promise<Step> {
  const step = await crash(ctx, chance(ctx, 0.5) ? 'process' : 'power');
  return { ...step, description: `${step.description} between steps` };
}

/** Runs one random step; after a crash, often a thick create next (it must read zeros). */
export async function randomStep(ctx: Context, afterCrash: boolean): Promise<Step> {
  if (afterCrash && chance(ctx, 0.75) && ctx.model.volumes.size < volumesMax + 1) {
    return { description: await thickCreateIntoFreeSpace(ctx, true), check: 'step' };
  }
  const weighted = choices(ctx).filter(([weight]) => weight > 0);
  const total = weighted.reduce((sum, [weight]) => sum + weight, 0);
  let roll = ctx.next() * total;
  for (const [weight, run] of weighted) {
    roll -= weight;
    if (roll < 0) {
      const outcome = await run();
      return typeof outcome === 'string' ? { description: outcome, check: 'step' } : outcome;
    }
  }
  throw new Error('no step chosen');
}
