// A fixed set of chunk buffers for copying clusters (copy on write, inflate, decouple): memory
// for copies is bounded per lvstore, whatever the cluster size and however many writes wait.
import { copyBuffersPerLvstore, copyChunkBytes } from '../constants.ts';

export class CopyBuffers {
  private readonly idle: Buffer[] = [];
  private made = 0;
  private readonly waiting: Array<(buffer: Buffer) => void> = [];

  constructor(
    readonly chunkBytes = copyChunkBytes,
    private readonly countMax = copyBuffersPerLvstore,
  ) {}

  /** Runs `work` with a buffer of `chunkBytes`, waiting for one when all are in use. */
  async with<T>(work: (buffer: Buffer) => Promise<T>): Promise<T> {
    const buffer = await this.acquire();
    try {
      return await work(buffer);
    } finally {
      this.release(buffer);
    }
  }

  private acquire(): Promise<Buffer> {
    const buffer = this.idle.pop();
    if (buffer) return Promise.resolve(buffer);
    if (this.made < this.countMax) {
      this.made++;
      return Promise.resolve(Buffer.allocUnsafe(this.chunkBytes));
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(buffer: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(buffer);
    else this.idle.push(buffer);
  }

  /** Buffers made so far (tests: the bound holds). */
  get allocatedCount(): number {
    return this.made;
  }
}
