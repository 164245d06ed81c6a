// Goal: the lvol machine's checksum logic, tested purely with initialTransition()/transition():
// one cluster per event, stop only between clusters, abort/resume/done/failed bookkeeping.
import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { crc64Combine } from '../../src/checksum/crc64.ts';
import { type ClusterStepOutput, type LvolEvent, lvolMachine } from '../../src/machines/lvolMachine.ts';

type Snapshot = ReturnType<typeof initialTransition<typeof lvolMachine>>[0];

const clusterBytes = 1024;
const start = (overrides: Partial<Extract<LvolEvent, { type: 'checksum.start' }>> = {}): LvolEvent => ({
  type: 'checksum.start',
  runId: 1,
  mode: 'whole',
  clustersTotal: 2,
  atMs: 1000,
  resume: false,
  ...overrides,
});
const admit: LvolEvent = { type: 'checksum.admit', atMs: 1010 };
const stepDone = (output: ClusterStepOutput) => ({ type: 'xstate.done.actor.clusterStep', output }) as unknown as LvolEvent;
const cluster = (clusterIndex: number, crc: bigint, atMs = 1100, last = false): ClusterStepOutput => ({
  kind: 'cluster',
  clusterIndex,
  crc,
  bytes: clusterBytes,
  atMs,
  last,
});

function initial(checksumStored = false): Snapshot {
  return initialTransition(lvolMachine, { lvolId: 'lvol-1', checksumStored })[0];
}

function run(snapshot: Snapshot, ...events: LvolEvent[]): Snapshot {
  return events.reduce((current, event) => transition(lvolMachine, current, event)[0], snapshot);
}

describe('lvolMachine (pure transitions)', () => {
  it('starts idle with no I/O in flight', () => {
    expect(initial().value).toEqual({ checksum: 'idle', io: 'idle' });
  });

  it('starts out done when the lvstore already holds a checksum for it', () => {
    expect(initial(true).value).toEqual({ checksum: 'done', io: 'idle' });
  });

  it('waits in queued for a slot on checksum.start, asking the scheduler for one', () => {
    const [snapshot, actions] = transition(lvolMachine, initial(), start());
    expect(snapshot.value).toEqual({ checksum: 'queued', io: 'idle' });
    expect(actions.map((action) => action.type)).toContain('requestAdmission');
  });

  it('ends a queued walk at once on stop or preemption: nothing was read, the slot is given back', () => {
    const [stopped, actions] = transition(lvolMachine, run(initial(), start()), { type: 'checksum.stop', reason: 'stopped', atMs: 1005 });
    expect(stopped.value).toEqual({ checksum: 'aborted', io: 'idle' });
    expect(stopped.context.progress).toMatchObject({ reason: 'stopped', clustersDone: 0, finishedAtMs: 1005, activeMs: 0 });
    expect(actions.map((action) => action.type)).toContain('releaseAdmission');
    const preempted = run(initial(), start(), { type: 'lvol.preempt', operation: 'bdev_lvol_clone', atMs: 1006 });
    expect(preempted.context.progress!.reason).toBe('preempted by bdev_lvol_clone');
  });

  it('counts computing time from admission, not from registration', () => {
    const computing = run(initial(), start({ atMs: 1000 }), { type: 'checksum.admit', atMs: 4000 });
    expect(computing.context.progress).toMatchObject({ startedAtMs: 1000, resumedAtMs: 4000 });
  });

  it('enters computing with one cluster step in flight once admitted', () => {
    const [snapshot, actions] = transition(lvolMachine, run(initial(), start()), admit);
    expect(snapshot.value).toEqual({ checksum: 'computing', io: 'reading' });
    expect(snapshot.context.progress).toMatchObject({ runId: 1, clustersDone: 0, nextClusterIndex: 0, runningCrc: 0n });
    // The step is an invoked actor: the pure transition only asks for it to be started.
    expect(actions.some((action) => action.type === 'xstate.spawnChild')).toBe(true);
  });

  it('folds each finished cluster into the running CRC and asks for the next one', () => {
    const snapshot = run(initial(), start(), admit, stepDone(cluster(3, 0xabcn)));
    expect(snapshot.value).toEqual({ checksum: 'computing', io: 'reading' });
    expect(snapshot.context.progress).toMatchObject({ clustersDone: 1, nextClusterIndex: 4, bytesDone: clusterBytes });
    expect(snapshot.context.progress!.runningCrc).toBe(crc64Combine(0n, 0xabcn, clusterBytes));
    expect(snapshot.context.progress!.rangeCrcs.get(3)).toBe(0xabcn);
  });

  it('moves to stopping on checksum.stop and to aborted only when the in-flight cluster finished', () => {
    const stopping = run(initial(), start(), admit, { type: 'checksum.stop', reason: 'stopped', atMs: 1050 });
    expect(stopping.value).toEqual({ checksum: 'stopping', io: 'reading' });
    const aborted = run(stopping, stepDone(cluster(0, 7n, 1200)));
    expect(aborted.value).toEqual({ checksum: 'aborted', io: 'idle' });
    // The finished cluster is kept, so a resume continues after it.
    expect(aborted.context.progress).toMatchObject({ clustersDone: 1, nextClusterIndex: 1, reason: 'stopped', finishedAtMs: 1200 });
  });

  it('aborts without recording a cluster when the step was skipped because the stop came first', () => {
    const aborted = run(initial(), start(), admit, { type: 'checksum.stop', reason: 'stopped', atMs: 1 }, stepDone({ kind: 'skipped', atMs: 2 }));
    expect(aborted.value).toEqual({ checksum: 'aborted', io: 'idle' });
    expect(aborted.context.progress).toMatchObject({ clustersDone: 0, nextClusterIndex: 0, finishedAtMs: 2 });
  });

  it('names the operation in the reason when preempted', () => {
    const aborted = run(initial(), start(), admit, { type: 'lvol.preempt', operation: 'bdev_lvol_delete', atMs: 1 }, stepDone(cluster(0, 1n)));
    expect(aborted.context.progress!.reason).toBe('preempted by bdev_lvol_delete');
  });

  it('stores the value when the walk ends and is done after the store', () => {
    const storing = run(initial(), start(), admit, stepDone(cluster(0, 5n)), stepDone({ kind: 'end', atMs: 1300 }));
    expect(storing.value).toEqual({ checksum: 'storing', io: 'idle' });
    const done = run(storing, { type: 'xstate.done.actor.storeChecksum', output: 1400 } as unknown as LvolEvent);
    expect(done.value).toEqual({ checksum: 'done', io: 'idle' });
    expect(done.context.progress).toMatchObject({ finishedAtMs: 1400, reason: null });
  });

  it('goes to storing with the last cluster, so a stop after it finds nothing running (SPEC §6.4)', () => {
    const storing = run(initial(), start(), admit, stepDone(cluster(0, 5n)), stepDone(cluster(1, 6n, 1200, true)));
    expect(storing.value).toEqual({ checksum: 'storing', io: 'idle' });
    expect(storing.context.progress).toMatchObject({ clustersDone: 2, nextClusterIndex: 2 });
    expect(run(storing, { type: 'checksum.stop', reason: 'stopped', atMs: 1250 }).value).toEqual({ checksum: 'storing', io: 'idle' });
  });

  it('ignores stop while storing: the registration completes', () => {
    const storing = run(initial(), start(), admit, stepDone({ kind: 'end', atMs: 1 }));
    expect(run(storing, { type: 'checksum.stop', reason: 'stopped', atMs: 2 }).value).toEqual({ checksum: 'storing', io: 'idle' });
  });

  it('fails on a device error reported by the step', () => {
    const failed = run(initial(), start(), admit, stepDone({ kind: 'error', message: 'EIO', atMs: 5 }));
    expect(failed.value).toEqual({ checksum: 'failed', io: 'idle' });
    expect(failed.context.progress).toMatchObject({ error: 'EIO', reason: 'failed' });
  });

  it('resumes an aborted walk where it stopped, and restarts from zero without resume', () => {
    const aborted = run(initial(), start(), admit, { type: 'checksum.stop', reason: 'stopped', atMs: 1 }, stepDone(cluster(2, 9n)));
    const resumed = run(aborted, start({ runId: 2, resume: true }), admit);
    expect(resumed.context.progress).toMatchObject({ runId: 2, clustersDone: 1, nextClusterIndex: 3, runningCrc: aborted.context.progress!.runningCrc });
    const restarted = run(aborted, start({ runId: 3, resume: false }), admit);
    expect(restarted.context.progress).toMatchObject({ runId: 3, clustersDone: 0, nextClusterIndex: 0, runningCrc: 0n });
  });

  it('ignores a second start while computing', () => {
    const computing = run(initial(), start(), admit);
    const again = run(computing, start({ runId: 2 }));
    expect(again.context.progress!.runId).toBe(1);
  });

  it('walks a verify like a registration: the step is told the errors-only targets, the mode is kept', () => {
    const [snapshot, actions] = transition(lvolMachine, run(initial(true), start({ mode: 'verify', targets: [3, 7], clustersTotal: 2 })), admit);
    expect(snapshot.value).toEqual({ checksum: 'computing', io: 'reading' });
    expect(snapshot.context.progress).toMatchObject({ mode: 'verify', targets: [3, 7], clustersTotal: 2 });
    const spawn = actions.find((action) => action.type === 'xstate.spawnChild') as unknown as { params: { input: unknown } };
    expect(spawn.params.input).toEqual({ lvolId: 'lvol-1', fromClusterIndex: 0, targets: [3, 7] });
    const storing = run(snapshot, stepDone(cluster(3, 1n)), stepDone(cluster(7, 2n, 1200, true)));
    expect(storing.value).toEqual({ checksum: 'storing', io: 'idle' });
  });

  it('resumes a verify only as the same kind of verify (errors-only or full)', () => {
    const stop = { type: 'checksum.stop', reason: 'stopped', atMs: 1 } as const;
    const aborted = run(initial(), start({ mode: 'verify', targets: [3, 7] }), admit, stop, stepDone(cluster(3, 9n)));
    expect(run(aborted, start({ runId: 2, mode: 'verify', targets: [3, 7], resume: true }), admit).context.progress).toMatchObject({ clustersDone: 1, nextClusterIndex: 4 });
    expect(run(aborted, start({ runId: 3, mode: 'verify', resume: true }), admit).context.progress).toMatchObject({ clustersDone: 0, targets: null });
    expect(run(aborted, start({ runId: 4, mode: 'whole', resume: true }), admit).context.progress).toMatchObject({ clustersDone: 0, mode: 'whole' });
  });

  it('forgets progress on checksum.invalidate and starts over from idle', () => {
    const storing = run(initial(true), { type: 'checksum.invalidate' });
    expect(storing.value).toEqual({ checksum: 'idle', io: 'idle' });
    expect(storing.context.restoredChecksum).toBe(false);
  });
});
