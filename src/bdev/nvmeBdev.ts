// A namespace of a remote NVMe controller as a bdev (SPDK's nvme_bdev, `<controller>n<nsid>`):
// ranges are checked here, before anything reaches the controller, and split at its largest
// transfer (MDTS). The wire protocol sits behind `NvmeNamespaceIo`, which the transport layer
// (src/transport/nvmf/initiator/) implements; its errors are StorageError EIO naming the status.
import { fail } from '../errors.ts';
import type { Bdev, BdevExtent } from './bdev.ts';
import { BdevClaims } from './bdevClaims.ts';

/** Block-addressed commands on one namespace; each moves at most `transferBytesMax`. */
export interface NvmeNamespaceIo {
  readonly nsid: number;
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  /** From the namespace's UUID descriptor, else its NGUID, else undefined. */
  readonly uuid: string | undefined;
  readonly transferBytesMax: number;
  readonly writeProtected: boolean;
  read(lba: number, target: Buffer): Promise<void>;
  write(lba: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
  writeZeroes(lba: number, blocks: number): Promise<void>;
  deallocate(lba: number, blocks: number): Promise<void>;
}

/** NVMe's block counts are 16-bit 0's based in Write Zeroes: at most this many blocks a command. */
const writeZeroesBlocksMax = 0x10000;
/** A Dataset Management range counts blocks in 32 bits; lvnode sends one range a command. */
const deallocateBlocksMax = 0xffffffff;

export class NvmeBdev implements Bdev {
  readonly kind = 'nvme' as const;
  readonly claims: BdevClaims;
  readonly blockSizeBytes: number;

  constructor(
    readonly name: string,
    readonly uuid: string,
    private readonly io: NvmeNamespaceIo,
  ) {
    this.blockSizeBytes = io.blockSizeBytes;
    this.claims = new BdevClaims(() => name);
  }

  get nsid(): number {
    return this.io.nsid;
  }

  aliases(): readonly string[] {
    return [];
  }

  sizeBytes(): number {
    return this.io.blockCount * this.io.blockSizeBytes;
  }

  readOnly(): boolean {
    return this.io.writeProtected;
  }

  async readInto(offsetBytes: number, target: Buffer): Promise<void> {
    this.checkRange(offsetBytes, target.length);
    await this.split(offsetBytes, target.length, this.transferBytesMax(), (at, length) =>
      this.io.read(this.lba(at), target.subarray(at - offsetBytes, at - offsetBytes + length)),
    );
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    this.claims.assertWritable();
    if (this.readOnly()) fail('EPERM', `bdev ${this.name} is write protected`);
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.split(offsetBytes, data.length, this.transferBytesMax(), (at, length) => this.io.write(this.lba(at), bytes.subarray(at - offsetBytes, at - offsetBytes + length)));
  }

  flush(): Promise<void> {
    return this.io.flush();
  }

  async unmap(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    this.claims.assertWritable();
    const pieceBytes = Math.min(deallocateBlocksMax * this.blockSizeBytes, 2 ** 40);
    await this.split(offsetBytes, lengthBytes, pieceBytes, (at, length) => this.io.deallocate(this.lba(at), length / this.blockSizeBytes));
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    this.claims.assertWritable();
    await this.split(offsetBytes, lengthBytes, writeZeroesBlocksMax * this.blockSizeBytes, (at, length) => this.io.writeZeroes(this.lba(at), length / this.blockSizeBytes));
  }

  extents(offsetBytes: number, lengthBytes: number): BdevExtent[] {
    return [{ offsetBytes, lengthBytes, allocated: true }];
  }

  private transferBytesMax(): number {
    return Math.max(this.blockSizeBytes, this.io.transferBytesMax - (this.io.transferBytesMax % this.blockSizeBytes));
  }

  private lba(offsetBytes: number): number {
    return offsetBytes / this.blockSizeBytes;
  }

  /** Block aligned and inside the namespace, or EINVAL: nothing out of range is sent. */
  private checkRange(offsetBytes: number, lengthBytes: number): void {
    const block = this.blockSizeBytes;
    if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0) fail('EINVAL', `bad range on ${this.name}`);
    if (offsetBytes % block !== 0 || lengthBytes % block !== 0) fail('EINVAL', `range on ${this.name} is not aligned to its ${block}-byte blocks`);
    if (offsetBytes + lengthBytes > this.sizeBytes()) fail('EINVAL', `range ${offsetBytes}+${lengthBytes} is past the end of ${this.name} (${this.sizeBytes()} bytes)`);
  }

  /** Runs `each` over pieces of at most `pieceBytes`, all in flight at once (the queue bounds them). */
  private async split(offsetBytes: number, lengthBytes: number, pieceBytes: number, each: (at: number, length: number) => Promise<void>): Promise<void> {
    const pieces: Array<Promise<void>> = [];
    for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += pieceBytes) pieces.push(each(at, Math.min(pieceBytes, offsetBytes + lengthBytes - at)));
    await Promise.all(pieces);
  }
}
