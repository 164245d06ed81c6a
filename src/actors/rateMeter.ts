// Bytes per second over the last few seconds, from a small ring of time buckets (no per-sample memory).

const bucketMs = 250;
const bucketCount = 20;

export class RateMeter {
  private readonly bucketIndex = new Float64Array(bucketCount).fill(-1);
  private readonly bucketBytes = new Float64Array(bucketCount);
  private startedAtMs: number;
  private total = 0;

  constructor(nowMs: number) {
    this.startedAtMs = nowMs;
  }

  /** Forgets everything: a new run's rate owes nothing to the previous run's (SPEC §6.7). */
  reset(nowMs: number): void {
    this.bucketIndex.fill(-1);
    this.bucketBytes.fill(0);
    this.startedAtMs = nowMs;
  }

  add(bytes: number, nowMs: number): void {
    const index = Math.floor(nowMs / bucketMs);
    const slot = index % bucketCount;
    if (this.bucketIndex[slot] !== index) {
      this.bucketIndex[slot] = index;
      this.bucketBytes[slot] = 0;
    }
    this.bucketBytes[slot]! += bytes;
    this.total += bytes;
  }

  /** Every byte ever added, for counters. */
  get totalBytes(): number {
    return this.total;
  }

  /**
   * The rate over the window (5 s), or over the time since `reset` when that is shorter: right
   * after a start or resume the rate is what this run did, not an average diluted or inflated
   * by time before it.
   */
  bytesPerSec(nowMs: number): number {
    const current = Math.floor(nowMs / bucketMs);
    let bytes = 0;
    for (let slot = 0; slot < bucketCount; slot++) {
      if (this.bucketIndex[slot]! > current - bucketCount) bytes += this.bucketBytes[slot]!;
    }
    const spanMs = Math.min(nowMs - (current - bucketCount + 1) * bucketMs, nowMs - this.startedAtMs);
    return spanMs > 0 ? Math.round((bytes * 1000) / spanMs) : 0;
  }
}
