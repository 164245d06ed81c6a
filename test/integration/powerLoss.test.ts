// Goal: FLUSH and FUA mean durable (issue 19, "what must be true" 6). Over NBD, writes then FLUSH,
// and FUA writes, then a power loss at a random point (between requests, or at the Nth device write
// with requests in flight): after the restart every write acknowledged before an acknowledged
// FLUSH, and every acknowledged FUA write, is there; every other block holds its old content or one
// written since the last flush — never garbage, never another volume's bytes. The writes go to a
// thick lvol, whose clusters it owns from the start: no allocation's journal flush makes them
// durable by the way, so a FLUSH that does nothing, or a FUA that is ignored, turns this red.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Context, crash, crashDuring, createLvol, nbdBurst, nbdFlush, nbdWrite, newContext, pattern } from './torture/actions.ts';
import { checkEverything } from './torture/checks.ts';

const layout = { deviceBytes: 8 * 1024 * 1024, clusterBytes: 128 * 1024 };
const diskBytes = 4 * 1024 * 1024;
const rounds = 12;

const logLevel = process.env.LVNODE_LOG_LEVEL;
beforeAll(() => void (process.env.LVNODE_LOG_LEVEL = 'silent'));
afterAll(() => void (logLevel === undefined ? delete process.env.LVNODE_LOG_LEVEL : (process.env.LVNODE_LOG_LEVEL = logLevel)));

/** A block-aligned range of the disk: 512 B to 64 KiB. */
function randomRange(ctx: Context): { offsetBytes: number; lengthBytes: number } {
  const lengthBytes = 512 * (1 + Math.floor(ctx.next() * 128));
  const offsetBytes = 512 * Math.floor(ctx.next() * ((diskBytes - lengthBytes) / 512 + 1));
  return { offsetBytes, lengthBytes };
}

async function writes(ctx: Context, count: number, fua: boolean, steps: string[]): Promise<void> {
  for (let index = 0; index < count; index++) {
    const { offsetBytes, lengthBytes } = randomRange(ctx);
    steps.push(await nbdWrite(ctx, 'disk', 'write', offsetBytes, pattern(ctx, lengthBytes), fua));
  }
}

/** The power goes between requests, or at a random device write while a burst of writes is in flight. */
async function powerLoss(ctx: Context, steps: string[]): Promise<void> {
  if (ctx.next() < 0.5) {
    steps.push((await crash(ctx, 'power')).description);
  } else {
    const burst = Array.from({ length: 4 }, (_unused, index) => ({
      name: 'disk',
      // Quarters of the disk: the burst's writes never overlap.
      offsetBytes: index * (diskBytes / 4) + 512 * Math.floor(ctx.next() * 64),
      data: pattern(ctx, 512 * (1 + Math.floor(ctx.next() * 64))),
      fua: ctx.next() < 0.5,
    }));
    steps.push((await crashDuring(ctx, 1 + Math.floor(ctx.next() * 6), 'power', () => nbdBurst(ctx, burst))).description);
  }
  await checkEverything(ctx, 'powerLoss');
}

/**
 * One round, then a power loss. Kinds alternate so neither guarantee hides behind the other (a FUA
 * write flushes the device, so FLUSH is tested by rounds with no FUA write after it, and FUA by
 * rounds with no FLUSH): writes, FLUSH, plain writes; FUA writes among plain ones; or both.
 */
async function round(ctx: Context, index: number, steps: string[]): Promise<void> {
  const kind = index % 3;
  if (kind !== 1) {
    await writes(ctx, 2 + Math.floor(ctx.next() * 6), false, steps);
    steps.push(await nbdFlush(ctx, 'disk'));
  }
  if (kind !== 0) await writes(ctx, 2 + Math.floor(ctx.next() * 4), true, steps);
  await writes(ctx, 1 + Math.floor(ctx.next() * 4), false, steps);
  await powerLoss(ctx, steps);
}

describe('FLUSH and FUA over NBD survive a power loss', () => {
  it.each([1, 2, 3])('seed %i: flushed and FUA writes are all there after the power returns; the rest old or new', async (seed) => {
    const ctx = await newContext(seed, layout);
    const steps: string[] = [];
    try {
      steps.push(await createLvol(ctx, 'disk', diskBytes / (1024 * 1024), true, 'unmap'));
      await checkEverything(ctx, 'step');
      for (let index = 0; index < rounds; index++) await round(ctx, index, steps);
    } catch (error) {
      throw new Error(`seed ${seed}: ${error instanceof Error ? error.message : String(error)}\nsteps:\n${steps.join('\n')}`, { cause: error });
    } finally {
      await ctx.node.close();
    }
    expect(ctx.counts['power loss']).toBe(rounds);
  });
});
