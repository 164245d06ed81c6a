// Request counts and latencies per method, and event-loop delay, for node_get_stats (SPEC §8).
import { type EventLoopUtilization, type IntervalHistogram, monitorEventLoopDelay, performance } from 'node:perf_hooks';

// Latencies kept per method for the percentiles: the most recent ones, a bounded ring.
const latencySamplesMax = 1024;

interface MethodStats {
  calls: number;
  errors: number;
  samples: number[];
  next: number;
}

export interface MethodStatsView {
  calls: number;
  errors: number;
  latency_ms_p50: number;
  latency_ms_p99: number;
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export class RpcStats {
  private readonly methods = new Map<string, MethodStats>();
  private readonly loopDelay: IntervalHistogram;
  private readonly startedAtMs = Date.now();
  // The start of the current measuring interval (see resetInterval), for event-loop utilization.
  private intervalElu: EventLoopUtilization = performance.eventLoopUtilization();

  constructor() {
    // The histogram records whole timer intervals, resolution included; the resolution is
    // subtracted (loopDelayMs), so what remains is how late the loop ran the sampler: the rest of
    // whatever task held it at that moment, a stall of 2 ms as well as one of 200 ms (SPEC §8).
    this.loopDelay = monitorEventLoopDelay({ resolution: loopDelayResolutionMs });
    this.loopDelay.enable();
  }

  /** The dispatcher's `onCall`. */
  readonly record = (method: string, latencyMs: number, ok: boolean): void => {
    let stats = this.methods.get(method);
    if (!stats) {
      stats = { calls: 0, errors: 0, samples: [], next: 0 };
      this.methods.set(method, stats);
    }
    stats.calls++;
    if (!ok) stats.errors++;
    if (stats.samples.length < latencySamplesMax) stats.samples.push(latencyMs);
    else stats.samples[stats.next] = latencyMs;
    stats.next = (stats.next + 1) % latencySamplesMax;
  };

  view(): {
    uptime_sec: number;
    requests: Record<string, MethodStatsView>;
    event_loop_utilization: number;
    event_loop_delay_ms: { p50: number; p99: number; max: number };
  } {
    const requests: Record<string, MethodStatsView> = {};
    for (const [method, stats] of [...this.methods].sort(([a], [b]) => a.localeCompare(b))) {
      const sorted = [...stats.samples].sort((a, b) => a - b);
      requests[method] = {
        calls: stats.calls,
        errors: stats.errors,
        latency_ms_p50: round(quantile(sorted, 0.5)),
        latency_ms_p99: round(quantile(sorted, 0.99)),
      };
    }
    return {
      uptime_sec: Math.round((Date.now() - this.startedAtMs) / 1000),
      requests,
      // Share of wall time the event loop was busy since start or the last reset (0..1).
      event_loop_utilization: round(performance.eventLoopUtilization(this.intervalElu).utilization),
      event_loop_delay_ms: {
        p50: loopDelayMs(this.loopDelay.percentile(50)),
        p99: loopDelayMs(this.loopDelay.percentile(99)),
        max: loopDelayMs(this.loopDelay.max),
      },
    };
  }

  /** Starts a new measuring interval: clears latency samples and the event-loop histogram (counts stay). */
  resetInterval(): void {
    for (const stats of this.methods.values()) {
      stats.samples = [];
      stats.next = 0;
    }
    this.loopDelay.reset();
    this.intervalElu = performance.eventLoopUtilization();
  }

  close(): void {
    this.loopDelay.disable();
  }
}

// How often the loop's lateness is sampled. Any moment samples the same distribution of delays,
// so a longer interval only takes fewer samples: at 1 ms (1,000 wake-ups a second) an idle node
// spent 0.03 of a core sampling itself, at 10 ms 0.003.
const loopDelayResolutionMs = 10;

/** A recorded interval (ns) as the delay past the sampling interval, in ms to the microsecond. */
function loopDelayMs(intervalNs: number): number {
  return round(Math.max(0, intervalNs / 1e6 - loopDelayResolutionMs));
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}
