// Goal: under client load a copy (a replica rebuild) waits the scheduler's foreground turn per
// copyBusyPaceUnitBytes it moves, not once per cluster, so a copy of large clusters yields the
// event loop as often as a checksum walk does (bench/rebuild.ts (c) measures the effect).
import { afterEach, describe, expect, it } from 'vitest';
import { StorageNode } from '../../src/actors/node.ts';
import { readBdev } from '../../src/bdev/bdev.ts';
import { copyBusyPaceUnitBytes } from '../../src/constants.ts';
import { systemRuntime } from '../../src/runtime.ts';

const clusterBytes = 1024 * 1024;
const clusters = 8;
const nodes: StorageNode[] = [];

afterEach(async () => {
  for (const node of nodes.splice(0)) await node.shutdown();
});

describe('copy pacing under client load', () => {
  it('spaces a copy of 1 MiB clusters per copyBusyPaceUnitBytes while clients are active', async () => {
    expect(clusterBytes % copyBusyPaceUnitBytes).toBe(0);
    expect(clusterBytes / copyBusyPaceUnitBytes).toBeGreaterThan(1);
    const node = new StorageNode(systemRuntime, { backgroundOptions: { max_concurrent_checksums: 1, checksum_rate_mib_per_sec: 0 } });
    nodes.push(node);
    await node.createMallocBdev({ name: 'm0', numBlocks: (64 * clusterBytes) / 512, blockSize: 512 });
    await node.lvstores.create({ bdevName: 'm0', lvsName: 'lvs', clusterBytes, clearMethod: 'none' });
    await node.createLvol({ selector: { lvs_name: 'lvs' }, name: 'src', sizeMib: clusters, thin: true });
    for (let cluster = 0; cluster < clusters; cluster++) await node.bdev('lvs/src').write(cluster * clusterBytes, Buffer.alloc(clusterBytes, cluster + 1));
    await node.snapshot('lvs/src', 'snap', {});
    await node.createLvol({ selector: { lvs_name: 'lvs' }, name: 'dst', sizeMib: clusters, thin: true });

    const before = node.scheduler.stats().steps_spaced_for_foreground;
    // A client keeps sending requests (what serve.ts reports for every foreground RPC and NVMe/NBD I/O).
    node.scheduler.noteForeground();
    const load = setInterval(() => node.scheduler.noteForeground(), 2);
    try {
      const operationId = await node.copies.startByName('shallow', 'lvs/snap', 'lvs/dst');
      await expect.poll(() => node.copies.list().find((copy) => copy.operation_id === operationId)?.state, { timeout: 10_000, interval: 5 }).toBe('complete');
    } finally {
      clearInterval(load);
    }
    const spaced = node.scheduler.stats().steps_spaced_for_foreground - before;
    // One turn per unit: clusters x 2 here (a lost turn when the timer slips is tolerated); one
    // per cluster would be `clusters`.
    expect(spaced).toBeGreaterThan(clusters);
    expect(spaced).toBeLessThanOrEqual((clusters * clusterBytes) / copyBusyPaceUnitBytes);
    expect((await readBdev(node.bdev('lvs/dst'), 3 * clusterBytes, 4096)).every((byte) => byte === 4)).toBe(true);
  });
});
