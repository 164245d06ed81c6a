// Goal: nothing a client wrote is ever changed, leaked or lost — a seeded, model-based test of the
// data path (NBD and RPCs on a real node, kill -9 and power loss with restarts) against a plain
// byte model the test alone writes (issue 19, "what must be true" 6 and 7a).
//
// The contract the model encodes, per 512-byte block of every volume and snapshot:
// - WRITE sets bytes, WRITE_ZEROES zeroes them. TRIM leaves them unspecified until written again,
//   but only as their previous content, the parent's content, or zeros — never another volume's
//   bytes, never garbage (every write carries its own random pattern, so either is detectable).
// - snapshot S of V: S reads as V did; V is unchanged. clone C of S: C reads as S. Nothing else
//   changes. Delete: the volume is gone; a snapshot with one clone merges into it; every
//   remaining volume reads exactly as before. Inflate, decouple: the volume's bytes stay.
// - resize from old to new: bytes below min(old, new) stay, bytes above the old size read zeros
//   (a clone grown past its parent, a volume shrunk and grown again).
// - set_parent(V, S): clusters V owns (bdev_lvol_get_fragmap just before, which must include every
//   cluster V wrote since it last got a parent or was snapshotted) keep their bytes; the rest read S's.
// - A checksum equals CRC-64/GO-ISO chained over the clusters the snapshot owns, computed here.
// - Metadata RPCs are durable when acknowledged. Data is durable after an acknowledged FLUSH (for
//   everything the flushed volume reads), or alone when written with FUA. After kill -9 every
//   acknowledged byte is there; after a power loss every flushed or FUA'd byte is, and every other
//   block holds its old content or one written since the last flush. A request or RPC a crash cut
//   left the old state or the new one.
// - A new thick lvol reads zeros, crash or not; the clusters in use are exactly those the lvols
//   own (no leak after a crash). A write refused with ENOSPC changes nothing.
//
// `npm test` runs a few short seeds; LVNODE_TORTURE_MINUTES=N runs seeds (from 1000, or from
// LVNODE_TORTURE_SEED) for N minutes; LVNODE_TORTURE_SEED=S alone reruns one seed, for
// LVNODE_TORTURE_STEPS steps (default 120). A failure prints the seed and every step before it.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Context,
  type Step,
  clone,
  crash,
  crashDuring,
  createLvol,
  deleteLvol,
  mibBytes,
  nbdFlush,
  nbdWrite,
  newContext as newTortureContext,
  pattern,
  resize,
  snapshot,
} from './torture/actions.ts';
import { checkEverything } from './torture/checks.ts';
import { crc64GoIso } from './torture/crc64.ts';
import { randomStep } from './torture/workload.ts';

// 8 MiB: 1 MiB of metadata and 56 data clusters of 128 KiB, so volumes of 1-4 MiB fill it often.
const deviceBytes = 8 * mibBytes;
const clusterBytes = 128 * 1024;
const stepsPerShortSeed = 120;

const logLevel = process.env.LVNODE_LOG_LEVEL;
// Crashes make the dying node log errors, as it should; here they are expected.
beforeAll(() => void (process.env.LVNODE_LOG_LEVEL = 'silent'));
afterAll(() => void (logLevel === undefined ? delete process.env.LVNODE_LOG_LEVEL : (process.env.LVNODE_LOG_LEVEL = logLevel)));

function newContext(seed: number): Promise<Context> {
  return newTortureContext(seed, { deviceBytes, clusterBytes });
}

/** Runs a seed for `steps` steps or until `deadlineMs`; throws with the seed and the steps taken. */
async function runSeed(seed: number, limits: { steps: number; deadlineMs?: number }): Promise<Record<string, number>> {
  const ctx = await newContext(seed);
  const steps: string[] = [];
  let check: 'step' | 'processCrash' | 'powerLoss' = 'step';
  let phase = 'in the check before the first step';
  try {
    await checkEverything(ctx, 'step');
    while (steps.length < limits.steps && (limits.deadlineMs === undefined || Date.now() < limits.deadlineMs)) {
      phase = `during step #${steps.length + 1}`;
      const step = await randomStep(ctx, check !== 'step');
      steps.push(`#${steps.length + 1} ${step.description}`);
      check = step.check;
      phase = `in the check after step #${steps.length}`;
      await checkEverything(ctx, check);
    }
    return ctx.counts;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(
      `torture seed ${seed} failed ${phase}: ${message}\n` +
        `rerun: LVNODE_TORTURE_SEED=${seed} npx vitest run test/integration/torture.test.ts\nsteps:\n${steps.join('\n')}`,
      { cause: error },
    );
  } finally {
    await ctx.node.close();
  }
}

type ScriptStep = (ctx: Context) => Promise<string | Step>;

/** Runs fixed steps with every check after each; a failure names the steps taken. */
async function runScript(seed: number, script: ScriptStep[]): Promise<Context> {
  const ctx = await newContext(seed);
  const steps: string[] = [];
  try {
    for (const run of script) {
      const outcome = await run(ctx);
      const step = typeof outcome === 'string' ? { description: outcome, check: 'step' as const } : outcome;
      steps.push(step.description);
      await checkEverything(ctx, step.check);
    }
    return ctx;
  } catch (error) {
    throw new Error(`${error instanceof Error ? error.message : String(error)}\nsteps:\n${steps.join('\n')}`, { cause: error });
  } finally {
    await ctx.node.close();
  }
}

describe("the test's own CRC-64/GO-ISO (the checksum oracle)", () => {
  it('gives the known answers of test/fixtures/crc64.json, single and chained', () => {
    type Part = { ascii?: string; byte?: number; count?: number };
    const fixture = JSON.parse(readFileSync(new URL('../fixtures/crc64.json', import.meta.url), 'utf8')) as {
      single: Array<Part & { crc: string }>;
      chained: Array<{ parts: Part[]; crc: string }>;
    };
    const bytesOf = (part: Part) => (part.ascii !== undefined ? Buffer.from(part.ascii, 'ascii') : Buffer.alloc(part.count!, part.byte!));
    for (const known of fixture.single) expect(crc64GoIso(bytesOf(known)), JSON.stringify(known)).toBe(BigInt(known.crc));
    for (const known of fixture.chained) {
      expect(known.parts.reduce((seed, part) => crc64GoIso(bytesOf(part), seed), 0n)).toBe(BigInt(known.crc));
    }
  });
});

const minutes = Number(process.env.LVNODE_TORTURE_MINUTES ?? 0);
const oneSeed = process.env.LVNODE_TORTURE_SEED;

describe('the data path against a byte model (seeded random workload with crashes)', () => {
  const seeds = oneSeed ? [Number(oneSeed)] : [1, 2, 3, 4];
  it.skipIf(minutes > 0).each(seeds)('seed %i: every byte of every volume and snapshot is what the model says, after every step and restart', async (seed) => {
    const counts = await runSeed(seed, { steps: oneSeed ? Number(process.env.LVNODE_TORTURE_STEPS ?? stepsPerShortSeed) : stepsPerShortSeed });
    if (process.env.LVNODE_TORTURE_VERBOSE) console.log(`seed ${seed}: ${JSON.stringify(counts)}`);
    // A run that never wrote, merged or crashed proved nothing.
    expect(counts.write ?? 0, JSON.stringify(counts)).toBeGreaterThan(0);
    expect((counts['kill -9'] ?? 0) + (counts['power loss'] ?? 0), JSON.stringify(counts)).toBeGreaterThan(0);
  });

  it.runIf(minutes > 0)(`long run: seeds for ${minutes} minute(s)`, async () => {
    const deadlineMs = Date.now() + minutes * 60_000;
    const totals: Record<string, number> = {};
    for (let seed = Number(oneSeed ?? 1000); Date.now() < deadlineMs; seed++) {
      const counts = await runSeed(seed, { steps: 400, deadlineMs });
      for (const [what, value] of Object.entries(counts)) totals[what] = (totals[what] ?? 0) + value;
      console.log(`torture seed ${seed} passed: ${JSON.stringify(counts)}`);
    }
    console.log(`torture totals: ${JSON.stringify(totals)}`);
  }, minutes * 60_000 + 120_000);
});

describe('known sequences (issue 19), checked against the same model', () => {
  it('a merge keeps the zeros a volume read past its smaller parent (A → S1, shrink, → S2, grow, delete S2)', async () => {
    await runScript(101, [
      (ctx) => createLvol(ctx, 'a', 4, false, 'unmap'),
      (ctx) => nbdWrite(ctx, 'a', 'write', 0, pattern(ctx, 4 * mibBytes), false),
      (ctx) => snapshot(ctx, 'a', 's1'),
      (ctx) => resize(ctx, 'a', 1),
      (ctx) => snapshot(ctx, 'a', 's2'),
      (ctx) => resize(ctx, 'a', 4),
      (ctx) => deleteLvol(ctx, 's2'),
    ]);
  });

  it('a merge keeps the zeros of a parent that was shrunk and grown before it was snapshotted', async () => {
    await runScript(102, [
      (ctx) => createLvol(ctx, 'a', 4, false, 'unmap'),
      (ctx) => nbdWrite(ctx, 'a', 'write', 0, pattern(ctx, 4 * mibBytes), false),
      (ctx) => snapshot(ctx, 'a', 's1'),
      (ctx) => resize(ctx, 'a', 1),
      (ctx) => resize(ctx, 'a', 4),
      (ctx) => snapshot(ctx, 'a', 's2'),
      (ctx) => deleteLvol(ctx, 's2'),
      (ctx) => deleteLvol(ctx, 's1'),
    ]);
  });

  it('a clone shrunk then grown reads zeros above its smaller size, also after its parent merges into it', async () => {
    await runScript(103, [
      (ctx) => createLvol(ctx, 'a', 4, false, 'write_zeroes'),
      (ctx) => nbdWrite(ctx, 'a', 'write', 0, pattern(ctx, 4 * mibBytes), true),
      (ctx) => snapshot(ctx, 'a', 's'),
      (ctx) => deleteLvol(ctx, 'a'),
      (ctx) => clone(ctx, 's', 'c'),
      (ctx) => resize(ctx, 'c', 1),
      (ctx) => resize(ctx, 'c', 4),
      (ctx) => nbdWrite(ctx, 'c', 'write', 3 * mibBytes, pattern(ctx, 128 * 1024), false),
      (ctx) => deleteLvol(ctx, 's'),
    ]);
  });

  it.each([
    ['kill -9', 'process'],
    ['power loss', 'power'],
  ] as const)('a thick lvol created after a %s in the middle of a big delete reads zeros, and no cluster leaks', async (_name, kind) => {
    // The crash lands at each of the delete's first device writes in turn (its commit, then the clearing).
    for (let writeNumber = 1; writeNumber <= 8; writeNumber++) {
      const ctx = await runScript(110 + writeNumber, [
        (ctx) => createLvol(ctx, 'big', 6, true, 'unmap'),
        (ctx) => nbdWrite(ctx, 'big', 'write', 0, pattern(ctx, 6 * mibBytes), false),
        (ctx) => nbdFlush(ctx, 'big'),
        (ctx) => crashDuring(ctx, writeNumber, kind, () => deleteLvol(ctx, 'big')),
        async (ctx) => (ctx.model.volumes.has('big') ? deleteLvol(ctx, 'big') : 'big is gone'),
        (ctx) => createLvol(ctx, 'fresh', 6, true, 'unmap'),
      ]);
      expect(ctx.model.volumes.has('fresh')).toBe(true);
    }
  });

  it.each([
    ['kill -9', 'process'],
    ['power loss', 'power'],
  ] as const)('a first write whose allocation never commits (%s) leaves no bytes for the next thick lvol', async (_name, kind) => {
    for (let writeNumber = 1; writeNumber <= 4; writeNumber++) {
      const ctx = await runScript(120 + writeNumber, [
        (ctx) => createLvol(ctx, 'thin', 6, false, 'unmap'),
        (ctx) => crashDuring(ctx, writeNumber, kind, () => nbdWrite(ctx, 'thin', 'write', 0, pattern(ctx, 6 * mibBytes), false)),
        (ctx) => deleteLvol(ctx, 'thin'),
        (ctx) => createLvol(ctx, 'fresh', 6, true, 'unmap'),
      ]);
      expect(ctx.model.volumes.has('fresh')).toBe(true);
    }
  });

  it('a write refused with ENOSPC changes nothing (9 clusters needed, 7 free)', async () => {
    const clusterBytesOf = 128 * 1024;
    const ctx = await runScript(130, [
      // 56 data clusters: 48 to a thick lvol, one to a first write, 7 left.
      (ctx) => createLvol(ctx, 'thick', 6, true, 'unmap'),
      (ctx) => createLvol(ctx, 'thin', 2, false, 'unmap'),
      (ctx) => nbdWrite(ctx, 'thin', 'write', 0, pattern(ctx, clusterBytesOf), false),
      async (ctx) => {
        expect(ctx.freeClusters, 'the set-up leaves 7 free clusters').toBe(7);
        return 'free clusters: 7';
      },
      (ctx) => nbdWrite(ctx, 'thin', 'write', clusterBytesOf, pattern(ctx, 9 * clusterBytesOf), false),
      (ctx) => nbdWrite(ctx, 'thin', 'write', clusterBytesOf - 4096, pattern(ctx, 9 * clusterBytesOf), true),
      (ctx) => nbdWrite(ctx, 'thin', 'zeroes', clusterBytesOf, Buffer.alloc(9 * clusterBytesOf), false),
    ]);
    expect(ctx.counts['write ENOSPC']).toBe(2);
    expect(ctx.freeClusters).toBe(7);
  });
});
