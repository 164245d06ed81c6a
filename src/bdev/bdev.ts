// One bdev layer, as in SPDK: every base bdev (malloc, aio), every lvol and every remote namespace
// is a `Bdev`, and everything that consumes a block device by name — NBD exports, NVMe-oF
// namespaces, copy destinations, external-snapshot parents, nested lvstores — takes a `Bdev` and
// nothing else. One claim mechanism (`BdevClaims`, bdevClaims.ts) answers "may I write it / may
// it be deleted" for all of them.
//
// Offsets and lengths are bytes, block aligned, inside the bdev; implementations check again and
// throw StorageError (src/errors.ts) with an errno code, as the store does.
import type { BlockDevice } from '../device/blockDevice.ts';
import type { BdevClaims } from './bdevClaims.ts';

export type BdevKind = 'malloc' | 'aio' | 'lvol' | 'nvme';

/** A run of a bdev's bytes that is data or a hole (reads as zeros, owns no storage). */
export interface BdevExtent {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly allocated: boolean;
}

export interface Bdev {
  readonly kind: BdevKind;
  /** SPDK's bdev name: a base bdev's name, an lvol's UUID, `<controller>n<nsid>` for NVMe. */
  readonly name: string;
  readonly uuid: string;
  /** Other names that find it (an lvol's `lvs/lvol`). Every bdev is found by its UUID too, listed or not. */
  aliases(): readonly string[];
  readonly blockSizeBytes: number;
  /** Current size (an lvol can be resized while consumers hold it). */
  sizeBytes(): number;
  /** Read-only by nature (a snapshot, a read-only base bdev), or because a claim holder is its only writer. */
  readOnly(): boolean;
  /**
   * Fills `target` with the bytes at `offsetBytes`. `background` reads queue behind every
   * foreground request of the device (SPEC §6.6): checksums and copies use it, clients never.
   */
  readInto(offsetBytes: number, target: Buffer, options?: { background?: boolean; signal?: AbortSignal }): Promise<void>;
  /**
   * A foreground `readInto` finished before it returns, where every byte can be had at once (a
   * file in memory, RAM, holes): true once `target` is filled. False when it cannot, and the
   * caller uses `readInto` (which overwrites whatever part was read: reads can be repeated).
   * Throws what `readInto` would reject with. The NVMe/TCP target's reads try it first: at 4 KiB
   * a request's promises cost more than its copy. Bdevs that always wait leave it out.
   */
  readIntoNow?(offsetBytes: number, target: Buffer): boolean;
  write(offsetBytes: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write of the bdev durable, whoever wrote it. */
  flush(): Promise<void>;
  /** Afterwards the range reads as zeros and may own no storage (NBD trim, NVMe deallocate). */
  unmap(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Afterwards the range reads as zeros. */
  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Data and holes in the range, at most `maxExtents` runs; bdevs without a map answer one allocated run. */
  extents(offsetBytes: number, lengthBytes: number, maxExtents: number): BdevExtent[];
  /** Who holds it, and how: lvstores, exports, copies, clones. */
  readonly claims: BdevClaims;
}

/**
 * A bdev an lvstore can live on. The holder of its exclusive_write claim reads and writes
 * `claimedDevice()`, below the claim checks that keep every other consumer from writing.
 */
export interface ClaimableBdev extends Bdev {
  claimedDevice(): BlockDevice;
}

/** True when the whole range is a hole, so it reads as zeros without being read. */
export function isHole(bdev: Bdev, offsetBytes: number, lengthBytes: number): boolean {
  const [first] = bdev.extents(offsetBytes, lengthBytes, 1);
  return first !== undefined && !first.allocated && first.lengthBytes === lengthBytes;
}

/** Reads into a fresh buffer (tests, RPCs); the data path reuses its buffers with `readInto`. */
export async function readBdev(bdev: Bdev, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const target = Buffer.allocUnsafe(lengthBytes);
  await bdev.readInto(offsetBytes, target);
  return target;
}
