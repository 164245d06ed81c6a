// A base bdev (SPDK's malloc and aio bdevs): a block device the node opened, behind its I/O queue.
import type { BlockDevice } from '../device/blockDevice.ts';
import { StorageError, fail, fromDeviceError } from '../errors.ts';
import type { Bdev, BdevExtent, ClaimableBdev } from './bdev.ts';
import { BdevClaims } from './bdevClaims.ts';

export type BaseBdevKind = 'malloc' | 'aio';

export interface BaseBdevOptions {
  readonly name: string;
  readonly uuid: string;
  readonly kind: BaseBdevKind;
  /** The device, normally a QueuedDevice so that background reads queue behind foreground I/O. */
  readonly device: BlockDevice;
  /** For aio bdevs: the file, as given. */
  readonly filename?: string;
  /** Opened read-only (an aio bdev with `readonly`): nobody may write it, its claim holder neither. */
  readonly readOnlyDevice: boolean;
  /** Attached by the embedding program (attachBaseDevice): it owns the device, save_config leaves it out. */
  readonly external?: boolean;
}

/** Throws EINVAL unless the range lies inside the bdev on block boundaries (the device only asserts). */
export function checkBdevRange(bdev: Bdev, offsetBytes: number, lengthBytes: number): void {
  const block = bdev.blockSizeBytes;
  const valid = Number.isSafeInteger(offsetBytes) && Number.isSafeInteger(lengthBytes) && offsetBytes >= 0 && lengthBytes >= 0;
  if (!valid || offsetBytes % block !== 0 || lengthBytes % block !== 0) {
    fail('EINVAL', `bdev ${bdev.name}: ${offsetBytes}+${lengthBytes} is not a range of whole ${block}-byte blocks`);
  }
  if (offsetBytes + lengthBytes > bdev.sizeBytes()) fail('EINVAL', `bdev ${bdev.name}: ${offsetBytes}+${lengthBytes} ends past its ${bdev.sizeBytes()} bytes`);
}

export class BaseBdev implements ClaimableBdev {
  readonly name: string;
  readonly uuid: string;
  readonly kind: BaseBdevKind;
  readonly device: BlockDevice;
  readonly filename: string | undefined;
  readonly readOnlyDevice: boolean;
  readonly external: boolean;
  readonly claims: BdevClaims;

  constructor(options: BaseBdevOptions) {
    this.name = options.name;
    this.uuid = options.uuid;
    this.kind = options.kind;
    this.device = options.device;
    this.filename = options.filename;
    this.readOnlyDevice = options.readOnlyDevice;
    this.external = options.external ?? false;
    this.claims = new BdevClaims(() => this.name);
  }

  /** The device itself: the lvstore holding its exclusive_write claim writes here. */
  claimedDevice(): BlockDevice {
    return this.device;
  }

  /** Found by its UUID as well, but SPDK lists no aliases for malloc and aio bdevs. */
  aliases(): readonly string[] {
    return [];
  }

  get blockSizeBytes(): number {
    return this.device.blockSizeBytes;
  }

  sizeBytes(): number {
    return this.device.sizeBytes;
  }

  /**
   * Read-only for consumers when the device is, or while a claim holder is its only writer (an
   * lvstore on it: SPDK lets a claimed bdev be opened for reading only) or forbids writes.
   */
  readOnly(): boolean {
    return this.readOnlyDevice || this.claims.writer() !== undefined || this.claims.frozenBy() !== undefined;
  }

  readInto(offsetBytes: number, target: Buffer, options: { background?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    return this.deviceCall('read', () => {
      checkBdevRange(this, offsetBytes, target.length);
      const { device } = this;
      if (options.background && device.readIntoBackground) return device.readIntoBackground(target, offsetBytes, options.signal);
      return device.readInto(target, offsetBytes);
    });
  }

  readIntoNow(offsetBytes: number, target: Buffer): boolean {
    const device = this.device;
    if (device.readIntoNow === undefined) return false;
    checkBdevRange(this, offsetBytes, target.length);
    try {
      return device.readIntoNow(target, offsetBytes);
    } catch (error) {
      throw fromDeviceError(error, `read of bdev ${this.name} failed`);
    }
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.deviceCall('write', () => {
      this.assertWritable(offsetBytes, data.length);
      return this.device.write(offsetBytes, data);
    });
  }

  flush(): Promise<void> {
    return this.deviceCall('flush', () => this.device.flush());
  }

  /** A base bdev keeps no map: an unmapped range reads as zeros (the device discards it). */
  unmap(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.deviceCall('unmap', () => {
      this.assertWritable(offsetBytes, lengthBytes);
      return this.device.discard(offsetBytes, lengthBytes);
    });
  }

  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.deviceCall('write_zeroes', () => {
      this.assertWritable(offsetBytes, lengthBytes);
      return this.device.discard(offsetBytes, lengthBytes);
    });
  }

  /** Without an allocation map every byte is data. */
  extents(offsetBytes: number, lengthBytes: number): BdevExtent[] {
    checkBdevRange(this, offsetBytes, lengthBytes);
    return [{ offsetBytes, lengthBytes, allocated: true }];
  }

  private assertWritable(offsetBytes: number, lengthBytes: number): void {
    if (this.readOnlyDevice) fail('EPERM', `bdev ${this.name} is read-only`);
    this.claims.assertWritable();
    checkBdevRange(this, offsetBytes, lengthBytes);
  }

  /** Device errors become StorageErrors naming the bdev (EIO, or ENOSPC for a full file system). */
  // Not async: on the data path (every NVMe/TCP and NBD request) an async frame's extra promise
  // and turns were a measurable share of a 4 KiB request's JavaScript time.
  private deviceCall<T>(what: string, work: () => Promise<T>): Promise<T> {
    const failure = (error: unknown): never => {
      throw error instanceof StorageError ? error : fromDeviceError(error, `${what} of bdev ${this.name} failed`);
    };
    let pending: Promise<T>;
    try {
      pending = work();
    } catch (error) {
      return Promise.reject(error).catch(failure);
    }
    return pending.catch(failure);
  }
}
