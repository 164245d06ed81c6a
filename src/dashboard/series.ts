// The node panel's figures over time, from successive node_get_stats samples (pure: unit-tested).
//
// node_get_stats reports counters (calls per method) and current values (event-loop delay,
// checksum rate); rates are the counter deltas between two samples over the time between them.
import type { NodeStats } from './types.ts';

export interface MethodRate {
  readonly method: string;
  readonly calls: number;
  readonly errors: number;
  readonly perSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

export interface Sample {
  readonly atMs: number;
  readonly requestsPerSec: number;
  readonly loopDelayP99Ms: number;
  readonly checksumBytesPerSec: number;
}

/** Per-method request rates between two samples, busiest first. */
export function methodRates(previous: { atMs: number; stats: NodeStats } | undefined, current: { atMs: number; stats: NodeStats }): MethodRate[] {
  const seconds = previous ? Math.max(0.001, (current.atMs - previous.atMs) / 1000) : 0;
  const rows: MethodRate[] = [];
  for (const [method, stats] of Object.entries(current.stats.requests ?? {})) {
    const before = previous?.stats.requests?.[method]?.calls ?? stats.calls;
    // A node restart resets counters: a negative delta is no rate at all.
    const delta = Math.max(0, stats.calls - before);
    rows.push({ method, calls: stats.calls, errors: stats.errors, perSec: seconds > 0 ? delta / seconds : 0, p50Ms: stats.latency_ms_p50, p99Ms: stats.latency_ms_p99 });
  }
  return rows.sort((a, b) => b.perSec - a.perSec || b.calls - a.calls || (a.method < b.method ? -1 : 1));
}

/** A bounded history: the newest `capacity` samples. */
export function pushSample(history: readonly Sample[], sample: Sample, capacity: number): Sample[] {
  const next = history.length >= capacity ? history.slice(history.length - capacity + 1) : history.slice();
  next.push(sample);
  return next;
}

/** SVG polyline points for a sparkline of `values` in a width × height box (0 at the bottom). */
export function sparklinePoints(values: readonly number[], width: number, height: number): string {
  if (values.length === 0) return '';
  const max = Math.max(...values, 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values.map((value, index) => `${(index * step).toFixed(1)},${(height - (Math.max(0, value) / max) * height).toFixed(1)}`).join(' ');
}
