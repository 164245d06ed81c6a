// Checksum operations of the node: register, stop, read back, status, and their notifications.
//
// Walks themselves live in the lvol actors; this service finds the actor, starts a registration
// under the lvol's lock (so it waits out a priority operation on it), and turns actor state
// changes into node events, throttled per lvol (SPEC §8).
import { progressNotifyIntervalMs } from '../constants.ts';
import { StorageError, fail } from '../errors.ts';
import type { ChecksumMode } from '../machines/lvolMachine.ts';
import type { Runtime } from '../runtime.ts';
import type { VerificationRecord } from '../store/metadata.ts';
import type { ChecksumMismatch, ChecksumState, ChecksumStatus } from './lvolActor.ts';
import type { PriorityRouter } from './priority.ts';
import type { Registry } from './registry.ts';

export interface ChecksumEvent {
  type: 'checksum_state' | 'checksum_progress' | 'checksum_preempted' | 'checksum_mismatch';
  uuid: string;
  [key: string]: unknown;
}

export class ChecksumService {
  private readonly lastProgressMs = new Map<string, number>();

  constructor(
    private readonly registry: Registry,
    private readonly router: PriorityRouter,
    private readonly runtime: Runtime,
    private readonly emit: (event: ChecksumEvent) => void,
  ) {}

  /** The lvol actors' state listener. */
  readonly onChange = (lvolId: string, status: ChecksumStatus, previous: ChecksumState, mismatch?: ChecksumMismatch): void => {
    if (mismatch) this.emitMismatch(lvolId, mismatch);
    if (status.state !== previous) {
      this.emit({ type: 'checksum_state', uuid: lvolId, previous, ...status });
      if (status.state === 'aborted' && status.reason?.startsWith('preempted by ')) {
        this.emit({ type: 'checksum_preempted', uuid: lvolId, reason: status.reason });
      }
      return;
    }
    // Progress within `computing`: at most one notification per interval per lvol.
    const nowMs = this.runtime.nowMs();
    if (nowMs - (this.lastProgressMs.get(lvolId) ?? 0) < progressNotifyIntervalMs) return;
    this.lastProgressMs.set(lvolId, nowMs);
    this.emit({ type: 'checksum_progress', uuid: lvolId, ...status });
  };

  /**
   * A verify (or a copy) found bad clusters, or a re-registration other values than those stored
   * (SPEC §6.10). A copy's finding tells the whole record it was merged into, as a verify's does.
   */
  private emitMismatch(lvolId: string, { source, verification }: ChecksumMismatch): void {
    const conflict = verification.registrationConflict;
    const fromVerification = source !== 'registration';
    const found = fromVerification ? verification.badClusters : (conflict?.clusters ?? []);
    this.emit({
      type: 'checksum_mismatch',
      uuid: lvolId,
      source,
      result: verification.result,
      bad_cluster_count: fromVerification ? verification.badClusterCount : (conflict?.clusterCount ?? 0),
      bad_clusters: found.map((bad) => ({ cluster_index: bad.clusterIndex, offset_bytes: bad.offsetBytes, expected: bad.expected, actual: bad.actual })),
      whole: fromVerification ? verification.whole : (conflict?.whole ?? null),
    });
  }

  forget(lvolId: string): void {
    this.lastProgressMs.delete(lvolId);
  }

  async register(name: string, mode: ChecksumMode, resume: boolean): Promise<true> {
    const { lvol } = this.registry.lvol(name);
    // Start under the lvol's lock (so it waits out a priority operation on it), but run the walk
    // outside it: a priority operation must be able to take the lock and preempt.
    const started = await this.router.locks.run([lvol.id], async () => {
      const { actor } = this.registry.lvol(lvol.id);
      const completion = actor.register(mode, resume);
      // Its rejection is handled by the caller below; mark it so Node does not report it early.
      completion.catch(() => undefined);
      return { completion };
    });
    return started.completion;
  }

  /** Verifies a snapshot against its stored checksums (SPEC §6.10), started as a registration is. */
  async verify(name: string, errorsOnly: boolean, resume: boolean): Promise<VerificationRecord> {
    const { lvol } = this.registry.lvol(name);
    const started = await this.router.locks.run([lvol.id], async () => {
      const { actor } = this.registry.lvol(lvol.id);
      const completion = actor.verify(errorsOnly, resume);
      completion.catch(() => undefined);
      return { completion };
    });
    return started.completion;
  }

  /** The durable verification record of a snapshot. */
  verification(name: string): VerificationRecord {
    const { lvol } = this.registry.durableLvol(name);
    return lvol.verification ?? fail('ENOENT', `${lvol.name} was never verified`);
  }

  stop(name: string): Promise<true> {
    return this.registry.lvol(name).actor.stop();
  }

  /** What durable metadata holds (a value whose append is in flight is not answered yet). */
  get(name: string): bigint {
    const { lvol, actor } = this.registry.durableLvol(name);
    if (lvol.checksum !== null) return lvol.checksum;
    const status = actor.status();
    if (status.state === 'aborted') {
      throw new StorageError('ECANCELED', {
        detail: 'the last checksum computation was aborted and no earlier value exists',
        data: { state: 'aborted', reason: status.reason, clusters_done: status.clusters_done, clusters_total: status.clusters_total },
      });
    }
    return fail('ENODEV', `no checksum registered for ${lvol.name}`);
  }

  getRange(name: string, start: number, count: number): Array<{ cluster_index: number; checksum: bigint }> {
    const { lvol } = this.registry.durableLvol(name);
    const range = lvol.rangeChecksums ?? fail('ENOENT', `no range checksums registered for ${lvol.name}`);
    if (start >= range.length || start + count > range.length) {
      fail('EINVAL', `clusters ${start}..${start + count - 1} are outside 0..${range.length - 1}`);
    }
    const out: Array<{ cluster_index: number; checksum: bigint }> = [];
    for (let offset = 0; offset < count; offset++) out.push({ cluster_index: start + offset, checksum: range.get(start + offset) });
    return out;
  }

  status(name: string): ChecksumStatus {
    return this.registry.lvol(name).actor.status();
  }

  /**
   * Checksum walks by state and their combined rate, for node_get_stats (which the dashboard asks
   * every 2 s): in slices, reading each lvol's state without building its status (only a
   * computing walk has a rate) and without starting an actor still waiting for its slice.
   */
  async stats(): Promise<{ by_state: Record<string, number>; rate_bytes_per_sec: number }> {
    const byState: Record<string, number> = {};
    let rate = 0;
    await this.registry.forEachLvolInSlices(({ actor }) => {
      const state = actor.checksumState;
      byState[state] = (byState[state] ?? 0) + 1;
      if (state === 'computing') rate += actor.status().rate_bytes_per_sec;
    });
    return { by_state: byState, rate_bytes_per_sec: rate };
  }

}
