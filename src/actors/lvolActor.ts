// One lvol's root actor: the lvol machine bound to its lvstore, plus register/stop/preempt as promises.
import { type Actor, type SnapshotFrom, createActor, fromPromise, waitFor } from 'xstate';
import { crc64, crc64Combine } from '../checksum/crc64.ts';
import { checksumChunkBytesMax, checksumProgressSaveIntervalMs } from '../constants.ts';
import { StorageError, fail } from '../errors.ts';
import { log } from '../log.ts';
import {
  type ChecksumMode,
  type ClusterStepInput,
  type ClusterStepOutput,
  type StoreChecksumInput,
  lvolMachine,
} from '../machines/lvolMachine.ts';
import type { Runtime } from '../runtime.ts';
import type { Lvstore } from '../store/lvstore.ts';
import type { SavedChecksumProgress } from '../store/metadata.ts';
import { clusterBuffers } from './bufferPool.ts';
import type { InspectionHub } from './inspector.ts';

export type ChecksumState = 'idle' | 'computing' | 'stopping' | 'storing' | 'aborted' | 'done' | 'failed';
type LvolSnapshot = SnapshotFrom<typeof lvolMachine>;

export interface ChecksumStatus {
  state: ChecksumState;
  mode: ChecksumMode | null;
  clusters_done: number;
  clusters_total: number;
  bytes_done: number;
  rate_bytes_per_sec: number;
  started_at: string | null;
  finished_at: string | null;
  reason?: string;
  error?: string;
  resumable: boolean;
}

/** Called on every checksum state change of the lvol (for notifications and the dashboard). */
export type ChecksumListener = (lvolId: string, status: ChecksumStatus, previous: ChecksumState) => void;

const busyStates: ReadonlySet<ChecksumState> = new Set(['computing', 'stopping', 'storing']);
const walkingStates: ReadonlySet<ChecksumState> = new Set(['computing', 'stopping']);

/**
 * The machine mutates its per-cluster map in place while it walks; the lvstore's record must not
 * share it, or a later checkpoint would capture changes no journal record describes.
 */
function copyProgress<T extends { rangeCrcs: Map<number, bigint> } | null>(progress: T): T {
  return progress === null ? progress : { ...progress, rangeCrcs: new Map(progress.rangeCrcs) };
}

/** A walk that was still running when the node stopped comes back stopped, and resumable. */
function restoredProgress(saved: SavedChecksumProgress | null, nowMs: number): SavedChecksumProgress | null {
  if (saved === null || saved.reason !== null) return copyProgress(saved);
  return { ...copyProgress(saved), reason: 'interrupted by restart', finishedAtMs: nowMs };
}

export function checksumStateOf(snapshot: LvolSnapshot): ChecksumState {
  return (snapshot.value as { checksum: ChecksumState }).checksum;
}

export class LvolActor {
  readonly actor: Actor<typeof lvolMachine>;
  private runCounter = 0;
  // The one cluster buffer of a running walk: taken at the first step, released when the walk ends.
  private buffer: Buffer | undefined;
  private lastState: ChecksumState;
  // The latest save of a stopped walk's position; stop and preempt answer after it is durable.
  private progressSaved: Promise<void> = Promise.resolve();

  private lastProgressSaveMs = 0;

  constructor(
    readonly lvolId: string,
    private readonly store: Lvstore,
    private readonly runtime: Runtime,
    inspector: InspectionHub,
    private readonly onChecksumChange: ChecksumListener,
    private readonly progressSaveIntervalMs = checksumProgressSaveIntervalMs,
  ) {
    const machine = lvolMachine.provide({
      actors: {
        clusterStep: fromPromise<ClusterStepOutput, ClusterStepInput>(({ input }) => this.step(input)),
        storeChecksum: fromPromise<number, StoreChecksumInput>(({ input }) => this.storeResult(input)),
      },
    });
    this.actor = createActor(machine, {
      id: lvolId,
      input: {
        lvolId,
        checksumStored: store.lvol(lvolId).checksum !== null,
        savedProgress: restoredProgress(store.lvol(lvolId).savedProgress, runtime.nowMs()),
      },
      inspect: inspector.observerFor(lvolId),
    });
    this.lastState = checksumStateOf(this.actor.getSnapshot());
    this.actor.subscribe({
      next: (snapshot) => this.observe(snapshot),
      // A root actor's unhandled error would crash Node: log and report it instead.
      error: (error) => log('error', 'lvol actor failed', { lvol: lvolId, error: String(error) }),
    });
    this.actor.start();
  }

  get checksumState(): ChecksumState {
    return checksumStateOf(this.actor.getSnapshot());
  }

  /** True while a walk holds its cluster buffer (SPEC §6.8: none may leak). */
  get holdsBuffer(): boolean {
    return this.buffer !== undefined;
  }

  private observe(snapshot: LvolSnapshot): void {
    const state = checksumStateOf(snapshot);
    if (!walkingStates.has(state)) this.releaseBuffer();
    const previous = this.lastState;
    this.lastState = state;
    // A stopped or preempted walk's position is saved so it can resume, also after a restart.
    // It is appended before anything the stop made way for (a delete runs after `settled()`).
    // A running walk's position is saved every few seconds, so a crash costs little of it.
    const progress = snapshot.context.progress;
    const nowMs = this.runtime.nowMs();
    const aborting = state === 'aborted' && previous !== 'aborted';
    const periodic = state === 'computing' && nowMs - this.lastProgressSaveMs >= this.progressSaveIntervalMs;
    if (progress && (aborting || periodic)) {
      this.lastProgressSaveMs = nowMs;
      const copy = copyProgress(progress);
      const saved = this.progressSaved.then(() => this.store.saveChecksumProgress(this.lvolId, copy));
      this.progressSaved = saved.catch((error: unknown) =>
        log('error', 'saving checksum progress failed', { lvol: this.lvolId, error: String(error) }),
      );
    }
    this.onChecksumChange(this.lvolId, this.status(), previous);
  }

  private releaseBuffer(): void {
    if (this.buffer) clusterBuffers.release(this.buffer);
    this.buffer = undefined;
  }

  private async step(input: ClusterStepInput): Promise<ClusterStepOutput> {
    // Two macrotasks before the read: the event loop polls sockets in between, so a stop or
    // priority operation that arrived during the previous cluster's CRC is seen before the next
    // read starts, and the walk ends without reading another cluster.
    await this.runtime.yieldMacrotask();
    await this.runtime.yieldMacrotask();
    if (this.checksumState !== 'computing') return { kind: 'skipped', atMs: this.runtime.nowMs() };
    const clusterIndex = this.store.nextOwnedCluster(input.lvolId, input.fromClusterIndex);
    if (clusterIndex < 0) return { kind: 'end', atMs: this.runtime.nowMs() };
    const clusterBytes = this.store.clusterBytes;
    this.buffer ??= clusterBuffers.acquire(Math.min(clusterBytes, checksumChunkBytesMax));
    const buffer = this.buffer;
    // The cluster is read whole, piece by piece; each piece's CRC folds into the cluster's.
    let crc = 0n;
    try {
      for (let offset = 0; offset < clusterBytes; offset += buffer.length) {
        await this.store.readOwnedCluster(input.lvolId, clusterIndex, buffer, offset);
        crc = crc64Combine(crc, crc64(buffer), buffer.length);
      }
    } catch (error) {
      return { kind: 'error', message: error instanceof Error ? error.message : String(error), atMs: this.runtime.nowMs() };
    }
    return { kind: 'cluster', clusterIndex, crc, bytes: clusterBytes, atMs: this.runtime.nowMs() };
  }

  private async storeResult(input: StoreChecksumInput): Promise<number> {
    // A position save still on its way must land before the result, which clears it.
    await this.progressSaved;
    const lvol = this.store.lvol(input.lvolId);
    // Plain registration refreshes per-cluster values only where a range set already exists (SPDK).
    let range: BigUint64Array | null = null;
    if (input.mode === 'range' || lvol.rangeChecksums !== null) {
      range = new BigUint64Array(lvol.clusterMap.length);
      for (const [clusterIndex, crc] of input.rangeCrcs) range[clusterIndex] = crc;
    }
    await this.store.storeChecksum(input.lvolId, input.checksum, range);
    return this.runtime.nowMs();
  }

  /** Runs a whole registration; resolves true when done (SPEC §6.3), rejects EINTR when stopped or preempted. */
  async register(mode: ChecksumMode, resume: boolean): Promise<true> {
    const lvol = this.store.lvol(this.lvolId);
    if (!lvol.snapshot) fail('EPERM', `${lvol.name} is not a snapshot`, { wire: 'internal' });
    if (busyStates.has(this.checksumState)) fail('EEXIST', `a checksum of ${lvol.name} is already running`);
    const runId = ++this.runCounter;
    this.actor.send({
      type: 'checksum.start',
      runId,
      mode,
      clustersTotal: this.store.ownedClusterCount(this.lvolId),
      atMs: this.runtime.nowMs(),
      resume,
    });
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

  /** Stops a running walk and answers only once it has really stopped (SPEC §6.4). */
  async stop(): Promise<true> {
    if (!walkingStates.has(this.checksumState)) fail('ESRCH', `no checksum of lvol ${this.lvolId} is running`);
    this.actor.send({ type: 'checksum.stop', reason: 'stopped', atMs: this.runtime.nowMs() });
    await this.settled();
    return true;
  }

  /**
   * Makes way for a priority operation: a running walk stops after its in-flight cluster
   * (SPEC §6.5); a checksum being stored is let finish. Returns at once when nothing runs.
   */
  async preempt(operation: string): Promise<void> {
    if (this.checksumState === 'computing') {
      this.actor.send({ type: 'lvol.preempt', operation, atMs: this.runtime.nowMs() });
    }
    await this.settled();
  }

  /** Drops partial and stored-state knowledge after an operation changed the clusters this lvol owns. */
  invalidate(): void {
    this.actor.send({ type: 'checksum.invalidate' });
  }

  private async settled(): Promise<void> {
    if (busyStates.has(this.checksumState)) {
      await waitFor(this.actor, (snapshot) => !busyStates.has(checksumStateOf(snapshot)), {
        timeout: Number.POSITIVE_INFINITY,
      });
    }
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
        started_at: null,
        finished_at: null,
        resumable: false,
      };
    }
    const runningMs = progress.finishedAtMs === null ? Math.max(0, this.runtime.nowMs() - progress.resumedAtMs) : 0;
    const activeMs = progress.activeMs + runningMs;
    return {
      state,
      mode: progress.mode,
      clusters_done: progress.clustersDone,
      clusters_total: progress.clustersTotal,
      bytes_done: progress.bytesDone,
      rate_bytes_per_sec: activeMs > 0 ? Math.round((progress.bytesDone * 1000) / activeMs) : 0,
      started_at: new Date(progress.startedAtMs).toISOString(),
      finished_at: progress.finishedAtMs === null ? null : new Date(progress.finishedAtMs).toISOString(),
      ...(progress.reason ? { reason: progress.reason } : {}),
      ...(progress.error ? { error: progress.error } : {}),
      resumable: state === 'aborted',
    };
  }

  /** Stops the actor for good (lvol deleted or lvstore unloaded); callers preempt first. */
  dispose(): void {
    this.actor.stop();
    this.releaseBuffer();
  }
}
