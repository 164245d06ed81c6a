// The block-device interface every bdev implements: byte-addressed, block-aligned I/O on real storage.
import assert from 'node:assert/strict';

export interface BlockDevice {
  readonly kind: 'memory' | 'file' | 'simulated' | 'lvol';
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  /** Fills `target` with the bytes at `offsetBytes`. Resolves after real I/O (a macrotask). */
  readInto(target: Buffer, offsetBytes: number): Promise<void>;
  /**
   * `readInto` done before it returns, where the device can answer at once (a file in memory, RAM):
   * true once `target` is filled; false when it cannot (too large, or this device never can) and
   * `readInto` must be used — `target` may then hold part of the data, which `readInto` overwrites.
   * Throws what `readInto` would reject with. Foreground reads only; devices that always wait leave it out.
   */
  readIntoNow?(target: Buffer, offsetBytes: number): boolean;
  write(offsetBytes: number, data: Uint8Array): Promise<void>;
  /** Afterwards the range reads as zeros (SPDK's unmap / write_zeroes). */
  discard(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /**
   * `write` then `flush` as one request, where the device can do it cheaper (a file: one trip to
   * a pool thread instead of two). Callers use `writeDurable()` below, which falls back to the pair.
   */
  writeDurable?(offsetBytes: number, data: Uint8Array): Promise<void>;
  /** Re-reads the size of what backs the device (a file that grew); devices of fixed size leave it out. */
  refreshSize?(): Promise<number>;
  close(): Promise<void>;
  /**
   * The OS file descriptor, when the device is a file (its presence says "a file"). Work that
   * outlives the current call borrows it through `withFd` instead: after close the number may
   * belong to another file.
   */
  readonly fd?: number | undefined;
  /**
   * Runs `work` with the descriptor held open: close() waits until `work`'s promise settles, and
   * once close() began `work` is refused (a StorageError with code 'EBADF') without being called.
   * The native checksum reader preads through it on its own threads. Files only.
   */
  withFd?<T>(work: (fd: number) => Promise<T>): Promise<T>;
  /** For files: `device:inode`, the same whatever path opened it (one file, one bdev). */
  readonly fileId?: string | undefined;
  /**
   * Runs background work (a checksum read) behind the device's foreground I/O (SPEC §6.6).
   * Devices without a queue (test doubles) leave it out and background work runs directly.
   */
  runBackground?<T>(work: () => Promise<T>, signal?: AbortSignal): Promise<T>;
  /** `readInto` in the background class. */
  readIntoBackground?(target: Buffer, offsetBytes: number, signal?: AbortSignal): Promise<void>;
}

/** Reads into a fresh buffer; callers that read often should reuse a buffer with `readInto`. */
export async function readBytes(device: BlockDevice, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const target = Buffer.allocUnsafe(lengthBytes);
  await device.readInto(target, offsetBytes);
  return target;
}

/** Writes `data` at `offsetBytes` and makes it, and every write completed before, durable. */
export function writeDurable(device: BlockDevice, offsetBytes: number, data: Uint8Array): Promise<void> {
  if (device.writeDurable) return device.writeDurable(offsetBytes, data);
  return device.write(offsetBytes, data).then(() => device.flush());
}

/** Asserts a request lies inside the device and on block boundaries: callers validate first. */
export function assertAlignedRange(device: BlockDevice, offsetBytes: number, lengthBytes: number): void {
  assert.ok(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
  assert.ok(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, `bad length ${lengthBytes}`);
  assert.ok(offsetBytes + lengthBytes <= device.sizeBytes, `I/O past the end: ${offsetBytes}+${lengthBytes}`);
  assert.equal(offsetBytes % device.blockSizeBytes, 0, 'offset is not block aligned');
  assert.equal(lengthBytes % device.blockSizeBytes, 0, 'length is not block aligned');
}

// A shared buffer of zeros for writing zeros in chunks without allocating each time.
export const zeroChunkBytes = 1024 * 1024;
export const zeroChunk: Buffer = Buffer.alloc(zeroChunkBytes);
