// A device for crash tests: writes are volatile until flushed, the Nth write can "crash" the
// machine, and a power loss keeps only what was flushed (optionally some unflushed blocks, torn).
import type { BlockDevice } from './blockDevice.ts';
import { MemoryDevice } from './memoryDevice.ts';

export class DeviceCrashedError extends Error {
  readonly code = 'EIO';
}

interface PendingWrite {
  offsetBytes: number;
  data: Buffer;
}

const copyChunkBytes = 1024 * 1024;
const zeros = Buffer.alloc(copyChunkBytes);

export class CrashableDevice implements BlockDevice {
  readonly kind: BlockDevice['kind'] = 'simulated';
  private readonly live: MemoryDevice;
  private readonly durable: MemoryDevice;
  private unflushed: PendingWrite[] = [];
  private writeCount = 0;
  private crashAtWrite: number | undefined;
  private crashed = false;
  /** Bytes written, for tests and benchmarks that count metadata I/O. */
  writtenBytes = 0;
  flushCount = 0;

  constructor(
    readonly sizeBytes: number,
    readonly blockSizeBytes: number,
  ) {
    this.live = new MemoryDevice(sizeBytes, blockSizeBytes);
    this.durable = new MemoryDevice(sizeBytes, blockSizeBytes);
  }

  /** The Nth write from now (1-based) fails and every later I/O fails: the machine stopped there. */
  crashAt(writeNumber: number | undefined): void {
    this.writeCount = 0;
    this.crashAtWrite = writeNumber;
  }

  get hasCrashed(): boolean {
    return this.crashed;
  }

  get writesSinceArmed(): number {
    return this.writeCount;
  }

  private check(): void {
    if (this.crashed) throw new DeviceCrashedError('device is gone: simulated crash');
  }

  async readInto(target: Buffer, offsetBytes: number): Promise<void> {
    this.check();
    await this.live.readInto(target, offsetBytes);
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.check();
    this.writeCount++;
    if (this.crashAtWrite !== undefined && this.writeCount === this.crashAtWrite) {
      this.crashed = true;
      throw new DeviceCrashedError(`simulated crash at write #${this.writeCount}`);
    }
    await this.live.write(offsetBytes, data);
    this.unflushed.push({ offsetBytes, data: Buffer.from(data) });
    this.writtenBytes += data.length;
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    for (let offset = offsetBytes; offset < offsetBytes + lengthBytes; offset += copyChunkBytes) {
      await this.write(offset, Buffer.alloc(Math.min(copyChunkBytes, offsetBytes + lengthBytes - offset)));
    }
  }

  async flush(): Promise<void> {
    this.check();
    const pending = this.unflushed;
    this.unflushed = [];
    for (const write of pending) await this.durable.write(write.offsetBytes, write.data);
    this.flushCount++;
  }

  async close(): Promise<void> {}

  /**
   * The device as found after power returns: what was flushed, plus — with `keepUnflushed` — a
   * seeded choice of unflushed writes, each kept whole, dropped, or torn at a block boundary.
   */
  async afterPowerLoss(keepUnflushed?: { seed: number }): Promise<CrashableDevice> {
    const next = new CrashableDevice(this.sizeBytes, this.blockSizeBytes);
    const buffer = Buffer.alloc(copyChunkBytes);
    for (let offset = 0; offset < this.sizeBytes; offset += copyChunkBytes) {
      const chunk = buffer.subarray(0, Math.min(copyChunkBytes, this.sizeBytes - offset));
      await this.durable.readInto(chunk, offset);
      if (!chunk.equals(zeros.subarray(0, chunk.length))) {
        await next.live.write(offset, chunk);
        await next.durable.write(offset, chunk);
      }
    }
    if (keepUnflushed) {
      let state = keepUnflushed.seed >>> 0 || 1;
      const random = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
      for (const write of this.unflushed) {
        const choice = random();
        if (choice < 1 / 3) continue;
        const blocks = write.data.length / this.blockSizeBytes;
        const keptBlocks = choice < 2 / 3 ? Math.floor(random() * blocks) : blocks;
        const kept = write.data.subarray(0, keptBlocks * this.blockSizeBytes);
        if (kept.length === 0) continue;
        await next.live.write(write.offsetBytes, kept);
        await next.durable.write(write.offsetBytes, kept);
      }
    }
    return next;
  }
}
