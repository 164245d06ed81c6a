// A byte budget for request payloads: memory is reserved before it is allocated, and a request
// that does not fit waits its turn (first come, first served) instead of allocating anyway.
import assert from 'node:assert/strict';
import { payloadBytesInFlightNodeMax, payloadBytesInFlightPerConnectionMax } from '../constants.ts';
import type { Connection } from './methodTable.ts';

export class ByteBudget {
  private usedBytes = 0;
  private peakUsedBytes = 0;
  private readonly waiting: Array<{ bytes: number; grant: () => void }> = [];

  constructor(readonly capacityBytes: number) {
    assert.ok(capacityBytes > 0);
  }

  get inUseBytes(): number {
    return this.usedBytes;
  }

  /** The most ever reserved at once (what tests and stats check the bound with). */
  get peakBytes(): number {
    return this.peakUsedBytes;
  }

  /** Resolves with the release function once `bytes` are reserved; bytes beyond the capacity throw. */
  async reserve(bytes: number): Promise<() => void> {
    await this.take(bytes);
    return this.releaser(bytes);
  }

  /**
   * Reserves `bytes` at once if they fit and nobody waits ahead, else returns undefined (the
   * caller then waits with `reserve`): the hot path of a data request costs no promise.
   */
  tryReserve(bytes: number): (() => void) | undefined {
    return this.tryTake(bytes) ? this.releaser(bytes) : undefined;
  }

  /**
   * `tryReserve` without a release function, for callers that count what they hold (the NVMe/TCP
   * queue pair, per command slot: no closure per request): they `give` the bytes back exactly once.
   */
  tryTake(bytes: number): boolean {
    // Not node:assert: this runs for every NVMe/TCP and NBD request.
    if (bytes > this.capacityBytes) throw new assert.AssertionError({ message: 'callers refuse requests larger than the whole budget' });
    if (this.waiting.length > 0 || this.usedBytes + bytes > this.capacityBytes) return false;
    this.account(bytes);
    return true;
  }

  /** `reserve` without a release function: resolves once `bytes` are taken; `give` them back once. */
  async take(bytes: number): Promise<void> {
    if (this.tryTake(bytes)) return;
    await new Promise<void>((grant) => this.waiting.push({ bytes, grant }));
  }

  /** Gives back bytes `tryTake` or `take` took. */
  give(bytes: number): void {
    this.usedBytes -= bytes;
    if (this.usedBytes < 0) throw new assert.AssertionError({ message: 'more bytes given back than taken' });
    this.grantWaiting();
  }

  private account(bytes: number): void {
    this.usedBytes += bytes;
    if (this.usedBytes > this.peakUsedBytes) this.peakUsedBytes = this.usedBytes;
  }

  private releaser(bytes: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.give(bytes);
    };
  }

  private grantWaiting(): void {
    while (this.waiting[0] && this.usedBytes + this.waiting[0].bytes <= this.capacityBytes) {
      const next = this.waiting.shift()!;
      this.account(next.bytes);
      next.grant();
    }
  }
}

/** The node's payload budgets: one per connection, then one for the whole node (constants.ts). */
export class PayloadBudgets {
  private readonly node = new ByteBudget(payloadBytesInFlightNodeMax);
  private readonly perConnection = new WeakMap<Connection, ByteBudget>();

  get inUseBytes(): number {
    return this.node.inUseBytes;
  }

  /** Runs `work` with `bytes` reserved on the connection's budget, then the node's. */
  async run<T>(connection: Connection, bytes: number, work: () => Promise<T>): Promise<T> {
    let budget = this.perConnection.get(connection);
    if (!budget) {
      budget = new ByteBudget(payloadBytesInFlightPerConnectionMax);
      this.perConnection.set(connection, budget);
    }
    const releaseConnection = await budget.reserve(bytes);
    try {
      const releaseNode = await this.node.reserve(bytes);
      try {
        return await work();
      } finally {
        releaseNode();
      }
    } finally {
      releaseConnection();
    }
  }
}
