// The node-wide background scheduler: which checksum walks may run now, and which wait in order.
//
// One actor for the whole node. Lvol actors ask for a slot when a walk starts (`walk.request`)
// and give it back when the walk leaves its running states (`walk.release`); at most
// `maxConcurrent` walks hold a slot, the rest wait in `queue` in arrival order. The machine's
// states say at a glance what the node's background is doing: `idle` (nothing to do), `running`
// (slots in use, nobody waiting) or `saturated` (walks are waiting for a slot).
import { assertEvent, assign, not, setup } from 'xstate';

export interface SchedulerOptions {
  /** Walks that may compute at once (at least 1). */
  readonly maxConcurrent: number;
  /** Node-wide cap on checksum reads, bytes per second; 0 means unlimited. */
  readonly rateBytesPerSec: number;
}

export interface SchedulerContext extends SchedulerOptions {
  /** Lvol ids waiting for a slot, first come first served. */
  readonly queue: readonly string[];
  /** Lvol ids holding a slot. */
  readonly running: readonly string[];
  /** The ids admitted by the latest event, for `announceAdmitted`. */
  readonly admitted: readonly string[];
  /** Every admission since start, for the stats. */
  readonly admissionCount: number;
}

export type SchedulerEvent =
  | { type: 'walk.request'; lvolId: string }
  | { type: 'walk.release'; lvolId: string }
  | { type: 'options.set'; maxConcurrent: number; rateBytesPerSec: number };

export const schedulerMachine = setup({
  types: {
    context: {} as SchedulerContext,
    events: {} as SchedulerEvent,
    input: {} as SchedulerOptions,
  },
  actions: {
    enqueue: assign(({ context, event }) => {
      assertEvent(event, 'walk.request');
      // A walk asks once per run; a repeated ask (it is already waiting or running) changes nothing.
      if (context.queue.includes(event.lvolId) || context.running.includes(event.lvolId)) return {};
      return { queue: [...context.queue, event.lvolId] };
    }),
    release: assign(({ context, event }) => {
      assertEvent(event, 'walk.release');
      return {
        queue: context.queue.filter((id) => id !== event.lvolId),
        running: context.running.filter((id) => id !== event.lvolId),
      };
    }),
    setOptions: assign(({ event }) => {
      assertEvent(event, 'options.set');
      return { maxConcurrent: event.maxConcurrent, rateBytesPerSec: event.rateBytesPerSec };
    }),
    // Fills free slots from the head of the queue. Lowering the cap never stops a running walk:
    // the excess finishes, and nobody is admitted until the count is below the new cap.
    admit: assign(({ context }) => {
      const free = Math.max(0, context.maxConcurrent - context.running.length);
      const admitted = context.queue.slice(0, free);
      if (admitted.length === 0) return { admitted: [] };
      return {
        queue: context.queue.slice(admitted.length),
        running: [...context.running, ...admitted],
        admitted,
        admissionCount: context.admissionCount + admitted.length,
      };
    }),
    // Provided by the actor layer (src/actors/scheduler.ts): tells each admitted lvol actor.
    announceAdmitted: () => {},
  },
  guards: {
    nothingToDo: ({ context }) => context.queue.length === 0 && context.running.length === 0,
    walksWaiting: ({ context }) => context.queue.length > 0,
    noneWaiting: ({ context }) => context.queue.length === 0,
  },
}).createMachine({
  id: 'scheduler',
  context: ({ input }) => ({ ...input, queue: [], running: [], admitted: [], admissionCount: 0 }),
  initial: 'idle',
  on: {
    'walk.request': { actions: ['enqueue', 'admit', 'announceAdmitted'] },
    'walk.release': { actions: ['release', 'admit', 'announceAdmitted'] },
    'options.set': { actions: ['setOptions', 'admit', 'announceAdmitted'] },
  },
  states: {
    idle: {
      always: [
        { guard: 'walksWaiting', target: 'saturated' },
        { guard: not('nothingToDo'), target: 'running' },
      ],
    },
    running: {
      always: [
        { guard: 'nothingToDo', target: 'idle' },
        { guard: 'walksWaiting', target: 'saturated' },
      ],
    },
    saturated: {
      always: [
        { guard: 'nothingToDo', target: 'idle' },
        { guard: 'noneWaiting', target: 'running' },
      ],
    },
  },
});
