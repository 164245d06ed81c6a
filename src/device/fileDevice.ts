// A device on a regular file (SPDK's aio bdev).
//
// Reads and writes go through fileIo() (src/device/fileIo.ts): io_uring batched per event-loop
// turn where the kernel allows it, else the callback form of fs.read/fs.write on libuv's thread
// pool (not FileHandle: a FileHandle call allocates a promise request with its stat arrays and a
// result object each time). What FileHandle gave for free is kept here: close waits for the reads
// and writes in flight, so none can land on a descriptor number reused by another file, and I/O
// after close is refused. Work outside this class that uses the descriptor (the native checksum
// reader's pread on its own threads) borrows it through withFd() and is waited for the same way.
import { constants as fsConstants, write as fsWrite } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { type BlockDevice, assertAlignedRange, zeroChunk, zeroChunkBytes } from './blockDevice.ts';
import { type FileIo, type FileIoMode, fileIoForFile } from './fileIo.ts';
import { lockExclusive } from './fileLock.ts';
import { addon } from '../addon.ts';
import { StorageError } from '../errors.ts';

type WriteDurableCall = (fd: number, data: Uint8Array, position: number, done: (error: NodeJS.ErrnoException | null) => void) => void;
/** pwrite + fdatasync in one thread-pool job (native/durable_write.cc); null without the addon. */
const nativeWriteDurable: WriteDurableCall | null =
  typeof addon?.writeDurable === 'function' ? (addon.writeDurable as WriteDurableCall) : null;

function writeAt(fd: number, data: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fsWrite(fd, data, at, length, position, (error, bytesWritten) => (error ? reject(error) : resolve(bytesWritten)));
  });
}

/**
 * The checks of assertAlignedRange as one expression: node:assert's calls cost a visible share of
 * a 4 KiB request, so they run only to explain a range that fails this.
 */
function inAlignedRange(device: BlockDevice, offsetBytes: number, lengthBytes: number): boolean {
  const block = device.blockSizeBytes;
  return (
    Number.isSafeInteger(offsetBytes) &&
    Number.isSafeInteger(lengthBytes) &&
    offsetBytes >= 0 &&
    lengthBytes >= 0 &&
    offsetBytes + lengthBytes <= device.sizeBytes &&
    offsetBytes % block === 0 &&
    lengthBytes % block === 0
  );
}

/** A write that moved nothing and reported no error: failed rather than retried for ever. */
function noProgressError(): NodeJS.ErrnoException {
  return Object.assign(new Error('EIO: write made no progress, write'), { code: 'EIO', errno: -5, syscall: 'write' });
}

/** How a range was zeroed without writing it (native/zero_range.cc). */
export type ZeroRangeMethod = 'punch-hole' | 'zero-range' | 'blkzeroout';
export type ZeroRangeCall = (
  fd: number,
  offsetBytes: number,
  lengthBytes: number,
  done: (error: NodeJS.ErrnoException | null, method: ZeroRangeMethod | null) => void,
  keepAllocated?: boolean,
) => void;
/**
 * fallocate(PUNCH_HOLE), else fallocate(ZERO_RANGE), or ioctl(BLKZEROOUT) on a block device, in one
 * thread-pool job; null without the addon. `keepAllocated` asks a file for ZERO_RANGE only (its
 * blocks stay reserved). Exported for tests and benchmarks.
 */
export const nativeZeroRange: ZeroRangeCall | null = typeof addon?.zeroRange === 'function' ? (addon.zeroRange as ZeroRangeCall) : null;

/** zeroRange's answers that mean "not here" (file system, kernel or device): write zeros instead. */
const zeroRangeUnsupported: ReadonlySet<string | undefined> = new Set(['ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'ENOTTY', 'EINVAL']);
/** Of those, the ones that will not change for this file: stop asking. EINVAL may be this range's alignment only. */
const zeroRangeNeverHere: ReadonlySet<string | undefined> = new Set(['ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'ENOTTY']);

/**
 * How a FileDevice clears a range now: 'native' asks zeroRange to free or unmap it (no data
 * written); 'writes' writes zeros, as without the addon.
 */
export type ZeroingMode = 'native' | 'writes';

/** The addon's zeroRange, or null (write zeros) without it or when env LVNODE_ZEROING=writes forces the fallback. */
function defaultZeroRange(): ZeroRangeCall | null {
  return process.env.LVNODE_ZEROING === 'writes' ? null : nativeZeroRange;
}

function zeroRangeAt(call: ZeroRangeCall, fd: number, offsetBytes: number, lengthBytes: number): Promise<ZeroRangeMethod> {
  return new Promise((resolve, reject) => {
    call(fd, offsetBytes, lengthBytes, (error, method) => (error ? reject(error) : resolve(method!)));
  });
}

/**
 * I/O on a device whose close() has begun: refused before it touches the descriptor, whose number
 * may already belong to another file. A StorageError (EIO on the wire, like any device failure)
 * that also carries Node's `code: 'EBADF'` for callers that test fs errors.
 */
export class DeviceClosedError extends StorageError {
  readonly code = 'EBADF';

  constructor(readonly path: string) {
    super('EIO', { wire: 'internal', detail: `EBADF: file device ${path} is closed` });
    this.name = 'DeviceClosedError';
  }
}

export class FileDevice implements BlockDevice {
  readonly kind: BlockDevice['kind'] = 'file';
  private readonly fdNumber: number;
  /** Reads, writes, discards, flushes and withFd() borrows not yet finished; close waits for them. */
  private ioInFlight = 0;
  private closing = false;
  private idle: (() => void) | undefined;
  private closed: Promise<void> | undefined;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private size: number,
    readonly blockSizeBytes: number,
    readonly readOnly: boolean,
    /** The opened file's identity, `device:inode`: the same file by any path (link, symlink) has one. */
    readonly fileId: string,
    /** Whether this node holds the file's exclusive lock (false only without the native addon). */
    readonly locked: boolean,
    /** A block special file (a disk, a partition, a loop device) rather than a regular file. */
    readonly isBlockDevice: boolean,
    /** What discard() clears ranges with; null (write zeros) for good once the file system refuses. */
    private zeroRange: ZeroRangeCall | null,
    /** How reads and writes reach the file: fileIoForFile's choice unless a test injects one. */
    private readonly io: FileIo,
    /** Which way that is (`injected`: a test's stand-in). */
    readonly ioMode: FileIoMode | 'injected',
  ) {
    this.fdNumber = handle.fd;
  }

  /**
   * Opens an existing regular file or block device. Its size is rounded down to whole blocks; a
   * missing file or a directory is refused with a Node error the caller turns into a clear message.
   * `zeroRange` is what discard() clears with: the addon's by default (see defaultZeroRange), null
   * to write zeros, or a stand-in (tests inject one that refuses, as a file system without
   * fallocate modes does). `io` is how reads and writes reach the file: fileIoForFile() (inline for
   * a file in memory, else io_uring or the thread pool) unless a test injects a stand-in that fails or delays.
   */
  static async open(
    path: string,
    blockSizeBytes: number,
    options: { readOnly?: boolean; zeroRange?: ZeroRangeCall | null; io?: FileIo } = {},
  ): Promise<FileDevice> {
    const info = await stat(path);
    if (!info.isFile() && !info.isBlockDevice()) throw new Error(`${path} is not a regular file or block device`);
    const flags = options.readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
    const handle = await open(path, flags);
    try {
      // Identity and size of what was opened, not of what the path named a moment before.
      const opened = await handle.stat({ bigint: true });
      const locked = lockExclusive(handle.fd, path, opened.ino);
      const sizeBytes = Math.floor(Number(opened.size) / blockSizeBytes) * blockSizeBytes;
      const zeroRange = options.zeroRange === undefined ? defaultZeroRange() : options.zeroRange;
      const identity = `${opened.dev}:${opened.ino}`;
      const { io, mode } = options.io ? { io: options.io, mode: 'injected' as const } : await fileIoForFile(handle.fd, opened.isFile());
      return new FileDevice(path, handle, sizeBytes, blockSizeBytes, options.readOnly ?? false, identity, locked, opened.isBlockDevice(), zeroRange, io, mode);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /** Creates (or extends) a sparse file of `sizeBytes`: it takes no disk space until written. */
  static async createSparse(path: string, sizeBytes: number): Promise<void> {
    const handle = await open(path, 'a');
    try {
      const info = await handle.stat();
      if (info.size < sizeBytes) await handle.truncate(sizeBytes);
    } finally {
      await handle.close();
    }
  }

  /**
   * The descriptor number, for checks such as "is this a file". Work that outlives the current
   * call must borrow it through withFd(): once close() ran, the number may name another file.
   */
  get fd(): number {
    return this.handle.fd;
  }

  /** How discard() clears ranges now. */
  get zeroing(): ZeroingMode {
    return this.zeroRange ? 'native' : 'writes';
  }

  /**
   * Runs `work` with the descriptor, counted as I/O in flight: close() waits until the promise
   * `work` returns settles, so nothing `work` started (a pread on a native thread) can outlive the
   * descriptor or read a file that later got its number. Once close() began, `work` is not called
   * and DeviceClosedError is thrown. `work` must settle only when it no longer uses the descriptor.
   */
  async withFd<T>(work: (fd: number) => Promise<T>): Promise<T> {
    this.enter();
    try {
      return await work(this.fdNumber);
    } finally {
      this.leave();
    }
  }

  get sizeBytes(): number {
    return this.size;
  }

  /** The file's size now, in whole blocks (it may have been extended since it was opened). Never shrinks. */
  async refreshSize(): Promise<number> {
    const info = await this.handle.stat();
    this.size = Math.max(this.size, Math.floor(info.size / this.blockSizeBytes) * this.blockSizeBytes);
    return this.size;
  }

  // Not async, and the whole request in one promise: at 4 KiB the promise and await machinery of
  // a request is a visible share of its cost.
  readInto(target: Buffer, offsetBytes: number): Promise<void> {
    try {
      if (!inAlignedRange(this, offsetBytes, target.length)) assertAlignedRange(this, offsetBytes, target.length);
      this.enter();
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<void>((resolve, reject) => this.readStep(this.io, target, offsetBytes, 0, resolve, reject));
  }

  /**
   * readInto at once, when the file's path reads such a request inline (a file in memory): no
   * promise, no callback; the caller's answer goes out in the same turn. No I/O stays in flight,
   * so close() has nothing to wait for; once it began, the read is refused as readInto's would be.
   */
  readIntoNow(target: Buffer, offsetBytes: number): boolean {
    const readNow = this.io.readNow;
    if (readNow === undefined) return false;
    if (!inAlignedRange(this, offsetBytes, target.length)) assertAlignedRange(this, offsetBytes, target.length);
    if (this.closing) throw new DeviceClosedError(this.path);
    for (let done = 0; done < target.length; ) {
      const bytesRead = readNow(this.fdNumber, target, done, target.length - done, offsetBytes + done);
      if (bytesRead === undefined) return false;
      if (bytesRead === 0) {
        // The file shrank under us: what is past its end reads as zeros rather than garbage.
        target.fill(0, done);
        break;
      }
      done += bytesRead;
    }
    return true;
  }

  /** Reads `target` from byte `done` on, until it is full (a short read asks again for the rest). */
  private readStep(io: FileIo, target: Buffer, offsetBytes: number, done: number, resolve: () => void, reject: (error: unknown) => void): void {
    io.read(this.fdNumber, target, done, target.length - done, offsetBytes + done, (error, bytesRead) => {
      if (error) {
        this.leave();
        return reject(error);
      }
      if (bytesRead === 0) {
        // The file shrank under us: what is past its end reads as zeros rather than garbage.
        target.fill(0, done);
      } else if (done + bytesRead < target.length) {
        return this.readStep(io, target, offsetBytes, done + bytesRead, resolve, reject);
      }
      this.leave();
      resolve();
    });
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    try {
      if (!inAlignedRange(this, offsetBytes, data.length)) assertAlignedRange(this, offsetBytes, data.length);
      this.enter();
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<void>((resolve, reject) => this.writeStep(this.io, data, offsetBytes, 0, resolve, reject));
  }

  /** Writes `data` from byte `done` on, until all of it is written. */
  private writeStep(io: FileIo, data: Uint8Array, offsetBytes: number, done: number, resolve: () => void, reject: (error: unknown) => void): void {
    io.write(this.fdNumber, data, done, data.length - done, offsetBytes + done, (error, bytesWritten) => {
      if (error || bytesWritten === 0) {
        this.leave();
        return reject(error ?? noProgressError());
      }
      if (done + bytesWritten < data.length) return this.writeStep(io, data, offsetBytes, done + bytesWritten, resolve, reject);
      this.leave();
      resolve();
    });
  }

  /** Writes all of `data`; the caller checked the range and counts the I/O in flight. */
  private async writeAll(offsetBytes: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      done += await writeAt(this.fdNumber, data, done, data.length - done, offsetBytes + done);
    }
  }

  /** `write` then `flush`; with the native addon both in one trip to a pool thread. */
  async writeDurable(offsetBytes: number, data: Uint8Array): Promise<void> {
    if (!nativeWriteDurable) {
      await this.write(offsetBytes, data);
      await this.flush();
      return;
    }
    assertAlignedRange(this, offsetBytes, data.length);
    this.enter();
    try {
      await new Promise<void>((resolve, reject) => nativeWriteDurable(this.fdNumber, data, offsetBytes, (error) => (error ? reject(error) : resolve())));
    } finally {
      this.leave();
    }
  }

  private enter(): void {
    if (this.closing) throw new DeviceClosedError(this.path);
    this.ioInFlight++;
  }

  private leave(): void {
    if (--this.ioInFlight === 0) this.idle?.();
  }

  /**
   * Makes the range read as zeros. With the addon the file system frees or unmaps it (a hole
   * punch: no data written, its blocks given back) or the block device zeroes it; where that is
   * refused, zeros are written in 1 MiB chunks.
   *
   * Durability, whichever way it was done: like a write, a discard is durable only once flush()
   * (fdatasync of this file) returned after it, and flush() does make it durable; writeDurable()
   * (pwrite + fdatasync) of anything in the same file covers it too. A hole punch or zero-range
   * changes which blocks back the range, metadata fdatasync must commit (ext4 ties it to the
   * inode's datasync transaction, XFS logs it as a non-timestamp change); BLKZEROOUT completes on
   * the device and the flush empties its cache. native/zero_range.cc has the details. So "discard a
   * cluster, then commit the journal record that hands it to a new owner" never shows the
   * cluster's old bytes after a crash that follows the commit; before the commit, old bytes or zeros.
   */
  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    assertAlignedRange(this, offsetBytes, lengthBytes);
    if (lengthBytes === 0) return;
    // One I/O in flight for the whole discard: a close that begins mid-way waits for all of it
    // rather than refusing its remaining zero chunks.
    this.enter();
    try {
      if (this.zeroRange && (await this.zeroNatively(this.zeroRange, offsetBytes, lengthBytes))) return;
      if (offsetBytes === 0 && lengthBytes === this.sizeBytes && !this.isBlockDevice) {
        // Without hole punching, truncating to zero and back frees every block. A crash between
        // the two leaves an empty file: only the fallback (no addon, or a file system without
        // fallocate modes) takes this path.
        await this.handle.truncate(0);
        await this.handle.truncate(this.sizeBytes);
        return;
      }
      for (let offset = offsetBytes; offset < offsetBytes + lengthBytes; offset += zeroChunkBytes) {
        await this.writeAll(offset, zeroChunk.subarray(0, Math.min(zeroChunkBytes, offsetBytes + lengthBytes - offset)));
      }
    } finally {
      this.leave();
    }
  }

  /** True when `call` zeroed the range; false when this file or range needs zeros written. */
  private async zeroNatively(call: ZeroRangeCall, offsetBytes: number, lengthBytes: number): Promise<boolean> {
    try {
      await zeroRangeAt(call, this.fdNumber, offsetBytes, lengthBytes);
      return true;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (!zeroRangeUnsupported.has(code)) throw error;
      if (zeroRangeNeverHere.has(code)) this.zeroRange = null;
      return false;
    }
  }

  async flush(): Promise<void> {
    this.enter();
    try {
      await this.handle.datasync();
    } finally {
      this.leave();
    }
  }

  /**
   * Refuses new I/O, waits for every read, write, discard, flush and withFd() work in flight, then
   * closes the descriptor. Calling it again returns the same promise.
   */
  close(): Promise<void> {
    this.closed ??= this.closeOnce();
    return this.closed;
  }

  private async closeOnce(): Promise<void> {
    this.closing = true;
    if (this.ioInFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    await this.handle.close();
  }
}
