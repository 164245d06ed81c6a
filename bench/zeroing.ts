// The price of clearing one 4 MiB cluster on a file bdev: the addon's fallocate (hole punch, and zero-range that keeps
// the blocks) against writing zeros.
//
// Each repeat first fills the cluster with fresh data and makes it durable (a cluster being handed
// on held someone's bytes), then times FileDevice.discard of the cluster and the fdatasync that
// makes the clearing durable (what "zero, then commit the journal record" waits for). The fill is
// timed too, as "refill": after a hole punch the next owner's first write allocates blocks again,
// a price the hole punch moves to the next write rather than removes. Both
// sides run on their own file in the same directory, alternating which goes first, so every ratio
// compares figures of this one run. Also shown: the bytes this process sent to storage for the
// clear (/proc/self/io write_bytes, Linux only), and what the cluster still occupies on disk.
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { FileDevice, type ZeroRangeCall, nativeZeroRange } from '../src/device/fileDevice.ts';
import { benchClusterBytes, envInteger, fixed, median, printTable, quantile } from './support.ts';

const clusterCount = 8;
const statBlockBytes = 512;

interface Side {
  readonly label: string;
  readonly device: FileDevice;
  readonly path: string;
  readonly clearMs: number[];
  readonly durableMs: number[];
  readonly storageBytes: number[];
  /** Writing the whole cluster + fdatasync, into the range the previous repeat cleared. */
  readonly refillMs: number[];
  readonly allocatedBytes: number[];
}

/** Bytes this process has caused to be sent to storage so far, or undefined where /proc/self/io is missing. */
function storageWriteBytes(): number | undefined {
  try {
    const line = readFileSync('/proc/self/io', 'utf8')
      .split('\n')
      .find((text) => text.startsWith('write_bytes:'));
    return line === undefined ? undefined : Number(line.split(':')[1]);
  } catch {
    return undefined;
  }
}

async function openSide(label: string, directory: string, zeroRange: ZeroRangeCall | null): Promise<Side> {
  const path = join(directory, `${label.replace(/\W+/g, '-')}.img`);
  await FileDevice.createSparse(path, clusterCount * benchClusterBytes);
  const device = await FileDevice.open(path, 512, { zeroRange });
  return { label, device, path, clearMs: [], durableMs: [], storageBytes: [], refillMs: [], allocatedBytes: [] };
}

/** Fills the cluster with data durably, then times its clearing and the flush after it. */
async function measureOnce(side: Side, clusterIndex: number, data: Buffer): Promise<void> {
  const offsetBytes = clusterIndex * benchClusterBytes;
  const refillStartMs = performance.now();
  await side.device.write(offsetBytes, data);
  await side.device.flush();
  side.refillMs.push(performance.now() - refillStartMs);
  const allocatedBefore = (await stat(side.path)).blocks * statBlockBytes;
  const writtenBefore = storageWriteBytes();
  const startMs = performance.now();
  await side.device.discard(offsetBytes, benchClusterBytes);
  const clearedMs = performance.now();
  await side.device.flush();
  const durableMs = performance.now();
  const writtenAfter = storageWriteBytes();
  side.clearMs.push(clearedMs - startMs);
  side.durableMs.push(durableMs - startMs);
  if (writtenBefore !== undefined && writtenAfter !== undefined) side.storageBytes.push(writtenAfter - writtenBefore);
  // What the cleared cluster still holds on disk: the file's allocation dropped by this much less than a cluster.
  side.allocatedBytes.push(Math.max(0, benchClusterBytes - (allocatedBefore - (await stat(side.path)).blocks * statBlockBytes)));
}

export async function zeroing(): Promise<void> {
  const repeats = envInteger('BENCH_ZEROING_REPEATS', 15);
  const clusterMib = benchClusterBytes / (1024 * 1024);
  console.log(`\n== zeroing a ${clusterMib} MiB cluster of a file bdev: fallocate (addon) vs writing zeros; median of ${repeats} ==`);
  if (!nativeZeroRange) {
    console.log('  skipped: the native addon is not built (writing zeros is the only way here)');
    return;
  }
  const directory = await mkdtemp(join(tmpdir(), 'lvnode-bench-zeroing-'));
  const sides: Side[] = [];
  try {
    const zeroRange = nativeZeroRange;
    sides.push(await openSide('fallocate punch-hole', directory, zeroRange));
    // Blocks kept (unwritten extents): what a thick lvol would want; FileDevice.discard punches.
    sides.push(await openSide('fallocate zero-range', directory, (fd, offset, length, done) => zeroRange(fd, offset, length, done, true)));
    sides.push(await openSide('write zeros (fallback)', directory, null));
    const data = Buffer.allocUnsafe(benchClusterBytes);
    // The first pass over the clusters warms up (extents allocated, code paths): dropped below.
    for (let repeat = 0; repeat < repeats + clusterCount; repeat++) {
      randomFillSync(data);
      const order = repeat % 2 === 0 ? sides : [...sides].reverse();
      for (const side of order) await measureOnce(side, repeat % clusterCount, data);
    }
    for (const side of sides) {
      for (const sample of [side.clearMs, side.durableMs, side.storageBytes, side.refillMs, side.allocatedBytes]) sample.splice(0, clusterCount);
    }
    report(sides);
  } finally {
    for (const side of sides) await side.device.close();
    await rm(directory, { recursive: true, force: true });
  }
}

function report(sides: readonly Side[]): void {
  const mibText = (bytes: readonly number[]) => (bytes.length === 0 ? 'n/a' : fixed(median(bytes) / (1024 * 1024), 2));
  // Median with the middle half of the repeats beside it: the spread says how far to trust a ratio.
  const msText = (ms: readonly number[]) => `${fixed(median(ms), 2)} (${fixed(quantile(ms, 0.25), 2)}-${fixed(quantile(ms, 0.75), 2)})`;
  printTable(
    ['method', 'clear ms', 'clear + fdatasync ms', 'MiB sent to storage', 'MiB still allocated', 'refill + fdatasync ms'],
    sides.map((side) => [
      side.label,
      msText(side.clearMs),
      msText(side.durableMs),
      mibText(side.storageBytes),
      mibText(side.allocatedBytes),
      msText(side.refillMs),
    ]),
  );
  const writes = sides.at(-1)!;
  for (const fallocate of sides.slice(0, -1)) {
    const ratio = (pick: (side: Side) => readonly number[]) => fixed(median(pick(writes)) / median(pick(fallocate)), 2);
    console.log(
      `  write zeros / ${fallocate.label}, same run: clear ${ratio((side) => side.clearMs)}x, ` +
        `clear + fdatasync ${ratio((side) => side.durableMs)}x, refill + fdatasync ${ratio((side) => side.refillMs)}x`,
    );
  }
}
