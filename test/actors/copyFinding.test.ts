// Goal: what a copy's rotten source cluster does to the owner's verification record (issue 21),
// pure: it marks the last verify's record corrupt with the cluster and keeps when that verify ran
// and what it checked; an incomplete verify stays incomplete; a known cluster is not counted twice.
import { describe, expect, it } from 'vitest';
import { copyFindingOf } from '../../src/actors/lvolActor.ts';
import { verifyBadClustersMax } from '../../src/constants.ts';
import type { BadCluster, LvolRecord, VerificationRecord } from '../../src/store/metadata.ts';

const clusterBytes = 65536;
const bad = (clusterIndex: number, actual = 7n): BadCluster => ({ clusterIndex, offsetBytes: clusterIndex * clusterBytes, expected: 1n, actual });
const lvolWith = (verification: VerificationRecord | null, ownedClusters = 12): LvolRecord => ({ verification, clusterMap: { count: ownedClusters } }) as unknown as LvolRecord;
const clean: VerificationRecord = {
  verifiedAtMs: 1_000,
  result: 'clean',
  errorsOnly: false,
  clustersChecked: 12,
  clustersTotal: 12,
  badClusterCount: 0,
  badClusters: [],
  whole: null,
  registrationConflict: { atMs: 500, whole: { expected: 1n, actual: 2n }, clusterCount: 0, clusters: [] },
};

describe('a copy finding in the verification record', () => {
  it('with no verify yet: corrupt, no verified_at, the one cluster', () => {
    expect(copyFindingOf(lvolWith(null), bad(5))).toEqual({
      verifiedAtMs: null,
      result: 'corrupt',
      errorsOnly: false,
      clustersChecked: 1,
      clustersTotal: 12,
      badClusterCount: 1,
      badClusters: [bad(5)],
      whole: null,
      registrationConflict: null,
      // A copy's finding is no whole verify: the policy's interval still counts from none.
      fullVerifiedAtMs: null,
    });
  });

  it('marks a clean verify corrupt, keeping when it ran, its counts and a registration conflict', () => {
    // The clean verify was whole: its time stays what the policy's interval counts from.
    expect(copyFindingOf(lvolWith(clean), bad(5))).toEqual({ ...clean, result: 'corrupt', badClusterCount: 1, badClusters: [bad(5)], fullVerifiedAtMs: clean.verifiedAtMs });
  });

  it('keeps an incomplete verify incomplete (its position stays to resume), adding the cluster in order', () => {
    const incomplete: VerificationRecord = { ...clean, result: 'incomplete', clustersChecked: 4, badClusterCount: 2, badClusters: [bad(2), bad(9)] };
    expect(copyFindingOf(lvolWith(incomplete), bad(5))).toMatchObject({ result: 'incomplete', clustersChecked: 4, badClusterCount: 3, badClusters: [bad(2), bad(5), bad(9)] });
  });

  it('does not count a known cluster twice, and keeps what the copy read', () => {
    const corrupt: VerificationRecord = { ...clean, result: 'corrupt', badClusterCount: 2, badClusters: [bad(2), bad(5, 3n)] };
    expect(copyFindingOf(lvolWith(corrupt), bad(5, 8n))).toMatchObject({ badClusterCount: 2, badClusters: [bad(2), bad(5, 8n)] });
  });

  it('past a full kept list: a cluster beyond the last kept may be counted already, one before it is new', () => {
    const kept = Array.from({ length: verifyBadClustersMax }, (_, index) => bad(index * 2));
    const full: VerificationRecord = { ...clean, result: 'corrupt', badClusterCount: verifyBadClustersMax + 10, badClusters: kept };
    const beyond = copyFindingOf(lvolWith(full, 10_000), bad(9_999));
    expect(beyond.badClusterCount).toBe(verifyBadClustersMax + 10);
    expect(beyond.badClusters).toEqual(kept);
    const inside = copyFindingOf(lvolWith(full, 10_000), bad(3));
    expect(inside.badClusterCount).toBe(verifyBadClustersMax + 11);
    expect(inside.badClusters).toHaveLength(verifyBadClustersMax);
    expect(inside.badClusters.slice(0, 3)).toEqual([bad(0), bad(2), bad(3)]);
  });
});
