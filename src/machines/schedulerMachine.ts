// The node-wide background scheduler: which checksum walks may run now, and which wait in order.
//
// One actor for the whole node. Lvol actors ask for a slot when a walk starts (`walk.request`)
// and give it back when the walk leaves its running states (`walk.release`); at most
// `maxConcurrent` walks hold a slot, the rest wait in `queue` in arrival order. The machine's
// states say at a glance what the node's background is doing: `idle` (nothing to do), `running`
// (slots in use, nobody waiting) or `saturated` (walks are waiting for a slot).
//
// The queue is a persistent WalkQueue: a request or release costs O(log n) however many walks
// wait (an array copied per event cost O(n): 16,000 waiting walks took seconds to admit and to
// release), and every snapshot keeps the queue it had. `running` stays an array: it holds at most
// the highest cap ever set (checksumConcurrencyMax), not the waiting walks.
//
// The verification policy's own rate cap (issue 21) is here too, where the inspector shows it: the
// walks the policy started (`policyWalks`) are paced to `policyRateBytesPerSec` together, on top of
// the node-wide cap; a client's verify and checksum registrations are not.
import { assertEvent, assign, not, setup } from 'xstate';
import { WalkQueue } from './walkQueue.ts';

export interface SchedulerOptions {
  /** Walks that may compute at once (at least 1). */
  readonly maxConcurrent: number;
  /** Node-wide cap on checksum reads, bytes per second; 0 means unlimited. */
  readonly rateBytesPerSec: number;
}

export interface SchedulerContext extends SchedulerOptions {
  /** Lvol ids waiting for a slot, first come first served (inspection shows its length and head). */
  readonly queue: WalkQueue;
  /** Lvol ids holding a slot, in the order they were admitted. */
  readonly running: readonly string[];
  /** The ids admitted by the latest event, for `announceAdmitted`. */
  readonly admitted: readonly string[];
  /** Every admission since start, for the stats. */
  readonly admissionCount: number;
  /** The verification policy's cap on the reads of the verifies it started, bytes per second; 0: none of its own. */
  readonly policyRateBytesPerSec: number;
  /** Lvol ids whose running walk the policy started (at most verifyPolicyStartedMax). */
  readonly policyWalks: readonly string[];
}

export type SchedulerEvent =
  | { type: 'walk.request'; lvolId: string }
  | { type: 'walk.release'; lvolId: string }
  | { type: 'options.set'; maxConcurrent: number; rateBytesPerSec: number }
  | { type: 'policy.set_rate'; rateBytesPerSec: number }
  | { type: 'policy.add_walk'; lvolId: string }
  | { type: 'policy.remove_walk'; lvolId: string };

const noneAdmitted: readonly string[] = Object.freeze([]);

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
      if (context.queue.has(event.lvolId) || context.running.includes(event.lvolId)) return {};
      return { queue: context.queue.push(event.lvolId) };
    }),
    // A walk holds a slot or waits, never both: only the one it is in changes.
    release: assign(({ context, event }) => {
      assertEvent(event, 'walk.release');
      if (context.running.includes(event.lvolId)) return { running: context.running.filter((id) => id !== event.lvolId) };
      return { queue: context.queue.remove(event.lvolId) };
    }),
    setOptions: assign(({ event }) => {
      assertEvent(event, 'options.set');
      return { maxConcurrent: event.maxConcurrent, rateBytesPerSec: event.rateBytesPerSec };
    }),
    setPolicyRate: assign(({ event }) => {
      assertEvent(event, 'policy.set_rate');
      return { policyRateBytesPerSec: event.rateBytesPerSec };
    }),
    addPolicyWalk: assign(({ context, event }) => {
      assertEvent(event, 'policy.add_walk');
      return context.policyWalks.includes(event.lvolId) ? {} : { policyWalks: [...context.policyWalks, event.lvolId] };
    }),
    removePolicyWalk: assign(({ context, event }) => {
      assertEvent(event, 'policy.remove_walk');
      return { policyWalks: context.policyWalks.filter((id) => id !== event.lvolId) };
    }),
    // Fills free slots from the head of the queue. Lowering the cap never stops a running walk:
    // the excess finishes, and nobody is admitted until the count is below the new cap.
    admit: assign(({ context }) => {
      const free = Math.max(0, context.maxConcurrent - context.running.length);
      if (free === 0 || context.queue.length === 0) return context.admitted.length === 0 ? {} : { admitted: noneAdmitted };
      const { taken: admitted, rest } = context.queue.takeFirst(free);
      return {
        queue: rest,
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
  context: ({ input }) => ({ ...input, queue: WalkQueue.empty, running: [], admitted: noneAdmitted, admissionCount: 0, policyRateBytesPerSec: 0, policyWalks: [] }),
  initial: 'idle',
  on: {
    'walk.request': { actions: ['enqueue', 'admit', 'announceAdmitted'] },
    'walk.release': { actions: ['release', 'admit', 'announceAdmitted'] },
    'options.set': { actions: ['setOptions', 'admit', 'announceAdmitted'] },
    'policy.set_rate': { actions: 'setPolicyRate' },
    'policy.add_walk': { actions: 'addPolicyWalk' },
    'policy.remove_walk': { actions: 'removePolicyWalk' },
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
