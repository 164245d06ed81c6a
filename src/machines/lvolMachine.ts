// The lvol actor: its checksum walk moves one cluster per event and yields to stop and priority events.
//
// A walk has a mode: `whole` and `range` compute and store checksums (SPEC §6.3); `verify` reads
// the same way and compares with the stored values, storing only what it found (SPEC §6.10).
//
// Two parallel regions. `checksum` is the walk SPEC §6.2 names: idle → computing → stopping →
// aborted | done (+ failed), with `queued` while the node-wide scheduler has no slot for it yet
// (SPEC §6.6) and `storing` while the finished value is persisted. `io` holds the
// one in-flight cluster step, an invoked actor doing real device I/O; keeping it in its own region
// lets `stopping` wait for that step to finish instead of abandoning I/O in flight.
import { assertEvent, assign, fromPromise, raise, setup } from 'xstate';
import { crc64Combine } from '../checksum/crc64.ts';

export type ChecksumMode = 'whole' | 'range' | 'verify';

export interface ChecksumProgress {
  /** Identifies one registration, so its caller can tell its own outcome from a later run's. */
  readonly runId: number;
  readonly mode: ChecksumMode;
  /** The clusters an errors-only verify re-reads, ascending; null: every owned cluster. */
  readonly targets: readonly number[] | null;
  readonly clustersTotal: number;
  readonly clustersDone: number;
  readonly bytesDone: number;
  /** The walk continues at the first owned cluster ≥ this index. */
  readonly nextClusterIndex: number;
  /** CRC-64/GO-ISO of every owned cluster before `nextClusterIndex`, chained (SPEC §6.1). */
  readonly runningCrc: bigint;
  /** Per-cluster CRCs so far. Mutated in place: copying it per cluster would be O(n²). */
  readonly rangeCrcs: Map<number, bigint>;
  readonly startedAtMs: number;
  /** Time spent computing across resumed runs, for the rate. */
  readonly activeMs: number;
  readonly resumedAtMs: number;
  readonly finishedAtMs: number | null;
  readonly reason: string | null;
  readonly error: string | null;
}

export interface LvolContext {
  readonly lvolId: string;
  readonly progress: ChecksumProgress | null;
  /** A completed checksum was loaded from the lvstore: the walk starts out `done`. */
  readonly restoredChecksum: boolean;
}

export interface LvolInput {
  lvolId: string;
  /** True when the lvstore already holds a completed checksum for this lvol (after a restart). */
  checksumStored: boolean;
  /** The progress of a walk that was stopped or preempted before a restart: it starts `aborted`. */
  savedProgress?: ChecksumProgress | null;
}

export interface ClusterStepInput {
  lvolId: string;
  fromClusterIndex: number;
  /** Read only these clusters (an errors-only verify); null: every owned cluster. */
  targets: readonly number[] | null;
}

/**
 * What one step found: the next owned cluster read whole with its CRC (`last`: no owned cluster
 * follows it, so the walk ends with it), the end of the walk, a
 * device error (reported as a value so the machine records when it happened), or nothing because
 * a stop arrived before its read began (`skipped`).
 */
export type ClusterStepOutput =
  | { kind: 'cluster'; clusterIndex: number; crc: bigint; bytes: number; atMs: number; last: boolean }
  | { kind: 'end'; atMs: number }
  | { kind: 'skipped'; atMs: number }
  | { kind: 'error'; message: string; atMs: number };

export interface StoreChecksumInput {
  lvolId: string;
  mode: ChecksumMode;
  checksum: bigint;
  rangeCrcs: Map<number, bigint>;
}

export type LvolEvent =
  | {
      type: 'checksum.start';
      runId: number;
      mode: ChecksumMode;
      clustersTotal: number;
      atMs: number;
      resume: boolean;
      targets?: readonly number[] | null;
    }
  | { type: 'checksum.admit'; atMs: number }
  | { type: 'checksum.stop'; reason: string; atMs: number }
  | { type: 'lvol.preempt'; operation: string; atMs: number }
  | { type: 'checksum.invalidate' }
  | { type: 'step.request' }
  | { type: 'cluster.done'; output: ClusterStepOutput };

export const lvolMachine = setup({
  types: {
    context: {} as LvolContext,
    events: {} as LvolEvent,
    input: {} as LvolInput,
  },
  actors: {
    // The real implementations are provided by the actor layer (src/actors/lvolActor.ts).
    clusterStep: fromPromise<ClusterStepOutput, ClusterStepInput>(async () => {
      throw new Error('clusterStep must be provided with machine.provide()');
    }),
    storeChecksum: fromPromise<number, StoreChecksumInput>(async () => {
      throw new Error('storeChecksum must be provided with machine.provide()');
    }),
  },
  guards: {
    checksumStored: ({ context }) => context.restoredChecksum && context.progress === null,
    progressRestored: ({ context }) => context.progress !== null && context.progress.reason !== null,
    canResume: ({ context, event }) => {
      assertEvent(event, 'checksum.start');
      const progress = context.progress;
      if (!event.resume || progress === null || progress.mode !== event.mode) return false;
      // An errors-only verify resumes only as one (over the clusters it set out to re-read), a full one as a full one.
      if ((progress.targets === null) !== ((event.targets ?? null) === null)) return false;
      return progress.finishedAtMs !== null && progress.reason !== null;
    },
    walkEnded: ({ event }) => {
      assertEvent(event, 'cluster.done');
      return event.output.kind === 'end';
    },
    stepFailed: ({ event }) => {
      assertEvent(event, 'cluster.done');
      return event.output.kind === 'error';
    },
    lastCluster: ({ event }) => {
      assertEvent(event, 'cluster.done');
      return event.output.kind === 'cluster' && event.output.last;
    },
  },
  actions: {
    startRun: assign(({ event }) => {
      assertEvent(event, 'checksum.start');
      return { progress: newProgress(event) };
    }),
    resumeRun: assign(({ context, event }) => {
      assertEvent(event, 'checksum.start');
      const previous = context.progress!;
      return {
        progress: {
          ...previous,
          runId: event.runId,
          // An errors-only verify goes on over the clusters it set out with (the bad clusters
          // known now may be fewer: an incomplete verify lists only those it reached).
          clustersTotal: previous.targets === null ? event.clustersTotal : previous.targets.length,
          resumedAtMs: event.atMs,
          finishedAtMs: null,
          reason: null,
          error: null,
        },
      };
    }),
    // A queued walk starts computing from now: time spent waiting for a slot is not computing time.
    markAdmitted: assign(({ context, event }) => {
      assertEvent(event, 'checksum.admit');
      return { progress: { ...context.progress!, resumedAtMs: event.atMs } };
    }),
    requestStep: raise({ type: 'step.request' }),
    recordCluster: assign(({ context, event }) => {
      assertEvent(event, 'cluster.done');
      const progress = context.progress!;
      const output = event.output;
      if (output.kind !== 'cluster') return {};
      progress.rangeCrcs.set(output.clusterIndex, output.crc);
      return {
        progress: {
          ...progress,
          clustersDone: progress.clustersDone + 1,
          bytesDone: progress.bytesDone + output.bytes,
          nextClusterIndex: output.clusterIndex + 1,
          runningCrc: crc64Combine(progress.runningCrc, output.crc, output.bytes),
        },
      };
    }),
    recordStopReason: assign(({ context, event }) => {
      assertEvent(event, ['checksum.stop', 'lvol.preempt']);
      const reason = event.type === 'checksum.stop' ? event.reason : `preempted by ${event.operation}`;
      return { progress: { ...context.progress!, reason } };
    }),
    recordFailure: assign(({ context, event }) => {
      assertEvent(event, 'cluster.done');
      const output = event.output;
      const message = output.kind === 'error' ? output.message : 'unexpected step result';
      return { progress: finish(context.progress!, output.atMs, { error: message, reason: 'failed' }) };
    }),
    recordAborted: assign(({ context, event }) => {
      assertEvent(event, 'cluster.done');
      return { progress: finish(context.progress!, event.output.atMs, {}) };
    }),
    // A walk stopped while queued never read anything: it ends at once, with no time computing.
    recordAbortedWhileQueued: assign(({ context, event }) => {
      assertEvent(event, ['checksum.stop', 'lvol.preempt']);
      return { progress: { ...context.progress!, finishedAtMs: event.atMs } };
    }),
    recordDone: assign(({ context }, params: { atMs: number }) => ({
      progress: finish(context.progress!, params.atMs, { reason: null }),
    })),
    recordStoreFailure: assign(({ context }, params: { message: string; atMs: number }) => ({
      progress: finish(context.progress!, params.atMs, { error: params.message, reason: 'failed' }),
    })),
    forgetProgress: assign({ progress: null, restoredChecksum: false }),
    raiseClusterDone: raise((_, params: ClusterStepOutput) => ({ type: 'cluster.done' as const, output: params })),
    // Provided by the actor layer: ask the node-wide scheduler for a slot, and give it back.
    requestAdmission: () => {},
    releaseAdmission: () => {},
  },
}).createMachine({
  id: 'lvol',
  type: 'parallel',
  context: ({ input }) => ({
    lvolId: input.lvolId,
    progress: input.savedProgress ?? null,
    restoredChecksum: input.checksumStored,
  }),
  states: {
    checksum: {
      initial: 'idle',
      states: {
        idle: {
          always: [
            { guard: 'progressRestored', target: 'aborted' },
            { guard: 'checksumStored', target: 'done' },
          ],
          on: { 'checksum.start': { target: 'queued', actions: 'startRun' } },
        },
        queued: {
          entry: 'requestAdmission',
          on: {
            'checksum.admit': { target: 'computing', actions: 'markAdmitted' },
            'checksum.stop': { target: 'aborted', actions: ['recordStopReason', 'recordAbortedWhileQueued'] },
            'lvol.preempt': { target: 'aborted', actions: ['recordStopReason', 'recordAbortedWhileQueued'] },
          },
        },
        computing: {
          entry: 'requestStep',
          on: {
            'cluster.done': [
              { guard: 'walkEnded', target: 'storing' },
              { guard: 'stepFailed', target: 'failed', actions: 'recordFailure' },
              // SPEC §6.4: once the last cluster is in, the walk is over; a stop after it finds
              // nothing running (-3) and the registration completes. Going back to `computing`
              // for a step that only finds the end left a window where a stop aborted a finished walk.
              { guard: 'lastCluster', target: 'storing', actions: 'recordCluster' },
              { target: 'computing', reenter: true, actions: 'recordCluster' },
            ],
            'checksum.stop': { target: 'stopping', actions: 'recordStopReason' },
            'lvol.preempt': { target: 'stopping', actions: 'recordStopReason' },
          },
        },
        stopping: {
          // The in-flight cluster finishes and is recorded, so a resume continues after it.
          on: {
            'cluster.done': [
              { guard: 'stepFailed', target: 'failed', actions: 'recordFailure' },
              { target: 'aborted', actions: ['recordCluster', 'recordAborted'] },
            ],
          },
        },
        storing: {
          entry: 'releaseAdmission',
          invoke: {
            id: 'storeChecksum',
            src: 'storeChecksum',
            input: ({ context }) => ({
              lvolId: context.lvolId,
              mode: context.progress!.mode,
              checksum: context.progress!.runningCrc,
              rangeCrcs: context.progress!.rangeCrcs,
            }),
            onDone: { target: 'done', actions: { type: 'recordDone', params: ({ event }) => ({ atMs: event.output }) } },
            onError: {
              target: 'failed',
              actions: {
                type: 'recordStoreFailure',
                params: ({ context, event }) => ({ message: errorMessage(event.error), atMs: context.progress!.resumedAtMs }),
              },
            },
          },
        },
        aborted: {
          entry: 'releaseAdmission',
          on: {
            'checksum.start': [
              { guard: 'canResume', target: 'queued', actions: 'resumeRun' },
              { target: 'queued', actions: 'startRun' },
            ],
            'checksum.invalidate': { target: 'idle', actions: 'forgetProgress' },
          },
        },
        done: {
          on: {
            'checksum.start': { target: 'queued', actions: 'startRun' },
            'checksum.invalidate': { target: 'idle', actions: 'forgetProgress' },
          },
        },
        failed: {
          entry: 'releaseAdmission',
          on: {
            'checksum.start': { target: 'queued', actions: 'startRun' },
            'checksum.invalidate': { target: 'idle', actions: 'forgetProgress' },
          },
        },
      },
    },
    io: {
      initial: 'idle',
      states: {
        idle: { on: { 'step.request': 'reading' } },
        reading: {
          invoke: {
            id: 'clusterStep',
            src: 'clusterStep',
            input: ({ context }) => ({
              lvolId: context.lvolId,
              fromClusterIndex: context.progress!.nextClusterIndex,
              targets: context.progress!.targets,
            }),
            onDone: { target: 'idle', actions: { type: 'raiseClusterDone', params: ({ event }) => event.output } },
            // The provided step reports device errors as values; a rejection is a bug, still recorded.
            onError: {
              target: 'idle',
              actions: {
                type: 'raiseClusterDone',
                params: ({ context, event }) => ({
                  kind: 'error' as const,
                  message: errorMessage(event.error),
                  atMs: context.progress?.resumedAtMs ?? 0,
                }),
              },
            },
          },
        },
      },
    },
  },
});

function newProgress(event: Extract<LvolEvent, { type: 'checksum.start' }>): ChecksumProgress {
  return {
    runId: event.runId,
    mode: event.mode,
    targets: event.targets ?? null,
    clustersTotal: event.clustersTotal,
    clustersDone: 0,
    bytesDone: 0,
    nextClusterIndex: 0,
    runningCrc: 0n,
    rangeCrcs: new Map(),
    startedAtMs: event.atMs,
    activeMs: 0,
    resumedAtMs: event.atMs,
    finishedAtMs: null,
    reason: null,
    error: null,
  };
}

function finish(progress: ChecksumProgress, atMs: number, changes: Partial<ChecksumProgress>): ChecksumProgress {
  return {
    ...progress,
    activeMs: progress.activeMs + Math.max(0, atMs - progress.resumedAtMs),
    finishedAtMs: atMs,
    ...changes,
  };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
