// CRC32C, the NVMe/TCP digest: both implementations against RFC 3720 B.4's vectors and each other.
import { describe, expect, it } from 'vitest';
import { crc32c, crc32cKernel, crc32cTable, nativeCrc32c } from '../../../src/transport/nvmf/crc32c.ts';

const vectors: Array<[string, Uint8Array, number]> = [
  ['32 bytes of zeros', new Uint8Array(32), 0x8a9136aa],
  ['32 bytes of 0xFF', new Uint8Array(32).fill(0xff), 0x62a8ab43],
  ['0..31 ascending', Uint8Array.from({ length: 32 }, (_, i) => i), 0x46dd794e],
  ['31..0 descending', Uint8Array.from({ length: 32 }, (_, i) => 31 - i), 0x113fdb5c],
  ['"123456789"', new TextEncoder().encode('123456789'), 0xe3069283],
];

describe('crc32c', () => {
  it.each(vectors)('the table implementation gives RFC 3720 value for %s', (_name, data, expected) => {
    expect(crc32cTable(data)).toBe(expected);
  });

  it.each(vectors)('the chosen implementation gives RFC 3720 value for %s', (_name, data, expected) => {
    expect(crc32c(data)).toBe(expected);
  });

  it('continues a running value across pieces, natively and in tables alike', () => {
    const data = Buffer.alloc(70_001);
    for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 7) & 0xff;
    const whole = crc32cTable(data);
    const pieces = crc32c(data, 12_345, data.length, crc32c(data, 0, 12_345));
    expect(pieces).toBe(whole);
    expect(crc32c(data)).toBe(whole);
  });

  it.skipIf(nativeCrc32c === undefined)('the native kernel gives the RFC 3720 values', () => {
    for (const [, data, expected] of vectors) expect(nativeCrc32c!(data, 0) >>> 0).toBe(expected);
  });

  it.skipIf(nativeCrc32c === undefined)(`the native kernel (${crc32cKernel}) matches the tables on every length and alignment`, () => {
    const native = nativeCrc32c!;
    const data = Buffer.alloc(4096 + 64);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    for (let start = 0; start < 9; start++) {
      for (const length of [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4096]) {
        const view = data.subarray(start, start + length);
        expect(native(view, 0x1234) >>> 0).toBe(crc32cTable(view, 0, view.length, 0x1234));
      }
    }
  });
});
