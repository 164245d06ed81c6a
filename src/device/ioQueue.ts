// A device's I/O queue with two classes: what clients asked for goes first, background reads after.
//
// Foreground work (client reads and writes, metadata) is dispatched at once. Background work
// (checksum reads) is admitted only while no foreground work is in flight, and at most
// `backgroundInFlightMax` at a time, so a foreground request waits behind at most that many
// background reads (SPEC §6.6). A background request that has waited `starvationMs` under a
// steady foreground stream is admitted anyway (still within the in-flight bound): checksums slow
// down under load but never stop for good.
import assert from 'node:assert/strict';
import { deviceBackgroundInFlightMax, deviceBackgroundStarvationMs } from '../constants.ts';

export type IoClass = 'foreground' | 'background';

export interface IoQueueStats {
  foreground_in_flight: number;
  background_in_flight: number;
  background_waiting: number;
  foreground_ops: number;
  background_ops: number;
}

/** Thrown to a background request whose AbortSignal fired while it waited (it never started). */
export class IoAbortedError extends Error {
  readonly code = 'ABORT_ERR';
  constructor() {
    super('background I/O aborted before it started');
  }
}

interface Waiter {
  readonly since: number;
  readonly start: () => void;
  readonly abort: () => void;
}


export class IoQueue {
  private foregroundInFlight = 0;
  private backgroundInFlight = 0;
  private readonly waiting: Waiter[] = [];
  private starvationTimer: NodeJS.Timeout | undefined;
  private foregroundOps = 0;
  private backgroundOps = 0;

  constructor(
    private readonly backgroundInFlightMax = deviceBackgroundInFlightMax,
    private readonly starvationMs = deviceBackgroundStarvationMs,
    private readonly nowMs: () => number = () => performance.now(),
  ) {
    assert.ok(backgroundInFlightMax >= 1);
  }

  /**
   * Runs `work` in its class. Work that may start at once starts synchronously, before this
   * returns: an `await` first would let every microtask already queued (a whole actor macrostep)
   * run ahead of it, delaying the I/O for nothing.
   */
  run<T>(ioClass: IoClass, work: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (ioClass === 'foreground') return this.runForeground(work);
    if (signal?.aborted) return Promise.reject(new IoAbortedError());
    if (this.waiting.length === 0 && this.canStartBackground(false)) {
      this.startBackground();
      return this.finishBackground(work);
    }
    return this.admitBackground(signal).then(() => this.finishBackground(work));
  }

  /**
   * Counts foreground work that ran to its end before returning (a read a memory file answered at
   * once): it was never in flight, so no background work had to wait for it.
   */
  countForegroundDone(): void {
    this.foregroundOps++;
  }

  stats(): IoQueueStats {
    return {
      foreground_in_flight: this.foregroundInFlight,
      background_in_flight: this.backgroundInFlight,
      background_waiting: this.waiting.length,
      foreground_ops: this.foregroundOps,
      background_ops: this.backgroundOps,
    };
  }

  // Not async, one promise per request: this runs for every client request of every device.
  private runForeground<T>(work: () => Promise<T>): Promise<T> {
    this.foregroundInFlight++;
    this.foregroundOps++;
    let pending: Promise<T>;
    try {
      pending = work();
    } catch (error) {
      this.foregroundDone();
      return Promise.reject(error);
    }
    return pending.then(
      (value) => {
        this.foregroundDone();
        return value;
      },
      (error: unknown) => {
        this.foregroundDone();
        throw error;
      },
    );
  }

  private foregroundDone(): void {
    this.foregroundInFlight--;
    this.pump();
  }

  /** Runs admitted background work; its slot is given back however it ends. */
  private async finishBackground<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } finally {
      this.backgroundInFlight--;
      this.pump();
    }
  }

  /** Waits in line; resolves once admitted (the slot is taken), rejects if `signal` fires first. */
  private admitBackground(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const index = this.waiting.indexOf(waiter);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(new IoAbortedError());
      };
      const waiter: Waiter = {
        since: this.nowMs(),
        start: () => {
          signal?.removeEventListener('abort', onAbort);
          this.startBackground();
          resolve();
        },
        abort: onAbort,
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
      this.armStarvationTimer();
    });
  }

  private canStartBackground(starved: boolean): boolean {
    if (this.backgroundInFlight >= this.backgroundInFlightMax) return false;
    return this.foregroundInFlight === 0 || starved;
  }

  private startBackground(): void {
    this.backgroundInFlight++;
    this.backgroundOps++;
  }

  // Admits waiting background work in order while the rules allow it.
  private pump(): void {
    while (this.waiting.length > 0) {
      const head = this.waiting[0]!;
      const starved = this.nowMs() - head.since >= this.starvationMs;
      if (!this.canStartBackground(starved)) break;
      this.waiting.shift();
      head.start();
    }
    this.armStarvationTimer();
  }

  // Under a foreground stream with no gap, nothing calls pump at the moment the head starves.
  private armStarvationTimer(): void {
    if (this.waiting.length === 0) {
      if (this.starvationTimer) clearTimeout(this.starvationTimer);
      this.starvationTimer = undefined;
      return;
    }
    if (this.starvationTimer) return;
    const waitMs = Math.max(0, this.starvationMs - (this.nowMs() - this.waiting[0]!.since));
    this.starvationTimer = setTimeout(() => {
      this.starvationTimer = undefined;
      this.pump();
    }, waitMs + 1);
    this.starvationTimer.unref();
  }
}
