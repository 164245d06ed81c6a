// Goal: a verify that ended early (stopped, preempted, failed) is recorded `incomplete` even when
// it already found bad clusters, so that the lvstore keeps the position it resumes from (SPEC §6.6,
// §6.10; the checksum.verified change drops the saved position only for a finished verify).
import { describe, expect, it } from 'vitest';
import { verificationOf } from '../../src/actors/lvolActor.ts';
import type { LvolRecord } from '../../src/store/metadata.ts';
import { ClusterChecksums } from '../../src/store/sparseArray.ts';

const clusterBytes = 4096;

function snapshotWithRange(values: readonly bigint[]): LvolRecord {
  const range = new ClusterChecksums(values.length);
  values.forEach((value, clusterIndex) => range.set(clusterIndex, value));
  return { checksum: 99n, rangeChecksums: range, verification: null } as unknown as LvolRecord;
}

describe('verificationOf', () => {
  const lvol = snapshotWithRange([11n, 22n, 33n]);
  const readings = { targets: null, rangeCrcs: new Map([[0, 11n], [1, 0xbadn]]), runningCrc: 0n, clustersDone: 2, clustersTotal: 3 };

  it('records a verify stopped after finding a bad cluster as incomplete, with the cluster', () => {
    const found = verificationOf(lvol, readings, clusterBytes, 1000, false);
    expect(found).toMatchObject({ result: 'incomplete', clustersChecked: 2, clustersTotal: 3, badClusterCount: 1 });
    expect(found.badClusters).toEqual([{ clusterIndex: 1, offsetBytes: clusterBytes, expected: 22n, actual: 0xbadn }]);
  });

  it('records a finished verify with a bad cluster as corrupt, and one without as clean', () => {
    expect(verificationOf(lvol, { ...readings, clustersDone: 3 }, clusterBytes, 1000, true).result).toBe('corrupt');
    const good = { ...readings, rangeCrcs: new Map([[0, 11n], [1, 22n], [2, 33n]]), clustersDone: 3 };
    expect(verificationOf(lvol, good, clusterBytes, 1000, true).result).toBe('clean');
  });
});
