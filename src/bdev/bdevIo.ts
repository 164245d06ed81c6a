// Per-bdev rate limits (SPDK's bdev_set_qos_limit) and I/O statistics (bdev_get_iostat), applied
// at one place that every consumer's I/O passes: `MeteredBdev`, the wrapper the node's consumer
// lookup puts around any bdev (NBD exports, NVMe-oF namespaces, copy destinations, RPC I/O).
//
// The state lives per bdev name in `BdevIoStates`, not in the bdev object: lvol bdevs are made per
// lookup, and limits must outlive them. A wrapper resolves its state once, when it is made, so a
// request costs no map lookup; a bdev without limits pays two clock reads and a few additions.
import type { Bdev, BdevExtent, BdevKind } from './bdev.ts';
import type { BdevClaims } from './bdevClaims.ts';

/** SPDK's four limit types; 0 is "no limit". Byte rates are bytes (SPDK's MB is MiB). */
export interface BdevQosLimits {
  readonly rwIosPerSec: number;
  readonly rwBytesPerSec: number;
  readonly rBytesPerSec: number;
  readonly wBytesPerSec: number;
}

export const noQosLimits: BdevQosLimits = { rwIosPerSec: 0, rwBytesPerSec: 0, rBytesPerSec: 0, wBytesPerSec: 0 };

/** What the limiter waits on and the counters time with: the injected runtime's clock. */
export interface BdevIoClock {
  nowMs(): number;
  /** Resolves once `delayMs` have passed on this clock. */
  sleep(delayMs: number): Promise<void>;
  /** A monotonic tick counter for latencies, `tickRate` ticks a second. */
  ticks(): number;
  readonly tickRate: number;
}

export const systemBdevIoClock: BdevIoClock = {
  nowMs: () => performance.now(),
  sleep: (delayMs) => new Promise((resolve) => setTimeout(resolve, Math.ceil(delayMs))),
  ticks: () => Math.round(performance.now() * 1e6),
  tickRate: 1e9,
};

export type BdevIoType = 'read' | 'write' | 'unmap';

/** One bdev's limits, its limiter's reservations and its counters (SPDK's spdk_bdev_io_stat). */
export class BdevIoState {
  limits: BdevQosLimits = noQosLimits;
  /** True when any limit is set: the only thing an unlimited request reads of the limiter. */
  limited = false;
  // Reservations: the time at which the next request of each class may start (SPDK's timeslices,
  // as a reservation: a request waits for the bytes before it, so waits are bounded by the rate).
  private nextIoAtMs = 0;
  private nextRwBytesAtMs = 0;
  private nextReadBytesAtMs = 0;
  private nextWriteBytesAtMs = 0;
  /** Limiter accounting, for tests and the inspector: requests that waited, and for how long in all. */
  throttledRequests = 0;
  throttledMs = 0;

  bytesRead = 0;
  numReadOps = 0;
  bytesWritten = 0;
  numWriteOps = 0;
  bytesUnmapped = 0;
  numUnmapOps = 0;
  readLatencyTicks = 0;
  maxReadLatencyTicks = 0;
  minReadLatencyTicks = Number.POSITIVE_INFINITY;
  writeLatencyTicks = 0;
  maxWriteLatencyTicks = 0;
  minWriteLatencyTicks = Number.POSITIVE_INFINITY;
  unmapLatencyTicks = 0;
  maxUnmapLatencyTicks = 0;
  minUnmapLatencyTicks = Number.POSITIVE_INFINITY;
  queueDepth = 0;
  ioErrors = 0;
  /** The last consumer view made of this bdev, handed out again while the bdev object is the same. */
  view: MeteredBdev | undefined;

  constructor(
    /** The bdev this state belongs to: a new bdev under the same name starts afresh. */
    readonly uuid: string,
    readonly clock: BdevIoClock,
  ) {}

  setLimits(limits: BdevQosLimits): void {
    this.limits = limits;
    this.limited = limits.rwIosPerSec > 0 || limits.rwBytesPerSec > 0 || limits.rBytesPerSec > 0 || limits.wBytesPerSec > 0;
    // A new limit starts from now: a reservation made under an old, lower one does not linger.
    this.nextIoAtMs = this.nextRwBytesAtMs = this.nextReadBytesAtMs = this.nextWriteBytesAtMs = 0;
  }

  /**
   * Reserves the request's share of every limit that applies, and answers the wait until it may
   * start (undefined: at once). Unmaps and zeroes count as I/Os but move no bytes, as in SPDK.
   */
  admit(type: BdevIoType, bytes: number): Promise<void> | undefined {
    const { rwIosPerSec, rwBytesPerSec, rBytesPerSec, wBytesPerSec } = this.limits;
    const nowMs = this.clock.nowMs();
    const movesBytes = type !== 'unmap';
    const ownBytesPerSec = type === 'read' ? rBytesPerSec : type === 'write' ? wBytesPerSec : 0;
    let startAtMs = nowMs;
    if (rwIosPerSec > 0) startAtMs = Math.max(startAtMs, this.nextIoAtMs);
    if (movesBytes && rwBytesPerSec > 0) startAtMs = Math.max(startAtMs, this.nextRwBytesAtMs);
    if (ownBytesPerSec > 0) startAtMs = Math.max(startAtMs, type === 'read' ? this.nextReadBytesAtMs : this.nextWriteBytesAtMs);
    if (rwIosPerSec > 0) this.nextIoAtMs = startAtMs + 1000 / rwIosPerSec;
    if (movesBytes && rwBytesPerSec > 0) this.nextRwBytesAtMs = startAtMs + (bytes * 1000) / rwBytesPerSec;
    if (ownBytesPerSec > 0) {
      const nextAtMs = startAtMs + (bytes * 1000) / ownBytesPerSec;
      if (type === 'read') this.nextReadBytesAtMs = nextAtMs;
      else this.nextWriteBytesAtMs = nextAtMs;
    }
    if (startAtMs <= nowMs) return undefined;
    this.throttledRequests++;
    this.throttledMs += startAtMs - nowMs;
    return this.clock.sleep(startAtMs - nowMs);
  }

  /** Counts a completed request. `ticks` is its latency. */
  record(type: BdevIoType, bytes: number, ticks: number): void {
    if (type === 'read') {
      this.bytesRead += bytes;
      this.numReadOps++;
      this.readLatencyTicks += ticks;
      if (ticks > this.maxReadLatencyTicks) this.maxReadLatencyTicks = ticks;
      if (ticks < this.minReadLatencyTicks) this.minReadLatencyTicks = ticks;
    } else if (type === 'write') {
      this.bytesWritten += bytes;
      this.numWriteOps++;
      this.writeLatencyTicks += ticks;
      if (ticks > this.maxWriteLatencyTicks) this.maxWriteLatencyTicks = ticks;
      if (ticks < this.minWriteLatencyTicks) this.minWriteLatencyTicks = ticks;
    } else {
      this.bytesUnmapped += bytes;
      this.numUnmapOps++;
      this.unmapLatencyTicks += ticks;
      if (ticks > this.maxUnmapLatencyTicks) this.maxUnmapLatencyTicks = ticks;
      if (ticks < this.minUnmapLatencyTicks) this.minUnmapLatencyTicks = ticks;
    }
  }

  /**
   * Runs one request through the limiter and the counters: the one path of `MeteredBdev`, and of
   * writes that reach a bdev's store beside it (a copy's recorded clusters). `limitAs` 'unmap':
   * one I/O moving no bytes, for zeroes.
   */
  async run(type: BdevIoType, bytes: number, io: () => Promise<void>, limitAs: BdevIoType = type): Promise<void> {
    if (this.limited) {
      const wait = this.admit(limitAs, bytes);
      if (wait) await wait;
    }
    await this.timed(type, bytes, this.clock.ticks(), io());
  }

  /**
   * Counts `pending` once it completes; a failed request counts as an error, not as done I/O. One
   * `then`, not an async frame: it runs for every request of every consumer.
   */
  timed(type: BdevIoType, bytes: number, startTicks: number, pending: Promise<void>): Promise<void> {
    this.queueDepth++;
    return pending.then(
      () => {
        this.queueDepth--;
        this.record(type, bytes, this.clock.ticks() - startTicks);
      },
      (error: unknown) => {
        this.queueDepth--;
        this.ioErrors++;
        throw error;
      },
    );
  }
}

/** The io state of every bdev that a consumer has opened or that has limits, by bdev name. */
export class BdevIoStates {
  private readonly byName = new Map<string, BdevIoState>();

  constructor(public clock: BdevIoClock) {}

  /** The bdev's state, made now if it has none (or had one for an earlier bdev of that name). */
  of(bdev: Bdev): BdevIoState {
    let state = this.byName.get(bdev.name);
    if (!state || state.uuid !== bdev.uuid) {
      state = new BdevIoState(bdev.uuid, this.clock);
      this.byName.set(bdev.name, state);
    }
    return state;
  }

  /** The bdev's state if it has one, made for this very bdev; listings use it, and make nothing. */
  peek(bdev: Bdev): BdevIoState | undefined {
    const state = this.byName.get(bdev.name);
    return state && state.uuid === bdev.uuid ? state : undefined;
  }

  /** The limits of the bdev `name` / `uuid` names: none unless set on that very bdev. */
  limitsOf(name: string, uuid: string): BdevQosLimits {
    const state = this.byName.get(name);
    return state && state.uuid === uuid ? state.limits : noQosLimits;
  }

  entries(): IterableIterator<[string, BdevIoState]> {
    return this.byName.entries();
  }

  /** The bdev left the node. */
  forget(name: string): void {
    this.byName.delete(name);
  }

  /** Drops the states of bdevs that are gone: `exists(name, uuid)` answers whether one still is. */
  prune(exists: (name: string, uuid: string) => boolean): void {
    for (const [name, state] of this.byName) if (!exists(name, state.uuid)) this.byName.delete(name);
  }

  /**
   * A consumer's view of `bdev`: every request passes its limits and is counted. A long-lived
   * bdev (a base bdev) gets the same view on every lookup; an lvol's, made per lookup, a new one.
   */
  meter(bdev: Bdev): MeteredBdev {
    if (bdev instanceof MeteredBdev) return bdev;
    const state = this.of(bdev);
    if (state.view?.inner !== bdev) state.view = new MeteredBdev(bdev, state);
    return state.view;
  }
}

/** A bdev as its consumers see it: the same bdev, with its limits applied and its I/O counted. */
export class MeteredBdev implements Bdev {
  constructor(
    readonly inner: Bdev,
    readonly io: BdevIoState,
  ) {}

  get kind(): BdevKind {
    return this.inner.kind;
  }
  get name(): string {
    return this.inner.name;
  }
  get uuid(): string {
    return this.inner.uuid;
  }
  get blockSizeBytes(): number {
    return this.inner.blockSizeBytes;
  }
  get claims(): BdevClaims {
    return this.inner.claims;
  }
  aliases(): readonly string[] {
    return this.inner.aliases();
  }
  sizeBytes(): number {
    return this.inner.sizeBytes();
  }
  readOnly(): boolean {
    return this.inner.readOnly();
  }
  extents(offsetBytes: number, lengthBytes: number, maxExtents: number): BdevExtent[] {
    return this.inner.extents(offsetBytes, lengthBytes, maxExtents);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }

  // Not async: a request of a bdev without limits costs one promise (the counting one), no more.
  readInto(offsetBytes: number, target: Buffer, options?: { background?: boolean; signal?: AbortSignal }): Promise<void> {
    const io = this.io;
    const wait = io.limited ? io.admit('read', target.length) : undefined;
    if (wait) return wait.then(() => io.timed('read', target.length, io.clock.ticks(), this.inner.readInto(offsetBytes, target, options)));
    return io.timed('read', target.length, io.clock.ticks(), this.inner.readInto(offsetBytes, target, options));
  }

  /** At once only without limits (a limited read may have to wait its turn); counted as readInto's are. */
  readIntoNow(offsetBytes: number, target: Buffer): boolean {
    const { io, inner } = this;
    if (io.limited || inner.readIntoNow === undefined) return false;
    const startTicks = io.clock.ticks();
    let done: boolean;
    try {
      done = inner.readIntoNow(offsetBytes, target);
    } catch (error) {
      io.ioErrors++;
      throw error;
    }
    if (done) io.record('read', target.length, io.clock.ticks() - startTicks);
    return done;
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    const io = this.io;
    const wait = io.limited ? io.admit('write', data.length) : undefined;
    if (wait) return wait.then(() => io.timed('write', data.length, io.clock.ticks(), this.inner.write(offsetBytes, data)));
    return io.timed('write', data.length, io.clock.ticks(), this.inner.write(offsetBytes, data));
  }

  unmap(offsetBytes: number, lengthBytes: number): Promise<void> {
    const io = this.io;
    const wait = io.limited ? io.admit('unmap', lengthBytes) : undefined;
    if (wait) return wait.then(() => io.timed('unmap', lengthBytes, io.clock.ticks(), this.inner.unmap(offsetBytes, lengthBytes)));
    return io.timed('unmap', lengthBytes, io.clock.ticks(), this.inner.unmap(offsetBytes, lengthBytes));
  }

  /** Zeroes count as writes of their length (SPDK's write_zeroes stats), and as one I/O (no bytes) for the limiter. */
  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    const io = this.io;
    const wait = io.limited ? io.admit('unmap', lengthBytes) : undefined;
    if (wait) return wait.then(() => io.timed('write', lengthBytes, io.clock.ticks(), this.inner.writeZeroes(offsetBytes, lengthBytes)));
    return io.timed('write', lengthBytes, io.clock.ticks(), this.inner.writeZeroes(offsetBytes, lengthBytes));
  }
}
