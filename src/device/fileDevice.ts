// A device on a regular file through Node's file I/O (SPDK's aio bdev).
//
// Reads and writes use the callback form of fs.read/fs.write on the descriptor, not FileHandle:
// a FileHandle call allocates a promise request with its stat arrays and a result object each
// time, measurably more CPU per 4 KiB request. What FileHandle gave for free is kept here: close
// waits for the reads and writes in flight, so none can land on a descriptor number reused by
// another file, and I/O after close is refused.
import { constants as fsConstants, read as fsRead, write as fsWrite } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { type BlockDevice, assertAlignedRange, zeroChunk, zeroChunkBytes } from './blockDevice.ts';
import { lockExclusive } from './fileLock.ts';
import { addon } from '../addon.ts';

type WriteDurableCall = (fd: number, data: Uint8Array, position: number, done: (error: NodeJS.ErrnoException | null) => void) => void;
/** pwrite + fdatasync in one thread-pool job (native/durable_write.cc); null without the addon. */
const nativeWriteDurable: WriteDurableCall | null =
  typeof addon?.writeDurable === 'function' ? (addon.writeDurable as WriteDurableCall) : null;

function readAt(fd: number, target: Buffer, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fsRead(fd, target, at, length, position, (error, bytesRead) => (error ? reject(error) : resolve(bytesRead)));
  });
}

function writeAt(fd: number, data: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fsWrite(fd, data, at, length, position, (error, bytesWritten) => (error ? reject(error) : resolve(bytesWritten)));
  });
}

function closedError(path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`EBADF: file device ${path} is closed`), { code: 'EBADF', errno: -9, syscall: 'read' });
}

export class FileDevice implements BlockDevice {
  readonly kind: BlockDevice['kind'] = 'file';
  private readonly fdNumber: number;
  /** Reads and writes issued on the descriptor and not yet finished; close waits for them. */
  private ioInFlight = 0;
  private closing = false;
  private idle: (() => void) | undefined;

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
  ) {
    this.fdNumber = handle.fd;
  }

  /**
   * Opens an existing regular file. Its size is rounded down to whole blocks; a missing file or a
   * directory is refused with a Node error the caller turns into a clear message.
   */
  static async open(path: string, blockSizeBytes: number, options: { readOnly?: boolean } = {}): Promise<FileDevice> {
    const info = await stat(path);
    if (!info.isFile() && !info.isBlockDevice()) throw new Error(`${path} is not a regular file or block device`);
    const flags = options.readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
    const handle = await open(path, flags);
    try {
      // Identity and size of what was opened, not of what the path named a moment before.
      const opened = await handle.stat({ bigint: true });
      const locked = lockExclusive(handle.fd, path, opened.ino);
      const sizeBytes = Math.floor(Number(opened.size) / blockSizeBytes) * blockSizeBytes;
      return new FileDevice(path, handle, sizeBytes, blockSizeBytes, options.readOnly ?? false, `${opened.dev}:${opened.ino}`, locked);
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

  get fd(): number {
    return this.handle.fd;
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

  async readInto(target: Buffer, offsetBytes: number): Promise<void> {
    assertAlignedRange(this, offsetBytes, target.length);
    this.enter();
    try {
      let done = 0;
      while (done < target.length) {
        const bytesRead = await readAt(this.fdNumber, target, done, target.length - done, offsetBytes + done);
        if (bytesRead === 0) {
          // The file shrank under us: what is past its end reads as zeros rather than garbage.
          target.fill(0, done);
          return;
        }
        done += bytesRead;
      }
    } finally {
      this.leave();
    }
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    assertAlignedRange(this, offsetBytes, data.length);
    this.enter();
    try {
      let done = 0;
      while (done < data.length) {
        done += await writeAt(this.fdNumber, data, done, data.length - done, offsetBytes + done);
      }
    } finally {
      this.leave();
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
    if (this.closing) throw closedError(this.path);
    this.ioInFlight++;
  }

  private leave(): void {
    if (--this.ioInFlight === 0) this.idle?.();
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    assertAlignedRange(this, offsetBytes, lengthBytes);
    if (offsetBytes === 0 && lengthBytes === this.sizeBytes) {
      // Node has no hole punching; for the whole file, truncating to zero and back frees every block.
      await this.handle.truncate(0);
      await this.handle.truncate(this.sizeBytes);
      return;
    }
    for (let offset = offsetBytes; offset < offsetBytes + lengthBytes; offset += zeroChunkBytes) {
      const length = Math.min(zeroChunkBytes, offsetBytes + lengthBytes - offset);
      await this.write(offset, zeroChunk.subarray(0, length));
    }
  }

  async flush(): Promise<void> {
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.ioInFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    await this.handle.close();
  }
}
