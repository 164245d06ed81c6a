// Goal: the checksum rate is this run's recent rate: not diluted by earlier runs after a resume,
// not inflated right after a start.
import { describe, expect, it } from 'vitest';
import { RateMeter } from '../../src/actors/rateMeter.ts';

describe('RateMeter', () => {
  it('measures bytes per second since the start while the window is not yet full', () => {
    const meter = new RateMeter(10_000);
    meter.add(1_000_000, 10_500);
    expect(meter.bytesPerSec(11_000)).toBe(1_000_000);
  });

  it('forgets everything before a reset (a resume)', () => {
    const meter = new RateMeter(0);
    meter.add(50_000_000, 1_000);
    meter.reset(60_000);
    meter.add(2_000_000, 60_500);
    expect(meter.bytesPerSec(61_000)).toBe(2_000_000);
  });

  it('keeps only the last five seconds', () => {
    const meter = new RateMeter(0);
    meter.add(100_000_000, 100);
    for (let ms = 10_000; ms <= 15_000; ms += 250) meter.add(1_000_000, ms);
    // 21 samples of 1 MB in the window's 5 s (the old 100 MB fell out of it).
    expect(meter.bytesPerSec(15_000)).toBeGreaterThan(3_500_000);
    expect(meter.bytesPerSec(15_000)).toBeLessThan(4_500_000);
    expect(meter.totalBytes).toBe(121_000_000);
  });
});
