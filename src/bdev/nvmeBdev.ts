// A namespace of a remote NVMe controller as a bdev (SPDK's nvme_bdev, `<controller>n<nsid>`):
// ranges are checked here, before anything reaches the controller, and split at its largest
// transfer (MDTS). The wire protocol sits behind `NvmeNamespaceIo`, which the transport layer
// (src/transport/nvmf/initiator/) implements; its errors are StorageError EIO naming the status.
import { IoQueue } from '../device/ioQueue.ts';
import { fail } from '../errors.ts';
import type { Bdev, BdevExtent } from './bdev.ts';
import { BdevClaims } from './bdevClaims.ts';

/** What Identify Controller and the VS register said of the controller a namespace is reached through. */
export interface NvmeControllerIdentity {
  readonly cntlid: number;
  readonly vendorId: number;
  readonly serialNumber: string;
  readonly modelNumber: string;
  readonly firmwareRevision: string;
  readonly subnqn: string;
  /** OACS: bit 0 security, 1 format, 2 firmware, 3 namespace management. */
  readonly oacs: number;
  /** CMIC: bit 1 more than one controller, bit 3 ANA reporting. */
  readonly cmic: number;
  /** The VS register: major << 16 | minor << 8 | tertiary. */
  readonly version: number;
}

/** The path a namespace is read through now (SPDK's trid, ctrlr_data, vs, ns_data). */
export interface NvmeNamespacePath {
  readonly trid: { readonly trtype: string; readonly adrfam: string; readonly traddr: string; readonly trsvcid: string; readonly subnqn: string };
  readonly controller: NvmeControllerIdentity;
  /** NMIC bit 0: the namespace may be reached through more than one controller. */
  readonly canShare: boolean;
}

/** Block-addressed commands on one namespace; each moves at most `transferBytesMax`. */
export interface NvmeNamespaceIo {
  readonly nsid: number;
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  /** From the namespace's UUID descriptor, else its NGUID, else undefined. */
  readonly uuid: string | undefined;
  readonly transferBytesMax: number;
  readonly writeProtected: boolean;
  readonly canShare?: boolean;
  /** The path and controller it is reached through (bdev_get_bdevs driver_specific); undefined when none is known. */
  path?(): NvmeNamespacePath | undefined;
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
  /**
   * Client I/O first, background reads (checksum walks, copies reading an lvstore on this bdev)
   * behind it, as a local device's queue does (SPEC §6.6): both share the controller's queues.
   */
  private readonly queue = new IoQueue();

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

  /** SPDK's driver_specific of an NVMe bdev (bdev_nvme_dump_info_json): one entry per path, the policy. */
  driverSpecific(): Record<string, unknown> {
    const path = this.io.path?.();
    return { nvme: path ? [namespaceInfo(path, this.nsid)] : [], mp_policy: 'active_passive' };
  }

  async readInto(offsetBytes: number, target: Buffer, options: { background?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    this.checkRange(offsetBytes, target.length);
    const read = () =>
      this.split(offsetBytes, target.length, this.transferBytesMax(), (at, length) => this.io.read(this.lba(at), target.subarray(at - offsetBytes, at - offsetBytes + length)));
    await this.queue.run(options.background ? 'background' : 'foreground', read, options.signal);
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    this.claims.assertWritable();
    if (this.readOnly()) fail('EPERM', `bdev ${this.name} is write protected`);
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.queue.run('foreground', () =>
      this.split(offsetBytes, data.length, this.transferBytesMax(), (at, length) => this.io.write(this.lba(at), bytes.subarray(at - offsetBytes, at - offsetBytes + length))),
    );
  }

  flush(): Promise<void> {
    return this.queue.run('foreground', () => this.io.flush());
  }

  async unmap(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    this.claims.assertWritable();
    const pieceBytes = Math.min(deallocateBlocksMax * this.blockSizeBytes, 2 ** 40);
    await this.queue.run('foreground', () => this.split(offsetBytes, lengthBytes, pieceBytes, (at, length) => this.io.deallocate(this.lba(at), length / this.blockSizeBytes)));
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    this.claims.assertWritable();
    await this.queue.run('foreground', () =>
      this.split(offsetBytes, lengthBytes, writeZeroesBlocksMax * this.blockSizeBytes, (at, length) => this.io.writeZeroes(this.lba(at), length / this.blockSizeBytes)),
    );
  }

  /** The queue's counters (foreground/background in flight, waiting), for tests and stats. */
  queueStats(): ReturnType<IoQueue['stats']> {
    return this.queue.stats();
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

/** One path of nvme_namespace_info_json: SPDK writes these fields in this order. */
function namespaceInfo(path: NvmeNamespacePath, nsid: number): Record<string, unknown> {
  const { controller } = path;
  const major = controller.version >>> 16;
  const minor = (controller.version >>> 8) & 0xff;
  const tertiary = controller.version & 0xff;
  return {
    trid: { ...path.trid },
    ctrlr_data: {
      cntlid: controller.cntlid,
      vendor_id: `0x${controller.vendorId.toString(16).padStart(4, '0')}`,
      model_number: controller.modelNumber,
      serial_number: controller.serialNumber,
      firmware_revision: controller.firmwareRevision,
      ...(controller.subnqn !== '' ? { subnqn: controller.subnqn } : {}),
      oacs: { security: controller.oacs & 1, format: (controller.oacs >> 1) & 1, firmware: (controller.oacs >> 2) & 1, ns_manage: (controller.oacs >> 3) & 1 },
      multi_ctrlr: (controller.cmic & 0x2) !== 0,
      ana_reporting: (controller.cmic & 0x8) !== 0,
    },
    vs: { nvme_version: tertiary !== 0 ? `${major}.${minor}.${tertiary}` : `${major}.${minor}` },
    ns_data: { id: nsid, can_share: path.canShare },
  };
}
