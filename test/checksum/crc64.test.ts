// Goal: lvnode's CRC is bit-identical to SPDK's CRC-64/GO-ISO on every known answer, and combining
// per-cluster CRCs equals one pass over the concatenation (what SPDK's seed chaining computes).
import { describe, expect, it } from 'vitest';
import { crc64, crc64Combine, crc64Reference } from '../../src/checksum/crc64.ts';
import { materialize, vectors } from './vectors.ts';


describe('crc64 (CRC-64/GO-ISO)', () => {
  it.each(vectors.single)('matches the known answer for %o', (vector) => {
    expect(crc64(materialize(vector)).toString()).toBe(vector.crc);
  });

  it.each(vectors.chained)('matches the chained known answer: $what', (vector) => {
    let running = 0n;
    for (const part of vector.parts) {
      const data = materialize(part);
      running = crc64Combine(running, crc64(data), data.length);
    }
    expect(running.toString()).toBe(vector.crc);
  });

  it('agrees with the bit-at-a-time oracle on random data of odd lengths', () => {
    let seed = 12345;
    for (const length of [1, 7, 8, 9, 63, 100, 1021]) {
      const data = Buffer.alloc(length);
      for (let i = 0; i < length; i++) data[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
      expect(crc64(data)).toBe(crc64Reference(data));
    }
  });

  it('combines like SPDK seed chaining: crc(A|B) == combine(crc(A), crc(B), |B|)', () => {
    const a = Buffer.from('the quick brown fox ');
    const b = Buffer.from('jumps over the lazy dog, 0123456789');
    const whole = crc64(Buffer.concat([a, b]));
    expect(crc64Combine(crc64(a), crc64(b), b.length)).toBe(whole);
    // SPDK's chaining passes the previous result as the seed of the next call.
    expect(crc64Reference(b, crc64Reference(a))).toBe(whole);
  });

  it('gives 0 for nothing and leaves the running value unchanged by an empty part', () => {
    expect(crc64(Buffer.alloc(0))).toBe(0n);
    expect(crc64Combine(0n, 0n, 0)).toBe(0n);
    const value = crc64(Buffer.from('x'));
    expect(crc64Combine(value, 0n, 0)).toBe(value);
  });
});
