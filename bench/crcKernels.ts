// CRC-64 kernel throughput (native table/PCLMULQDQ/VPCLMULQDQ vs hash-wasm) and background pread+CRC vs plain fs reads.
//
// Every figure is the median of five runs with the min-max spread beside it, and each ratio compares
// sides measured in this same run, so machine-to-machine drift cancels out. The hot 4 MiB buffer
// (one SPDK cluster) mostly sits in L2/L3; 64 MiB does not, so it shows the memory-bound rate.
import { randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { crc64, crc64Combine } from '../src/checksum/crc64.ts';
import { type CrcKernel, nativeCrc, nativeCrcStatus } from '../src/checksum/native.ts';
import { fixed, median, printTable } from './support.ts';

const mib = 1024 * 1024;
const runs = 5;
// Each run repeats the CRC until it has taken about this long, so short buffers are timed reliably.
const runTargetMs = 80;
const hotBytes = 4 * mib;
const coldBytes = 64 * mib;
const fileBytes = 256 * mib;
const chunkBytes = 4 * mib;

interface Sample {
  /** GB/s of each run. */
  readonly rates: number[];
}

const gbps = (bytes: number, ms: number) => bytes / 1e9 / (ms / 1000);
const medianOf = (sample: Sample) => median(sample.rates);
const spreadOf = (sample: Sample) => `${fixed(Math.min(...sample.rates), 2)}-${fixed(Math.max(...sample.rates), 2)}`;

/** Times `crc` over `data`: one untimed call to warm up and calibrate, then `runs` runs of N calls. */
function measure(data: Uint8Array, crc: (data: Uint8Array) => bigint): Sample {
  let sink = 0n;
  const startMs = performance.now();
  sink ^= crc(data);
  const oneMs = Math.max(performance.now() - startMs, 0.001);
  const repeats = Math.max(1, Math.round(runTargetMs / oneMs));
  const rates: number[] = [];
  for (let run = 0; run < runs; run++) {
    const runStartMs = performance.now();
    for (let repeat = 0; repeat < repeats; repeat++) sink ^= crc(data);
    rates.push(gbps(data.length * repeats, performance.now() - runStartMs));
  }
  // Keep the results observable so no call can be optimised away.
  if (sink === -1n) console.log('unreachable');
  return { rates };
}

function kernelTable(): void {
  const hot = new Uint8Array(hotBytes);
  const cold = new Uint8Array(coldBytes);
  randomFillSync(hot);
  randomFillSync(cold);
  const sides: Array<{ label: string; crc: (data: Uint8Array) => bigint }> = [];
  for (const kernel of nativeCrc?.kernels ?? []) {
    const label = `native ${kernel}${kernel === nativeCrc?.kernel ? ' (default)' : ''}`;
    sides.push({ label, crc: (data) => nativeCrc!.crc64With(kernel as CrcKernel, 0n, data) });
  }
  sides.push({ label: 'hash-wasm', crc: crc64 });
  // Same answers first: a fast wrong kernel is not a result.
  const expected = crc64(hot);
  for (const side of sides) {
    if (side.crc(hot) !== expected) throw new Error(`${side.label} disagrees with hash-wasm on the bench buffer`);
  }
  const results = sides.map((side) => ({ side, hot: measure(hot, side.crc), cold: measure(cold, side.crc) }));
  const wasm = results.at(-1)!;
  printTable(
    ['kernel', '4 MiB GB/s', 'spread', '× wasm', '64 MiB GB/s', 'spread', '× wasm'],
    results.map(({ side, hot: hotSample, cold: coldSample }) => [
      side.label,
      fixed(medianOf(hotSample), 2),
      spreadOf(hotSample),
      fixed(medianOf(hotSample) / medianOf(wasm.hot), 1),
      fixed(medianOf(coldSample), 2),
      spreadOf(coldSample),
      fixed(medianOf(coldSample) / medianOf(wasm.cold), 1),
    ]),
  );
}

async function writeBenchFile(path: string): Promise<void> {
  const chunk = Buffer.allocUnsafe(chunkBytes);
  randomFillSync(chunk);
  const handle = await open(path, 'w');
  try {
    for (let offset = 0; offset < fileBytes; offset += chunkBytes) {
      // Stamp each chunk so no two are equal.
      for (let page = 0; page < chunkBytes; page += 4096) chunk.writeUInt32LE(offset / chunkBytes, page);
      for (let done = 0; done < chunkBytes; ) done += (await handle.write(chunk, done, chunkBytes - done, offset + done)).bytesWritten;
    }
  } finally {
    await handle.close();
  }
}

/** Reads the file 4 MiB at a time into one buffer; with `crc`, chains hash-wasm CRCs like checksumThroughput's baseline. */
async function fsRead(path: string, crc: boolean): Promise<bigint> {
  const handle = await open(path, 'r');
  const buffer = Buffer.allocUnsafe(chunkBytes);
  try {
    let running = 0n;
    for (let offset = 0; offset < fileBytes; offset += chunkBytes) {
      for (let done = 0; done < chunkBytes; ) {
        const { bytesRead } = await handle.read(buffer, done, chunkBytes - done, offset + done);
        if (bytesRead === 0) throw new Error('bench file is shorter than expected');
        done += bytesRead;
      }
      if (crc) running = crc64Combine(running, crc64(buffer), chunkBytes);
    }
    return running;
  } finally {
    await handle.close();
  }
}

/** One background job for the whole file: the event loop only sees the result. */
function readCrcWhole(fd: number): Promise<bigint> {
  return new Promise((resolve, reject) => {
    nativeCrc!.submitFileCrc(fd, 0, fileBytes, (error, crc) => (error ? reject(error) : resolve(crc)));
  });
}

/** One job per 4 MiB cluster, all queued at once, combined in order as they come back. */
async function readCrcPerCluster(fd: number): Promise<bigint> {
  const jobs: Array<Promise<bigint>> = [];
  for (let offset = 0; offset < fileBytes; offset += chunkBytes) {
    jobs.push(
      new Promise((resolve, reject) => {
        nativeCrc!.submitFileCrc(fd, offset, chunkBytes, (error, crc) => (error ? reject(error) : resolve(crc)));
      }),
    );
  }
  let running = 0n;
  for (const crc of await Promise.all(jobs)) running = crc64Combine(running, crc, chunkBytes);
  return running;
}

async function backgroundTable(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bench-crc-'));
  const path = join(dir, 'bench.img');
  try {
    await writeBenchFile(path);
    await fsRead(path, false); // into the page cache; every side below reads from it
    const handle = await open(path, 'r');
    try {
      const sides: Array<{ label: string; run: () => Promise<bigint> }> = [
        { label: 'fs read 4 MiB chunks, no CRC', run: () => fsRead(path, false) },
        { label: 'fs read + hash-wasm crc64', run: () => fsRead(path, true) },
      ];
      if (nativeCrc) {
        sides.push({ label: 'readCrc, one 256 MiB job', run: () => readCrcWhole(handle.fd) });
        sides.push({ label: 'readCrc, 64 jobs of 4 MiB', run: () => readCrcPerCluster(handle.fd) });
      }
      const rates = sides.map(() => [] as number[]);
      const values = sides.map(() => new Set<bigint>());
      // Alternate the sides so drift (page cache, CPU frequency, the other tenant) falls on all alike.
      for (let run = 0; run < runs; run++) {
        for (const [index, side] of sides.entries()) {
          const startMs = performance.now();
          values[index]!.add(await side.run());
          rates[index]!.push(gbps(fileBytes, performance.now() - startMs));
        }
      }
      const fsOnly = median(rates[0]!);
      const fsCrc = median(rates[1]!);
      printTable(
        ['side (256 MiB file, page cache)', 'GB/s', 'spread', '× fs read', '× fs+wasm'],
        sides.map((side, index) => [
          side.label,
          fixed(median(rates[index]!), 2),
          spreadOf({ rates: rates[index]! }),
          fixed(median(rates[index]!) / fsOnly, 2),
          fixed(median(rates[index]!) / fsCrc, 2),
        ]),
      );
      if (nativeCrc) {
        const stats = nativeCrc.backgroundStats();
        const crcValues = new Set([...values.slice(1)].flatMap((set) => [...set]));
        console.log(`  background pool: ${stats.threads} threads, policy ${stats.policy}; CRC values equal: ${crcValues.size === 1 ? 'yes' : 'no'}`);
      }
    } finally {
      await handle.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function crcKernels(): Promise<void> {
  console.log('\n== CRC-64 kernels: native vs hash-wasm, and background pread+CRC vs fs ==');
  console.log(`  native addon: ${nativeCrcStatus}${nativeCrc ? `; kernels ${nativeCrc.kernels.join(', ')}; default ${nativeCrc.kernel}` : ''}`);
  console.log(`  median of ${runs} runs (each ~${runTargetMs} ms of repeats), spread min-max`);
  kernelTable();
  await backgroundTable();
}
