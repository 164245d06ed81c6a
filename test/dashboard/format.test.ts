import { describe, expect, it } from 'vitest';
import { formatBytes, formatDuration, formatEta, formatPercent, formatRate, formatU64, progressBar } from '../../src/dashboard/format.ts';

describe('formatting shared by the dashboard and the terminal', () => {
  it('bytes and rates in binary units, three significant digits', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(64 * 2 ** 20)).toBe('64.0 MiB');
    expect(formatBytes(1008 * 2 ** 20)).toBe('1008 MiB');
    expect(formatBytes(2n ** 63n)).toBe('8.00 EiB');
    expect(formatBytes(-1)).toBe('–');
    expect(formatRate(412 * 2 ** 20)).toBe('412 MiB/s');
    expect(formatRate(0)).toBe('–');
    expect(formatRate(Number.NaN)).toBe('–');
  });

  it('durations and ETAs', () => {
    expect(formatDuration(0)).toBe('0 s');
    expect(formatDuration(59.4)).toBe('59 s');
    expect(formatDuration(185)).toBe('3 min 05 s');
    expect(formatDuration(2 * 3600 + 7 * 60)).toBe('2 h 07 min');
    expect(formatDuration(3 * 86_400 + 4 * 3600)).toBe('3 d 4 h');
    expect(formatEta(null)).toBe('–');
    expect(formatEta(undefined)).toBe('–');
    expect(formatEta(-5)).toBe('–');
    expect(formatEta(42)).toBe('42 s');
  });

  it('64-bit values exactly, in hex and decimal; a rounded double is refused, never printed', () => {
    expect(formatU64(0xe2eef135dab7d0f9n)).toEqual({ hex: '0xe2eef135dab7d0f9', decimal: '16352272510633890041' });
    expect(formatU64(0)).toEqual({ hex: '0x0000000000000000', decimal: '0' });
    expect(formatU64('18446744073709551615')).toEqual({ hex: '0xffffffffffffffff', decimal: '18446744073709551615' });
    expect(formatU64(2 ** 53 - 1).decimal).toBe('9007199254740991');
    expect(() => formatU64(2 ** 64)).toThrow(RangeError);
    expect(() => formatU64(1n << 64n)).toThrow(RangeError);
    expect(() => formatU64(-1n)).toThrow(RangeError);
    expect(() => formatU64('12a')).toThrow(RangeError);
  });

  it('percentages never claim 100% before the end, and text bars', () => {
    expect(formatPercent(1, 3)).toBe('33.3%');
    expect(formatPercent(9999, 10000)).toBe('99.9%');
    expect(formatPercent(99999, 100000)).toBe('99.9%');
    expect(formatPercent(16, 16)).toBe('100.0%');
    expect(formatPercent(0, 0)).toBe('–');
    expect(progressBar(5, 10, 10)).toBe('[#####-----]');
    expect(progressBar(20, 10, 4)).toBe('[####]');
    expect(progressBar(0, 0, 4)).toBe('[----]');
  });
});
