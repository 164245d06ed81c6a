import { describe, expect, it } from 'vitest';
import { appendBatch, emptyLog, filterRows, formatStateValue, namesMax, pinName } from '../../src/dashboard/eventLog.ts';
import { methodRates, pushSample, sparklinePoints } from '../../src/dashboard/series.ts';
import { takeTokenFromUrl } from '../../src/dashboard/connection.ts';
import type { InspectionRecord, NodeStats } from '../../src/dashboard/types.ts';

const base = { actor_id: 'L1', at_ms: 1000 };
const records: InspectionRecord[] = [
  { ...base, seq: 1, type: 'actor', actor: 'clusterStep', session_id: 'x:2' },
  { ...base, seq: 2, type: 'event', actor: 'L1', session_id: 'x:1', event: { type: 'checksum.stop', reason: 'stopped' }, target: 'x:1' },
  { ...base, seq: 3, type: 'event', actor: 'L1', session_id: 'x:1', event: { type: 'xstate.done.actor.clusterStep' }, source: 'x:2', target: 'x:1' },
  { ...base, seq: 4, type: 'snapshot', actor: 'L1', session_id: 'x:1', event: { type: 'checksum.stop' }, snapshot: { value: { checksum: 'stopping', io: 'reading' }, status: 'active', context: {} } },
];

describe('event log', () => {
  it('pairs each delivered event with the snapshot its target took next, and names sessions', () => {
    const log = emptyLog();
    log.names.set('x:1', 'lvol');
    appendBatch(log, records, 0);
    expect(log.rows.map((row) => [row.seq, row.eventType, row.source, row.target, formatStateValue(row.value)])).toEqual([
      [2, 'checksum.stop', '(outside)', 'lvol', 'checksum.stopping · io.reading'],
      [3, 'xstate.done.actor.clusterStep', 'clusterStep', 'lvol', ''],
    ]);
    // The second event's snapshot comes in a later batch.
    appendBatch(log, [{ ...base, seq: 5, type: 'snapshot', actor: 'L1', session_id: 'x:1', snapshot: { value: { checksum: 'aborted', io: 'idle' }, status: 'active', context: {} } }], 3);
    expect(formatStateValue(log.rows[1]!.value)).toBe('checksum.aborted · io.idle');
    expect(log.droppedByNode).toBe(3);
  });

  it('keeps the names of recent sessions only, and pinned ones always: a long walk stays bounded', () => {
    const log = emptyLog();
    pinName(log, 'root', 'lvol');
    const steps: InspectionRecord[] = Array.from({ length: namesMax * 3 }, (_, index) => ({ ...base, seq: index, type: 'actor', actor: 'clusterStep', session_id: `step:${index}` }));
    appendBatch(log, steps, 0);
    expect(log.names.size).toBeLessThanOrEqual(namesMax);
    expect(log.names.get('root')).toBe('lvol');
    expect(log.names.has(`step:${namesMax * 3 - 1}`)).toBe(true);
    appendBatch(log, [{ ...base, seq: 1e6, type: 'event', actor: 'lvol', session_id: 'root', event: { type: 'checksum.stop' }, target: 'root' }], 0);
    expect(log.rows[0]!.target).toBe('lvol');
  });

  it('keeps at most rowsMax rows and counts the ones cut', () => {
    const log = emptyLog();
    const many: InspectionRecord[] = Array.from({ length: 50 }, (_, index) => ({ ...base, seq: index, type: 'event', actor: 'L1', session_id: 's', event: { type: `e${index % 3}` } }));
    appendBatch(log, many, 0, 20);
    expect(log.rows).toHaveLength(20);
    expect(log.trimmed).toBe(30);
    expect(log.rows[0]!.seq).toBe(30);
    expect(filterRows(log.rows, ' E1 ').every((row) => row.eventType === 'e1')).toBe(true);
    expect(filterRows(log.rows, '')).toHaveLength(20);
  });
});

describe('node panel series', () => {
  const stats = (calls: number): NodeStats => ({
    requests: { bdev_get_bdevs: { calls, errors: 0, latency_ms_p50: 0.2, latency_ms_p99: 1.5 }, node_get_stats: { calls: 3, errors: 0, latency_ms_p50: 0.1, latency_ms_p99: 0.3 } },
    checksums: { by_state: {}, rate_bytes_per_sec: 0 },
    background: { running: 0, queued: 0, bytes_per_sec: 0 },
  });

  it('turns counters into per-second rates between samples, busiest first', () => {
    const rates = methodRates({ atMs: 0, stats: stats(100) }, { atMs: 2000, stats: stats(300) });
    expect(rates[0]).toMatchObject({ method: 'bdev_get_bdevs', perSec: 100, p99Ms: 1.5 });
    expect(rates[1]).toMatchObject({ method: 'node_get_stats', perSec: 0 });
    // The first sample has no rate; a restarted node (counters back to 0) is no negative rate.
    expect(methodRates(undefined, { atMs: 0, stats: stats(5) })[0]!.perSec).toBe(0);
    expect(methodRates({ atMs: 0, stats: stats(500) }, { atMs: 1000, stats: stats(5) })[0]!.perSec).toBe(0);
  });

  it('keeps a bounded history and draws it', () => {
    let history: ReturnType<typeof pushSample> = [];
    for (let index = 0; index < 10; index++) history = pushSample(history, { atMs: index, requestsPerSec: index, loopDelayP99Ms: 0, checksumBytesPerSec: 0 }, 4);
    expect(history.map((sample) => sample.atMs)).toEqual([6, 7, 8, 9]);
    expect(sparklinePoints([0, 5, 10], 100, 20)).toBe('0.0,20.0 50.0,10.0 100.0,0.0');
    expect(sparklinePoints([], 100, 20)).toBe('');
  });
});

describe('token from the address', () => {
  it('is taken out of the URL once read', () => {
    expect(takeTokenFromUrl('http://127.0.0.1:5260/?token=s3cret#inspect/x')).toEqual({ token: 's3cret', cleanedHref: 'http://127.0.0.1:5260/#inspect/x' });
    expect(takeTokenFromUrl('http://127.0.0.1:5260/').token).toBeNull();
  });
});
