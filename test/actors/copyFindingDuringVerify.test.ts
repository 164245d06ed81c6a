// Goal: a copy that finds a cluster rotten while a verify walk is running is not overwritten by the
// walk's older reading (issue 21). The walk read the cluster clean, the copy read it later and bad:
// the verify's final record keeps the copy's finding. A cluster the walk reads after the finding is
// the walk's to judge (its reading is the newer one).
import { describe, expect, it } from 'vitest';
import { InspectionHub } from '../../src/actors/inspector.ts';
import { LvolActor, verificationOf } from '../../src/actors/lvolActor.ts';
import { IoQueue } from '../../src/device/ioQueue.ts';
import { QueuedDevice } from '../../src/device/queuedDevice.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { type BadCluster, type LvolRecord, MemoryMetadataLog } from '../../src/store/metadata.ts';
import { ClusterChecksums } from '../../src/store/sparseArray.ts';
import { pattern } from '../integration/knownCrc.ts';

const clusterBytes = 64 * 1024;
const clusterCount = 6;
const tick = () => new Promise((resolve) => setImmediate(resolve));

/** A snapshot of 6 owned clusters with range checksums registered, on a device that can be held. */
async function registered() {
  const device = new SimulatedDevice(8 * 1024 * 1024, 512);
  const queued = new QueuedDevice(device, new IoQueue(1, 10_000));
  const runtime = seededRuntime(21);
  const store = await Lvstore.create(queued, { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, new MemoryMetadataLog(), runtime);
  const lvol = await store.createLvol({ name: 'vol', clusterCount, thin: true });
  for (let clusterIndex = 0; clusterIndex < clusterCount; clusterIndex++) {
    await store.write(lvol.id, clusterIndex * clusterBytes, pattern(300 + clusterIndex, clusterBytes));
  }
  const snapshot = await store.snapshot(lvol.id, 'snap', {});
  const actor = new LvolActor(snapshot.id, store, runtime, new InspectionHub(), () => {}, { readAheadClusters: 1 });
  await actor.register('range', false);
  return { device, store, snapshot, actor };
}

/** What a copy reports for `clusterIndex` when it read other bytes than the stored CRC. */
function finding(setup: Awaited<ReturnType<typeof registered>>, clusterIndex: number): BadCluster {
  const expected = setup.store.lvol(setup.snapshot.id).rangeChecksums!.get(clusterIndex)!;
  return { clusterIndex, offsetBytes: clusterIndex * clusterBytes, expected, actual: expected ^ 0xdeadn };
}

describe('a copy finding during a verify walk', () => {
  it('is kept when the walk had already read the cluster clean', async () => {
    const setup = await registered();
    // Hold the device at the walk's fourth read: clusters 0-2 are read (and clean) by then.
    let readsSoFar = 0;
    setup.device.onIoStart = (kind) => {
      if (kind !== 'read') return;
      readsSoFar++;
      if (readsSoFar === 4) setup.device.hold();
    };
    const verified = setup.actor.verify(false, false);
    while (readsSoFar < 4) await tick();
    expect(setup.actor.status().clusters_done).toBeGreaterThanOrEqual(2);
    await setup.actor.recordCopyFinding(finding(setup, 1));
    setup.device.release();
    const record = await verified;
    expect(record).toMatchObject({ result: 'corrupt', badClusterCount: 1, clustersChecked: clusterCount });
    expect(record.badClusters.map((bad) => bad.clusterIndex)).toEqual([1]);
    expect(record.badClusters[0]!.actual).toBe(finding(setup, 1).actual);
  });

  it('is judged again by the walk when the walk reads the cluster after it', async () => {
    const setup = await registered();
    let readsSoFar = 0;
    setup.device.onIoStart = (kind) => {
      if (kind !== 'read') return;
      readsSoFar++;
      if (readsSoFar === 2) setup.device.hold();
    };
    const verified = setup.actor.verify(false, false);
    while (readsSoFar < 2) await tick();
    // Cluster 5 is not read yet: the walk will read it, clean, after the finding.
    await setup.actor.recordCopyFinding(finding(setup, 5));
    setup.device.release();
    const record = await verified;
    expect(record).toMatchObject({ result: 'clean', badClusterCount: 0, badClusters: [] });
  });

  it('verificationOf: a later finding replaces the reading of its cluster only', () => {
    const range = new ClusterChecksums(4);
    for (let clusterIndex = 0; clusterIndex < 4; clusterIndex++) range.set(clusterIndex, BigInt(clusterIndex + 1));
    const lvol = { rangeChecksums: range, checksum: null, verification: null } as unknown as LvolRecord;
    const readings = { targets: null, rangeCrcs: new Map([[0, 1n], [1, 2n], [2, 3n], [3, 4n]]), runningCrc: 0n, clustersDone: 4, clustersTotal: 4 };
    const later: BadCluster = { clusterIndex: 2, offsetBytes: 2 * clusterBytes, expected: 3n, actual: 99n };
    expect(verificationOf(lvol, readings, clusterBytes, 5, true)).toMatchObject({ result: 'clean', badClusterCount: 0 });
    expect(verificationOf(lvol, readings, clusterBytes, 5, true, [later])).toMatchObject({ result: 'corrupt', badClusterCount: 1, badClusters: [later] });
    // The readings themselves are not changed by it.
    expect(readings.rangeCrcs.get(2)).toBe(3n);
  });
});
