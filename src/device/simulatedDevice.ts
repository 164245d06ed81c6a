// A memory device for tests that can delay I/O, hold it at a gate, and fail the Nth read or write.
import { MemoryDevice } from './memoryDevice.ts';
import type { BlockDevice } from './blockDevice.ts';

export type IoKind = 'read' | 'write';

export interface SimulatedFaults {
  /** Delay every I/O by this many milliseconds (a real timer: a macrotask). */
  delayMs?: number;
  /** Fail the Nth read (1-based, counted from when the fault was set) with EIO. */
  failReadAt?: number;
  /** Fail the Nth write (1-based) with EIO, or with `failWriteCode`. */
  failWriteAt?: number;
  /** The error code a failed write reports: EIO (default) or ENOSPC, as a full file system does. */
  failWriteCode?: 'EIO' | 'ENOSPC';
  /** Fail every write from the Nth on, not just the Nth (a file system that stays full). */
  failWritesFromThenOn?: boolean;
}

export class SimulatedIoError extends Error {
  constructor(
    message: string,
    readonly code: 'EIO' | 'ENOSPC' = 'EIO',
  ) {
    super(message);
  }
}

export class SimulatedDevice extends MemoryDevice {
  override readonly kind: BlockDevice['kind'] = 'simulated';
  private faults: SimulatedFaults = {};
  private readsSinceFault = 0;
  private writesSinceFault = 0;
  private gate: Promise<void> | undefined;
  private openGate: (() => void) | undefined;
  private oneByOne = false;
  private readonly heldOneByOne: Array<() => void> = [];
  /** Counts every I/O, for tests that assert what was (not) read. */
  readonly counts = { reads: 0, writes: 0, readBytes: 0, writtenBytes: 0 };
  /** Called as each I/O starts, before any delay or gate. */
  onIoStart: ((kind: IoKind, offsetBytes: number, lengthBytes: number) => void) | undefined;

  setFaults(faults: SimulatedFaults): void {
    this.faults = faults;
    this.readsSinceFault = 0;
    this.writesSinceFault = 0;
  }

  /** Holds every following I/O until `release()` is called. */
  hold(): void {
    if (this.gate) return;
    this.gate = new Promise((resolve) => {
      this.openGate = resolve;
    });
  }

  release(): void {
    this.oneByOne = false;
    this.openGate?.();
    this.gate = undefined;
    this.openGate = undefined;
    for (const waiter of this.heldOneByOne.splice(0)) waiter();
  }

  /** Holds every following I/O in a queue; `releaseOne()` lets the oldest one proceed. */
  holdOneByOne(): void {
    this.oneByOne = true;
  }

  /** Lets the oldest held I/O proceed; false when none is waiting. */
  releaseOne(): boolean {
    const waiter = this.heldOneByOne.shift();
    waiter?.();
    return waiter !== undefined;
  }

  get heldCount(): number {
    return this.heldOneByOne.length;
  }

  /** Never at once: every read passes the latency, gates and faults of beforeIo. */
  override readIntoNow(): boolean {
    return false;
  }

  override async readInto(target: Buffer, offsetBytes: number): Promise<void> {
    await this.beforeIo('read', offsetBytes, target.length);
    await super.readInto(target, offsetBytes);
  }

  override async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    await this.beforeIo('write', offsetBytes, data.length);
    await super.write(offsetBytes, data);
  }

  private async beforeIo(kind: IoKind, offsetBytes: number, lengthBytes: number): Promise<void> {
    this.onIoStart?.(kind, offsetBytes, lengthBytes);
    if (kind === 'read') {
      this.counts.reads++;
      this.counts.readBytes += lengthBytes;
    } else {
      this.counts.writes++;
      this.counts.writtenBytes += lengthBytes;
    }
    if (this.faults.delayMs) await new Promise((resolve) => setTimeout(resolve, this.faults.delayMs));
    while (this.gate) await this.gate;
    if (this.oneByOne) await new Promise<void>((resolve) => this.heldOneByOne.push(resolve));
    const count = kind === 'read' ? ++this.readsSinceFault : ++this.writesSinceFault;
    const failAt = kind === 'read' ? this.faults.failReadAt : this.faults.failWriteAt;
    const sticky = kind === 'write' && this.faults.failWritesFromThenOn === true;
    if (failAt !== undefined && (count === failAt || (sticky && count > failAt))) {
      const code = kind === 'write' ? (this.faults.failWriteCode ?? 'EIO') : 'EIO';
      throw new SimulatedIoError(`simulated ${kind} failure (${code}) at ${kind} #${count} (offset ${offsetBytes})`, code);
    }
  }
}
