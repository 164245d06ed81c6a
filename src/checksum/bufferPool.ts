// Reusable cluster buffers for checksum walks. A fresh 4 MiB buffer per walk made V8 run full
// garbage collections that landed inside priority operations (tens of ms in the preemption
// benchmark); a small pool keeps them off the tail.

const idlePerSizeMax = 4;

export class BufferPool {
  private readonly idle = new Map<number, Buffer[]>();

  acquire(sizeBytes: number): Buffer {
    return this.idle.get(sizeBytes)?.pop() ?? Buffer.allocUnsafe(sizeBytes);
  }

  /** Returns a buffer; beyond a few idle ones per size it is left to the garbage collector. */
  release(buffer: Buffer): void {
    let list = this.idle.get(buffer.length);
    if (!list) {
      list = [];
      this.idle.set(buffer.length, list);
    }
    if (list.length < idlePerSizeMax) list.push(buffer);
  }

  idleCount(sizeBytes: number): number {
    return this.idle.get(sizeBytes)?.length ?? 0;
  }
}

/** The node's pool: every lvol actor draws from it. */
export const clusterBuffers = new BufferPool();
