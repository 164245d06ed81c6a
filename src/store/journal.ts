// The durable MetadataLog: changes are appended to an on-device journal and flushed before they
// are acknowledged; when the journal fills, the whole lvstore is checkpointed and the journal restarts.
//
// Ordering is explicit. An append writes one record at the journal's tail, then flushes; only then
// do its callers resume. A checkpoint writes the state into the slot the current super block does
// not use, flushes, then writes the other super block slot (generation + 1) and flushes: until that
// last write lands, the old super block, checkpoint and journal are all intact. Appends that arrive
// while a write is in flight are grouped into the next record (group commit).
import assert from 'node:assert/strict';
import { crc64 } from '../checksum/crc64.ts';
import { type BlockDevice, writeDurable, zeroChunk, zeroChunkBytes } from '../device/blockDevice.ts';
import { StorageError, fromDeviceError } from '../errors.ts';
import { log } from '../log.ts';
import {
  type MetadataLayout,
  type SuperBlock,
  RecordCapture,
  encodeCheckpoint,
  encodeRecord,
  encodeSuperBlock,
  storeTagOf,
} from './format.ts';
import { type LvstoreRecord, type MetadataChange, type MetadataLog, type MetadataLogStats, isFreeingChange } from './metadata.ts';

/**
 * The part of the checkpoint slot only freeing changes (deletes) may fill: growth is refused
 * before the state reaches it, so a delete always fits, even when the size estimate was low.
 */
export const checkpointReserveFraction = 1 / 8;

/** The state does not fit the checkpoint slot: refused before anything was written. */
class MetadataFullError extends Error {
  constructor(
    readonly imageBytes: number,
    readonly slotBytes: number,
  ) {
    super(`lvstore metadata (${imageBytes} bytes) exceeds its ${slotBytes}-byte checkpoint slot`);
  }

  toStorageError(): StorageError {
    return new StorageError('ENOSPC', { detail: `${this.message}; delete lvols or snapshots to make room` });
  }
}

/** Growth refused while the metadata is full, without encoding the state again for each request. */
class StillFullError extends MetadataFullError {
  override toStorageError(): StorageError {
    return new StorageError('ENOSPC', {
      detail: `lvstore metadata is full (the last checkpoint attempt needed ${this.imageBytes} of ${this.slotBytes} usable bytes); delete lvols or snapshots to make room`,
    });
  }
}

/** Writes zeros over [0, bytes): the file system allocates the blocks now, not at the first append. */
async function preallocate(device: BlockDevice, bytes: number): Promise<void> {
  for (let offset = 0; offset < bytes; offset += zeroChunkBytes) {
    await device.write(offset, zeroChunk.subarray(0, Math.min(zeroChunkBytes, bytes - offset)));
  }
  await device.flush();
}

interface Waiter {
  changes: readonly MetadataChange[];
  /** forceCheckpoint: write a checkpoint rather than a record. */
  checkpoint?: boolean;
  resolve: () => void;
  reject: (error: Error) => void;
}

export interface JournalPosition {
  superBlock: SuperBlock;
  /** Which super block slot holds `superBlock`. */
  superSlot: 0 | 1;
  /** Sequence number of the last change on the device (checkpoint or journal). */
  lastSeq: bigint;
  /** Bytes of the journal in use. */
  tailBytes: number;
}

export class JournalMetadataLog implements MetadataLog {
  private pending: Waiter[] = [];
  private writing = false;
  private failed: Error | undefined;
  private closed = false;
  private idle: Promise<void> = Promise.resolve();
  private markIdle: () => void = () => {};
  private readonly counters: MetadataLogStats = { bytesWritten: 0, recordsWritten: 0, checkpoints: 0, flushes: 0 };
  /** Size of the image in the current checkpoint slot (0: unknown, e.g. just loaded). */
  private lastCheckpointBytes = 0;
  /** Set when growth was refused for want of room; cleared by the next checkpoint that lands. */
  private full: MetadataFullError | undefined;

  constructor(
    private readonly device: BlockDevice,
    private readonly layout: MetadataLayout,
    private readonly record: () => LvstoreRecord,
    private position: JournalPosition,
  ) {
    this.storeTag = storeTagOf(position.superBlock.lvstoreId);
  }

  /** The lvstore's tag in every record header (the lvstore id never changes). */
  private readonly storeTag: number;

  /**
   * Formats a new lvstore: the first checkpoint into slot 0, then super block generation 1.
   * Any journal bytes left from an earlier lvstore are harmless: their sequence numbers do not follow.
   */
  static async format(device: BlockDevice, layout: MetadataLayout, record: LvstoreRecord): Promise<JournalMetadataLog> {
    // On a file, the metadata area is written out for real first: as a hole in a sparse file, a
    // full file system would answer a later journal append with ENOSPC, and the lvstore could
    // no longer even record the delete that frees space.
    if (device.fd !== undefined) await preallocate(device, layout.journalOffset + layout.journalBytes);
    const log = new JournalMetadataLog(device, layout, () => record, {
      superBlock: {
        generation: 0n,
        lvstoreId: record.id,
        clusterBytes: record.clusterBytes,
        blockBytes: record.blockBytes,
        firstDataCluster: record.firstDataCluster,
        clusterTotal: record.clusterTotal,
        checkpointSlot: 1,
        checkpointLength: 0,
        checkpointCrc: 0n,
        checkpointSeq: 0n,
      },
      superSlot: 1,
      lastSeq: 0n,
      tailBytes: 0,
    });
    await log.checkpoint(1n);
    return log;
  }

  append(changes: readonly MetadataChange[]): Promise<void> {
    // A failed log refuses changes, except freeing ones: they try to bring it back (recover).
    if (this.failed && !changes.every(isFreeingChange)) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new StorageError('EIO', { wire: 'internal', detail: 'lvstore metadata is closed' }));
    return new Promise((resolve, reject) => {
      this.pending.push({ changes, resolve, reject });
      if (!this.writing) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.writing = true;
    this.idle = new Promise((resolve) => (this.markIdle = resolve));
    try {
      while (this.pending.length > 0) {
        const batch = this.pending;
        this.pending = [];
        try {
          if (this.failed) await this.recover(batch);
          else await this.writeBatch(batch);
          for (const waiter of batch) waiter.resolve();
        } catch (error) {
          // Everything not yet durable fails together (the lvstore undoes it, newest first): a
          // later change may depend on one of these.
          const rejected = [...batch, ...this.pending.splice(0)];
          if (error instanceof MetadataFullError) {
            // Nothing was written: the device still holds the previous state and the log goes on.
            // Deleting makes room again.
            for (const waiter of rejected) waiter.reject(error.toStorageError());
            continue;
          }
          // The device failed under the journal: what it holds is uncertain, so nothing later may
          // be acknowledged either. The lvstore refuses changes until a delete rewrites the whole
          // state (recover) or it is loaded again.
          const first = !this.failed;
          this.failed = fromDeviceError(
            error,
            'metadata write failed; the lvstore refuses changes until a delete succeeds in rewriting its metadata or the node restarts',
          );
          if (first) {
            log('error', 'lvstore metadata write failed: the lvstore refuses changes until a delete rewrites its metadata or the node restarts', {
              lvstore: this.position.superBlock.lvstoreId,
              error: String(error),
            });
          }
          for (const waiter of rejected) waiter.reject(this.failed);
        }
      }
    } finally {
      this.writing = false;
      this.markIdle();
    }
  }

  /** Bytes of the checkpoint slot growth may use; the rest is kept for freeing changes. */
  private get growthCapacityBytes(): number {
    return Math.floor(this.layout.checkpointBytes * (1 - checkpointReserveFraction));
  }

  private async writeBatch(batch: Waiter[]): Promise<void> {
    const changes = batch.flatMap((waiter) => waiter.changes);
    const freeing = changes.every(isFreeingChange);
    const seq = this.position.lastSeq + 1n;
    const bytes = encodeRecord(seq, this.storeTag, changes, this.device.blockSizeBytes);
    // What the next checkpoint could need: the last one plus what was journaled since (a change
    // grows the state by about its record's size, usually much less). Past the growth capacity,
    // the state is measured by checkpointing now, so it never outgrows its slot unnoticed.
    const estimate = this.lastCheckpointBytes + this.position.tailBytes + bytes.length;
    const forced = batch.some((waiter) => waiter.checkpoint);
    if (forced || this.position.tailBytes + bytes.length > this.layout.journalBytes || estimate > this.growthCapacityBytes) {
      if (this.full && !freeing) throw new StillFullError(this.full.imageBytes, this.full.slotBytes);
      // The checkpoint holds these changes too (they are already applied in memory).
      await this.checkpoint(seq, freeing ? this.layout.checkpointBytes : this.growthCapacityBytes);
      return;
    }
    await writeDurable(this.device, this.layout.journalOffset + this.position.tailBytes, bytes);
    this.counters.bytesWritten += bytes.length;
    this.counters.recordsWritten++;
    this.counters.flushes++;
    this.position = { ...this.position, lastSeq: seq, tailBytes: this.position.tailBytes + bytes.length };
  }

  /**
   * After a device failure, a freeing batch (already applied in memory, like every batch) is
   * made durable by writing the whole state as a new checkpoint: it replaces whatever the failed
   * write left. Its sequence number skips the failed record's, so a record that did land is
   * never replayed on top of it. If this write fails too, the log stays failed.
   */
  private async recover(batch: Waiter[]): Promise<void> {
    assert.ok(batch.every((waiter) => waiter.changes.every(isFreeingChange)));
    await this.checkpoint(this.position.lastSeq + 2n, this.layout.checkpointBytes);
    this.failed = undefined;
    log('info', 'lvstore metadata written again after a failure: the lvstore accepts changes', { lvstore: this.position.superBlock.lvstoreId });
  }

  /** The state a checkpoint is being encoded from, while it is (changes copy what they modify). */
  private capture: RecordCapture | undefined;

  beforeChange(change: MetadataChange): void {
    this.capture?.beforeChange(change);
  }

  /** Checkpoints the current state now (benchmarks and tests measure what a full journal does). */
  forceCheckpoint(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    // Queued like an append with no changes, so it is ordered with them.
    return new Promise((resolve, reject) => {
      this.pending.push({ changes: [], resolve, reject, checkpoint: true });
      if (!this.writing) void this.drain();
    });
  }

  /**
   * Writes the whole state as of `seq` to the unused slot, then switches the super block to it.
   * The state is snapshotted synchronously (nothing applied later gets in), then encoded with
   * turns for the event loop; an image larger than `limitBytes` is refused before any write.
   */
  private async checkpoint(seq: bigint, limitBytes = this.layout.checkpointBytes): Promise<void> {
    // Captured now, synchronously: what is applied from here on is not in it (see beforeChange).
    const capture = new RecordCapture(this.record());
    this.capture = capture;
    let image: Buffer;
    try {
      image = await encodeCheckpoint(capture, seq, this.device.blockSizeBytes);
    } finally {
      this.capture = undefined;
    }
    if (image.length > limitBytes) {
      this.full = new MetadataFullError(image.length, limitBytes);
      throw this.full;
    }
    const slot: 0 | 1 = this.position.superBlock.checkpointSlot === 0 ? 1 : 0;
    await writeDurable(this.device, this.layout.checkpointOffsets[slot], image);
    const superBlock: SuperBlock = {
      ...this.position.superBlock,
      generation: this.position.superBlock.generation + 1n,
      checkpointSlot: slot,
      checkpointLength: image.length,
      // The checkpoint's header CRC: it covers the payload's CRC, so a stale image in the slot fails it.
      checkpointCrc: crc64(image.subarray(0, 32)),
      checkpointSeq: seq,
    };
    const superSlot: 0 | 1 = this.position.superSlot === 0 ? 1 : 0;
    await writeDurable(this.device, this.layout.superOffsets[superSlot], encodeSuperBlock(superBlock, this.layout.slotBytes));
    this.counters.bytesWritten += image.length + this.layout.slotBytes;
    this.counters.checkpoints++;
    this.counters.flushes += 2;
    this.position = { superBlock, superSlot, lastSeq: seq, tailBytes: 0 };
    this.lastCheckpointBytes = image.length;
    this.full = undefined;
  }

  /** Waits for every acknowledged-or-pending append to be on the device. */
  async settle(): Promise<void> {
    while (this.writing) await this.idle;
  }

  async close(): Promise<void> {
    await this.settle();
    this.closed = true;
  }

  /**
   * Erases both super blocks so the device no longer holds an lvstore (bdev_lvol_delete_lvstore).
   * The older one goes first, flushed, then the current one: a crash or a failure in between
   * leaves the current super block, so the lvstore as it last was. (Both at once could leave only
   * the current one blank on the device, and a load would take the older generation: a state
   * that was not the latest.) If the older one cannot be written, nothing that matters changed
   * and the log takes changes again; if the current one cannot, what it holds is uncertain and
   * the log is failed, as after a journal write error (a delete rewrites it, or a restart).
   */
  async erase(): Promise<void> {
    await this.settle();
    this.closed = true;
    const blank = Buffer.alloc(this.layout.slotBytes);
    const current = this.position.superSlot;
    try {
      await writeDurable(this.device, this.layout.superOffsets[current === 0 ? 1 : 0], blank);
    } catch (error) {
      this.closed = false;
      throw fromDeviceError(error, 'erasing the lvstore metadata failed; the lvstore is unchanged');
    }
    try {
      await writeDurable(this.device, this.layout.superOffsets[current], blank);
    } catch (error) {
      this.closed = false;
      this.failed = fromDeviceError(
        error,
        'erasing the lvstore metadata failed half way; the lvstore refuses changes until a delete succeeds in rewriting its metadata or the node restarts',
      );
      throw this.failed;
    }
  }

  stats(): MetadataLogStats {
    return { ...this.counters, lastCheckpointBytes: this.lastCheckpointBytes, checkpointSlotBytes: this.layout.checkpointBytes };
  }

  failure(): string | null {
    return this.failed?.message ?? null;
  }

  get lastSeq(): bigint {
    assert.ok(this.position.lastSeq >= 0n);
    return this.position.lastSeq;
  }
}
