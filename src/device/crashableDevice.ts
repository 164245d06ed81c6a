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
  /** The flushes being applied to the durable copy, one after another. */
  private applying: Promise<void> = Promise.resolve();
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

  /** From now on every I/O fails: the process using the device is gone, and so is its I/O. */
  halt(): void {
    this.crashed = true;
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
    // Flushes land in the order they were asked for, each after the one before: a later flush's
    // writes never reach the durable copy before an earlier flush's older writes to the same
    // blocks (which would bring old bytes back after a power loss).
    const applied = this.applying.then(async () => {
      for (const write of pending) await this.durable.write(write.offsetBytes, write.data);
    });
    this.applying = applied.catch(() => undefined);
    await applied;
    this.flushCount++;
  }

  async close(): Promise<void> {}

  /**
   * The device as the next process finds it after this one was killed (`kill -9`): every byte
   * written is there (the kernel kept it), and what was not flushed is still not durable, so a
   * later power loss can still lose it. This device is halted: the dead process's I/O never lands.
   */
  async afterProcessCrash(): Promise<CrashableDevice> {
    this.halt();
    const next = new CrashableDevice(this.sizeBytes, this.blockSizeBytes);
    await copyWritten(this.live, next.live);
    await copyWritten(this.durable, next.durable);
    next.unflushed = [...this.unflushed];
    return next;
  }

  /**
   * The device as found after power returns: what was flushed, plus — with `keepUnflushed` — a
   * seeded choice of unflushed writes, each kept whole, dropped, or torn at block boundaries:
   * `tear: 'prefix'` (default) keeps its first blocks, `tear: 'blocks'` any subset of its blocks
   * (a disk persists each sector on its own).
   */
  async afterPowerLoss(keepUnflushed?: { seed: number; tear?: 'prefix' | 'blocks' }): Promise<CrashableDevice> {
    const next = new CrashableDevice(this.sizeBytes, this.blockSizeBytes);
    await copyWritten(this.durable, next.live);
    await copyWritten(this.durable, next.durable);
    if (keepUnflushed) {
      let state = keepUnflushed.seed >>> 0 || 1;
      const random = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
      for (const write of this.unflushed) {
        const choice = random();
        if (choice < 1 / 3) continue;
        const blocks = write.data.length / this.blockSizeBytes;
        if (choice >= 2 / 3) {
          await next.keep(write.offsetBytes, write.data);
        } else if (keepUnflushed.tear === 'blocks') {
          for (let block = 0; block < blocks; block++) {
            const start = block * this.blockSizeBytes;
            if (random() < 0.5) await next.keep(write.offsetBytes + start, write.data.subarray(start, start + this.blockSizeBytes));
          }
        } else {
          const keptBlocks = Math.floor(random() * blocks);
          if (keptBlocks > 0) await next.keep(write.offsetBytes, write.data.subarray(0, keptBlocks * this.blockSizeBytes));
        }
      }
    }
    return next;
  }

  /** Puts bytes on the device as durable, as found after a restart. */
  private async keep(offsetBytes: number, data: Buffer): Promise<void> {
    await this.live.write(offsetBytes, data);
    await this.durable.write(offsetBytes, data);
  }
}

/** Copies every chunk of `from` that holds a non-zero byte into `to` (both start as zeros). */
async function copyWritten(from: MemoryDevice, to: MemoryDevice): Promise<void> {
  const buffer = Buffer.alloc(copyChunkBytes);
  for (let offset = 0; offset < from.sizeBytes; offset += copyChunkBytes) {
    const chunk = buffer.subarray(0, Math.min(copyChunkBytes, from.sizeBytes - offset));
    await from.readInto(chunk, offset);
    if (!chunk.equals(zeros.subarray(0, chunk.length))) await to.write(offset, chunk);
  }
}
