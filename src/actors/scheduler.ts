// The node-wide background scheduler actor: admits checksum walks up to a cap, in order, and paces them.
//
// The decisions (who runs, who waits, in what order) live in schedulerMachine, so the inspector
// shows every admission and the queue. This wrapper binds it to the lvol actors (their admit
// callbacks), paces reads to the optional rate limit, and measures background bytes/s.
import { type Actor, createActor } from 'xstate';
import { availableParallelism } from 'node:os';
import {
  backgroundBusyStepIntervalMs,
  checksumConcurrencyMax,
  checksumRateMibPerSecMax,
  foregroundQuietMs,
  mibBytes,
} from '../constants.ts';
import { IoAbortedError } from '../device/ioQueue.ts';
import { fail } from '../errors.ts';
import { log } from '../log.ts';
import { schedulerMachine } from '../machines/schedulerMachine.ts';
import type { Runtime } from '../runtime.ts';
import type { InspectionHub } from './inspector.ts';
import type { KeyedMutex } from './keyedMutex.ts';
import type { LvolActor } from './lvolActor.ts';
import { RateMeter } from './rateMeter.ts';
import type { LvstoreEntry, Registry } from './registry.ts';

/** What a walk needs from whoever admits it: a slot, pacing, and a place to count its bytes. */
export interface WalkAdmission {
  /** Asks for a slot; `admit` is called once, when the walk may compute (maybe at once). */
  request(lvolId: string, admit: () => void): void;
  /** Gives the slot back, or leaves the queue: the walk ended, stopped, was preempted or is gone. */
  release(lvolId: string): void;
  /** 1-based place in the queue, or null when not waiting. */
  queuePosition(lvolId: string): number | null;
  /**
   * Reserves `bytes` under the rate limit: undefined when the read may start now, else a promise
   * that resolves when it may (rejecting IoAbortedError if `signal` fires first). No promise when
   * there is no wait, so a read that may start does start at once. `lvolId`: whose walk reads (a
   * walk the verification policy started is also paced to the policy's own cap).
   */
  pace(bytes: number, signal: AbortSignal, lvolId?: string): Promise<void> | undefined;
  /** Counts bytes a walk has read, for the background rate. */
  recordBytes(bytes: number): void;
}

/** Admits every walk at once with no pacing: for lvol actors used without a node (unit tests). */
export const immediateAdmission: WalkAdmission = {
  request: (_lvolId, admit) => admit(),
  release: () => {},
  queuePosition: () => null,
  pace: () => undefined,
  recordBytes: () => {},
};

/** A timer source, as XState's clock (which xstate does not export by name): real timers, or a test's SimulatedClock. */
export interface Clock {
  setTimeout(fn: () => void, timeout: number): unknown;
  clearTimeout(id: unknown): void;
}

/**
 * What the verification policy tells the scheduler (issue 21): its own cap on the reads of the
 * verifies it started, and which walks those are. Client verifies and registrations are not paced by it.
 */
export interface PolicyPacing {
  /** 0: no cap beyond the node-wide one. `clock`: what its waits run on (tests: the policy's SimulatedClock). */
  setPolicyRate(rateBytesPerSec: number, clock?: Clock): void;
  policyWalkStarted(lvolId: string): void;
  policyWalkEnded(lvolId: string): void;
}

/** The wire form of the options (node_get_background_options), persisted across restarts. */
export interface BackgroundOptions {
  max_concurrent_checksums: number;
  checksum_rate_mib_per_sec: number;
}

// Re-queueing interrupted walks after a load: at most this many walks are held per slice, and at
// most this many lvols are looked at (in their records) to find them before the loop gets a turn.
const resumeSliceWalksMax = 16;
const resumeScanLvolsMax = 4096;

/** The scheduler's actor id in the inspection stream. */
export const schedulerActorId = 'scheduler';

export function defaultBackgroundOptions(): BackgroundOptions {
  return { max_concurrent_checksums: Math.max(1, availableParallelism()), checksum_rate_mib_per_sec: 0 };
}

const realClock: Clock = {
  setTimeout: (fn, timeout) => setTimeout(fn, timeout),
  clearTimeout: (id) => clearTimeout(id as NodeJS.Timeout),
};

export class BackgroundScheduler implements WalkAdmission, PolicyPacing {
  readonly actor: Actor<typeof schedulerMachine>;
  private readonly admitCallbacks = new Map<string, () => void>();
  private readonly meter: RateMeter;
  // Pacing: the time at which the next read may start, shared by every walk (a node-wide cap).
  private nextReadAtMs = 0;
  // The same for the policy's walks under its own cap, and the clock their waits run on.
  private nextPolicyReadAtMs = 0;
  private policyClock: Clock = realClock;
  private policyPacedWaits = 0;
  // Foreground first: when the last client request started, and when the next step may start
  // while requests keep coming.
  private lastForegroundMs = Number.NEGATIVE_INFINITY;
  private nextBusyStepAtMs = 0;
  private busyDelays = 0;
  private optionsChanged: Promise<void> = Promise.resolve();

  constructor(
    private readonly runtime: Runtime,
    inspector: InspectionHub,
    options: BackgroundOptions = defaultBackgroundOptions(),
    private readonly onOptionsChanged: (options: BackgroundOptions) => Promise<void> = async () => {},
  ) {
    const initial = validateBackgroundOptions(options);
    this.meter = new RateMeter(runtime.nowMs());
    const machine = schedulerMachine.provide({
      actions: {
        announceAdmitted: ({ context }) => {
          for (const lvolId of context.admitted) {
            const admit = this.admitCallbacks.get(lvolId);
            this.admitCallbacks.delete(lvolId);
            admit?.();
          }
        },
      },
    });
    this.actor = createActor(machine, {
      id: schedulerActorId,
      input: toMachineOptions(initial),
      inspect: inspector.observerFor(schedulerActorId),
    });
    this.actor.subscribe({ error: (error) => log('error', 'scheduler actor failed', { error: String(error) }) });
    this.actor.start();
  }

  request(lvolId: string, admit: () => void): void {
    this.admitCallbacks.set(lvolId, admit);
    this.actor.send({ type: 'walk.request', lvolId });
  }

  release(lvolId: string): void {
    this.admitCallbacks.delete(lvolId);
    this.actor.send({ type: 'walk.release', lvolId });
  }

  /** O(log n) in the walks waiting: a status reads it for every queued walk it lists. */
  queuePosition(lvolId: string): number | null {
    return this.actor.getSnapshot().context.queue.position(lvolId);
  }

  /** A client request started: for a while, steps are spaced out (see foregroundQuietMs). */
  noteForeground(): void {
    this.lastForegroundMs = this.runtime.nowMs();
  }

  pace(bytes: number, signal: AbortSignal, lvolId?: string): Promise<void> | undefined {
    const context = this.actor.getSnapshot().context;
    const rate = context.rateBytesPerSec;
    const policyRate = lvolId !== undefined && context.policyRateBytesPerSec > 0 && context.policyWalks.includes(lvolId) ? context.policyRateBytesPerSec : 0;
    const nowMs = this.runtime.nowMs();
    const busy = nowMs - this.lastForegroundMs < foregroundQuietMs;
    if (rate === 0 && policyRate === 0 && !busy) return undefined;
    // Both caps reserve from the same start: the later of the two, so neither is overrun.
    let startAtMs = Math.max(nowMs, rate > 0 ? this.nextReadAtMs : nowMs, policyRate > 0 ? this.nextPolicyReadAtMs : nowMs);
    if (rate > 0) this.nextReadAtMs = startAtMs + (bytes * 1000) / rate;
    if (policyRate > 0) this.nextPolicyReadAtMs = startAtMs + (bytes * 1000) / policyRate;
    if (busy) {
      startAtMs = Math.max(startAtMs, this.nextBusyStepAtMs);
      this.nextBusyStepAtMs = startAtMs + backgroundBusyStepIntervalMs;
      this.busyDelays++;
    }
    if (startAtMs <= nowMs) return undefined;
    if (policyRate > 0) this.policyPacedWaits++;
    const clock = policyRate > 0 ? this.policyClock : realClock;
    return new Promise<void>((resolve, reject) => {
      const timer = clock.setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, startAtMs - nowMs);
      const onAbort = (): void => {
        clock.clearTimeout(timer);
        reject(new IoAbortedError());
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  setPolicyRate(rateBytesPerSec: number, clock?: Clock): void {
    if (clock) this.policyClock = clock;
    // A new cap applies to the next read, not after a wait computed under the old one.
    this.nextPolicyReadAtMs = 0;
    this.actor.send({ type: 'policy.set_rate', rateBytesPerSec });
  }

  policyWalkStarted(lvolId: string): void {
    this.actor.send({ type: 'policy.add_walk', lvolId });
  }

  policyWalkEnded(lvolId: string): void {
    this.actor.send({ type: 'policy.remove_walk', lvolId });
  }

  recordBytes(bytes: number): void {
    this.meter.add(bytes, this.runtime.nowMs());
  }

  options(): BackgroundOptions {
    // The machine's context is the one place the options live (the inspector shows them there).
    const { maxConcurrent, rateBytesPerSec } = this.actor.getSnapshot().context;
    return { max_concurrent_checksums: maxConcurrent, checksum_rate_mib_per_sec: rateBytesPerSec / mibBytes };
  }

  /** Changes the options (each one optional) and persists them before answering. */
  setOptions(changes: Partial<BackgroundOptions>): Promise<void> {
    // One change at a time: each starts from the options the previous one left, and the saved
    // file and the machine end with the same options (concurrent saves would race on the file).
    const applied = this.optionsChanged.then(async () => {
      const next = validateBackgroundOptions({ ...this.options(), ...changes });
      await this.onOptionsChanged(next);
      // A new rate applies to the next read, not after a wait computed under the old one.
      this.nextReadAtMs = 0;
      this.actor.send({ type: 'options.set', ...toMachineOptions(next) });
      log('info', 'background options set', { ...next });
    });
    this.optionsChanged = applied.catch(() => undefined);
    return applied;
  }

  stats(): {
    state: string;
    running: number;
    queued: number;
    admissions: number;
    bytes_per_sec: number;
    bytes_total: number;
    steps_spaced_for_foreground: number;
    policy_reads_paced: number;
  } & BackgroundOptions {
    const snapshot = this.actor.getSnapshot();
    return {
      ...this.options(),
      state: String(snapshot.value),
      running: snapshot.context.running.length,
      queued: snapshot.context.queue.length,
      admissions: snapshot.context.admissionCount,
      bytes_per_sec: this.meter.bytesPerSec(this.runtime.nowMs()),
      bytes_total: this.meter.totalBytes,
      steps_spaced_for_foreground: this.busyDelays,
      // Reads of policy-started verifies that waited (the policy's cap or the node's, whichever bound).
      policy_reads_paced: this.policyPacedWaits,
    };
  }

  stop(): void {
    this.actor.stop();
  }
}

/**
 * After a load: walks that were running (or preempted) when the node stopped resume by themselves
 * (SPEC §6.6), queued in the order their lvols load, in slices of about `sliceMs` with a turn of
 * the event loop between them. A resume starts the lvol's actor and queues its walk: 16,000 of
 * them in one pass held the loop for seconds. A slice holds the lvols it resumes (`locks`), so a
 * priority operation on one of them (a delete, a merge) comes wholly before or after its resume.
 * Returns how many walks were re-queued.
 */
export async function resumeInterruptedWalks(registry: Registry, locks: KeyedMutex, entry: LvstoreEntry, sliceMs = 2): Promise<number> {
  const loaded = () => registry.lvstores.get(entry.store.id) === entry;
  const actors = entry.actors.values();
  let pending: LvolActor[] = [];
  let exhausted = false;
  let resumed = 0;
  // Every slice in a turn of its own, the first too: not in the load's (which attached every actor).
  for (await turn(); loaded(); await turn()) {
    // Decided from the records (cheap): the actors of walks that do not resume start in their slice.
    for (let visited = 0; !exhausted && pending.length < resumeSliceWalksMax && visited < resumeScanLvolsMax; visited++) {
      const next = actors.next();
      if (next.done) exhausted = true;
      else if (next.value.resumesAfterLoad) pending.push(next.value);
    }
    if (exhausted && pending.length === 0) break;
    const slice = pending;
    pending = await locks.run(
      slice.map((actor) => actor.lvolId),
      async () => {
        const endMs = performance.now() + sliceMs;
        let index = 0;
        // At least one walk per slice, however short the slice.
        for (; index < slice.length && (index === 0 || performance.now() < endMs) && loaded(); index++) {
          const actor = slice[index]!;
          // Gone (deleted) or changed (resumed by hand, invalidated by a merge) since it was picked: skipped.
          if (entry.actors.get(actor.lvolId) === actor && actor.resumesAfterLoad && actor.resumeInBackground()) resumed++;
        }
        return slice.slice(index);
      },
    );
  }
  return resumed;
}

function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function toMachineOptions(options: BackgroundOptions): { maxConcurrent: number; rateBytesPerSec: number } {
  return { maxConcurrent: options.max_concurrent_checksums, rateBytesPerSec: options.checksum_rate_mib_per_sec * mibBytes };
}

/** Checks options from a request or from the saved file: a bad one is refused, never clamped. */
export function validateBackgroundOptions(options: BackgroundOptions): BackgroundOptions {
  const { max_concurrent_checksums: concurrent, checksum_rate_mib_per_sec: rate } = options;
  if (!Number.isInteger(concurrent) || concurrent < 1 || concurrent > checksumConcurrencyMax) {
    fail('EINVAL', `max_concurrent_checksums must be an integer from 1 to ${checksumConcurrencyMax}`);
  }
  if (!Number.isFinite(rate) || rate < 0 || rate > checksumRateMibPerSecMax) {
    fail('EINVAL', `checksum_rate_mib_per_sec must be from 0 (unlimited) to ${checksumRateMibPerSecMax}`);
  }
  return { max_concurrent_checksums: concurrent, checksum_rate_mib_per_sec: rate };
}
