// One lvol's root actor: the lvol machine bound to its lvstore, plus register/stop/preempt as promises.
import assert from 'node:assert/strict';
import { type Actor, type Snapshot, type SnapshotFrom, createActor, fromPromise, waitFor } from 'xstate';
import { crcDeviceRange } from '../checksum/clusterCrc.ts';
import { checksumProgressSaveIntervalMs, checksumReadAheadClusters, verifyBadClustersMax } from '../constants.ts';
import { IoAbortedError } from '../device/ioQueue.ts';
import { StorageError, fail } from '../errors.ts';
import { log } from '../log.ts';
import {
  type ChecksumMode,
  type ChecksumProgress,
  type ClusterStepInput,
  type ClusterStepOutput,
  type LvolInput,
  type StoreChecksumInput,
  lvolMachine,
} from '../machines/lvolMachine.ts';
import type { Runtime } from '../runtime.ts';
import type { Lvstore } from '../store/lvstore.ts';
import { type BadCluster, type LvolRecord, type SavedChecksumProgress, type VerificationRecord, fullVerifiedAtMs } from '../store/metadata.ts';
import { ClusterChecksums } from '../store/sparseArray.ts';
import type { InspectionHub } from './inspector.ts';
import { RateMeter } from './rateMeter.ts';
import { type WalkAdmission, immediateAdmission } from './scheduler.ts';

export type ChecksumState = 'idle' | 'queued' | 'computing' | 'stopping' | 'storing' | 'aborted' | 'done' | 'failed';
type LvolSnapshot = SnapshotFrom<typeof lvolMachine>;

export interface ChecksumStatus {
  state: ChecksumState;
  mode: ChecksumMode | null;
  clusters_done: number;
  clusters_total: number;
  bytes_done: number;
  rate_bytes_per_sec: number;
  /** Seconds left at the current rate while computing; null when unknown or not computing. */
  eta_sec: number | null;
  /** 1-based place in the scheduler's queue while `queued`. */
  queue_position: number | null;
  /** The walk was preempted and will be re-queued by itself once the operation is done (SPEC §6.6). */
  will_resume: boolean;
  started_at: string | null;
  finished_at: string | null;
  reason?: string;
  error?: string;
  resumable: boolean;
}

/**
 * What a verify (or a re-registration that found other values than those stored) just made
 * durable, when it found something wrong: the node pushes it as `checksum_mismatch`.
 */
export interface ChecksumMismatch {
  /** `copy`: a copy read a source cluster whose bytes no longer match its stored CRC. */
  source: 'verify' | 'registration' | 'copy';
  verification: VerificationRecord;
}

/**
 * Called on every checksum state change of the lvol (for notifications and the dashboard), and
 * with `mismatch` once a verification that found corruption is durable (the state then repeats).
 */
export type ChecksumListener = (lvolId: string, status: ChecksumStatus, previous: ChecksumState, mismatch?: ChecksumMismatch) => void;

const busyStates: ReadonlySet<ChecksumState> = new Set(['queued', 'computing', 'stopping', 'storing']);
const walkingStates: ReadonlySet<ChecksumState> = new Set(['queued', 'computing', 'stopping']);

/**
 * The machine mutates its per-cluster map in place while it walks; the lvstore's record must not
 * share it, or a later checkpoint would capture changes no journal record describes.
 */
function copyProgress<T extends { rangeCrcs: Map<number, bigint> } | null>(progress: T): T {
  return progress === null ? progress : { ...progress, rangeCrcs: new Map(progress.rangeCrcs) };
}

export const interruptedByRestart = 'interrupted by restart';

/** A walk that was still running when the node stopped comes back aborted; the node resumes it. */
function restoredProgress(saved: SavedChecksumProgress | null, nowMs: number): ChecksumProgress | null {
  if (saved === null) return null;
  const progress = { ...copyProgress(saved), targets: saved.targets ?? null };
  if (saved.reason !== null) return progress;
  return { ...progress, reason: interruptedByRestart, finishedAtMs: nowMs };
}

/** The first cluster at or after `fromClusterIndex` among `targets` (ascending), or -1. */
function nextTarget(targets: readonly number[], fromClusterIndex: number): number {
  for (const clusterIndex of targets) if (clusterIndex >= fromClusterIndex) return clusterIndex;
  return -1;
}

/** What a verify walk has read so far, for comparing with what the lvol has stored. */
interface VerifyReadings {
  readonly targets: readonly number[] | null;
  readonly rangeCrcs: ReadonlyMap<number, bigint>;
  readonly runningCrc: bigint;
  readonly clustersDone: number;
  readonly clustersTotal: number;
}

/**
 * Compares what a verify read with the stored checksums (SPEC §6.10): each cluster with its stored
 * per-cluster value; with only a whole checksum stored, the chained value once every owned cluster
 * was read. `complete`: the walk got to its end (otherwise the result is `incomplete`).
 */
export function verificationOf(
  lvol: LvolRecord,
  readings: VerifyReadings,
  clusterBytes: number,
  atMs: number,
  complete: boolean,
  laterFindings: readonly BadCluster[] = [],
): VerificationRecord {
  const badClusters: BadCluster[] = [];
  let badClusterCount = 0;
  let whole: VerificationRecord['whole'] = null;
  const range = lvol.rangeChecksums;
  if (range !== null) {
    // A copy that read a cluster after this walk did has the newer bytes: its reading stands, or
    // a clean walk ending later would wipe out corruption found in between.
    const readingsNow = new Map(readings.rangeCrcs);
    for (const finding of laterFindings) if (readingsNow.has(finding.clusterIndex)) readingsNow.set(finding.clusterIndex, finding.actual);
    // In cluster order, so the kept list is the first bad clusters of the lvol.
    const read = [...readingsNow].sort(([a], [b]) => a - b);
    for (const [clusterIndex, actual] of read) {
      const expected = range.get(clusterIndex);
      if (expected === actual) continue;
      badClusterCount++;
      if (badClusters.length < verifyBadClustersMax) {
        badClusters.push({ clusterIndex, offsetBytes: clusterIndexToOffsetBytes(clusterIndex, clusterBytes), expected, actual });
      }
    }
    // A walk that ended early still knows the bad clusters found before (a verify, a copy) that
    // it did not reach again: forgetting them would keep errors_only from re-reading them.
    if (!complete) {
      for (const bad of lvol.verification?.badClusters ?? []) {
        if (readings.rangeCrcs.has(bad.clusterIndex)) continue;
        badClusterCount++;
        if (badClusters.length < verifyBadClustersMax) badClusters.push(bad);
      }
      badClusters.sort((a, b) => a.clusterIndex - b.clusterIndex);
    }
  } else if (complete && readings.targets === null && lvol.checksum !== null && readings.runningCrc !== lvol.checksum) {
    whole = { expected: lvol.checksum, actual: readings.runningCrc };
  }
  const corrupt = badClusterCount > 0 || whole !== null;
  return {
    verifiedAtMs: atMs,
    // A walk that ended early is incomplete even when it found bad clusters (they flag the
    // snapshot by themselves): `corrupt` would read as finished and drop the saved position.
    result: !complete ? 'incomplete' : corrupt ? 'corrupt' : 'clean',
    errorsOnly: readings.targets !== null,
    clustersChecked: readings.clustersDone,
    clustersTotal: readings.clustersTotal,
    badClusterCount,
    badClusters,
    whole,
    // Evidence of a conflicting re-registration stays until the lvol's clusters change.
    registrationConflict: lvol.verification?.registrationConflict ?? null,
    // Only a finished verify of every owned cluster restarts a policy's interval.
    fullVerifiedAtMs: complete && readings.targets === null ? atMs : fullVerifiedAtMs(lvol.verification),
  };
}

/**
 * A re-registration's values against those stored before it (SPEC §6.10: SPDK overwrites, and
 * Longhorn depends on that, so the old values are kept as evidence): null when nothing differs.
 */
export function registrationConflictOf(
  lvol: LvolRecord,
  checksum: bigint,
  rangeCrcs: ReadonlyMap<number, bigint>,
  clusterBytes: number,
  atMs: number,
): VerificationRecord['registrationConflict'] {
  const clusters: BadCluster[] = [];
  let clusterCount = 0;
  if (lvol.rangeChecksums !== null) {
    for (const [clusterIndex, actual] of [...rangeCrcs].sort(([a], [b]) => a - b)) {
      const expected = lvol.rangeChecksums.get(clusterIndex);
      if (expected === actual) continue;
      clusterCount++;
      if (clusters.length < verifyBadClustersMax) clusters.push({ clusterIndex, offsetBytes: clusterIndexToOffsetBytes(clusterIndex, clusterBytes), expected, actual });
    }
  }
  const whole = lvol.checksum !== null && lvol.checksum !== checksum ? { expected: lvol.checksum, actual: checksum } : null;
  if (whole === null && clusterCount === 0) return null;
  return { atMs, whole, clusterCount, clusters };
}

/**
 * The lvol's verification with cluster `bad` added, found by a copy (issue 21): the copy read one
 * cluster, not the snapshot, so this marks what the last verify recorded corrupt rather than
 * standing as a verify of its own. When, how many clusters and which kind of walk stay those of
 * that verify (the policy's interval still counts from it, and an errors-only verify re-reads the
 * copy's cluster with the others); an `incomplete` verify stays incomplete (its position is kept
 * to resume) and is flagged corrupt by its bad clusters. With no verify recorded, the result is
 * `corrupt` with no verified_at.
 */
export function copyFindingOf(lvol: LvolRecord, bad: BadCluster): VerificationRecord {
  const previous = lvol.verification ?? null;
  const kept = previous?.badClusters ?? [];
  const count = previous?.badClusterCount ?? 0;
  const known = kept.some((cluster) => cluster.clusterIndex === bad.clusterIndex);
  // Past a full kept list the cluster may be among those counted but not kept: not counted twice.
  const lastKept = kept.at(-1)?.clusterIndex ?? -1;
  const maybeCounted = count > kept.length && bad.clusterIndex > lastKept;
  const badClusters = [...kept.filter((cluster) => cluster.clusterIndex !== bad.clusterIndex), bad]
    .sort((a, b) => a.clusterIndex - b.clusterIndex)
    .slice(0, verifyBadClustersMax);
  return {
    verifiedAtMs: previous?.verifiedAtMs ?? null,
    result: previous?.result === 'incomplete' ? 'incomplete' : 'corrupt',
    errorsOnly: previous?.errorsOnly ?? false,
    clustersChecked: previous?.clustersChecked ?? 1,
    clustersTotal: previous?.clustersTotal ?? lvol.clusterMap.count,
    badClusterCount: known || maybeCounted ? count : count + 1,
    badClusters,
    whole: previous?.whole ?? null,
    registrationConflict: previous?.registrationConflict ?? null,
    fullVerifiedAtMs: fullVerifiedAtMs(previous),
  };
}

function clusterIndexToOffsetBytes(clusterIndex: number, clusterBytes: number): number {
  return clusterIndex * clusterBytes;
}

/**
 * Whether a restored walk resumes by itself at start (SPEC §6.6): one that was running, or was
 * preempted (by shutdown or an operation that left the snapshot valid). One a user stopped stays.
 */
export function resumesAfterRestart(reason: string | null | undefined): boolean {
  return reason === interruptedByRestart || (reason?.startsWith('preempted by ') ?? false);
}

interface ClusterRead {
  readonly clusterIndex: number;
  /** Where the cluster was on the device when the read began: a read of an old place is stale. */
  readonly offsetBytes: number;
  /** Calls the read off if it has not begun (queued at the device or paced). */
  readonly abort: AbortController;
  /** Also ends a begun read at its next piece: for read-ahead nobody will record. */
  readonly halt: AbortController;
  readonly result: Promise<ClusterStepOutput>;
}

export interface LvolActorOptions {
  /** How often a running walk's position is saved (SPEC §6.6). */
  progressSaveIntervalMs?: number;
  /** The node-wide scheduler; without one every walk is admitted at once. */
  admission?: WalkAdmission;
  /** Starts the XState actor in a later slice (the node's); without one it starts at once. */
  starter?: LvolActorStarter;
  /** Clusters read ahead of the current step (default checksumReadAheadClusters; 0 for none, to compare). */
  readAheadClusters?: number;
}

/**
 * Starts lvol actors in slices of a few milliseconds, each slice a macrotask of its own: a node
 * loading 100,000 lvols answers requests while their actors start, and a create's actor starts
 * while the next create's journal write is on the device instead of before the answer. Anything
 * that needs the actor of an lvol still waiting here starts it at once (LvolActor.actor).
 */
export class LvolActorStarter {
  // A Set keeps insertion order: actors start in the order their lvols were attached.
  private readonly waiting = new Set<LvolActor>();
  private scheduled = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly sliceMs = 2) {}

  private paused = false;

  enqueue(actor: LvolActor): void {
    this.waiting.add(actor);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.paused || this.waiting.size === 0) return;
    this.scheduled = true;
    setImmediate(this.runSlice);
  }

  /** Holds the slices (tests look at a node whose actors wait); on-demand starts still happen. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.schedule();
  }

  /** The actor started on demand or was disposed: nothing left to do for it. */
  forget(actor: LvolActor): void {
    this.waiting.delete(actor);
    if (this.waiting.size === 0) this.wakeIdle();
  }

  get waitingCount(): number {
    return this.waiting.size;
  }

  /** Resolves once every actor enqueued so far has started (or was disposed). */
  idle(): Promise<void> {
    if (this.waiting.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private readonly runSlice = (): void => {
    this.scheduled = false;
    if (this.paused) return;
    const endMs = performance.now() + this.sliceMs;
    // An lvol whose delete is being made durable has no record now, but gets it back if the
    // delete fails: it waits for the outcome (dispose, or a later slice).
    const later: LvolActor[] = [];
    for (const actor of this.waiting) {
      this.waiting.delete(actor);
      if (actor.hasRecord) actor.startNow();
      else later.push(actor);
      if (performance.now() >= endMs) break;
    }
    const onlyLater = this.waiting.size === 0 && later.length > 0;
    for (const actor of later) this.waiting.add(actor);
    if (this.waiting.size > 0) {
      this.scheduled = true;
      if (onlyLater) setTimeout(this.runSlice, 1);
      else setImmediate(this.runSlice);
    } else {
      this.wakeIdle();
    }
  };

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }
}

interface PersistedLvol {
  status: string;
  value: Record<string, string>;
  context: Record<string, unknown>;
  children: object;
  historyValue: object;
}
/**
 * The persisted snapshot an lvol with no saved walk settles in (checksum idle, or done with a
 * stored value), made once per kind by running the machine itself. Each actor restores a copy
 * with its own id instead of computing its initial state again, which halves the cost of
 * starting one (once per create, 100,000 times after a restart). Undefined for an lvol with a
 * saved walk's position: its actor computes its state, and runs its entry actions, itself.
 */
const restingSnapshots = new Map<boolean, PersistedLvol>();
export function restingSnapshot(input: LvolInput): Snapshot<unknown> | undefined {
  if (input.savedProgress !== null) return undefined;
  let template = restingSnapshots.get(input.checksumStored);
  if (!template) {
    // The machine as defined: idle and done have no entry actions and invoke nothing, so none of
    // the implementations the actor layer provides is reached.
    const probe = createActor(lvolMachine, { input: { ...input, lvolId: '' } });
    probe.start();
    const persisted = probe.getPersistedSnapshot() as unknown as PersistedLvol;
    probe.stop();
    assert.ok(persisted.status === 'active' && Object.keys(persisted.children).length === 0 && Object.keys(persisted.historyValue).length === 0);
    // A restored actor runs no entry action: should a resting state get one, start them computed.
    for (const [region, state] of Object.entries(persisted.value)) {
      const node = lvolMachine.root.states[region]!.states[state]!;
      assert.ok(node.entry.length === 0 && node.invoke.length === 0, `lvol state ${region}.${state} has entry actions or invokes: it cannot be restored as a resting state`);
    }
    template = persisted;
    restingSnapshots.set(input.checksumStored, template);
  }
  const copy = { ...template, value: { ...template.value }, context: { ...template.context, lvolId: input.lvolId }, children: {}, historyValue: {} };
  return copy as unknown as Snapshot<unknown>;
}

export function checksumStateOf(snapshot: LvolSnapshot): ChecksumState {
  return (snapshot.value as { checksum: ChecksumState }).checksum;
}

export class LvolActor {
  /**
   * The lvol machine with its implementations, made once for every lvol: a machine provided per
   * actor cost ~27 KiB per lvol (SPEC §10: an idle lvol costs little). Each implementation finds
   * its LvolActor through the actor's system, which is unique per root actor.
   */
  private static readonly owners = new WeakMap<object, LvolActor>();
  private static ownerOf(system: object): LvolActor {
    const owner = LvolActor.owners.get(system);
    if (!owner) throw new Error('lvol machine running without its LvolActor');
    return owner;
  }
  private static readonly machine = lvolMachine.provide({
    actors: {
      clusterStep: fromPromise<ClusterStepOutput, ClusterStepInput>(({ input, system }) => LvolActor.ownerOf(system).step(input)),
      storeChecksum: fromPromise<number, StoreChecksumInput>(({ input, system }) => LvolActor.ownerOf(system).storeResult(input)),
    },
    actions: {
      requestAdmission: ({ system }) => {
        const owner = LvolActor.ownerOf(system);
        owner.admissionAsked = true;
        owner.admission.request(owner.lvolId, () => owner.admit());
      },
      releaseAdmission: ({ system }) => {
        const owner = LvolActor.ownerOf(system);
        owner.admissionAsked = false;
        owner.admission.release(owner.lvolId);
      },
    },
  });

  // Undefined until the actor starts (see LvolActorStarter); `actor` starts it on demand.
  private started: Actor<typeof lvolMachine> | undefined;
  private disposed = false;
  /** Asked the scheduler for a walk and not yet released it (dispose releases only then). */
  private admissionAsked = false;
  private runCounter = 0;
  private lastState: ChecksumState = 'idle';
  private readonly admission: WalkAdmission;
  private readonly progressSaveIntervalMs: number;
  private readonly readAheadClusters: number;
  // Cluster reads in flight: the current step's, and the read-ahead of the next owned clusters.
  private readonly reads = new Set<ClusterRead>();
  /** Reads of the clusters after the current step's, ascending (at most checksumReadAheadClusters). */
  private readAhead: ClusterRead[] = [];
  /** Copy findings on clusters the verify walk whose readings these are had already read (recordCopyFinding). */
  private laterCopyFindings: { readings: ReadonlyMap<number, bigint>; findings: Map<number, BadCluster> } | undefined;
  /** Read-ahead reads halted or found stale before any step used them (tests count them). */
  private readAheadDiscarded = 0;
  /** The walk's rate; made when a walk is first admitted. */
  private meter: RateMeter | undefined;
  private lastClustersDone = -1;
  private willResume = false;
  /** A mismatch made durable, told with the next state change (done) or at once. */
  private pendingMismatch: ChecksumMismatch | undefined;
  // The latest save of a stopped walk's position; stop and preempt answer after it is durable.
  private progressSaved: Promise<void> = Promise.resolve();
  private lastProgressSaveMs = 0;
  /** When this lvol was attached: a walk found interrupted then is marked finished at that time. */
  private readonly attachedAtMs: number;
  private readonly starter: LvolActorStarter | undefined;
  /** Forgets the actor in the inspection hub (set when it starts). */
  private untrack: () => void = () => {};

  constructor(
    readonly lvolId: string,
    private readonly store: Lvstore,
    private readonly runtime: Runtime,
    private readonly inspector: InspectionHub,
    private readonly onChecksumChange: ChecksumListener,
    options: LvolActorOptions = {},
  ) {
    this.admission = options.admission ?? immediateAdmission;
    this.progressSaveIntervalMs = options.progressSaveIntervalMs ?? checksumProgressSaveIntervalMs;
    this.readAheadClusters = options.readAheadClusters ?? checksumReadAheadClusters;
    this.attachedAtMs = runtime.nowMs();
    this.starter = options.starter;
    if (options.starter) options.starter.enqueue(this);
    else this.startNow();
  }

  /**
   * Whether this lvol's walk resumes by itself after a load (SPEC §6.6), read from the records
   * while the actor waits for its slice: a saved position without a reason was still running.
   */
  get resumesAfterLoad(): boolean {
    if (this.started) return this.checksumState === 'aborted' && resumesAfterRestart(this.status().reason);
    const saved = this.store.record.lvols.get(this.lvolId)?.savedProgress;
    return saved !== null && saved !== undefined && (saved.reason === null || resumesAfterRestart(saved.reason));
  }

  /** The lvol's XState actor, started now if it was still waiting for its slice. */
  get actor(): Actor<typeof lvolMachine> {
    return this.started ?? this.startNow();
  }

  /** True once the XState actor runs (it always does after the starter's slices, or on demand). */
  get isStarted(): boolean {
    return this.started !== undefined;
  }

  /** False while the lvol's delete is in flight (its record is gone until the delete fails). */
  get hasRecord(): boolean {
    return this.store.record.lvols.has(this.lvolId);
  }

  /** Creates and starts the XState actor (idempotent; the starter and `actor` call it). */
  startNow(): Actor<typeof lvolMachine> {
    if (this.started) return this.started;
    this.starter?.forget(this);
    // Asked for while its delete is in flight: the actor starts as the lvol is then (nothing stored).
    const lvol = this.store.record.lvols.get(this.lvolId);
    const input: LvolInput = {
      lvolId: this.lvolId,
      checksumStored: (lvol?.checksum ?? null) !== null,
      savedProgress: restoredProgress(lvol?.savedProgress ?? null, this.attachedAtMs),
    };
    const { actor, untrack } = this.inspector.track(this.lvolId, (inspect) =>
      createActor(LvolActor.machine, { id: this.lvolId, input, snapshot: restingSnapshot(input), ...(inspect ? { inspect } : {}) }),
    );
    this.untrack = untrack;
    this.started = actor;
    LvolActor.owners.set(actor.system, this);
    this.lastState = checksumStateOf(actor.getSnapshot());
    actor.subscribe({
      next: (snapshot) => this.observe(snapshot),
      // A root actor's unhandled error would crash Node: log and report it instead.
      error: (error) => log('error', 'lvol actor failed', { lvol: this.lvolId, error: String(error) }),
    });
    actor.start();
    if (this.disposed) actor.stop();
    return actor;
  }

  /**
   * The checksum state. An actor not started yet is in the state its machine starts in, read
   * from the records as the machine's own first transitions would (aborted with a saved
   * position, done with a stored value, else idle): no walk runs before the actor starts, so
   * asking (a preemption, a shutdown touching every lvol) need not start it.
   */
  get checksumState(): ChecksumState {
    if (this.started) return checksumStateOf(this.started.getSnapshot());
    const lvol = this.store.record.lvols.get(this.lvolId);
    if (lvol?.savedProgress) return 'aborted';
    return lvol?.checksum !== null && lvol?.checksum !== undefined ? 'done' : 'idle';
  }

  /** True while a cluster read is in flight (SPEC §6.8: nothing may stay held after a stop). */
  get holdsReads(): boolean {
    return this.reads.size > 0;
  }

  /** Cluster reads in flight now, and read-ahead reads discarded unused so far (for tests and stats). */
  get readStats(): { inFlight: number; readAhead: number; discarded: number } {
    return { inFlight: this.reads.size, readAhead: this.readAhead.length, discarded: this.readAheadDiscarded };
  }

  private admit(): void {
    // Made at the first walk: most lvols never walk, and the meter's buckets are ~0.5 KiB.
    if (this.meter) this.meter.reset(this.runtime.nowMs());
    else this.meter = new RateMeter(this.runtime.nowMs());
    this.actor.send({ type: 'checksum.admit', atMs: this.runtime.nowMs() });
  }

  private observe(snapshot: LvolSnapshot): void {
    const state = checksumStateOf(snapshot);
    // A stop or preemption calls off reads that have not begun (queued at the device or paced);
    // the step's own read, once begun, finishes (the step below records it); read-ahead, which
    // nobody will record, is halted even if it began.
    if (state === 'stopping') this.abortReads(false);
    if (!walkingStates.has(state)) this.abortReads(true);
    const clustersDone = snapshot.context.progress?.clustersDone ?? 0;
    // The last cluster arrives with the move to storing (or stopping), not in computing: it is
    // metered by the state it was read in.
    const walked = state === 'computing' || this.lastState === 'computing';
    if (walked && clustersDone > this.lastClustersDone && this.lastClustersDone >= 0) {
      const bytes = (clustersDone - this.lastClustersDone) * this.store.clusterBytes;
      this.meter?.add(bytes, this.runtime.nowMs());
      this.admission.recordBytes(bytes);
    }
    this.lastClustersDone = clustersDone;
    const previous = this.lastState;
    this.lastState = state;
    // Nothing to tell: the first snapshot, as the actor starts, repeats its state, and only a
    // running walk makes progress (every new or restarted lvol told its idleness otherwise).
    if (state === previous && state !== 'computing') return;
    // A stopped or preempted walk's position is saved so it can resume, also after a restart.
    // It is appended before anything the stop made way for (a delete runs after `settled()`).
    // A running walk's position is saved every few seconds, so a crash costs little of it.
    const progress = snapshot.context.progress;
    const nowMs = this.runtime.nowMs();
    const aborting = state === 'aborted' && previous !== 'aborted';
    const periodic = state === 'computing' && nowMs - this.lastProgressSaveMs >= this.progressSaveIntervalMs;
    // A walk that failed leaves nothing to resume: a position an earlier stop saved would bring
    // it back `aborted` after a restart (and resuming by itself, had it been preempted).
    const failing = state === 'failed' && previous !== 'failed' && (this.store.record.lvols.get(this.lvolId)?.savedProgress ?? null) !== null;
    if ((progress && (aborting || periodic)) || failing) {
      this.lastProgressSaveMs = nowMs;
      const copy = failing ? null : copyProgress(progress!);
      const saved = this.progressSaved.then(() => this.store.saveChecksumProgress(this.lvolId, copy));
      this.progressSaved = saved.catch((error: unknown) =>
        log('error', 'saving checksum progress failed', { lvol: this.lvolId, error: String(error) }),
      );
    }
    // A verify that ends early records what it found so far (`incomplete`), after its position,
    // and before a stop or preemption answers (they wait for progressSaved).
    if (progress?.mode === 'verify' && ((state === 'aborted' && previous !== 'aborted') || (state === 'failed' && previous !== 'failed'))) {
      const readings = copyProgress(progress);
      const recorded = this.progressSaved.then(() => this.storeVerification(this.lvolId, readings, false));
      this.progressSaved = recorded.then(
        () => undefined,
        (error: unknown) => log('error', 'recording an incomplete verification failed', { lvol: this.lvolId, error: String(error) }),
      );
    }
    this.onChecksumChange(this.lvolId, this.status(), previous, state === 'done' ? this.takeMismatch() : undefined);
  }

  private takeMismatch(): ChecksumMismatch | undefined {
    const mismatch = this.pendingMismatch;
    this.pendingMismatch = undefined;
    return mismatch;
  }

  private async step(input: ClusterStepInput): Promise<ClusterStepOutput> {
    // Two macrotasks before the step: the event loop polls sockets in between, so a stop or
    // priority operation that arrived meanwhile is seen before this step takes a cluster.
    await this.runtime.yieldMacrotask();
    await this.runtime.yieldMacrotask();
    const clusterIndex = this.nextCluster(input, input.fromClusterIndex);
    const ahead = this.takeReadAhead(input.lvolId, clusterIndex);
    if (this.checksumState !== 'computing') {
      // Stopping: a read-ahead of this cluster that had begun is the in-flight cluster, finished
      // and recorded; one called off before it began is skipped, as is a step with none.
      if (ahead) return ahead.result;
      return { kind: 'skipped', atMs: this.runtime.nowMs() };
    }
    if (clusterIndex < 0) return { kind: 'end', atMs: this.runtime.nowMs() };
    const read = ahead ?? this.startRead(input.lvolId, clusterIndex);
    const output = await read.result;
    if (output.kind !== 'cluster') return output;
    // The next clusters are read while the machine records this one and while later steps wait
    // (the window was filled by earlier steps): with two background slots per device the next one
    // runs beside the current, so a step mostly finds its cluster done. A read error there
    // surfaces only when a step reaches that cluster. A stop meanwhile leaves nothing to fill.
    if (this.checksumState === 'computing') this.fillReadAhead(input, clusterIndex);
    return { ...output, last: this.nextCluster(input, clusterIndex + 1) < 0 };
  }

  /** The next cluster the walk reads: the next owned one, or the next target of an errors-only verify. */
  private nextCluster(input: ClusterStepInput, fromClusterIndex: number): number {
    if (input.targets === null) return this.store.nextOwnedCluster(input.lvolId, fromClusterIndex);
    return nextTarget(input.targets, fromClusterIndex);
  }

  /**
   * The read-ahead of `clusterIndex`, if one is in flight and still reads where the cluster is now.
   * Reads before it (clusters no longer owned) and a stale read of it are halted and discarded:
   * a snapshot is read-only, but a merge, decouple or delete that slipped past the preemption must
   * not feed the walk bytes from the cluster's old place.
   */
  private takeReadAhead(lvolId: string, clusterIndex: number): ClusterRead | undefined {
    while (this.readAhead.length > 0 && this.readAhead[0]!.clusterIndex <= clusterIndex) {
      const read = this.readAhead.shift()!;
      if (read.clusterIndex === clusterIndex && clusterIndex >= 0 && read.offsetBytes === this.clusterOffsetBytes(lvolId, clusterIndex)) return read;
      this.discard(read);
    }
    return undefined;
  }

  /** Starts reads of the owned (or target) clusters after `clusterIndex` until the window is full. */
  private fillReadAhead(input: ClusterStepInput, clusterIndex: number): void {
    let from = (this.readAhead.at(-1)?.clusterIndex ?? clusterIndex) + 1;
    while (this.readAhead.length < this.readAheadClusters) {
      const next = this.nextCluster(input, from);
      if (next < 0) return;
      this.readAhead.push(this.startRead(input.lvolId, next));
      from = next + 1;
    }
  }

  /** The cluster's device offset now, or -1 if the lvol (still there) no longer owns it (map value 0). */
  private clusterOffsetBytes(lvolId: string, clusterIndex: number): number {
    const owned = (this.store.record.lvols.get(lvolId)?.clusterMap.get(clusterIndex) ?? 0) !== 0;
    return owned ? this.store.ownedClusterOffsetBytes(lvolId, clusterIndex) : -1;
  }

  private startRead(lvolId: string, clusterIndex: number): ClusterRead {
    const abort = new AbortController();
    const halt = new AbortController();
    const offsetBytes = this.clusterOffsetBytes(lvolId, clusterIndex);
    const result = this.readCluster(clusterIndex, offsetBytes, abort.signal, halt.signal);
    const read: ClusterRead = { clusterIndex, offsetBytes, abort, halt, result };
    this.reads.add(read);
    void read.result.finally(() => this.reads.delete(read));
    return read;
  }

  /**
   * One cluster's CRC; device errors become values, a read called off before it began (or halted)
   * `skipped`. Not an async function on purpose: when neither pacing nor the device queue holds it
   * back, the read is submitted before this returns, ahead of the machine's work on the previous cluster.
   */
  private readCluster(clusterIndex: number, offsetBytes: number, signal: AbortSignal, halt: AbortSignal): Promise<ClusterStepOutput> {
    const clusterBytes = this.store.clusterBytes;
    const read = (): Promise<bigint> =>
      offsetBytes < 0
        ? Promise.reject(new Error(`cluster ${clusterIndex} is not owned by lvol ${this.lvolId}`))
        : crcDeviceRange(this.store.device, offsetBytes, clusterBytes, signal, halt);
    // Pacing and the device queue may hold the read back; a stop meanwhile calls it off.
    const paced = this.admission.pace(clusterBytes, signal, this.lvolId);
    let crc: Promise<bigint>;
    try {
      crc = paced ? paced.then(read) : read();
    } catch (error) {
      crc = Promise.reject(error);
    }
    return crc.then(
      (value): ClusterStepOutput => ({ kind: 'cluster', clusterIndex, crc: value, bytes: clusterBytes, atMs: this.runtime.nowMs(), last: false }),
      (error: unknown): ClusterStepOutput => {
        if (error instanceof IoAbortedError) return { kind: 'skipped', atMs: this.runtime.nowMs() };
        return { kind: 'error', message: error instanceof Error ? error.message : String(error), atMs: this.runtime.nowMs() };
      },
    );
  }

  private discard(read: ClusterRead): void {
    this.readAheadDiscarded++;
    read.abort.abort();
    read.halt.abort();
  }

  /**
   * Calls off every read not yet begun and halts every read-ahead; `all`: halts the step's own
   * read too (the walk left `computing` and `stopping`: nobody records it).
   */
  private abortReads(all: boolean): void {
    // Stopping: the next cluster's read, if it began, is the in-flight cluster the stop waits for
    // and the next step records (SPEC §6.4); called off if not begun. Deeper read-ahead is halted.
    const kept = all ? [] : this.readAhead.slice(0, 1);
    for (const read of this.readAhead.slice(kept.length)) this.discard(read);
    this.readAhead = kept;
    for (const read of this.reads) {
      read.abort.abort();
      if (all) read.halt.abort();
    }
  }

  private async storeResult(input: StoreChecksumInput): Promise<number> {
    // A position save still on its way must land before the result, which clears it.
    await this.progressSaved;
    if (input.mode === 'verify') return this.storeVerification(input.lvolId, this.actor.getSnapshot().context.progress!, true);
    const lvol = this.store.lvol(input.lvolId);
    // A re-registration overwrites (SPDK); values that differ from the stored ones are kept first.
    const conflict = registrationConflictOf(lvol, input.checksum, input.rangeCrcs, this.store.clusterBytes, this.runtime.nowMs());
    if (conflict !== null) {
      const verification: VerificationRecord = lvol.verification
        ? { ...lvol.verification, registrationConflict: conflict }
        : { verifiedAtMs: null, result: null, errorsOnly: false, clustersChecked: 0, clustersTotal: 0, badClusterCount: 0, badClusters: [], whole: null, registrationConflict: conflict };
      await this.store.recordVerification(input.lvolId, verification);
      this.pendingMismatch = { source: 'registration', verification };
    }
    // Plain registration refreshes per-cluster values only where a range set already exists (SPDK).
    let range: ClusterChecksums | null = null;
    if (input.mode === 'range' || lvol.rangeChecksums !== null) {
      range = new ClusterChecksums(lvol.clusterMap.length);
      for (const [clusterIndex, crc] of input.rangeCrcs) range.set(clusterIndex, crc);
    }
    await this.store.storeChecksum(input.lvolId, input.checksum, range);
    return this.runtime.nowMs();
  }

  /**
   * Journals what the verify walk read, compared with the stored checksums, which it never
   * changes. `complete`: the walk got to its end; otherwise (stopped, preempted, failed) the result
   * is `incomplete`, with the bad clusters found so far. Returns when it happened.
   */
  private async storeVerification(lvolId: string, progress: VerifyReadings, complete: boolean): Promise<number> {
    const atMs = this.runtime.nowMs();
    const later = this.laterCopyFindings?.readings === progress.rangeCrcs ? [...this.laterCopyFindings.findings.values()] : [];
    const verification = verificationOf(this.store.lvol(lvolId), progress, this.store.clusterBytes, atMs, complete, later);
    await this.store.recordVerification(lvolId, verification);
    if (verification.badClusterCount > 0 || verification.whole !== null) {
      this.pendingMismatch = { source: 'verify', verification };
      // An incomplete verify is told at once: no state change follows to carry it.
      if (!complete) this.tellMismatch();
    }
    return atMs;
  }

  /** Tells the listener of a mismatch made durable, once. */
  private tellMismatch(): void {
    const mismatch = this.pendingMismatch;
    this.pendingMismatch = undefined;
    if (mismatch) this.onChecksumChange(this.lvolId, this.status(), this.lastState, mismatch);
  }

  /**
   * Records what a copy found (issue 21): source cluster `bad.clusterIndex`, owned by this lvol,
   * read other bytes than its stored CRC. Journaled as a verify's result is (`checksum.verified`,
   * see copyFindingOf), then told as `checksum_mismatch` with source `copy`. It goes straight to
   * the listener, not through pendingMismatch, which a walk of this lvol may be holding.
   */
  async recordCopyFinding(bad: BadCluster): Promise<VerificationRecord> {
    // A verify (running or paused to resume) that already read this cluster must not end by
    // overwriting the finding with its older reading: kept for its final record.
    const progress = this.actor.getSnapshot().context.progress;
    if (progress?.mode === 'verify' && progress.rangeCrcs.has(bad.clusterIndex)) {
      if (this.laterCopyFindings?.readings !== progress.rangeCrcs) this.laterCopyFindings = { readings: progress.rangeCrcs, findings: new Map() };
      this.laterCopyFindings.findings.set(bad.clusterIndex, bad);
    }
    const verification = copyFindingOf(this.store.lvol(this.lvolId), bad);
    await this.store.recordVerification(this.lvolId, verification);
    this.onChecksumChange(this.lvolId, this.status(), this.lastState, { source: 'copy', verification });
    return verification;
  }

  /**
   * Runs a verify walk (SPEC §6.10): every owned cluster, or with `errorsOnly` exactly the clusters
   * the last verify found bad. Resolves with the durable result; rejects EINTR when stopped or
   * preempted (the result so far is journaled as `incomplete`) and EIO when a read failed.
   */
  async verify(errorsOnly: boolean, resume: boolean): Promise<VerificationRecord> {
    const lvol = this.store.lvol(this.lvolId);
    if (lvol.checksum === null && lvol.rangeChecksums === null) fail('ENOENT', `no checksum registered for ${lvol.name} to verify against`);
    let targets: number[] | null = null;
    if (errorsOnly) {
      if (lvol.rangeChecksums === null) fail('EINVAL', `errors_only needs per-cluster checksums of ${lvol.name} (register range checksums)`);
      targets = (lvol.verification?.badClusters ?? []).map((bad) => bad.clusterIndex).filter((clusterIndex) => this.store.nextOwnedCluster(this.lvolId, clusterIndex) === clusterIndex);
    }
    await this.register('verify', resume, targets);
    return this.store.lvol(this.lvolId).verification!;
  }

  /** Runs a whole registration; resolves true when done (SPEC §6.3), rejects EINTR when stopped or preempted. */
  async register(mode: ChecksumMode, resume: boolean, targets: readonly number[] | null = null): Promise<true> {
    const runId = this.start(mode, resume, targets);
    const final = await waitFor(
      this.actor,
      (snapshot) => snapshot.context.progress?.runId === runId && !busyStates.has(checksumStateOf(snapshot)),
      { timeout: Number.POSITIVE_INFINITY },
    );
    const state = checksumStateOf(final);
    const progress = final.context.progress!;
    if (state === 'done') return true;
    if (state === 'aborted') {
      throw new StorageError('EINTR', {
        wire: 'internal',
        data: { reason: progress.reason, clusters_done: progress.clustersDone, clusters_total: progress.clustersTotal },
      });
    }
    throw new StorageError('EIO', { wire: 'internal', detail: progress.error ?? 'checksum failed' });
  }

  /** Sends the start of a run (queued until the scheduler admits it); returns its run id. */
  private start(mode: ChecksumMode, resume: boolean, targets: readonly number[] | null = null): number {
    const lvol = this.store.lvol(this.lvolId);
    if (!lvol.snapshot) fail('EPERM', `${lvol.name} is not a snapshot`, { wire: 'internal' });
    if (busyStates.has(this.checksumState)) fail('EEXIST', `a checksum of ${lvol.name} is already running`);
    const runId = ++this.runCounter;
    this.willResume = false;
    this.actor.send({
      type: 'checksum.start',
      runId,
      mode,
      clustersTotal: targets?.length ?? this.store.ownedClusterCount(this.lvolId),
      atMs: this.runtime.nowMs(),
      resume,
      targets,
    });
    return runId;
  }

  /**
   * Re-queues an aborted walk to continue where it stood, with nobody waiting for its answer
   * (after a preemption that left the snapshot valid, or at start after a restart). The value
   * lands in the lvstore as a registration's would. Returns false when there is nothing to resume.
   */
  resumeInBackground(): boolean {
    this.willResume = false;
    if (this.checksumState !== 'aborted') return false;
    const progress = this.actor.getSnapshot().context.progress;
    if (progress === null) return false;
    this.start(progress.mode, true, progress.targets);
    return true;
  }

  /** Marks a preempted walk as one the node re-queues once the operation is done. */
  expectResume(): void {
    if (this.checksumState === 'aborted') this.willResume = true;
  }

  /**
   * Stops a running walk and answers only once it has really stopped (SPEC §6.4). `reason` is what
   * its status and the register caller are told: a user's stop says `stopped`; the verification
   * policy's says why (its walk is resumed by the policy, not at restart).
   */
  async stop(reason = 'stopped'): Promise<true> {
    if (!walkingStates.has(this.checksumState)) fail('ESRCH', `no checksum of lvol ${this.lvolId} is running`);
    this.willResume = false;
    this.actor.send({ type: 'checksum.stop', reason, atMs: this.runtime.nowMs() });
    await this.settled();
    return true;
  }

  /**
   * Makes way for a priority operation: a running walk stops after its in-flight cluster
   * (SPEC §6.5); a checksum being stored is let finish. Returns at once when nothing runs.
   * True when this call aborted a walk (so the node may re-queue it).
   */
  async preempt(operation: string): Promise<boolean> {
    const walking = this.checksumState === 'computing' || this.checksumState === 'queued';
    if (walking) this.actor.send({ type: 'lvol.preempt', operation, atMs: this.runtime.nowMs() });
    await this.settled();
    return walking && checksumStateOf(this.actor.getSnapshot()) === 'aborted';
  }

  /** Drops partial and stored-state knowledge after an operation changed the clusters this lvol owns. */
  invalidate(): void {
    this.willResume = false;
    this.actor.send({ type: 'checksum.invalidate' });
  }

  /**
   * Starts the machine again from the records, in the state an actor attached now would take
   * (done with the stored value): after a merge derived this snapshot's checksums from values
   * already stored (issue 21 item 2), no walk ran to bring it there, and what an earlier walk
   * left (its progress, an aborted position) no longer describes the lvol. Callers preempt first.
   */
  restartFromRecords(): void {
    this.willResume = false;
    const old = this.started;
    if (!old) return; // Not started yet: it starts from the records anyway.
    assert.ok(!busyStates.has(this.checksumState), `lvol ${this.lvolId} restarted while its checksum is ${this.checksumState}`);
    const previous = this.lastState;
    old.stop();
    this.untrack();
    this.started = undefined;
    const actor = this.startNow();
    if (checksumStateOf(actor.getSnapshot()) !== previous) this.onChecksumChange(this.lvolId, this.status(), previous);
  }

  private async settled(): Promise<void> {
    if (busyStates.has(this.checksumState)) {
      await waitFor(this.actor, (snapshot) => !busyStates.has(checksumStateOf(snapshot)), {
        timeout: Number.POSITIVE_INFINITY,
      });
    }
    // A read-ahead that had begun finishes before the operation that made way may touch the clusters.
    await Promise.all([...this.reads].map((read) => read.result));
    await this.progressSaved;
  }

  status(): ChecksumStatus {
    const snapshot = this.actor.getSnapshot();
    const state = checksumStateOf(snapshot);
    const progress = snapshot.context.progress;
    if (!progress) {
      return {
        state,
        mode: null,
        clusters_done: 0,
        clusters_total: 0,
        bytes_done: 0,
        rate_bytes_per_sec: 0,
        eta_sec: null,
        queue_position: null,
        will_resume: false,
        started_at: null,
        finished_at: null,
        resumable: false,
      };
    }
    const nowMs = this.runtime.nowMs();
    const runningMs = progress.finishedAtMs === null && state !== 'queued' ? Math.max(0, nowMs - progress.resumedAtMs) : 0;
    const activeMs = progress.activeMs + runningMs;
    // While computing, the rate is this run's recent rate (not an average over earlier runs, which
    // a resume would inflate); afterwards, the average over all the time spent computing.
    const rate =
      state === 'computing' || state === 'stopping'
        ? (this.meter?.bytesPerSec(nowMs) ?? 0)
        : activeMs > 0
          ? Math.round((progress.bytesDone * 1000) / activeMs)
          : 0;
    const remainingBytes = Math.max(0, progress.clustersTotal - progress.clustersDone) * this.store.clusterBytes;
    return {
      state,
      mode: progress.mode,
      clusters_done: progress.clustersDone,
      clusters_total: progress.clustersTotal,
      bytes_done: progress.bytesDone,
      rate_bytes_per_sec: rate,
      eta_sec: state === 'computing' && rate > 0 ? Math.round((remainingBytes / rate) * 10) / 10 : null,
      queue_position: state === 'queued' ? this.admission.queuePosition(this.lvolId) : null,
      will_resume: this.willResume,
      started_at: new Date(progress.startedAtMs).toISOString(),
      finished_at: progress.finishedAtMs === null ? null : new Date(progress.finishedAtMs).toISOString(),
      ...(progress.reason ? { reason: progress.reason } : {}),
      ...(progress.error ? { error: progress.error } : {}),
      resumable: state === 'aborted',
    };
  }

  /** Stops the actor for good (lvol deleted or lvstore unloaded); callers preempt first. */
  dispose(): void {
    this.willResume = false;
    this.disposed = true;
    this.abortReads(true);
    this.started?.stop();
    this.untrack();
    this.starter?.forget(this);
    // Only a walk that asked holds anything there: 100,000 releases at shutdown were ~40% of it.
    if (this.admissionAsked) this.admission.release(this.lvolId);
    this.admissionAsked = false;
  }
}
