// One copy operation (shallow, range shallow or deep copy of an lvol to another bdev): Longhorn's
// replica rebuild. Like the checksum walk it moves one step (one cluster, or one run of holes)
// per event, so a stop, a delete of its source or destination, or shutdown ends it between steps.
//
//   queued ──admit──▶ copying ──(last step)──▶ done
//     │                 │ └──step failed──▶ failed
//     └──stop──▶ stopped ◀──stopping ◀──stop──┘   (the step in flight finishes first)
import { assertEvent, assign, setup } from 'xstate';

export type CopyKind = 'shallow' | 'range' | 'deep';
export type CopyState = 'queued' | 'copying' | 'stopping' | 'done' | 'failed' | 'stopped';

/** What one step did: `clusters` counts the logical clusters it covered. */
export type CopyStepOutput =
  | { kind: 'copied'; clusters: number; bytes: number }
  | { kind: 'unmapped'; clusters: number }
  | { kind: 'zeroed'; clusters: number }
  | { kind: 'end' }
  | { kind: 'error'; message: string };

export interface CopyContext {
  readonly operationId: number;
  readonly kind: CopyKind;
  readonly sourceId: string;
  readonly destination: string;
  /** Logical clusters the copy will cover (copied, unmapped or zeroed). */
  readonly totalClusters: number;
  readonly processedClusters: number;
  readonly copiedClusters: number;
  readonly unmappedClusters: number;
  readonly bytesCopied: number;
  readonly error: string | null;
  /** Why a copy stopped before the end (a delete of its source, a stop, shutdown). */
  readonly reason: string | null;
}

export type CopyInput = Pick<CopyContext, 'operationId' | 'kind' | 'sourceId' | 'destination' | 'totalClusters'>;

export type CopyEvent =
  | { type: 'copy.admit' }
  | { type: 'step.done'; output: CopyStepOutput }
  | { type: 'copy.stop'; reason: string };

export const copyMachine = setup({
  types: {
    context: {} as CopyContext,
    events: {} as CopyEvent,
    input: {} as CopyInput,
  },
  actions: {
    record: assign(({ context, event }) => {
      assertEvent(event, 'step.done');
      const output = event.output;
      if (output.kind === 'end' || output.kind === 'error') return {};
      return {
        processedClusters: context.processedClusters + output.clusters,
        copiedClusters: context.copiedClusters + (output.kind === 'copied' ? output.clusters : 0),
        unmappedClusters: context.unmappedClusters + (output.kind === 'unmapped' ? output.clusters : 0),
        bytesCopied: context.bytesCopied + (output.kind === 'copied' ? output.bytes : 0),
      };
    }),
    recordError: assign(({ event }) => {
      assertEvent(event, 'step.done');
      return { error: event.output.kind === 'error' ? event.output.message : 'unexpected step result' };
    }),
    recordStop: assign(({ event }) => {
      assertEvent(event, 'copy.stop');
      return { reason: event.reason };
    }),
    // Provided by the actor layer (src/actors/copies.ts).
    requestAdmission: () => {},
    releaseAdmission: () => {},
    requestStep: () => {},
  },
  guards: {
    ended: ({ event }) => event.type === 'step.done' && event.output.kind === 'end',
    stepFailed: ({ event }) => event.type === 'step.done' && event.output.kind === 'error',
  },
}).createMachine({
  id: 'copy',
  context: ({ input }) => ({
    ...input,
    processedClusters: 0,
    copiedClusters: 0,
    unmappedClusters: 0,
    bytesCopied: 0,
    error: null,
    reason: null,
  }),
  initial: 'queued',
  states: {
    queued: {
      entry: 'requestAdmission',
      on: {
        'copy.admit': 'copying',
        'copy.stop': { target: 'stopped', actions: 'recordStop' },
      },
    },
    copying: {
      entry: 'requestStep',
      on: {
        'step.done': [
          { guard: 'ended', target: 'done' },
          { guard: 'stepFailed', target: 'failed', actions: 'recordError' },
          { target: 'copying', reenter: true, actions: 'record' },
        ],
        'copy.stop': { target: 'stopping', actions: 'recordStop' },
      },
    },
    stopping: {
      on: {
        'step.done': [
          { guard: 'stepFailed', target: 'failed', actions: 'recordError' },
          { target: 'stopped', actions: 'record' },
        ],
      },
    },
    done: { type: 'final', entry: 'releaseAdmission' },
    failed: { type: 'final', entry: 'releaseAdmission' },
    stopped: { type: 'final', entry: 'releaseAdmission' },
  },
});
