// The verification policy actor: starts due snapshot verifies inside windows and stops them at a window's end.
//
// The decisions of when (windows, re-checks) live in verifyPolicyMachine, so the inspector shows
// them; this wrapper picks which snapshots are due (from their lvol records), starts them through
// the same path as bdev_lvol_verify_snapshot (the node-wide scheduler admits them like any walk),
// stops the ones it started when a window closes (reason `verify window closed`: they come back
// `aborted`, resumable) and resumes them where they stood in the next window.
import { type Actor, type ActorOptions, type AnyActorLogic, createActor } from 'xstate';
import type { EventEmitter } from 'node:events';
import { checksumRateMibPerSecMax, mibBytes, verifyPolicyStartedMax, verifyWindowClosedReason } from '../constants.ts';
import { StorageError, fail, fromDeviceError } from '../errors.ts';
import { log } from '../log.ts';
import { type VerifyBackoff, type VerifyOutcome, type VerifyPolicy, defaultVerifyPolicy, verifyPolicyMachineAt } from '../machines/verifyPolicyMachine.ts';
import type { Runtime } from '../runtime.ts';
import { type LvolRecord, fullVerifiedAtMs } from '../store/metadata.ts';
import type { ChecksumService } from './checksums.ts';
import type { InspectionHub } from './inspector.ts';
import type { Registry } from './registry.ts';
import type { PolicyPacing } from './scheduler.ts';

/** The policy actor's id in the inspection stream. */
export const verifyPolicyActorId = 'verifyPolicy';

const busyStates: ReadonlySet<string> = new Set(['queued', 'computing', 'stopping', 'storing']);

/**
 * When a snapshot was last verified, for the interval: its last complete verify; for a verify
 * that was stopped part-way, when that verify started (the one before it ended earlier still);
 * never verified: when the snapshot was made.
 */
export function lastVerifiedMs(lvol: LvolRecord): number {
  const verification = lvol.verification;
  // A whole verify cut short counts from when it started (the one before it ended earlier still).
  if (verification?.result === 'incomplete' && lvol.savedProgress?.mode === 'verify' && (lvol.savedProgress.targets ?? null) === null) return lvol.savedProgress.startedAtMs;
  // An errors-only verify re-reads a few clusters, a copy reads some: neither restarts the interval.
  return fullVerifiedAtMs(verification) ?? lvol.createdAtMs;
}

/** The snapshot's share of the jitter, 0 … jitterMs: fixed per snapshot and verification, so it is the same after a restart. */
export function jitterMsOf(lvolId: string, lastMs: number, jitterMs: number): number {
  if (jitterMs <= 0) return 0;
  // FNV-1a over the id and the time: spreads snapshots verified in the same pass.
  let hash = 0x811c9dc5;
  for (const char of `${lvolId}:${lastMs}`) hash = Math.imul(hash ^ char.charCodeAt(0), 0x01000193) >>> 0;
  return hash % (Math.floor(jitterMs) + 1);
}

/** When the snapshot is due for its next verify. */
export function dueAtMs(lvol: LvolRecord, policy: VerifyPolicy): number {
  const lastMs = lastVerifiedMs(lvol);
  return lastMs + policy.interval_sec * 1000 + jitterMsOf(lvol.id, lastMs, policy.jitter_sec * 1000);
}

function hasChecksums(lvol: LvolRecord): boolean {
  return lvol.snapshot && (lvol.checksum !== null || lvol.rangeChecksums !== null);
}

/** Checks a policy from a request or from the saved file: a bad one is refused, never clamped. */
export function validateVerifyPolicy(policy: VerifyPolicy): VerifyPolicy {
  const positive = (value: number) => Number.isFinite(value) && value >= 0;
  if (!positive(policy.interval_sec) || !positive(policy.jitter_sec) || !positive(policy.grace_sec)) fail('EINVAL', 'intervals must be numbers of seconds ≥ 0');
  if (!positive(policy.rate_mib_per_sec) || policy.rate_mib_per_sec > checksumRateMibPerSecMax) {
    fail('EINVAL', `rate_mib_per_sec must be from 0 (no cap of its own) to ${checksumRateMibPerSecMax}`);
  }
  for (const window of policy.windows) {
    if (!(window.start_hour >= 0 && window.start_hour < window.end_hour && window.end_hour <= 24)) fail('EINVAL', 'a window needs 0 ≤ start_hour < end_hour ≤ 24');
    if (window.days.length === 0 || window.days.some((day) => !Number.isInteger(day) || day < 0 || day > 6)) fail('EINVAL', 'window days are 0 (Sunday) … 6');
  }
  return policy;
}

export interface VerifyPolicyOptions {
  policy?: VerifyPolicy;
  /** Awaited before a new policy takes effect: where it is saved (serve.ts: the data directory). */
  onPolicyChanged?: (policy: VerifyPolicy) => Promise<void>;
  /** The clock XState's delays run on (tests: a SimulatedClock that the runtime reads too). */
  clock?: ActorOptions<AnyActorLogic>['clock'];
  /** The node's scheduler: paces the verifies the policy starts to rate_mib_per_sec (on the same clock). */
  pacing?: PolicyPacing;
}

/** How a verify the policy started ended, for its back-off: only a device read error backs off. */
/** A walk stopped by a priority operation (the node re-queues it once the operation is done). */
function isPreemption(error: unknown): boolean {
  const reason = error instanceof StorageError ? error.data?.reason : undefined;
  return typeof reason === 'string' && reason.startsWith('preempted by ');
}

function outcomeOf(error: unknown): VerifyOutcome {
  return error instanceof StorageError && error.errno === 'EIO' ? 'readError' : 'other';
}

export class VerifyPolicyRunner {
  readonly actor: Actor<ReturnType<typeof verifyPolicyMachineAt>>;
  /** Verifies this runner started that have not ended. */
  private readonly running = new Set<string>();
  /** Of those, the ones a preemption interrupted and the node will resume by itself. */
  private readonly resumingByNode = new Set<string>();
  /** Due snapshots found by the last scan, oldest verification first, not yet started. */
  private dueQueue: string[] = [];
  /** Snapshots registered for the first time, to verify first (verify_after_register). */
  private readonly registered = new Set<string>();
  private readonly onPolicyChanged: (policy: VerifyPolicy) => Promise<void>;
  private readonly pacing: PolicyPacing | undefined;
  private policyChanged: Promise<void> = Promise.resolve();
  private stopped = false;
  /** Every verify this runner started, for the stats. */
  private startedCount = 0;

  constructor(
    private readonly runtime: Runtime,
    private readonly registry: Registry,
    private readonly checksums: ChecksumService,
    inspector: InspectionHub,
    events: EventEmitter<{ event: [{ type: string; [key: string]: unknown }] }>,
    options: VerifyPolicyOptions = {},
  ) {
    this.onPolicyChanged = options.onPolicyChanged ?? (async () => {});
    const machine = verifyPolicyMachineAt(() => runtime.nowMs()).provide({
      actions: {
        startDue: () => this.startDue(),
        // The policy from the transition's context: getSnapshot() still answers the one before it.
        scanDue: ({ context }) => this.scanDue(context.policy, context.backingOff),
        stopRunning: () => this.stopRunning(),
        rememberRegistered: ({ context, event }) => {
          if (event.type === 'checksum.registered' && context.policy.verify_after_register) this.registered.add(event.lvolId);
        },
      },
    });
    this.actor = createActor(machine, {
      id: verifyPolicyActorId,
      input: { policy: validateVerifyPolicy(options.policy ?? defaultVerifyPolicy()) },
      inspect: inspector.observerFor(verifyPolicyActorId),
      ...(options.clock ? { clock: options.clock } : {}),
    });
    this.actor.subscribe({ error: (error) => log('error', 'verify policy actor failed', { error: String(error) }) });
    this.pacing = options.pacing;
    this.pacing?.setPolicyRate(this.actor.getSnapshot().context.policy.rate_mib_per_sec * mibBytes, options.clock);
    events.on('event', (event) => {
      if (event.type === 'checksum_state') this.onResumedWalkEvent(String(event.uuid), event.state, event.will_resume, event.error);
      // A checksum registered where none was verified yet: verify_after_register verifies it.
      if (event.type !== 'checksum_state' || event.state !== 'done' || event.previous === 'done' || event.mode === 'verify') return;
      const lvolId = String(event.uuid);
      const lvol = this.registry.lvstores.size > 0 ? this.recordOf(lvolId) : undefined;
      if (lvol && (lvol.verification?.verifiedAtMs ?? null) === null) this.send({ type: 'checksum.registered', lvolId });
    });
    this.actor.start();
  }

  policy(): VerifyPolicy {
    return this.actor.getSnapshot().context.policy;
  }

  /** Changes the policy (each field optional), saved before it takes effect; a failed save changes nothing (-28 when full). */
  setPolicy(next: VerifyPolicy): Promise<void> {
    const applied = this.policyChanged.then(async () => {
      validateVerifyPolicy(next);
      try {
        await this.onPolicyChanged(next);
      } catch (error) {
        throw fromDeviceError(error, 'verify policy not set: it could not be saved, so nothing changed');
      }
      this.pacing?.setPolicyRate(next.rate_mib_per_sec * mibBytes);
      this.send({ type: 'policy.set', policy: next });
      log('info', 'verify policy set', { ...next });
    });
    this.policyChanged = applied.catch(() => undefined);
    return applied;
  }

  private send(event: Parameters<Actor<ReturnType<typeof verifyPolicyMachineAt>>['send']>[0]): void {
    if (!this.stopped) this.actor.send(event);
  }

  private recordOf(lvolId: string): LvolRecord | undefined {
    for (const entry of this.registry.lvstores.values()) {
      if (entry.actors.has(lvolId)) return entry.store.lvol(lvolId);
    }
    return undefined;
  }

  /** Finds the due snapshots, oldest verification first (one pass over the records). */
  private scanDue(policy: VerifyPolicy, backingOff: Readonly<Record<string, VerifyBackoff>>): void {
    this.sweepResuming();
    const nowMs = this.runtime.nowMs();
    const due: Array<{ id: string; lastMs: number }> = [];
    const gone = new Set(Object.keys(backingOff));
    for (const { lvol } of this.registry.allLvols()) {
      gone.delete(lvol.id);
      if (!hasChecksums(lvol) || this.running.has(lvol.id) || this.registered.has(lvol.id)) continue;
      // Its last verifies failed on read errors: not before its back-off ends.
      if ((backingOff[lvol.id]?.retryAtMs ?? nowMs) > nowMs) continue;
      if (dueAtMs(lvol, policy) <= nowMs) due.push({ id: lvol.id, lastMs: lastVerifiedMs(lvol) });
    }
    due.sort((a, b) => a.lastMs - b.lastMs);
    this.dueQueue = due.map(({ id }) => id);
    // Without this, every snapshot deleted while backing off would stay in the context for good.
    if (gone.size > 0) this.send({ type: 'lvols.gone', lvolIds: [...gone] });
  }

  /** Starts verifies up to the cap: first-time registrations first, then the due queue. */
  private startDue(): void {
    while (this.running.size < verifyPolicyStartedMax) {
      const next = this.registered.values().next();
      let lvolId: string | undefined;
      if (!next.done) {
        lvolId = next.value;
        this.registered.delete(lvolId);
      } else {
        lvolId = this.dueQueue.shift();
      }
      if (lvolId === undefined) return;
      this.startOne(lvolId);
    }
  }

  private startOne(lvolId: string): void {
    const lvol = this.recordOf(lvolId);
    if (!lvol || !hasChecksums(lvol)) return;
    const { actor } = this.registry.lvol(lvolId);
    const status = actor.status();
    // Someone else's walk (a registration, a verify by hand) is on it: not ours to start or stop.
    if (busyStates.has(status.state)) return;
    // A verify stopped part-way (by a window's end, a preemption, a user) continues where it stood.
    const resume = status.state === 'aborted' && status.mode === 'verify' && status.resumable && (lvol.savedProgress?.targets ?? null) === null;
    this.running.add(lvolId);
    this.startedCount++;
    // Before the walk's first read: its reads are paced to the policy's cap.
    this.pacing?.policyWalkStarted(lvolId);
    this.checksums.verify(lvolId, false, resume).then(
      () => this.ended(lvolId, 'done'),
      (error: unknown) => {
        const interrupted = error instanceof Error && 'errno' in error && error.errno === 'EINTR';
        // Preempted: the node resumes the walk by itself once the operation is done. It is still
        // this policy's walk (paced to its cap, stopped at its window's end) until that ends.
        if (interrupted && isPreemption(error) && this.recordOf(lvolId)) {
          this.resumingByNode.add(lvolId);
          return;
        }
        if (!interrupted) log('warn', 'policy verify ended without a result', { lvol: lvolId, error: String(error) });
        this.ended(lvolId, outcomeOf(error));
      },
    );
  }

  /**
   * Preempted policy verifies that will not come back (the operation did not re-queue them, or
   * the lvol is gone) end here; the scan runs at every re-check, so none holds a slot for long.
   */
  private sweepResuming(): void {
    for (const lvolId of this.resumingByNode) {
      const status = this.recordOf(lvolId) ? this.registry.lvol(lvolId).actor.status() : undefined;
      if (status && (busyStates.has(status.state) || status.will_resume)) continue;
      this.resumingByNode.delete(lvolId);
      this.ended(lvolId, status?.state === 'done' ? 'done' : 'other');
    }
  }

  /** A policy verify the node resumed after a preemption reached an end (its checksum_state event). */
  private onResumedWalkEvent(lvolId: string, state: unknown, willResume: unknown, error: unknown): void {
    if (!this.resumingByNode.has(lvolId)) return;
    if (state === 'done') {
      this.resumingByNode.delete(lvolId);
      this.ended(lvolId, 'done');
    } else if ((state === 'aborted' && willResume !== true) || state === 'failed' || state === 'idle') {
      this.resumingByNode.delete(lvolId);
      this.ended(lvolId, state === 'failed' && typeof error === 'string' && error.includes('Input/output') ? 'readError' : 'other');
    }
  }

  private ended(lvolId: string, outcome: VerifyOutcome): void {
    this.running.delete(lvolId);
    this.pacing?.policyWalkEnded(lvolId);
    this.send({ type: 'verify.ended', lvolId, outcome, atMs: this.runtime.nowMs() });
  }

  /** A window closed (or the policy was disabled): every verify this runner started stops after its in-flight cluster. */
  private stopRunning(): void {
    this.dueQueue = [];
    for (const lvolId of this.running) {
      const lvol = this.recordOf(lvolId);
      if (!lvol) continue;
      const { actor } = this.registry.lvol(lvolId);
      const state = actor.status().state;
      if (state === 'queued' || state === 'computing') void actor.stop(verifyWindowClosedReason).catch(() => undefined);
    }
  }

  /** Counts for node_get_stats: overdue = not verified within interval + jitter share + grace. */
  async stats(): Promise<{
    state: string;
    enabled: boolean;
    running: number;
    started_total: number;
    due: number;
    overdue: number;
    snapshots_with_checksums: number;
    backing_off: number;
    next_retry_at: string | null;
  }> {
    const policy = this.policy();
    const nowMs = this.runtime.nowMs();
    // Snapshots whose verifies failed on read errors, waiting out their back-off (the machine's context).
    const retries = Object.values(this.actor.getSnapshot().context.backingOff)
      .map((backoff) => backoff.retryAtMs)
      .filter((retryAtMs) => retryAtMs > nowMs);
    let due = 0;
    let overdue = 0;
    let snapshots = 0;
    await this.registry.forEachLvolInSlices(({ lvol }) => {
      if (!hasChecksums(lvol)) return;
      snapshots++;
      const dueMs = dueAtMs(lvol, policy);
      if (dueMs <= nowMs) due++;
      if (dueMs + policy.grace_sec * 1000 <= nowMs) overdue++;
    });
    return {
      state: String(this.actor.getSnapshot().value),
      enabled: policy.enabled,
      running: this.running.size,
      started_total: this.startedCount,
      due: policy.enabled ? due : 0,
      overdue: policy.enabled ? overdue : 0,
      snapshots_with_checksums: snapshots,
      backing_off: retries.length,
      next_retry_at: retries.length > 0 ? new Date(Math.min(...retries)).toISOString() : null,
    };
  }

  stop(): void {
    this.stopped = true;
    this.actor.stop();
  }
}
