// `npm run bench`: prints the machine, then runs each benchmark in turn. Figures only, never assertions.
import { cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { aggregateThroughput, foregroundUnderLoad, preemptionUnderLoad } from './backgroundLoad.ts';
import { checksumThroughput } from './checksumThroughput.ts';
import { crcKernels } from './crcKernels.ts';
import { listingCost } from './listingCost.ts';
import { mergeChecksums } from './mergeChecksums.ts';
import { metadataWritePath } from './metadataWritePath.ts';
import { nbdBenchmark } from './nbd.ts';
import { nbdFloodBenchmark } from './nbdFlood.ts';
import { preemptionLatency } from './preemptionLatency.ts';
import { scaleBenchmark } from './scale.ts';
import { schedulerScale } from './schedulerScale.ts';
import { wireCreates } from './wireCreates.ts';
import { wireListing } from './wireListing.ts';
import { zeroing } from './zeroing.ts';
import { benchClusterBytes, fixed } from './support.ts';

// The node logs every bdev and lvstore it creates; the figures are what this run is for.
process.env.LVNODE_LOG_LEVEL ??= 'warn';

const benchmarks: ReadonlyArray<{ name: string; run: () => Promise<void> }> = [
  { name: 'crcKernels', run: crcKernels },
  { name: 'checksumThroughput', run: checksumThroughput },
  { name: 'foregroundUnderLoad', run: foregroundUnderLoad },
  { name: 'preemptionUnderLoad', run: preemptionUnderLoad },
  { name: 'aggregateThroughput', run: aggregateThroughput },
  { name: 'listingCost', run: listingCost },
  { name: 'mergeChecksums', run: mergeChecksums },
  { name: 'preemptionLatency', run: preemptionLatency },
  { name: 'metadataWritePath', run: metadataWritePath },
  { name: 'nbd', run: nbdBenchmark },
  { name: 'nbdFlood', run: nbdFloodBenchmark },
  { name: 'scale', run: scaleBenchmark },
  { name: 'schedulerScale', run: schedulerScale },
  { name: 'wireListing', run: wireListing },
  { name: 'wireCreates', run: wireCreates },
  { name: 'zeroing', run: zeroing },
  { name: 'verify', run: async () => (await import('./verify.ts')).verifyBenchmark() },
  { name: 'spdkChecksum', run: async () => (await import('./spdkChecksum.ts')).spdkChecksum() },
  { name: 'nvmf', run: async () => (await import('./nvmf.ts')).nvmfBenchmark() },
  { name: 'rebuild', run: async () => (await import('./rebuild.ts')).rebuildBenchmark() },
];

async function main(): Promise<void> {
  const processors = cpus();
  console.log('lvnode benchmarks');
  console.log(`  node ${process.version} (${process.platform}/${process.arch})`);
  console.log(`  cpu ${processors[0]?.model.trim() ?? 'unknown'} × ${processors.length}`);
  console.log(`  cluster size ${benchClusterBytes / (1024 * 1024)} MiB`);
  const only = process.argv.slice(2);
  const startMs = performance.now();
  for (const benchmark of benchmarks) {
    if (only.length > 0 && !only.includes(benchmark.name)) continue;
    await benchmark.run();
  }
  console.log(`\ntotal ${fixed((performance.now() - startMs) / 1000, 1)} s`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
