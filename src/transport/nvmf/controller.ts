// One NVMe-oF controller (dynamic model): created by a Fabrics Connect on an admin queue, joined
// by I/O queues with its cntlid, holding the properties (CC/CSTS), features, keep-alive and
// asynchronous events of one host's association with one subsystem.
import type { NvmfControllerHandle, NvmfSubsystem, NvmfTarget } from '../../actors/nvmfTarget.ts';
import { nvmfAsyncEventsMax, nvmfQueueDepthMax, nvmfQueuesPerControllerMax } from '../../constants.ts';
import { log } from '../../log.ts';
import { asyncEvent, property, versionRegister } from './nvmeSpec.ts';

/** What a controller needs of a queue pair bound to it. */
export interface ControllerQueue {
  readonly qid: number;
  /** Completes an Asynchronous Event Request held on the admin queue. */
  completeAsyncEvent(cid: number, dw0: number): void;
  close(reason: string): void;
}

// CAP: MQES (0's based), CQR (contiguous queues required), TO (500 ms units), CSS NVM, MPSMIN/MAX 4 KiB.
const capabilities = BigInt(nvmfQueueDepthMax - 1) | (1n << 16n) | (30n << 24n) | (1n << 37n);

export class NvmfController implements NvmfControllerHandle {
  cntlid = 0;
  private cc = 0;
  private csts = 0;
  private readonly queues = new Map<number, ControllerQueue>();
  /** I/O queues granted by Set Features (Number of Queues), 1-based count. */
  ioQueuesGranted = nvmfQueuesPerControllerMax - 1;
  private readonly heldAsyncEvents: number[] = [];
  private readonly pendingAsyncEvents: number[] = [];
  readonly changedNamespaces = new Set<number>();
  private lastSeenMs = Date.now();
  private keepAliveTimer: NodeJS.Timeout | undefined;
  private destroyed = false;
  /** Features the host set that change nothing here (arbitration, power, temperature...), echoed back. */
  readonly features = new Map<number, number>();

  constructor(
    readonly target: NvmfTarget,
    readonly subsystem: NvmfSubsystem,
    readonly hostNqn: string,
    readonly hostId: Buffer,
    public keepAliveTimeoutMs: number,
    /** The listener (`traddr:trsvcid`) the host connected through. */
    readonly listenKey: string,
  ) {}

  /** Registers with the subsystem; false when it has no room or is not accepting hosts. */
  attach(): boolean {
    const cntlid = this.subsystem.attachController(this);
    if (cntlid === undefined) return false;
    this.cntlid = cntlid;
    this.armKeepAlive();
    return true;
  }

  /** Keep-alive (NVMe 1.4 §7.12): any command counts as traffic; none within KATO ends the association. */
  private armKeepAlive(): void {
    if (this.keepAliveTimeoutMs === 0) return;
    const checkMs = Math.max(100, Math.floor(this.keepAliveTimeoutMs / 4));
    this.keepAliveTimer = setInterval(() => {
      if (Date.now() - this.lastSeenMs <= this.keepAliveTimeoutMs) return;
      log('warn', 'nvmf keep-alive timeout: controller destroyed', { nqn: this.subsystem.nqn, cntlid: this.cntlid, host: this.hostNqn });
      this.disconnect('keep-alive timeout');
    }, checkMs);
    this.keepAliveTimer.unref();
  }

  noteTraffic(): void {
    this.lastSeenMs = Date.now();
  }

  setKeepAliveTimeout(timeoutMs: number): void {
    clearInterval(this.keepAliveTimer);
    this.keepAliveTimeoutMs = timeoutMs;
    this.armKeepAlive();
  }

  addQueue(queue: ControllerQueue): boolean {
    if (this.destroyed || this.queues.has(queue.qid)) return false;
    this.queues.set(queue.qid, queue);
    return true;
  }

  hasQueue(qid: number): boolean {
    return this.queues.has(qid);
  }

  /** A queue's connection ended; the admin queue's end destroys the controller and its I/O queues. */
  queueClosed(queue: ControllerQueue): void {
    if (this.queues.get(queue.qid) !== queue) return;
    this.queues.delete(queue.qid);
    if (queue.qid === 0) this.destroy('admin queue closed');
  }

  hasIoQueues(): boolean {
    for (const qid of this.queues.keys()) if (qid !== 0) return true;
    return false;
  }

  /** The ANA state of the listener the admin queue came through (optimized when unknown). */
  anaState(): 'optimized' | 'non_optimized' | 'inaccessible' {
    return this.subsystem.listener(this.listenKey)?.anaState ?? 'optimized';
  }

  get enabled(): boolean {
    return (this.csts & 1) === 1;
  }

  propertyGet(offset: number, eightBytes: boolean): bigint | undefined {
    switch (offset) {
      case property.cap:
        return eightBytes ? capabilities : capabilities & 0xffffffffn;
      case property.vs:
        return BigInt(versionRegister);
      case property.cc:
        return BigInt(this.cc);
      case property.csts:
        return BigInt(this.csts);
      case property.cap + 4:
        return capabilities >> 32n;
      default:
        return undefined;
    }
  }

  /** Property Set: only CC is writable; enabling makes the controller ready, shutdown completes at once. */
  propertySet(offset: number, value: number): boolean {
    if (offset !== property.cc) return false;
    const enable = (value & 1) === 1;
    const shutdownNotice = (value >>> 14) & 0x3;
    this.cc = value >>> 0;
    if (enable && !this.enabled) this.csts |= 1;
    if (!enable && this.enabled) this.csts &= ~1;
    if (shutdownNotice !== 0) this.csts = (this.csts & ~0xc) | (0x2 << 2);
    else this.csts &= ~0xc;
    return true;
  }

  /** Holds an AER on the admin queue; false when nvmfAsyncEventsMax are held already. */
  holdAsyncEvent(cid: number, queue: ControllerQueue): boolean {
    if (this.heldAsyncEvents.length >= nvmfAsyncEventsMax) return false;
    this.heldAsyncEvents.push(cid);
    if (queue.qid === 0) this.deliverAsyncEvents();
    return true;
  }

  namespacesChanged(nsids: readonly number[]): void {
    for (const nsid of nsids) this.changedNamespaces.add(nsid);
    this.raise(this.subsystem.isDiscovery ? asyncEvent.discoveryLogChanged : asyncEvent.namespaceAttributeChanged);
  }

  raise(event: number): void {
    if (!this.pendingAsyncEvents.includes(event)) this.pendingAsyncEvents.push(event);
    this.deliverAsyncEvents();
  }

  private deliverAsyncEvents(): void {
    const admin = this.queues.get(0);
    while (admin && this.heldAsyncEvents.length > 0 && this.pendingAsyncEvents.length > 0) {
      admin.completeAsyncEvent(this.heldAsyncEvents.shift()!, this.pendingAsyncEvents.shift()!);
    }
  }

  disconnect(reason: string): void {
    this.destroy(reason);
  }

  private destroy(reason: string): void {
    if (this.destroyed) return;
    this.destroyed = true;
    clearInterval(this.keepAliveTimer);
    this.subsystem.detachController(this.cntlid, this);
    for (const queue of [...this.queues.values()]) queue.close(reason);
    this.queues.clear();
  }
}
