// The terminal's checksum progress line: exact text per state, and in-place redraws at most 4/s.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type ChecksumStatusView, ProgressLine, fitToColumns, renderChecksumLine } from '../../src/cli/progress.ts';

const computing: ChecksumStatusView = {
  state: 'computing',
  mode: 'whole',
  clusters_done: 8,
  clusters_total: 32,
  rate_bytes_per_sec: 33_554_432,
  eta_sec: 3.2,
  queue_position: null,
};

describe('renderChecksumLine', () => {
  it('shows a bar, percent, clusters, rate and ETA while computing', () => {
    expect(renderChecksumLine('lvs0/snap', computing)).toBe('lvs0/snap  [######------------------]  25.0%  8/32 clusters  32.0 MiB/s  ETA 3 s');
  });

  it('shows the queue position while queued, and marks range walks', () => {
    expect(renderChecksumLine('lvs0/snap', { ...computing, state: 'queued', mode: 'range', clusters_done: 0, queue_position: 2 })).toBe(
      'lvs0/snap (range)  queued (position 2)',
    );
  });

  it('shows the stop reason when the walk ended aborted or preempted', () => {
    expect(renderChecksumLine('lvs0/snap', { ...computing, state: 'aborted', reason: 'preempted by bdev_lvol_delete', will_resume: true })).toBe(
      'lvs0/snap  aborted at 25.0% (8/32 clusters): preempted by bdev_lvol_delete (will resume)',
    );
    expect(renderChecksumLine('lvs0/snap', { ...computing, state: 'failed', error: 'Input/output error' })).toBe('lvs0/snap  failed: Input/output error');
  });

  it('says unknown rate and ETA with a dash rather than 0', () => {
    expect(renderChecksumLine('s', { ...computing, clusters_done: 0, rate_bytes_per_sec: 0, eta_sec: null })).toBe(
      's  [------------------------]  0.0%  0/32 clusters  –  ETA –',
    );
  });
});

describe('fitToColumns', () => {
  it('cuts a line that would wrap, leaving one column spare', () => {
    expect(fitToColumns('abcdefghij', 8)).toBe('abcdef…');
    expect(fitToColumns('abcdefg', 8)).toBe('abcdefg');
    expect(fitToColumns('abcdefghij', undefined)).toBe('abcdefghij');
  });
});

describe('ProgressLine', () => {
  beforeEach(() => vi.useFakeTimers({ now: 1_000_000 }));
  afterEach(() => vi.useRealTimers());

  function recorder(): { writes: string[]; write(text: string): void } {
    const writes: string[] = [];
    return { writes, write: (text: string) => void writes.push(text) };
  }

  it('redraws in place at most every 250 ms, keeping only the newest text', () => {
    const output = recorder();
    const line = new ProgressLine(output, 250);
    line.update('one');
    line.update('two');
    line.update('three');
    expect(output.writes).toEqual(['\r\x1b[Kone']);
    vi.advanceTimersByTime(249);
    expect(output.writes).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(output.writes).toEqual(['\r\x1b[Kone', '\r\x1b[Kthree']);
  });

  it('clears the line and drops a redraw still due, so nothing is drawn after the result', () => {
    const output = recorder();
    const line = new ProgressLine(output, 250);
    line.update('one');
    line.update('two');
    line.clear();
    vi.advanceTimersByTime(1000);
    expect(output.writes).toEqual(['\r\x1b[Kone', '\r\x1b[K']);
  });

  it('leaves a final line with a newline, and clearing nothing writes nothing', () => {
    const output = recorder();
    const line = new ProgressLine(output, 250);
    line.clear();
    expect(output.writes).toEqual([]);
    line.update('walk');
    line.finish('walk aborted');
    line.clear();
    expect(output.writes).toEqual(['\r\x1b[Kwalk', '\r\x1b[K', 'walk aborted\n']);
  });
});
