// A RAM-backed device (SPDK's malloc bdev), stored sparsely in 1 MiB chunks so large ones cost nothing until written.
import { memoryFileInlineBytesMax } from '../constants.ts';
import { type BlockDevice, assertAlignedRange } from './blockDevice.ts';

const chunkBytes = 1024 * 1024;

export class MemoryDevice implements BlockDevice {
  readonly kind: BlockDevice['kind'] = 'memory';
  private readonly chunks = new Map<number, Buffer>();

  constructor(
    readonly sizeBytes: number,
    readonly blockSizeBytes: number,
  ) {}

  async readInto(target: Buffer, offsetBytes: number): Promise<void> {
    assertAlignedRange(this, offsetBytes, target.length);
    await yieldToEventLoop();
    this.copyOut(target, offsetBytes);
  }

  /**
   * A copy out of RAM, answered at once (NVMe/TCP and NBD reads of a malloc bdev); up to
   * memoryFileInlineBytesMax, as for files in memory, so the loop is never held long.
   */
  readIntoNow(target: Buffer, offsetBytes: number): boolean {
    if (target.length > memoryFileInlineBytesMax) return false;
    assertAlignedRange(this, offsetBytes, target.length);
    this.copyOut(target, offsetBytes);
    return true;
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    assertAlignedRange(this, offsetBytes, data.length);
    await yieldToEventLoop();
    this.copyIn(offsetBytes, data);
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    assertAlignedRange(this, offsetBytes, lengthBytes);
    await yieldToEventLoop();
    this.forEachChunk(offsetBytes, lengthBytes, (chunkIndex, chunkOffset, length) => {
      const chunk = this.chunks.get(chunkIndex);
      if (!chunk) return;
      if (length === chunkBytes) this.chunks.delete(chunkIndex);
      else chunk.fill(0, chunkOffset, chunkOffset + length);
    });
  }

  async flush(): Promise<void> {
    await yieldToEventLoop();
  }

  async close(): Promise<void> {
    this.chunks.clear();
  }

  /** Synchronous copy out, shared with the simulated device. */
  protected copyOut(target: Buffer, offsetBytes: number): void {
    let position = 0;
    this.forEachChunk(offsetBytes, target.length, (chunkIndex, chunkOffset, length) => {
      const chunk = this.chunks.get(chunkIndex);
      if (chunk) chunk.copy(target, position, chunkOffset, chunkOffset + length);
      else target.fill(0, position, position + length);
      position += length;
    });
  }

  protected copyIn(offsetBytes: number, data: Uint8Array): void {
    let position = 0;
    this.forEachChunk(offsetBytes, data.length, (chunkIndex, chunkOffset, length) => {
      let chunk = this.chunks.get(chunkIndex);
      if (!chunk) {
        chunk = Buffer.alloc(chunkBytes);
        this.chunks.set(chunkIndex, chunk);
      }
      chunk.set(data.subarray(position, position + length), chunkOffset);
      position += length;
    });
  }

  private forEachChunk(
    offsetBytes: number,
    lengthBytes: number,
    visit: (chunkIndex: number, chunkOffsetBytes: number, lengthBytes: number) => void,
  ): void {
    let offset = offsetBytes;
    const end = offsetBytes + lengthBytes;
    while (offset < end) {
      const chunkIndex = Math.floor(offset / chunkBytes);
      const chunkOffset = offset - chunkIndex * chunkBytes;
      const length = Math.min(chunkBytes - chunkOffset, end - offset);
      visit(chunkIndex, chunkOffset, length);
      offset += length;
    }
  }
}

/** Memory I/O completes after a macrotask, like real I/O, so callers never starve the event loop. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
