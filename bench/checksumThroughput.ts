// Snapshot checksum throughput over RPC against Node reading the same bytes, in the same run.
//
// The node runs in its own process (once with the native CRC path, once forced to the fallback
// with LVNODE_CRC=fallback), on a pre-filled file whose pages are in the page cache. Baselines read
// the snapshot's bytes in 4 MiB chunks: with no CRC (what the native path is held to, goal ≥ 0.75x)
// and with the hash-wasm CRC in a tight loop (what the fallback is held to, goal ≥ 0.9x). Each
// baseline runs both inside this process and as a fresh process, because the two were seen to
// differ; the table shows both so the ratio says what it means.
import { nativeCrc } from '../src/checksum/native.ts';
import { type BaselineMode, nativeJobsAlone, readRange, readRangeInChild } from './baselineRead.ts';
import { type ChildBench, spawnBenchNode } from './childNode.ts';
import { bytesPerMsToMBps, envInteger, fixed, median, printTable, timed } from './support.ts';

const sizeMibDefault = 2048;
const repetitionsMin = 3;
const repetitionsDefault = 3;
const nativeRatioTarget = 0.75;
const fallbackRatioTarget = 0.9;

async function register(bench: ChildBench, snapshotName: string): Promise<{ ms: number; crc: bigint }> {
  const { ms } = await timed(() => bench.client.call('bdev_lvol_register_snapshot_checksum', { name: snapshotName }));
  const { checksum } = await bench.client.call<{ checksum: number | bigint }>('bdev_lvol_get_snapshot_checksum', { name: snapshotName });
  return { ms, crc: BigInt(checksum) };
}

interface Side {
  label: string;
  ms: number[];
  crcs: Set<bigint>;
}

function side(label: string): Side {
  return { label, ms: [], crcs: new Set() };
}

async function measureMode(mode: 'native' | 'fallback', sizeMib: number, repetitions: number): Promise<{ sides: Side[]; lengthBytes: number }> {
  const bench = await spawnBenchNode({ sizeMib, lvolCount: 1, env: mode === 'fallback' ? { LVNODE_CRC: 'fallback' } : {} });
  try {
    const lvolName = bench.lvolNames[0]!;
    await bench.client.call('bdev_lvol_snapshot', { lvol_name: lvolName, snapshot_name: 'snap' });
    const snapshotName = `${bench.lvsName}/snap`;
    const [offsetBytes, lengthBytes] = [bench.lvolOffsetBytes[0]!, bench.lvolBytes];
    await readRange(bench.filePath, offsetBytes, lengthBytes, 'read'); // warm the page cache, untimed
    const registerSide = side(`register (${mode})`);
    const baselines: Array<[Side, BaselineMode, boolean]> = [
      [side('read, no CRC, in this process'), 'read', false],
      [side('read, no CRC, standalone process'), 'read', true],
      [side('read + hash-wasm CRC, in this process'), 'read+hash-wasm', false],
      [side('read + hash-wasm CRC, standalone process'), 'read+hash-wasm', true],
    ];
    const alone = side('native reader alone, 4 MiB jobs (the ceiling)');
    // Alternate the sides so drift (page cache, CPU frequency) falls on all alike.
    for (let repetition = 0; repetition < repetitions; repetition++) {
      const registered = await register(bench, snapshotName);
      registerSide.ms.push(registered.ms);
      registerSide.crcs.add(registered.crc);
      if (mode === 'native') {
        const result = await nativeJobsAlone(bench.filePath, offsetBytes, lengthBytes);
        alone.ms.push(result.ms);
        alone.crcs.add(result.crc);
      }
      for (const [baseline, baselineMode, inChild] of baselines) {
        const result = await (inChild ? readRangeInChild : readRange)(bench.filePath, offsetBytes, lengthBytes, baselineMode);
        baseline.ms.push(result.ms);
        if (baselineMode !== 'read') baseline.crcs.add(result.crc);
      }
    }
    const extra = mode === 'native' ? [alone] : [];
    return { sides: [registerSide, ...baselines.map(([baseline]) => baseline), ...extra], lengthBytes };
  } finally {
    await bench.close();
  }
}

export async function checksumThroughput(): Promise<void> {
  const sizeMib = envInteger('BENCH_SIZE_MIB', sizeMibDefault);
  const repetitions = Math.max(repetitionsMin, envInteger('BENCH_REPETITIONS', repetitionsDefault));
  const modes: Array<'native' | 'fallback'> = nativeCrc ? ['native', 'fallback'] : ['fallback'];
  console.log(`\n== checksum throughput: register over WebSocket vs Node reading the same bytes (${sizeMib} MiB file, page cache) ==`);
  if (!nativeCrc) console.log('  native addon not loaded: fallback only');
  for (const mode of modes) {
    const { sides, lengthBytes } = await measureMode(mode, sizeMib, repetitions);
    const mbps = (values: number[]) => bytesPerMsToMBps(lengthBytes, median(values));
    console.log(`\n  ${mode} path, ${fixed(lengthBytes / 1e6, 0)} MB snapshot, ${repetitions} runs per side:`);
    printTable(
      ['side', 'median MB/s', 'runs MB/s'],
      sides.map((entry) => [entry.label, fixed(mbps(entry.ms), 0), entry.ms.map((ms) => fixed(bytesPerMsToMBps(lengthBytes, ms), 0)).join(' ')]),
    );
    const [registerSide, readIn, readChild, crcIn, crcChild] = sides as [Side, Side, Side, Side, Side];
    const ratio = (against: Side) => mbps(registerSide.ms) / mbps(against.ms);
    const target = mode === 'native' ? nativeRatioTarget : fallbackRatioTarget;
    const [goalIn, goalChild] = mode === 'native' ? [readIn, readChild] : [crcIn, crcChild];
    console.log(
      `  ratio register/${goalIn.label}: ${fixed(ratio(goalIn), 3)}; /${goalChild.label}: ${fixed(ratio(goalChild), 3)} ` +
        `(goal ≥ ${target}: ${Math.min(ratio(goalIn), ratio(goalChild)) >= target ? 'met' : 'missed'})`,
    );
    console.log(`  ratio register/read+hash-wasm (in process): ${fixed(ratio(crcIn), 3)}`);
    const alone = sides[5];
    if (alone) console.log(`  ratio register/native reader alone: ${fixed(ratio(alone), 3)} (what the actor walk and RPC cost over the reader itself)`);
    const values = new Set([...registerSide.crcs, ...crcIn.crcs, ...crcChild.crcs, ...(alone?.crcs ?? [])]);
    console.log(`  values equal across register and both CRC baselines: ${values.size === 1 ? 'yes' : `no (${[...values].join(', ')})`}`);
  }
}
