// Copy operations (SPDK's shallow / range shallow / deep copy, Longhorn's replica rebuild): each
// is an actor running src/machines/copyMachine.ts, admitted by the node's background scheduler
// like a checksum walk, one step per event, visible in the inspector as `copy-<operation_id>`.
import { type Actor, createActor } from 'xstate';
import type { Bdev } from '../bdev/bdev.ts';
import { crc64 } from '../checksum/crc64.ts';
import { copyBusyPaceUnitBytes, copyZeroClustersPerStepMax } from '../constants.ts';
import { fail } from '../errors.ts';
import { log } from '../log.ts';
import { type CopyKind, type CopyState, type CopyStepOutput, copyMachine } from '../machines/copyMachine.ts';
import type { Runtime } from '../runtime.ts';
import type { Lvstore } from '../store/lvstore.ts';
import type { BadCluster, LvolRecord } from '../store/metadata.ts';
import type { InspectionHub } from './inspector.ts';
import type { PriorityRouter } from './priority.ts';
import type { Registry } from './registry.ts';
import type { WalkAdmission } from './scheduler.ts';

/**
 * Where a copy writes: any bdev (an lvol, a malloc or file bdev), opened for the copy while it
 * runs (a removable open: a delete of the destination stops the copy first, and no lvstore is
 * created under it), written through the bdev's claim checks.
 */
export interface CopyTarget {
  /** The bdev's name as the client gave it (for status). */
  readonly name: string;
  readonly bdev: Bdev;
  /**
   * An lvol destination: writes whole cluster `clusterIndex` and records `checksum` (the CRC of
   * `data`) as its copied value, so a snapshot of the destination is born with its checksums.
   */
  writeRecorded?(clusterIndex: number, data: Buffer, checksum: bigint): Promise<void>;
  /** An lvol destination: zero-fills whole clusters, recording `checksum` (a zero cluster's CRC) for each it owns. */
  writeZeroesRecorded?(clusterIndex: number, clusterCount: number, checksum: bigint): Promise<void>;
}

export interface CopyRequest {
  kind: CopyKind;
  store: Lvstore;
  sourceId: string;
  target: CopyTarget;
  /** range: the logical clusters to bring over (others are left alone). */
  clusters?: readonly number[];
}

/** `bdev_lvol_check_shallow_copy` / `check_deep_copy` as SPDK answers them, plus lvnode's extras. */
export interface CopyStatus {
  operation_id: number;
  kind: CopyKind;
  state: 'in progress' | 'complete' | 'error';
  /** lvnode's finer state: queued, copying, stopping, done, failed, stopped. */
  machine_state: CopyState;
  copied_clusters: number;
  processed_clusters: number;
  unmapped_clusters: number;
  total_clusters: number;
  src_lvol: string;
  dst_bdev: string;
  error?: string;
}

type CopyPlan = () => Promise<CopyStepOutput>;

/** At most one progress notification per copy this often (state changes are always sent). */
const copyProgressIntervalMs = 250;

const terminal: ReadonlySet<CopyState> = new Set(['done', 'failed', 'stopped']);

class CopyOperation {
  readonly actor: Actor<typeof copyMachine>;
  private stepRunning: Promise<void> = Promise.resolve();
  readonly finished: Promise<void>;

  constructor(
    readonly operationId: number,
    readonly request: CopyRequest,
    total: number,
    private readonly plan: CopyPlan,
    private readonly admission: WalkAdmission,
    private readonly runtime: Runtime,
    inspector: InspectionHub,
    onChange: (operation: CopyOperation, what: 'state' | 'progress') => void,
  ) {
    const key = `copy-${operationId}`;
    this.actor = createActor(
      copyMachine.provide({
        actions: {
          requestAdmission: () => this.admission.request(key, () => this.actor.send({ type: 'copy.admit' })),
          releaseAdmission: () => this.admission.release(key),
          requestStep: () => {
            this.stepRunning = this.runStep();
          },
        },
      }),
      {
        id: key,
        input: { operationId, kind: request.kind, sourceId: request.sourceId, destination: request.target.name, totalClusters: total },
        inspect: inspector.observerFor(key),
      },
    );
    let last: CopyState | undefined;
    let lastProgressMs = 0;
    this.finished = new Promise((resolve) => {
      this.actor.subscribe((snapshot) => {
        const state = snapshot.value as CopyState;
        const nowMs = this.runtime.nowMs();
        if (state !== last) {
          last = state;
          onChange(this, 'state');
        } else if (nowMs - lastProgressMs >= copyProgressIntervalMs) {
          // Progress between states, throttled like checksum progress.
          lastProgressMs = nowMs;
          onChange(this, 'progress');
        }
        if (terminal.has(state)) resolve();
      });
    });
  }

  start(): void {
    this.actor.start();
  }

  get state(): CopyState {
    return this.actor.getSnapshot().value as CopyState;
  }

  private async runStep(): Promise<void> {
    // A macrotask first: a stop or delete that arrived meanwhile is seen before the next step.
    await this.runtime.yieldMacrotask();
    let output: CopyStepOutput;
    if (this.state !== 'copying') output = { kind: 'end' };
    else {
      try {
        output = await this.plan();
      } catch (error) {
        output = { kind: 'error', message: error instanceof Error ? error.message : String(error) };
      }
    }
    if (output.kind === 'end' && this.state === 'copying') {
      try {
        await this.request.target.bdev.flush();
      } catch (error) {
        output = { kind: 'error', message: `flushing ${this.request.target.name} failed: ${String(error)}` };
      }
    }
    this.actor.send({ type: 'step.done', output });
  }

  /** Ends the copy at the next step boundary; resolves once it is in a final state. */
  async stop(reason: string): Promise<void> {
    this.actor.send({ type: 'copy.stop', reason });
    await this.stepRunning;
    await this.finished;
  }

  status(): CopyStatus {
    const context = this.actor.getSnapshot().context;
    const state = this.state;
    const error = state === 'failed' ? (context.error ?? 'failed') : state === 'stopped' ? `stopped: ${context.reason ?? 'stopped'}` : undefined;
    return {
      operation_id: this.operationId,
      kind: context.kind,
      state: state === 'done' ? 'complete' : error !== undefined ? 'error' : 'in progress',
      machine_state: state,
      copied_clusters: context.copiedClusters,
      processed_clusters: context.processedClusters,
      unmapped_clusters: context.unmappedClusters,
      total_clusters: context.totalClusters,
      src_lvol: context.sourceId,
      dst_bdev: context.destination,
      ...(error !== undefined ? { error } : {}),
    };
  }
}

export class CopyService {
  private readonly operations = new Map<number, CopyOperation>();
  private nextOperationId = 1;

  constructor(
    private readonly registry: Registry,
    private readonly router: PriorityRouter,
    private readonly admission: WalkAdmission,
    private readonly inspector: InspectionHub,
    private readonly runtime: Runtime,
    private readonly onChange: (status: CopyStatus, what: 'state' | 'progress') => void = () => {},
  ) {}

  /**
   * bdev_lvol_start_shallow_copy / _range_shallow_copy / _deep_copy: validates both ends, then
   * preempts a checksum walk on the source (it is re-queued behind the copy, rather than the
   * copy being refused with EBUSY as in SPDK) and starts the copy actor.
   */
  async startByName(kind: CopyKind, sourceName: string, destinationName: string, clusters?: readonly number[]): Promise<number> {
    const { entry, lvol } = this.registry.lvol(sourceName);
    return this.router.run({
      operation: `bdev_lvol_start_${kind === 'range' ? 'range_shallow' : kind}_copy`,
      touched: () => [lvol.id],
      validate: () => {
        if (entry.store.record.lvols.get(lvol.id) !== lvol) fail('ENODEV', `lvol ${sourceName} does not exist`);
        if (!lvol.readOnly) fail('EPERM', `${sourceName} is not read-only: only a snapshot or read-only lvol can be copied`);
        const { bdev } = this.targetFor(destinationName, lvol.id);
        const sourceBytes = lvol.clusterMap.length * entry.store.clusterBytes;
        if (bdev.blockSizeBytes !== entry.store.record.blockBytes) {
          fail('EINVAL', `${destinationName} has ${bdev.blockSizeBytes}-byte blocks, ${sourceName} ${entry.store.record.blockBytes}`);
        }
        const sizeBytes = bdev.sizeBytes();
        if (sizeBytes < sourceBytes) fail('EINVAL', `${destinationName} (${sizeBytes} bytes) is smaller than ${sourceName} (${sourceBytes} bytes)`);
        const outside = clusters?.find((clusterIndex) => clusterIndex >= lvol.clusterMap.length);
        if (outside !== undefined) fail('EINVAL', `cluster ${outside} is outside 0..${lvol.clusterMap.length - 1}`);
      },
      work: async () =>
        this.start({ kind, store: entry.store, sourceId: lvol.id, target: this.targetFor(destinationName, lvol.id), ...(clusters ? { clusters } : {}) }),
    });
  }

  /**
   * A writable destination: any bdev (an lvol by UUID or alias, a base bdev) that no claim keeps
   * from being written (an lvstore on it, esnap clones over it) and is not read-only.
   */
  private targetFor(name: string, sourceId: string): CopyTarget {
    // Opened as a consumer: the destination's rate limits (Longhorn's rebuild rate) apply, and its I/O is counted.
    const bdev = this.registry.openBdev(name);
    if (bdev.name === sourceId) fail('EINVAL', 'source and destination are the same lvol');
    const claimer = bdev.claims.writer();
    if (claimer !== undefined) fail('EPERM', `bdev ${name} is claimed by ${claimer}; copy to one of its lvols instead`);
    if (bdev.readOnly()) fail('EPERM', `${bdev.kind === 'lvol' ? '' : 'bdev '}${name} is read-only`);
    if (bdev.kind !== 'lvol') return { name, bdev };
    const { store } = this.registry.lvol(bdev.name).entry;
    const io = this.registry.io.of(bdev);
    // An lvol keeps per-cluster checksums: its copied clusters are recorded (a snapshot of it is born with them).
    return {
      name,
      bdev,
      writeRecorded: (clusterIndex, data, checksum) => io.run('write', data.length, () => store.writeCopied(bdev.name, clusterIndex, data, checksum)),
      writeZeroesRecorded: (clusterIndex, clusterCount, checksum) =>
        io.run('write', clusterCount * store.clusterBytes, () => store.writeZeroesCopied(bdev.name, clusterIndex, clusterCount, checksum), 'unmap'),
    };
  }

  /**
   * A rotten source cluster is recorded on the snapshot that owns it as a verify's finding is
   * (LvolActor.recordCopyFinding: journaled, listed, pushed as checksum_mismatch). A failure to
   * record is logged; the copy fails naming the cluster either way.
   */
  private readonly recordRot: RecordRot = async (ownerId, bad) => {
    try {
      await this.registry.lvol(ownerId).actor.recordCopyFinding(bad);
    } catch (error) {
      log('error', 'recording a corrupt source cluster a copy found failed', { lvol: ownerId, cluster: bad.clusterIndex, error: String(error) });
    }
  };

  /** Starts a copy whose ends were validated; returns its operation id. */
  start(request: CopyRequest): number {
    const { plan, total } = planFor(request, this.admission, this.recordRot);
    const operationId = this.nextOperationId++;
    // SPDK's ids are u32.
    if (this.nextOperationId > 0xffff_ffff) this.nextOperationId = 1;
    const operation = new CopyOperation(operationId, request, total, plan, this.admission, this.runtime, this.inspector, (changed, what) =>
      this.onChange(changed.status(), what),
    );
    this.operations.set(operationId, operation);
    // Held open while it runs: a delete of the destination stops the copy, nothing else blocks on it.
    const hold = request.target.bdev.claims.open(`copy ${operationId}`, { removable: true });
    void operation.finished.then(() => {
      hold.release();
      const status = operation.status();
      log(status.state === 'complete' ? 'info' : 'warn', `copy ${status.machine_state}`, { ...status });
    });
    operation.start();
    return operationId;
  }

  /**
   * The copy's status. As SPDK, an operation that has ended is reported once more and then
   * forgotten (a later check is -19).
   */
  check(kind: 'shallow' | 'deep', operationId: number): CopyStatus {
    const operation = this.operations.get(operationId);
    const matches = operation !== undefined && (kind === 'deep' ? operation.request.kind === 'deep' : operation.request.kind !== 'deep');
    if (!operation || !matches) return fail('ENODEV', `no ${kind} copy with operation_id ${operationId}`);
    const status = operation.status();
    if (terminal.has(status.machine_state)) this.operations.delete(operationId);
    return status;
  }

  /** Running copies that read or write one of `lvolIds`, or write base bdev `baseBdev`. */
  private involving(lvolIds: readonly string[], baseBdev?: string): CopyOperation[] {
    return [...this.operations.values()].filter((operation) => {
      if (terminal.has(operation.state)) return false;
      const { sourceId, target } = operation.request;
      const destination = target.bdev;
      return (
        lvolIds.includes(sourceId) ||
        (destination.kind === 'lvol' && lvolIds.includes(destination.name)) ||
        (baseBdev !== undefined && destination.kind !== 'lvol' && destination.name === baseBdev)
      );
    });
  }

  /**
   * Stops (between steps) every running copy from or to these lvols or to this base bdev, and
   * waits until they have: a delete of either end runs only after (SPDK refuses it with EBUSY).
   */
  async stopInvolving(what: { lvolIds?: readonly string[]; baseBdev?: string }, reason: string): Promise<void> {
    await Promise.all(this.involving(what.lvolIds ?? [], what.baseBdev).map((operation) => operation.stop(reason)));
  }

  async stopAll(reason: string): Promise<void> {
    const running = [...this.operations.values()].filter((operation) => !terminal.has(operation.state));
    await Promise.all(running.map((operation) => operation.stop(reason)));
  }

  list(): CopyStatus[] {
    return [...this.operations.values()].map((operation) => operation.status());
  }

  /** The copy actors, for the inspector (`copy-<operation_id>`). */
  operationList(): CopyOperation[] {
    return [...this.operations.values()];
  }
}

/** Records a rotten source cluster on the snapshot `ownerId` that owns it. */
type RecordRot = (ownerId: string, bad: BadCluster) => Promise<void>;

/**
 * The CRC of source cluster `clusterIndex` (bytes in `data`), checked against the per-cluster
 * checksum its owner `owner` stored, if any (issue 21 item 3). A mismatch is recorded on the owner
 * (`recordRot`), then throws before anything is written: the copy fails naming the cluster, and
 * the destination never receives the bytes.
 */
async function checkedCrc(owner: LvolRecord | null, clusterIndex: number, clusterBytes: number, data: Buffer, recordRot: RecordRot): Promise<bigint> {
  const actual = crc64(data);
  const expected = owner?.rangeChecksums?.get(clusterIndex) ?? 0n;
  if (expected !== 0n && actual !== expected) {
    await recordRot(owner!.id, { clusterIndex, offsetBytes: clusterIndex * clusterBytes, expected, actual });
    fail(
      'EIO',
      `source cluster ${clusterIndex} of ${owner!.name} is corrupt: stored CRC 0x${expected.toString(16).padStart(16, '0')}, read 0x${actual.toString(16).padStart(16, '0')}; not written`,
    );
  }
  return actual;
}

/** Writes a checked cluster, recording its CRC where the destination keeps them (an lvol). */
function writeCluster(target: CopyTarget, clusterIndex: number, clusterBytes: number, data: Buffer, crc: bigint): Promise<void> {
  if (target.writeRecorded) return target.writeRecorded(clusterIndex, data, crc);
  return target.bdev.write(clusterIndex * clusterBytes, data);
}

const zeroClusterCrcs = new Map<number, bigint>();

/** The CRC of a cluster of zeros, computed once per cluster size. */
function zeroClusterCrc(clusterBytes: number): bigint {
  let crc = zeroClusterCrcs.get(clusterBytes);
  if (crc === undefined) {
    crc = crc64(Buffer.alloc(clusterBytes));
    zeroClusterCrcs.set(clusterBytes, crc);
  }
  return crc;
}

/**
 * A deep copy's zeros over whole clusters the source shows none in: an lvol destination records a
 * zero cluster's CRC for each (so a snapshot of it is born with its checksums); other bdevs are
 * only zeroed.
 */
function zeroClusters(target: CopyTarget, clusterIndex: number, clusterCount: number, clusterBytes: number): Promise<void> {
  if (target.writeZeroesRecorded) return target.writeZeroesRecorded(clusterIndex, clusterCount, zeroClusterCrc(clusterBytes));
  return target.bdev.writeZeroes(clusterIndex * clusterBytes, clusterCount * clusterBytes);
}

/** The background pacing of `bytes` of copy, a turn per copyBusyPaceUnitBytes (constants.ts says why). */
async function paceCopy(admission: WalkAdmission, bytes: number, signal: AbortSignal): Promise<void> {
  for (let pacedBytes = 0; pacedBytes < bytes; pacedBytes += copyBusyPaceUnitBytes) {
    await admission.pace(Math.min(copyBusyPaceUnitBytes, bytes - pacedBytes), signal);
  }
}

/** The steps of a copy, lazily: each call does the next one. */
function planFor(request: CopyRequest, admission: WalkAdmission, recordRot: RecordRot): { plan: CopyPlan; total: number } {
  const { store, sourceId, target } = request;
  const clusterBytes = store.clusterBytes;
  const buffer = Buffer.alloc(clusterBytes);
  const never = new AbortController().signal;
  const copyOwned = async (clusterIndex: number): Promise<CopyStepOutput> => {
    // checksum_rate_mib_per_sec paces copies too: it is the node's budget for background reads.
    await paceCopy(admission, clusterBytes, never);
    admission.recordBytes(clusterBytes);
    // The source's own bytes, read in the background class (foreground I/O goes first).
    const offset = store.ownedClusterOffsetBytes(sourceId, clusterIndex);
    if (store.device.readIntoBackground) await store.device.readIntoBackground(buffer, offset);
    else await store.device.readInto(buffer, offset);
    const crc = await checkedCrc(store.lvol(sourceId), clusterIndex, clusterBytes, buffer, recordRot);
    await writeCluster(target, clusterIndex, clusterBytes, buffer, crc);
    return { kind: 'copied', clusters: 1, bytes: clusterBytes };
  };
  if (request.kind === 'shallow') {
    let next = 0;
    return {
      total: store.ownedClusterCount(sourceId),
      plan: async () => {
        const clusterIndex = store.nextOwnedCluster(sourceId, next);
        if (clusterIndex < 0) return { kind: 'end' };
        next = clusterIndex + 1;
        return copyOwned(clusterIndex);
      },
    };
  }
  if (request.kind === 'range') {
    const clusters = [...new Set(request.clusters ?? [])].sort((a, b) => a - b);
    let position = 0;
    return {
      total: clusters.length,
      plan: async () => {
        const clusterIndex = clusters[position++];
        if (clusterIndex === undefined) return { kind: 'end' };
        if (store.lvol(sourceId).clusterMap.get(clusterIndex) !== 0) return copyOwned(clusterIndex);
        // Not in the source snapshot: the destination must not keep its own bytes there.
        await target.bdev.unmap(clusterIndex * clusterBytes, clusterBytes);
        return { kind: 'unmapped', clusters: 1 };
      },
    };
  }
  // Deep: everything the source shows, through its parent chain; holes become zeros.
  const clusterCount = store.lvol(sourceId).clusterMap.length;
  let nextByte = 0;
  return {
    total: clusterCount,
    plan: async () => {
      const end = clusterCount * clusterBytes;
      if (nextByte >= end) return { kind: 'end' };
      const [extent] = store.extents(sourceId, nextByte, end - nextByte, 1);
      if (!extent) return { kind: 'end' };
      if (!extent.allocated) {
        // Extents are whole clusters (holes are clusters nobody in the chain owns).
        const clusterCount = Math.min(extent.lengthBytes / clusterBytes, copyZeroClustersPerStepMax);
        await zeroClusters(target, extent.offsetBytes / clusterBytes, clusterCount, clusterBytes);
        nextByte = extent.offsetBytes + clusterCount * clusterBytes;
        return { kind: 'zeroed', clusters: clusterCount };
      }
      await paceCopy(admission, clusterBytes, never);
      admission.recordBytes(clusterBytes);
      // Through the chain (an external snapshot too), behind client I/O like the shallow path.
      const data = await store.read(sourceId, nextByte, clusterBytes, { background: true });
      const clusterIndex = nextByte / clusterBytes;
      const crc = await checkedCrc(store.clusterOwnerOf(sourceId, clusterIndex), clusterIndex, clusterBytes, data, recordRot);
      await writeCluster(target, clusterIndex, clusterBytes, data, crc);
      nextByte += clusterBytes;
      return { kind: 'copied', clusters: 1, bytes: clusterBytes };
    },
  };
}
