// Payload buffers the NBD server reuses. A READ's reply (header and data in one buffer) is filled
// into a buffer taken from here and given back once the socket write of that reply has completed;
// a WRITE's payload is received into one and given back once the device write has resolved;
// allocating 256 KiB per request instead costs a fresh mapping the kernel zeroes and faults in, and
// the external-memory pressure sets off a major garbage collection every few dozen megabytes.
//
// Sizes are rounded up to a power of two between `minBytes` and `maxBytes`, plus `headroomBytes`
// for the reply header in front of the data; a larger request gets a buffer of its own that is
// never kept. At most `keptBytesMax` of idle buffers are kept (the in-flight bounds of the
// connections keep the busy ones bounded). Whoever releases a buffer guarantees nothing refers to
// it any more: a buffer a socket write or a device read may still touch is dropped, never released.
import assert from 'node:assert/strict';

export class BufferPool {
  private readonly free: Buffer[][] = [];
  /** The buffers in `free`: a release checks it for a double release at once, not by scanning a list. */
  private readonly idle = new Set<Buffer>();
  private keptBytes = 0;
  private readonly minShift: number;
  private readonly maxShift: number;
  /** 2 ** maxShift, and each class's buffer length: computed once (`**` per request is a pow call). */
  private readonly largestBytes: number;
  private readonly classLengths: number[] = [];

  constructor(
    private readonly keptBytesMax: number,
    readonly headroomBytes = 0,
    minBytes = 4096,
    maxBytes = 4 * 1024 * 1024,
  ) {
    this.minShift = Math.ceil(Math.log2(minBytes));
    this.maxShift = Math.ceil(Math.log2(maxBytes));
    this.largestBytes = 2 ** this.maxShift;
    for (let shift = this.minShift; shift <= this.maxShift; shift++) {
      this.free.push([]);
      this.classLengths.push(2 ** shift + headroomBytes);
    }
  }

  /** A buffer of at least `headroomBytes + bytes` (more, rounded to its class); give it back with `release`. */
  acquire(bytes: number): Buffer {
    const index = this.classOf(bytes);
    if (index < 0) return Buffer.allocUnsafeSlow(this.headroomBytes + bytes);
    const buffer = this.free[index]!.pop();
    if (buffer) {
      this.idle.delete(buffer);
      this.keptBytes -= buffer.length;
      return buffer;
    }
    return Buffer.allocUnsafeSlow(this.classBytes(index));
  }

  /** Takes back a buffer `acquire` returned, which nothing reads or writes any more. */
  release(buffer: Buffer): void {
    const index = this.classOf(buffer.length - this.headroomBytes);
    if (index < 0 || buffer.length !== this.classBytes(index)) return;
    assert.ok(!this.idle.has(buffer), 'a pool buffer released twice');
    if (this.keptBytes + buffer.length > this.keptBytesMax) return;
    this.free[index]!.push(buffer);
    this.idle.add(buffer);
    this.keptBytes += buffer.length;
  }

  /** Bytes of idle buffers kept for reuse. */
  get idleBytes(): number {
    return this.keptBytes;
  }

  private classBytes(index: number): number {
    return this.classLengths[index]!;
  }

  /** The size class of `bytes` of data, or -1 when it is over `maxBytes` (per request: no loop, no `**`). */
  private classOf(bytes: number): number {
    if (bytes > this.largestBytes) return -1;
    // The smallest shift with 2 ** shift >= bytes (maxBytes is at most 2 ** 31 here).
    const shift = bytes <= 1 ? 0 : 32 - Math.clz32(bytes - 1);
    return shift <= this.minShift ? 0 : shift - this.minShift;
  }
}
