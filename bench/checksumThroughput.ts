// Snapshot checksum throughput over RPC against plain fs + crc64 on the same bytes, in the same run.
//
// Both sides read the snapshot's clusters 4 MiB at a time from the page cache and fold one CRC per
// cluster with crc64Combine; the difference is what the actor walk (one cluster per event, XState
// mailbox, macrotask per step) and the RPC round trip cost. The project's target is a ratio ≥ 0.8.
import { open } from 'node:fs/promises';
import { crc64, crc64Combine } from '../src/checksum/crc64.ts';
import {
  type BenchNode,
  bytesPerMsToMBps,
  envInteger,
  fixed,
  median,
  ownedClusterOffsets,
  printTable,
  startBenchNode,
  timed,
} from './support.ts';

const sizeMibDefault = 1024;
const repetitionsMin = 3;
const repetitionsDefault = 5;
const throughputRatioTarget = 0.8;

/** The baseline: read each cluster into one reused buffer and chain the CRCs, nothing else. */
async function plainChecksum(filePath: string, offsetsBytes: readonly number[], clusterBytes: number): Promise<bigint> {
  const handle = await open(filePath, 'r');
  const buffer = Buffer.allocUnsafe(clusterBytes);
  try {
    let running = 0n;
    for (const offsetBytes of offsetsBytes) {
      for (let done = 0; done < clusterBytes; ) {
        const { bytesRead } = await handle.read(buffer, done, clusterBytes - done, offsetBytes + done);
        if (bytesRead === 0) throw new Error(`file ends before ${offsetBytes + done}`);
        done += bytesRead;
      }
      running = crc64Combine(running, crc64(buffer), clusterBytes);
    }
    return running;
  } finally {
    await handle.close();
  }
}

/** One untimed pass over the bytes so both sides read from the page cache. */
async function warmPageCache(filePath: string, offsetsBytes: readonly number[], clusterBytes: number): Promise<void> {
  const handle = await open(filePath, 'r');
  const buffer = Buffer.allocUnsafe(clusterBytes);
  try {
    for (const offsetBytes of offsetsBytes) await handle.read(buffer, 0, clusterBytes, offsetBytes);
  } finally {
    await handle.close();
  }
}

/** Registers over RPC, timed from request to reply; the stored value is fetched afterwards, untimed. */
async function registeredChecksum(bench: BenchNode, snapshotName: string): Promise<{ ms: number; value: bigint }> {
  const { ms } = await timed(() => bench.client.call('bdev_lvol_register_snapshot_checksum', { name: snapshotName }));
  const { checksum } = await bench.client.call<{ checksum: number | bigint }>('bdev_lvol_get_snapshot_checksum', { name: snapshotName });
  return { ms, value: BigInt(checksum) };
}

export async function checksumThroughput(): Promise<void> {
  const sizeMib = envInteger('BENCH_SIZE_MIB', sizeMibDefault);
  const repetitions = Math.max(repetitionsMin, envInteger('BENCH_REPETITIONS', repetitionsDefault));
  console.log(`\n== checksum throughput: register over WebSocket vs plain fs + crc64 (${sizeMib} MiB file) ==`);
  const setup = await timed(() => startBenchNode(sizeMib));
  const bench = setup.value;
  try {
    await bench.client.call('bdev_lvol_snapshot', { lvol_name: bench.lvolName, snapshot_name: 'data_snap' });
    const snapshotName = `${bench.lvsName}/data_snap`;
    const offsetsBytes = ownedClusterOffsets(bench, snapshotName);
    const bytes = offsetsBytes.length * bench.clusterBytes;
    const warm = await timed(() => warmPageCache(bench.filePath, offsetsBytes, bench.clusterBytes));
    console.log(
      `  setup ${fixed(setup.ms / 1000, 1)} s (fill file, start node, lvstore, lvol, snapshot); ` +
        `warm-up read ${fixed(warm.ms / 1000, 1)} s; snapshot ${offsetsBytes.length} clusters = ${fixed(bytes / 1e6, 0)} MB`,
    );

    const registerMs: number[] = [];
    const plainMs: number[] = [];
    const registerValues = new Set<bigint>();
    const plainValues = new Set<bigint>();
    // Alternate the two sides so drift (page cache, CPU frequency, GC) falls on both alike.
    for (let repetition = 0; repetition < repetitions; repetition++) {
      const register = await registeredChecksum(bench, snapshotName);
      registerMs.push(register.ms);
      registerValues.add(register.value);
      const plain = await timed(() => plainChecksum(bench.filePath, offsetsBytes, bench.clusterBytes));
      plainMs.push(plain.ms);
      plainValues.add(plain.value);
    }

    const registerMBps = bytesPerMsToMBps(bytes, median(registerMs));
    const plainMBps = bytesPerMsToMBps(bytes, median(plainMs));
    const ratio = registerMBps / plainMBps;
    const perRun = (values: number[]) => values.map((ms) => fixed(bytesPerMsToMBps(bytes, ms), 0)).join(' ');
    const row = (label: string, values: number[], mbps: number) => [
      label,
      fixed(median(values), 0),
      fixed(median(values) / offsetsBytes.length, 2),
      fixed(mbps, 0),
      perRun(values),
    ];
    printTable(
      ['side', 'median ms', 'ms/cluster', 'median MB/s', 'runs MB/s'],
      [row('register (RPC, actor walk)', registerMs, registerMBps), row('baseline (fs + crc64)', plainMs, plainMBps)],
    );
    const equal = registerValues.size === 1 && plainValues.size === 1 && [...registerValues][0] === [...plainValues][0];
    const hex = (values: Set<bigint>) => [...values].map((value) => `0x${value.toString(16).padStart(16, '0')}`).join(',');
    console.log(`  ratio register/baseline: ${fixed(ratio, 3)} (target ≥ ${throughputRatioTarget}: ${ratio >= throughputRatioTarget ? 'met' : 'missed'})`);
    console.log(`  values equal: ${equal ? 'yes' : 'no'} (register ${hex(registerValues)}, baseline ${hex(plainValues)})`);
  } finally {
    await bench.close();
  }
}
