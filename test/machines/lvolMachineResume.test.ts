// Goal: an errors-only verify resumed after a stop goes on over the clusters it set out to re-read
// (SPEC §6.6, §6.10), and its total says so: the clusters known bad at the resume may be fewer
// (an incomplete verify lists only the bad clusters it reached), but they are not the walk's.
import { describe, expect, it } from 'vitest';
import { createActor } from 'xstate';
import { type ChecksumProgress, lvolMachine } from '../../src/machines/lvolMachine.ts';

function stoppedErrorsOnlyVerify(): ChecksumProgress {
  return {
    runId: 1,
    mode: 'verify',
    targets: [0, 3],
    clustersTotal: 2,
    clustersDone: 1,
    bytesDone: 4096,
    nextClusterIndex: 1,
    runningCrc: 7n,
    rangeCrcs: new Map([[0, 7n]]),
    startedAtMs: 0,
    activeMs: 5,
    resumedAtMs: 0,
    finishedAtMs: 5,
    reason: 'stopped',
    error: null,
  };
}

describe('lvol machine: resuming an errors-only verify', () => {
  it('keeps the clusters and the total it set out with, whatever total the resume request names', () => {
    const actor = createActor(lvolMachine, { input: { lvolId: 'l', checksumStored: true, savedProgress: stoppedErrorsOnlyVerify() } });
    actor.start();
    expect(actor.getSnapshot().value).toMatchObject({ checksum: 'aborted' });
    // The actor names the clusters known bad now: only cluster 0, the one the stopped walk reached.
    actor.send({ type: 'checksum.start', runId: 2, mode: 'verify', clustersTotal: 1, atMs: 10, resume: true, targets: [0] });
    const progress = actor.getSnapshot().context.progress!;
    expect(actor.getSnapshot().value).toMatchObject({ checksum: 'queued' });
    expect({ targets: progress.targets, clustersDone: progress.clustersDone, clustersTotal: progress.clustersTotal, nextClusterIndex: progress.nextClusterIndex }).toEqual({
      targets: [0, 3],
      clustersDone: 1,
      clustersTotal: 2,
      nextClusterIndex: 1,
    });
    actor.stop();
  });
});
