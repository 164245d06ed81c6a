// Puts a device behind its I/O queue: the node attaches every bdev this way (foreground first).
import { type BlockDevice, writeDurable } from './blockDevice.ts';
import { IoQueue } from './ioQueue.ts';

export class QueuedDevice implements BlockDevice {
  readonly queue: IoQueue;
  /** The inner device's, when it has one (files): borrowing the descriptor is not queued I/O. */
  readonly withFd?: <T>(work: (fd: number) => Promise<T>) => Promise<T>;

  constructor(
    readonly inner: BlockDevice,
    queue: IoQueue = new IoQueue(),
  ) {
    this.queue = queue;
    if (inner.withFd) this.withFd = (work) => inner.withFd!(work);
  }

  get kind(): BlockDevice['kind'] {
    return this.inner.kind;
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  get blockSizeBytes(): number {
    return this.inner.blockSizeBytes;
  }

  get fd(): number | undefined {
    return this.inner.fd;
  }

  get fileId(): string | undefined {
    return this.inner.fileId;
  }

  readInto(target: Buffer, offsetBytes: number): Promise<void> {
    return this.queue.run('foreground', () => this.inner.readInto(target, offsetBytes));
  }

  /** A foreground read answered at once by the inner device, counted by the queue (nothing waits behind it). */
  readIntoNow(target: Buffer, offsetBytes: number): boolean {
    const inner = this.inner;
    if (inner.readIntoNow === undefined || !inner.readIntoNow(target, offsetBytes)) return false;
    this.queue.countForegroundDone();
    return true;
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.queue.run('foreground', () => this.inner.write(offsetBytes, data));
  }

  writeDurable(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.queue.run('foreground', () => writeDurable(this.inner, offsetBytes, data));
  }

  discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.queue.run('foreground', () => this.inner.discard(offsetBytes, lengthBytes));
  }

  refreshSize(): Promise<number> {
    return this.inner.refreshSize ? this.inner.refreshSize() : Promise.resolve(this.inner.sizeBytes);
  }

  flush(): Promise<void> {
    return this.queue.run('foreground', () => this.inner.flush());
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** Runs background work (a checksum read) in the queue's background class. */
  runBackground<T>(work: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.queue.run('background', work, signal);
  }

  /** A background read of the inner device, for walks that read through Node (the fallback path). */
  readIntoBackground(target: Buffer, offsetBytes: number, signal?: AbortSignal): Promise<void> {
    return this.queue.run('background', () => this.inner.readInto(target, offsetBytes), signal);
  }
}
