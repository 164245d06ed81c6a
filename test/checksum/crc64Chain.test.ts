// Goal: Crc64Chain, the table-driven fold a merge derives whole checksums with, gives exactly what
// folding the same CRCs with crc64Combine gives, and what one CRC over the pieces' bytes gives.
import { describe, expect, it } from 'vitest';
import { crc64, crc64Combine } from '../../src/checksum/crc64.ts';
import { Crc64Chain } from '../../src/checksum/crc64Chain.ts';
import { seededRandom } from '../seededRandom.ts';

describe('Crc64Chain', () => {
  it('equals a crc64Combine fold of random CRCs, every bit position used, at several piece lengths', () => {
    const random = seededRandom(21);
    const word = () => (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(Math.floor(random() * 2 ** 32));
    for (const pieceBytes of [1, 512, 65_536, 4 * 1024 * 1024, 1024 * 1024 * 1024, 3 * 1024 * 1024 + 7]) {
      // Single bits first (each table entry on its own), then all ones, then random words.
      const values = [...Array.from({ length: 64 }, (_, bit) => 1n << BigInt(bit)), 0xffffffffffffffffn, ...Array.from({ length: 200 }, word)];
      const chain = new Crc64Chain(pieceBytes);
      let folded = 0n;
      for (const value of values) {
        chain.add(value);
        folded = crc64Combine(folded, value, pieceBytes);
        expect(chain.value, `${pieceBytes}-byte pieces`).toBe(folded);
      }
    }
  });

  it('gives 0 for no piece and one CRC over the pieces’ bytes for many', () => {
    expect(new Crc64Chain(4096).value).toBe(0n);
    const random = seededRandom(4);
    const pieces = Array.from({ length: 9 }, () => Buffer.from(Array.from({ length: 4096 }, () => Math.floor(random() * 256))));
    const chain = new Crc64Chain(4096);
    for (const piece of pieces) chain.add(crc64(piece));
    expect(chain.value).toBe(crc64(Buffer.concat(pieces)));
  });
});
