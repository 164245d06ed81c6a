// An lvol as a bdev (SPDK's vbdev_lvol): bound to the lvol's UUID, so renames of the lvol or its
// lvstore leave every consumer working, and made per lookup (100,000 lvols exist: objects are
// cheap, and the claims, which must outlive a lookup, are kept per lvol in `LvolBdevs`).
import type { BlockDevice } from '../device/blockDevice.ts';
import type { Lvstore } from '../store/lvstore.ts';
import type { LvolRecord } from '../store/metadata.ts';
import type { BdevExtent, ClaimableBdev } from './bdev.ts';
import { BdevClaims } from './bdevClaims.ts';
import { LvolDevice } from './lvolDevice.ts';

/** Where an lvol is now; throws ENODEV once it is gone (deleted, or its lvstore unloaded). */
export type LocateLvol = (lvolId: string) => { readonly store: Lvstore; readonly lvol: LvolRecord };

/**
 * The node's lvols as bdevs: each made on lookup, and the claims of every lvol that has had any,
 * made on first use and dropped when the lvol leaves the node. Lookups that only ask (`peek`)
 * make nothing, so listings and I/O add no entry.
 */
export class LvolBdevs {
  private readonly byLvol = new Map<string, BdevClaims>();

  constructor(readonly locate: LocateLvol) {}

  /** The bdev of an lvol (by UUID); ENODEV when there is no such lvol. */
  bdev(lvolId: string): LvolBdev {
    return new LvolBdev(lvolId, this);
  }

  /** The lvol's claims, made now if it had none; errors name it by its alias while it exists. */
  claims(lvolId: string): BdevClaims {
    let claims = this.byLvol.get(lvolId);
    if (!claims) {
      claims = new BdevClaims(() => {
        try {
          const { store, lvol } = this.locate(lvolId);
          return `${store.name}/${lvol.name}`;
        } catch {
          return lvolId;
        }
      });
      this.byLvol.set(lvolId, claims);
    }
    return claims;
  }

  peek(lvolId: string): BdevClaims | undefined {
    return this.byLvol.get(lvolId);
  }

  /** Lvols with at least one hold: a pass over the few held, never over every lvol. */
  *held(): Generator<[string, BdevClaims]> {
    for (const entry of this.byLvol) if (entry[1].size > 0) yield entry;
  }

  /** The lvol left the node (deleted, or its lvstore unloaded). */
  forget(lvolId: string): void {
    this.byLvol.delete(lvolId);
  }
}

export class LvolBdev implements ClaimableBdev {
  readonly kind = 'lvol' as const;
  readonly blockSizeBytes: number;

  private readonly locate: LocateLvol;

  constructor(
    /** The lvol's UUID: SPDK names lvol bdevs so. */
    readonly name: string,
    private readonly lvols: LvolBdevs,
  ) {
    this.locate = lvols.locate;
    this.blockSizeBytes = this.locate(name).store.record.blockBytes;
  }

  get uuid(): string {
    return this.name;
  }

  get claims(): BdevClaims {
    return this.lvols.claims(this.name);
  }

  aliases(): readonly string[] {
    const { store, lvol } = this.locate(this.name);
    return [`${store.name}/${lvol.name}`];
  }

  sizeBytes(): number {
    const { store, lvol } = this.locate(this.name);
    return lvol.clusterMap.length * store.clusterBytes;
  }

  /** A snapshot or read-only lvol, or one whose claim holder (a nested lvstore) is its only writer. */
  readOnly(): boolean {
    if (this.locate(this.name).lvol.readOnly) return true;
    const claims = this.lvols.peek(this.name);
    return claims !== undefined && (claims.writer() !== undefined || claims.frozenBy() !== undefined);
  }

  /** Reads through the lvol's chain; `background` reads queue behind client I/O on every device of it. */
  readInto(offsetBytes: number, target: Buffer, options?: { background?: boolean; signal?: AbortSignal }): Promise<void> {
    return this.locate(this.name).store.readInto(this.name, offsetBytes, target, options);
  }

  readIntoNow(offsetBytes: number, target: Buffer): boolean {
    return this.locate(this.name).store.readIntoNow(this.name, offsetBytes, target);
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    const { store } = this.writable();
    return store.write(this.name, offsetBytes, data);
  }

  /** Flushes the lvol's lvstore device: every completed write of every lvol on it is durable. */
  flush(): Promise<void> {
    return this.locate(this.name).store.flush();
  }

  /** Follows the lvol's clear method (advisory); a thin lvol may give the clusters back. */
  unmap(offsetBytes: number, lengthBytes: number): Promise<void> {
    const { store } = this.writable();
    return store.unmap(this.name, offsetBytes, lengthBytes);
  }

  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    const { store } = this.writable();
    return store.writeZeroes(this.name, offsetBytes, lengthBytes);
  }

  extents(offsetBytes: number, lengthBytes: number, maxExtents: number): BdevExtent[] {
    return this.locate(this.name).store.extents(this.name, offsetBytes, lengthBytes, maxExtents);
  }

  /** The lvol as a block device for the holder of its exclusive_write claim (a nested lvstore). */
  claimedDevice(): BlockDevice {
    return new LvolDevice(this.locate(this.name).store, this.name);
  }

  /** The store, once the claims allow a consumer's write (the store refuses a read-only lvol: EPERM). */
  private writable(): { store: Lvstore } {
    const located = this.locate(this.name);
    this.lvols.peek(this.name)?.assertWritable();
    return located;
  }
}
