// The verification policy runner: whether verify reads may happen now (inside a window) and when that changes.
//
// One actor for the whole node (src/actors/verifyPolicy.ts binds it to the lvol actors). Its states
// say what the policy is doing: `disabled`, `outsideWindow` (no verify read happens; the running
// ones were stopped on entry) or `inWindow` (due snapshots are started, oldest verification
// first). The time until the window opens or closes is an XState delay, so a test drives it with
// a simulated clock, and the inspector shows each change. Windows are in UTC: a node's schedule
// does not move with its host's time zone or daylight saving time.
import { assertEvent, assign, setup } from 'xstate';
import { verifyBackoffMsMin, verifyPolicyDelayMsMax, verifyPolicyRescanMs } from '../constants.ts';

/** Hours [start_hour, end_hour) UTC on the given weekdays (0 = Sunday … 6 = Saturday). */
export interface VerifyWindow {
  readonly days: readonly number[];
  readonly start_hour: number;
  readonly end_hour: number;
}

/** The policy in its wire form (node_get_verify_policy), as saved in the data directory. */
export interface VerifyPolicy {
  readonly enabled: boolean;
  /** Each snapshot is verified again this long after its last verification… */
  readonly interval_sec: number;
  /** …plus a per-snapshot share of this (0 … jitter_sec), so snapshots verified together spread out. */
  readonly jitter_sec: number;
  /** Overdue: not verified within interval + jitter + grace. */
  readonly grace_sec: number;
  /** Empty: always open. */
  readonly windows: readonly VerifyWindow[];
  readonly verify_after_register: boolean;
  /**
   * The policy's own cap on the reads of the verifies it starts, MiB per second (the scheduler
   * paces them, on top of checksum_rate_mib_per_sec); 0: none of its own. Client verifies and
   * checksum registrations are not held to it.
   */
  readonly rate_mib_per_sec: number;
}

export function defaultVerifyPolicy(): VerifyPolicy {
  return {
    enabled: false,
    interval_sec: 7 * 24 * 3600,
    jitter_sec: 24 * 3600,
    grace_sec: 7 * 24 * 3600,
    windows: [],
    verify_after_register: false,
    rate_mib_per_sec: 0,
  };
}

const hourMs = 3600 * 1000;

/** Whether verify reads may happen at `atMs` (UTC). */
export function windowOpenAt(windows: readonly VerifyWindow[], atMs: number): boolean {
  if (windows.length === 0) return true;
  const date = new Date(atMs);
  const day = date.getUTCDay();
  const hour = date.getUTCHours();
  return windows.some((window) => window.days.includes(day) && hour >= window.start_hour && hour < window.end_hour);
}

/**
 * Milliseconds from `atMs` until the window state changes (an hour boundary where open turns
 * closed or back), or Infinity when it never does (no windows, or windows covering the week).
 */
export function msUntilWindowChange(windows: readonly VerifyWindow[], atMs: number): number {
  if (windows.length === 0) return Number.POSITIVE_INFINITY;
  const open = windowOpenAt(windows, atMs);
  const nextHourMs = Math.floor(atMs / hourMs) * hourMs + hourMs;
  // A week of hour boundaries (and one more) covers every pattern of weekly windows.
  for (let hour = 0; hour <= 7 * 24; hour++) {
    const boundaryMs = nextHourMs + hour * hourMs;
    if (windowOpenAt(windows, boundaryMs) !== open) return boundaryMs - atMs;
  }
  return Number.POSITIVE_INFINITY;
}

/** A snapshot whose policy verifies failed on read errors: not started again before `retryAtMs`. */
export interface VerifyBackoff {
  readonly failures: number;
  readonly retryAtMs: number;
}

export interface VerifyPolicyContext {
  readonly policy: VerifyPolicy;
  /** By lvol id: snapshots backing off after verifies that failed on read errors (issue 21). */
  readonly backingOff: Readonly<Record<string, VerifyBackoff>>;
}

/**
 * How a verify the policy started ended: `done` (a result was recorded, clean or corrupt),
 * `readError` (the walk failed on a device read), or `other` (stopped, preempted, gone).
 */
export type VerifyOutcome = 'done' | 'readError' | 'other';

export type VerifyPolicyEvent =
  | { type: 'policy.set'; policy: VerifyPolicy }
  | { type: 'verify.ended'; lvolId: string; outcome: VerifyOutcome; atMs: number }
  | { type: 'checksum.registered'; lvolId: string }
  // Snapshots no longer there (deleted, their lvstore unloaded): their back-off entries go.
  | { type: 'lvols.gone'; lvolIds: readonly string[] };

/**
 * The wait before snapshot retries after its `failures`-th failed verify in a row: one minute,
 * doubling, at most the policy's interval (a snapshot is never retried later than it would have
 * been verified anyway).
 */
export function backoffMs(failures: number, intervalSec: number): number {
  const capMs = Math.max(verifyBackoffMsMin, intervalSec * 1000);
  return Math.min(capMs, verifyBackoffMsMin * 2 ** Math.min(failures - 1, 40));
}

/** The back-off after a verify ended: a read error backs off (longer each time in a row), a result clears it. */
export function nextBackoff(
  backingOff: Readonly<Record<string, VerifyBackoff>>,
  ended: { lvolId: string; outcome: VerifyOutcome; atMs: number },
  intervalSec: number,
): Readonly<Record<string, VerifyBackoff>> {
  const { lvolId, outcome, atMs } = ended;
  const { [lvolId]: previous, ...rest } = backingOff;
  if (outcome === 'done') return previous === undefined ? backingOff : rest;
  if (outcome !== 'readError') return backingOff;
  const failures = (previous?.failures ?? 0) + 1;
  return { ...rest, [lvolId]: { failures, retryAtMs: atMs + backoffMs(failures, intervalSec) } };
}

/** The back-off entries without those of `lvolIds` (the same object when none of them had one). */
export function withoutBackoff(backingOff: Readonly<Record<string, VerifyBackoff>>, lvolIds: readonly string[]): Readonly<Record<string, VerifyBackoff>> {
  if (!lvolIds.some((lvolId) => Object.hasOwn(backingOff, lvolId))) return backingOff;
  const gone = new Set(lvolIds);
  return Object.fromEntries(Object.entries(backingOff).filter(([lvolId]) => !gone.has(lvolId)));
}

export const verifyPolicyMachine = setup({
  types: {
    context: {} as VerifyPolicyContext,
    events: {} as VerifyPolicyEvent,
    input: {} as { policy: VerifyPolicy },
  },
  actions: {
    setPolicy: assign(({ event }) => {
      assertEvent(event, 'policy.set');
      return { policy: event.policy };
    }),
    noteOutcome: assign(({ context, event }) => {
      assertEvent(event, 'verify.ended');
      return { backingOff: nextBackoff(context.backingOff, event, context.policy.interval_sec) };
    }),
    forgetBackoff: assign(({ context, event }) => {
      assertEvent(event, 'lvols.gone');
      return { backingOff: withoutBackoff(context.backingOff, event.lvolIds) };
    }),
    // Provided by the actor layer (src/actors/verifyPolicy.ts), which holds the lvol actors.
    scanDue: () => {},
    startDue: () => {},
    stopRunning: () => {},
    rememberRegistered: () => {},
  },
  guards: {
    enabled: ({ context }) => context.policy.enabled,
    // Provided with the runtime's clock (verifyPolicyMachineAt): whether a window is open now.
    windowOpen: () => false,
  },
  delays: {
    // Provided with the runtime's clock: until the window opens or closes.
    untilWindowChange: verifyPolicyDelayMsMax,
    rescan: verifyPolicyRescanMs,
  },
}).createMachine({
  id: 'verifyPolicy',
  context: ({ input }) => ({ policy: input.policy, backingOff: {} }),
  initial: 'checking',
  on: {
    'policy.set': { target: '.checking', actions: 'setPolicy' },
    'checksum.registered': { actions: 'rememberRegistered' },
    // A verify that ends outside a window (a failure as it closed) still counts for its back-off.
    'verify.ended': { actions: 'noteOutcome' },
    'lvols.gone': { actions: 'forgetBackoff' },
  },
  states: {
    checking: {
      always: [
        { guard: 'enabled', target: 'open' },
        { target: 'disabled' },
      ],
    },
    open: {
      // A pass-through: decides which side of a window the clock is on.
      always: [{ guard: 'windowOpen', target: 'inWindow' }, { target: 'outsideWindow' }],
    },
    disabled: {
      entry: 'stopRunning',
    },
    outsideWindow: {
      tags: ['noVerifyReads'],
      entry: 'stopRunning',
      after: { untilWindowChange: { target: 'checking' } },
    },
    inWindow: {
      entry: ['scanDue', 'startDue'],
      on: {
        'verify.ended': { actions: ['noteOutcome', 'startDue'] },
        'checksum.registered': { actions: ['rememberRegistered', 'startDue'] },
      },
      after: {
        untilWindowChange: { target: 'checking' },
        // Through `checking`: a re-scan that comes due together with the window's end must not start anything.
        rescan: { target: 'checking' },
      },
    },
  },
});

/** The machine with its clock-reading guard and delay bound to `nowMs` (the runtime's clock). */
export function verifyPolicyMachineAt(nowMs: () => number): typeof verifyPolicyMachine {
  return verifyPolicyMachine.provide({
    guards: { windowOpen: ({ context }) => windowOpenAt(context.policy.windows, nowMs()) },
    delays: {
      // At least 1 ms, so a boundary reached exactly re-checks after the clock moved past it.
      untilWindowChange: ({ context }) => Math.max(1, Math.min(verifyPolicyDelayMsMax, msUntilWindowChange(context.policy.windows, nowMs()))),
    },
  });
}
