// An lvol as a block device, so an lvstore can live on it (SPDK's nested lvstores): reads and
// writes go through the parent lvstore's data path, a discard makes the range read as zeros. Only
// the holder of the lvol bdev's exclusive_write claim writes through it (lvolBdev.ts).
import type { BlockDevice } from '../device/blockDevice.ts';
import type { Lvstore } from '../store/lvstore.ts';

export class LvolDevice implements BlockDevice {
  readonly kind: BlockDevice['kind'] = 'lvol';

  constructor(
    private readonly store: Lvstore,
    readonly lvolId: string,
  ) {}

  /** The lvol's size now: a resize of the lvol is seen here (bdev_lvol_grow_lvstore takes it in). */
  get sizeBytes(): number {
    return this.store.lvol(this.lvolId).clusterMap.length * this.store.clusterBytes;
  }

  /** Its size follows the lvol's: nothing to re-read. */
  async refreshSize(): Promise<number> {
    return this.sizeBytes;
  }

  get blockSizeBytes(): number {
    return this.store.record.blockBytes;
  }

  readInto(target: Buffer, offsetBytes: number): Promise<void> {
    return this.store.readInto(this.lvolId, offsetBytes, target);
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.store.write(this.lvolId, offsetBytes, data);
  }

  discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.store.writeZeroes(this.lvolId, offsetBytes, lengthBytes);
  }

  flush(): Promise<void> {
    return this.store.flush();
  }

  async close(): Promise<void> {}
}
